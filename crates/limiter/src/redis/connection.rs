//! Connections to a standalone Redis, a Redis Cluster, or the primary that Redis Sentinel
//! names.
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
    /// `redis+sentinel://s1:p1,s2:p2/master` (or `rediss+sentinel://`): the primary the
    /// Sentinels name, asked again for every new connection.
    Sentinel(SentinelTarget),
}

/// A primary found through Redis Sentinel, parsed from
/// `redis+sentinel://[user:password@]s1:p1[,s2:p2…]/master[/db][?sentinel_username=…&sentinel_password=…]`.
///
/// The URL's credentials and database are the primary's (`AUTH`, `SELECT` on every
/// connection to it); the Sentinels get none unless `sentinel_username` /
/// `sentinel_password` say so (Sentinel has a `requirepass` of its own). `rediss+` speaks
/// TLS to the Sentinels and the primary alike.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SentinelTarget {
    /// One URL per Sentinel (`redis://[auth@]host:port`), with the Sentinels' credentials.
    pub(crate) sentinels: Vec<String>,
    /// The name the Sentinels monitor the primary under (`sentinel monitor <name> …`).
    pub(crate) master: String,
    /// The primary's database.
    pub(crate) db: i64,
    /// TLS to every node.
    pub(crate) tls: bool,
    /// The primary's user (`AUTH user password`), percent-decoded.
    pub(crate) username: Option<String>,
    /// The primary's password, percent-decoded.
    pub(crate) password: Option<String>,
}

impl std::fmt::Debug for SentinelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelTarget")
            .field("sentinels", &self.sentinels.len())
            .field("master", &self.master)
            .field("db", &self.db)
            .field("tls", &self.tls)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl SentinelTarget {
    /// Parses what follows `redis+sentinel://` (`tls` for `rediss+sentinel://`).
    fn parse(rest: &str, tls: bool) -> Result<Self, String> {
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (Some(auth), hosts),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
        if hosts.is_empty() {
            return Err("a Sentinel URL needs at least one Sentinel host:port".to_owned());
        }
        let mut path = path.split('/').filter(|p| !p.is_empty());
        let master = path
            .next()
            .ok_or_else(|| {
                "a Sentinel URL names the primary after the hosts: redis+sentinel://host:26379/<master name>"
                    .to_owned()
            })?
            .to_owned();
        let db = match path.next() {
            None => 0,
            Some(d) => d
                .parse()
                .map_err(|_| "the database after the master name must be a number".to_owned())?,
        };
        if path.next().is_some() {
            return Err("a Sentinel URL's path is /<master name>[/<db>]".to_owned());
        }
        let (mut s_user, mut s_pass) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sentinel_username", v)) => s_user = Some(v),
                Some(("sentinel_password", v)) => s_pass = Some(v),
                _ => {
                    return Err(
                        "a Sentinel URL takes only the parameters sentinel_username and sentinel_password"
                            .to_owned(),
                    );
                }
            }
        }
        let scheme = if tls { "rediss" } else { "redis" };
        let sentinel_auth = match (s_user, s_pass) {
            (None, None) => String::new(),
            (u, p) => format!("{}:{}@", u.unwrap_or(""), p.unwrap_or("")),
        };
        let sentinels = hosts
            .iter()
            .map(|h| format!("{scheme}://{sentinel_auth}{h}"))
            .collect();
        // The redis crate percent-decodes credentials: let it parse them from a URL of
        // their own rather than decoding them here a second way.
        let (username, password) = match auth {
            None => (None, None),
            Some(auth) => {
                use redis::IntoConnectionInfo;
                let info = format!("redis://{auth}@localhost")
                    .into_connection_info()
                    .map_err(|_| "the credentials of a Sentinel URL are not valid".to_owned())?;
                let r = info.redis_settings();
                (
                    r.username().map(str::to_owned),
                    r.password().map(str::to_owned),
                )
            }
        };
        Ok(Self {
            sentinels,
            master,
            db,
            tls,
            username,
            password,
        })
    }
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
            "redis+sentinel" | "rediss+sentinel" => Ok(Target::Sentinel(SentinelTarget::parse(
                rest,
                scheme == "rediss+sentinel",
            )?)),
            other => Err(format!(
                "unknown scheme {other:?}: expected redis, rediss, redis+cluster, rediss+cluster, redis+sentinel or rediss+sentinel"
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
    /// Every connection it creates asks the Sentinels which node is the primary (and
    /// checks that node's `ROLE`), so a connection made after a failover reaches the
    /// new primary.
    Sentinel(deadpool_redis::sentinel::Pool),
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
            Target::Sentinel(t) => {
                use deadpool_redis::sentinel::{
                    Config, SentinelNodeConnectionInfo, SentinelServerType, TlsMode,
                };
                let node = SentinelNodeConnectionInfo {
                    tls_mode: t.tls.then_some(TlsMode::Secure),
                    redis_connection_info: Some(deadpool_redis::RedisConnectionInfo {
                        db: t.db,
                        username: t.username.clone(),
                        password: t.password.clone(),
                        ..Default::default()
                    }),
                };
                let mut cfg = Config::from_urls(
                    t.sentinels.clone(),
                    t.master.clone(),
                    SentinelServerType::Master,
                )
                .with_node_connection_info(Some(node));
                cfg.pool = Some(deadpool_redis::PoolConfig {
                    max_size: size,
                    timeouts,
                    ..Default::default()
                });
                // Errors from here may quote a URL: say only what failed.
                Pool::Sentinel(cfg.create_pool(Some(Runtime::Tokio1)).map_err(|_| {
                    StoreError::Pool("the Sentinel URL's hosts are not valid".to_owned())
                })?)
            }
        };
        Ok(Self {
            pool,
            cached: (0..size).map(|_| Mutex::new(None)).collect(),
            next: Default::default(),
        })
    }

    /// A handle: a cached one, or a fresh one from the pool.
    pub(crate) async fn handle(&self) -> Result<Handle, StoreError> {
        let slot = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.cached.len();
        if let Some(h) = self.cached[slot].lock().clone() {
            return Ok(h);
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
            Pool::Sentinel(p) => {
                let conn = p.get().await.map_err(pool_error)?;
                Handle::Single((*conn).clone())
            }
        };
        *self.cached[slot].lock() = Some(handle.clone());
        Ok(handle)
    }

    /// Forgets every cached handle after an error that says Redis is unreachable, and
    /// every pooled connection with them. The cached handles are connections to the same
    /// node, gone or demoted as well: each would otherwise fail once more (and count
    /// against the breaker) before it is replaced. The pool goes too: a pooled cluster
    /// connection still answers the pool's health check (any node will do) while it
    /// routes a slot to a master that died, and a pooled connection to a primary that
    /// Sentinel demoted answers `PING` as a replica (`READONLY` to writes), so only a
    /// fresh connection (a fresh slot map, a fresh question to the Sentinels) follows a
    /// failover.
    pub(crate) fn discard(&self) {
        for cached in self.cached.iter() {
            *cached.lock() = None;
        }
        match &self.pool {
            Pool::Single(p) => {
                p.retain(|_, _| false);
            }
            Pool::Cluster(p) => {
                p.retain(|_, _| false);
            }
            Pool::Sentinel(p) => {
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
            Ok(Ok(handle)) => Ok(Self(handle)),
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
    fn sentinel_urls_name_the_sentinels_the_master_and_its_credentials() {
        let Target::Sentinel(t) =
            Target::parse("redis+sentinel://app:p%40ss@s1:26379,s2:26380/sluice/2").unwrap()
        else {
            panic!("not a Sentinel target");
        };
        assert_eq!(t.sentinels, ["redis://s1:26379", "redis://s2:26380"]);
        assert_eq!((t.master.as_str(), t.db, t.tls), ("sluice", 2, false));
        assert_eq!(t.username.as_deref(), Some("app"));
        assert_eq!(t.password.as_deref(), Some("p@ss"), "percent-decoded");
        assert!(
            !format!("{t:?}").contains("p@ss"),
            "Debug hides the password"
        );

        let Target::Sentinel(t) = Target::parse(
            "rediss+sentinel://:pw@s1:26379/m?sentinel_username=sent&sentinel_password=spw",
        )
        .unwrap() else {
            panic!("not a Sentinel target");
        };
        assert_eq!(t.sentinels, ["rediss://sent:spw@s1:26379"]);
        assert_eq!((t.master.as_str(), t.db, t.tls), ("m", 0, true));
        assert_eq!((t.username, t.password.as_deref()), (None, Some("pw")));
    }

    #[test]
    fn bad_sentinel_urls_say_what_is_missing_without_the_password() {
        for (url, expect) in [
            ("redis+sentinel://:hunter2@s1:26379", "master name"),
            ("redis+sentinel://:hunter2@/m", "at least one Sentinel"),
            ("redis+sentinel://:hunter2@s1:1/m/x", "must be a number"),
            (
                "redis+sentinel://:hunter2@s1:1/m/0/extra",
                "/<master name>[/<db>]",
            ),
            (
                "redis+sentinel://:hunter2@s1:1/m?password=x",
                "sentinel_password",
            ),
        ] {
            let err = Target::parse(url).unwrap_err();
            assert!(err.contains(expect), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn parse_errors_do_not_echo_the_url() {
        let err = Target::parse("mongodb://user:hunter2@host").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = Target::parse("user:hunter2@host").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
