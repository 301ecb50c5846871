//! Checking what a client sent before anything is charged or forwarded: the body read
//! under `server.max_body_bytes` and `server.body_timeout`, the content type, the
//! `x-sluice-max-wait` header, and the JSON body's shape (`model`, `messages`, numbers).
//! Every refusal is an [`ApiError`] naming the parameter and a precise `code`.

use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::estimate::Endpoint;

/// The largest `n` (choices per request) accepted.
pub(crate) const MAX_N: u64 = 128;

fn bad(message: impl Into<String>, param: &'static str, code: &'static str) -> ApiError {
    ApiError::BadRequest {
        message: message.into(),
        param: Some(param),
        code,
    }
}

/// Reads the body, refusing one over `limit` bytes (413) or one that does not arrive
/// within `timeout` (408).
///
/// A body found too large (declared by `Content-Length` or counted as it arrives) is
/// read on and discarded, up to another `limit` bytes and within the same `timeout`,
/// before the refusal is sent: a client still writing its body then reads the 413
/// instead of a reset connection. Nothing of it is kept, so the cost stays bounded by
/// twice the limit in bytes read and by `limit` in memory; a body declared larger
/// than that is refused at once and the connection closed.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let allowance = limit as u64;
    if declared.is_some_and(|n| n > (limit as u64).saturating_add(allowance)) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let over = declared.is_some_and(|n| n > limit as u64);
    let deadline = tokio::time::Instant::now() + timeout;
    match collect_limited(body, limit, over, allowance, deadline).await {
        Collected::Body(bytes) => Ok(bytes),
        Collected::TooLarge => Err(ApiError::BodyTooLarge { limit }),
        Collected::TimedOut => Err(ApiError::BodyTimeout { timeout }),
        Collected::Broken => Err(ApiError::BadRequest {
            message: "The request body could not be read completely.".into(),
            param: None,
            code: "invalid_body",
        }),
    }
}

/// What [`collect_limited`] made of a body.
enum Collected {
    /// The whole body, within the limit.
    Body(Bytes),
    /// Over the limit (read on and discarded as far as the allowance went).
    TooLarge,
    /// Within the limit so far, but not complete by the deadline.
    TimedOut,
    /// The client's stream failed (reset, malformed chunking).
    Broken,
}

/// Collects `body` up to `limit` bytes by `deadline`. Once it is known to be over the
/// limit (`over` from the start when the declared length says so), the rest is read
/// and dropped, up to `allowance` bytes more and until the deadline, and the answer is
/// [`Collected::TooLarge`] however that reading ends.
async fn collect_limited(
    mut body: Body,
    limit: usize,
    mut over: bool,
    allowance: u64,
    deadline: tokio::time::Instant,
) -> Collected {
    use http_body_util::BodyExt;
    let mut kept = bytes::BytesMut::new();
    let mut discarded: u64 = 0;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) if over => return Collected::TooLarge,
            Err(_) => return Collected::TimedOut,
            Ok(None) => break,
            Ok(Some(Err(_))) if over => return Collected::TooLarge,
            Ok(Some(Err(_))) => return Collected::Broken,
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if !over && kept.len() + data.len() > limit {
            over = true;
            discarded = kept.len() as u64;
            kept = bytes::BytesMut::new();
        }
        if over {
            discarded = discarded.saturating_add(data.len() as u64);
            if discarded > (limit as u64).saturating_add(allowance) {
                return Collected::TooLarge;
            }
        } else {
            kept.extend_from_slice(&data);
        }
    }
    if over {
        Collected::TooLarge
    } else {
        Collected::Body(kept.freeze())
    }
}

/// Refuses a `Content-Type` that is present and not JSON (`application/json`,
/// `application/*+json`); a missing one is read as JSON.
pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(v) = headers.get(http::header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = v.to_str().unwrap_or("");
    let mime = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        return Ok(());
    }
    Err(ApiError::UnsupportedMediaType {
        got: if text.is_empty() && !v.is_empty() {
            "(not text)".into()
        } else {
            text.chars().take(100).collect()
        },
    })
}

/// `x-sluice-max-wait`: `5s`, `500ms`, or seconds (`0` answers at once); it can only
/// lower the deadline. Absent: `None`. Present but not a non-negative duration (not
/// UTF-8, negative, garbage): a 400, so a caller never waits longer than it asked by
/// mistake.
pub(crate) fn header_max_wait(headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    let Some(v) = headers.get("x-sluice-max-wait") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|v| sluice_config::parse_duration(v).or_else(|| sluice_provider::parse_seconds(v)))
        .map(Some)
        .ok_or_else(|| ApiError::BadRequest {
            message: "The header x-sluice-max-wait must be a non-negative duration such as `5s`, `500ms` or `2.5` (seconds).".into(),
            param: Some("x-sluice-max-wait"),
            code: "invalid_header",
        })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(param: &'static str, expected: &str, got: &Value) -> ApiError {
    bad(
        format!(
            "Invalid type for `{param}`: expected {expected}, got {}.",
            type_name(got)
        ),
        param,
        "invalid_type",
    )
}

/// A non-negative whole number, or absent/null.
fn count(obj: &Map<String, Value>, param: &'static str) -> Result<Option<u64>, ApiError> {
    match obj.get(param) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) => Ok(Some(v)),
            None => Err(bad(
                format!("Invalid value for `{param}`: {n} is not a non-negative whole number."),
                param,
                "invalid_value",
            )),
        },
        Some(other) => Err(wrong_type(param, "a non-negative whole number", other)),
    }
}

/// Parses and checks a body of `endpoint`; returns the JSON and the model it names.
pub(crate) fn parse(endpoint: Endpoint, body: &[u8]) -> Result<(Value, String), ApiError> {
    let json: Value = serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
        message: format!("The body is not valid JSON: {e}"),
        param: None,
        code: "invalid_json",
    })?;
    let Value::Object(obj) = &json else {
        return Err(ApiError::BadRequest {
            message: format!("The body must be a JSON object, got {}.", type_name(&json)),
            param: None,
            code: "invalid_type",
        });
    };
    let model = match obj.get("model") {
        None | Some(Value::Null) => {
            return Err(bad(
                "Missing required parameter: `model`.",
                "model",
                "missing_required_parameter",
            ));
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(wrong_type("model", "a string", other)),
    };
    check_api(endpoint, obj)?;
    count(obj, "max_tokens")?;
    count(obj, "max_completion_tokens")?;
    count(obj, "max_output_tokens")?;
    if let Some(n) = count(obj, "n")?
        && !(1..=MAX_N).contains(&n)
    {
        return Err(bad(
            format!("Invalid value for `n`: {n}; it must be between 1 and {MAX_N}."),
            "n",
            "invalid_value",
        ));
    }
    match obj.get("stream") {
        None | Some(Value::Null | Value::Bool(_)) => {}
        Some(other) => return Err(wrong_type("stream", "a boolean", other)),
    }
    Ok((json, model))
}

/// The parameters each API requires, checked as its provider checks them (and named
/// in its words: Anthropic's for Messages).
fn check_api(endpoint: Endpoint, obj: &Map<String, Value>) -> Result<(), ApiError> {
    match endpoint {
        Endpoint::Chat => match required(obj, "messages")? {
            Value::Array(m) if m.is_empty() => Err(bad(
                "Invalid value for `messages`: it must hold at least one message.",
                "messages",
                "invalid_value",
            )),
            Value::Array(m) => objects(m, "messages"),
            other => Err(wrong_type("messages", "an array", other)),
        },
        Endpoint::Completions => match obj.get("prompt") {
            None | Some(Value::Null | Value::String(_) | Value::Array(_)) => Ok(()),
            Some(other) => Err(wrong_type("prompt", "a string or an array", other)),
        },
        Endpoint::Responses => match required(obj, "input")? {
            Value::String(_) => Ok(()),
            Value::Array(items) => objects(items, "input"),
            other => Err(wrong_type("input", "a string or an array", other)),
        },
        Endpoint::Messages => {
            match obj.get("messages") {
                Some(Value::Array(m)) if !m.is_empty() => objects(m, "messages")?,
                None | Some(Value::Null) | Some(Value::Array(_)) => {
                    return Err(bad(
                        "messages: at least one message is required.",
                        "messages",
                        "missing_required_parameter",
                    ));
                }
                Some(other) => return Err(wrong_type("messages", "an array", other)),
            }
            if obj.get("max_tokens").is_none_or(Value::is_null) {
                return Err(bad(
                    "max_tokens: Field required.",
                    "max_tokens",
                    "missing_required_parameter",
                ));
            }
            Ok(())
        }
        Endpoint::Embeddings => match required(obj, "input")? {
            Value::String(_) | Value::Array(_) => Ok(()),
            other => Err(wrong_type("input", "a string or an array", other)),
        },
    }
}

/// The value of a required parameter, or the refusal that names it.
fn required<'a>(obj: &'a Map<String, Value>, param: &'static str) -> Result<&'a Value, ApiError> {
    match obj.get(param) {
        None | Some(Value::Null) => Err(bad(
            format!("Missing required parameter: `{param}`."),
            param,
            "missing_required_parameter",
        )),
        Some(v) => Ok(v),
    }
}

/// Every item of the array `param` is an object, or the refusal names the first that
/// is not.
fn objects(items: &[Value], param: &'static str) -> Result<(), ApiError> {
    match items.iter().position(|m| !m.is_object()) {
        Some(i) => Err(bad(
            format!("Invalid type for `{param}[{i}]`: expected an object."),
            param,
            "invalid_type",
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    //! Property tests: neither the request checks nor the token estimator panic on
    //! arbitrary bytes or arbitrary JSON-ish bodies. `SLUICE_FUZZ_CASES` sets the case
    //! count (default 5,000; run once with 1,000,000 before a release).

    use proptest::prelude::*;
    use sluice_config::Tokenizer;

    use super::*;
    use crate::estimate::{output_tokens, prompt_tokens};

    fn cases() -> u32 {
        std::env::var("SLUICE_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5_000)
    }

    const ENDPOINTS: [Endpoint; 3] = [Endpoint::Chat, Endpoint::Completions, Endpoint::Embeddings];
    const TOKENIZERS: [Tokenizer; 4] = [
        Tokenizer::Heuristic,
        Tokenizer::Auto,
        Tokenizer::O200k,
        Tokenizer::Cl100k,
    ];

    /// Keys a request body uses, so generated objects hit the interesting paths.
    const KEYS: &[&str] = &[
        "model",
        "messages",
        "role",
        "content",
        "text",
        "name",
        "tool_calls",
        "tools",
        "functions",
        "response_format",
        "prompt",
        "input",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "stream",
        "stream_options",
        "include_usage",
    ];

    fn number() -> impl Strategy<Value = serde_json::Number> {
        prop_oneof![
            any::<u64>().prop_map(serde_json::Number::from),
            any::<i64>().prop_map(serde_json::Number::from),
            any::<f64>().prop_filter_map("finite", serde_json::Number::from_f64),
            Just(serde_json::Number::from(u64::MAX)),
            Just(serde_json::Number::from(i64::MIN)),
        ]
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            number().prop_map(Value::Number),
            ".{0,40}".prop_map(Value::String),
            "[\u{4e00}-\u{9fff}a-z \u{1F600}-\u{1F64F}]{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof![prop::sample::select(KEYS).prop_map(str::to_owned), ".{0,8}"],
                        inner
                    ),
                    0..6
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn exercise(body: &[u8]) {
        for endpoint in ENDPOINTS {
            if let Ok((json, _model)) = parse(endpoint, body) {
                for t in TOKENIZERS {
                    let _ = prompt_tokens(endpoint, &json, t);
                }
                let _ = output_tokens(endpoint, &json, 1024);
            }
            // The estimator must also survive bodies the checks refuse.
            if let Ok(json) = serde_json::from_slice::<Value>(body) {
                let _ = prompt_tokens(endpoint, &json, Tokenizer::Heuristic);
                let _ = output_tokens(endpoint, &json, 1024);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            exercise(&body);
        }

        #[test]
        fn arbitrary_json_never_panics(
            json in json(),
            model in prop_oneof![Just(None), Just(Some(Value::String("m".into()))), json().prop_map(Some)],
            messages in prop_oneof![Just(None), json().prop_map(Some)],
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut json = json;
            if let Value::Object(obj) = &mut json {
                if let Some(m) = model { obj.insert("model".into(), m); }
                if let Some(m) = messages { obj.insert("messages".into(), m); }
            }
            let mut bytes = serde_json::to_vec(&json).unwrap();
            exercise(&bytes);
            if truncate && !bytes.is_empty() {
                bytes.truncate(cut.index(bytes.len()));
                exercise(&bytes);
            }
        }
    }

    #[test]
    fn checks_name_the_parameter_and_code() {
        let code = |body: &str| match parse(Endpoint::Chat, body.as_bytes()) {
            Ok(_) => "ok",
            Err(ApiError::BadRequest { code, .. }) => code,
            Err(e) => e.kind(),
        };
        assert_eq!(
            code(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#),
            "ok"
        );
        assert_eq!(code("{"), "invalid_json");
        assert_eq!(code("[]"), "invalid_type");
        assert_eq!(code(r#"{"messages":[{}]}"#), "missing_required_parameter");
        assert_eq!(
            code(r#"{"model":"m","messages":[{}],"max_tokens":-1}"#),
            "invalid_value"
        );
        assert_eq!(
            code(r#"{"model":"m","messages":[{}],"max_tokens":null}"#),
            "ok"
        );
        assert_eq!(
            code(r#"{"model":"m","messages":[{}],"n":129}"#),
            "invalid_value"
        );
    }

    #[test]
    fn the_max_wait_header_is_a_duration_or_refused() {
        let with = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(
                "x-sluice-max-wait",
                http::HeaderValue::from_bytes(v).unwrap(),
            );
            header_max_wait(&h).map_err(|e| e.kind())
        };
        assert_eq!(with(b"5s"), Ok(Some(Duration::from_secs(5))));
        assert_eq!(with(b"250ms"), Ok(Some(Duration::from_millis(250))));
        assert_eq!(with(b"2.5"), Ok(Some(Duration::from_millis(2500))));
        assert_eq!(with(b"0"), Ok(Some(Duration::ZERO)));
        for bad in [&b"-1"[..], b"soon", b"\xff", b"", b"1e400"] {
            assert!(with(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            header_max_wait(&HeaderMap::new()).map_err(|e| e.kind()),
            Ok(None)
        );
    }
}

#[cfg(test)]
mod body_limit {
    //! The body limit: a body over it is read on (so the client gets the answer) only
    //! as far as the allowance, and nothing of it is kept.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A body of `chunks` pieces of `size` bytes that counts what was pulled from it.
    fn counted(chunks: u64, size: usize) -> (Body, Arc<AtomicU64>) {
        let pulled = Arc::new(AtomicU64::new(0));
        let p = pulled.clone();
        let stream = futures::stream::iter(0..chunks).map(move |_| {
            p.fetch_add(size as u64, Ordering::Relaxed);
            Ok::<_, std::io::Error>(Bytes::from(vec![b'a'; size]))
        });
        (Body::from_stream(stream), pulled)
    }

    use futures::StreamExt;

    fn declared(n: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_LENGTH, n.into());
        h
    }

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let (body, _) = counted(4, 1000);
        let bytes = read_body(&HeaderMap::new(), body, 4000, LONG)
            .await
            .unwrap();
        assert_eq!(bytes.len(), 4000);
    }

    #[tokio::test]
    async fn a_body_just_over_the_limit_is_read_to_its_end_and_refused() {
        let (body, pulled) = counted(5, 1000);
        let e = read_body(&HeaderMap::new(), body, 4500, LONG)
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::BodyTooLarge { limit: 4500 }), "{e:?}");
        assert_eq!(pulled.load(Ordering::Relaxed), 5000, "drained to the end");
    }

    #[tokio::test]
    async fn a_declared_length_just_over_the_limit_is_drained_and_refused() {
        let (body, pulled) = counted(5, 1000);
        let e = read_body(&declared(5000), body, 4500, LONG)
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::BodyTooLarge { .. }), "{e:?}");
        assert_eq!(pulled.load(Ordering::Relaxed), 5000);
    }

    #[tokio::test]
    async fn an_endless_body_is_read_no_further_than_twice_the_limit() {
        let (body, pulled) = counted(1_000_000, 1000);
        let e = read_body(&HeaderMap::new(), body, 4000, LONG)
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::BodyTooLarge { .. }), "{e:?}");
        let n = pulled.load(Ordering::Relaxed);
        assert!(n <= 8000 + 1000, "read {n} bytes of an endless body");
    }

    #[tokio::test]
    async fn a_body_declared_far_over_the_limit_is_refused_unread() {
        let (body, pulled) = counted(100, 1000);
        let e = read_body(&declared(100_000), body, 4000, LONG)
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::BodyTooLarge { .. }), "{e:?}");
        assert_eq!(pulled.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_body_that_stops_arriving_times_out() {
        let stream = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"{"))])
            .chain(futures::stream::pending());
        let e = read_body(
            &HeaderMap::new(),
            Body::from_stream(stream),
            4000,
            Duration::from_millis(20),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ApiError::BodyTimeout { .. }), "{e:?}");
    }
}
