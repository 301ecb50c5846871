//! The file as written: serde structs with `deny_unknown_fields`, checked field by field.
//! [`crate::Config`] is built from these by validation.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Unexpected, Visitor};

use crate::duration;

/// A duration written as text (`"30s"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dur(pub(crate) Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"250ms\", \"30s\", \"5m\" or \"1h\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                duration::parse(s).map(Dur).map_err(|why| {
                    E::custom(format_args!(
                        "invalid value: {}, expected {} ({why})",
                        Unexpected::Str(s),
                        Expecting(&self)
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// What a visitor expects, as text.
struct Expecting<'a, V>(&'a V);

impl<V: for<'de> Visitor<'de>> fmt::Display for Expecting<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }
}

/// A number that may also be written as a string (so `"${RPM}"` works).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Num<T>(pub(crate) T);

impl<'de, T> Deserialize<'de> for Num<T>
where
    T: FromStr + TryFrom<u64> + Copy,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<T: FromStr + TryFrom<u64>> Visitor<'_> for V<T> {
            type Value = Num<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative whole number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num<T>, E> {
                u64::try_from(v)
                    .ok()
                    .and_then(|v| T::try_from(v).ok())
                    .map(Num)
                    .ok_or_else(|| E::invalid_value(Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num<T>, E> {
                T::try_from(v)
                    .map(Num)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Num<T>, E> {
                s.trim()
                    .replace('_', "")
                    .parse()
                    .map(Num)
                    .map_err(|_| E::invalid_value(Unexpected::Str(s), &self))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) server: RawServer,
    pub(crate) store: Option<RawStore>,
    #[serde(default)]
    pub(crate) upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub(crate) models: Vec<RawModel>,
    #[serde(default)]
    pub(crate) quotas: Vec<RawQuota>,
    #[serde(default)]
    pub(crate) queue: RawQueue,
    #[serde(default)]
    pub(crate) tenants: Vec<RawTenant>,
    #[serde(default)]
    pub(crate) retry: RawRetry,
    #[serde(default)]
    pub(crate) sidecar: RawSidecar,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) listen: Option<String>,
    pub(crate) shutdown_grace: Option<Dur>,
    pub(crate) max_body_bytes: Option<Num<u64>>,
    pub(crate) upstream_timeout: Option<Dur>,
    pub(crate) header_timeout: Option<Dur>,
    pub(crate) body_timeout: Option<Dur>,
    pub(crate) max_connections: Option<Num<u32>>,
    pub(crate) insecure_allow_unauthenticated: Option<bool>,
    pub(crate) admin_listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub(crate) redis_url: String,
    pub(crate) on_error: Option<crate::FailurePolicy>,
    pub(crate) expected_replicas: Option<Num<u32>>,
    pub(crate) replica_index: Option<Num<u32>>,
    pub(crate) timeout: Option<Dur>,
    pub(crate) connections: Option<Num<u32>>,
    pub(crate) key_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub(crate) name: String,
    pub(crate) base_url: String,
    pub(crate) dialect: Option<crate::Dialect>,
    pub(crate) keys: Option<Vec<String>>,
    pub(crate) accounts: Option<Vec<RawAccount>>,
    pub(crate) api_version: Option<String>,
    pub(crate) passthrough: Option<Vec<String>>,
}

/// `upstreams[i].accounts[j]`: keys the provider meters as one account.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccount {
    pub(crate) name: String,
    pub(crate) keys: Vec<String>,
}

/// The limits as written on a `[[models]]` or `[[quotas]]` entry: shorthands and `limits`.
pub(crate) struct RawLimits<'a> {
    pub(crate) shorthand: [(&'static str, Option<Num<u64>>); 6],
    pub(crate) limits: Option<&'a [RawLimit]>,
}

impl RawLimits<'_> {
    /// The keys given (`rpm`, `limits`, ...), for errors.
    pub(crate) fn given(&self) -> Vec<&'static str> {
        let mut keys: Vec<&'static str> = self
            .shorthand
            .iter()
            .filter_map(|(k, v)| v.map(|_| *k))
            .collect();
        if self.limits.is_some() {
            keys.push("limits");
        }
        keys
    }
}

macro_rules! raw_limits {
    ($t:ty) => {
        impl $t {
            /// Its limits as written.
            pub(crate) fn raw_limits(&self) -> RawLimits<'_> {
                RawLimits {
                    shorthand: [
                        ("rpm", self.rpm),
                        ("tpm", self.tpm),
                        ("rps", self.rps),
                        ("tps", self.tps),
                        ("rpd", self.rpd),
                        ("tpd", self.tpd),
                    ],
                    limits: self.limits.as_deref(),
                }
            }
        }
    };
}
raw_limits!(RawModel);
raw_limits!(RawQuota);
raw_limits!(RawTenant);
raw_limits!(RawTenantModel);

/// `[[quotas]]`: one pool of limits that several models draw on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQuota {
    pub(crate) name: String,
    pub(crate) rpm: Option<Num<u64>>,
    pub(crate) tpm: Option<Num<u64>>,
    pub(crate) rps: Option<Num<u64>>,
    pub(crate) tps: Option<Num<u64>>,
    pub(crate) rpd: Option<Num<u64>>,
    pub(crate) tpd: Option<Num<u64>>,
    pub(crate) limits: Option<Vec<RawLimit>>,
    pub(crate) pacing: Option<crate::PacingMode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModel {
    pub(crate) name: String,
    pub(crate) upstream: String,
    pub(crate) upstream_model: Option<String>,
    pub(crate) quota: Option<String>,
    pub(crate) rpm: Option<Num<u64>>,
    pub(crate) tpm: Option<Num<u64>>,
    pub(crate) rps: Option<Num<u64>>,
    pub(crate) tps: Option<Num<u64>>,
    pub(crate) rpd: Option<Num<u64>>,
    pub(crate) tpd: Option<Num<u64>>,
    pub(crate) limits: Option<Vec<RawLimit>>,
    #[serde(default)]
    pub(crate) fallback: Vec<String>,
    pub(crate) output_estimate: Option<Num<u64>>,
    pub(crate) tokenizer: Option<crate::Tokenizer>,
    pub(crate) price: Option<RawPrice>,
    pub(crate) pacing: Option<crate::PacingMode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimit {
    pub(crate) requests: Option<Num<u64>>,
    pub(crate) tokens: Option<Num<u64>>,
    pub(crate) input_tokens: Option<Num<u64>>,
    pub(crate) output_tokens: Option<Num<u64>>,
    pub(crate) per: Dur,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrice {
    pub(crate) input_per_mtok: f64,
    pub(crate) cached_input_per_mtok: Option<f64>,
    pub(crate) output_per_mtok: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueue {
    pub(crate) max_wait: Option<Dur>,
    pub(crate) booked_ahead: Option<Num<u32>>,
    pub(crate) interactive_reserve: Option<Num<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTenant {
    pub(crate) name: String,
    pub(crate) key: Option<String>,
    pub(crate) key_sha256: Option<String>,
    pub(crate) weight: Option<Num<u32>>,
    pub(crate) priority: Option<crate::TenantPriority>,
    pub(crate) max_wait: Option<Dur>,
    pub(crate) rpm: Option<Num<u64>>,
    pub(crate) tpm: Option<Num<u64>>,
    pub(crate) rps: Option<Num<u64>>,
    pub(crate) tps: Option<Num<u64>>,
    pub(crate) rpd: Option<Num<u64>>,
    pub(crate) tpd: Option<Num<u64>>,
    pub(crate) limits: Option<Vec<RawLimit>>,
    pub(crate) budget: Option<RawBudget>,
    #[serde(default)]
    pub(crate) models: Vec<RawTenantModel>,
}

/// `tenants[].budget`: money per trailing day and 30 days, in USD.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBudget {
    pub(crate) per_day: Option<f64>,
    pub(crate) per_month: Option<f64>,
}

/// `[[tenants.models]]`: a tenant's limits on one model (or `[[quotas]]` pool's model).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTenantModel {
    pub(crate) model: String,
    pub(crate) rpm: Option<Num<u64>>,
    pub(crate) tpm: Option<Num<u64>>,
    pub(crate) rps: Option<Num<u64>>,
    pub(crate) tps: Option<Num<u64>>,
    pub(crate) rpd: Option<Num<u64>>,
    pub(crate) tpd: Option<Num<u64>>,
    pub(crate) limits: Option<Vec<RawLimit>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub(crate) max_attempts: Option<Num<u32>>,
    pub(crate) base: Option<Dur>,
    pub(crate) cap: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSidecar {
    pub(crate) listen: Option<String>,
    pub(crate) admin_key: Option<String>,
    pub(crate) admin_key_sha256: Option<String>,
    pub(crate) admin_listen: Option<String>,
    pub(crate) ticket_key: Option<String>,
    pub(crate) insecure_allow_unauthenticated: Option<bool>,
    pub(crate) consumer_group: Option<String>,
    pub(crate) consumer_name: Option<String>,
    pub(crate) claim_after: Option<Dur>,
    pub(crate) sample_per_second: Option<Num<u32>>,
    pub(crate) probe_interval: Option<Dur>,
    pub(crate) quota_state_after: Option<Dur>,
    pub(crate) default_cooldown: Option<Dur>,
    pub(crate) aimd_decrease: Option<f64>,
    pub(crate) aimd_increase: Option<f64>,
    pub(crate) aimd_floor: Option<f64>,
    pub(crate) headroom_tolerance: Option<f64>,
    pub(crate) unseen_tolerance: Option<f64>,
    pub(crate) pacing_increase: Option<f64>,
}
