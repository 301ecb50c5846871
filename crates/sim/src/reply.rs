//! Request errors answered before metering (400, 401, 404), rendered as OpenAI's `{"error":{…}}`, and JSON replies.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::OpenAiError;
use crate::sim::{Rejection, Sim};

/// A request that cannot be served, whatever the quotas.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 400: malformed JSON, a wrong type, a bad value.
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    /// 401: no key, or a key that is not accepted.
    #[error("{message}")]
    Unauthorized {
        message: String,
        code: Option<&'static str>,
    },
    /// 404: the model is not served.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// 404: no such route.
    #[error("Invalid URL ({0})")]
    NoRoute(String),
    /// 404: the admin endpoint names no account.
    #[error("No account has that name or key.")]
    AccountNotFound,
}

impl ApiError {
    pub(crate) fn bad_request(
        message: impl Into<String>,
        param: Option<&str>,
        code: Option<&'static str>,
    ) -> Self {
        Self::BadRequest {
            message: message.into(),
            param: param.map(str::to_owned),
            code,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::ModelNotFound(_) | Self::NoRoute(_) | Self::AccountNotFound => {
                StatusCode::NOT_FOUND
            }
        }
    }

    /// Counts the rejection in `/stats`, then renders it (API endpoints only).
    pub(crate) fn counted(self, sim: &Sim) -> Response {
        match &self {
            Self::BadRequest { .. } => sim.reject(Rejection::BadRequest),
            Self::Unauthorized { .. } => sim.reject(Rejection::Unauthorized),
            Self::ModelNotFound(_) => sim.reject(Rejection::ModelNotFound),
            Self::NoRoute(_) | Self::AccountNotFound => {}
        }
        self.into_response()
    }

    /// Like [`ApiError::counted`], rendered as Anthropic renders errors:
    /// `{"type":"error","error":{"type","message"}}` (`authentication_error` for a 401,
    /// `not_found_error` for a 404, else `invalid_request_error`).
    pub(crate) fn counted_anthropic(self, sim: &Sim) -> Response {
        let status = self.status();
        let kind = match status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            _ => "invalid_request_error",
        };
        let message = self.to_string();
        // Count it exactly as the OpenAI rendering would.
        drop(self.counted(sim));
        let body =
            serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
        json_response(
            status,
            HeaderMap::new(),
            serde_json::to_vec(&body).unwrap_or_default(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        let (param, code) = match self {
            Self::BadRequest { param, code, .. } => (param, code),
            Self::Unauthorized { code, .. } => (None, code),
            Self::ModelNotFound(_) => (None, Some("model_not_found")),
            Self::AccountNotFound => (None, Some("account_not_found")),
            Self::NoRoute(_) => (None, None),
        };
        let body = OpenAiError::new(message, "invalid_request_error", param, code);
        json_response(
            status,
            HeaderMap::new(),
            serde_json::to_vec(&body).unwrap_or_default(),
        )
    }
}

/// A JSON response with these extra headers.
pub(crate) fn json_response(status: StatusCode, mut headers: HeaderMap, body: Vec<u8>) -> Response {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (status, headers, body).into_response()
}
