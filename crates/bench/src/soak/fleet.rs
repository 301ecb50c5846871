//! The soak's fleet: the `redis-server` it owns (killed, restarted and paused by the
//! faults), the gateways and the sidecar as child processes, the live view the traffic
//! routes by, and the traffic itself (one seeded open-loop request after another, each
//! ending classified).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{HANG_GRACE, MODEL};
use crate::BenchError;
use crate::fleet::{Arrival, chat_body};
use crate::procs::{self, Proc};
use crate::scenario::Scenario;

/// The `redis-server` the soak owns: on a free port of its own, started, SIGKILLed and
/// restarted empty on the same port, paused; its log in the soak's output directory.
/// (Not `sluice-testkit`'s server: that one is for tests — it panics where the soak
/// reports an error, takes no binary path, and keeps its directory, log included, only
/// while it lives.) Commands go through the `redis` crate with bounded timeouts, so a
/// paused or dead Redis is an error, never a hang.
pub(super) struct RedisServer {
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// A server to be started with `bin` on a free port, in `dir` (made absolute:
    /// redis-server changes into `--dir` before it opens `--logfile`).
    pub(super) fn new(bin: &Path, dir: &Path) -> Result<Self, BenchError> {
        std::fs::create_dir_all(dir).map_err(|e| BenchError::Io(dir.to_owned(), e))?;
        let dir = std::path::absolute(dir).map_err(|e| BenchError::Io(dir.to_owned(), e))?;
        Ok(Self {
            bin: bin.to_owned(),
            port: free_port()?,
            dir,
            child: None,
        })
    }

    /// Its port.
    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub(super) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (empty) and waits until it answers `PING` (10 s at most).
    pub(super) async fn start(&mut self) -> Result<(), BenchError> {
        let log = self.dir.join("redis.log");
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Spawn(format!("{}: {e}", self.bin.display())))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong = match self.connect(Duration::from_millis(500)).await {
                Ok(mut c) => redis::cmd("PING").query_async::<String>(&mut c).await.ok(),
                Err(_) => None,
            };
            if pong.as_deref() == Some("PONG") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Spawn(format!(
                    "redis-server on port {} did not answer PING (see {})",
                    self.port,
                    log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and waits for it to exit.
    pub(super) async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// `CLIENT PAUSE <hold> ALL`: every client's commands wait for `hold`.
    pub(super) async fn pause(&self, hold: Duration) -> Result<(), String> {
        let mut c = self
            .connect(Duration::from_secs(1))
            .await
            .map_err(|e| format!("CLIENT PAUSE: {e}"))?;
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(hold.as_millis().to_string())
            .arg("ALL")
            .query_async::<()>(&mut c)
            .await
            .map_err(|e| format!("CLIENT PAUSE: {e}"))
    }

    /// A connection whose connect and every reply are bounded by `timeout`.
    pub(super) async fn connect(
        &self,
        timeout: Duration,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        self.addr().connect(timeout).await
    }

    /// Where it listens (the same port across restarts).
    pub(super) fn addr(&self) -> RedisAddr {
        RedisAddr { port: self.port }
    }
}

/// Where the owned Redis listens: enough to connect, for the samplers.
#[derive(Clone, Debug)]
pub(super) struct RedisAddr {
    port: u16,
}

impl RedisAddr {
    /// A connection whose connect and every reply are bounded by `timeout`.
    pub(super) async fn connect(
        &self,
        timeout: Duration,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
}

fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::Spawn(format!("no free port: {e}")))
}

/// `VmRSS` of a process, KiB.
pub(super) fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ending {
    /// An HTTP answer, read in full (`retry_after`: the answer had `Retry-After`).
    Status { status: u16, retry_after: bool },
    /// A 200 whose body ended early (a stream cut upstream, relayed).
    Cut,
    /// The connection failed on a gateway killed while the request was in flight.
    LostToKill,
    /// Another connection error.
    ConnError,
    /// No answer within the deadline + [`HANG_GRACE`].
    Hang,
}

impl Ending {
    pub(super) fn label(self) -> String {
        match self {
            Ending::Status { status, .. } => status.to_string(),
            Ending::Cut => "200, body ended early".into(),
            Ending::LostToKill => "connection lost: gateway killed".into(),
            Ending::ConnError => "connection error".into(),
            Ending::Hang => "no answer (hang)".into(),
        }
    }
}

/// The gateways as the traffic sees them: URL (none while down), and a generation
/// bumped at every kill (a request that fails on a gateway whose generation moved was
/// lost to the kill).
pub(super) struct Live {
    pub(super) urls: Mutex<Vec<Option<String>>>,
    pub(super) gens: Vec<AtomicU64>,
    /// Process slot (`gateway-<i>`, `sidecar`) → (pid, which start of the slot).
    pub(super) pids: Mutex<BTreeMap<String, (u32, u64)>>,
}

impl Live {
    fn pick(&self, from: usize) -> Option<(usize, String, u64)> {
        let urls = self.urls.lock().expect("not poisoned");
        let n = urls.len();
        (0..n).find_map(|k| {
            let i = (from + k) % n;
            urls[i]
                .clone()
                .map(|u| (i, u, self.gens[i].load(Ordering::SeqCst)))
        })
    }
}

/// The processes the fault loop kills and restarts.
pub(super) struct Fleet {
    pub(super) redis: RedisServer,
    pub(super) gateways: Vec<Option<Proc>>,
    gateway_bin: PathBuf,
    pub(super) sidecar: Option<Proc>,
    sidecar_bin: Option<PathBuf>,
    config: PathBuf,
    out: PathBuf,
    starts: BTreeMap<String, u64>,
}

impl Fleet {
    pub(super) async fn spawn_gateway(&mut self, i: usize) -> Result<Proc, BenchError> {
        let name = format!("gateway-{i}");
        let n = self.starts.entry(name.clone()).or_insert(0);
        let log = self.out.join(format!("{name}.{n}.log"));
        *n += 1;
        procs::spawn(
            "sluice-gateway",
            &self.gateway_bin,
            &["--config", &self.config.to_string_lossy()],
            &log,
            true,
        )
        .await
    }

    pub(super) async fn spawn_sidecar(&mut self) -> Result<Option<Proc>, BenchError> {
        let Some(bin) = self.sidecar_bin.clone() else {
            return Ok(None);
        };
        let n = self.starts.entry("sidecar".into()).or_insert(0);
        let log = self.out.join(format!("sidecar.{n}.log"));
        *n += 1;
        procs::spawn(
            "sluice-sidecar",
            &bin,
            &[
                "--config",
                &self.config.to_string_lossy(),
                "--listen",
                "127.0.0.1:0",
                "--name",
                "soak-sidecar",
            ],
            &log,
            true,
        )
        .await
        .map(Some)
    }

    pub(super) fn instance(&self, name: &str) -> u64 {
        self.starts
            .get(name)
            .copied()
            .unwrap_or(1)
            .saturating_sub(1)
    }
}

/// One request of the fleet through the live gateways.
async fn send(
    http: reqwest::Client,
    live: Arc<Live>,
    a: Arrival,
    stream: bool,
    from: usize,
    service_time: Duration,
) -> Ending {
    let Some((gw, url, generation)) = live.pick(from) else {
        // Every gateway is down: only when the one gateway was killed.
        return Ending::LostToKill;
    };
    let mut body: serde_json::Value =
        serde_json::from_str(&chat_body(MODEL, a.prompt_tokens, a.output_tokens))
            .expect("valid JSON");
    if stream {
        body["stream"] = true.into();
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let wait = a
        .deadline
        .saturating_sub(service_time * 2 + Duration::from_millis(20));
    let lost = |live: &Live| {
        if live.gens[gw].load(Ordering::SeqCst) != generation {
            Ending::LostToKill
        } else {
            Ending::ConnError
        }
    };
    let req = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(procs::tenant_key(a.service))
        .header("content-type", "application/json")
        .header("x-sluice-max-wait", format!("{}ms", wait.as_millis()))
        .timeout(a.deadline + HANG_GRACE)
        .body(body.to_string());
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Ending::Hang,
        Err(_) => return lost(&live),
    };
    let status = resp.status().as_u16();
    let retry_after = resp.headers().contains_key("retry-after");
    match resp.bytes().await {
        Ok(b) => {
            let complete = if status != 200 {
                true
            } else if stream {
                b.windows(12).any(|w| w == b"data: [DONE]")
            } else {
                serde_json::from_slice::<serde_json::Value>(&b)
                    .map(|v| v["usage"]["total_tokens"].is_u64())
                    .unwrap_or(false)
            };
            if complete {
                Ending::Status {
                    status,
                    retry_after,
                }
            } else {
                Ending::Cut
            }
        }
        Err(e) if e.is_timeout() => Ending::Hang,
        Err(_) if status == 200 && live.gens[gw].load(Ordering::SeqCst) == generation => {
            Ending::Cut
        }
        Err(_) => lost(&live),
    }
}

impl Live {
    /// Records the pid of the process now holding `slot` (its `instance`-th start).
    pub(super) fn track(&self, slot: &str, pid: Option<u32>, instance: u64) {
        if let Some(pid) = pid {
            self.pids
                .lock()
                .expect("not poisoned")
                .insert(slot.to_owned(), (pid, instance));
        }
    }

    /// Forgets the process of `slot` (killed).
    pub(super) fn forget(&self, slot: &str) {
        self.pids.lock().expect("not poisoned").remove(slot);
    }

    /// The tracked processes: slot → (pid, instance).
    pub(super) fn processes(&self) -> BTreeMap<String, (u32, u64)> {
        self.pids.lock().expect("not poisoned").clone()
    }
}

/// What [`start`] brought up.
pub(super) struct Started {
    /// The processes the faults disturb.
    pub(super) fleet: Fleet,
    /// The gateways as the traffic sees them.
    pub(super) live: Arc<Live>,
    /// The simulator (killed when dropped).
    pub(super) sim: Proc,
    /// Its root URL.
    pub(super) sim_root: String,
    /// One line saying what runs.
    pub(super) setup: String,
}

/// Starts the owned Redis, the simulator (with `sim_config`), `count` gateways sharing
/// Redis under key prefix `prefix`, and the sidecar when there is one; configurations
/// and logs go into `out`.
pub(super) async fn start(
    opts: &super::SoakOptions,
    s: &Scenario,
    sim_config: &str,
    prefix: &str,
    count: u32,
) -> Result<Started, BenchError> {
    let out = &opts.out_dir;
    let write = |name: &str, text: &str| -> Result<PathBuf, BenchError> {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| BenchError::Io(p.clone(), e))?;
        Ok(p)
    };
    let mut redis = RedisServer::new(&opts.redis_server, &out.join("redis"))?;
    redis.start().await?;

    let sim_cfg = write("sim.toml", sim_config)?;
    let sim = procs::spawn(
        "sluice-sim",
        &opts.sim_bin,
        &["--config", &sim_cfg.to_string_lossy()],
        &out.join("sim.log"),
        true,
    )
    .await?;
    let sim_root = format!("http://{}", sim.addr.clone().unwrap_or_default());

    let cfg = procs::gateway_config(
        s,
        &format!("{sim_root}/v1"),
        Some(&redis.url()),
        prefix,
        count,
    );
    let mut fleet = Fleet {
        redis,
        gateways: Vec::new(),
        gateway_bin: opts.gateway_bin.clone(),
        sidecar: None,
        sidecar_bin: opts.sidecar_bin.clone(),
        config: write("gateway.toml", &cfg)?,
        out: out.clone(),
        starts: BTreeMap::new(),
    };
    let live = Arc::new(Live {
        urls: Mutex::new(Vec::new()),
        gens: (0..count).map(|_| AtomicU64::new(0)).collect(),
        pids: Mutex::new(BTreeMap::new()),
    });
    for i in 0..count as usize {
        let p = fleet.spawn_gateway(i).await?;
        live.urls.lock().expect("not poisoned").push(Some(format!(
            "http://{}",
            p.addr.clone().unwrap_or_default()
        )));
        live.track(&format!("gateway-{i}"), p.child.id(), 0);
        fleet.gateways.push(Some(p));
    }
    fleet.sidecar = fleet.spawn_sidecar().await?;
    live.track(
        "sidecar",
        fleet.sidecar.as_ref().and_then(|p| p.child.id()),
        0,
    );
    let setup = format!(
        "redis-server on port {} (owned), simulator at {sim_root}{}, {count} gateways (on_error = local), {}",
        fleet.redis.port(),
        if opts.faults { " with fault rates" } else { "" },
        if fleet.sidecar.is_some() {
            "sidecar"
        } else {
            "no sidecar"
        }
    );
    Ok(Started {
        fleet,
        live,
        sim,
        sim_root,
        setup,
    })
}

/// Requests sent and answered so far (for the progress lines).
#[derive(Default)]
pub(super) struct Progress {
    pub(super) sent: AtomicUsize,
    pub(super) done: AtomicUsize,
}

/// Plays `schedule` from `start` through the live gateways (round robin from each
/// request's index), the `stream` service's requests streamed; every request's ending.
pub(super) async fn play(
    schedule: Vec<Arrival>,
    s: &Scenario,
    http: reqwest::Client,
    live: Arc<Live>,
    progress: Arc<Progress>,
    start: Instant,
) -> Vec<Ending> {
    let stream_service = s.services.iter().position(|x| x.name == "stream");
    let mut set = JoinSet::new();
    for (k, a) in schedule.into_iter().enumerate() {
        tokio::time::sleep_until(start + a.at).await;
        progress.sent.fetch_add(1, Ordering::Relaxed);
        let stream = Some(a.service) == stream_service;
        let st = s.provider.service_time(a.output_tokens);
        let (http, live, progress) = (http.clone(), live.clone(), progress.clone());
        set.spawn(async move {
            let e = send(http, live, a, stream, k, st).await;
            progress.done.fetch_add(1, Ordering::Relaxed);
            e
        });
    }
    let mut endings = Vec::new();
    while let Some(r) = set.join_next().await {
        endings.push(r.unwrap_or(Ending::ConnError));
    }
    endings
}
