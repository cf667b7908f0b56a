//! Configuration: embedded defaults → config file → environment, validated once at start.
//!
//! The defaults are the repository's own `config.toml`, compiled in, so the binary runs
//! with no file at all and the documented defaults can never drift from the real ones.
//! Every key may be overridden from the environment as `SUDEVWA_<SECTION>_<KEY>`, and the
//! variable names SUDEVWA (Go) users already set are honoured as aliases ([`ALIASES`]).
//!
//! Invariant: a [`Config`] value is always valid. Every failure is a [`ConfigError`] whose
//! `Display` is one line naming the key (and the variable it came from), so `main` can
//! print it and exit non-zero; nothing here panics or falls back to a default silently.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The documented defaults, compiled in.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config.toml");

/// Environment names kept from SUDEVWA (Go), mapped to their key.
pub const ALIASES: &[(&str, &str)] = &[
    ("PORT", "server.port"),
    ("DATABASE_URL", "database.url"),
    ("JWT_SECRET", "auth.jwt_secret"),
    ("APP_LOGIN_USERNAME", "auth.login_username"),
    ("APP_LOGIN_PASSWORD", "auth.login_password"),
    ("SUDEVWA_ENABLE_WEBHOOK", "features.enable_webhook"),
    ("SUDEVWA_ENABLE_WEBSOCKET", "features.enable_websocket"),
    ("SUDEVWA_ALLOWED_TARGETS", "webhook.allowed_targets"),
    ("SUDEVWA_WEBHOOK_RETRY_SCHEDULE", "webhook.retry_schedule"),
];

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

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            source_var: None,
            problem: problem.into(),
        }
    }
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub features: FeaturesConfig,
    pub whatsapp: WhatsappConfig,
    pub limits: LimitsConfig,
    pub websocket: WebsocketConfig,
    pub webhook: WebhookConfig,
    pub messages: MessagesConfig,
    pub log: LogConfig,
    pub sandbox: SandboxConfig,
}

/// `[messages]`: the durable message path.
#[derive(Debug, Clone)]
pub struct MessagesConfig {
    /// Acknowledge incoming messages to WhatsApp only after they are committed.
    pub ack_after_commit: bool,
    /// Local directory for pending-inbound rows while the database refuses writes.
    pub spool_dir: PathBuf,
    /// Message log / event log retention in days; 0 keeps everything.
    pub retention_days: u32,
    /// At most this many messages per instance in the log; 0: no cap.
    pub retention_max_rows: u64,
    pub prune_interval: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_window: Duration,
}

/// `[server]`
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub cors_origins: Vec<String>,
    pub shutdown_grace: Duration,
    /// A request's header must arrive within this; also the longest a kept-alive
    /// connection may sit idle between requests.
    pub header_read_timeout: Duration,
    /// Open connections at once (over all clients) / from one client address.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Peers whose `X-Forwarded-For` names the client (reverse proxies). Empty: the
    /// peer address is the client.
    pub trusted_proxies: Vec<Cidr>,
}

/// Which database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

/// `[database]`
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// URL as given (normalised for SQLite so the file is created on first start).
    pub url: String,
    pub kind: DbKind,
    /// For SQLite: the database file, whose directory is created at start.
    pub sqlite_path: Option<PathBuf>,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

/// `[auth]`. Secrets are never printed by `Debug`.
#[derive(Clone)]
pub struct AuthConfig {
    pub jwt_secret: Option<String>,
    pub login_username: Option<String>,
    pub login_password: Option<String>,
    pub jwt_ttl: Duration,
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
#[derive(Debug, Clone)]
pub struct FeaturesConfig {
    pub enable_webhook: bool,
    pub enable_websocket: bool,
}

/// `[whatsapp]`
#[derive(Debug, Clone)]
pub struct WhatsappConfig {
    pub device_name: String,
    pub default_country_code: String,
    pub qr_timeout: Duration,
    pub presence_interval: Duration,
    /// Number-check answers reused by sends: registered / not registered.
    pub number_cache_ttl: Duration,
    pub number_cache_negative_ttl: Duration,
    /// Network operations in flight per instance.
    pub max_ops_per_instance: usize,
    /// Connects running at once / started per second (admission control).
    pub connect_concurrency: usize,
    pub connects_per_second: u32,
    /// `None`: the real WhatsApp service.
    pub socket_url: Option<String>,
    /// Fixed WhatsApp Web client version `(major, minor, patch)`; `None`: looked up.
    pub client_version: Option<(u32, u32, u32)>,
}

/// `[websocket]`: upkeep of `/ws` and `/api/listen/:id`.
#[derive(Debug, Clone)]
pub struct WebsocketConfig {
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// Events buffered per listener before it counts as slow.
    pub buffer: usize,
    pub send_timeout: Duration,
    /// Largest message a client may send on a socket.
    pub max_message_bytes: usize,
    /// Open sockets per credential (token, key, login) and per client address.
    pub max_sockets_per_principal: usize,
    pub max_sockets_per_ip: usize,
}

/// `[limits]`
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Requests per second per client IP over every route; 0 = off (the default).
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    /// Failed authentications and logins per minute per client IP; 0 = off.
    pub auth_failures_per_min: u32,
    pub auth_failure_burst: u32,
    /// Per-instance send governor; zeros = off (the default).
    pub send_per_sec: u32,
    pub send_burst: u32,
    pub send_per_min: u32,
    pub new_chats_per_hour: u32,
    pub max_image_bytes: u64,
    pub max_video_bytes: u64,
    pub max_audio_bytes: u64,
    pub max_document_bytes: u64,
    /// Media bytes held by requests at once, over all requests (uploads and media
    /// fetched by URL); a request that would pass it waits, then gets 503.
    pub max_media_in_flight_bytes: u64,
}

/// `[webhook]`
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub retry_schedule: Vec<Duration>,
    pub timeout: Duration,
    pub allowed_targets: Vec<Cidr>,
    /// Ports webhook and media URLs may use; empty: any.
    pub allowed_ports: Vec<u16>,
    /// How long a delivered (or dead) event keeps its payload; then only metadata.
    pub payload_retention: Duration,
    /// Whether an instance token may set or change its instance's webhook URL.
    pub instance_tokens_set_url: bool,
}

/// `[log]`
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub filter: String,
}

/// `[sandbox]`: used by sandbox builds started with `--sandbox` only.
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// A mock network already running elsewhere (`http://IP:PORT`); `None`: the
    /// sandbox starts its own in-process.
    pub mock_url: Option<String>,
}

/// An IP network, `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128`, or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr_s, prefix_s) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_s {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length (0-{max})"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` lies in this network (IPv4-mapped IPv6 addresses match IPv4 networks).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Where the configuration is read from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Config file given explicitly (`--config`, `SUDEVWA_CONFIG`): must be readable.
    pub explicit_file: Option<PathBuf>,
    /// Config file used only if it exists (`./config.toml`).
    pub default_file: Option<PathBuf>,
    /// Environment variables (the process environment in production, a map in tests).
    pub env: BTreeMap<String, String>,
}

impl Sources {
    /// The process environment, `--config PATH` if given, otherwise `./config.toml` if present.
    pub fn from_process(cli_config: Option<PathBuf>) -> Self {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let explicit_file = cli_config.or_else(|| env.get("SUDEVWA_CONFIG").map(PathBuf::from));
        Self {
            explicit_file,
            default_file: Some(PathBuf::from("config.toml")),
            env,
        }
    }
}

impl Config {
    /// Loads and validates the configuration from `sources`.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let mut table = parse_toml(DEFAULT_CONFIG_TOML, "built-in defaults")?;
        // The defaults' shape is the schema: unknown keys and wrong types are rejected
        // against it, both in the file and in the environment.
        let schema = table.clone();
        if let Some(path) = &sources.explicit_file {
            let text = read_file(path)?;
            merge_file(
                &mut table,
                &schema,
                parse_toml(&text, &path.display().to_string())?,
                "",
            )?;
        } else if let Some(path) = sources.default_file.as_ref().filter(|p| p.exists()) {
            let text = read_file(path)?;
            merge_file(
                &mut table,
                &schema,
                parse_toml(&text, &path.display().to_string())?,
                "",
            )?;
        }
        apply_env(&mut table, &sources.env)?;
        let raw: RawConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::new("config", e.message().to_string()))?;
        validate(raw, &sources.env)
    }
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            path.display().to_string(),
            format!("cannot read config file: {e}"),
        )
    })
}

fn parse_toml(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| {
        let msg = e.message().replace('\n', " ");
        ConfigError::new(origin, format!("not valid TOML: {msg}"))
    })
}

/// Overlays `file` onto `base`, refusing keys the schema lacks and values of the wrong type.
fn merge_file(
    base: &mut toml::Table,
    schema: &toml::Table,
    file: toml::Table,
    prefix: &str,
) -> Result<(), ConfigError> {
    for (k, v) in file {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let Some(expected) = schema.get(&k) else {
            return Err(ConfigError::new(key, "unknown key"));
        };
        match (expected, v) {
            (toml::Value::Table(sub_schema), toml::Value::Table(sub)) => {
                let Some(toml::Value::Table(sub_base)) = base.get_mut(&k) else {
                    return Err(ConfigError::new(key, "unknown section"));
                };
                merge_file(sub_base, sub_schema, sub, &key)?;
            }
            (expected, v) if same_type(expected, &v) => {
                base.insert(k, v);
            }
            (expected, v) => {
                return Err(ConfigError::new(
                    key,
                    format!("expected {}, found {}", expected.type_str(), v.type_str()),
                ))
            }
        }
    }
    Ok(())
}

fn same_type(a: &toml::Value, b: &toml::Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// Applies `SUDEVWA_<SECTION>_<KEY>` variables and the SUDEVWA aliases. The canonical
/// name wins over an alias when both are set.
fn apply_env(table: &mut toml::Table, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    let mut assignments: Vec<(String, String, String)> = Vec::new();
    for (var, key) in ALIASES {
        if let Some(v) = env.get(*var) {
            assignments.push((key.to_string(), var.to_string(), v.clone()));
        }
    }
    for (section, value) in table.iter() {
        let toml::Value::Table(keys) = value else {
            continue;
        };
        for key in keys.keys() {
            let var = format!("SUDEVWA_{}_{}", section.to_uppercase(), key.to_uppercase());
            if let Some(v) = env.get(&var) {
                assignments.push((format!("{section}.{key}"), var, v.clone()));
            }
        }
    }
    for (key, var, text) in assignments {
        let (section, name) = key.split_once('.').unwrap_or((key.as_str(), ""));
        let Some(toml::Value::Table(sec)) = table.get_mut(section) else {
            continue;
        };
        let Some(current) = sec.get(name) else {
            continue;
        };
        let value = env_value(current, &text).map_err(|problem| ConfigError {
            key: key.clone(),
            source_var: Some(var.clone()),
            problem,
        })?;
        sec.insert(name.to_string(), value);
    }
    Ok(())
}

/// Converts an environment string to the type the default has.
fn env_value(current: &toml::Value, text: &str) -> Result<toml::Value, String> {
    let t = text.trim();
    Ok(match current {
        toml::Value::Integer(_) => toml::Value::Integer(
            t.parse::<i64>()
                .map_err(|_| format!("{text:?} is not an integer"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(parse_bool(t).ok_or_else(|| {
            format!("{text:?} is not a boolean (true/false, 1/0, yes/no, on/off)")
        })?),
        toml::Value::Array(_) => toml::Value::Array(
            t.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => toml::Value::String(text.to_string()),
    })
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Parses `30s`, `5m`, `2h`, `1d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m, 2h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?} has an unknown unit (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

// ---- raw, as written (types only); turned into `Config` by `validate` ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    database: RawDatabase,
    auth: RawAuth,
    features: FeaturesRaw,
    whatsapp: RawWhatsapp,
    limits: RawLimits,
    websocket: RawWebsocket,
    webhook: RawWebhook,
    messages: RawMessages,
    log: RawLog,
    sandbox: RawSandbox,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    mock_url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessages {
    ack_after_commit: bool,
    spool_dir: String,
    retention_days: i64,
    retention_max_rows: i64,
    prune_interval_secs: i64,
    idempotency_window_secs: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    bind: String,
    port: i64,
    cors_origins: Vec<String>,
    shutdown_grace_secs: i64,
    header_read_timeout_secs: i64,
    max_connections: i64,
    max_connections_per_ip: i64,
    trusted_proxies: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: String,
    max_connections: i64,
    acquire_timeout_secs: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    jwt_secret: String,
    login_username: String,
    login_password: String,
    jwt_ttl_secs: i64,
    admin_api_keys: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeaturesRaw {
    enable_webhook: bool,
    enable_websocket: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWhatsapp {
    device_name: String,
    default_country_code: String,
    qr_timeout_secs: i64,
    presence_interval_secs: i64,
    number_cache_ttl_secs: i64,
    number_cache_negative_ttl_secs: i64,
    max_ops_per_instance: i64,
    connect_concurrency: i64,
    connects_per_second: i64,
    socket_url: String,
    client_version: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    rate_limit_per_sec: i64,
    rate_limit_burst: i64,
    auth_failures_per_min: i64,
    auth_failure_burst: i64,
    send_per_sec: i64,
    send_burst: i64,
    send_per_min: i64,
    new_chats_per_hour: i64,
    max_image_bytes: i64,
    max_video_bytes: i64,
    max_audio_bytes: i64,
    max_document_bytes: i64,
    max_media_in_flight_bytes: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebsocket {
    ping_interval_secs: i64,
    pong_timeout_secs: i64,
    buffer: i64,
    send_timeout_secs: i64,
    max_message_bytes: i64,
    max_sockets_per_principal: i64,
    max_sockets_per_ip: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    retry_schedule: Vec<String>,
    timeout_secs: i64,
    allowed_targets: Vec<String>,
    allowed_ports: Vec<i64>,
    payload_retention_secs: i64,
    instance_tokens_set_url: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    filter: String,
}

/// Builds errors that name the variable the key was set from, when it was.
struct Checker<'a> {
    env: &'a BTreeMap<String, String>,
}

impl Checker<'_> {
    fn err(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        let canonical = {
            let (s, k) = key.split_once('.').unwrap_or((key, ""));
            format!("SUDEVWA_{}_{}", s.to_uppercase(), k.to_uppercase())
        };
        let source_var = if self.env.contains_key(&canonical) {
            Some(canonical)
        } else {
            ALIASES
                .iter()
                .find(|(var, k)| *k == key && self.env.contains_key(*var))
                .map(|(var, _)| var.to_string())
        };
        ConfigError {
            key: key.to_string(),
            source_var,
            problem: problem.into(),
        }
    }

    fn range(&self, key: &str, v: i64, min: i64, max: i64) -> Result<i64, ConfigError> {
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(self.err(key, format!("{v} is out of range ({min}-{max})")))
        }
    }

    fn secs(&self, key: &str, v: i64, min: i64, max: i64) -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(self.range(key, v, min, max)? as u64))
    }
}

fn non_empty(s: String) -> Option<String> {
    if s.trim().is_empty() {
        None
    } else {
        Some(s)
    }
}

fn validate(raw: RawConfig, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    let c = Checker { env };

    let bind: IpAddr = raw.server.bind.trim().parse().map_err(|_| {
        c.err(
            "server.bind",
            format!("{:?} is not an IP address", raw.server.bind),
        )
    })?;
    let port = u16::try_from(raw.server.port).map_err(|_| {
        c.err(
            "server.port",
            format!("invalid port {}: must be 0-65535", raw.server.port),
        )
    })?;
    let server = ServerConfig {
        addr: SocketAddr::new(bind, port),
        cors_origins: raw.server.cors_origins,
        shutdown_grace: c.secs(
            "server.shutdown_grace_secs",
            raw.server.shutdown_grace_secs,
            0,
            3600,
        )?,
        header_read_timeout: c.secs(
            "server.header_read_timeout_secs",
            raw.server.header_read_timeout_secs,
            1,
            3600,
        )?,
        max_connections: c.range(
            "server.max_connections",
            raw.server.max_connections,
            1,
            1_000_000,
        )? as usize,
        max_connections_per_ip: c.range(
            "server.max_connections_per_ip",
            raw.server.max_connections_per_ip,
            1,
            1_000_000,
        )? as usize,
        trusted_proxies: raw
            .server
            .trusted_proxies
            .iter()
            .map(|s| Cidr::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| c.err("server.trusted_proxies", e))?,
    };

    let database = validate_database(&c, raw.database)?;

    let jwt_secret = non_empty(raw.auth.jwt_secret);
    if let Some(s) = &jwt_secret {
        if s.len() < 32 {
            return Err(c.err("auth.jwt_secret", "must be at least 32 characters"));
        }
    }
    let login_username = non_empty(raw.auth.login_username);
    let login_password = non_empty(raw.auth.login_password);
    if login_username.is_some() != login_password.is_some() {
        let key = if login_username.is_some() {
            "auth.login_password"
        } else {
            "auth.login_username"
        };
        return Err(c.err(key, "login username and password must be set together"));
    }
    if let Some(p) = &login_password {
        if p.len() < 8 {
            return Err(c.err("auth.login_password", "must be at least 8 characters"));
        }
    }
    if let Some(k) = raw.auth.admin_api_keys.iter().find(|k| k.len() < 32) {
        let _ = k; // never echo a key, even a short one
        return Err(c.err(
            "auth.admin_api_keys",
            "every key must be at least 32 characters",
        ));
    }
    let auth = AuthConfig {
        jwt_secret,
        login_username,
        login_password,
        jwt_ttl: c.secs("auth.jwt_ttl_secs", raw.auth.jwt_ttl_secs, 60, 30 * 86400)?,
        admin_api_keys: raw.auth.admin_api_keys,
    };

    let features = FeaturesConfig {
        enable_webhook: raw.features.enable_webhook,
        enable_websocket: raw.features.enable_websocket,
    };

    let cc = raw.whatsapp.default_country_code.trim().to_string();
    if cc.is_empty() || cc.len() > 4 || !cc.chars().all(|ch| ch.is_ascii_digit()) {
        return Err(c.err(
            "whatsapp.default_country_code",
            "must be 1-4 digits, e.g. 62",
        ));
    }
    let device_name = raw.whatsapp.device_name.trim().to_string();
    if device_name.is_empty() || device_name.chars().count() > 64 {
        return Err(c.err("whatsapp.device_name", "must be 1-64 characters"));
    }
    let socket_url = non_empty(raw.whatsapp.socket_url);
    if let Some(u) = &socket_url {
        if !(u.starts_with("ws://") || u.starts_with("wss://")) {
            return Err(c.err("whatsapp.socket_url", "must start with ws:// or wss://"));
        }
    }
    let client_version = match non_empty(raw.whatsapp.client_version) {
        None => None,
        Some(v) => {
            let parts: Vec<Option<u32>> = v.split('.').map(|p| p.trim().parse().ok()).collect();
            match parts.as_slice() {
                [Some(a), Some(b), Some(c)] => Some((*a, *b, *c)),
                _ => {
                    return Err(c.err(
                        "whatsapp.client_version",
                        "must look like 2.3000.1027868186 (three numbers)",
                    ))
                }
            }
        }
    };
    let whatsapp = WhatsappConfig {
        client_version,
        device_name,
        default_country_code: cc,
        qr_timeout: c.secs(
            "whatsapp.qr_timeout_secs",
            raw.whatsapp.qr_timeout_secs,
            10,
            3600,
        )?,
        presence_interval: c.secs(
            "whatsapp.presence_interval_secs",
            raw.whatsapp.presence_interval_secs,
            10,
            86400,
        )?,
        number_cache_ttl: c.secs(
            "whatsapp.number_cache_ttl_secs",
            raw.whatsapp.number_cache_ttl_secs,
            0,
            30 * 86400,
        )?,
        number_cache_negative_ttl: c.secs(
            "whatsapp.number_cache_negative_ttl_secs",
            raw.whatsapp.number_cache_negative_ttl_secs,
            0,
            30 * 86400,
        )?,
        max_ops_per_instance: c.range(
            "whatsapp.max_ops_per_instance",
            raw.whatsapp.max_ops_per_instance,
            1,
            100_000,
        )? as usize,
        connect_concurrency: c.range(
            "whatsapp.connect_concurrency",
            raw.whatsapp.connect_concurrency,
            1,
            10_000,
        )? as usize,
        connects_per_second: c.range(
            "whatsapp.connects_per_second",
            raw.whatsapp.connects_per_second,
            1,
            10_000,
        )? as u32,
        socket_url,
    };

    const MAX_MEDIA: i64 = 2 * 1024 * 1024 * 1024;
    let limits = LimitsConfig {
        rate_limit_per_sec: c.range(
            "limits.rate_limit_per_sec",
            raw.limits.rate_limit_per_sec,
            0,
            1_000_000,
        )? as u32,
        rate_limit_burst: c.range(
            "limits.rate_limit_burst",
            raw.limits.rate_limit_burst,
            1,
            1_000_000,
        )? as u32,
        auth_failures_per_min: c.range(
            "limits.auth_failures_per_min",
            raw.limits.auth_failures_per_min,
            0,
            1_000_000,
        )? as u32,
        auth_failure_burst: c.range(
            "limits.auth_failure_burst",
            raw.limits.auth_failure_burst,
            1,
            1_000_000,
        )? as u32,
        send_per_sec: c.range("limits.send_per_sec", raw.limits.send_per_sec, 0, 100_000)? as u32,
        send_burst: c.range("limits.send_burst", raw.limits.send_burst, 0, 100_000)? as u32,
        send_per_min: c.range("limits.send_per_min", raw.limits.send_per_min, 0, 6_000_000)? as u32,
        new_chats_per_hour: c.range(
            "limits.new_chats_per_hour",
            raw.limits.new_chats_per_hour,
            0,
            1_000_000,
        )? as u32,
        max_image_bytes: c.range(
            "limits.max_image_bytes",
            raw.limits.max_image_bytes,
            1,
            MAX_MEDIA,
        )? as u64,
        max_video_bytes: c.range(
            "limits.max_video_bytes",
            raw.limits.max_video_bytes,
            1,
            MAX_MEDIA,
        )? as u64,
        max_audio_bytes: c.range(
            "limits.max_audio_bytes",
            raw.limits.max_audio_bytes,
            1,
            MAX_MEDIA,
        )? as u64,
        max_document_bytes: c.range(
            "limits.max_document_bytes",
            raw.limits.max_document_bytes,
            1,
            MAX_MEDIA,
        )? as u64,
        max_media_in_flight_bytes: c.range(
            "limits.max_media_in_flight_bytes",
            raw.limits.max_media_in_flight_bytes,
            1024 * 1024,
            64 * MAX_MEDIA,
        )? as u64,
    };
    let largest_media = limits
        .max_image_bytes
        .max(limits.max_video_bytes)
        .max(limits.max_audio_bytes)
        .max(limits.max_document_bytes);
    // Each media byte counts twice (the file and its encrypted copy, http/budget.rs).
    if limits.max_media_in_flight_bytes < 2 * largest_media {
        return Err(c.err(
            "limits.max_media_in_flight_bytes",
            format!(
                "{} is below twice the largest media cap ({largest_media}): such a file could never be sent",
                limits.max_media_in_flight_bytes
            ),
        ));
    }

    let websocket = WebsocketConfig {
        ping_interval: c.secs(
            "websocket.ping_interval_secs",
            raw.websocket.ping_interval_secs,
            1,
            86400,
        )?,
        pong_timeout: c.secs(
            "websocket.pong_timeout_secs",
            raw.websocket.pong_timeout_secs,
            1,
            86400,
        )?,
        buffer: c.range("websocket.buffer", raw.websocket.buffer, 1, 65536)? as usize,
        send_timeout: c.secs(
            "websocket.send_timeout_secs",
            raw.websocket.send_timeout_secs,
            1,
            3600,
        )?,
        max_message_bytes: c.range(
            "websocket.max_message_bytes",
            raw.websocket.max_message_bytes,
            1024,
            64 * 1024 * 1024,
        )? as usize,
        max_sockets_per_principal: c.range(
            "websocket.max_sockets_per_principal",
            raw.websocket.max_sockets_per_principal,
            1,
            1_000_000,
        )? as usize,
        max_sockets_per_ip: c.range(
            "websocket.max_sockets_per_ip",
            raw.websocket.max_sockets_per_ip,
            1,
            1_000_000,
        )? as usize,
    };

    let retry_schedule = raw
        .webhook
        .retry_schedule
        .iter()
        .map(|s| parse_duration(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| c.err("webhook.retry_schedule", e))?;
    let allowed_targets = raw
        .webhook
        .allowed_targets
        .iter()
        .map(|s| Cidr::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| c.err("webhook.allowed_targets", e))?;
    let webhook = WebhookConfig {
        retry_schedule,
        timeout: c.secs("webhook.timeout_secs", raw.webhook.timeout_secs, 1, 300)?,
        allowed_targets,
        allowed_ports: raw
            .webhook
            .allowed_ports
            .iter()
            .map(|p| {
                u16::try_from(*p).ok().filter(|p| *p > 0).ok_or_else(|| {
                    c.err(
                        "webhook.allowed_ports",
                        format!("{p} is not a port (1-65535)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        payload_retention: c.secs(
            "webhook.payload_retention_secs",
            raw.webhook.payload_retention_secs,
            0,
            365 * 86400,
        )?,
        instance_tokens_set_url: raw.webhook.instance_tokens_set_url,
    };

    let spool_dir = match non_empty(raw.messages.spool_dir) {
        Some(d) => PathBuf::from(d),
        None => match database.sqlite_path.as_ref().and_then(|p| p.parent()) {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join("spool"),
            _ => PathBuf::from("./data/spool"),
        },
    };
    let messages = MessagesConfig {
        ack_after_commit: raw.messages.ack_after_commit,
        spool_dir,
        retention_days: c.range(
            "messages.retention_days",
            raw.messages.retention_days,
            0,
            36_500,
        )? as u32,
        retention_max_rows: c.range(
            "messages.retention_max_rows",
            raw.messages.retention_max_rows,
            0,
            i64::MAX,
        )? as u64,
        prune_interval: c.secs(
            "messages.prune_interval_secs",
            raw.messages.prune_interval_secs,
            1,
            86_400,
        )?,
        idempotency_window: c.secs(
            "messages.idempotency_window_secs",
            raw.messages.idempotency_window_secs,
            1,
            30 * 86_400,
        )?,
    };

    Ok(Config {
        messages,
        server,
        database,
        auth,
        features,
        whatsapp,
        limits,
        websocket,
        webhook,
        log: LogConfig {
            filter: raw.log.filter,
        },
        sandbox: SandboxConfig {
            mock_url: non_empty(raw.sandbox.mock_url),
        },
    })
}

fn validate_database(c: &Checker<'_>, raw: RawDatabase) -> Result<DatabaseConfig, ConfigError> {
    let url = raw.url.trim().to_string();
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    let (kind, url, sqlite_path) = match scheme.as_deref() {
        Some("sqlite") => {
            let rest = url["sqlite:".len()..].trim_start_matches("//");
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if path.is_empty() {
                return Err(c.err(
                    "database.url",
                    "sqlite URL has no file path (sqlite://./data/sudevwa.db)",
                ));
            }
            if path == ":memory:" {
                (DbKind::Sqlite, url.clone(), None)
            } else {
                // mode=rwc creates the file on first start.
                let query = if query.contains("mode=") {
                    query.to_string()
                } else if query.is_empty() {
                    "mode=rwc".to_string()
                } else {
                    format!("{query}&mode=rwc")
                };
                (
                    DbKind::Sqlite,
                    format!("sqlite://{path}?{query}"),
                    Some(PathBuf::from(path)),
                )
            }
        }
        Some("postgres") | Some("postgresql") => {
            if !url.contains("://") || url.split("://").nth(1).is_none_or(str::is_empty) {
                return Err(c.err(
                    "database.url",
                    "postgres URL must look like postgres://user:pass@host:port/db",
                ));
            }
            (DbKind::Postgres, url.clone(), None)
        }
        Some(other) => {
            return Err(c.err(
                "database.url",
                format!("unsupported database scheme {other:?} (use sqlite:// or postgres://)"),
            ))
        }
        None => {
            return Err(c.err(
                "database.url",
                "not a database URL (use sqlite://PATH or postgres://...)",
            ));
        }
    };
    Ok(DatabaseConfig {
        url,
        kind,
        sqlite_path,
        max_connections: c.range("database.max_connections", raw.max_connections, 1, 10_000)?
            as u32,
        acquire_timeout: c.secs(
            "database.acquire_timeout_secs",
            raw.acquire_timeout_secs,
            1,
            600,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(&Sources {
            explicit_file: None,
            default_file: None,
            env: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    #[test]
    fn defaults_are_valid_and_local() {
        let c = load_env(&[]).expect("defaults must validate");
        assert_eq!(c.server.addr.to_string(), "127.0.0.1:2121");
        assert_eq!(c.database.kind, DbKind::Sqlite);
        assert_eq!(c.database.url, "sqlite://./data/sudevwa.db?mode=rwc");
        assert_eq!(
            c.database.sqlite_path.as_deref(),
            Some(Path::new("./data/sudevwa.db"))
        );
        assert_eq!(c.whatsapp.device_name, "SUDEVWA Beta");
        assert_eq!(c.whatsapp.qr_timeout, Duration::from_secs(180));
        assert_eq!(c.webhook.retry_schedule.len(), 6);
        assert!(c.auth.jwt_secret.is_none());
    }

    #[test]
    fn sudevwa_env_names_override() {
        let c = load_env(&[
            ("PORT", "8080"),
            ("DATABASE_URL", "postgres://u:p@127.0.0.1:5432/db"),
            ("SUDEVWA_ENABLE_WEBHOOK", "true"),
            ("SUDEVWA_ENABLE_WEBSOCKET", "0"),
            ("SUDEVWA_ALLOWED_TARGETS", "127.0.0.0/8, ::1/128"),
            ("SUDEVWA_WEBHOOK_RETRY_SCHEDULE", "1s,2m"),
            ("APP_LOGIN_USERNAME", "admin"),
            ("APP_LOGIN_PASSWORD", "correct horse"),
        ])
        .unwrap();
        assert_eq!(c.server.addr.port(), 8080);
        assert_eq!(c.database.kind, DbKind::Postgres);
        assert!(c.features.enable_webhook);
        assert!(!c.features.enable_websocket);
        assert_eq!(c.webhook.allowed_targets.len(), 2);
        assert_eq!(
            c.webhook.retry_schedule,
            vec![Duration::from_secs(1), Duration::from_secs(120)]
        );
        assert_eq!(c.auth.login_username.as_deref(), Some("admin"));
    }

    #[test]
    fn canonical_env_name_beats_alias() {
        let c = load_env(&[("PORT", "8080"), ("SUDEVWA_SERVER_PORT", "9090")]).unwrap();
        assert_eq!(c.server.addr.port(), 9090);
    }

    #[test]
    fn bad_values_name_key_and_variable() {
        let e = load_env(&[("PORT", "abc")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "server.port (PORT): \"abc\" is not an integer"
        );
        let e = load_env(&[("PORT", "70000")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "server.port (PORT): invalid port 70000: must be 0-65535"
        );
        let e = load_env(&[("DATABASE_URL", "mysql://x/y")]).unwrap_err();
        assert_eq!(e.key, "database.url");
        assert_eq!(e.source_var.as_deref(), Some("DATABASE_URL"));
        assert!(
            e.problem.contains("unsupported database scheme \"mysql\""),
            "{e}"
        );
        let e = load_env(&[("SUDEVWA_ENABLE_WEBHOOK", "maybe")]).unwrap_err();
        assert_eq!(e.key, "features.enable_webhook");
        let e = load_env(&[("JWT_SECRET", "short")]).unwrap_err();
        assert_eq!(e.key, "auth.jwt_secret");
        assert!(!e.to_string().contains("short"), "secret echoed: {e}");
        let e = load_env(&[("SUDEVWA_ALLOWED_TARGETS", "10.0.0.0/33")]).unwrap_err();
        assert_eq!(e.key, "webhook.allowed_targets");
        let e = load_env(&[("APP_LOGIN_USERNAME", "admin")]).unwrap_err();
        assert_eq!(e.key, "auth.login_password");
        for e in [load_env(&[("PORT", "x")]).unwrap_err()] {
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn file_overrides_and_rejects_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("sudevwa-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "[server]\nport = 3000\n[whatsapp]\ndevice_name = \"Ops\"\n",
        )
        .unwrap();
        let c = Config::load(&Sources {
            explicit_file: Some(good),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.server.addr.port(), 3000);
        assert_eq!(c.whatsapp.device_name, "Ops");

        let typo = dir.join("typo.toml");
        std::fs::write(&typo, "[server]\nprot = 3000\n").unwrap();
        let e = Config::load(&Sources {
            explicit_file: Some(typo),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "server.prot: unknown key");

        let wrong_type = dir.join("type.toml");
        std::fs::write(&wrong_type, "[server]\nport = \"x\"\n").unwrap();
        let e = Config::load(&Sources {
            explicit_file: Some(wrong_type),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "server.port: expected integer, found string");

        let missing = dir.join("missing.toml");
        let e = Config::load(&Sources {
            explicit_file: Some(missing),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.problem.starts_with("cannot read config file"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn cidr_matching() {
        let net = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(net.contains("127.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!net.contains("128.0.0.1".parse().unwrap()));
        let v6 = Cidr::parse("fe80::/10").unwrap();
        assert!(v6.contains("fe80::1".parse().unwrap()));
        assert!(!v6.contains("2001:db8::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }
}
