//! Where a model's requests go and with what credentials, in one place for metered
//! requests, pass-through and probes alike: the URL (the upstream's base URL, the
//! API's path, the client's query, Azure's `api-version`) and the headers (the
//! account's key in its dialect's header, replacing whatever the client sent;
//! Anthropic's `anthropic-version` when the client sent none).
//!
//! ```text
//! base_url  https://acme.openai.azure.com/openai/deployments/gpt-4o
//! path      /chat/completions
//! url       https://acme.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21
//! ```

use http::{HeaderMap, HeaderValue, Method};
use sluice_provider::Provider;

use crate::estimate::Endpoint;
use crate::state::{Account, ModelState};

/// The `anthropic-version` sent when the client named none (probes, and chat-shaped
/// clients of an Anthropic upstream).
pub(crate) const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The URL of `path` (the API's path after `/v1`, e.g. `/chat/completions`) on
/// `model`'s upstream, with the client's raw `query` (pass-through only) and the
/// upstream's `api-version` unless that query already names one.
pub(crate) fn url(model: &ModelState, path: &str, query: Option<&str>) -> String {
    join(&model.base_url, model.api_version.as_deref(), path, query)
}

/// The URLs of the metered APIs on one model's upstream, parsed once when the
/// configuration is loaded: parsing a URL (its host through IDNA) on every request
/// took some 4% of a gateway's CPU.
pub(crate) struct MeteredUrls([Option<reqwest::Url>; Endpoint::ALL.len()]);

impl MeteredUrls {
    /// The URL of each endpoint's path on `base_url` (with Azure's `api_version`); an
    /// endpoint whose URL does not parse has none, and its requests build it from
    /// text, so that they fail as they would have (an unreachable upstream).
    pub(crate) fn new(base_url: &str, api_version: Option<&str>) -> Self {
        Self(
            Endpoint::ALL
                .map(|e| reqwest::Url::parse(&join(base_url, api_version, e.path(), None)).ok()),
        )
    }

    /// The parsed URL of `endpoint`, if it parsed.
    pub(crate) fn get(&self, endpoint: Endpoint) -> Option<&reqwest::Url> {
        self.0[endpoint as usize].as_ref()
    }
}

fn join(base_url: &str, api_version: Option<&str>, path: &str, query: Option<&str>) -> String {
    let mut url = String::with_capacity(base_url.len() + path.len() + 32);
    url.push_str(base_url);
    url.push_str(path);
    let query = query.filter(|q| !q.is_empty());
    let names_version = query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.split('=').next() == Some("api-version"))
    });
    let mut sep = '?';
    if let Some(q) = query {
        url.push(sep);
        url.push_str(q);
        sep = '&';
    }
    if let Some(v) = api_version.filter(|_| !names_version) {
        url.push(sep);
        url.push_str("api-version=");
        url.push_str(v);
    }
    url
}

/// A request to `url` on `account`: its credentials in the dialect's header (the
/// account's keys in turn), the
/// client's `forward`ed headers (never its own credentials), and Anthropic's version
/// header when the upstream speaks Anthropic and none was forwarded.
pub(crate) fn request(
    client: &reqwest::Client,
    method: Method,
    url: impl reqwest::IntoUrl,
    model: &ModelState,
    account: &Account,
    mut forward: HeaderMap,
) -> reqwest::RequestBuilder {
    if model.provider == Provider::Anthropic && !forward.contains_key("anthropic-version") {
        forward.insert(
            "anthropic-version",
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
    }
    let (name, key) = account.auth();
    client
        .request(method, url)
        .headers(forward)
        .header(name.clone(), key.clone())
}

/// Whether `model`'s upstream can take a request of `endpoint` as it is: Messages
/// only in Anthropic's dialect, the Responses API only in an OpenAI-compatible one;
/// chat, completions and embeddings everywhere (Anthropic serves an OpenAI-compatible
/// chat endpoint too). Nothing is translated between dialects.
pub(crate) fn speaks(model: &ModelState, endpoint: Endpoint) -> bool {
    let anthropic = model.provider == Provider::Anthropic;
    match endpoint {
        Endpoint::Messages => anthropic,
        Endpoint::Responses => !anthropic,
        Endpoint::Chat | Endpoint::Completions | Endpoint::Embeddings => true,
    }
}

/// The smallest request that asks `model`'s provider whether an account works: its
/// path and body (Anthropic's Messages for an Anthropic upstream, chat otherwise).
pub(crate) fn probe(model: &ModelState) -> (&'static str, serde_json::Value) {
    let messages = serde_json::json!([{"role": "user", "content": "ping"}]);
    let body = serde_json::json!({"model": model.cfg.upstream_model, "messages": messages, "max_tokens": 1});
    if model.provider == Provider::Anthropic {
        ("/messages", body)
    } else {
        ("/chat/completions", body)
    }
}

/// The key a caller presents: `Authorization: Bearer <key>` (the scheme in any case;
/// a bare `Authorization: <key>` is read as the key), else Anthropic's `x-api-key`,
/// else Azure's `api-key`. The one rule for tenant keys and the admin key on every
/// listener of the gateway and the sidecar.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        let key = match v.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => &v[7..],
            _ => v,
        };
        return Some(key.trim());
    }
    ["x-api-key", "api-key"]
        .iter()
        .find_map(|h| headers.get(*h)?.to_str().ok())
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn urls_keep_azures_api_version_and_the_clients_query() {
        let azure = "https://a.openai.azure.com/openai/deployments/d";
        assert_eq!(
            join(azure, Some("2024-10-21"), "/chat/completions", None),
            format!("{azure}/chat/completions?api-version=2024-10-21")
        );
        assert_eq!(
            join(azure, Some("2024-10-21"), "/models/d", Some("x=1")),
            format!("{azure}/models/d?x=1&api-version=2024-10-21")
        );
        assert_eq!(
            join(
                azure,
                Some("2024-10-21"),
                "/models/d",
                Some("api-version=2025-01-01")
            ),
            format!("{azure}/models/d?api-version=2025-01-01"),
            "the client's own version wins"
        );
        assert_eq!(
            join("https://api.openai.com/v1", None, "/responses", Some("")),
            "https://api.openai.com/v1/responses"
        );
    }

    #[test]
    fn metered_urls_are_the_joined_urls_parsed_once() {
        let azure = "https://a.openai.azure.com/openai/deployments/d";
        let urls = MeteredUrls::new(azure, Some("2024-10-21"));
        for e in Endpoint::ALL {
            assert_eq!(
                urls.get(e).map(reqwest::Url::as_str),
                Some(join(azure, Some("2024-10-21"), e.path(), None).as_str())
            );
        }
        assert!(
            MeteredUrls::new("not a url", None)
                .get(Endpoint::Chat)
                .is_none()
        );
    }

    #[test]
    fn the_presented_key_is_read_one_way_everywhere() {
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer sk-1")])),
            Some("sk-1")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "bearer  sk-1 ")])),
            Some("sk-1")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "sk-1")])),
            Some("sk-1")
        );
        assert_eq!(
            presented_key(&headers(&[("x-api-key", "sk-2")])),
            Some("sk-2")
        );
        assert_eq!(
            presented_key(&headers(&[("api-key", "sk-3")])),
            Some("sk-3")
        );
        assert_eq!(
            presented_key(&headers(&[
                ("authorization", "Bearer a"),
                ("x-api-key", "b")
            ])),
            Some("a"),
            "Authorization wins"
        );
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }
}
