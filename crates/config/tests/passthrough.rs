//! `[[upstreams]] passthrough`: the extra `/v1/...` paths an upstream forwards as is,
//! validated at load with errors that name the entry (issue #12, "paths").

use std::collections::HashMap;

use sluice_config::from_str;

fn with(list: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"sim\"\nbase_url = \"http://127.0.0.1:1/v1\"\nkeys = [\"k0\"]\npassthrough = {list}\n[[models]]\nname = \"m\"\nupstream = \"sim\"\nrpm = 1\n"
    )
}

#[test]
fn a_valid_list_is_kept_and_the_default_is_empty() {
    let e = HashMap::new();
    let c = from_str(
        &with(r#"["/v1/files", "/v1/batches/*", "/v1/batches/*/cancel"]"#),
        &[],
        &e,
    )
    .unwrap();
    assert_eq!(
        c.upstreams[0].passthrough,
        ["/v1/files", "/v1/batches/*", "/v1/batches/*/cancel"]
    );
    let none = with("[]").replace("passthrough = []\n", "");
    assert!(
        from_str(&none, &[], &e).unwrap().upstreams[0]
            .passthrough
            .is_empty()
    );
}

#[test]
fn unsafe_entries_are_refused_naming_the_entry() {
    let e = HashMap::new();
    for bad in [
        "/files",
        "/v1/",
        "/v1//files",
        "/v1/../stats",
        "/v1/./files",
        "/v1/%2e%2e/stats",
        "/v1/files?x=1",
        "/v1/a\\\\b",
        "v1/files",
    ] {
        let err = from_str(&with(&format!("[\"{bad}\", \"/v1/ok\"]")), &[], &e)
            .expect_err(bad)
            .to_string();
        assert!(
            err.contains("upstreams[0].passthrough[0]") && err.contains("a path under /v1/"),
            "{bad}: {err}"
        );
    }
    let err = from_str(&with(r#"["/v1/ok", "/v1/.."]"#), &[], &e)
        .unwrap_err()
        .to_string();
    assert!(err.contains("upstreams[0].passthrough[1]"), "{err}");
}
