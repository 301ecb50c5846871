//! A catalog, a store on a manual clock and a recalibrator sharing it.

use std::sync::Arc;
use std::time::Duration;

use sluice_limiter::{
    Clock, Cost, InProcessStore, ManualClock, QuotaKey, QuotaStatus, Store, Timestamp,
};
use sluice_observe::Observation;
use sluice_recalibrate::{Catalog, Recalibrator, Tuning};

pub(crate) struct Rig {
    pub(crate) clock: ManualClock,
    pub(crate) store: InProcessStore,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) recal: Recalibrator,
}

/// Model `m` on upstream `sim` (`dialect`), accounts key-0 and key-1, 100 requests and
/// 100000 tokens per 10 s (10.1 s with the latency allowance).
pub(crate) fn rig(dialect: &str) -> Rig {
    rig_with(
        dialect,
        "limits = [{ requests = 100, per = \"10s\" }, { tokens = 100000, per = \"10s\" }]",
    )
}

pub(crate) fn rig_with(dialect: &str, limits: &str) -> Rig {
    let toml = format!(
        "[[upstreams]]\nname = \"sim\"\nbase_url = \"http://127.0.0.1:1/v1\"\ndialect = \"{dialect}\"\nkeys = [\"a\", \"b\"]\n[[models]]\nname = \"m\"\nupstream = \"sim\"\n{limits}\n"
    );
    let config = sluice_config::from_str(&toml, &[], &std::collections::HashMap::new()).unwrap();
    let catalog = Arc::new(Catalog::new(&config).unwrap());
    let clock = ManualClock::new(Timestamp::from_micros(1_700_000_000_000_000));
    let store = InProcessStore::with_clock(Arc::new(clock.clone()));
    let recal =
        Recalibrator::with_clock(catalog.clone(), Tuning::default(), Arc::new(clock.clone()));
    Rig {
        clock,
        store,
        catalog,
        recal,
    }
}

impl Rig {
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now().as_micros() / 1000
    }

    pub(crate) fn key(&self, i: usize) -> QuotaKey {
        self.catalog.models[0].keys[i].clone()
    }

    pub(crate) async fn status(&self, i: usize) -> QuotaStatus {
        self.store
            .status(&self.key(i), &self.catalog.models[0].quota)
            .await
            .unwrap()
    }

    /// Admits `n` requests of `tokens` tokens each on account `i`.
    pub(crate) async fn spend(&self, i: usize, n: u64, tokens: u64) {
        let m = &self.catalog.models[0];
        let keys = [self.key(i)];
        for _ in 0..n {
            let d = self
                .store
                .acquire(
                    &keys,
                    &m.quota,
                    Cost::request(tokens, 0),
                    Duration::from_secs(3600),
                )
                .await
                .unwrap();
            assert!(d.granted().is_some());
        }
    }

    /// An observation on account `key-<i>` made now.
    pub(crate) fn obs(
        &self,
        i: usize,
        status: u16,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Observation {
        Observation::new(
            self.now_ms(),
            "sim",
            "m",
            &format!("key-{i}"),
            status,
            headers.iter().copied(),
            body,
        )
    }

    pub(crate) async fn apply(&self, o: &Observation) -> Vec<sluice_recalibrate::Change> {
        self.recal
            .apply(&self.store, o)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.change)
            .collect()
    }
}

pub(crate) const OPENAI_TPM: &str = r#"{"error":{"message":"Rate limit reached for m in organization org-x on tokens per min (TPM): Limit 50000, Used 47949, Requested 3006. Please try again in 1.146s. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
pub(crate) const OPENAI_BILLING: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
pub(crate) const DASHSCOPE_RPM: &str = r#"{"error":{"message":"You have exceeded your request limit.","type":"limit_requests","param":null,"code":"limit_requests"},"request_id":"9e3779b9"}"#;
pub(crate) const DASHSCOPE_TPM: &str = r#"{"error":{"message":"You exceeded your current quota, check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"},"request_id":"8605e472"}"#;
pub(crate) const DASHSCOPE_BURST: &str = r#"{"error":{"message":"Request rate increased too quickly. To ensure system stability, please adjust your client logic to scale requests more smoothly over time.","type":"limit_burst_rate","param":null,"code":"limit_burst_rate"},"request_id":"x"}"#;
pub(crate) const DASHSCOPE_FREE: &str = r#"{"error":{"message":"Free allocated quota exceeded.","type":"insufficient_quota","param":null,"code":"insufficient_quota"},"request_id":"y"}"#;
