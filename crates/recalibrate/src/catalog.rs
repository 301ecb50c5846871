//! [`Catalog`]: the configured models as the limiter sees them — one [`Quota`] and one
//! [`QuotaKey`] per account (`<upstream>/<quota>`, `<account>`: the quota is the
//! model's name unless it draws on a `[[quotas]]` entry, the account `key-<i>` unless
//! the upstream groups its keys into named `accounts`). The gateway builds its
//! quotas here too, so the gateway, the sidecar and `/v1/quotas` agree on every limit id.

use std::num::NonZeroU64;
use std::time::Duration;

use sluice_config::{Config, Dialect, LimitUnit, Model, PacingMode};
use sluice_limiter::{Limit, Pacing, Quota, QuotaError, QuotaKey, Unit, Window};
use sluice_provider::Provider;

use crate::error::CatalogError;

/// One configured model.
#[derive(Clone, Debug)]
pub struct CatalogModel {
    /// What clients call it.
    pub name: String,
    /// The upstream's name.
    pub upstream: String,
    /// The name sent upstream (what observations carry).
    pub upstream_model: String,
    /// How the upstream speaks.
    pub provider: Provider,
    /// The quota of each account.
    pub quota: Quota,
    /// One key per account of the upstream, in its order (`key-<i>`, or the names of
    /// its `accounts`); models drawing on one `[[quotas]]` entry have the same keys.
    pub keys: Vec<QuotaKey>,
}

/// Every configured model.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// In configuration order.
    pub models: Vec<CatalogModel>,
}

/// What a configured limit's unit counts, in the limiter's terms.
pub fn unit(u: LimitUnit) -> Unit {
    match u {
        LimitUnit::Requests => Unit::Requests,
        LimitUnit::Tokens => Unit::Tokens,
        LimitUnit::InputTokens => Unit::InputTokens,
        LimitUnit::OutputTokens => Unit::OutputTokens,
    }
}

/// The delivery jitter a slot must absorb: between the slot the limiter grants and the
/// moment the provider counts the request lie a scheduling and network delay that
/// varies by a few milliseconds under load.
pub(crate) const ARRIVAL_JITTER: Duration = Duration::from_millis(5);

/// A window lengthened by the latency allowance: 1% plus [`ARRIVAL_JITTER`] (whole
/// milliseconds). A slot is granted on the store's clock but the provider counts the
/// request when it arrives, a variable delay later; holding each charge this much longer
/// than the provider does keeps a late arrival from overlapping the next window's first
/// request. It costs 1% of a limit plus 5 ms of its window: 0.5% more on a 1 s window,
/// 0.01% on a minute, and it is what keeps short windows (a 250 ms RPS window in the
/// demo's scaled time) free of upstream 429s.
fn with_allowance(per: Duration) -> Duration {
    per + Duration::from_millis((per.as_millis() / 100) as u64) + ARRIVAL_JITTER
}

/// The quota of one account of `model` (windows with the latency allowance).
pub fn quota(model: &Model) -> Result<Quota, QuotaError> {
    let limits = model
        .limits
        .iter()
        .map(|l| {
            Ok(Limit::new(
                unit(l.unit),
                NonZeroU64::from(l.amount),
                Window::new(with_allowance(l.per))?,
            ))
        })
        .collect::<Result<Vec<_>, QuotaError>>()?;
    let pacing = match model.pacing {
        PacingMode::Auto => Pacing::Auto,
        PacingMode::Off => Pacing::Off,
    };
    Quota::new(limits)?.with_pacing(pacing)
}

/// The provider a dialect speaks for.
pub fn provider(d: Dialect) -> Provider {
    match d {
        Dialect::Openai => Provider::OpenAi,
        Dialect::Dashscope => Provider::DashScope,
        Dialect::Azure => Provider::Azure,
        Dialect::Anthropic => Provider::Anthropic,
    }
}

impl Catalog {
    /// Builds every model's quota and keys.
    pub fn new(config: &Config) -> Result<Self, CatalogError> {
        let mut models = Vec::with_capacity(config.models.len());
        for m in &config.models {
            let err = |source| CatalogError::Quota {
                model: m.name.clone(),
                source,
            };
            let up = &config.upstreams[m.upstream_index];
            // Models that share a quota share its keys: one budget per account.
            let group = format!("{}/{}", up.name, m.quota);
            let keys = up
                .accounts
                .iter()
                .map(|a| QuotaKey::new(group.clone(), a.name.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            models.push(CatalogModel {
                name: m.name.clone(),
                upstream: up.name.clone(),
                upstream_model: m.upstream_model.clone(),
                provider: provider(up.dialect),
                quota: quota(m).map_err(err)?,
                keys,
            });
        }
        Ok(Self { models })
    }

    /// The accounts an observation is about: every model of `upstream` served as
    /// `model` upstream (or called `model`), on the account named `account`. Several
    /// configured models may share one upstream model; a provider meters them together.
    /// Each key comes once: models that draw on one `[[quotas]]` entry share their keys,
    /// and one observation changes one budget once.
    pub fn targets<'a>(
        &'a self,
        upstream: &'a str,
        model: &'a str,
        account: &'a str,
    ) -> impl Iterator<Item = (&'a CatalogModel, &'a QuotaKey)> + 'a {
        let about = move |m: &&CatalogModel| {
            m.upstream == upstream && (m.upstream_model == model || m.name == model)
        };
        let key_of = move |m: &'a CatalogModel| m.keys.iter().find(|k| k.name() == account);
        self.models
            .iter()
            .enumerate()
            .filter(move |(_, m)| about(m))
            .filter_map(move |(i, m)| key_of(m).map(|k| (i, m, k)))
            .filter(move |(i, _, k)| {
                !self.models[..*i]
                    .iter()
                    .filter(about)
                    .any(|earlier| key_of(earlier) == Some(*k))
            })
            .map(|(_, m, k)| (m, k))
    }

    /// Every model of `upstream` that has an account named `account`.
    pub fn accounts<'a>(
        &'a self,
        upstream: &'a str,
        account: &'a str,
    ) -> impl Iterator<Item = (&'a CatalogModel, &'a QuotaKey)> + 'a {
        self.models
            .iter()
            .filter(move |m| m.upstream == upstream)
            .filter_map(move |m| m.keys.iter().find(|k| k.name() == account).map(|k| (m, k)))
    }

    /// The model clients call `name`.
    pub fn model(&self, name: &str) -> Option<&CatalogModel> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// The cooldown of a throttling refusal that names no wait: `default` (`[sidecar]
/// default_cooldown`), but at most a tenth of the quota's shortest window, so that a
/// short window (a per-second limit, a scaled test) is not idle for most of its length.
pub fn cooldown_without_wait(quota: &Quota, default: Duration) -> Duration {
    let shortest = quota
        .limits()
        .iter()
        .map(|l| l.window().length())
        .min()
        .unwrap_or(default);
    default.min(shortest / 10).max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(models: &str) -> Catalog {
        let text = format!(
            "[[upstreams]]\nname = \"up\"\nbase_url = \"https://example.com/v1\"\nkeys = [\"sk-1234567\"]\n{models}"
        );
        let env = std::collections::HashMap::<String, String>::new();
        Catalog::new(&sluice_config::from_str(&text, &[], &env).unwrap()).unwrap()
    }

    #[test]
    fn an_observation_changes_a_shared_quota_once() {
        let shared = catalog(
            "[[quotas]]\nname = \"q\"\nrpm = 5\n\
             [[models]]\nname = \"a\"\nupstream = \"up\"\nupstream_model = \"x\"\nquota = \"q\"\n\
             [[models]]\nname = \"b\"\nupstream = \"up\"\nupstream_model = \"x\"\nquota = \"q\"\n",
        );
        assert_eq!(
            shared.models[0].keys, shared.models[1].keys,
            "one quota, one key"
        );
        assert_eq!(shared.targets("up", "x", "key-0").count(), 1);
        let separate = catalog(
            "[[models]]\nname = \"a\"\nupstream = \"up\"\nupstream_model = \"x\"\nrpm = 5\n\
             [[models]]\nname = \"b\"\nupstream = \"up\"\nupstream_model = \"x\"\nrpm = 5\n",
        );
        let keys: Vec<String> = separate
            .targets("up", "x", "key-0")
            .map(|(_, k)| k.to_string())
            .collect();
        assert_eq!(keys, ["up/a/key-0", "up/b/key-0"]);
    }
}
