//! Where the configuration comes from and how the layers combine (with `figment`):
//! built-in defaults, then one config file, then environment variables; and the
//! translation of every failure into a one-line [`ConfigError`] naming key and variable.

use super::{Config, ConfigError};
use figment::providers::Serialized;
use figment::Figment;
use garde::Validate;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The documented defaults, compiled in.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config.toml");

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

/// Defaults → file → environment, then types (serde), value rules (garde) and the rules
/// spanning keys ([`Config::finish`]).
pub(super) fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let defaults = parse_toml(DEFAULT_CONFIG_TOML, "built-in defaults")?;
    let mut figment = Figment::from(Serialized::defaults(&defaults));
    let file = sources
        .explicit_file
        .as_ref()
        .or(sources.default_file.as_ref().filter(|p| p.exists()));
    if let Some(path) = file {
        let origin = path.display().to_string();
        figment = figment.merge(Serialized::defaults(parse_toml(
            &read_file(path)?,
            &origin,
        )?));
    }
    figment = figment.merge(Serialized::defaults(env_layer(&defaults, &sources.env)?));

    let blame = |key: String, problem: String| ConfigError {
        source_var: source_var(&key, &sources.env),
        key,
        problem,
    };
    let config: Config = figment.extract().map_err(|e| {
        let (key, problem) = describe(e);
        blame(key, problem)
    })?;
    if let Err(report) = config.validate() {
        if let Some((path, error)) = report.iter().next() {
            let key = schema_key(&defaults, &path.to_string());
            return Err(blame(key, error.message().to_string()));
        }
    }
    config
        .finish()
        .map_err(|(key, problem)| blame(key.to_string(), problem))
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        key: path.display().to_string(),
        source_var: None,
        problem: format!("cannot read config file: {e}"),
    })
}

fn parse_toml(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError {
        key: origin.to_string(),
        source_var: None,
        problem: format!("not valid TOML: {}", e.message().replace('\n', " ")),
    })
}

/// The environment as one more layer: `SUDEVWA_<SECTION>_<KEY>` and the SUDEVWA aliases
/// (the canonical name wins when both are set), each value read as the type its default
/// has: integers, booleans (true/false, 1/0, yes/no, on/off), comma-separated lists.
fn env_layer(
    defaults: &toml::Table,
    env: &BTreeMap<String, String>,
) -> Result<toml::Table, ConfigError> {
    let mut layer = toml::Table::new();
    let aliases = ALIASES
        .iter()
        .map(|(var, key)| (var.to_string(), key.to_string()));
    let canonical = defaults.iter().flat_map(|(section, keys)| {
        let keys = keys
            .as_table()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or(Vec::new());
        keys.into_iter().map(move |key| {
            let key = format!("{section}.{key}");
            (canonical_var(&key), key)
        })
    });
    for (var, key) in aliases.chain(canonical) {
        let (Some(text), Some((section, name))) = (env.get(&var), key.split_once('.')) else {
            continue;
        };
        let Some(default) = defaults.get(section).and_then(|s| s.get(name)) else {
            continue;
        };
        let value = env_value(default, text).map_err(|problem| ConfigError {
            key: key.clone(),
            source_var: Some(var.clone()),
            problem,
        })?;
        if let toml::Value::Table(sec) = layer
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            sec.insert(name.to_string(), value);
        }
    }
    Ok(layer)
}

/// Converts an environment string to the type the default has.
fn env_value(default: &toml::Value, text: &str) -> Result<toml::Value, String> {
    let t = text.trim();
    Ok(match default {
        toml::Value::Integer(_) => toml::Value::Integer(
            t.parse()
                .map_err(|_| format!("{text:?} is not an integer"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(match t.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                return Err(format!(
                    "{text:?} is not a boolean (true/false, 1/0, yes/no, on/off)"
                ))
            }
        }),
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

/// The key and problem of a type error found while extracting.
fn describe(e: figment::Error) -> (String, String) {
    use figment::error::{Actual, Kind};
    // List positions are not part of a key.
    let path: Vec<&str> = e
        .path
        .iter()
        .map(String::as_str)
        .filter(|p| p.parse::<usize>().is_err())
        .collect();
    let mut key = path.join(".");
    let kind_of = |actual: &Actual| match actual {
        Actual::Bool(_) => "boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "integer",
        Actual::Float(_) => "float",
        Actual::Char(_) | Actual::Str(_) => "string",
        Actual::Seq => "array",
        Actual::Map => "table",
        _ => "value",
    };
    let expected_kind = |expected: &str| {
        if expected.contains("int") || expected.starts_with('u') || expected.starts_with('i') {
            "integer"
        } else if expected.contains("bool") {
            "boolean"
        } else if expected.contains("seq") {
            "array"
        } else if expected.contains("struct") || expected.contains("map") {
            "table"
        } else {
            "string"
        }
    };
    let problem = match &e.kind {
        Kind::UnknownField(field, _) => {
            if path.last() != Some(&field.as_str()) {
                key = if key.is_empty() {
                    field.clone()
                } else {
                    format!("{key}.{field}")
                };
            }
            "unknown key".to_string()
        }
        Kind::InvalidType(actual, expected) => {
            format!(
                "expected {}, found {}",
                expected_kind(expected),
                kind_of(actual)
            )
        }
        Kind::Message(m) => m.replace('\n', " "),
        other => other.to_string(),
    };
    (key, problem)
}

/// A validation path (`server.shutdown_grace`, `auth.admin_api_keys[2]`) as the key an
/// operator writes (`server.shutdown_grace_secs`, `auth.admin_api_keys`).
fn schema_key(defaults: &toml::Table, path: &str) -> String {
    let path = path.split('[').next().unwrap_or(path);
    let Some((section, name)) = path.split_once('.') else {
        return path.to_string();
    };
    let known = |k: &str| defaults.get(section).and_then(|s| s.get(k)).is_some();
    match format!("{name}_secs") {
        secs if !known(name) && known(&secs) => format!("{section}.{secs}"),
        _ => path.to_string(),
    }
}

/// The variable a key was set from, if it was: the canonical name first, then an alias.
fn source_var(key: &str, env: &BTreeMap<String, String>) -> Option<String> {
    let canonical = canonical_var(key);
    if env.contains_key(&canonical) {
        return Some(canonical);
    }
    ALIASES
        .iter()
        .find(|(var, k)| *k == key && env.contains_key(*var))
        .map(|(var, _)| var.to_string())
}

/// `SUDEVWA_<SECTION>_<KEY>` for `section.key`.
fn canonical_var(key: &str) -> String {
    let (s, k) = key.split_once('.').unwrap_or((key, ""));
    format!("SUDEVWA_{}_{}", s.to_uppercase(), k.to_uppercase())
}
