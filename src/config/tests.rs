//! Loading, layering and validation of the configuration.

use super::*;
use std::path::Path;

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
    assert_eq!(c.server.addr().to_string(), "127.0.0.1:2121");
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
    assert_eq!(c.server.addr().port(), 8080);
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
    assert_eq!(c.server.addr().port(), 9090);
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
    let e = load_env(&[("PORT", "x")]).unwrap_err();
    assert!(!e.to_string().contains('\n'));
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
    assert_eq!(c.server.addr().port(), 3000);
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

#[test]
fn value_rules_name_the_key_written_and_its_variable() {
    let e = load_env(&[("SUDEVWA_SERVER_SHUTDOWN_GRACE_SECS", "7200")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "server.shutdown_grace_secs (SUDEVWA_SERVER_SHUTDOWN_GRACE_SECS): 7200 is out of range (0-3600 seconds)"
    );
    let e = load_env(&[("SUDEVWA_WEBSOCKET_BUFFER", "0")]).unwrap_err();
    assert_eq!(e.key, "websocket.buffer");
    assert_eq!(e.source_var.as_deref(), Some("SUDEVWA_WEBSOCKET_BUFFER"));
    let key = "k".repeat(31);
    let e = load_env(&[(
        "SUDEVWA_AUTH_ADMIN_API_KEYS",
        &format!("{},{key}", "a".repeat(40)),
    )])
    .unwrap_err();
    assert_eq!(e.key, "auth.admin_api_keys");
    assert!(!e.to_string().contains(&key), "key echoed: {e}");
    let e = load_env(&[("SUDEVWA_WHATSAPP_DEFAULT_COUNTRY_CODE", "62a")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "whatsapp.default_country_code (SUDEVWA_WHATSAPP_DEFAULT_COUNTRY_CODE): must be 1-4 digits, e.g. 62"
    );
    let e = load_env(&[("SUDEVWA_SERVER_SHUTDOWN_GRACE_SECS", "-1")]).unwrap_err();
    assert_eq!(e.key, "server.shutdown_grace_secs");
    assert!(e.problem.contains("negative"), "{e}");
    let e = load_env(&[("SUDEVWA_LIMITS_MAX_MEDIA_IN_FLIGHT_BYTES", "2000000")]).unwrap_err();
    assert_eq!(e.key, "limits.max_media_in_flight_bytes");
    let c = load_env(&[("SUDEVWA_WHATSAPP_CLIENT_VERSION", "2.3000.1")]).unwrap();
    assert_eq!(c.whatsapp.client_version, Some((2, 3000, 1)));
    let e = load_env(&[("SUDEVWA_WHATSAPP_CLIENT_VERSION", "2.x")]).unwrap_err();
    assert_eq!(e.key, "whatsapp.client_version");
}

#[test]
fn unknown_sections_are_refused_and_spool_follows_the_database() {
    let dir = std::env::temp_dir().join(format!("sudevwa-cfg2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("section.toml");
    std::fs::write(&f, "[servr]\nport = 1\n").unwrap();
    let e = Config::load(&Sources {
        explicit_file: Some(f),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.to_string(), "servr: unknown key");
    std::fs::remove_dir_all(&dir).ok();
    let c = load_env(&[("DATABASE_URL", "sqlite:///var/lib/x/db.sqlite")]).unwrap();
    assert_eq!(c.messages.spool_dir, Path::new("/var/lib/x/spool"));
}
