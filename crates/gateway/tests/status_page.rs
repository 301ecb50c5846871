//! The status page (`GET /status` on the admin listener) in a real browser: headless
//! Chromium loads it from a `sluice-gateway` process under load; the rendered DOM shows
//! the accounts and limits, the bars move between two snapshots, the last refusals
//! appear, and a screenshot is written to `target/status-page.png` for humans.
//!
//! Needs Debian's `chromium` (`scripts/test.sh` installs it; `CHROMIUM` names another
//! binary). Without it the test fails saying so, unless `SLUICE_SKIP_BROWSER_TESTS=1`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::{GatewayProcess, ask, chat, client, sim, sim_model};

/// The browser to drive, or `None` (after saying so loudly) when the test may skip.
fn chromium() -> Option<String> {
    let candidates = std::env::var("CHROMIUM")
        .map(|c| vec![c])
        .unwrap_or_else(|_| vec!["chromium".into(), "chromium-browser".into()]);
    for c in candidates {
        if Command::new(&c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(c);
        }
    }
    let message = "\n\n!!!!! the status page browser test needs headless Chromium: `apt-get install chromium` (scripts/test.sh does), or set CHROMIUM=/path/to/chrome !!!!!\n";
    if std::env::var("SLUICE_SKIP_BROWSER_TESTS").as_deref() == Ok("1") {
        eprintln!("{message}SKIPPED (SLUICE_SKIP_BROWSER_TESTS=1)\n");
        return None;
    }
    panic!("{message}(set SLUICE_SKIP_BROWSER_TESTS=1 to skip it)");
}

/// Runs the browser headless on `url` with `args` (`--dump-dom`, `--screenshot=…`),
/// letting the page's script poll for up to 3 s of virtual time.
fn browse(browser: &str, profile: &std::path::Path, url: &str, args: &[&str]) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `data-used` of every `requests` limit in the DOM (`r…` limit ids), summed.
fn requests_used(dom: &str) -> u64 {
    dom.split("data-limit=\"r")
        .skip(1)
        .filter_map(|s| {
            let used = s.split("data-used=\"").nth(1)?;
            used.split('"').next()?.parse::<u64>().ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_live_quotas_in_headless_chromium() {
    let Some(browser) = chromium() else { return };
    let (busy, tight) = ("status-busy-m", "status-tight-m");
    let sim = sim(
        vec![
            sim_model(busy, 10_000, 10_000_000, Duration::from_secs(60)),
            sim_model(tight, 10_000, 10_000_000, Duration::from_secs(60)),
        ],
        &[],
    )
    .await;
    let admin_port = sluice_testkit::free_port();
    let toml = format!(
        r#"
[server]
admin_listen = "127.0.0.1:{admin_port}"
[[upstreams]]
name = "sim"
base_url = "{base}"
keys = ["sk-status-a", "sk-status-b"]
[[models]]
name = "{busy}"
upstream = "sim"
limits = [{{ requests = 2000, per = "60s" }}, {{ tokens = 1000000, per = "60s" }}]
pacing = "off"
[[models]]
name = "{tight}"
upstream = "sim"
limits = [{{ requests = 1, per = "60s" }}]
"#,
        base = sim.base_url()
    );
    let gw = GatewayProcess::start(&toml);
    let admin = format!("http://127.0.0.1:{admin_port}");
    let c = client();
    // The page is one self-contained document with a policy that loads nothing else.
    // The admin listener is bound just after the main one is announced.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let resp = loop {
        match c.get(format!("{admin}/status")).send().await {
            Ok(r) => break r,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("no admin listener: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(resp.status(), 200);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");

    // Load: a steady stream of requests, and refusals on the tight model.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (c, url, stop) = (c.clone(), gw.url.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                let a = chat(&c, &url, ask(busy, 4), &[]).await;
                assert_eq!(a.status, 200, "{a:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    for _ in 0..3 {
        chat(&c, &gw.url, ask(tight, 4), &[("x-sluice-max-wait", "0s")]).await;
    }

    let profile = tempfile::tempdir().expect("profile dir");
    let page = format!("{admin}/status");
    let first = {
        let (b, p, u) = (browser.clone(), profile.path().to_owned(), page.clone());
        tokio::task::spawn_blocking(move || browse(&b, &p, &u, &["--dump-dom"]))
            .await
            .unwrap()
    };
    for needle in [
        format!("data-model=\"{busy}\""),
        format!("data-model=\"{tight}\""),
        "data-account=\"key-0\"".to_owned(),
        "data-account=\"key-1\"".to_owned(),
        "requests / 1m".to_owned(),
        "class=\"fill".to_owned(),
        "state-active".to_owned(),
        "rate_limited".to_owned(),
    ] {
        assert!(
            first.contains(&needle),
            "the rendered page lacks {needle}: {first}"
        );
    }
    let used_first = requests_used(&first);
    // Wait until the load moved the windows on, then look again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut moved = false;
    while !moved && tokio::time::Instant::now() < deadline {
        let q: serde_json::Value = match c.get(format!("{admin}/v1/quotas")).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        let used: u64 = q["models"][0]["accounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["limits"][0]["used"].as_u64())
            .sum();
        moved = used > used_first + 5;
        if !moved {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(moved, "the load did not move the windows");
    let shot: PathBuf = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/")
        .join("status-page.png");
    let second = {
        let (b, p, u) = (browser.clone(), profile.path().to_owned(), page.clone());
        let shot_arg = format!("--screenshot={}", shot.display());
        tokio::task::spawn_blocking(move || {
            let dom = browse(&b, &p, &u, &["--dump-dom"]);
            browse(&b, &p, &u, &[&shot_arg, "--window-size=1280,900"]);
            dom
        })
        .await
        .unwrap()
    };
    stop.store(true, Ordering::Relaxed);
    load.await.expect("the load ran without a refusal");
    let used_second = requests_used(&second);
    assert!(
        used_second > used_first,
        "the bars did not move between two snapshots: {used_first} then {used_second}"
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "no screenshot at {}", shot.display());
    eprintln!("status page screenshot: {}", shot.display());
}
