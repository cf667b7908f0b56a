//! Configuration: embedded defaults → config file → environment, validated once at start.
//!
//! The defaults are the repository's own `config.toml`, compiled in, so the binary runs
//! with no file at all and the documented defaults can never drift from the real ones.
//! Layering is `figment`'s ([`load`]); every key may be overridden from the environment as
//! `SUDEVWA_<SECTION>_<KEY>`, and the variable names SUDEVWA (Go) users already set are
//! honoured as aliases ([`ALIASES`]). Types are checked by serde (unknown keys refused), value
//! rules by `garde` attributes on the structs below, and the few rules that span keys by
//! [`Config::finish`].
//!
//! Invariant: a [`Config`] value is always valid. Every failure is a [`ConfigError`] whose
//! `Display` is one line naming the key (and the variable it came from), so `main` can
//! print it and exit non-zero; nothing here panics or falls back to a default silently.

mod load;
#[cfg(test)]
mod tests;
mod values;

pub use load::{Sources, ALIASES, DEFAULT_CONFIG_TOML};
pub use values::{parse_duration, Cidr};

use garde::Validate;
use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use values::{within, *};

/// A configuration problem, always about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key (`server.port`) or the file path for file-level problems.
    pub key: String,
    /// Environment variable the bad value came from, if any.
    pub source_var: Option<String>,
    /// What is wrong, in words an operator can act on.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source_var {
            Some(var) => write!(f, "{} ({}): {}", self.key, var, self.problem),
            None => write!(f, "{}: {}", self.key, self.problem),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The whole, validated configuration.
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[garde(dive)]
    pub server: ServerConfig,
    #[garde(dive)]
    pub database: DatabaseConfig,
    #[garde(dive)]
    pub auth: AuthConfig,
    #[garde(skip)]
    pub features: FeaturesConfig,
    #[garde(dive)]
    pub whatsapp: WhatsappConfig,
    #[garde(dive)]
    pub limits: LimitsConfig,
    #[garde(dive)]
    pub websocket: WebsocketConfig,
    #[garde(dive)]
    pub webhook: WebhookConfig,
    #[garde(dive)]
    pub messages: MessagesConfig,
    #[garde(skip)]
    pub log: LogConfig,
    #[garde(skip)]
    pub metrics: MetricsConfig,
    #[garde(skip)]
    pub sandbox: SandboxConfig,
    #[garde(skip)]
    pub cluster: ClusterConfig,
}

/// `[messages]`: the durable message path.
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct MessagesConfig {
    /// Acknowledge incoming messages to WhatsApp only after they are committed.
    #[garde(skip)]
    pub ack_after_commit: bool,
    /// Local directory for pending-inbound rows while the database refuses writes
    /// (blank in the file: `spool/` beside the SQLite file, see [`Config::finish`]).
    #[serde(deserialize_with = "path")]
    #[garde(skip)]
    pub spool_dir: PathBuf,
    /// Message log / event log retention in days; 0 keeps everything.
    #[garde(range(max = 36_500))]
    pub retention_days: u32,
    /// At most this many messages per instance in the log; 0: no cap.
    #[garde(range(max = i64::MAX as u64))]
    pub retention_max_rows: u64,
    #[serde(rename = "prune_interval_secs", deserialize_with = "secs")]
    #[garde(custom(within(1, 86_400)))]
    pub prune_interval: Duration,
    /// How long an `Idempotency-Key` is remembered.
    #[serde(rename = "idempotency_window_secs", deserialize_with = "secs")]
    #[garde(custom(within(1, 30 * 86_400)))]
    pub idempotency_window: Duration,
    /// Save incoming media to this directory (empty: off).
    #[serde(deserialize_with = "path")]
    #[garde(skip)]
    pub media_dir: PathBuf,
    /// Largest incoming file saved there.
    #[garde(range(min = 1))]
    pub media_dir_max_file_bytes: u64,
    /// Nothing more is saved once the directory holds this much.
    #[garde(range(min = 1))]
    pub media_dir_max_total_bytes: u64,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(deserialize_with = "ip")]
    #[garde(skip)]
    pub bind: IpAddr,
    #[serde(deserialize_with = "port")]
    #[garde(skip)]
    pub port: u16,
    #[garde(skip)]
    pub cors_origins: Vec<String>,
    #[serde(rename = "shutdown_grace_secs", deserialize_with = "secs")]
    #[garde(custom(within(0, 3600)))]
    pub shutdown_grace: Duration,
    /// A request's header must arrive within this; also the longest a kept-alive
    /// connection may sit idle between requests.
    #[serde(rename = "header_read_timeout_secs", deserialize_with = "secs")]
    #[garde(custom(within(1, 3600)))]
    pub header_read_timeout: Duration,
    /// Open connections at once (over all clients) / from one client address.
    #[garde(range(min = 1, max = 1_000_000))]
    pub max_connections: usize,
    #[garde(range(min = 1, max = 1_000_000))]
    pub max_connections_per_ip: usize,
    /// Peers whose `X-Forwarded-For` names the client (reverse proxies). Empty: the
    /// peer address is the client.
    #[garde(skip)]
    pub trusted_proxies: Vec<Cidr>,
}

impl ServerConfig {
    /// The address to listen on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }
}

/// Which database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DbKind {
    #[default]
    Sqlite,
    Postgres,
}

/// `[database]`
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// URL as given (normalised for SQLite so the file is created on first start).
    #[serde(deserialize_with = "trimmed")]
    #[garde(skip)]
    pub url: String,
    /// Derived from the URL by [`Config::finish`].
    #[serde(skip)]
    #[garde(skip)]
    pub kind: DbKind,
    /// For SQLite: the database file, whose directory is created at start.
    #[serde(skip)]
    #[garde(skip)]
    pub sqlite_path: Option<PathBuf>,
    #[garde(range(min = 1, max = 10_000))]
    pub max_connections: u32,
    #[serde(rename = "acquire_timeout_secs", deserialize_with = "secs")]
    #[garde(custom(within(1, 600)))]
    pub acquire_timeout: Duration,
    /// A cluster node's id, set on every PostgreSQL connection (`sudevwa.node`) so the
    /// write fence knows who writes. Copied from `cluster.node_id` by [`Config::finish`].
    #[serde(skip)]
    #[garde(skip)]
    pub fence_node: Option<String>,
}

/// `[auth]`. Secrets are never printed by `Debug`, nor echoed in errors.
#[derive(Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(deserialize_with = "blank_none")]
    #[garde(length(bytes, min = 32))]
    pub jwt_secret: Option<String>,
    #[serde(deserialize_with = "blank_none")]
    #[garde(skip)]
    pub login_username: Option<String>,
    #[serde(deserialize_with = "blank_none")]
    #[garde(length(bytes, min = 8))]
    pub login_password: Option<String>,
    #[serde(rename = "jwt_ttl_secs", deserialize_with = "secs")]
    #[garde(custom(within(60, 30 * 86400)))]
    pub jwt_ttl: Duration,
    #[garde(inner(length(bytes, min = 32)))]
    pub admin_api_keys: Vec<String>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<set>"))
            .field("login_username", &self.login_username)
            .field(
                "login_password",
                &self.login_password.as_ref().map(|_| "<set>"),
            )
            .field("jwt_ttl", &self.jwt_ttl)
            .field("admin_api_keys", &self.admin_api_keys.len())
            .finish()
    }
}

/// `[features]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesConfig {
    pub enable_webhook: bool,
    pub enable_websocket: bool,
}

/// `[whatsapp]`
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct WhatsappConfig {
    #[serde(deserialize_with = "trimmed")]
    #[garde(length(chars, min = 1, max = 64))]
    pub device_name: String,
    #[serde(deserialize_with = "trimmed")]
    #[garde(custom(country_code))]
    pub default_country_code: String,
    #[serde(rename = "qr_timeout_secs", deserialize_with = "secs")]
    #[garde(custom(within(10, 3600)))]
    pub qr_timeout: Duration,
    #[serde(rename = "presence_interval_secs", deserialize_with = "secs")]
    #[garde(custom(within(10, 86400)))]
    pub presence_interval: Duration,
    /// Number-check answers reused by sends: registered / not registered.
    #[serde(rename = "number_cache_ttl_secs", deserialize_with = "secs")]
    #[garde(custom(within(0, 30 * 86400)))]
    pub number_cache_ttl: Duration,
    #[serde(rename = "number_cache_negative_ttl_secs", deserialize_with = "secs")]
    #[garde(custom(within(0, 30 * 86400)))]
    pub number_cache_negative_ttl: Duration,
    /// Network operations in flight per instance.
    #[garde(range(min = 1, max = 100_000))]
    pub max_ops_per_instance: usize,
    /// Connects running at once / started per second (admission control).
    #[garde(range(min = 1, max = 10_000))]
    pub connect_concurrency: usize,
    #[garde(range(min = 1, max = 10_000))]
    pub connects_per_second: u32,
    /// `None`: the real WhatsApp service.
    #[serde(deserialize_with = "blank_none")]
    #[garde(custom(values::socket_url))]
    pub socket_url: Option<String>,
    /// Fixed WhatsApp Web client version `(major, minor, patch)`; `None`: looked up.
    #[serde(deserialize_with = "client_version")]
    #[garde(skip)]
    pub client_version: Option<(u32, u32, u32)>,
}

/// `[websocket]`: upkeep of `/ws` and `/api/listen/:id`.
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct WebsocketConfig {
    #[serde(rename = "ping_interval_secs", deserialize_with = "secs")]
    #[garde(custom(within(1, 86400)))]
    pub ping_interval: Duration,
    #[serde(rename = "pong_timeout_secs", deserialize_with = "secs")]
    #[garde(custom(within(1, 86400)))]
    pub pong_timeout: Duration,
    /// Events buffered per listener before it counts as slow.
    #[garde(range(min = 1, max = 65536))]
    pub buffer: usize,
    #[serde(rename = "send_timeout_secs", deserialize_with = "secs")]
    #[garde(custom(within(1, 3600)))]
    pub send_timeout: Duration,
    /// Largest message a client may send on a socket.
    #[garde(range(min = 1024, max = 64 * 1024 * 1024))]
    pub max_message_bytes: usize,
    /// Open sockets per credential (token, key, login) and per client address.
    #[garde(range(min = 1, max = 1_000_000))]
    pub max_sockets_per_principal: usize,
    #[garde(range(min = 1, max = 1_000_000))]
    pub max_sockets_per_ip: usize,
}

/// The largest media file a cap may allow (2 GiB).
const MAX_MEDIA: u64 = 2 * 1024 * 1024 * 1024;

/// `[limits]`
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per second per client IP over every route; 0 = off (the default).
    #[garde(range(max = 1_000_000))]
    pub rate_limit_per_sec: u32,
    #[garde(range(min = 1, max = 1_000_000))]
    pub rate_limit_burst: u32,
    /// Failed authentications and logins per minute per client IP; 0 = off.
    #[garde(range(max = 1_000_000))]
    pub auth_failures_per_min: u32,
    #[garde(range(min = 1, max = 1_000_000))]
    pub auth_failure_burst: u32,
    /// Per-instance send governor; zeros = off (the default).
    #[garde(range(max = 100_000))]
    pub send_per_sec: u32,
    #[garde(range(max = 100_000))]
    pub send_burst: u32,
    #[garde(range(max = 6_000_000))]
    pub send_per_min: u32,
    #[garde(range(max = 1_000_000))]
    pub new_chats_per_hour: u32,
    #[garde(range(min = 1, max = MAX_MEDIA))]
    pub max_image_bytes: u64,
    #[garde(range(min = 1, max = MAX_MEDIA))]
    pub max_video_bytes: u64,
    #[garde(range(min = 1, max = MAX_MEDIA))]
    pub max_audio_bytes: u64,
    #[garde(range(min = 1, max = MAX_MEDIA))]
    pub max_document_bytes: u64,
    /// Media bytes held by requests at once, over all requests (uploads and media
    /// fetched by URL); a request that would pass it waits, then gets 503.
    #[garde(range(min = 1024 * 1024, max = 64 * MAX_MEDIA))]
    pub max_media_in_flight_bytes: u64,
}

/// `[webhook]`
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(deserialize_with = "durations")]
    #[garde(skip)]
    pub retry_schedule: Vec<Duration>,
    #[serde(rename = "timeout_secs", deserialize_with = "secs")]
    #[garde(custom(within(1, 300)))]
    pub timeout: Duration,
    #[garde(skip)]
    pub allowed_targets: Vec<Cidr>,
    /// Ports webhook and media URLs may use; empty: any.
    #[serde(deserialize_with = "ports")]
    #[garde(skip)]
    pub allowed_ports: Vec<u16>,
    /// How long a delivered (or dead) event keeps its payload; then only metadata.
    #[serde(rename = "payload_retention_secs", deserialize_with = "secs")]
    #[garde(custom(within(0, 365 * 86400)))]
    pub payload_retention: Duration,
    /// Whether an instance token may set or change its instance's webhook URL.
    #[garde(skip)]
    pub instance_tokens_set_url: bool,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub filter: String,
}

/// `[metrics]`: `GET /metrics` (Prometheus text format, admin auth).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Label per-instance series with the instance id (switch off for very large
    /// fleets: the series then count all instances together).
    pub per_instance_labels: bool,
}

/// `[sandbox]`: used by sandbox builds started with `--sandbox` only.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// A mock network already running elsewhere (`http://IP:PORT`); `None`: the
    /// sandbox starts its own in-process.
    #[serde(deserialize_with = "blank_none")]
    pub mock_url: Option<String>,
}

/// `[cluster]`: several nodes on one PostgreSQL database (see `docs/cluster.md`).
/// Inactive while `node_id` is empty.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster; empty: single node.
    #[serde(deserialize_with = "trimmed")]
    pub node_id: String,
    /// Where the other nodes reach this one (`http://10.0.0.5:8080`).
    #[serde(deserialize_with = "trimmed")]
    pub internal_url: String,
    /// Shared by every node: authenticates forwarded requests between nodes.
    #[serde(deserialize_with = "blank_none")]
    pub secret: Option<String>,
    /// How long an instance's lease lasts without renewal (the failover delay).
    #[serde(rename = "lease_ttl_secs", deserialize_with = "secs")]
    pub lease_ttl: Duration,
    /// How often leases are renewed and free instances looked for.
    #[serde(rename = "renew_interval_ms", deserialize_with = "millis")]
    pub renew_interval: Duration,
}

impl ClusterConfig {
    /// Whether this process is a cluster node.
    pub fn enabled(&self) -> bool {
        !self.node_id.is_empty()
    }
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node_id", &self.node_id)
            .field("internal_url", &self.internal_url)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("lease_ttl", &self.lease_ttl)
            .field("renew_interval", &self.renew_interval)
            .finish()
    }
}

impl Config {
    /// Loads and validates the configuration from `sources`.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        load::load(sources)
    }

    /// The rules that span keys and the values derived from others. Errors name the key
    /// (`load` adds the variable).
    fn finish(mut self) -> Result<Self, (&'static str, String)> {
        let (kind, url, sqlite_path) = database_url(&self.database.url)?;
        self.database.kind = kind;
        self.database.url = url;
        self.database.sqlite_path = sqlite_path;

        let auth = &self.auth;
        if auth.login_username.is_some() != auth.login_password.is_some() {
            let key = if auth.login_username.is_some() {
                "auth.login_password"
            } else {
                "auth.login_username"
            };
            return Err((
                key,
                "login username and password must be set together".into(),
            ));
        }

        let l = &self.limits;
        let largest_media = l
            .max_image_bytes
            .max(l.max_video_bytes)
            .max(l.max_audio_bytes)
            .max(l.max_document_bytes);
        // Each media byte counts twice (the file and its encrypted copy, media/budget.rs).
        if l.max_media_in_flight_bytes < 2 * largest_media {
            return Err((
                "limits.max_media_in_flight_bytes",
                format!(
                    "{} is below twice the largest media cap ({largest_media}): such a file could never be sent",
                    l.max_media_in_flight_bytes
                ),
            ));
        }

        let c = &self.cluster;
        if c.enabled() {
            if self.database.kind != DbKind::Postgres {
                return Err((
                    "cluster.node_id",
                    "a cluster needs PostgreSQL (database.url = postgres://...)".into(),
                ));
            }
            if c.node_id.len() > 64
                || !c
                    .node_id
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                return Err((
                    "cluster.node_id",
                    "up to 64 letters, digits, '-', '_' or '.'".into(),
                ));
            }
            if !(c.internal_url.starts_with("http://") || c.internal_url.starts_with("https://")) {
                return Err((
                    "cluster.internal_url",
                    "the URL other nodes reach this one at (http://HOST:PORT)".into(),
                ));
            }
            if c.secret.as_ref().is_none_or(|s| s.len() < 32) {
                return Err((
                    "cluster.secret",
                    "at least 32 bytes, the same on every node".into(),
                ));
            }
            if c.lease_ttl < Duration::from_secs(3) || c.lease_ttl > Duration::from_secs(600) {
                return Err(("cluster.lease_ttl_secs", "between 3 and 600".into()));
            }
            if c.renew_interval < Duration::from_millis(100) || c.renew_interval * 3 > c.lease_ttl {
                return Err((
                    "cluster.renew_interval_ms",
                    "at least 100 and at most a third of the lease".into(),
                ));
            }
        }

        self.database.fence_node = c.enabled().then(|| c.node_id.clone());

        if self.messages.spool_dir.as_os_str().is_empty() {
            self.messages.spool_dir =
                match self.database.sqlite_path.as_ref().and_then(|p| p.parent()) {
                    Some(dir) if !dir.as_os_str().is_empty() => dir.join("spool"),
                    _ => PathBuf::from("./data/spool"),
                };
        }
        Ok(self)
    }
}

/// What a database URL names: engine, URL to connect with (SQLite: created on first
/// start), and the SQLite file.
fn database_url(url: &str) -> Result<(DbKind, String, Option<PathBuf>), (&'static str, String)> {
    const KEY: &str = "database.url";
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("sqlite") => {
            let rest = url["sqlite:".len()..].trim_start_matches("//");
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if path.is_empty() {
                return Err((
                    KEY,
                    "sqlite URL has no file path (sqlite://./data/sudevwa.db)".into(),
                ));
            }
            if path == ":memory:" {
                return Ok((DbKind::Sqlite, url.to_string(), None));
            }
            // mode=rwc creates the file on first start.
            let query = match query {
                q if q.contains("mode=") => q.to_string(),
                "" => "mode=rwc".to_string(),
                q => format!("{q}&mode=rwc"),
            };
            Ok((
                DbKind::Sqlite,
                format!("sqlite://{path}?{query}"),
                Some(PathBuf::from(path)),
            ))
        }
        Some("postgres") | Some("postgresql") => {
            if url
                .split_once("://")
                .is_none_or(|(_, rest)| rest.is_empty())
            {
                return Err((
                    KEY,
                    "postgres URL must look like postgres://user:pass@host:port/db".into(),
                ));
            }
            Ok((DbKind::Postgres, url.to_string(), None))
        }
        Some(other) => Err((
            KEY,
            format!("unsupported database scheme {other:?} (use sqlite:// or postgres://)"),
        )),
        None => Err((
            KEY,
            "not a database URL (use sqlite://PATH or postgres://...)".into(),
        )),
    }
}
