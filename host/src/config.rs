//! Gateway configuration: a TOML file, then [`Overrides`] — CLI flags, each also readable
//! from a `FLUX_*` environment variable (the flag wins).
//!
//! Unknown keys are rejected so that a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::pattern::NamePattern;

/// Everything the gateway reads at start-up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP / Socket.IO listener binds.
    pub listen: String,
    /// Directory whose `*.wasm` files are loaded as plugins.
    pub plugin_dir: PathBuf,
    /// Window within which a repeated publish with the same dedupe key is dropped.
    pub dedupe_window_ms: u64,
    /// Log format: `human` or `json`.
    pub log_format: LogFormat,
    /// Least time between two log lines of one kind about one plugin (refusals, faults, dead
    /// letters, the plugin's own lines); the rest are counted and summarised. 0: every line.
    pub log_interval_ms: u64,
    pub limits: PluginLimits,
    pub cache: CacheConfig,
    pub socket: SocketConfig,
    /// Run the simulated upstream services on the embedded bus.
    pub demo: DemoConfig,
    /// Records no plugin could process go here, with the reason in headers.
    pub dead_letter_topic: String,
    /// The Kafka bus; without `kafka.brokers` the gateway runs on the embedded bus.
    pub kafka: KafkaConfig,
    pub reload: ReloadConfig,
    /// When a plugin version stops being called, and when it is rolled back.
    pub circuit: CircuitConfig,
    /// Per-plugin overrides of `[limits]`, by plugin name: `[plugins.weather]`.
    pub plugins: BTreeMap<String, PluginPolicy>,
    /// Who may connect: handshake authentication.
    pub auth: AuthConfig,
    /// The private listener for `/metrics` and `/admin/*`.
    pub admin: AdminConfig,
    /// Plugins shipped to every node over Kafka (with `kafka.brokers`).
    pub fleet: FleetConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:3000".into(),
            plugin_dir: PathBuf::from("target/plugins"),
            dedupe_window_ms: 2_000,
            log_format: LogFormat::Human,
            log_interval_ms: 1_000,
            limits: PluginLimits::default(),
            cache: CacheConfig::default(),
            socket: SocketConfig::default(),
            demo: DemoConfig::default(),
            dead_letter_topic: "flux.gateway.dead-letter".into(),
            kafka: KafkaConfig::default(),
            reload: ReloadConfig::default(),
            circuit: CircuitConfig::default(),
            plugins: BTreeMap::new(),
            auth: AuthConfig::default(),
            admin: AdminConfig::default(),
            fleet: FleetConfig::default(),
        }
    }
}

/// A secret value: written inline, or read from an environment variable (`{ env = "NAME" }`)
/// or a file (`{ file = "/run/secrets/x" }`, trailing newline dropped) when the configuration
/// is loaded. Its `Debug` output never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, deny_unknown_fields)]
        enum Source {
            Inline(String),
            Env { env: String },
            File { file: PathBuf },
        }
        match Source::deserialize(deserializer)? {
            Source::Inline(value) => Ok(Self(value)),
            Source::Env { env } => std::env::var(&env).map(Self).map_err(|_| {
                serde::de::Error::custom(format!("environment variable {env} is not set"))
            }),
            Source::File { file } => std::fs::read_to_string(&file)
                .map(|text| Self(text.trim_end_matches(['\r', '\n']).to_owned()))
                .map_err(|e| {
                    serde::de::Error::custom(format!("cannot read {}: {e}", file.display()))
                }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone may connect; the client's `userId` is taken as given (development, demo).
    #[default]
    None,
    /// A JWT is required on the handshake; its subject is the user.
    Jwt,
}

/// Handshake authentication. See [`crate::auth`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Shared secret for HS256 tokens.
    pub hs256_secret: Option<Secret>,
    /// PEM public keys (RSA for RS256, P-256 for ES256).
    pub public_key_files: Vec<PathBuf>,
    /// A JWKS endpoint: keys by `kid`, refetched when a token names an unknown one.
    pub jwks_url: Option<String>,
    /// Longest wait for the JWKS endpoint.
    pub jwks_timeout_ms: u64,
    /// Least time between two JWKS fetches, so unknown `kid`s cannot make the gateway hammer
    /// the endpoint.
    pub jwks_min_refetch_ms: u64,
    /// When set, `aud` must contain it.
    pub audience: Option<String>,
    /// When set, `iss` must equal it.
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// How long after `exp` a connected socket may still send `refreshToken`.
    pub refresh_grace_ms: u64,
    /// The claim holding scopes: a space-separated string or an array of strings.
    pub scope_claim: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            hs256_secret: None,
            public_key_files: Vec::new(),
            jwks_url: None,
            jwks_timeout_ms: 2_000,
            jwks_min_refetch_ms: 5_000,
            audience: None,
            issuer: None,
            leeway_secs: 5,
            refresh_grace_ms: 10_000,
            scope_claim: "scope".into(),
        }
    }
}

/// Plugins published to a Kafka topic and run by every node: signed, staged, reported.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// The compacted topic plugins are published to; empty: no fleet rollout on this node.
    pub topic: String,
    /// Where each node reports what it runs (compacted, keyed by node id).
    pub status_topic: String,
    /// Publishers' ed25519 public keys (base64 of the 32 bytes, as `plugin keygen` prints
    /// them). A release signed by any other key, or tampered with, is never loaded.
    pub trusted_keys: Vec<String>,
    /// Development only: also load releases that carry no signature.
    pub allow_unsigned: bool,
    /// How often a node reports its status when nothing changes.
    pub status_every_ms: u64,
    /// Largest component a node assembles from the topic (Python components are ~18 MB).
    pub max_component_bytes: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            topic: "flux.plugins".into(),
            status_topic: "flux.plugins.status".into(),
            trusted_keys: Vec::new(),
            allow_unsigned: false,
            status_every_ms: 5_000,
            max_component_bytes: 64 << 20,
        }
    }
}

/// The private listener: `/metrics`, `/admin/*` and the probes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener; empty: no admin listener.
    pub listen: String,
    /// When set, `/metrics` and `/admin/*` require `Authorization: Bearer TOKEN`.
    pub token: Option<Secret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9300".into(),
            token: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// Limits applied to every guest call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Wall-clock budget of one guest call before it is interrupted.
    pub call_timeout_ms: u64,
    /// Largest linear memory a plugin instance may grow to.
    pub memory_mb: u64,
    /// Most records passed to one `on-records` call.
    pub max_batch: usize,
    /// Larger records are dead-lettered without reaching a plugin.
    pub max_record_bytes: usize,
    /// Most actions one guest call may return; the rest are refused.
    pub max_actions: usize,
    /// Largest payload of one action.
    pub max_payload_bytes: usize,
    /// Publishes per second (bursts up to one second's worth); 0: no limit.
    pub publishes_per_sec: u32,
    /// Guest time (milliseconds of one core) a plugin may use per second, bursts up to one
    /// second's worth; over it, its records wait and its requests are refused. 0: no limit.
    pub cpu_ms_per_sec: u64,
    /// How long a plugin's worker, and a caller waiting for its answer, stay awake for the
    /// next job or answer before they sleep (waking a sleeping thread costs tens of
    /// microseconds on a VM; a burst of calls pays it once instead of twice per call).
    /// 0: sleep at once.
    pub worker_spin_us: u64,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            call_timeout_ms: 250,
            memory_mb: 64,
            max_batch: 64,
            max_record_bytes: 1 << 20,
            max_actions: 64,
            max_payload_bytes: 256 * 1024,
            publishes_per_sec: 100,
            cpu_ms_per_sec: 500,
            worker_spin_us: 50,
        }
    }
}

impl PluginLimits {
    pub fn worker_spin(&self) -> Duration {
        Duration::from_micros(self.worker_spin_us)
    }
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }
    pub fn cpu_per_sec(&self) -> Duration {
        Duration::from_millis(self.cpu_ms_per_sec)
    }
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Most bytes of cached snapshots across all plugins (keys, payloads, bookkeeping); the
    /// least recently used are evicted past it.
    pub max_bytes: u64,
    /// Most bytes of remembered dedupe keys (single flight); the oldest are forgotten past it.
    pub dedupe_max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            dedupe_max_bytes: 32 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketConfig {
    pub ping_interval_ms: u64,
    pub ping_timeout_ms: u64,
    /// Packets buffered per socket before emits to it fail (a slow client).
    pub max_buffer: usize,
    /// Largest incoming message on either transport: a long-polling body, a websocket
    /// message or frame, and the binary attachments of one event together. A client that
    /// sends more is disconnected.
    pub max_payload_bytes: u64,
    /// Events one socket may send per second (a token bucket); 0: no limit.
    pub events_per_sec: u32,
    /// Events one socket may send at once before its rate applies.
    pub event_burst: u32,
    /// Refused events within 10 seconds after which the socket is disconnected.
    pub refused_events_before_disconnect: u32,
    /// Most rooms one socket may be in; a join past it is refused.
    pub max_rooms: usize,
    /// Upstream commands (publishes) one socket's requests may cause per second; 0: no limit.
    pub commands_per_sec: u32,
    /// Commands one socket may cause at once before its rate applies.
    pub command_burst: u32,
    /// Open sockets per client address; 0: no limit (NAT and proxies put many users behind
    /// one address).
    pub max_connections_per_address: usize,
    /// Behind a proxy: the header whose last entry is the client's address (e.g.
    /// `x-forwarded-for`). Trust it only when the proxy sets it.
    pub client_address_header: Option<String>,
    /// Most binary attachments one event may carry (the contract uses none).
    pub max_binary_attachments: usize,
    /// How long the attachments of one event may take to arrive, in milliseconds.
    pub attachment_timeout_ms: u64,
    /// Websocket read buffer per connection, allocated up front (socketioxide's default is
    /// 4 KB). Client messages are small; a larger one still arrives whole, in more reads.
    pub ws_read_buffer_bytes: usize,
    /// Browser origins allowed to connect (exact, e.g. `https://app.example.com`, or `*`).
    /// Unset: loopback origins and the gateway's own origin. See [`crate::origins`].
    pub allowed_origins: Option<Vec<String>>,
    /// Answer CORS requests with `Access-Control-Allow-Credentials: true` (cookies).
    pub cors_credentials: bool,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            max_buffer: 256,
            max_payload_bytes: 64 * 1024,
            events_per_sec: 20,
            event_burst: 40,
            refused_events_before_disconnect: 50,
            max_rooms: 16,
            commands_per_sec: 1,
            command_burst: 5,
            max_connections_per_address: 0,
            client_address_header: None,
            max_binary_attachments: 4,
            attachment_timeout_ms: 5_000,
            ws_read_buffer_bytes: 512,
            allowed_origins: None,
            cors_credentials: false,
        }
    }
}

/// The simulated upstream services; see [`crate::sim`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    pub enabled: bool,
    pub ticker_every_ms: u64,
    pub snapshot_every_ms: u64,
    /// Delay before an upstream service answers a command, as a real one would.
    pub answer_after_ms: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            ticker_every_ms: 250,
            snapshot_every_ms: 5_000,
            answer_after_ms: 50,
        }
    }
}

/// One plugin's table, `[plugins.NAME]`: quotas overriding the `[limits]` defaults, and what
/// it may declare.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginPolicy {
    /// Rooms the plugin may declare (`crypto.*` covers `crypto.global`); absent: any.
    pub allowed_rooms: Option<Vec<String>>,
    /// Topics the plugin may consume or publish (`weather.*` covers every weather topic);
    /// absent: any.
    pub allowed_topics: Option<Vec<String>>,
    pub call_timeout_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub max_actions: Option<usize>,
    pub max_payload_bytes: Option<usize>,
    pub publishes_per_sec: Option<u32>,
    pub cpu_ms_per_sec: Option<u64>,
    /// A scope the socket's principal must hold for the host to route any of its events to
    /// this plugin (and so join it to the plugin's rooms).
    pub required_scope: Option<String>,
}

/// The `[limits]` defaults and the `[plugins.NAME]` tables: what a plugin named `name` may use
/// and declare.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    pub defaults: PluginLimits,
    pub plugins: BTreeMap<String, PluginPolicy>,
    pub circuit: CircuitConfig,
}

impl Policies {
    pub fn for_plugin(&self, name: &str) -> PluginLimits {
        let mut limits = self.defaults.clone();
        if let Some(quota) = self.plugins.get(name) {
            limits.call_timeout_ms = quota.call_timeout_ms.unwrap_or(limits.call_timeout_ms);
            limits.memory_mb = quota.memory_mb.unwrap_or(limits.memory_mb);
            limits.max_actions = quota.max_actions.unwrap_or(limits.max_actions);
            limits.max_payload_bytes = quota.max_payload_bytes.unwrap_or(limits.max_payload_bytes);
            limits.publishes_per_sec = quota.publishes_per_sec.unwrap_or(limits.publishes_per_sec);
            limits.cpu_ms_per_sec = quota.cpu_ms_per_sec.unwrap_or(limits.cpu_ms_per_sec);
        }
        limits
    }

    /// Checks a plugin's declared rooms and topics against its allowlists; the error names
    /// what is not allowed.
    pub fn permits(&self, name: &str, rooms: &[String], topics: &[&String]) -> Result<(), String> {
        let Some(policy) = self.plugins.get(name) else {
            return Ok(());
        };
        if let Some(allowed) = &policy.allowed_rooms
            && let Some(room) = rooms.iter().find(|room| !covered(allowed, room))
        {
            return Err(format!(
                "room {room:?} is not among its allowed_rooms {allowed:?}"
            ));
        }
        if let Some(allowed) = &policy.allowed_topics
            && let Some(topic) = topics.iter().find(|topic| !covered(allowed, topic))
        {
            return Err(format!(
                "topic {topic:?} is not among its allowed_topics {allowed:?}"
            ));
        }
        Ok(())
    }
}

/// Whether a declared name or pattern lies within one of the `allowed` names or patterns.
fn covered(allowed: &[String], declared: &str) -> bool {
    allowed
        .iter()
        .any(|pattern| NamePattern::parse(pattern).covers(declared))
}

/// When a version's circuit opens, and for how long.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitConfig {
    /// Failures (traps, timeouts, memory) within the window that open the circuit...
    pub failures: u32,
    /// ...provided they are at least this share of the window's calls.
    pub failure_ratio: f64,
    pub window_ms: u64,
    /// How long the circuit first stays open; doubled after each failed probe.
    pub open_ms: u64,
    pub max_open_ms: u64,
    /// A version whose circuit opens within this time of going live is rolled back to the
    /// version it replaced (when there is one).
    pub rollback_within_ms: u64,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            failure_ratio: 0.5,
            window_ms: 30_000,
            open_ms: 1_000,
            max_open_ms: 60_000,
            rollback_within_ms: 600_000,
        }
    }
}

impl CircuitConfig {
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms.max(1))
    }
    pub fn open_for(&self) -> Duration {
        Duration::from_millis(self.open_ms.max(1))
    }
    pub fn max_open_for(&self) -> Duration {
        Duration::from_millis(self.max_open_ms.max(self.open_ms).max(1))
    }
    pub fn rollback_within(&self) -> Duration {
        Duration::from_millis(self.rollback_within_ms)
    }
}

/// Hot reload of the plugin directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Watch the plugin directory and apply changes without a restart.
    pub watch: bool,
    /// Quiet time after the last change to a file before it is loaded.
    pub debounce_ms: u64,
    /// Compiled plugins, by content and engine. Default: `flux-gateway/precompiled` in the
    /// user's cache directory (`$XDG_CACHE_HOME`, else `~/.cache`), never the plugin directory.
    pub precompiled_dir: Option<PathBuf>,
    /// The key that authenticates compiled plugins (HMAC-SHA256). Default: a random key kept
    /// in the precompiled directory, readable by the gateway's user only.
    pub precompiled_key: Option<Secret>,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: true,
            debounce_ms: 50,
            precompiled_dir: None,
            precompiled_key: None,
        }
    }
}

/// The Kafka bus. See [`crate::bus::kafka`] for fan-out, delivery and start position.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers (`host:port,...`). Empty: the embedded bus.
    pub brokers: String,
    /// This node's identity in consumer group names; unique per node. Default:
    /// `{hostname}-{port}`.
    pub node_id: Option<String>,
    pub group_prefix: String,
    /// Create missing topics with this many partitions (0: leave topics to the operator).
    pub create_topic_partitions: i32,
    /// Latest records per partition replayed into the cache at start (warm start).
    pub warm_start_records: u32,
    /// Records queued for the broker before publishing fails fast (`queue.buffering.max.messages`).
    pub produce_queue_max: u32,
    /// Bytes (in KiB) queued for the broker before publishing fails fast
    /// (`queue.buffering.max.kbytes`).
    pub produce_queue_max_kbytes: u32,
    /// Bytes (in KiB) prefetched per partition ahead of the plugins
    /// (`queued.max.messages.kbytes`).
    pub consume_queue_max_kbytes: u32,
    /// Any librdkafka property, applied last: `security.protocol`, `sasl.*`, `ssl.*`,
    /// `client.id`, ... Values may come from the environment or a file like any [`Secret`]
    /// (`"sasl.password" = { env = "KAFKA_PASSWORD" }`), and are never shown by `Debug`.
    pub properties: BTreeMap<String, Secret>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            node_id: None,
            group_prefix: "flux-gateway".into(),
            create_topic_partitions: 3,
            warm_start_records: 50,
            produce_queue_max: 100_000,
            produce_queue_max_kbytes: 64 * 1024,
            consume_queue_max_kbytes: 8 * 1024,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// What the command line (or the `FLUX_*` environment) sets over the configuration file.
#[derive(Debug, Default, clap::Args)]
pub struct Overrides {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "FLUX_LISTEN", global = true)]
    pub listen: Option<String>,
    /// Address of the private admin listener (`/metrics`, `/admin/*`); empty for none.
    #[arg(long, env = "FLUX_ADMIN_LISTEN", global = true)]
    pub admin_listen: Option<String>,
    /// Bearer token the admin listener requires.
    #[arg(long, env = "FLUX_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub admin_token: Option<String>,
    /// Directory of plugin `.wasm` files.
    #[arg(long, env = "FLUX_PLUGIN_DIR", global = true)]
    pub plugin_dir: Option<PathBuf>,
    /// Run the simulated upstream services on the embedded bus.
    #[arg(long, env = "FLUX_DEMO", global = true)]
    pub demo: bool,
    #[arg(long, env = "FLUX_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// Window within which a repeated command is dropped, in milliseconds.
    #[arg(long, env = "FLUX_DEDUPE_WINDOW_MS", global = true)]
    pub dedupe_window_ms: Option<u64>,
    /// Every plugin's call deadline, in milliseconds (`[limits] call_timeout_ms`).
    #[arg(long, env = "FLUX_CALL_TIMEOUT_MS", global = true)]
    pub call_timeout_ms: Option<u64>,
    /// Every plugin's memory limit, in MiB (`[limits] memory_mb`).
    #[arg(long, env = "FLUX_MEMORY_MB", global = true)]
    pub memory_mb: Option<u64>,
    /// Kafka bootstrap servers: use the Kafka bus instead of the embedded one.
    #[arg(long, env = "FLUX_KAFKA_BROKERS", global = true)]
    pub brokers: Option<String>,
    /// This node's id (unique per gateway node; names its consumer groups).
    #[arg(long, env = "FLUX_NODE_ID", global = true)]
    pub node_id: Option<String>,
    #[arg(long, env = "FLUX_AUTH_MODE", global = true)]
    pub auth_mode: Option<AuthMode>,
    /// The HS256 secret handshake tokens are signed with (`[auth] hs256_secret`).
    #[arg(
        long,
        env = "FLUX_AUTH_HS256_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub auth_hs256_secret: Option<String>,
}

impl Config {
    /// Reads `path` (if given), then applies `overrides`.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply(overrides);
        Ok(config)
    }

    pub fn apply(&mut self, overrides: Overrides) {
        let Overrides {
            listen,
            admin_listen,
            admin_token,
            plugin_dir,
            demo,
            log_format,
            dedupe_window_ms,
            call_timeout_ms,
            memory_mb,
            brokers,
            node_id,
            auth_mode,
            auth_hs256_secret,
        } = overrides;
        set(&mut self.listen, listen);
        set(&mut self.admin.listen, admin_listen);
        set(&mut self.plugin_dir, plugin_dir);
        self.demo.enabled |= demo;
        set(&mut self.log_format, log_format);
        set(&mut self.dedupe_window_ms, dedupe_window_ms);
        set(&mut self.limits.call_timeout_ms, call_timeout_ms);
        set(&mut self.limits.memory_mb, memory_mb);
        set(&mut self.kafka.brokers, brokers);
        set(&mut self.auth.mode, auth_mode);
        if node_id.is_some() {
            self.kafka.node_id = node_id;
        }
        if let Some(token) = admin_token {
            self.admin.token = Some(Secret::new(token));
        }
        if let Some(secret) = auth_hs256_secret {
            self.auth.hs256_secret = Some(Secret::new(secret));
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn policies(&self) -> Policies {
        Policies {
            circuit: self.circuit.clone(),
            defaults: self.limits.clone(),
            plugins: self.plugins.clone(),
        }
    }

    pub fn precompiled_dir(&self) -> PathBuf {
        self.reload.precompiled_dir.clone().unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
                .unwrap_or_else(std::env::temp_dir)
                .join("flux-gateway/precompiled")
        })
    }

    pub fn dedupe_window(&self) -> Duration {
        Duration::from_millis(self.dedupe_window_ms)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = Config::from_toml("listen = \"0.0.0.0:1\"\ndedupe_windw_ms = 5\n").unwrap_err();
        assert!(err.contains("dedupe_windw_ms"), "{err}");
        let err = Config::from_toml("[limits]\nmemory = 5\n").unwrap_err();
        assert!(err.contains("memory"), "{err}");
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        overrides: Overrides,
    }

    fn overrides(args: &[&str]) -> Result<Overrides, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("flux-gateway").chain(args.iter().copied()))
            .map(|cli| cli.overrides)
    }

    #[test]
    fn file_values_then_overrides() {
        let mut config =
            Config::from_toml("dedupe_window_ms = 10\n[limits]\nmemory_mb = 8\n").unwrap();
        assert_eq!(config.dedupe_window_ms, 10);
        assert_eq!(config.limits.memory_mb, 8);
        assert_eq!(config.limits.call_timeout_ms, 250, "defaults fill the rest");
        config.apply(
            overrides(&[
                "--dedupe-window-ms",
                "99",
                "--demo",
                "--auth-mode",
                "jwt",
                "--log-format",
                "json",
            ])
            .unwrap(),
        );
        assert_eq!(config.dedupe_window_ms, 99);
        assert!(config.demo.enabled);
        assert_eq!(config.auth.mode, AuthMode::Jwt);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.limits.memory_mb, 8, "what is not overridden stays");
    }

    #[test]
    fn per_plugin_quotas_override_the_defaults() {
        let config = Config::from_toml(
            "[limits]\nmax_actions = 10\n[plugins.weather]\nmax_actions = 3\nmemory_mb = 8\n",
        )
        .unwrap();
        let quotas = config.policies();
        assert_eq!(quotas.for_plugin("weather").max_actions, 3);
        assert_eq!(quotas.for_plugin("weather").memory_mb, 8);
        assert_eq!(quotas.for_plugin("weather").call_timeout_ms, 250);
        assert_eq!(quotas.for_plugin("crypto").max_actions, 10);
        let err = Config::from_toml("[plugins.weather]\nmax_action = 3\n").unwrap_err();
        assert!(err.contains("max_action"), "{err}");
    }

    #[test]
    fn declared_rooms_and_topics_must_be_allowed() {
        let config = Config::from_toml(
            "[plugins.weather]\nallowed_rooms = [\"weather.*\"]\nallowed_topics = [\"weather.*\"]\n",
        )
        .unwrap();
        let policies = config.policies();
        let topic = "weather.service.command.fetch".to_string();
        assert!(
            policies
                .permits("weather", &["weather.*".into()], &[&topic])
                .is_ok()
        );
        let err = policies
            .permits("weather", &["crypto.global".into()], &[&topic])
            .unwrap_err();
        assert!(err.contains("crypto.global"), "{err}");
        let crypto = "crypto.service.command.refresh".to_string();
        let err = policies.permits("weather", &[], &[&crypto]).unwrap_err();
        assert!(err.contains("allowed_topics"), "{err}");
        assert!(
            policies
                .permits("news", &["anything".into()], &[&crypto])
                .is_ok(),
            "no table: any"
        );
    }

    #[test]
    fn kafka_properties_pass_through() {
        let config = Config::from_toml(
            "[kafka]\nbrokers = \"b:9092\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"PLAIN\"\n",
        )
        .unwrap();
        assert!(config.kafka.enabled());
        assert_eq!(
            config.kafka.properties["security.protocol"].expose(),
            "SASL_SSL"
        );
        assert!(!Config::default().kafka.enabled(), "embedded by default");
    }

    #[test]
    fn bad_override_values_name_the_flag() {
        let err = overrides(&["--memory-mb", "lots"]).unwrap_err();
        assert!(err.to_string().contains("--memory-mb"), "{err}");
        let err = overrides(&["--auth-mode", "maybe"]).unwrap_err();
        assert!(err.to_string().contains("none, jwt"), "{err}");
    }
}
