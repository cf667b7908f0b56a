//! Opening the database: one pool shared by every instance, migrated before use.
//!
//! SQLite files (and their directory) are created on first start, owner-only (0600 and
//! 0700: they hold WhatsApp private keys); SQLite runs in WAL
//! mode with a busy timeout so the server's writers and readers do not trip over each
//! other. PostgreSQL is used as given.

use crate::config::{DatabaseConfig, DbKind};
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

/// Why the database could not be opened or migrated (the cause, for the operator's log).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create the SQLite file or directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to the database: {0}")]
    Connect(sea_orm::DbErr),
    #[error("database migration failed: {0}")]
    Migrate(sea_orm::DbErr),
}

/// Connects to the configured database (creating a SQLite file if needed). Does not migrate.
pub async fn connect(cfg: &DatabaseConfig) -> Result<DatabaseConnection, DbError> {
    if let Some(path) = &cfg.sqlite_path {
        owner_only(path)?;
    }
    let mut opts = ConnectOptions::new(cfg.url.clone());
    opts.max_connections(cfg.max_connections)
        .acquire_timeout(cfg.acquire_timeout)
        // Statements are logged by sqlx at debug level with their parameters; keep
        // them out of the logs entirely so no key material or body is ever printed.
        .sqlx_logging(false);
    if cfg.kind == DbKind::Sqlite {
        // Per-connection settings, applied to every pooled connection: WAL so readers
        // never block the writer, a busy timeout instead of immediate SQLITE_BUSY.
        opts.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(std::time::Duration::from_secs(10))
                .foreign_keys(true)
                // Checkpoints run in a task of their own (see `checkpointer`), not
                // inside whichever commit crosses the WAL's size threshold.
                .pragma("wal_autocheckpoint", "0")
        });
    }
    let mut db = Database::connect(opts).await.map_err(DbError::Connect)?;
    if std::env::var_os("SUDEVWA_SQL_STATS").is_some() {
        sql_stats::install(&mut db);
    }
    if cfg.kind == DbKind::Sqlite {
        tokio::spawn(checkpointer(db.clone()));
    }
    Ok(db)
}

/// How often the SQLite WAL is copied back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Copies the SQLite WAL back into the database file every [`CHECKPOINT_EVERY`], until
/// the pool is closed. SQLite's automatic checkpoint would run inside the commit that
/// crosses its threshold — while that writer holds the process's write turn, so every
/// other writer waits for the copy and its fsync. A passive checkpoint in a task of its
/// own takes no write lock: writers go on appending meanwhile, and the WAL starts over
/// from its beginning once a checkpoint has caught up with it.
async fn checkpointer(db: DatabaseConnection) {
    use sea_orm::ConnectionTrait;
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match db
            .execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
            .await
        {
            Ok(_) => {}
            Err(sea_orm::DbErr::ConnectionAcquire(
                sea_orm::error::ConnAcquireErr::ConnectionClosed,
            )) => {
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "SQLite checkpoint failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        }
    }
}

/// Profiling aid (`SUDEVWA_SQL_STATS=1`): counts statements by their SQL text (its first
/// 90 characters; parameters are never looked at, so no value reaches the output) and
/// prints the busiest to stderr every 5 s. Off unless the variable is set.
mod sql_stats {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    type Stats = HashMap<String, (u64, Duration)>;
    static STATS: Mutex<Option<Stats>> = Mutex::new(None);
    static ON: AtomicBool = AtomicBool::new(false);
    /// Write turns taken, nanoseconds waited for them and held.
    static TURNS: AtomicU64 = AtomicU64::new(0);
    static WAIT_NS: AtomicU64 = AtomicU64::new(0);
    static HOLD_NS: AtomicU64 = AtomicU64::new(0);

    pub(super) fn on() -> bool {
        ON.load(Ordering::Relaxed)
    }

    pub(super) fn waited(d: Duration) {
        TURNS.fetch_add(1, Ordering::Relaxed);
        WAIT_NS.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(super) fn held(d: Duration) {
        HOLD_NS.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(super) fn install(db: &mut sea_orm::DatabaseConnection) {
        ON.store(true, Ordering::Relaxed);
        db.set_metric_callback(|info| {
            let sql: String = info.statement.sql.chars().take(90).collect();
            let mut g = STATS.lock().unwrap_or_else(|p| p.into_inner());
            let e = g.get_or_insert_with(HashMap::new).entry(sql).or_default();
            e.0 += 1;
            e.1 += info.elapsed;
        });
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_secs(5));
            let turns = TURNS.swap(0, Ordering::Relaxed);
            let wait = WAIT_NS.swap(0, Ordering::Relaxed) as f64 / 1e6;
            let hold = HOLD_NS.swap(0, Ordering::Relaxed) as f64 / 1e6;
            eprintln!(
                "sql-stats: {turns} SQLite write turns in 5 s: held {hold:.0} ms ({:.0} % of the time), waited {wait:.0} ms in all",
                hold / 50.0
            );
            let taken = STATS.lock().unwrap_or_else(|p| p.into_inner()).take();
            let Some(stats) = taken else { continue };
            let mut rows: Vec<_> = stats.into_iter().collect();
            rows.sort_by(|a, b| b.1 .0.cmp(&a.1 .0));
            let total: u64 = rows.iter().map(|r| r.1 .0).sum();
            eprintln!("sql-stats: {total} statements in 5 s");
            for (sql, (n, t)) in rows.iter().take(25) {
                eprintln!("sql-stats: {n:>7} {:>9.1} ms  {sql}", t.as_secs_f64() * 1e3);
            }
        });
    }
}

/// Creates the SQLite file (and its directory, when missing) readable by this user
/// only: it holds every instance's WhatsApp private keys. A directory the operator made
/// is left as it is; the file is made owner-only whether new or not. SQLite gives its
/// `-wal` and `-shm` files the database file's permissions.
fn owner_only(path: &std::path::Path) -> Result<(), DbError> {
    let err = |p: &std::path::Path| {
        let path = p.display().to_string();
        move |source| DbError::CreateDir { path, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(dir).map_err(err(dir))?;
        }
    }
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path).map_err(err(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(err(path))?;
    }
    Ok(())
}

/// SQLite takes one writer at a time. Writers that collide there sleep in its busy
/// handler (1, 2, 5, 10, 15, 20, 25… ms per retry), which under load costs far more
/// than the writes. So every frequent writer (whatsapp-rust's session store, the
/// journal, the webhook outbox) takes this in-process turn first: they queue in FIFO
/// order and SQLite never sees two of them at once. One per process (several SQLite
/// databases in one process, as in tests, only share a queue).
pub(crate) static SQLITE_WRITER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The process's SQLite write turn (see [`SQLITE_WRITER`]); `None` on PostgreSQL,
/// where writers do not exclude each other. Take it before `BEGIN` and hold it until
/// the commit (or around a single-statement write); never take it twice in one task.
pub async fn write_turn(db: &DatabaseConnection) -> Option<WriteTurn> {
    if db.get_database_backend() == sea_orm::DbBackend::Sqlite {
        Some(sqlite_turn().await)
    } else {
        None
    }
}

/// The SQLite write turn itself (see [`write_turn`]).
pub async fn sqlite_turn() -> WriteTurn {
    if !sql_stats::on() {
        return WriteTurn {
            _guard: SQLITE_WRITER.lock().await,
            since: None,
        };
    }
    let asked = std::time::Instant::now();
    let guard = SQLITE_WRITER.lock().await;
    sql_stats::waited(asked.elapsed());
    WriteTurn {
        _guard: guard,
        since: Some(std::time::Instant::now()),
    }
}

/// A held SQLite write turn; released on drop (timed under `SUDEVWA_SQL_STATS`).
pub struct WriteTurn {
    _guard: tokio::sync::MutexGuard<'static, ()>,
    since: Option<std::time::Instant>,
}

impl Drop for WriteTurn {
    fn drop(&mut self) {
        if let Some(t) = self.since {
            sql_stats::held(t.elapsed());
        }
    }
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbError> {
    Migrator::up(db, None).await.map_err(DbError::Migrate)
}

/// Connects and migrates: what the server does at start.
pub async fn open(cfg: &DatabaseConfig) -> Result<DatabaseConnection, DbError> {
    let db = connect(cfg).await?;
    migrate(&db).await?;
    Ok(db)
}
