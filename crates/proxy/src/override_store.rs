//! Where run-time changes ([`crate::overrides`]) are kept: one Redis hash
//! `<prefix>:{admin}:overrides` (a field per item and a `version` counter bumped in the
//! same `MULTI`), which every replica polls every 250 ms and applies when the counter
//! moved; or, with the embedded limiter, this process only.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use sluice_limiter::RedisConnection;

use crate::overrides::Overrides;
use crate::state::LiveCell;

/// How often replicas look for changes.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(250);

/// Why a change could not be kept.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OverrideStoreError {
    #[error("the store failed: {0}")]
    Store(#[from] sluice_limiter::StoreError),
    #[error("the store failed: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The shared store of run-time changes, or this process's own.
pub(crate) enum OverrideStore {
    Redis {
        url: String,
        key: String,
        timeout: Duration,
        conn: tokio::sync::Mutex<Option<RedisConnection>>,
    },
    Local(Mutex<(u64, BTreeMap<String, String>)>),
}

impl OverrideStore {
    pub(crate) fn for_config(config: &sluice_config::Config) -> Self {
        match &config.store {
            Some(s) => OverrideStore::Redis {
                url: s.redis_url.expose().to_owned(),
                key: format!("{}:{{admin}}:overrides", s.key_prefix),
                timeout: s.timeout.max(Duration::from_millis(500)),
                conn: tokio::sync::Mutex::new(None),
            },
            None => OverrideStore::Local(Mutex::new((0, BTreeMap::new()))),
        }
    }

    /// True when the changes are shared with other replicas.
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self, OverrideStore::Redis { .. })
    }

    async fn connection(
        url: &str,
        timeout: Duration,
        slot: &tokio::sync::Mutex<Option<RedisConnection>>,
    ) -> Result<RedisConnection, OverrideStoreError> {
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = RedisConnection::connect(url, timeout).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Sets `field` to `value` (or deletes it) and bumps the version, atomically.
    pub(crate) async fn write(
        &self,
        field: &str,
        value: Option<&str>,
    ) -> Result<(), OverrideStoreError> {
        match self {
            OverrideStore::Redis {
                url,
                key,
                timeout,
                conn,
            } => {
                let mut c = Self::connection(url, *timeout, conn).await?;
                let mut pipe = redis::pipe();
                pipe.atomic();
                match value {
                    Some(v) => pipe.cmd("HSET").arg(key).arg(field).arg(v).ignore(),
                    None => pipe.cmd("HDEL").arg(key).arg(field).ignore(),
                };
                pipe.cmd("HINCRBY").arg(key).arg("version").arg(1).ignore();
                let done: redis::RedisResult<()> = pipe.query_async(&mut c).await;
                if done.is_err() {
                    *conn.lock().await = None;
                }
                Ok(done?)
            }
            OverrideStore::Local(m) => {
                let mut m = m.lock();
                match value {
                    Some(v) => m.1.insert(field.to_owned(), v.to_owned()),
                    None => m.1.remove(field),
                };
                m.0 += 1;
                Ok(())
            }
        }
    }

    /// The version counter only (the cheap poll).
    async fn version(&self) -> Result<u64, OverrideStoreError> {
        match self {
            OverrideStore::Redis {
                url,
                key,
                timeout,
                conn,
            } => {
                let mut c = Self::connection(url, *timeout, conn).await?;
                let v: redis::RedisResult<Option<u64>> = redis::cmd("HGET")
                    .arg(key)
                    .arg("version")
                    .query_async(&mut c)
                    .await;
                if v.is_err() {
                    *conn.lock().await = None;
                }
                Ok(v?.unwrap_or(0))
            }
            OverrideStore::Local(m) => Ok(m.lock().0),
        }
    }

    /// Every change and the version they were read at.
    pub(crate) async fn read(&self) -> Result<Overrides, OverrideStoreError> {
        match self {
            OverrideStore::Redis {
                url,
                key,
                timeout,
                conn,
            } => {
                let mut c = Self::connection(url, *timeout, conn).await?;
                let all: redis::RedisResult<BTreeMap<String, String>> =
                    redis::cmd("HGETALL").arg(key).query_async(&mut c).await;
                if all.is_err() {
                    *conn.lock().await = None;
                }
                let all = all?;
                let version = all.get("version").and_then(|v| v.parse().ok()).unwrap_or(0);
                Ok(Overrides::from_fields(version, &all))
            }
            OverrideStore::Local(m) => {
                let m = m.lock();
                Ok(Overrides::from_fields(m.0, &m.1))
            }
        }
    }
}

/// The poll loop of one process: applies the shared changes whenever their version
/// moves. Ends when the gateway is dropped.
pub(crate) async fn follow(live: Weak<LiveCell>) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(live) = live.upgrade() else { return };
        let applied = live.overrides.lock().version;
        match live.store.version().await {
            Ok(v) if v != applied => {
                failing = false;
                crate::admin::refresh(&live_gateway(&live)).await;
            }
            Ok(_) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read run-time changes; the last ones read stay");
            }
            Err(_) => {}
        }
    }
}

fn live_gateway(live: &Arc<LiveCell>) -> crate::state::Gateway {
    crate::state::Gateway {
        inner: live.current.read().clone(),
        live: live.clone(),
    }
}
