//! Redis Sentinel for tests: a primary, one replica and three Sentinels (quorum 2), all on
//! free ports of 127.0.0.1, as Debian's `redis-sentinel` runs them.
//!
//! ```no_run
//! let mut topology = sluice_testkit::RedisSentinels::start();
//! let url = topology.url(); // redis+sentinel://127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/sluice/0
//! let old = topology.kill_primary();
//! let new = topology.wait_for_failover(old, std::time::Duration::from_secs(60));
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{RedisServer, binary, cli, free_port, wait_until};

/// The name the Sentinels monitor the primary under.
pub const MASTER_NAME: &str = "sluice";

/// How long a Sentinel waits for a silent primary before calling it down
/// (`down-after-milliseconds`): short, so that a test's failover takes seconds.
const DOWN_AFTER_MS: u64 = 1000;

/// `failover-timeout`: also how long (twice this) a Sentinel waits before it tries again
/// after a failed election, so it is kept short too.
const FAILOVER_TIMEOUT_MS: u64 = 4000;

/// One `redis-sentinel` process with its own configuration file (Sentinel rewrites it),
/// killed when dropped.
pub struct SentinelProcess {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// TLS only (`tls-port`, `tls-replication`), with the topology's certificates.
    tls: bool,
}

impl SentinelProcess {
    /// Starts a Sentinel watching the primary on `primary_port` as [`MASTER_NAME`]
    /// (with `auth-pass` when the data nodes require a password; over TLS only, with
    /// the certificates in `certs`, when given).
    fn start(primary_port: u16, password: Option<&str>, certs: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let listen = match certs {
            None => format!("port {port}\n"),
            Some(certs) => {
                copy_certificates(certs, dir.path());
                format!(
                    "port 0\ntls-port {port}\ntls-cert-file server.pem\ntls-key-file server.key\n\
                     tls-ca-cert-file ca.pem\ntls-auth-clients no\ntls-replication yes\n"
                )
            }
        };
        let mut conf = format!(
            "{listen}bind 127.0.0.1\ndaemonize no\ndir {dir}\n\
             sentinel resolve-hostnames no\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            dir = dir.path().display(),
        );
        if let Some(p) = password {
            conf.push_str(&format!("sentinel auth-pass {MASTER_NAME} {p}\n"));
        }
        let file = dir.path().join("sentinel.conf");
        std::fs::write(&file, conf).expect("write sentinel.conf");
        let child = Command::new(binary("redis-sentinel"))
            .arg(&file)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-sentinel must be installed (Debian package redis-sentinel; scripts/test.sh installs it)");
        let sentinel = Self {
            port,
            dir,
            child: Some(child),
            tls: certs.is_some(),
        };
        assert!(
            wait_until(Duration::from_secs(10), || sentinel.cli(&["PING"]).trim()
                == "PONG"),
            "redis-sentinel did not answer on port {port}"
        );
        sentinel
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `redis-cli` against this Sentinel and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        if self.tls {
            let ca = self.dir.path().join("ca.pem");
            let mut all = vec!["--tls", "--cacert", ca.to_str().unwrap_or_default()];
            all.extend_from_slice(args);
            return cli(self.port, &all);
        }
        cli(self.port, args)
    }

    /// The port of the primary this Sentinel names now
    /// (`SENTINEL get-master-addr-by-name`).
    pub fn primary_port(&self) -> Option<u16> {
        let out = self.cli(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME]);
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// A field of `SENTINEL MASTER <name>` (redis-cli prints name and value on
    /// alternate lines).
    fn master_field(&self, field: &str) -> Option<String> {
        let out = self.cli(&["SENTINEL", "MASTER", MASTER_NAME]);
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        lines
            .chunks(2)
            .find(|kv| kv.first() == Some(&field))
            .and_then(|kv| kv.get(1))
            .map(|v| (*v).to_owned())
    }

    /// Kills it (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its working directory (with the configuration it rewrites).
    pub fn dir(&self) -> std::path::PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A primary and a replica watched by three Sentinels (quorum 2, a failover needs a
/// majority of them): the smallest topology that survives losing the primary.
///
/// [`RedisSentinels::start`] returns once the replica is in sync, every Sentinel knows
/// the replica and the two other Sentinels (`SENTINEL CKQUORUM` says a failover can be
/// authorised), so a test may kill the primary at once.
pub struct RedisSentinels {
    nodes: Vec<RedisServer>,
    sentinels: Vec<SentinelProcess>,
    password: Option<String>,
    /// The CA and the one certificate every node uses, for a TLS topology.
    certs: Option<tempfile::TempDir>,
}

impl RedisSentinels {
    /// The topology without passwords.
    pub fn start() -> Self {
        Self::start_inner(None, false)
    }

    /// The topology with `password` required by the primary and the replica (the
    /// Sentinels have none, and reach the data nodes with `auth-pass`).
    pub fn start_with_password(password: &str) -> Self {
        Self::start_inner(Some(password), false)
    }

    /// The topology speaking only TLS, every node (data nodes and Sentinels, and the
    /// replication between them) with one certificate for `127.0.0.1` signed by a
    /// throwaway CA ([`RedisSentinels::ca_file`]); [`RedisSentinels::url`] is then
    /// `rediss+sentinel://…`.
    pub fn start_tls() -> Self {
        Self::start_inner(None, true)
    }

    fn start_inner(password: Option<&str>, tls: bool) -> Self {
        let certs = tls.then(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            crate::make_test_certificates(dir.path());
            dir
        });
        let certs_path = certs.as_ref().map(|d| d.path().to_owned());
        let node = |extra: &[&str]| {
            let mut args = vec![
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
            ];
            args.extend_from_slice(extra);
            match (password, &certs_path) {
                (_, Some(certs)) => {
                    let dir = tempfile::tempdir().expect("temp dir");
                    copy_certificates(certs, dir.path());
                    args.extend(["--tls-replication", "yes"]);
                    RedisServer::start_tls_in(dir, &args)
                }
                (Some(p), None) => RedisServer::start_with_password(p, &args),
                (None, None) => RedisServer::start_with(&args),
            }
        };
        let primary = node(&[]);
        let primary_port = primary.port().to_string();
        let replica = node(&["--replicaof", "127.0.0.1", &primary_port]);
        let synced = wait_until(Duration::from_secs(30), || {
            replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        });
        assert!(synced, "the replica did not sync with the primary");
        let sentinels: Vec<SentinelProcess> = (0..3)
            .map(|_| SentinelProcess::start(primary.port(), password, certs_path.as_deref()))
            .collect();
        // Sentinels find the replica through the primary's INFO and each other through
        // hello messages on the primary (every 2 s): wait until a failover could happen.
        let ready = wait_until(Duration::from_secs(60), || {
            sentinels.iter().all(|s| {
                s.cli(&["SENTINEL", "CKQUORUM", MASTER_NAME])
                    .starts_with("OK 3 usable")
                    && s.master_field("num-slaves").as_deref() == Some("1")
                    && s.master_field("num-other-sentinels").as_deref() == Some("2")
            })
        });
        assert!(
            ready,
            "the Sentinels did not find the replica and each other: {}",
            sentinels[0].cli(&["SENTINEL", "MASTER", MASTER_NAME])
        );
        Self {
            nodes: vec![primary, replica],
            sentinels,
            password: password.map(str::to_owned),
            certs,
        }
    }

    /// The CA that signed every node's certificate (PEM), for a TLS topology.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.certs.as_ref().map(|d| d.path().join("ca.pem"))
    }

    /// `redis+sentinel://[:password@]127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/sluice/0`
    /// (`rediss+sentinel://` for a TLS topology).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let auth = self
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        let scheme = if self.certs.is_some() {
            "rediss+sentinel"
        } else {
            "redis+sentinel"
        };
        format!("{scheme}://{auth}{}/{MASTER_NAME}/0", hosts.join(","))
    }

    /// The name the Sentinels monitor the primary under.
    pub fn master_name(&self) -> &'static str {
        MASTER_NAME
    }

    /// The data nodes, the first started as primary and the second as its replica
    /// (their roles change with a failover: see [`RedisSentinels::primary_port`]).
    pub fn nodes(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// The Sentinels.
    pub fn sentinels(&mut self) -> &mut [SentinelProcess] {
        &mut self.sentinels
    }

    /// The primary's port as a majority of the Sentinels that answer name it.
    pub fn primary_port(&self) -> Option<u16> {
        let named: Vec<u16> = self
            .sentinels
            .iter()
            .filter(|s| s.child.is_some())
            .filter_map(SentinelProcess::primary_port)
            .collect();
        let first = *named.first()?;
        (named.iter().filter(|p| **p == first).count() * 2 > named.len()).then_some(first)
    }

    /// Kills (SIGKILL) the data node the Sentinels name primary; returns its port.
    pub fn kill_primary(&mut self) -> u16 {
        let port = self.primary_port().expect("the Sentinels name a primary");
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .expect("the primary is one of the data nodes")
            .kill();
        port
    }

    /// Waits until every Sentinel that runs names a primary other than `old` and that
    /// node says `role:master`; returns its port, or `None` after `timeout`.
    pub fn wait_for_failover(&self, old: u16, timeout: Duration) -> Option<u16> {
        let mut promoted = None;
        wait_until(timeout, || {
            let live: Vec<&SentinelProcess> = self
                .sentinels
                .iter()
                .filter(|s| s.child.is_some())
                .collect();
            let named: Vec<Option<u16>> = live.iter().map(|s| s.primary_port()).collect();
            let Some(Some(new)) = named.first().copied() else {
                return false;
            };
            if new == old || named.iter().any(|p| *p != Some(new)) {
                return false;
            }
            let is_master = self.nodes.iter().any(|n| {
                n.port() == new && n.cli(&["ROLE"]).lines().next().map(str::trim) == Some("master")
            });
            if is_master {
                promoted = Some(new);
            }
            is_master
        });
        promoted
    }
}

/// Copies the CA and the server certificate and key of `from` into `to`.
fn copy_certificates(from: &Path, to: &Path) {
    for f in ["ca.pem", "server.pem", "server.key"] {
        std::fs::copy(from.join(f), to.join(f)).expect("copy a test certificate");
    }
}
