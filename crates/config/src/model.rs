//! The validated configuration: what the gateway and the sidecar run on.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::secret::{KeyDigest, Secret};

/// A validated configuration.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// `[server]`.
    pub server: Server,
    /// `[store]`; `None` runs the embedded, per-process limiter.
    pub store: Option<Store>,
    /// `[[upstreams]]`, in file order.
    pub upstreams: Vec<Upstream>,
    /// `[[models]]`, in file order.
    pub models: Vec<Model>,
    /// `[queue]`.
    pub queue: Queue,
    /// `[[tenants]]`; empty means any caller is served (as tenant `default`).
    pub tenants: Vec<Tenant>,
    /// `[retry]`.
    pub retry: Retry,
    /// `[sidecar]`: the recalibrating sidecar, and what the gateway publishes for it.
    pub sidecar: Sidecar,
    /// The key paths of secrets written out in the file itself (e.g.
    /// `upstreams[0].keys[1]`) instead of coming from the environment (`${VAR}`) or a
    /// secret file (`${file:/run/secrets/...}`). Accepted, but the binaries warn at start.
    pub secrets_in_file: Vec<String>,
}

impl Config {
    /// Refuses a gateway that would serve anyone who can reach it: `server.listen` is
    /// not a loopback address, no `[[tenants]]` are configured (so no caller needs a
    /// key) and `server.insecure_allow_unauthenticated` is not `true`.
    ///
    /// Loading does not check this (the same file configures the sidecar, which has its
    /// own `listen`); the gateway calls it before it binds.
    ///
    /// Also refuses a non-loopback `server.admin_listen` without `[sidecar] admin_key`:
    /// metrics and the full quotas view name tenants, spend and account headroom.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        self.check_admin_listen("server.admin_listen", self.server.admin_listen)?;
        let listen = self.server.listen;
        if listen.ip().is_loopback()
            || !self.tenants.is_empty()
            || self.server.insecure_allow_unauthenticated
        {
            return Ok(());
        }
        Err(ConfigError::Unauthenticated {
            listen: listen.to_string(),
        })
    }

    /// The sidecar's twin of [`Config::check_exposure`]: refuses a non-loopback
    /// `sidecar.listen` when no `[[tenants]]` are configured (anyone could acquire the
    /// whole capacity or report accounts dead) unless
    /// `sidecar.insecure_allow_unauthenticated = true`, and a non-loopback
    /// `sidecar.admin_listen` without `sidecar.admin_key`. The sidecar calls it before it
    /// binds.
    pub fn check_sidecar_exposure(&self) -> Result<(), ConfigError> {
        self.check_admin_listen("sidecar.admin_listen", self.sidecar.admin_listen)?;
        let listen = self.sidecar.listen;
        if listen.ip().is_loopback()
            || !self.tenants.is_empty()
            || self.sidecar.insecure_allow_unauthenticated
        {
            return Ok(());
        }
        Err(ConfigError::SidecarUnauthenticated {
            listen: listen.to_string(),
        })
    }

    fn check_admin_listen(
        &self,
        path: &'static str,
        admin_listen: Option<SocketAddr>,
    ) -> Result<(), ConfigError> {
        match admin_listen {
            Some(a) if !a.ip().is_loopback() && self.sidecar.admin_key.is_none() => {
                Err(ConfigError::AdminUnauthenticated {
                    path,
                    listen: a.to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The model called `name`.
    pub fn model(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// `[server]`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Server {
    /// Where to listen (`listen`, default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// How long shutdown waits for in-flight requests (`shutdown_grace`, default `30s`).
    pub shutdown_grace: Duration,
    /// The largest request body accepted (`max_body_bytes`, default 16 MiB).
    pub max_body_bytes: usize,
    /// The longest the upstream may stay silent (`upstream_timeout`, default `600s`):
    /// before its answer begins, and between two reads of a streamed body. A stream
    /// that keeps sending is never cut; an attempt that times out is not retried (the
    /// provider may still be working on it, and charging for it).
    pub upstream_timeout: Duration,
    /// The longest a client may take to send a request's headers (`header_timeout`,
    /// default `10s`); a client that stalls is disconnected.
    pub header_timeout: Duration,
    /// The longest a client may take to send a request's body once its headers are in
    /// (`body_timeout`, default `30s`); a client that stalls gets a 408.
    pub body_timeout: Duration,
    /// The most requests served at once, open streams included (`max_connections`,
    /// default 1024); one more gets an immediate 503 with `Retry-After`.
    pub max_connections: NonZeroU32,
    /// Serve anyone on a non-loopback address when no `[[tenants]]` are configured
    /// (`insecure_allow_unauthenticated`, default `false`): see [`Config::check_exposure`].
    pub insecure_allow_unauthenticated: bool,
    /// The operational listener (`admin_listen`, default none): `/healthz`, `/readyz`,
    /// `/metrics`, the full `/v1/quotas` and `/v1/admin/...`. Off loopback it requires
    /// `[sidecar] admin_key` (see [`Config::check_exposure`]).
    pub admin_listen: Option<SocketAddr>,
}

/// What to do when Redis cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Refuse requests while Redis is down (never exceed a provider limit).
    FailClosed,
    /// Serve without metering (may exceed provider limits).
    FailOpen,
    /// Decide in-process at limit ÷ `expected_replicas` (the default).
    Local,
}

/// `[store]`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Store {
    /// `redis://`, `rediss://`, `redis+cluster://h1:p,h2:p` or
    /// `redis+sentinel://s1:p,s2:p/<master name>` (a secret: it may hold a password).
    pub redis_url: Secret,
    /// `on_error` (default `local`).
    pub on_error: FailurePolicy,
    /// `expected_replicas` (default 1): the divisor of the local policy.
    pub expected_replicas: NonZeroU32,
    /// `replica_index` (0-based, below `expected_replicas`; optional): which replica this
    /// is, so that under `local` the remainders of limits that do not divide evenly are
    /// handed out once each and the fleet's shares add up to exactly the limit. Without
    /// it a replica takes only the rounded-down share (which may be zero).
    pub replica_index: Option<u32>,
    /// `timeout` of one Redis decision (default `100ms`).
    pub timeout: Duration,
    /// `connections`: multiplexed connections (default 2).
    pub connections: NonZeroU32,
    /// `key_prefix` (default `sluice`).
    pub key_prefix: String,
}

/// The wire dialect of an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// OpenAI and OpenAI-compatible (`Authorization: Bearer`).
    Openai,
    /// Alibaba Cloud Model Studio, compatible mode (`Authorization: Bearer`).
    Dashscope,
    /// Azure OpenAI (`api-key` header, `api-version` query).
    Azure,
    /// Anthropic's OpenAI-compatible endpoint (`x-api-key` and `Authorization`).
    Anthropic,
}

impl Dialect {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Openai => "openai",
            Dialect::Dashscope => "dashscope",
            Dialect::Azure => "azure",
            Dialect::Anthropic => "anthropic",
        }
    }
}

/// `[[upstreams]]`: one provider endpoint and its accounts.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Upstream {
    /// `name`.
    pub name: String,
    /// `base_url`, without a trailing slash (e.g. `https://api.openai.com/v1`).
    pub base_url: String,
    /// `dialect` (default `openai`).
    pub dialect: Dialect,
    /// The accounts the provider meters separately, each with the model's limits: from
    /// `keys` (each key its own account, `key-0`, `key-1`, ...) or from `accounts` (keys
    /// grouped by the organisation, project or deployment the provider meters them as).
    pub accounts: Vec<Account>,
    /// Every key of every account, in file order (the keys of [`Upstream::accounts`]
    /// flattened).
    pub keys: Vec<Secret>,
    /// `api_version` (Azure).
    pub api_version: Option<String>,
    /// `passthrough` (default none): extra `/v1/...` paths the gateway forwards as is
    /// on an account of this upstream, beyond the few its dialect defines (e.g.
    /// `["/v1/files", "/v1/batches/*"]`; `*` is exactly one segment). Validated at
    /// load: under `/v1/`, no empty, dot or percent-encoded segment.
    pub passthrough: Vec<String>,
}

/// One provider account: what the provider meters as one budget (an OpenAI
/// organisation or project, an Azure deployment, an Anthropic organisation, a DashScope
/// root account). All its keys draw on the same limits; the gateway decides once per
/// account and sends with its keys in turn.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Account {
    /// `name` (`key-<i>` for an entry of `keys`): the account in metrics, logs,
    /// `x-sluice-account`, the limiter's keys and `/v1/admin/accounts/...`. Never a key.
    pub name: String,
    /// Its API keys, at least one.
    pub keys: Vec<Secret>,
}

/// What a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitUnit {
    /// Requests.
    Requests,
    /// Input + output tokens.
    Tokens,
    /// Input tokens.
    InputTokens,
    /// Output tokens.
    OutputTokens,
}

/// One limit: `amount` of `unit` per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitSpec {
    /// What it counts.
    pub unit: LimitUnit,
    /// How much per window.
    pub amount: NonZeroU64,
    /// The window.
    pub per: Duration,
}

/// How the tokens of a prompt are estimated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tokenizer {
    /// `o200k_base` for OpenAI's gpt-4o/4.1/5 and o-series, `cl100k_base` for gpt-4 and
    /// gpt-3.5, the heuristic for everything else (the default).
    Auto,
    /// tiktoken `o200k_base`.
    O200k,
    /// tiktoken `cl100k_base`.
    Cl100k,
    /// CJK characters one token each, other characters four per token, rounded up.
    Heuristic,
}

/// How queued requests are spaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PacingMode {
    /// At the tightest request rate of the limits up to 60 s (the default).
    Auto,
    /// No spacing beyond the windows.
    Off,
}

/// USD per million tokens: the model's `price`, else its preset
/// ([`presets::price`](crate::presets::price)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Price {
    /// Per million input tokens.
    pub input_per_mtok: f64,
    /// Per million input tokens read from the provider's prompt cache (default: the
    /// input price).
    pub cached_input_per_mtok: f64,
    /// Per million output tokens.
    pub output_per_mtok: f64,
}

impl Price {
    /// What `uncached` and `cached` input tokens and `output` tokens cost, in micro-USD
    /// (rounded up, so that a budget is never under-charged; saturating).
    ///
    /// ```
    /// let p = sluice_config::Price { input_per_mtok: 2.5, cached_input_per_mtok: 1.25, output_per_mtok: 10.0 };
    /// // 1,000 input tokens at $2.50/M, 1,000 cached at $1.25/M, 100 output at $10/M
    /// assert_eq!(p.micro_usd(1_000, 1_000, 100), 2_500 + 1_250 + 1_000);
    /// ```
    pub fn micro_usd(&self, uncached: u64, cached: u64, output: u64) -> u64 {
        // USD per million tokens is micro-USD per token.
        let micro = uncached as f64 * self.input_per_mtok
            + cached as f64 * self.cached_input_per_mtok
            + output as f64 * self.output_per_mtok;
        // `as` saturates (and maps NaN to 0); prices are validated finite and >= 0.
        (micro - 1e-6).ceil().max(0.0) as u64
    }
}

/// `[[models]]`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Model {
    /// `name`: what clients send.
    pub name: String,
    /// `upstream`: the upstream's name.
    pub upstream: String,
    /// Index of the upstream in [`Config::upstreams`].
    pub upstream_index: usize,
    /// `upstream_model`: the name sent upstream (default: `name`).
    pub upstream_model: String,
    /// The limits in force (the operator's, the preset's, or those of the `[[quotas]]`
    /// entry it draws on).
    pub limits: Vec<LimitSpec>,
    /// The pool its limits count in: the name of the `[[quotas]]` entry it names with
    /// `quota`, else its own name. Models with the same `quota` (always of one upstream)
    /// share one budget per account, as Anthropic pools a model family.
    pub quota: String,
    /// The name of the preset the limits come from, if any.
    pub preset: Option<&'static str>,
    /// `fallback`: models to try, in order, when this one cannot serve in time.
    pub fallback: Vec<String>,
    /// `output_estimate`: output tokens reserved when a request sets no `max_tokens` (default 1024).
    pub output_estimate: u64,
    /// `tokenizer`, with `auto` resolved.
    pub tokenizer: Tokenizer,
    /// `price`.
    pub price: Option<Price>,
    /// `pacing`.
    pub pacing: PacingMode,
}

/// `[queue]`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Queue {
    /// `max_wait`: how long a request may wait for a slot (default `30s`).
    pub max_wait: Duration,
    /// `booked_ahead`: per model and replica, how many requests may hold a future slot
    /// at once; more wait in the tenant-weighted local queue (default 16).
    pub booked_ahead: NonZeroU32,
    /// `interactive_reserve`: requests of each request limit's window that `batch`
    /// tenants leave free for interactive ones (at most half of the limit; default 0).
    pub interactive_reserve: u32,
}

/// `[[tenants]]`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Tenant {
    /// `name` (in metrics and logs).
    pub name: String,
    /// The digest of the bearer token the tenant sends: `key` (hashed at load) or
    /// `key_sha256` (its SHA-256 in hex, so that the file never holds the key).
    pub key: KeyDigest,
    /// `weight` under contention (default 1): its share of a quota's queue, fleet-wide,
    /// among the tenants queueing for it.
    pub weight: NonZeroU32,
    /// `priority` (default `interactive`): `batch` takes only queue slots that
    /// interactive tenants leave.
    pub priority: TenantPriority,
    /// `max_wait`, if lower than the queue's.
    pub max_wait: Option<Duration>,
    /// Its own limits on every model together (`rpm`, `tpd`, `limits`, ...), counted
    /// across every replica when a request is admitted; empty for none.
    pub limits: Vec<LimitSpec>,
    /// `[[tenants.models]]`: its limits on one model, on top of `limits`.
    pub model_limits: Vec<TenantModelLimits>,
    /// `budget`: money it may spend.
    pub budget: Budget,
}

/// A tenant's limits on one model (`[[tenants.models]]`).
#[derive(Clone, Debug, PartialEq)]
pub struct TenantModelLimits {
    /// The model (a `[[models]]` name).
    pub model: String,
    /// Its limits on that model.
    pub limits: Vec<LimitSpec>,
}

/// A tenant's `budget`, in USD over trailing windows; each `None` when not set.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Budget {
    /// `per_day`: USD in any trailing 24 hours.
    pub per_day: Option<f64>,
    /// `per_month`: USD in any trailing 30 days.
    pub per_month: Option<f64>,
}

impl Tenant {
    /// Whether anything limits this tenant besides the providers' quotas.
    pub fn is_limited(&self) -> bool {
        !self.limits.is_empty()
            || !self.model_limits.is_empty()
            || self.budget.per_day.is_some()
            || self.budget.per_month.is_some()
    }
}

/// A tenant's `priority` class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantPriority {
    /// Shares queued slots by weight with the other interactive tenants (the default).
    #[default]
    Interactive,
    /// Takes only slots free now, never queueing ahead of anyone: served from what
    /// interactive tenants leave.
    Batch,
}

impl Tenant {
    /// A tenant added at run time (the admin API): `name`, the digest of its key,
    /// `weight`, no deadline of its own.
    pub fn new(name: String, key: KeyDigest, weight: NonZeroU32) -> Self {
        Self {
            name,
            key,
            weight,
            priority: TenantPriority::Interactive,
            max_wait: None,
            limits: Vec::new(),
            model_limits: Vec::new(),
            budget: Budget::default(),
        }
    }
}

/// `[retry]`: retries of upstream 429s and 5xx within the request's deadline.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Retry {
    /// `max_attempts` per model (default 3).
    pub max_attempts: NonZeroU32,
    /// `base` of the full-jitter backoff (default `100ms`).
    pub base: Duration,
    /// `cap` of the full-jitter backoff (default `2s`).
    pub cap: Duration,
}

/// `[sidecar]`: how `sluice-sidecar` listens, consumes observations and recalibrates,
/// and how often gateways sample successful answers for it. Every field has a default.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Sidecar {
    /// `listen` (default `127.0.0.1:8081`): the sidecar's API, forward proxy and metrics.
    pub listen: SocketAddr,
    /// The digest of the bearer token of `POST /v1/admin/...` (sidecar and gateway):
    /// `admin_key` (hashed at load) or `admin_key_sha256`; without either the admin
    /// endpoints are off.
    pub admin_key: Option<KeyDigest>,
    /// The sidecar's operational listener (`admin_listen`, default none): `/healthz`,
    /// `/readyz`, `/metrics`, the full `/v1/quotas` and `/v1/admin/...`. Off loopback it
    /// requires `admin_key` (see [`Config::check_sidecar_exposure`]).
    pub admin_listen: Option<SocketAddr>,
    /// The key that signs the reservations `POST /v1/acquire` hands out (`ticket_key`,
    /// at least 32 characters, a secret: write it as `${VAR}` or `${file:/path}`). Sidecars
    /// that share it accept each other's tickets; without it each sidecar signs with a
    /// random key of its own, and a ticket is valid only at the sidecar that issued it.
    pub ticket_key: Option<Secret>,
    /// Serve `POST /v1/acquire`, `/v1/report` and the forward proxy to anyone on a
    /// non-loopback `listen` when no `[[tenants]]` are configured
    /// (`insecure_allow_unauthenticated`, default `false`): see
    /// [`Config::check_sidecar_exposure`].
    pub insecure_allow_unauthenticated: bool,
    /// `consumer_group` (default `sluice-sidecar`): one group per fleet.
    pub consumer_group: String,
    /// `consumer_name`: this sidecar's unique name in the group (default: host name and pid).
    pub consumer_name: Option<String>,
    /// `claim_after` (default `10s`): how long an observation may stay unacknowledged by
    /// a sidecar before another one claims it.
    pub claim_after: Duration,
    /// `sample_per_second` (default 4): successful answers a gateway publishes per
    /// account × model and second (every error is published).
    pub sample_per_second: u32,
    /// `probe_interval` (default `60s`): how often a disabled account is probed.
    pub probe_interval: Duration,
    /// `quota_state_after` (default `1h`): a Retry-After at least this long disables the
    /// account ("daily quota") until the wait passes or a probe succeeds.
    pub quota_state_after: Duration,
    /// `default_cooldown` (default `1s`): the cooldown of a throttling refusal that names no wait.
    pub default_cooldown: Duration,
    /// `aimd_decrease` (default 0.9): accepted and validated, unused since the learner
    /// (rule 5 sets the observed fill instead of a multiplicative decrease).
    pub aimd_decrease: f64,
    /// `aimd_increase` (default 0.01): the learner's first probe step, as a fraction of
    /// the configured limit (at least 1; it doubles after each accepted probe).
    pub aimd_increase: f64,
    /// `aimd_floor` (default 0.1): a learned limit never goes below this fraction of the configured one.
    pub aimd_floor: f64,
    /// `headroom_tolerance` (default 0.02): a refusal without headers lowers the limit
    /// unless our window already holds more than `1 + tolerance` of the effective limit
    /// (then our own estimates caused it).
    pub headroom_tolerance: f64,
    /// `unseen_tolerance` (default 0.02): usage we did not see is recorded only beyond
    /// this fraction of the limit (and at least 1).
    pub unseen_tolerance: f64,
    /// `pacing_increase` (default 1.5): the factor a burst refusal slows pacing by.
    pub pacing_increase: f64,
}

impl Default for Sidecar {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            admin_key: None,
            admin_listen: None,
            ticket_key: None,
            insecure_allow_unauthenticated: false,
            consumer_group: "sluice-sidecar".to_owned(),
            consumer_name: None,
            claim_after: Duration::from_secs(10),
            sample_per_second: 4,
            probe_interval: Duration::from_secs(60),
            quota_state_after: Duration::from_secs(3600),
            default_cooldown: Duration::from_secs(1),
            aimd_decrease: 0.9,
            aimd_increase: 0.01,
            aimd_floor: 0.1,
            headroom_tolerance: 0.02,
            unseen_tolerance: 0.02,
            pacing_increase: 1.5,
        }
    }
}
