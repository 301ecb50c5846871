//! Redis with TLS (`rediss://`) and with AUTH/ACL users; secrets never in errors.

use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_limiter::{Decision, LimitError, RedisOptions, RedisStore, Store};
use sluice_testkit::RedisServer;

use crate::support::{key, one, quota, window};

fn per_second() -> sluice_limiter::Quota {
    quota(vec![
        sluice_limiter::Limit::requests(100, window(1000)).unwrap(),
    ])
}

fn options() -> RedisOptions {
    RedisOptions {
        timeout: Duration::from_secs(2),
        ..RedisOptions::default()
    }
}

async fn one_decision(url: &str) -> Result<Decision, LimitError> {
    let store = RedisStore::new(url, options()).map_err(LimitError::from)?;
    store
        .acquire(&[key("a")], &per_second(), one(), Duration::ZERO)
        .await
}

/// Runs in a child process whose trust store is the test CA (`SSL_CERT_FILE`, the
/// standard way to trust a private CA; rustls-native-certs reads it).
#[test]
#[ignore = "a child process of the TLS test, started by it"]
fn tls_child() {
    let url = std::env::var("SLUICE_TLS_URL").expect("started by the TLS test");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let decision = rt.block_on(one_decision(&url));
    let expect_ok = std::env::var("SLUICE_TLS_EXPECT").as_deref() == Ok("ok");
    match decision {
        Ok(Decision::Granted(_)) if expect_ok => {}
        Err(LimitError::Unavailable(_)) if !expect_ok => {}
        other => panic!("unexpected outcome over TLS: {other:?}"),
    }
}

fn run_tls_child(url: &str, ca: Option<&std::path::Path>, expect: &str) -> bool {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "security::tls_child",
        "--exact",
        "--ignored",
        "--test-threads=1",
    ])
    .env("SLUICE_TLS_URL", url)
    .env("SLUICE_TLS_EXPECT", expect)
    .stdout(Stdio::null());
    match ca {
        Some(ca) => cmd.env("SSL_CERT_FILE", ca),
        // An empty trust store: nothing vouches for the test CA.
        None => cmd.env("SSL_CERT_FILE", "/dev/null"),
    };
    cmd.status().unwrap().success()
}

#[test]
fn rediss_works_with_a_trusted_ca_and_fails_cleanly_without_it() {
    let server = RedisServer::start_tls();
    let url = server.url();
    assert!(url.starts_with("rediss://"));
    assert!(
        run_tls_child(&url, Some(&server.ca_file()), "ok"),
        "a decision over TLS"
    );
    assert!(
        run_tls_child(&url, None, "refused"),
        "an untrusted certificate is an error, not a hang"
    );
    let keys = server.cli(&["--scan"]);
    assert!(
        keys.contains("sluice:{test/model}:w:a"),
        "the decision was made in Redis: {keys}"
    );
}

#[tokio::test]
async fn an_acl_user_limited_to_sluice_keys_is_enough_and_a_wrong_password_is_not_echoed() {
    let server = RedisServer::start();
    let setup = server.cli(&[
        "ACL",
        "SETUSER",
        "sluice",
        "on",
        ">s3cret-pass",
        "~sluice:*",
        "+@all",
    ]);
    assert_eq!(setup.trim(), "OK");
    let port = server.port();
    let good = format!("redis://sluice:s3cret-pass@127.0.0.1:{port}/0");
    assert!(matches!(
        one_decision(&good).await,
        Ok(Decision::Granted(_))
    ));
    let bad = format!("redis://sluice:wrong-pass@127.0.0.1:{port}/0");
    match one_decision(&bad).await {
        Err(e @ LimitError::Unavailable(_)) => {
            let text = format!("{e} {e:?}");
            assert!(
                !text.contains("wrong-pass"),
                "the password leaked into the error: {text}"
            );
        }
        other => panic!("a wrong password must be refused: {other:?}"),
    }
}
