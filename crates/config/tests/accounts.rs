//! Keys grouped into accounts (`upstreams[].accounts`) and models drawing on one quota
//! (`[[quotas]]`, `models[].quota`): what loads, and the precise errors of what does not.

use std::collections::HashMap;

use sluice_config::{ConfigError, from_str};

fn load(text: &str) -> Result<sluice_config::Config, ConfigError> {
    let env: HashMap<String, String> = [
        ("K1".to_string(), "sk-one-1234".to_string()),
        ("K2".to_string(), "sk-two-1234".to_string()),
    ]
    .into();
    from_str(text, &[], &env)
}

fn error(text: &str) -> String {
    load(text).expect_err("refused").to_string()
}

const MODEL: &str = "[[models]]\nname = \"m\"\nupstream = \"up\"\nrpm = 60\n";

fn upstream(keys: &str) -> String {
    format!("[[upstreams]]\nname = \"up\"\nbase_url = \"https://example.com/v1\"\n{keys}\n{MODEL}")
}

#[test]
fn keys_of_one_account_are_one_account_with_every_key() {
    let c = load(&upstream(
        r#"accounts = [{ name = "org-a", keys = ["${K1}", "${K2}"] }, { name = "org-b", keys = ["sk-b-123456"] }]"#,
    ))
    .unwrap();
    let up = &c.upstreams[0];
    let names: Vec<&str> = up.accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["org-a", "org-b"]);
    assert_eq!(up.accounts[0].keys.len(), 2);
    assert_eq!(up.accounts[0].keys[1].expose(), "sk-two-1234");
    assert_eq!(up.keys.len(), 3, "every key, flattened");
    // The key written out in the file is reported by its path, those from ${VAR} are not.
    assert_eq!(c.secrets_in_file, ["upstreams[0].accounts[1].keys[0]"]);
    assert!(!format!("{c:?}").contains("sk-one-1234"));
}

#[test]
fn plain_keys_are_one_account_each() {
    let c = load(&upstream(r#"keys = ["${K1}", "${K2}"]"#)).unwrap();
    let names: Vec<&str> = c.upstreams[0]
        .accounts
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(names, ["key-0", "key-1"]);
}

#[test]
fn accounts_errors_name_the_key() {
    let both = error(&upstream(
        r#"keys = ["${K1}"]
accounts = [{ name = "a", keys = ["${K2}"] }]"#,
    ));
    assert!(
        both.contains("upstreams[0].accounts") && both.contains("both keys and accounts"),
        "{both}"
    );
    let none = error(&upstream(""));
    assert!(
        none.contains("upstreams[0].keys") && none.contains("accounts = ["),
        "{none}"
    );
    let empty = error(&upstream(r#"accounts = [{ name = "a", keys = [] }]"#));
    assert!(empty.contains("upstreams[0].accounts[0].keys"), "{empty}");
    let dup = error(&upstream(
        r#"accounts = [{ name = "a", keys = ["${K1}"] }, { name = "a", keys = ["${K2}"] }]"#,
    ));
    assert!(dup.contains("upstreams[0].accounts[1].name"), "{dup}");
    for name in ["org/a", "org?a", "org a", ""] {
        let bad = error(&upstream(&format!(
            r#"accounts = [{{ name = "{name}", keys = ["${{K1}}"] }}]"#
        )));
        assert!(
            bad.contains("upstreams[0].accounts[0].name") && bad.contains("letters, digits"),
            "{bad}"
        );
    }
}

#[test]
fn a_key_listed_twice_is_refused_without_printing_it() {
    for keys in [
        r#"keys = ["${K1}", "${K1}"]"#,
        r#"accounts = [{ name = "a", keys = ["${K1}"] }, { name = "b", keys = ["${K2}", "${K1}"] }]"#,
    ] {
        let e = error(&upstream(keys));
        assert!(e.contains("the same key as upstreams[0]."), "{e}");
        assert!(!e.contains("sk-one-1234"), "the key never appears: {e}");
    }
}

const QUOTA_UP: &str =
    "[[upstreams]]\nname = \"up\"\nbase_url = \"https://example.com/v1\"\nkeys = [\"${K1}\"]\n";

#[test]
fn models_of_one_quota_take_its_limits_and_its_name() {
    let c = load(&format!(
        r#"{QUOTA_UP}
[[quotas]]
name = "opus-4"
rpm = 50
limits = [{{ output_tokens = 8000, per = "60s" }}]
pacing = "off"
[[models]]
name = "claude-opus-4-1"
upstream = "up"
quota = "opus-4"
[[models]]
name = "claude-opus-4-0"
upstream = "up"
quota = "opus-4"
[[models]]
name = "other"
upstream = "up"
rpm = 10
"#
    ))
    .unwrap();
    let a = c.model("claude-opus-4-1").unwrap();
    let b = c.model("claude-opus-4-0").unwrap();
    assert_eq!((a.quota.as_str(), b.quota.as_str()), ("opus-4", "opus-4"));
    assert_eq!(a.limits, b.limits);
    assert_eq!(a.limits.len(), 2);
    assert_eq!(a.pacing, sluice_config::PacingMode::Off);
    assert_eq!(c.model("other").unwrap().quota, "other", "its own name");
}

#[test]
fn quota_errors_name_the_key() {
    let unknown = error(&format!(
        "{QUOTA_UP}[[models]]\nname = \"m\"\nupstream = \"up\"\nquota = \"nope\"\n"
    ));
    assert!(
        unknown.contains("models[0].quota") && unknown.contains("\"nope\""),
        "{unknown}"
    );
    let limits_too = error(&format!(
        "{QUOTA_UP}[[quotas]]\nname = \"q\"\nrpm = 5\n[[models]]\nname = \"m\"\nupstream = \"up\"\nquota = \"q\"\ntpm = 9\n"
    ));
    assert!(
        limits_too.contains("models[0].tpm") && limits_too.contains("the quota's"),
        "{limits_too}"
    );
    let no_limits = error(&format!("{QUOTA_UP}[[quotas]]\nname = \"q\"\n"));
    assert!(
        no_limits.contains("quotas[0]") && no_limits.contains("at least one limit"),
        "{no_limits}"
    );
    let dup = error(&format!(
        "{QUOTA_UP}[[quotas]]\nname = \"q\"\nrpm = 5\n[[quotas]]\nname = \"q\"\nrpm = 6\n"
    ));
    assert!(dup.contains("quotas[1].name"), "{dup}");
    let clash = error(&format!(
        "{QUOTA_UP}[[quotas]]\nname = \"m\"\nrpm = 5\n[[models]]\nname = \"m\"\nupstream = \"up\"\nrpm = 9\n"
    ));
    assert!(
        clash.contains("quotas[0].name") && clash.contains("also the name of a model"),
        "{clash}"
    );
    let two_upstreams = error(&format!(
        "{QUOTA_UP}[[upstreams]]\nname = \"up2\"\nbase_url = \"https://example.org/v1\"\nkeys = [\"${{K2}}\"]\n\
         [[quotas]]\nname = \"q\"\nrpm = 5\n\
         [[models]]\nname = \"a\"\nupstream = \"up\"\nquota = \"q\"\n\
         [[models]]\nname = \"b\"\nupstream = \"up2\"\nquota = \"q\"\n"
    ));
    assert!(
        two_upstreams.contains("quotas[0].name") && two_upstreams.contains("one upstream"),
        "{two_upstreams}"
    );
}

#[test]
fn an_indexed_override_swaps_one_upstream_url() {
    let env: HashMap<String, String> = [
        ("K1".to_string(), "sk-one-1234".to_string()),
        (
            "SLUICE_UPSTREAMS__0__BASE_URL".to_string(),
            "http://127.0.0.1:9/v1".to_string(),
        ),
    ]
    .into();
    let c = from_str(&upstream(r#"keys = ["${K1}"]"#), &[], &env).unwrap();
    assert_eq!(c.upstreams[0].base_url, "http://127.0.0.1:9/v1");
    let env: HashMap<String, String> = [
        ("K1".to_string(), "sk-one-1234".to_string()),
        (
            "SLUICE_UPSTREAMS__3__BASE_URL".to_string(),
            "http://x/v1".to_string(),
        ),
    ]
    .into();
    let e = from_str(&upstream(r#"keys = ["${K1}"]"#), &[], &env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("SLUICE_UPSTREAMS__3__BASE_URL") && e.contains("list of 1"),
        "{e}"
    );
}
