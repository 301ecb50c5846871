//! Connections to a standalone Redis or a Redis Cluster.
//!
//! deadpool-redis creates the connections and health-checks them when they are taken
//! from the pool (`PING`). The hot path does not take one per call: it clones a cached
//! multiplexed handle, so concurrent decisions are pipelined over one connection, and
//! the cache is dropped on any error so that the next call goes back to the pool.

use std::time::Duration;

use deadpool_redis::{Runtime, Timeouts};
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisFuture, RedisResult, Value};

use crate::error::StoreError;

/// Where Redis is, parsed from a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// `redis://…` or `rediss://…`.
    Single(String),
    /// `redis+cluster://h1:p1,h2:p2` (or `rediss+cluster://`): one URL per seed node.
    Cluster(Vec<String>),
}

impl Target {
    /// Parses `url`; errors never repeat the URL (it may hold a password).
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| "expected a URL such as redis://host:6379/0".to_owned())?;
        match scheme {
            "redis" | "rediss" | "unix" | "redis+unix" => Ok(Target::Single(url.to_owned())),
            "redis+cluster" | "rediss+cluster" => {
                let node_scheme = scheme.trim_end_matches("+cluster");
                let (auth, hosts) = match rest.rsplit_once('@') {
                    Some((auth, hosts)) => (format!("{auth}@"), hosts),
                    None => (String::new(), rest),
                };
                let hosts = hosts.split('/').next().unwrap_or_default();
                let urls: Vec<String> = hosts
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(|h| format!("{node_scheme}://{auth}{h}"))
                    .collect();
                if urls.is_empty() {
                    return Err("a cluster URL needs at least one host:port".to_owned());
                }
                Ok(Target::Cluster(urls))
            }
            other => Err(format!(
                "unknown scheme {other:?}: expected redis, rediss, redis+cluster or rediss+cluster"
            )),
        }
    }
}

/// A handle on which commands can be sent.
#[derive(Clone)]
pub(crate) enum Handle {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Handle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Handle::Single(c) => c.req_packed_command(cmd),
            Handle::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Handle::Single(c) => c.req_packed_commands(cmd, offset, count),
            Handle::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Handle::Single(c) => c.get_db(),
            Handle::Cluster(c) => c.get_db(),
        }
    }
}

enum Pool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// A pool plus a few cached handles used round-robin.
pub(crate) struct Connections {
    pool: Pool,
    cached: Box<[Mutex<Option<Handle>>]>,
    next: std::sync::atomic::AtomicUsize,
}

impl Connections {
    /// Connections to `target`; nothing is dialled until the first command.
    pub(crate) fn new(
        target: &Target,
        handles: usize,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let timeouts = Timeouts {
            wait: Some(timeout),
            create: Some(timeout),
            recycle: Some(timeout),
        };
        let size = handles.max(1);
        let pool = match target {
            Target::Single(url) => {
                let mut cfg = deadpool_redis::Config::from_url(url.clone());
                cfg.pool = Some(deadpool_redis::PoolConfig {
                    max_size: size,
                    timeouts,
                    ..Default::default()
                });
                Pool::Single(
                    cfg.create_pool(Some(Runtime::Tokio1))
                        .map_err(|e| StoreError::Pool(e.to_string()))?,
                )
            }
            Target::Cluster(urls) => {
                let mut cfg = deadpool_redis::cluster::Config::from_urls(urls.clone());
                cfg.pool = Some(deadpool_redis::PoolConfig {
                    max_size: size,
                    timeouts,
                    ..Default::default()
                });
                Pool::Cluster(
                    cfg.create_pool(Some(Runtime::Tokio1))
                        .map_err(|e| StoreError::Pool(e.to_string()))?,
                )
            }
        };
        Ok(Self {
            pool,
            cached: (0..size).map(|_| Mutex::new(None)).collect(),
            next: Default::default(),
        })
    }

    /// A handle: a cached one, or a fresh one from the pool.
    pub(crate) async fn handle(&self) -> Result<(usize, Handle), StoreError> {
        let slot = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.cached.len();
        if let Some(h) = self.cached[slot].lock().clone() {
            return Ok((slot, h));
        }
        let handle = match &self.pool {
            Pool::Single(p) => {
                let conn = p.get().await.map_err(pool_error)?;
                Handle::Single((*conn).clone())
            }
            Pool::Cluster(p) => {
                let conn = p.get().await.map_err(pool_error)?;
                Handle::Cluster((*conn).clone())
            }
        };
        *self.cached[slot].lock() = Some(handle.clone());
        Ok((slot, handle))
    }

    /// Forgets cached handle `slot` after an error that says Redis is unreachable, and
    /// every pooled connection with it: a pooled cluster connection still answers the
    /// pool's health check (any node will do) while it routes a slot to a master that
    /// died, so only a fresh connection, with a fresh slot map, follows a failover.
    pub(crate) fn discard(&self, slot: usize) {
        *self.cached[slot].lock() = None;
        match &self.pool {
            Pool::Single(p) => {
                p.retain(|_, _| false);
            }
            Pool::Cluster(p) => {
                p.retain(|_, _| false);
            }
        }
    }
}

fn pool_error(e: deadpool_redis::PoolError) -> StoreError {
    match e {
        deadpool_redis::PoolError::Backend(b) => StoreError::Redis(b),
        deadpool_redis::PoolError::Timeout(_) => {
            StoreError::Pool("timed out waiting for a connection".into())
        }
        other => StoreError::Pool(other.to_string()),
    }
}

/// A plain connection to the same Redis (standalone or cluster) for other uses of it,
/// such as the observation stream: cloneable, multiplexed, reconnecting on demand.
///
/// ```no_run
/// # async fn f() -> Result<(), sluice_limiter::StoreError> {
/// let mut conn = sluice_limiter::RedisConnection::connect("redis://127.0.0.1:6379/0", std::time::Duration::from_secs(1)).await?;
/// let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisConnection(Handle);

impl RedisConnection {
    /// Connects to `url` (the forms [`RedisStore::new`](crate::RedisStore::new) takes).
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let target = Target::parse(url).map_err(StoreError::Pool)?;
        let conns = Connections::new(&target, 1, timeout)?;
        match tokio::time::timeout(timeout, conns.handle()).await {
            Ok(Ok((_, handle))) => Ok(Self(handle)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Timeout(timeout)),
        }
    }
}

impl redis::aio::ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.0.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// Runs `cmd` directly (used by tests and health checks).
pub(crate) async fn query(handle: &mut Handle, cmd: &Cmd) -> RedisResult<Value> {
    cmd.query_async(handle).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_become_one_url_per_node() {
        assert_eq!(
            Target::parse("redis+cluster://u:p@h1:7000,h2:7001/0").unwrap(),
            Target::Cluster(vec![
                "redis://u:p@h1:7000".into(),
                "redis://u:p@h2:7001".into()
            ])
        );
        assert_eq!(
            Target::parse("rediss+cluster://h1:7000").unwrap(),
            Target::Cluster(vec!["rediss://h1:7000".into()])
        );
        assert!(Target::parse("redis://127.0.0.1:6379/0").is_ok());
    }

    #[test]
    fn parse_errors_do_not_echo_the_url() {
        let err = Target::parse("mongodb://user:hunter2@host").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = Target::parse("user:hunter2@host").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
