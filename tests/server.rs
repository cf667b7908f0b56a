//! The server binary as an operator runs it: start, health, SQLite file, Ctrl-C,
//! `migrate`, PostgreSQL, and one-line errors for bad configuration.
//!
//! Each test spawns the real binary in its own temp directory with a clean environment
//! and port 0, reads the `listening on` line, and waits on conditions with deadlines.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sudevwa");
const DEADLINE: Duration = Duration::from_secs(60);

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sudevwa-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

fn command(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .env_clear()
        .env("PORT", "0")
        .env("RUST_LOG", "warn")
        .args(args);
    // The tests run a sandbox build (tests/run.sh), which serves only in sandbox mode.
    if cfg!(feature = "sandbox") && !args.contains(&"migrate") {
        c.arg("--sandbox");
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// A running server; killed on drop if a test fails midway.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, env: &[(&str, &str)]) -> Server {
    let mut child = command(dir, env, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sudevwa");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Other lines may come first (generated login credentials on a first start).
    let line = loop {
        let line = rx
            .recv_timeout(DEADLINE)
            .expect("server printed its address before the deadline");
        if line.starts_with("listening on ") {
            break line;
        }
    };
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    Server {
        child,
        base: addr.to_string(),
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < until,
            "server did not exit before the deadline"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn interrupt(child: &Child) {
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -INT failed");
}

async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::get(url).await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json body"))
}

#[tokio::test]
async fn fresh_start_creates_sqlite_answers_health_and_stops_on_ctrl_c() {
    let dir = temp_dir("fresh");
    let mut server = start(&dir, &[]);
    assert!(
        dir.join("data/sudevwa.db").exists(),
        "SQLite file created under ./data/"
    );

    let (status, body) = get_json(&format!("{}/", server.base)).await;
    assert_eq!(status, 200);
    assert_eq!(body["success"], true);
    assert_eq!(body["message"], "WhatsApp API is running");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));

    let (status, body) = get_json(&format!("{}/no/such/route", server.base)).await;
    assert_eq!(status, 404);
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "NOT_FOUND");

    interrupt(&server.child);
    let status = wait_exit(&mut server.child);
    assert!(status.success(), "clean exit on Ctrl-C, got {status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn restart_reuses_the_same_database() {
    let dir = temp_dir("restart");
    for _ in 0..2 {
        let mut server = start(&dir, &[]);
        let (status, _) = get_json(&format!("{}/", server.base)).await;
        assert_eq!(status, 200);
        interrupt(&server.child);
        assert!(wait_exit(&mut server.child).success());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_configuration_is_one_line_and_nonzero_exit() {
    let dir = temp_dir("badcfg");
    std::fs::write(dir.join("typo.toml"), "[server]\nprot = 1\n").unwrap();
    let cases: &[(&[(&str, &str)], &[&str], &str)] = &[
        (
            &[("DATABASE_URL", "mysql://u:p@127.0.0.1/db")],
            &[],
            "database.url (DATABASE_URL): unsupported database scheme",
        ),
        (
            &[],
            &["--config", "/nonexistent/sudevwa.toml"],
            "/nonexistent/sudevwa.toml: cannot read config file",
        ),
        (&[("PORT", "abc")], &[], "server.port (PORT):"),
        (
            &[("PORT", "70000")],
            &[],
            "server.port (PORT): invalid port 70000",
        ),
        (
            &[("SUDEVWA_SERVER_PORT", "-1")],
            &[],
            "server.port (SUDEVWA_SERVER_PORT): invalid port -1",
        ),
        (&[], &["--config", "typo.toml"], "server.prot: unknown key"),
        (
            &[("SUDEVWA_ENABLE_WEBHOOK", "perhaps")],
            &[],
            "features.enable_webhook (SUDEVWA_ENABLE_WEBHOOK):",
        ),
    ];
    for (env, args, expected) in cases {
        let out = command(&dir, env, args).output().expect("run sudevwa");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "exit code for {env:?} {args:?}: {stderr}"
        );
        assert_eq!(
            stderr.lines().count(),
            1,
            "one line for {env:?} {args:?}: {stderr:?}"
        );
        assert!(
            stderr.starts_with("sudevwa: config error: ") && stderr.contains(expected),
            "{stderr:?} should name {expected:?}"
        );
        assert!(
            !dir.join("data").exists(),
            "nothing created on a config error"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreachable_database_is_one_line_and_nonzero_exit() {
    let dir = temp_dir("nodb");
    // Port 1 on loopback: nothing listens there.
    let out = command(
        &dir,
        &[
            ("DATABASE_URL", "postgres://u:p@127.0.0.1:1/db"),
            ("SUDEVWA_DATABASE_ACQUIRE_TIMEOUT_SECS", "2"),
        ],
        &[],
    )
    .output()
    .expect("run sudevwa");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("sudevwa: cannot connect to the database"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("u:p@"),
        "credentials must not be printed: {stderr}"
    );
}

#[test]
fn migrate_subcommand_creates_every_table() {
    let dir = temp_dir("migrate");
    let out = command(&dir, &[], &["migrate"])
        .output()
        .expect("run migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "migrations applied"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('select count(*) from seaql_migrations').fetchone()[0]); print(','.join(r[0] for r in c.execute(\"select name from sqlite_master where type='table' order by name\")))")
        .arg(dir.join("data/sudevwa.db"))
        .output()
        .expect("python3 sqlite3");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let expected = migration_count().to_string();
    assert_eq!(
        lines.next(),
        Some(expected.as_str()),
        "every migration recorded: {text}"
    );
    let tables = lines.next().unwrap_or_default();
    for t in [
        "instances",
        "api_tokens",
        "settings",
        "webhook_outbox",
        "messages",
        "message_status",
        "events",
        "idempotency_keys",
    ] {
        assert!(tables.split(',').any(|x| x == t), "table {t} in {tables}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn runs_on_postgresql() {
    let admin_url = std::env::var("SUDEVWA_TEST_POSTGRES_URL").expect(
        "SUDEVWA_TEST_POSTGRES_URL must point at a PostgreSQL server: run the suite with tests/run.sh",
    );
    let name = format!("sudevwa_server_it_{}", std::process::id());
    let admin = sea_orm::Database::connect(&admin_url)
        .await
        .expect("connect to PostgreSQL");
    use sea_orm::ConnectionTrait;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .expect("drop old test db");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test db");
    let (base_url, _) = admin_url.rsplit_once('/').expect("url has a database part");
    let url = format!("{base_url}/{name}");

    let dir = temp_dir("pg");
    let mut server = start(&dir, &[("DATABASE_URL", &url)]);
    let (status, body) = get_json(&format!("{}/", server.base)).await;
    assert_eq!(status, 200);
    assert_eq!(body["success"], true);
    assert!(
        !dir.join("data").exists(),
        "no SQLite file when PostgreSQL is configured"
    );
    interrupt(&server.child);
    assert!(wait_exit(&mut server.child).success());

    let db = sea_orm::Database::connect(&url)
        .await
        .expect("connect test db");
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT count(*) AS n FROM seaql_migrations",
        ))
        .await
        .expect("query")
        .expect("one row");
    let n: i64 = row.try_get("", "n").expect("count");
    assert_eq!(
        n,
        migration_count() as i64,
        "every migration applied on PostgreSQL"
    );
    db.close().await.ok();
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .ok();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A sandbox build (it carries the mock's certificate-check skip) never serves outside
/// sandbox mode: started without `--sandbox` it stops at once with one clear line.
#[cfg(feature = "sandbox")]
#[test]
fn sandbox_build_without_sandbox_flag_refuses_to_start() {
    let dir = temp_dir("sandbox-refuses");
    let out = Command::new(BIN)
        .current_dir(&dir)
        .env_clear()
        .env("PORT", "0")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run sudevwa");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sandbox build") && err.contains("--sandbox"),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "it never listened"
    );
    assert!(
        !dir.join("data/sudevwa.db").exists(),
        "no database was created either"
    );
}

/// The SQLite file holds every instance's private keys: owner-only, and so are its WAL
/// files and the directory the server made for it.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("perms");
    let mut server = start(&dir, &[]);
    let (status, _) = get_json(&format!("{}/", server.base)).await;
    assert_eq!(status, 200);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("data")), 0o700, "the data directory");
    for f in ["sudevwa.db", "sudevwa.db-wal", "sudevwa.db-shm"] {
        let p = dir.join("data").join(f);
        if f == "sudevwa.db" || p.exists() {
            assert_eq!(mode(&p), 0o600, "{f}");
        }
    }
    interrupt(&server.child);
    assert!(wait_exit(&mut server.child).success());
}

/// A damaged stored login hash stops the start with one line, instead of a server on
/// which every login silently fails.
#[test]
fn corrupt_stored_login_hash_stops_the_start() {
    let dir = temp_dir("corrupt-login");
    // `migrate` creates the tables; the row is then damaged by hand.
    let out = command(&dir, &[], &["migrate"])
        .output()
        .expect("run migrate");
    assert!(out.status.success(), "{out:?}");
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"insert into settings(key,value,updated_at) values('login:admin','pbkdf2-sha256$100000$salt$not-hex',0)\"); c.commit()")
        .arg(dir.join("data/sudevwa.db"))
        .output()
        .expect("python3 sqlite3");
    assert!(out.status.success(), "{out:?}");
    let out = command(&dir, &[], &[])
        .stdin(Stdio::null())
        .output()
        .expect("run sudevwa");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("sudevwa: "))
        .unwrap_or_default();
    assert!(
        line.contains("corrupt") && line.contains("login:admin"),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "it never listened"
    );
}

/// How many migrations the project has.
fn migration_count() -> usize {
    use migration::MigratorTrait;
    migration::Migrator::migrations().len()
}
