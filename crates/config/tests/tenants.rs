//! A tenant's own limits (`rpm`, `tpd`, `limits`, `[[tenants.models]]`) and money
//! `budget`: what loads, and the precise errors of what does not.

use std::collections::HashMap;

use sluice_config::{ConfigError, LimitUnit, from_str};

fn load(text: &str) -> Result<sluice_config::Config, ConfigError> {
    from_str(text, &[], &HashMap::<String, String>::new())
}

fn error(text: &str) -> String {
    load(text).expect_err("refused").to_string()
}

/// An upstream, a priced model `m`, an unpriced model `local` unless `priced`, and `tenant`.
fn config(priced: bool, tenant: &str) -> String {
    let local_price = if priced {
        "price = { input_per_mtok = 0.1, output_per_mtok = 0.2 }"
    } else {
        ""
    };
    format!(
        r#"
[[upstreams]]
name = "up"
base_url = "https://example.com/v1"
keys = ["sk-up-123456"]
[[models]]
name = "m"
upstream = "up"
rpm = 60
price = {{ input_per_mtok = 2.5, cached_input_per_mtok = 1.25, output_per_mtok = 10.0 }}
[[models]]
name = "local"
upstream = "up"
rpm = 60
{local_price}
[[tenants]]
name = "team-a"
key = "sk-team-a-key"
{tenant}
"#
    )
}

#[test]
fn limits_on_every_model_on_one_model_and_a_budget_load() {
    let c = load(&config(
        true,
        r#"tpd = 2_000_000
rpm = 100
limits = [{ output_tokens = 50000, per = "1h" }]
budget = { per_day = 20.0, per_month = 300.0 }
[[tenants.models]]
model = "m"
rpm = 10
"#,
    ))
    .unwrap();
    let t = &c.tenants[0];
    let units: Vec<(LimitUnit, u64)> = t.limits.iter().map(|l| (l.unit, l.amount.get())).collect();
    assert_eq!(
        units,
        [
            (LimitUnit::Requests, 100),
            (LimitUnit::Tokens, 2_000_000),
            (LimitUnit::OutputTokens, 50_000)
        ]
    );
    assert_eq!(t.model_limits.len(), 1);
    assert_eq!(t.model_limits[0].model, "m");
    assert_eq!(t.model_limits[0].limits[0].amount.get(), 10);
    assert_eq!(
        (t.budget.per_day, t.budget.per_month),
        (Some(20.0), Some(300.0))
    );
    assert_eq!(
        c.queue.interactive_reserve, 0,
        "by default batch may fill every window"
    );
    let price = c.models[0].price.unwrap();
    assert_eq!(price.micro_usd(1_000, 1_000, 100), 2_500 + 1_250 + 1_000);
}

#[test]
fn a_model_without_a_price_takes_its_list_price_and_the_operators_wins() {
    let text = config(false, "").replace("name = \"local\"", "name = \"gpt-4o-mini\"");
    let c = load(&text).unwrap();
    assert_eq!(c.models[1].price.unwrap().output_per_mtok, 0.60);
    assert_eq!(
        c.models[0].price.unwrap().output_per_mtok,
        10.0,
        "written: not the preset"
    );
}

#[test]
fn tenant_errors_name_the_key_the_value_and_what_was_expected() {
    for (tenant, priced, wanted) in [
        ("rpm = 0", true, "tenants[0].rpm"),
        (
            "budget = { per_day = -1.0 }",
            true,
            "tenants[0].budget.per_day",
        ),
        (
            "budget = { per_day = nan }",
            true,
            "tenants[0].budget.per_day",
        ),
        ("budget = {}", true, "tenants[0].budget"),
        (
            "budget = { per_week = 1.0 }",
            true,
            "unknown field `per_week`",
        ),
        ("budget = { per_day = 1.0 }", false, "models[1].price"),
        (
            "[[tenants.models]]\nmodel = \"nope\"\nrpm = 1",
            true,
            "tenants[0].models[0].model",
        ),
        (
            "[[tenants.models]]\nmodel = \"m\"",
            true,
            "tenants[0].models[0]",
        ),
        (
            "[[tenants.models]]\nmodel = \"m\"\nrpm = 1\n[[tenants.models]]\nmodel = \"m\"\nrpm = 2",
            true,
            "tenants[0].models[1].model",
        ),
        (
            "rpm = 1\nlimits = [{ requests = 2, per = \"60s\" }]",
            true,
            "at most one limit per unit and window",
        ),
    ] {
        let e = error(&config(priced, tenant));
        assert!(e.contains(wanted), "{tenant}: {e}");
    }
    let e = error(&config(false, "budget = { per_day = 1.0 }"));
    assert!(e.contains("\"local\" has no list price"), "{e}");
}
