//! Which `/v1/*` paths the pass-through route forwards (issue #12, "paths").
//!
//! The rule, checked on the raw request target before any decoding:
//! 1. [`check_shape`]: the path starts with `/v1/` and every segment after it is
//!    non-empty, is not `.` or `..`, and is made only of unreserved characters and
//!    sub-delimiters (`A-Z a-z 0-9 - . _ ~ ! $ & ' ( ) * + , ; = : @`). No
//!    percent-encoding at all, so `%2e`, `%2f`, `%5c`, `%00` and double encodings
//!    cannot reach an upstream that would decode them; no backslash, no NUL, no empty
//!    segment. Such a path is a 400, never forwarded: appended to `base_url` it could
//!    not leave it, whatever the URL parser or the upstream normalises.
//! 2. [`allowed`]: the path matches the dialect's own list ([`dialect_paths`]) or the
//!    upstream's `passthrough` list from the config; else a 404. A pattern is a path
//!    whose segments are literal or `*` (exactly one segment).

use axum::response::{IntoResponse, Response};
use http::{Method, Uri};
use sluice_config::Dialect;

use crate::error::ApiError;

/// The public router's fallback: an OpenAI-shaped 404 for a path no route serves.
pub(crate) async fn unknown_route(method: Method, uri: Uri) -> Response {
    ApiError::UnknownUrl {
        method: method.to_string(),
        path: uri.path().chars().take(200).collect(),
    }
    .into_response()
}

/// The public router's fallback for a known path asked with another method: an
/// OpenAI-shaped 405.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().chars().take(200).collect(),
    }
    .into_response()
}

/// Why a pass-through path is refused before anything is sent upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UnsafePath {
    /// Not under `/v1/`.
    #[error("only paths under /v1/ are passed through")]
    NotUnderV1,
    /// An empty segment (`//`).
    #[error("the path has an empty segment (//)")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("the path has a dot segment (. or ..)")]
    DotSegment,
    /// A `%` escape (encoded dots, slashes, backslashes, NUL, double encodings).
    #[error("percent-encoded characters are not passed through")]
    PercentEncoded,
    /// A character outside the unreserved set and sub-delimiters (backslash, NUL, …).
    #[error("the path has a character that is not passed through")]
    Character,
}

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

/// Checks the raw path (the request target without its query) against rule 1.
pub(crate) fn check_shape(raw_path: &str) -> Result<(), UnsafePath> {
    let rest = raw_path
        .strip_prefix("/v1/")
        .ok_or(UnsafePath::NotUnderV1)?;
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err(UnsafePath::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(UnsafePath::DotSegment);
        }
        if let Some(b) = segment.bytes().find(|b| !plain(*b)) {
            return Err(if b == b'%' {
                UnsafePath::PercentEncoded
            } else {
                UnsafePath::Character
            });
        }
    }
    Ok(())
}

/// The paths a dialect defines beyond the routes the gateway meters itself
/// (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/models`):
/// reading one model (every OpenAI-compatible API, DashScope compatible mode, Azure),
/// and Anthropic's free `POST /v1/messages/count_tokens` (providers.md §2). Anything
/// else (files, batches, fine-tuning, the Responses API, …) must be listed by the
/// operator in the upstream's `passthrough`, since it spends money or reaches data the
/// limiter does not meter.
pub(crate) fn dialect_paths(dialect: Dialect) -> &'static [&'static str] {
    match dialect {
        Dialect::Anthropic => &["/v1/models/*", "/v1/messages/count_tokens"],
        _ => &["/v1/models/*"],
    }
}

/// True when `pattern` (segments literal or `*`) matches `path` segment for segment.
pub(crate) fn matches(pattern: &str, path: &str) -> bool {
    let mut p = pattern.split('/');
    let mut q = path.split('/');
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some("*"), Some(s)) if !s.is_empty() => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// True when `path` (already through [`check_shape`]) may be passed through.
pub(crate) fn allowed(dialect: Dialect, passthrough: &[String], path: &str) -> bool {
    dialect_paths(dialect).iter().any(|p| matches(p, path))
        || passthrough.iter().any(|p| matches(p, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_paths_are_refused_on_the_raw_target() {
        for (path, why) in [
            ("/v1/../stats", UnsafePath::DotSegment),
            ("/v1/./stats", UnsafePath::DotSegment),
            ("/v1/models/../../stats", UnsafePath::DotSegment),
            ("/v1/%2e%2e/stats", UnsafePath::PercentEncoded),
            ("/v1/%2E%2E/stats", UnsafePath::PercentEncoded),
            ("/v1/.%2e/stats", UnsafePath::PercentEncoded),
            ("/v1/models/..%2fstats", UnsafePath::PercentEncoded),
            ("/v1/x%2f..%2f..%2fstats", UnsafePath::PercentEncoded),
            ("/v1/%5c..%5cstats", UnsafePath::PercentEncoded),
            ("/v1/models/%00", UnsafePath::PercentEncoded),
            ("/v1/models/%252e%252e", UnsafePath::PercentEncoded),
            ("/v1/\\..\\stats", UnsafePath::Character),
            ("/v1/models/a\0b", UnsafePath::Character),
            ("/v1//stats", UnsafePath::EmptySegment),
            ("/v1/models/", UnsafePath::EmptySegment),
            ("/v1", UnsafePath::NotUnderV1),
            ("/stats", UnsafePath::NotUnderV1),
        ] {
            assert_eq!(check_shape(path), Err(why), "{path}");
        }
        for ok in [
            "/v1/models/qwen-plus",
            "/v1/models/gpt-4o-2024-08-06",
            "/v1/files/file-abc123",
            "/v1/models/ft:gpt-4o:org:x",
            "/v1/models/a..b",
        ] {
            assert_eq!(check_shape(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn only_listed_paths_are_allowed() {
        assert!(allowed(Dialect::Openai, &[], "/v1/models/qwen-plus"));
        assert!(!allowed(Dialect::Openai, &[], "/v1/models/a/b"));
        assert!(!allowed(Dialect::Openai, &[], "/v1/files"));
        assert!(!allowed(Dialect::Openai, &[], "/v1/messages/count_tokens"));
        assert!(allowed(
            Dialect::Anthropic,
            &[],
            "/v1/messages/count_tokens"
        ));
        let list = vec!["/v1/files".to_owned(), "/v1/batches/*".to_owned()];
        assert!(allowed(Dialect::Openai, &list, "/v1/files"));
        assert!(allowed(Dialect::Openai, &list, "/v1/batches/batch_1"));
        assert!(!allowed(Dialect::Openai, &list, "/v1/batches"));
        assert!(!allowed(Dialect::Openai, &list, "/v1/batches/b/cancel"));
        assert!(!allowed(Dialect::Openai, &list, "/v1/files/f"));
    }
}
