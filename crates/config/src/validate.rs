//! From [`RawConfig`] to [`Config`]: defaults, presets and every cross-field check.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use crate::error::ConfigError;
use crate::model::*;
use crate::presets::preset;
use crate::raw::{Num, RawAccount, RawConfig, RawLimit, RawLimits, RawModel, RawQuota};
use crate::secret::{KeyDigest, Secret};

fn invalid(path: impl Into<String>, value: impl std::fmt::Display, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        value: value.to_string(),
        expected: expected.to_owned(),
    }
}

/// The digest of a bearer token written as `<section>.<field>` (the token, at least
/// `min_len` characters) or `<section>.<field>_sha256` (64 hex digits); at most one.
fn bearer_digest(
    section: &str,
    field: &str,
    plain: Option<&str>,
    sha256: Option<&str>,
    min_len: usize,
) -> Result<Option<KeyDigest>, ConfigError> {
    match (plain, sha256) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(invalid(
            format!("{section}.{field}_sha256"),
            format!("both {field} and {field}_sha256"),
            &format!("one of {field} or {field}_sha256"),
        )),
        (Some(k), None) if k.chars().count() < min_len => Err(invalid(
            format!("{section}.{field}"),
            format!("a key of {} characters", k.chars().count()),
            &format!("a key of at least {min_len} characters"),
        )),
        (Some(k), None) => Ok(Some(KeyDigest::of(k))),
        (None, Some(hex)) => KeyDigest::from_hex(hex.trim()).map(Some).ok_or_else(|| {
            invalid(
                format!("{section}.{field}_sha256"),
                format!("a value of {} characters", hex.len()),
                "a SHA-256 digest as 64 hexadecimal digits (e.g. from `printf %s \"$KEY\" | sha256sum`)",
            )
        }),
    }
}

/// An optional listen address at `path`.
fn address(path: &str, text: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
    text.filter(|t| !t.is_empty())
        .map(|t| {
            t.parse().map_err(|_| {
                invalid(
                    path,
                    format!("{t:?}"),
                    "an address such as \"127.0.0.1:9090\" or \"0.0.0.0:9090\"",
                )
            })
        })
        .transpose()
}

/// The smallest `sidecar.ticket_key`: 32 characters (a 256-bit HMAC key written in hex
/// is 64).
const TICKET_KEY_MIN: usize = 32;

fn nz32(path: &str, v: Option<Num<u32>>, default: u32) -> Result<NonZeroU32, ConfigError> {
    let v = v.map_or(default, |n| n.0);
    NonZeroU32::new(v).ok_or_else(|| invalid(path, v, "a whole number of at least 1"))
}

pub(crate) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let listen_text = raw.server.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        invalid(
            "server.listen",
            format!("{listen_text:?}"),
            "an address such as \"127.0.0.1:8080\" or \"0.0.0.0:8080\"",
        )
    })?;
    let server = Server {
        listen,
        shutdown_grace: raw
            .server
            .shutdown_grace
            .map_or(Duration::from_secs(30), |d| d.0),
        max_body_bytes: raw.server.max_body_bytes.map_or(16 << 20, |n| n.0) as usize,
        upstream_timeout: raw
            .server
            .upstream_timeout
            .map_or(Duration::from_secs(600), |d| d.0),
        header_timeout: raw
            .server
            .header_timeout
            .map_or(Duration::from_secs(10), |d| d.0),
        body_timeout: raw
            .server
            .body_timeout
            .map_or(Duration::from_secs(30), |d| d.0),
        max_connections: nz32("server.max_connections", raw.server.max_connections, 1024)?,
        insecure_allow_unauthenticated: raw.server.insecure_allow_unauthenticated.unwrap_or(false),
        admin_listen: address("server.admin_listen", raw.server.admin_listen.as_deref())?,
    };
    for (path, d) in [
        ("server.header_timeout", server.header_timeout),
        ("server.body_timeout", server.body_timeout),
    ] {
        if d.is_zero() {
            return Err(invalid(path, "0s", "a positive duration"));
        }
    }
    if server.upstream_timeout.is_zero() {
        return Err(invalid(
            "server.upstream_timeout",
            "0s",
            "a positive duration",
        ));
    }

    let store = match raw.store {
        None => None,
        Some(s) => {
            let scheme = s.redis_url.split_once("://").map(|(s, _)| s).unwrap_or("");
            if !matches!(
                scheme,
                "redis"
                    | "rediss"
                    | "redis+cluster"
                    | "rediss+cluster"
                    | "redis+sentinel"
                    | "rediss+sentinel"
                    | "unix"
                    | "redis+unix"
            ) {
                return Err(invalid(
                    "store.redis_url",
                    format!("a URL with scheme {scheme:?}"),
                    "redis://host:port/db, rediss://… (TLS), redis+cluster://h1:p1,h2:p2 or redis+sentinel://s1:p1,s2:p2/<master name>",
                ));
            }
            let timeout = s.timeout.map_or(Duration::from_millis(100), |d| d.0);
            if timeout.is_zero() {
                return Err(invalid("store.timeout", "0s", "a positive duration"));
            }
            let expected_replicas = nz32("store.expected_replicas", s.expected_replicas, 1)?;
            let replica_index = s.replica_index.map(|n| n.0);
            if let Some(i) = replica_index
                && i >= expected_replicas.get()
            {
                return Err(invalid(
                    "store.replica_index",
                    i,
                    &format!(
                        "a whole number below store.expected_replicas ({expected_replicas}), counted from 0"
                    ),
                ));
            }
            Some(Store {
                redis_url: Secret::new(s.redis_url),
                on_error: s.on_error.unwrap_or(FailurePolicy::Local),
                expected_replicas,
                replica_index,
                timeout,
                connections: nz32("store.connections", s.connections, 2)?,
                key_prefix: s.key_prefix.unwrap_or_else(|| "sluice".to_owned()),
            })
        }
    };

    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    let mut seen = HashSet::new();
    for (i, u) in raw.upstreams.into_iter().enumerate() {
        let path = format!("upstreams[{i}]");
        if !seen.insert(u.name.clone()) {
            return Err(ConfigError::Duplicate {
                path: format!("{path}.name"),
                what: "upstream",
                name: u.name,
            });
        }
        check_name(&format!("{path}.name"), &u.name)?;
        let url = url::Url::parse(&u.base_url).map_err(|e| {
            invalid(
                format!("{path}.base_url"),
                format!("{:?}", u.base_url),
                &format!("an http(s) URL ({e})"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(
                format!("{path}.base_url"),
                format!("{:?}", u.base_url),
                "an http:// or https:// URL",
            ));
        }
        let accounts = accounts(&path, u.keys, u.accounts)?;
        upstreams.push(Upstream {
            name: u.name,
            base_url: u.base_url.trim_end_matches('/').to_owned(),
            dialect: u.dialect.unwrap_or(Dialect::Openai),
            keys: accounts.iter().flat_map(|a| a.keys.clone()).collect(),
            accounts,
            api_version: u.api_version,
            passthrough: passthrough_list(&path, u.passthrough.unwrap_or_default())?,
        });
    }

    let names: Vec<String> = raw.models.iter().map(|m| m.name.clone()).collect();
    let quotas = quotas(&raw.quotas, &raw.models)?;
    let mut models = Vec::with_capacity(raw.models.len());
    for (i, m) in raw.models.into_iter().enumerate() {
        if names[..i].contains(&m.name) {
            return Err(ConfigError::Duplicate {
                path: format!("models[{i}].name"),
                what: "model",
                name: m.name,
            });
        }
        models.push(model(i, m, &upstreams, &names, &quotas)?);
    }
    for (q, quota) in raw.quotas.iter().enumerate() {
        let mut upstreams_of = models
            .iter()
            .filter(|m| m.quota == quota.name)
            .map(|m| m.upstream.as_str());
        if let Some(first) = upstreams_of.next()
            && let Some(other) = upstreams_of.find(|u| *u != first)
        {
            return Err(invalid(
                format!("quotas[{q}].name"),
                format!(
                    "{:?}, drawn on by models of upstreams {first:?} and {other:?}",
                    quota.name
                ),
                "a quota whose models all have one upstream (a provider pools the models of one account; name one quota per upstream)",
            ));
        }
    }

    let queue = crate::model::Queue {
        max_wait: raw.queue.max_wait.map_or(Duration::from_secs(30), |d| d.0),
        booked_ahead: nz32("queue.booked_ahead", raw.queue.booked_ahead, 16)?,
        interactive_reserve: raw.queue.interactive_reserve.map_or(0, |n| n.0),
    };

    let mut tenants = Vec::with_capacity(raw.tenants.len());
    for (i, t) in raw.tenants.into_iter().enumerate() {
        let path = format!("tenants[{i}]");
        check_name(&format!("{path}.name"), &t.name)?;
        if tenants.iter().any(|x: &Tenant| x.name == t.name) {
            return Err(ConfigError::Duplicate {
                path: format!("{path}.name"),
                what: "tenant",
                name: t.name,
            });
        }
        let key = bearer_digest(&path, "key", t.key.as_deref(), t.key_sha256.as_deref(), 8)?
            .ok_or_else(|| {
                invalid(
                    format!("{path}.key"),
                    "nothing",
                    "a key (`key`, at least 8 characters) or its SHA-256 (`key_sha256`, 64 hex digits)",
                )
            })?;
        if tenants.iter().any(|x: &Tenant| x.key.matches(&key)) {
            return Err(ConfigError::Duplicate {
                path: format!("{path}.key"),
                what: "key of tenant",
                name: t.name,
            });
        }
        let limits = limits_of(&path, &t.raw_limits())?;
        let mut model_limits: Vec<crate::TenantModelLimits> = Vec::new();
        for (j, m) in t.models.iter().enumerate() {
            let mpath = format!("{path}.models[{j}]");
            if !names.contains(&m.model) {
                return Err(invalid(
                    format!("{mpath}.model"),
                    format!(
                        "{:?} (models: {})",
                        m.model,
                        list_names(names.iter().map(String::as_str))
                    ),
                    "the name of a [[models]] entry",
                ));
            }
            if model_limits.iter().any(|x| x.model == m.model) {
                return Err(ConfigError::Duplicate {
                    path: format!("{mpath}.model"),
                    what: "tenant model",
                    name: m.model.clone(),
                });
            }
            let limits = limits_of(&mpath, &m.raw_limits())?;
            if limits.is_empty() {
                return Err(invalid(
                    mpath,
                    "no limits",
                    "at least one of rpm, tpm, rps, tps, rpd, tpd or limits",
                ));
            }
            model_limits.push(crate::TenantModelLimits {
                model: m.model.clone(),
                limits,
            });
        }
        let budget = budget(&path, t.budget.as_ref())?;
        tenants.push(Tenant {
            weight: nz32(&format!("{path}.weight"), t.weight, 1)?,
            priority: t.priority.unwrap_or_default(),
            max_wait: t.max_wait.map(|d| d.0),
            name: t.name,
            key,
            limits,
            model_limits,
            budget,
        });
    }

    let budgeted = tenants
        .iter()
        .position(|t| t.budget != crate::Budget::default());
    let unpriced = models.iter().position(|m: &Model| m.price.is_none());
    if let (Some(i), Some(j)) = (budgeted, unpriced) {
        return Err(invalid(
            format!("models[{j}].price"),
            format!(
                "none, and {:?} has no list price (tenants[{i}] has a budget)",
                models[j].name
            ),
            "a price = { input_per_mtok, output_per_mtok } on every model when a tenant has a budget",
        ));
    }

    let retry = Retry {
        max_attempts: nz32("retry.max_attempts", raw.retry.max_attempts, 3)?,
        base: raw.retry.base.map_or(Duration::from_millis(100), |d| d.0),
        cap: raw.retry.cap.map_or(Duration::from_secs(2), |d| d.0),
    };

    let sidecar = sidecar(raw.sidecar)?;

    Ok(Config {
        server,
        store,
        upstreams,
        models,
        queue,
        tenants,
        retry,
        sidecar,
        secrets_in_file: Vec::new(),
    })
}

fn sidecar(raw: crate::raw::RawSidecar) -> Result<Sidecar, ConfigError> {
    let d = Sidecar::default();
    let listen = match raw.listen {
        None => d.listen,
        Some(text) => text.parse().map_err(|_| {
            invalid(
                "sidecar.listen",
                format!("{text:?}"),
                "an address such as \"127.0.0.1:8081\"",
            )
        })?,
    };
    let admin_key = bearer_digest(
        "sidecar",
        "admin_key",
        raw.admin_key.as_deref().filter(|k| !k.is_empty()),
        raw.admin_key_sha256.as_deref().filter(|k| !k.is_empty()),
        16,
    )?;
    let admin_listen = address("sidecar.admin_listen", raw.admin_listen.as_deref())?;
    let ticket_key = match raw.ticket_key.filter(|k| !k.is_empty()) {
        None => None,
        Some(k) if k.chars().count() < TICKET_KEY_MIN => {
            return Err(invalid(
                "sidecar.ticket_key",
                format!("a key of {} characters", k.chars().count()),
                &format!(
                    "a key of at least {TICKET_KEY_MIN} characters (e.g. `openssl rand -hex 32`)"
                ),
            ));
        }
        Some(k) => Some(Secret::new(k)),
    };
    let fraction = |path: &str, v: Option<f64>, default: f64, lo: f64, hi: f64| {
        let v = v.unwrap_or(default);
        if v.is_finite() && v >= lo && v <= hi {
            Ok(v)
        } else {
            Err(invalid(path, v, &format!("a number from {lo} to {hi}")))
        }
    };
    let positive = |path: &str, v: Option<crate::raw::Dur>, default: Duration| {
        let v = v.map_or(default, |d| d.0);
        if v.is_zero() {
            Err(invalid(path, "0s", "a positive duration"))
        } else {
            Ok(v)
        }
    };
    let group = raw.consumer_group.unwrap_or(d.consumer_group);
    check_name("sidecar.consumer_group", &group)?;
    if let Some(n) = &raw.consumer_name {
        check_name("sidecar.consumer_name", n)?;
    }
    Ok(Sidecar {
        listen,
        admin_key,
        admin_listen,
        ticket_key,
        insecure_allow_unauthenticated: raw.insecure_allow_unauthenticated.unwrap_or(false),
        consumer_group: group,
        consumer_name: raw.consumer_name,
        claim_after: positive("sidecar.claim_after", raw.claim_after, d.claim_after)?,
        sample_per_second: raw.sample_per_second.map_or(d.sample_per_second, |n| n.0),
        probe_interval: positive(
            "sidecar.probe_interval",
            raw.probe_interval,
            d.probe_interval,
        )?,
        quota_state_after: positive(
            "sidecar.quota_state_after",
            raw.quota_state_after,
            d.quota_state_after,
        )?,
        default_cooldown: raw.default_cooldown.map_or(d.default_cooldown, |v| v.0),
        aimd_decrease: fraction(
            "sidecar.aimd_decrease",
            raw.aimd_decrease,
            d.aimd_decrease,
            0.1,
            0.99,
        )?,
        aimd_increase: fraction(
            "sidecar.aimd_increase",
            raw.aimd_increase,
            d.aimd_increase,
            0.0,
            1.0,
        )?,
        aimd_floor: fraction("sidecar.aimd_floor", raw.aimd_floor, d.aimd_floor, 0.0, 1.0)?,
        headroom_tolerance: fraction(
            "sidecar.headroom_tolerance",
            raw.headroom_tolerance,
            d.headroom_tolerance,
            0.0,
            0.5,
        )?,
        unseen_tolerance: fraction(
            "sidecar.unseen_tolerance",
            raw.unseen_tolerance,
            d.unseen_tolerance,
            0.0,
            0.5,
        )?,
        pacing_increase: fraction(
            "sidecar.pacing_increase",
            raw.pacing_increase,
            d.pacing_increase,
            1.0,
            64.0,
        )?,
    })
}

/// Account names: they appear in URL paths (`/v1/admin/accounts/{upstream}/{account}`),
/// metric labels and headers, so letters, digits, `-`, `_` and `.` only.
fn check_account_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!("{name:?}"),
            "1 to 100 letters, digits, '-', '_' or '.' (e.g. \"org-main\")",
        ))
    }
}

fn check_name(path: &str, name: &str) -> Result<(), ConfigError> {
    check_name_with(path, name, false)
}

/// Names: printable, no blanks or braces; `/` only where `slash` (model names such as
/// `Qwen/Qwen2.5-72B`).
fn check_name_with(path: &str, name: &str, slash: bool) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| {
            !c.is_control() && !c.is_whitespace() && c != '{' && c != '}' && (slash || c != '/')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!("{name:?}"),
            "1 to 100 printable characters without blanks or braces (and no '/' in upstream and tenant names)",
        ))
    }
}

fn model(
    i: usize,
    m: RawModel,
    upstreams: &[Upstream],
    names: &[String],
    quotas: &[QuotaDef],
) -> Result<Model, ConfigError> {
    let path = format!("models[{i}]");
    check_name_with(&format!("{path}.name"), &m.name, true)?;
    let Some(upstream_index) = upstreams.iter().position(|u| u.name == m.upstream) else {
        return Err(ConfigError::UnknownUpstream {
            index: i,
            model: m.name,
            upstream: m.upstream,
            known: upstreams.iter().map(|u| u.name.clone()).collect(),
        });
    };
    for f in &m.fallback {
        if !names.contains(f) || *f == m.name {
            return Err(ConfigError::UnknownFallback {
                index: i,
                model: m.name.clone(),
                fallback: f.clone(),
            });
        }
    }
    let upstream_model = m.upstream_model.clone().unwrap_or_else(|| m.name.clone());

    let shared = match &m.quota {
        None => None,
        Some(name) => {
            let Some(q) = quotas.iter().find(|q| q.name == *name) else {
                return Err(invalid(
                    format!("{path}.quota"),
                    format!("{name:?}"),
                    &format!(
                        "the name of a [[quotas]] entry (known: {})",
                        list_names(quotas.iter().map(|q| q.name.as_str()))
                    ),
                ));
            };
            let written = m.raw_limits().given();
            if let Some(key) = written.first().or(m.pacing.as_ref().map(|_| &"pacing")) {
                return Err(invalid(
                    format!("{path}.{key}"),
                    format!("a limit on a model that draws on quota {name:?}"),
                    "no limits or pacing on the model: they are the quota's (write them on its [[quotas]] entry)",
                ));
            }
            Some(q)
        }
    };
    let limits = match shared {
        Some(q) => q.limits.clone(),
        None => limits_of(&path, &m.raw_limits())?,
    };
    let mut preset_name = None;
    let mut limits = limits;
    if limits.is_empty() {
        let Some(p) = preset(&upstream_model).or_else(|| preset(&m.name)) else {
            return Err(ConfigError::NoLimits {
                index: i,
                model: m.name,
            });
        };
        preset_name = Some(p.model);
        let nz = |v: u64| NonZeroU64::new(v).unwrap_or(NonZeroU64::MIN);
        limits = vec![
            LimitSpec {
                unit: LimitUnit::Requests,
                amount: nz(p.rpm),
                per: Duration::from_secs(60),
            },
            LimitSpec {
                unit: LimitUnit::Tokens,
                amount: nz(p.tpm),
                per: Duration::from_secs(60),
            },
            LimitSpec {
                unit: LimitUnit::Requests,
                amount: nz(p.rps),
                per: Duration::from_secs(1),
            },
        ];
    }

    let price = match m.price {
        None => None,
        Some(p) => {
            for (k, v) in [
                ("input_per_mtok", p.input_per_mtok),
                (
                    "cached_input_per_mtok",
                    p.cached_input_per_mtok.unwrap_or(p.input_per_mtok),
                ),
                ("output_per_mtok", p.output_per_mtok),
            ] {
                if !v.is_finite() || v < 0.0 {
                    return Err(invalid(
                        format!("{path}.price.{k}"),
                        v,
                        "a non-negative number of USD per million tokens",
                    ));
                }
            }
            Some(Price {
                input_per_mtok: p.input_per_mtok,
                cached_input_per_mtok: p.cached_input_per_mtok.unwrap_or(p.input_per_mtok),
                output_per_mtok: p.output_per_mtok,
            })
        }
    }
    .or_else(|| crate::presets::price(m.upstream_model.as_deref().unwrap_or(&m.name)));
    let tokenizer = match m.tokenizer.unwrap_or(Tokenizer::Auto) {
        Tokenizer::Auto => auto_tokenizer(&upstream_model),
        t => t,
    };
    Ok(Model {
        upstream: m.upstream,
        upstream_index,
        upstream_model,
        limits,
        preset: preset_name,
        fallback: m.fallback,
        output_estimate: m.output_estimate.map_or(1024, |n| n.0),
        tokenizer,
        price,
        pacing: shared
            .map(|q| q.pacing)
            .or(m.pacing)
            .unwrap_or(PacingMode::Auto),
        quota: m.quota.unwrap_or_else(|| m.name.clone()),
        name: m.name,
    })
}

/// `"a", "b"` for an error message, or `none`.
fn list_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.map(|n| format!("{n:?}")).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// What the shorthands of [`RawLimits::shorthand`] count and over how many seconds, in
/// their order: `rpm`, `tpm`, `rps`, `tps`, `rpd`, `tpd`.
const SHORTHAND_MEANING: [(LimitUnit, u64); 6] = [
    (LimitUnit::Requests, 60),
    (LimitUnit::Tokens, 60),
    (LimitUnit::Requests, 1),
    (LimitUnit::Tokens, 1),
    (LimitUnit::Requests, 86_400),
    (LimitUnit::Tokens, 86_400),
];

/// The limits written at `path` (shorthands, then `limits`), at most one per unit and
/// window; empty when none are written.
fn limits_of(path: &str, raw: &RawLimits<'_>) -> Result<Vec<LimitSpec>, ConfigError> {
    let mut limits = Vec::new();
    for ((key, value), (unit, secs)) in raw.shorthand.iter().zip(SHORTHAND_MEANING) {
        if let Some(Num(v)) = *value {
            let amount = NonZeroU64::new(v).ok_or_else(|| {
                invalid(
                    format!("{path}.{key}"),
                    v,
                    "at least 1 (omit the key for no limit)",
                )
            })?;
            limits.push((
                format!("{path}.{key}"),
                LimitSpec {
                    unit,
                    amount,
                    per: Duration::from_secs(secs),
                },
            ));
        }
    }
    for (j, l) in raw.limits.into_iter().flatten().enumerate() {
        let lpath = format!("{path}.limits[{j}]");
        limits.push((lpath.clone(), limit(&lpath, l)?));
    }
    for (a, (pa, la)) in limits.iter().enumerate() {
        if limits[..a]
            .iter()
            .any(|(_, lb)| lb.unit == la.unit && lb.per == la.per)
        {
            return Err(invalid(
                pa,
                format!("{:?} per {:?}", la.unit, la.per),
                "at most one limit per unit and window",
            ));
        }
    }
    Ok(limits.into_iter().map(|(_, l)| l).collect())
}

/// A `[[quotas]]` entry, validated.
struct QuotaDef {
    name: String,
    limits: Vec<LimitSpec>,
    pacing: PacingMode,
}

/// `[[quotas]]`: unique names, limits of their own, and no name that is also the name of
/// a model drawing on another pool (their limiter keys would collide).
fn quotas(raw: &[RawQuota], models: &[RawModel]) -> Result<Vec<QuotaDef>, ConfigError> {
    let mut out: Vec<QuotaDef> = Vec::with_capacity(raw.len());
    for (q, quota) in raw.iter().enumerate() {
        let path = format!("quotas[{q}]");
        check_name_with(&format!("{path}.name"), &quota.name, true)?;
        if out.iter().any(|d| d.name == quota.name) {
            return Err(ConfigError::Duplicate {
                path: format!("{path}.name"),
                what: "quota",
                name: quota.name.clone(),
            });
        }
        if let Some(m) = models
            .iter()
            .find(|m| m.name == quota.name && m.quota.as_deref() != Some(&quota.name))
        {
            return Err(invalid(
                format!("{path}.name"),
                format!(
                    "{:?}, also the name of a model with limits of its own",
                    m.name
                ),
                "a name that no model outside this quota has",
            ));
        }
        let limits = limits_of(&path, &quota.raw_limits())?;
        if limits.is_empty() {
            return Err(invalid(
                path,
                "no limits",
                "at least one limit (rpm, tpm, rps, tps, rpd, tpd or limits)",
            ));
        }
        out.push(QuotaDef {
            name: quota.name.clone(),
            limits,
            pacing: quota.pacing.unwrap_or(PacingMode::Auto),
        });
    }
    Ok(out)
}

/// An upstream's accounts: `keys` (each key its own account, `key-<i>`) or `accounts`
/// (named groups of keys), exactly one of the two; no key listed twice (two entries of
/// one key are one account at the provider, and would double what is admitted).
fn accounts(
    path: &str,
    keys: Option<Vec<String>>,
    accounts: Option<Vec<RawAccount>>,
) -> Result<Vec<Account>, ConfigError> {
    let groups: Vec<(String, String, Vec<String>)> = match (keys, accounts) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                format!("{path}.accounts"),
                "both keys and accounts",
                "one of keys (each key its own account) or accounts (keys grouped by account)",
            ));
        }
        (None, None) => {
            return Err(invalid(
                format!("{path}.keys"),
                "nothing",
                "keys = [\"${KEY}\", ...] (each key one account) or accounts = [{ name = \"org\", keys = [...] }]",
            ));
        }
        (Some(keys), None) => {
            if keys.is_empty() {
                return Err(invalid(
                    format!("{path}.keys"),
                    "[]",
                    "at least one API key (each key is one account)",
                ));
            }
            keys.into_iter()
                .enumerate()
                .map(|(k, key)| (format!("key-{k}"), format!("{path}.keys[{k}]"), vec![key]))
                .collect()
        }
        (None, Some(list)) => {
            if list.is_empty() {
                return Err(invalid(
                    format!("{path}.accounts"),
                    "[]",
                    "at least one account",
                ));
            }
            let mut groups = Vec::with_capacity(list.len());
            for (a, account) in list.into_iter().enumerate() {
                let apath = format!("{path}.accounts[{a}]");
                check_account_name(&format!("{apath}.name"), &account.name)?;
                if groups.iter().any(|(n, _, _)| *n == account.name) {
                    return Err(ConfigError::Duplicate {
                        path: format!("{apath}.name"),
                        what: "account",
                        name: account.name,
                    });
                }
                if account.keys.is_empty() {
                    return Err(invalid(
                        format!("{apath}.keys"),
                        "[]",
                        "at least one API key of this account",
                    ));
                }
                groups.push((account.name, format!("{apath}.keys"), account.keys));
            }
            groups
        }
    };
    let mut seen: Vec<(&str, String)> = Vec::new();
    for (_, kpath, keys) in &groups {
        for (k, key) in keys.iter().enumerate() {
            let at = if kpath.ends_with(']') {
                kpath.clone()
            } else {
                format!("{kpath}[{k}]")
            };
            if key.trim().is_empty() {
                return Err(invalid(
                    at,
                    "an empty string",
                    "an API key (is its environment variable empty?)",
                ));
            }
            if let Some((_, first)) = seen.iter().find(|(other, _)| *other == key.as_str()) {
                return Err(invalid(
                    at,
                    format!("the same key as {first}"),
                    "each key once: one key is one account at the provider, and listing it twice would double what the gateway admits (to send with several keys of one account, group them under accounts)",
                ));
            }
            seen.push((key.as_str(), at));
        }
    }
    Ok(groups
        .into_iter()
        .map(|(name, _, keys)| Account {
            name,
            keys: keys.into_iter().map(Secret::new).collect(),
        })
        .collect())
}

/// The largest budget accepted: a million USD per window (amounts are kept in micro-USD).
const MAX_BUDGET_USD: f64 = 1e6;

/// `tenants[i].budget`, validated: each amount positive, finite and at most
/// [`MAX_BUDGET_USD`].
fn budget(path: &str, raw: Option<&crate::raw::RawBudget>) -> Result<crate::Budget, ConfigError> {
    let Some(raw) = raw else {
        return Ok(crate::Budget::default());
    };
    let check = |key: &str, v: Option<f64>| -> Result<Option<f64>, ConfigError> {
        match v {
            Some(usd) if !(usd.is_finite() && usd > 0.0 && usd <= MAX_BUDGET_USD) => Err(invalid(
                format!("{path}.budget.{key}"),
                usd,
                "USD above 0 and at most 1000000 (omit the key for no budget)",
            )),
            v => Ok(v),
        }
    };
    let budget = crate::Budget {
        per_day: check("per_day", raw.per_day)?,
        per_month: check("per_month", raw.per_month)?,
    };
    if budget.per_day.is_none() && budget.per_month.is_none() {
        return Err(invalid(
            format!("{path}.budget"),
            "no amounts",
            "per_day and/or per_month, in USD",
        ));
    }
    Ok(budget)
}

fn limit(path: &str, l: &RawLimit) -> Result<LimitSpec, ConfigError> {
    let given: Vec<(LimitUnit, u64)> = [
        (LimitUnit::Requests, l.requests),
        (LimitUnit::Tokens, l.tokens),
        (LimitUnit::InputTokens, l.input_tokens),
        (LimitUnit::OutputTokens, l.output_tokens),
    ]
    .into_iter()
    .filter_map(|(u, v)| v.map(|n| (u, n.0)))
    .collect();
    let [(unit, amount)] = given[..] else {
        return Err(invalid(
            path,
            format!("{} amounts", given.len()),
            "exactly one of requests, tokens, input_tokens, output_tokens (and per)",
        ));
    };
    let amount =
        NonZeroU64::new(amount).ok_or_else(|| invalid(path, 0, "an amount of at least 1"))?;
    let per = l.per.0;
    if per < Duration::from_millis(1)
        || per > Duration::from_secs(366 * 86_400)
        || !per.subsec_nanos().is_multiple_of(1_000_000)
    {
        return Err(invalid(
            format!("{path}.per"),
            format!("{per:?}"),
            "a whole number of milliseconds between 1ms and 366d",
        ));
    }
    Ok(LimitSpec { unit, amount, per })
}

/// The tiktoken encoding of OpenAI model families; the heuristic for the rest.
fn auto_tokenizer(model: &str) -> Tokenizer {
    let m = model.to_ascii_lowercase();
    let o200k = [
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "o1",
        "o3",
        "o4",
        "chatgpt-4o",
        "gpt-oss",
    ];
    let cl100k = [
        "gpt-4",
        "gpt-3.5",
        "text-embedding-ada-002",
        "text-embedding-3",
    ];
    if o200k.iter().any(|p| m.starts_with(p)) {
        Tokenizer::O200k
    } else if cl100k.iter().any(|p| m.starts_with(p)) {
        Tokenizer::Cl100k
    } else {
        Tokenizer::Heuristic
    }
}

/// `upstreams[i].passthrough`: each entry a path under `/v1/` whose segments are `*`
/// or made of unreserved characters and sub-delimiters; no empty, `.`/`..` or
/// percent-encoded segment, no query.
fn passthrough_list(path: &str, list: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let expected = "a path under /v1/ whose segments are `*` or made of letters, digits and -._~!$&'()*+,;=:@ (no empty, . or .. segment, no %-encoding, no query), e.g. \"/v1/batches/*\"";
    for (j, entry) in list.iter().enumerate() {
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b);
        let ok = entry.strip_prefix("/v1/").is_some_and(|rest| {
            rest.split('/').all(|seg| {
                seg == "*"
                    || (!seg.is_empty() && seg != "." && seg != ".." && seg.bytes().all(plain))
            })
        });
        if !ok {
            return Err(invalid(
                format!("{path}.passthrough[{j}]"),
                format!("{entry:?}"),
                expected,
            ));
        }
    }
    Ok(list)
}
