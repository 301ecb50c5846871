//! Real `redis-server` processes for tests: standalone, a 3-master cluster, or a primary
//! with a replica watched by three Sentinels ([`RedisSentinels`]), each on free ports in
//! its own temporary directory, stopped when dropped.
//!
//! ```no_run
//! let redis = sluice_testkit::RedisServer::start();
//! let url = redis.url(); // redis://127.0.0.1:<free port>/0
//! ```

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for a test).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Polls `ready` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub(crate) fn binary(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p.to_string_lossy().into_owned();
        }
    }
    name.to_owned()
}

/// A `redis-server` on a free port, killed when dropped.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
    tls: bool,
    /// `requirepass`, sent by [`RedisServer::cli`] and the readiness check.
    password: Option<String>,
}

impl RedisServer {
    /// Starts a standalone server without persistence.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g. `["--cluster-enabled", "yes"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = Self {
            port: free_port(),
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls: false,
            password: None,
        };
        server.spawn();
        server
    }

    /// Starts a server that requires `password` (`--requirepass`, and `--masterauth`
    /// for when it replicates), with extra arguments.
    pub fn start_with_password(password: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args: Vec<String> = ["--requirepass", password, "--masterauth", password]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = Self {
            port: free_port(),
            dir,
            child: None,
            extra: args,
            tls: false,
            password: Some(password.to_owned()),
        };
        server.spawn();
        server
    }

    /// Starts a server that speaks only TLS, with a certificate for `127.0.0.1` signed
    /// by a throwaway CA (made with the `openssl` command in the server's directory;
    /// see [`RedisServer::ca_file`]).
    pub fn start_tls() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        make_test_certificates(dir.path());
        Self::start_tls_in(dir, &[])
    }

    /// Starts a TLS-only server in `dir`, which already holds `ca.pem`, `server.pem` and
    /// `server.key` (see [`make_test_certificates`]), with extra arguments.
    pub fn start_tls_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let port = free_port();
        let mut args: Vec<String> = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.pem",
            "--tls-auth-clients",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = Self {
            port,
            dir,
            child: None,
            extra: args,
            tls: true,
            password: None,
        };
        server.spawn();
        server
    }

    /// The CA that signed a TLS server's certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn spawn(&mut self) {
        let port_args: Vec<String> = if self.tls {
            Vec::new()
        } else {
            vec!["--port".into(), self.port.to_string()]
        };
        let child = Command::new(binary("redis-server"))
            .current_dir(self.dir.path())
            .args(&port_args)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.path().to_string_lossy()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let (port, tls, dir) = (self.port, self.tls, self.dir.path().to_owned());
        let password = self.password.clone();
        assert!(
            wait_until(Duration::from_secs(10), || if tls {
                ping_tls(port, &dir)
            } else {
                ping_with(port, password.as_deref())
            }),
            "redis-server did not answer on port {port}"
        );
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/0`, or `rediss://…` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// The server's working directory.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty (no scripts cached, no keys).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts a standalone server that accepts `DEBUG` commands (off by default since
    /// Redis 7), for [`RedisServer::debug_sleep`].
    pub fn start_debuggable() -> Self {
        Self::start_with(&["--enable-debug-command", "yes"])
    }

    /// `CLIENT PAUSE <ms> ALL`: every client's commands wait for `pause` (the server
    /// stays up and accepts connections). Returns at once; true when Redis said `OK`.
    pub fn pause_clients(&self, pause: Duration) -> bool {
        let ms = pause.as_millis().max(1).to_string();
        self.cli(&["CLIENT", "PAUSE", &ms, "ALL"]).trim() == "OK"
    }

    /// `DEBUG SLEEP <secs>`: the whole server blocks for `sleep` (a stand-in for a long
    /// fork, a slow disk or a busy script). Blocks the caller as long; true when Redis
    /// said `OK`. Needs a server from [`RedisServer::start_debuggable`].
    pub fn debug_sleep(&self, sleep: Duration) -> bool {
        let secs = format!("{:.3}", sleep.as_secs_f64());
        self.cli(&["DEBUG", "SLEEP", &secs]).trim() == "OK"
    }

    /// Runs `redis-cli` against the server and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        if self.tls {
            let ca = self.ca_file();
            let mut all = vec!["--tls", "--cacert", ca.to_str().unwrap_or_default()];
            all.extend_from_slice(args);
            return cli(self.port, &all);
        }
        if let Some(password) = &self.password {
            let mut all = vec!["-a", password.as_str(), "--no-auth-warning"];
            all.extend_from_slice(args);
            return cli(self.port, &all);
        }
        cli(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a throwaway CA (`ca.pem`, `ca.key`) and a certificate for `127.0.0.1` signed
/// by it (`server.pem`, `server.key`) into `d`, with the `openssl` command.
pub fn make_test_certificates(d: &Path) {
    let openssl = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl must be installed")
            .success();
        assert!(ok, "openssl {args:?} failed");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=sluice-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        d.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write san.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
}

/// Runs `redis-cli -p <port> <args>` and returns its stdout.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(binary("redis-cli"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ping_tls(port: u16, dir: &Path) -> bool {
    let ca = dir.join("ca.pem");
    TcpStream::connect(("127.0.0.1", port)).is_ok()
        && cli(
            port,
            &["--tls", "--cacert", ca.to_str().unwrap_or_default(), "PING"],
        )
        .trim()
            == "PONG"
}

fn ping_with(port: u16, password: Option<&str>) -> bool {
    let mut args = Vec::new();
    if let Some(p) = password {
        args.extend(["-a", p, "--no-auth-warning"]);
    }
    args.push("PING");
    TcpStream::connect(("127.0.0.1", port)).is_ok() && cli(port, &args).trim() == "PONG"
}

/// A Redis Cluster of three masters (and optionally one replica each).
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three masters, no replicas.
    pub fn start() -> Self {
        Self::start_with_replicas(0)
    }

    /// Three masters with `replicas` replicas each.
    pub fn start_with_replicas(replicas: usize) -> Self {
        let count = 3 * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--repl-diskless-sync-delay",
                    "0",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(addrs);
        args.extend([
            "--cluster-replicas".to_owned(),
            replicas.to_string(),
            "--cluster-yes".to_owned(),
        ]);
        let out = Command::new(binary("redis-cli"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let first = nodes[0].port;
        let ok = wait_until(Duration::from_secs(30), || {
            cli(first, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
                && nodes
                    .iter()
                    .all(|n| cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
        assert!(ok, "cluster did not reach cluster_state:ok");
        // A replica that has not synced with its master refuses to take over from it:
        // wait for every replication link before a test may kill a master.
        let synced = wait_until(Duration::from_secs(30), || {
            nodes.iter().all(|n| {
                let info = cli(n.port, &["INFO", "replication"]);
                !info.contains("role:slave") || info.contains("master_link_status:up")
            })
        });
        assert!(synced, "replicas did not sync with their masters");
        Self { nodes }
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,…`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The nodes.
    pub fn nodes(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }
}

mod sentinel;
pub use sentinel::{MASTER_NAME as SENTINEL_MASTER_NAME, RedisSentinels, SentinelProcess};

/// One of the project's binaries started on a configuration file of its own (`--config`
/// in a temp dir, `--listen 127.0.0.1:0` plus `args`), once it has printed its
/// `listening on ADDR` line; killed when dropped.
pub struct Service {
    child: Child,
    url: String,
    logs: Option<CapturedLogs>,
    _dir: tempfile::TempDir,
}

/// The stderr lines of a [`Service`] started with [`Service::start_capturing`].
struct CapturedLogs {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    /// Starts `binary` with `toml` as its configuration, `args` after the listen flag,
    /// `env` set and stderr sent to `stderr`.
    pub fn start(
        binary: &str,
        toml: &str,
        args: &[&str],
        env: &[(&str, String)],
        stderr: Stdio,
    ) -> Self {
        use std::io::{BufRead, BufReader};
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, toml).expect("write the configuration");
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0"])
            .args(args);
        // Hermetic: no tracing exporter inherited from the environment running the tests.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("OTEL_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("{binary} starts: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read the first line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self {
            child,
            url: format!("http://{addr}"),
            logs: None,
            _dir: dir,
        }
    }

    /// Like [`Service::start`], with every stderr line kept (see [`Service::logs`]).
    pub fn start_capturing(
        binary: &str,
        toml: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Self {
        use std::io::{BufRead, BufReader};
        let mut service = Self::start(binary, toml, args, env, Stdio::piped());
        let stderr = service.child.stderr.take().expect("piped stderr");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    lines.lock().expect("log lines").push(line);
                }
            })
        };
        service.logs = Some(CapturedLogs {
            lines,
            reader: Some(reader),
        });
        service
    }

    /// The stderr lines so far (all of them once [`Service::wait`] returned); empty
    /// unless started with [`Service::start_capturing`].
    pub fn logs(&self) -> Vec<String> {
        self.logs
            .as_ref()
            .map(|l| l.lines.lock().expect("log lines").clone())
            .unwrap_or_default()
    }

    /// The configuration file the process was started on (rewrite it and send `HUP`
    /// to reload).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("sluice.toml")
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `http://ADDR` of the listener.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `signal` (`TERM`, `STOP`, `CONT`, `KILL`, …) with `kill`; true when sent.
    pub fn signal(&self, signal: &str) -> bool {
        Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit (and, when capturing, for its last log line);
    /// true when it exited with success.
    pub fn wait(&mut self) -> bool {
        let ok = self.child.wait().is_ok_and(|s| s.success());
        if let Some(reader) = self.logs.as_mut().and_then(|l| l.reader.take()) {
            let _ = reader.join();
        }
        ok
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
