//! The HTTP surface never panics (issue #12): arbitrary paths, headers and bodies, first
//! through the router with `tower::ServiceExt::oneshot` (fast), then a few hundred over a
//! real socket to a gateway process. Every answer is a well-formed HTTP response; every
//! error the gateway renders is OpenAI-shaped JSON; the gateway stays healthy.
//! `SLUICE_FUZZ_CASES` sets the router case count (default 400; the socket runs a
//! quarter of it, at least 100).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use tower::ServiceExt;

use crate::support::*;

fn cases() -> u32 {
    std::env::var("SLUICE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

/// One generated request.
#[derive(Clone, Debug)]
struct Probe {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

const PREFIXES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/quotas",
    "/v1/admin/accounts",
    "/v1",
    "/v1/",
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/stats",
];

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("%2e%2e".to_owned()),
        Just("%2F".to_owned()),
        Just("%5c".to_owned()),
        Just("%00".to_owned()),
        Just("%25".to_owned()),
        Just("".to_owned()),
        "[a-zA-Z0-9._~%:@!$&'()*+,;=-]{0,12}",
        "[\\x21-\\x7e]{0,8}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    (
        prop::sample::select(PREFIXES),
        prop::collection::vec(segment(), 0..4),
        prop::option::of("[a-z0-9=&%._-]{0,16}"),
    )
        .prop_map(|(prefix, segs, query)| {
            let mut p = prefix.to_owned();
            for s in segs {
                p.push('/');
                p.push_str(&s);
            }
            if let Some(q) = query {
                p.push('?');
                p.push_str(&q);
            }
            p
        })
}

fn header() -> impl Strategy<Value = (&'static str, String)> {
    (
        prop::sample::select(
            &[
                "content-type",
                "authorization",
                "x-sluice-max-wait",
                "x-request-id",
                "accept",
                "traceparent",
                "api-key",
                "x-stainless-retry-count",
            ][..],
        ),
        prop_oneof![
            Just("application/json".to_owned()),
            Just("Bearer sk-fuzz".to_owned()),
            Just("text/plain".to_owned()),
            "[0-9]{1,6}(ms|s|m|h)?",
            "[\\x20-\\x7e]{0,40}",
        ],
    )
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..64),
        "[\\x20-\\x7e]{0,80}".prop_map(String::into_bytes),
        (
            prop::sample::select(&["fuzz-m", "nope", ""][..]),
            "[\\x20-\\x7e]{0,20}",
            prop::option::of(0u64..100_000),
            any::<bool>(),
        )
            .prop_map(|(model, text, max, stream)| {
                let mut v = serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}], "stream": stream});
                if let Some(m) = max {
                    v["max_tokens"] = m.into();
                }
                serde_json::to_vec(&v).unwrap()
            }),
    ]
}

fn probe() -> impl Strategy<Value = Probe> {
    (
        prop::sample::select(&["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"][..]),
        path(),
        prop::collection::vec(header(), 0..4),
        body(),
    )
        .prop_map(|(method, path, headers, body)| Probe {
            method,
            path,
            headers,
            body,
        })
}

/// Checks one answer: a real status, and for an error an OpenAI-shaped JSON body unless
/// it is an operational route's plain answer or comes from the upstream as is.
fn check(p: &Probe, status: u16, content_type: &str, body: &[u8]) -> Result<(), String> {
    if !(100..600).contains(&status) {
        return Err(format!("status {status}"));
    }
    if status < 400 {
        return Ok(());
    }
    if !content_type.starts_with("application/json") {
        return Err(format!(
            "an error without a JSON body: {status} {content_type:?} {:?}",
            String::from_utf8_lossy(body)
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "{status}: not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    })?;
    let e = &v["error"];
    if !(e["message"].is_string() && e["type"].is_string() && e.get("code").is_some()) {
        return Err(format!("{status}: not OpenAI-shaped: {v}"));
    }
    let _ = p;
    Ok(())
}

fn toml(base: &str) -> String {
    format!(
        "[queue]\nmax_wait = \"200ms\"\n[[upstreams]]\nname = \"sim\"\nbase_url = \"{base}\"\nkeys = [\"sk-fuzz-0\", \"sk-fuzz-1\"]\npassthrough = [\"/v1/files\", \"/v1/batches/*\"]\n[[models]]\nname = \"fuzz-m\"\nupstream = \"sim\"\nrpm = 100000\ntpm = 100000000\n"
    )
}

#[test]
fn arbitrary_requests_get_well_formed_answers_and_the_gateway_stays_healthy() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sim = rt.block_on(sim(
        vec![sim_model(
            "fuzz-m",
            100_000,
            100_000_000,
            Duration::from_secs(60),
        )],
        &[],
    ));
    let toml = toml(&sim.base_url());
    let config = sluice_config::from_str(
        &toml,
        &[],
        &std::collections::HashMap::<String, String>::new(),
    )
    .expect("config");
    let gw = rt.block_on(async { sluice_proxy::Gateway::new(config).expect("gateway") });
    let router = gw.router();

    // Through the router.
    let mut runner = TestRunner::new(RunnerConfig {
        cases: cases(),
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let result = runner.run(&probe(), |p| {
        let mut req = http::Request::builder()
            .method(p.method)
            .uri(p.path.as_str());
        for (k, v) in &p.headers {
            req = req.header(*k, v.as_str());
        }
        let Ok(req) = req.body(Body::from(p.body.clone())) else {
            // Not a request the HTTP layer would let through: rejected, not passed, so
            // that proptest fails the run if the strategy produced too few real ones.
            return Err(TestCaseError::reject("not a valid HTTP request"));
        };
        let (status, ct, bytes) = rt.block_on(async {
            let resp = tokio::time::timeout(Duration::from_secs(20), router.clone().oneshot(req))
                .await
                .expect("an answer within 20 s")
                .expect("infallible");
            let status = resp.status().as_u16();
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let bytes = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
                .await
                .expect("the body within 20 s")
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (status, ct, bytes)
        });
        check(&p, status, &ct, &bytes).map_err(|e| TestCaseError::fail(format!("{p:?}: {e}")))
    });
    if let Err(e) = result {
        panic!("{e}");
    }

    // Over a real socket, to a gateway process.
    let process = GatewayProcess::start(&toml);
    let addr = process.url.trim_start_matches("http://").to_owned();
    let mut runner = TestRunner::new(RunnerConfig {
        cases: (cases() / 4).max(100),
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let result = runner.run(&probe(), |p| {
        // Only requests the HTTP layer accepts reach the router (hyper answers the rest
        // with a bare 400, which is still a well-formed response).
        let mut builder = http::Request::builder()
            .method(p.method)
            .uri(p.path.as_str());
        for (k, v) in &p.headers {
            builder = builder.header(*k, v.as_str());
        }
        let parsed = builder.body(()).is_ok();
        let (status, ct, body) = raw(&addr, &p);
        if parsed {
            check(&p, status, &ct, &body).map_err(|e| TestCaseError::fail(format!("{p:?}: {e}")))
        } else if (100..600).contains(&status) {
            Ok(())
        } else {
            Err(TestCaseError::fail(format!("{p:?}: status {status}")))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let healthy = rt.block_on(async {
        client()
            .get(format!("{}/healthz", process.url))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert_eq!(healthy.ok(), Some(200), "the gateway is still healthy");
    let served = rt.block_on(chat(&client(), &process.url, ask("fuzz-m", 8), &[]));
    assert_eq!(served.status, 200, "and still serves: {served:?}");
}

/// Sends `p` over a fresh connection; the status, content type and body (the body as
/// sent: chunked encoding is left in, it is only checked for errors, which are not
/// chunked).
fn raw(addr: &str, p: &Probe) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{} {} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n",
        p.method, p.path
    )
    .into_bytes();
    for (k, v) in &p.headers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", p.body.len()).as_bytes());
    req.extend_from_slice(&p.body);
    let _ = s.write_all(&req);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{p:?}: no HTTP head in {:?}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let body = out[split + 4..].to_vec();
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{p:?}: not an HTTP status line: {head:?}"));
    let ct = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (status, ct, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(i) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < i + 2 + size {
            return out;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[(i + 2 + size + 2).min(b.len())..];
    }
}
