//! [`Overrides`]: what operators changed at run time through the admin API, applied on
//! top of the configuration file. Precedence: a run-time change wins over the file
//! until it is cleared (`DELETE` of the same route); a reload of the file keeps the
//! changes on top; a change naming a model that the file no longer has is ignored (and
//! logged). Kept in the shared store as one hash, one field per item
//! (`limits:<model>`, `tenant:<name>`), so every replica applies the same set.

use std::collections::{BTreeMap, HashSet};
use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_config::{Config, KeyDigest, LimitSpec, LimitUnit, Tenant};

/// One limit as the admin API and the store hold it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LimitOverride {
    /// `requests`, `tokens`, `input_tokens` or `output_tokens`.
    pub(crate) unit: String,
    pub(crate) amount: u64,
    pub(crate) per_ms: u64,
}

impl LimitOverride {
    pub(crate) fn spec(&self) -> Option<LimitSpec> {
        Some(LimitSpec {
            unit: unit_of(&self.unit)?,
            amount: NonZeroU64::new(self.amount)?,
            per: Duration::from_millis(self.per_ms),
        })
    }

    pub(crate) fn of(spec: &LimitSpec) -> Self {
        Self {
            unit: unit_name(spec.unit).to_owned(),
            amount: spec.amount.get(),
            per_ms: spec.per.as_millis() as u64,
        }
    }
}

pub(crate) fn unit_of(name: &str) -> Option<LimitUnit> {
    Some(match name {
        "requests" => LimitUnit::Requests,
        "tokens" => LimitUnit::Tokens,
        "input_tokens" => LimitUnit::InputTokens,
        "output_tokens" => LimitUnit::OutputTokens,
        _ => return None,
    })
}

pub(crate) fn unit_name(unit: LimitUnit) -> &'static str {
    match unit {
        LimitUnit::Requests => "requests",
        LimitUnit::Tokens => "tokens",
        LimitUnit::InputTokens => "input_tokens",
        LimitUnit::OutputTokens => "output_tokens",
    }
}

/// A tenant added, re-keyed, re-weighted or revoked at run time. Only the key's
/// SHA-256 is ever stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TenantOverride {
    /// The digest of its key (hex); `None` keeps the file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) key_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) weight: Option<u32>,
    /// Refused everywhere: its key no longer authenticates.
    #[serde(default)]
    pub(crate) revoked: bool,
}

/// Every run-time change, as read from the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Overrides {
    /// The store's change counter these were read at.
    pub(crate) version: u64,
    pub(crate) limits: BTreeMap<String, Vec<LimitOverride>>,
    pub(crate) tenants: BTreeMap<String, TenantOverride>,
}

/// The store field of a model's limits.
pub(crate) fn limits_field(model: &str) -> String {
    format!("limits:{model}")
}

/// The store field of a tenant.
pub(crate) fn tenant_field(name: &str) -> String {
    format!("tenant:{name}")
}

impl Overrides {
    /// From the store's fields; a field that does not decode is skipped (and logged).
    pub(crate) fn from_fields(version: u64, fields: &BTreeMap<String, String>) -> Self {
        let mut o = Overrides {
            version,
            ..Overrides::default()
        };
        for (field, value) in fields {
            let decoded = if let Some(model) = field.strip_prefix("limits:") {
                serde_json::from_str(value)
                    .map(|l| {
                        o.limits.insert(model.to_owned(), l);
                    })
                    .is_ok()
            } else if let Some(name) = field.strip_prefix("tenant:") {
                serde_json::from_str(value)
                    .map(|t| {
                        o.tenants.insert(name.to_owned(), t);
                    })
                    .is_ok()
            } else {
                field == "version"
            };
            if !decoded {
                tracing::warn!(%field, "run-time change not understood; ignored");
            }
        }
        o
    }

    /// Applies the changes to `config` (the file's); returns the names of revoked tenants.
    pub(crate) fn apply(&self, config: &mut Config) -> HashSet<String> {
        for (model, limits) in &self.limits {
            let specs: Option<Vec<LimitSpec>> = limits.iter().map(LimitOverride::spec).collect();
            match (config.models.iter_mut().find(|m| &m.name == model), specs) {
                (Some(m), Some(specs)) if !specs.is_empty() => m.limits = specs,
                _ => {
                    tracing::warn!(%model, "run-time limits for a model not configured (or unreadable); ignored")
                }
            }
        }
        let mut revoked = HashSet::new();
        for (name, t) in &self.tenants {
            let key = t.key_sha256.as_deref().and_then(KeyDigest::from_hex);
            let weight = t.weight.and_then(NonZeroU32::new);
            match config.tenants.iter_mut().find(|c| &c.name == name) {
                Some(c) => {
                    if let Some(k) = key {
                        c.key = k;
                    }
                    if let Some(w) = weight {
                        c.weight = w;
                    }
                }
                None => match key {
                    Some(k) => config.tenants.push(Tenant::new(
                        name.clone(),
                        k,
                        weight.unwrap_or(NonZeroU32::MIN),
                    )),
                    None if t.revoked => {}
                    None => {
                        tracing::warn!(tenant = %name, "run-time tenant without a key; ignored")
                    }
                },
            }
            if t.revoked {
                revoked.insert(name.clone());
            }
        }
        revoked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[[upstreams]]
name = "u"
base_url = "http://127.0.0.1:9/v1"
keys = ["sk-a"]
[[models]]
name = "m"
upstream = "u"
rpm = 100
[[tenants]]
name = "a"
key = "tenant-a-key"
"#;

    #[test]
    fn changes_apply_over_the_file() {
        let mut config = sluice_config::from_str(
            BASE,
            &[],
            &std::collections::HashMap::<String, String>::new(),
        )
        .unwrap();
        let mut fields = BTreeMap::new();
        fields.insert(
            limits_field("m"),
            r#"[{"unit":"requests","amount":7,"per_ms":60000}]"#.to_owned(),
        );
        fields.insert(limits_field("gone"), "[]".to_owned());
        let b = KeyDigest::of("tenant-b-key").to_hex();
        fields.insert(
            tenant_field("b"),
            format!(r#"{{"key_sha256":"{b}","weight":3}}"#),
        );
        fields.insert(tenant_field("a"), r#"{"revoked":true}"#.to_owned());
        let o = Overrides::from_fields(4, &fields);
        let revoked = o.apply(&mut config);
        assert_eq!(config.models[0].limits[0].amount.get(), 7);
        assert_eq!(config.tenants.len(), 2);
        assert!(
            config.tenants[1]
                .key
                .matches(&KeyDigest::of("tenant-b-key"))
        );
        assert_eq!(config.tenants[1].weight.get(), 3);
        assert!(revoked.contains("a"));
    }
}
