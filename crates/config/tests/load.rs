//! Loading real files: the shipped example, overrides, and errors that name the key.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::Path;
use std::time::Duration;

use sluice_config::{ConfigError, Dialect, LimitUnit, from_str, load};

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn example_env() -> HashMap<String, String> {
    env(&[
        ("DASHSCOPE_KEY_A", "sk-aaaaaaaa"),
        ("DASHSCOPE_KEY_B", "sk-bbbbbbbb"),
    ])
}

const MINIMAL: &str = r#"
[[upstreams]]
name = "sim"
base_url = "http://127.0.0.1:1/v1"
keys = ["k0"]
[[models]]
name = "m"
upstream = "sim"
rpm = 60
"#;

#[test]
fn the_shipped_example_loads_as_it_stands() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sluice.toml");
    let c = load(&path, &[], &example_env()).unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    // The quick start runs the embedded limiter and serves this machine without tenant keys.
    assert!(c.store.is_none());
    assert!(c.tenants.is_empty());
    assert_eq!(c.upstreams[0].dialect, Dialect::Dashscope);
    assert_eq!(c.upstreams[0].accounts.len(), 2);
    assert_eq!(c.upstreams[0].accounts[1].keys[0].expose(), "sk-bbbbbbbb");
    let max = c.model("qwen3-max").unwrap();
    assert_eq!(max.limits.len(), 3);
    assert_eq!(max.fallback, ["qwen-plus", "qwen-turbo"]);
    let plus = c.model("qwen-plus").unwrap();
    assert_eq!(plus.limits[2].unit, LimitUnit::Requests);
    assert_eq!(plus.limits[2].per, Duration::from_secs(1));
    assert_eq!(plus.limits[1].amount, NonZeroU64::new(1_000_000).unwrap());
    assert_eq!(c.queue.max_wait, Duration::from_secs(30));
    // Secrets never print.
    let debug = format!("{c:?}");
    assert!(!debug.contains("sk-aaaaaaaa") && !debug.contains("sk-bbbbbbbb"));
}

#[test]
fn a_missing_environment_variable_names_the_key_and_the_variable() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sluice.toml");
    let err = load(&path, &[], &env(&[("DASHSCOPE_KEY_A", "a")])).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("upstreams[0].keys[1]") && text.contains("DASHSCOPE_KEY_B"),
        "{text}"
    );
}

#[test]
fn flags_win_over_environment_overrides_which_win_over_the_file() {
    let e = env(&[
        ("SLUICE_SERVER__LISTEN", "127.0.0.1:9001"),
        ("SLUICE_QUEUE__MAX_WAIT", "2s"),
    ]);
    let c = from_str(MINIMAL, &[], &e).unwrap();
    assert_eq!(c.server.listen.port(), 9001);
    assert_eq!(c.queue.max_wait, Duration::from_secs(2));
    let flags = [("server.listen".to_owned(), "127.0.0.1:9002".to_owned())];
    let c = from_str(MINIMAL, &flags, &e).unwrap();
    assert_eq!(c.server.listen.port(), 9002);
    let flags = [
        (
            "store.redis_url".to_owned(),
            "redis://127.0.0.1:6390/0".to_owned(),
        ),
        ("store.expected_replicas".to_owned(), "4".to_owned()),
    ];
    let c = from_str(MINIMAL, &flags, &e).unwrap();
    let store = c.store.unwrap();
    assert_eq!(store.expected_replicas.get(), 4);
    assert_eq!(store.replica_index, None);
}

#[test]
fn a_replica_index_is_counted_from_zero_below_the_expected_replicas() {
    let e = env(&[]);
    let with = |index: &str| {
        let flags = [
            (
                "store.redis_url".to_owned(),
                "redis://127.0.0.1:6390/0".to_owned(),
            ),
            ("store.expected_replicas".to_owned(), "3".to_owned()),
            ("store.replica_index".to_owned(), index.to_owned()),
        ];
        from_str(MINIMAL, &flags, &e)
    };
    assert_eq!(with("2").unwrap().store.unwrap().replica_index, Some(2));
    let err = with("3").unwrap_err().to_string();
    for part in [
        "store.replica_index",
        "3",
        "below store.expected_replicas (3)",
    ] {
        assert!(err.contains(part), "{err:?} lacks {part:?}");
    }
}

#[test]
fn errors_name_the_key_the_value_and_what_was_expected() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[queue]\nmax_wait = \"30x\"\n",
            &["queue.max_wait", "30x", "duration"],
        ),
        (
            "[store]\nredis_url = \"redis://x\"\non_error = \"explode\"\n",
            &["store.on_error", "explode", "fail_closed"],
        ),
        (
            "[server]\nlisten = \"nowhere\"\n",
            &["server.listen", "nowhere", "address"],
        ),
        (
            "[server]\nlisten_port = 1\n",
            &["listen_port", "unknown field"],
        ),
        (
            "[[models]]\nname = \"x\"\nupstream = \"sim\"\nrpm = \"lots\"\n",
            &["models[1].rpm", "lots", "whole number"],
        ),
        (
            "[[models]]\nname = \"x\"\nupstream = \"nope\"\nrpm = 1\n",
            &["models[1].upstream", "nope", "sim"],
        ),
        (
            "[[models]]\nname = \"x\"\nupstream = \"sim\"\nrpm = 1\nfallback = [\"ghost\"]\n",
            &["models[1].fallback", "ghost"],
        ),
        (
            "[[models]]\nname = \"x\"\nupstream = \"sim\"\n",
            &["models[1]", "no limits"],
        ),
        (
            "[[models]]\nname = \"x\"\nupstream = \"sim\"\nlimits = [{ requests = 1, tokens = 2, per = \"1s\" }]\n",
            &["models[1].limits[0]", "exactly one"],
        ),
        (
            "[[models]]\nname = \"x\"\nupstream = \"sim\"\nrpm = 0\n",
            &["models[1].rpm", "at least 1"],
        ),
        (
            "[[models]]\nname = \"x\"\nupstream = \"sim\"\nrpm = 5\nlimits = [{ requests = 1, per = \"60s\" }]\n",
            &["models[1].limits[0]", "one limit per unit"],
        ),
        (
            "[[models]]\nname = \"m\"\nupstream = \"sim\"\nrpm = 1\n",
            &["models[1].name", "duplicate model"],
        ),
        (
            "[[tenants]]\nname = \"t\"\nkey = \"short\"\n",
            &["tenants[0].key", "at least 8"],
        ),
        (
            "[[upstreams]]\nname = \"u2\"\nbase_url = \"ftp://x\"\nkeys = [\"k\"]\n",
            &["upstreams[1].base_url", "http"],
        ),
        (
            "[[upstreams]]\nname = \"u2\"\nbase_url = \"http://x\"\nkeys = [\"k\"]\ndialect = \"gemini\"\n",
            &["upstreams[1].dialect", "gemini", "openai"],
        ),
        (
            "[store]\nredis_url = \"http://x\"\n",
            &["store.redis_url", "redis://"],
        ),
    ];
    for (extra, needles) in cases {
        let text = format!("{MINIMAL}\n{extra}");
        let err = from_str(&text, &[], &env(&[])).unwrap_err().to_string();
        for n in *needles {
            assert!(err.contains(n), "error for {extra:?} lacks {n:?}: {err}");
        }
    }
}

#[test]
fn a_model_named_without_figures_gets_its_preset_and_figures_win_over_it() {
    let text = r#"
[[upstreams]]
name = "dashscope"
base_url = "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"
dialect = "dashscope"
keys = ["k"]
[[models]]
name = "qwen-turbo"
upstream = "dashscope"
[[models]]
name = "qwen3-max"
upstream = "dashscope"
rpm = 100
"#;
    let c = from_str(text, &[], &env(&[])).unwrap();
    let turbo = c.model("qwen-turbo").unwrap();
    assert_eq!(turbo.preset, Some("qwen-turbo"));
    assert!(
        turbo
            .limits
            .iter()
            .any(|l| l.unit == LimitUnit::Tokens && l.amount.get() == 5_000_000)
    );
    let max = c.model("qwen3-max").unwrap();
    assert_eq!(max.preset, None);
    assert_eq!(max.limits.len(), 1);
    assert_eq!(max.limits[0].amount.get(), 100);
}

#[test]
fn numbers_may_come_from_the_environment_and_tokenizers_resolve() {
    let text = r#"
[[upstreams]]
name = "openai"
base_url = "https://api.openai.com/v1"
keys = ["${K}"]
[[models]]
name = "gpt-4o-mini"
upstream = "openai"
rpm = "${RPM}"
tpm = "${TPM:-200000}"
"#;
    let c = from_str(text, &[], &env(&[("K", "sk"), ("RPM", "500")])).unwrap();
    let m = &c.models[0];
    assert_eq!(m.limits[0].amount.get(), 500);
    assert_eq!(m.limits[1].amount.get(), 200_000);
    assert_eq!(m.tokenizer, sluice_config::Tokenizer::O200k);
}

#[test]
fn an_unreadable_file_names_the_path() {
    let err = load(Path::new("/nonexistent/sluice.toml"), &[], &env(&[])).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/sluice.toml"));
}

#[test]
fn the_sidecar_section_has_defaults_env_overrides_and_a_secret_admin_key() {
    let c = from_str(MINIMAL, &[], &env(&[])).unwrap();
    assert_eq!(c.sidecar.listen.to_string(), "127.0.0.1:8081");
    assert!(c.sidecar.admin_key.is_none());
    assert_eq!(c.sidecar.consumer_group, "sluice-sidecar");
    assert_eq!(c.sidecar.quota_state_after, Duration::from_secs(3600));
    assert_eq!(c.sidecar.aimd_decrease, 0.9);

    let text = format!(
        "{MINIMAL}\n[sidecar]\nadmin_key = \"${{SLUICE_ADMIN_KEY}}\"\nclaim_after = \"2s\"\naimd_increase = 0.05\n"
    );
    let e = env(&[
        ("SLUICE_ADMIN_KEY", "admin-key-0123456789"),
        ("SLUICE_SIDECAR__LISTEN", "127.0.0.1:9191"),
        ("SLUICE_SIDECAR__SAMPLE_PER_SECOND", "10"),
    ]);
    let c = from_str(&text, &[], &e).unwrap();
    assert_eq!(c.sidecar.listen.to_string(), "127.0.0.1:9191");
    assert_eq!(c.sidecar.sample_per_second, 10);
    assert_eq!(c.sidecar.claim_after, Duration::from_secs(2));
    assert_eq!(c.sidecar.aimd_increase, 0.05);
    let admin = c.sidecar.admin_key.as_ref().unwrap();
    assert!(admin.matches(&sluice_config::KeyDigest::of("admin-key-0123456789")));
    assert!(!admin.matches(&sluice_config::KeyDigest::of("admin-key-012345678")));
    assert!(!format!("{c:?}").contains("admin-key-0123456789"));

    let bad = format!("{MINIMAL}\n[sidecar]\naimd_decrease = 1.5\n");
    let err = from_str(&bad, &[], &env(&[])).unwrap_err().to_string();
    assert!(
        err.contains("sidecar.aimd_decrease") && err.contains("1.5"),
        "{err}"
    );
    let short = format!("{MINIMAL}\n[sidecar]\nadmin_key = \"short\"\n");
    let err = from_str(&short, &[], &env(&[])).unwrap_err().to_string();
    assert!(
        err.contains("sidecar.admin_key") && !err.contains("short\""),
        "{err}"
    );
}
