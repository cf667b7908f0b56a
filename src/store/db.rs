//! Opening the database: one pool shared by every instance, migrated before use.
//!
//! SQLite files (and their directory) are created on first start, owner-only (0600 and
//! 0700: they hold WhatsApp private keys); SQLite runs in WAL
//! mode with a busy timeout so the server's writers and readers do not trip over each
//! other. PostgreSQL is used as given.

use crate::config::{DatabaseConfig, DbKind};
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr, TransactionTrait};

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
    if cfg.kind == DbKind::Sqlite {
        no_sqlite_memstatus();
    }
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
        // A pooled SQLite connection is a file handle: there is nothing to ping, and
        // a ping is a round trip to its worker thread on every checkout.
        // (PostgreSQL keeps the ping: after a server restart every pooled connection
        // is dead, however recently used, and the ping replaces it before use.)
        opts.test_before_acquire(false);
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
                .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string())
                .pragma("mmap_size", MMAP_SIZE.to_string())
        });
    }
    if let Some(node) = cfg.fence_node.clone() {
        // Every connection of a cluster node says which node it is: the write fence
        // (crate::cluster) refuses its writes to instances whose lease it lost.
        opts.map_sqlx_postgres_opts(move |o| o.options([("sudevwa.node", node.as_str())]));
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

/// Turns SQLite's memory statistics off, before the first connection opens. They are
/// on by default and take one process-wide mutex around every allocation SQLite makes
/// (page cache, B-tree balancing, statements): the writer connection and the pool's
/// reader threads queued on it under load. Nothing here reads the statistics.
fn no_sqlite_memstatus() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `sqlite3_config` is only allowed before SQLite initialises (it then
        // answers SQLITE_MISUSE and changes nothing); the option takes one int.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                std::ffi::c_int::from(0u8),
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            tracing::debug!(
                rc,
                "SQLite was initialised already; its memory statistics stay on"
            );
        }
    });
}

/// How much of the SQLite file each connection maps into memory: pages are then read
/// straight from the kernel's page cache instead of with one `pread` each (under the
/// send benchmark the writer connection spent most of its time in those system calls:
/// the indexes it writes have random keys, so their pages rarely stay in SQLite's own
/// small cache). Address space, not memory: the kernel shares the pages between
/// connections and drops them as it needs.
pub(super) const MMAP_SIZE: i64 = 1024 * 1024 * 1024;

/// How often the SQLite WAL is copied back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// WAL length (in frames, a page each) from which the checkpointer makes the WAL start
/// over from its beginning (see [`checkpointer`]): 4,096 frames, 16 MiB of 4 KiB pages.
const WAL_RESTART_FRAMES: i64 = 4096;

/// The WAL file is cut back to this size when it starts over (SQLite's
/// `journal_size_limit`), so a burst does not leave a large file behind. Larger than
/// the WAL grows between restarts, so steady load reuses the file's blocks.
pub(super) const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Copies the SQLite WAL back into the database file every [`CHECKPOINT_EVERY`], until
/// the pool is closed. SQLite's automatic checkpoint would run inside the commit that
/// crosses its threshold — while that writer holds the process's write turn, so every
/// other writer waits for the copy and its fsync. A passive checkpoint in a task of its
/// own takes no write lock: writers go on appending meanwhile.
///
/// But the WAL only starts over from its beginning when a writer finds it entirely
/// copied back, and under steady load there is always a commit newer than the last
/// checkpoint: the WAL grew without bound (5 GB in 40 s of the send benchmark), every
/// commit extended the file (block allocation and zeroing in the kernel) and the
/// WAL's index grew with it. So when a passive checkpoint leaves the WAL longer than
/// [`WAL_RESTART_FRAMES`], the checkpointer takes the write turn (which commits the
/// open group transaction) and runs a `RESTART` checkpoint on the writer connection:
/// it copies the few frames written since the passive one and waits for readers still
/// reading the old WAL, so the next commit writes from the WAL's beginning again.
async fn checkpointer(db: DatabaseConnection) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match passive_checkpoint(&db).await {
            Ok(frames) if frames >= WAL_RESTART_FRAMES => {
                if let Err(e) = restart_wal(&db).await {
                    tracing::warn!(error = %e, "SQLite WAL restart failed; retrying");
                }
            }
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

/// A passive checkpoint; answers the WAL's length in frames.
async fn passive_checkpoint(db: &DatabaseConnection) -> Result<i64, DbErr> {
    use sea_orm::ConnectionTrait;
    let st = sea_orm::Statement::from_string(
        sea_orm::DbBackend::Sqlite,
        "PRAGMA wal_checkpoint(PASSIVE)",
    );
    let row = db.query_one_raw(st).await?;
    // (busy, frames in the WAL, frames copied back); -1 when not in WAL mode.
    row.map_or(Ok(0), |r| r.try_get_by_index::<i64>(1))
}

/// Makes the WAL start over (see [`checkpointer`]): under the write turn, a `RESTART`
/// checkpoint on the writer connection, in a blocking thread (it writes and syncs the
/// database file). Nothing to do for a database without a writer connection.
async fn restart_wal(db: &DatabaseConnection) -> Result<(), DbErr> {
    let Some(conn) = super::sync_sqlite::for_pool(db) else {
        return Ok(());
    };
    let _turn = sqlite_turn().await;
    let t0 = sql_stats::clock();
    let res = tokio::task::spawn_blocking(move || conn.restart_wal())
        .await
        .map_err(|e| DbErr::Custom(format!("WAL restart task: {e}")))?;
    sql_stats::phase_since("WAL restarts (holding the turn)", t0);
    res
}

/// Profiling aid (`SUDEVWA_SQL_STATS=1`): counts statements by their SQL text (its first
/// 90 characters; parameters are never looked at, so no value reaches the output) and
/// prints the busiest to stderr every 5 s. Off unless the variable is set. Statements
/// of the SQLite group transaction run on its own connection (`sync_sqlite`), outside
/// sea-orm's metric callback: that connection counts its own into the same table.
pub(super) mod sql_stats {
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

    pub(in crate::store) fn on() -> bool {
        ON.load(Ordering::Relaxed)
    }

    pub(super) fn waited(d: Duration) {
        TURNS.fetch_add(1, Ordering::Relaxed);
        WAIT_NS.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Group commits and the writers they carried.
    static COMMITS: AtomicU64 = AtomicU64::new(0);
    static GROUPED: AtomicU64 = AtomicU64::new(0);

    pub(super) fn committed(writers: usize) {
        COMMITS.fetch_add(1, Ordering::Relaxed);
        GROUPED.fetch_add(writers as u64, Ordering::Relaxed);
    }

    /// Time spent per phase of the writer thread's rounds (and the turn's other holders).
    static PHASES: Mutex<Vec<(&'static str, Duration)>> = Mutex::new(Vec::new());

    pub(in crate::store) fn phase(name: &'static str, d: Duration) {
        let mut g = PHASES.lock().unwrap_or_else(|p| p.into_inner());
        match g.iter_mut().find(|(n, _)| *n == name) {
            Some((_, t)) => *t += d,
            None => g.push((name, d)),
        }
    }

    /// The time now when the stats are on (no clock read when they are off).
    pub(in crate::store) fn clock() -> Option<std::time::Instant> {
        on().then(std::time::Instant::now)
    }

    /// Adds the time since `t0` (from [`clock`]) to phase `name`.
    pub(in crate::store) fn phase_since(name: &'static str, t0: Option<std::time::Instant>) {
        if let Some(t0) = t0 {
            phase(name, t0.elapsed());
        }
    }

    pub(in crate::store) fn held(d: Duration) {
        HOLD_NS.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Counts one statement (by its first 90 characters) and its time.
    pub(in crate::store) fn statement(sql: &str, elapsed: Duration) {
        let sql: String = sql.chars().take(90).collect();
        let mut g = STATS.lock().unwrap_or_else(|p| p.into_inner());
        let e = g.get_or_insert_with(HashMap::new).entry(sql).or_default();
        e.0 += 1;
        e.1 += elapsed;
    }

    pub(super) fn install(db: &mut sea_orm::DatabaseConnection) {
        ON.store(true, Ordering::Relaxed);
        db.set_metric_callback(|info| statement(&info.statement.sql, info.elapsed));
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_secs(5));
            let turns = TURNS.swap(0, Ordering::Relaxed);
            let wait = WAIT_NS.swap(0, Ordering::Relaxed) as f64 / 1e6;
            let hold = HOLD_NS.swap(0, Ordering::Relaxed) as f64 / 1e6;
            eprintln!(
                "sql-stats: {turns} SQLite write turns in 5 s: held {hold:.0} ms ({:.0} % of the time), waited {wait:.0} ms in all",
                hold / 50.0
            );
            let commits = COMMITS.swap(0, Ordering::Relaxed);
            let grouped = GROUPED.swap(0, Ordering::Relaxed);
            eprintln!(
                "sql-stats: {commits} group commits carrying {grouped} writers ({:.1} each)",
                grouped as f64 / commits.max(1) as f64
            );
            let phases = std::mem::take(&mut *PHASES.lock().unwrap_or_else(|p| p.into_inner()));
            for (name, t) in phases {
                eprintln!("sql-stats: {name}: {:.0} ms", t.as_secs_f64() * 1e3);
            }
            let taken = STATS.lock().unwrap_or_else(|p| p.into_inner()).take();
            let Some(stats) = taken else { continue };
            let mut rows: Vec<_> = stats.into_iter().collect();
            rows.sort_by_key(|b| std::cmp::Reverse(b.1 .0));
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
///
/// Behind the turn sits the open **group transaction** (see [`group_write`]): writers
/// that arrive while others wait write into one shared transaction, committed once
/// for all of them.
static SQLITE_WRITER: tokio::sync::Mutex<Group> = tokio::sync::Mutex::const_new(Group {
    open: None,
    next_id: 0,
});

/// What the SQLite write turn guards: the group transaction in progress, if any.
pub(crate) struct Group {
    open: Option<Batch>,
    next_id: u64,
}

/// How a group commit ended, as every writer of the batch sees it.
type Outcome = Option<Result<(), std::sync::Arc<str>>>;

/// One group transaction: `BEGIN IMMEDIATE` on one database's writer connection (see
/// [`BatchTxn`]), the writers who joined it, and the channel their commit result goes
/// out on.
struct Batch {
    id: u64,
    /// Which database (pool) the transaction belongs to.
    pool: usize,
    txn: BatchTxn,
    writers: usize,
    /// An atomic writer ended halfway: the batch is rolled back, not committed.
    poisoned: bool,
    opened: std::time::Instant,
    done: tokio::sync::watch::Sender<Outcome>,
}

/// Where a group transaction's statements run: the database's synchronous writer
/// connection (see [`super::sync_sqlite`]), or a pooled connection for a database
/// that has none (in memory).
enum BatchTxn {
    Sync(std::sync::Arc<super::sync_sqlite::SyncSqlite>),
    Pool(sea_orm::DatabaseTransaction),
}

impl BatchTxn {
    async fn begin(db: &DatabaseConnection) -> Result<Self, DbErr> {
        match super::sync_sqlite::for_pool(db) {
            Some(s) => {
                s.run("BEGIN IMMEDIATE")?;
                Ok(Self::Sync(s))
            }
            None => Ok(Self::Pool(begin_immediate(db).await?)),
        }
    }

    async fn commit(self) -> Result<(), DbErr> {
        match self {
            Self::Sync(s) => s.run("COMMIT").inspect_err(|_| {
                // A failed COMMIT can leave the transaction open: end it, so the next
                // batch begins on a clean connection.
                let _ = s.run("ROLLBACK");
            }),
            Self::Pool(t) => t.commit().await,
        }
    }

    async fn rollback(self) -> Result<(), DbErr> {
        match self {
            Self::Sync(s) => s.run("ROLLBACK"),
            Self::Pool(t) => t.rollback().await,
        }
    }

    fn executor(&self) -> WriteConn<'_> {
        match self {
            Self::Sync(s) => WriteConn(Via::Sync(s)),
            Self::Pool(t) => WriteConn::from(t),
        }
    }
}

/// Where a writer's statements go (see [`Writer::conn`]): the SQLite group
/// transaction's own connection, run synchronously, or sea-orm (PostgreSQL, a writer's
/// own transaction, an in-memory SQLite database). Statements are built with sea-orm's
/// query builders either way.
pub struct WriteConn<'a>(Via<'a>);

enum Via<'a> {
    Sea(sea_orm::DatabaseExecutor<'a>),
    Sync(&'a super::sync_sqlite::SyncSqlite),
}

impl<'a> From<&'a sea_orm::DatabaseTransaction> for WriteConn<'a> {
    fn from(t: &'a sea_orm::DatabaseTransaction) -> Self {
        Self(Via::Sea(sea_orm::DatabaseExecutor::Transaction(t)))
    }
}

impl<'a> From<&'a DatabaseConnection> for WriteConn<'a> {
    fn from(c: &'a DatabaseConnection) -> Self {
        Self(Via::Sea(sea_orm::DatabaseExecutor::Connection(c)))
    }
}

impl<'a> WriteConn<'a> {
    /// The writer connection itself (the writer thread's jobs, [`super::queue`]).
    pub(super) fn sync(s: &'a super::sync_sqlite::SyncSqlite) -> Self {
        Self(Via::Sync(s))
    }
}

impl WriteConn<'_> {
    pub fn backend(&self) -> sea_orm::DbBackend {
        use sea_orm::ConnectionTrait;
        match &self.0 {
            Via::Sea(c) => c.get_database_backend(),
            Via::Sync(_) => sea_orm::DbBackend::Sqlite,
        }
    }

    /// Runs an insert, update or delete; the number of rows it changed.
    pub async fn run<Q: sea_orm::QueryTrait>(&self, q: &Q) -> Result<u64, DbErr> {
        self.run_stmt(q.build(self.backend())).await
    }

    /// Runs a built statement; the number of rows it changed.
    pub async fn run_stmt(&self, st: sea_orm::Statement) -> Result<u64, DbErr> {
        use sea_orm::ConnectionTrait;
        match &self.0 {
            Via::Sea(c) => Ok(c.execute_raw(st).await?.rows_affected()),
            Via::Sync(s) => s.execute(st),
        }
    }

    /// Runs SQL text without parameters; the number of rows it changed.
    pub async fn execute_unprepared(&self, sql: &str) -> Result<u64, DbErr> {
        use sea_orm::ConnectionTrait;
        match &self.0 {
            Via::Sea(c) => Ok(c.execute_unprepared(sql).await?.rows_affected()),
            Via::Sync(s) => s.execute(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Sqlite,
                sql,
            )),
        }
    }

    /// Runs a query (a select, or a statement with `RETURNING`); its rows.
    pub async fn rows<S: sea_orm::StatementBuilder>(&self, q: &S) -> Result<Vec<Row>, DbErr> {
        use sea_orm::ConnectionTrait;
        let st = self.backend().build(q);
        match &self.0 {
            Via::Sea(c) => Ok(c
                .query_all_raw(st)
                .await?
                .into_iter()
                .map(|r| Row(Got::Sea(r)))
                .collect()),
            Via::Sync(s) => Ok(s
                .query(st)?
                .into_iter()
                .map(|r| Row(Got::Sync(r)))
                .collect()),
        }
    }
}

/// A row a writer read (see [`WriteConn::rows`]); columns by name.
pub struct Row(Got);

enum Got {
    Sea(sea_orm::QueryResult),
    Sync(super::sync_sqlite::SyncRow),
}

impl Row {
    /// A column of a row read on the writer connection, as `want` takes it.
    fn sync_get<T>(
        r: &super::sync_sqlite::SyncRow,
        col: &str,
        kind: &str,
        want: impl FnOnce(rusqlite::types::Value) -> Option<T>,
    ) -> Result<T, DbErr> {
        let v = r
            .iter()
            .find(|(n, _)| n == col)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| DbErr::Type(format!("no column {col} in the row")))?;
        let found = v.data_type();
        want(v).ok_or_else(|| DbErr::Type(format!("column {col}: {kind} expected, got {found:?}")))
    }

    pub fn i64(&self, col: &str) -> Result<i64, DbErr> {
        match &self.0 {
            Got::Sea(r) => r.try_get("", col),
            Got::Sync(r) => Self::sync_get(r, col, "an integer", |v| match v {
                rusqlite::types::Value::Integer(i) => Some(i),
                _ => None,
            }),
        }
    }

    pub fn string(&self, col: &str) -> Result<String, DbErr> {
        match &self.0 {
            Got::Sea(r) => r.try_get("", col),
            Got::Sync(r) => Self::sync_get(r, col, "text", |v| match v {
                rusqlite::types::Value::Text(t) => Some(t),
                _ => None,
            }),
        }
    }

    pub fn bytes(&self, col: &str) -> Result<Vec<u8>, DbErr> {
        match &self.0 {
            Got::Sea(r) => r.try_get("", col),
            Got::Sync(r) => Self::sync_get(r, col, "bytes", |v| match v {
                rusqlite::types::Value::Blob(b) => Some(b),
                _ => None,
            }),
        }
    }
}

/// A batch takes at most this many writers, and stays open at most this long; the
/// writer who finds it fuller or older commits it before opening the next. Bounds the
/// extra latency a writer pays for waiting on the others' commit.
const BATCH_WRITERS: usize = 256;
const BATCH_AGE: std::time::Duration = std::time::Duration::from_millis(20);

impl Group {
    /// Whether a writer for pool `pool` (a task's, or a job of the writer thread, see
    /// [`super::queue`]) cannot join the open group transaction (it is for another
    /// pool, or full, or old), so that one must be committed first.
    pub(super) fn stale_for(&self, pool: usize) -> bool {
        self.open.as_ref().is_some_and(|b| {
            b.pool != pool || b.writers >= BATCH_WRITERS || b.opened.elapsed() >= BATCH_AGE
        })
    }

    /// For the writer thread: whether the open group transaction belongs to a database
    /// without a writer connection (in memory, in tests). Its commit is an async round
    /// trip the thread cannot make: the thread gives the turn back to its committer.
    pub(super) fn foreign_open(&self) -> bool {
        self.open
            .as_ref()
            .is_some_and(|b| matches!(b.txn, BatchTxn::Pool(_)))
    }

    /// For the writer thread: joins the open group transaction, or begins one on
    /// `conn` (the writer connection of pool `pool`). Check [`Group::foreign_open`]
    /// and [`Group::stale_for`] first.
    pub(super) fn join_sync(
        &mut self,
        pool: usize,
        conn: &std::sync::Arc<super::sync_sqlite::SyncSqlite>,
    ) -> Result<(), DbErr> {
        if self.open.is_none() {
            conn.run("BEGIN IMMEDIATE")?;
            let id = self.next_id;
            self.next_id += 1;
            self.open = Some(Batch {
                id,
                pool,
                txn: BatchTxn::Sync(conn.clone()),
                writers: 0,
                poisoned: false,
                opened: std::time::Instant::now(),
                done: tokio::sync::watch::Sender::new(None),
            });
        }
        if let Some(b) = self.open.as_mut() {
            b.writers += 1;
        }
        Ok(())
    }

    /// For the writer thread: the open group transaction is rolled back, not committed
    /// (a job ended halfway).
    pub(super) fn poison(&mut self) {
        if let Some(b) = self.open.as_mut() {
            b.poisoned = true;
        }
    }

    /// For the writer thread: commits the open group transaction if it is on a writer
    /// connection (see [`Group::join_sync`]) and answers how it went.
    pub(super) fn commit_sync(&mut self) -> Result<(), std::sync::Arc<str>> {
        use std::future::Future;
        if self.foreign_open() {
            return Ok(());
        }
        let mut flush = std::pin::pin!(self.flush());
        // A writer connection's commit runs synchronously inside `flush`: it is ready
        // on its first poll.
        match flush
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => {
                Err("the group commit did not complete synchronously".into())
            }
        }
    }

    /// Commits the open batch (if any) and tells its writers how it went.
    async fn flush(&mut self) -> Result<(), std::sync::Arc<str>> {
        let Some(b) = self.open.take() else {
            return Ok(());
        };
        {
            sql_stats::committed(b.writers);
            let res = if b.poisoned {
                let _ = b.txn.rollback().await;
                Err("a writer of the group transaction failed halfway; it was rolled back".into())
            } else {
                b.txn.commit().await.map_err(|e| e.to_string().into())
            };
            if let Err(e) = &res {
                tracing::error!(error = %e, writers = b.writers, "SQLite group commit failed");
            }
            b.done.send_replace(Some(res.clone()));
            res
        }
    }
}

/// A write transaction that holds SQLite's write lock from the start (`BEGIN
/// IMMEDIATE`, waiting on the busy timeout; a plain `BEGIN` on PostgreSQL). A deferred
/// transaction that reads first and then writes fails at once with SQLITE_BUSY when
/// another connection writes meanwhile: SQLite cannot wait there without risking a
/// stale read.
pub async fn begin_immediate(
    db: &DatabaseConnection,
) -> Result<sea_orm::DatabaseTransaction, DbErr> {
    db.begin_with_options(sea_orm::TransactionOptions {
        sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

/// Commits the group transaction still open, if any (before the pool closes).
pub async fn settle() {
    let _ = SQLITE_WRITER.lock().await.flush().await;
}

/// Identifies a database of either backend (clones of one `DatabaseConnection` share
/// it), for caches keyed per database.
pub(super) fn database_key(db: &DatabaseConnection) -> usize {
    match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            std::sync::Arc::as_ptr(&db.get_postgres_connection_pool().connect_options()) as usize
        }
        sea_orm::DbBackend::Sqlite => pool_key(db),
        // No other backend is built in; one key for all keeps this total.
        _ => 0,
    }
}

/// Identifies a SQLite pool (clones of one `DatabaseConnection` share it).
pub(super) fn pool_key(db: &DatabaseConnection) -> usize {
    std::sync::Arc::as_ptr(&db.get_sqlite_connection_pool().connect_options()) as usize
}

/// The process's SQLite write turn (see [`SQLITE_WRITER`]); `None` on PostgreSQL,
/// where writers do not exclude each other. Take it before `BEGIN` and hold it until
/// the commit (or around a single-statement write); never take it twice in one task.
/// For writers that write through the pool themselves; hot paths use [`group_write`].
pub async fn write_turn(db: &DatabaseConnection) -> Option<WriteTurn> {
    if db.get_database_backend() == sea_orm::DbBackend::Sqlite {
        Some(sqlite_turn().await)
    } else {
        None
    }
}

/// The SQLite write turn itself (see [`write_turn`]). A group transaction still open
/// is committed first, so the holder writes to a database no other connection holds.
pub async fn sqlite_turn() -> WriteTurn {
    let (mut guard, since) = lock_turn().await;
    let _ = guard.flush().await;
    WriteTurn {
        _guard: guard,
        since,
    }
}

async fn lock_turn() -> (
    tokio::sync::MutexGuard<'static, Group>,
    Option<std::time::Instant>,
) {
    if !sql_stats::on() {
        return (SQLITE_WRITER.lock().await, None);
    }
    let asked = std::time::Instant::now();
    let guard = SQLITE_WRITER.lock().await;
    sql_stats::waited(asked.elapsed());
    (guard, Some(std::time::Instant::now()))
}

/// The SQLite write turn for the writer thread ([`super::queue`]), which is not an
/// async task: it blocks until the turn is free. Returns when it was asked for
/// (under `SUDEVWA_SQL_STATS`, to time it).
pub(super) fn blocking_turn() -> (
    tokio::sync::MutexGuard<'static, Group>,
    Option<std::time::Instant>,
) {
    if !sql_stats::on() {
        return (SQLITE_WRITER.blocking_lock(), None);
    }
    let asked = std::time::Instant::now();
    let guard = SQLITE_WRITER.blocking_lock();
    sql_stats::waited(asked.elapsed());
    (guard, Some(std::time::Instant::now()))
}

/// A held SQLite write turn; released on drop (timed under `SUDEVWA_SQL_STATS`).
pub struct WriteTurn {
    _guard: tokio::sync::MutexGuard<'static, Group>,
    since: Option<std::time::Instant>,
}

impl Drop for WriteTurn {
    fn drop(&mut self) {
        if let Some(t) = self.since {
            sql_stats::held(t.elapsed());
            sql_stats::phase(
                "the turn held by writers outside the writer thread",
                t.elapsed(),
            );
        }
    }
}

/// A writer's access to the database: on SQLite its place in the group transaction
/// (holding the write turn), on PostgreSQL the pool (or a transaction of its own).
///
/// Group commit: a writer takes the turn and, if no group transaction is open, opens
/// one (`BEGIN IMMEDIATE`) and starts a committer that queues for the turn behind the
/// writers waiting at that moment. Each of them writes its statements into the same
/// transaction and gives the turn on; the committer commits once for all.
/// [`Writer::finish`] returns only when the writer's statements are committed, so an
/// acknowledgement that follows it is as durable as with a transaction of its own.
/// Under load, one commit serves tens of writers instead of one each. On a SQLite file
/// the statements run synchronously on the database's writer connection
/// ([`super::sync_sqlite`]), so the turn is held for microseconds per statement rather
/// than a round trip to a connection thread each.
///
/// Failures: a single statement that fails is undone by SQLite on its own; the
/// transaction and the other writers go on. A writer of several statements that must
/// land together calls [`Writer::atomic`] first; if it then ends without
/// [`finish`](Writer::finish) (an error, or its task cancelled), the whole group
/// transaction is rolled back and every writer in it gets an error — nothing is
/// committed half-written, and nobody is told "stored" for a rolled-back write. (A
/// savepoint per writer would isolate it, at two more statements per writer; such
/// failures come from the disk or the database, not from ordinary input, so they are
/// rare enough to share.) A failed commit is every writer's error.
pub struct Writer<'a> {
    db: &'a DatabaseConnection,
    turn: Option<GroupTurn>,
    /// PostgreSQL: the writer's own transaction once [`Writer::atomic`] began it.
    own: Option<sea_orm::DatabaseTransaction>,
    /// SQLite: the writer declared its statements atomic (see [`Writer::atomic`]).
    atomic: bool,
}

struct GroupTurn {
    guard: tokio::sync::MutexGuard<'static, Group>,
    done: tokio::sync::watch::Receiver<Outcome>,
    since: Option<std::time::Instant>,
}

/// Joins (or opens) the group transaction on SQLite; the pool on PostgreSQL. Never
/// take it while holding another write turn in the same task.
pub async fn group_write(db: &DatabaseConnection) -> Result<Writer<'_>, DbErr> {
    if db.get_database_backend() != sea_orm::DbBackend::Sqlite {
        return Ok(Writer {
            db,
            turn: None,
            own: None,
            atomic: false,
        });
    }
    let pool = pool_key(db);
    let (mut guard, since) = lock_turn().await;
    if guard.stale_for(pool) {
        let _ = guard.flush().await;
    }
    if guard.open.is_none() {
        let txn = BatchTxn::begin(db).await?;
        let id = guard.next_id;
        guard.next_id += 1;
        guard.open = Some(Batch {
            id,
            pool,
            txn,
            writers: 0,
            poisoned: false,
            opened: std::time::Instant::now(),
            done: tokio::sync::watch::Sender::new(None),
        });
        // Queues behind the writers waiting now; commits if the batch is still open.
        tokio::spawn(async move {
            let mut g = SQLITE_WRITER.lock().await;
            if g.open.as_ref().is_some_and(|b| b.id == id) {
                let _ = g.flush().await;
            }
        });
    }
    let Some(batch) = guard.open.as_mut() else {
        unreachable!("a batch was opened above")
    };
    batch.writers += 1;
    let done = batch.done.subscribe();
    Ok(Writer {
        db,
        turn: Some(GroupTurn { guard, done, since }),
        own: None,
        atomic: false,
    })
}

impl Writer<'_> {
    /// The group transaction this writer joined (`None` on PostgreSQL); writers that
    /// shared one see the same number.
    pub fn batch(&self) -> Option<u64> {
        self.turn
            .as_ref()
            .and_then(|t| t.guard.open.as_ref())
            .map(|b| b.id)
    }

    /// Declares that this writer's statements land together or not at all: on
    /// PostgreSQL a transaction of its own begins; on SQLite the writer's failure
    /// (ending without [`finish`](Self::finish)) rolls back its group transaction.
    pub async fn atomic(&mut self) -> Result<(), DbErr> {
        if self.turn.is_some() {
            self.atomic = true;
        } else if self.own.is_none() {
            self.own = Some(self.db.begin().await?);
        }
        Ok(())
    }

    /// Where this writer's statements go.
    pub fn conn(&self) -> WriteConn<'_> {
        if let Some(b) = self.turn.as_ref().and_then(|t| t.guard.open.as_ref()) {
            return b.txn.executor();
        }
        // (A held turn always has its batch: only a holder of the turn takes it out.)
        match &self.own {
            Some(txn) => WriteConn::from(txn),
            None => WriteConn::from(self.db),
        }
    }

    /// Gives the turn on and waits until this writer's statements are committed.
    pub async fn finish(mut self) -> Result<(), DbErr> {
        if let Some(txn) = self.own.take() {
            return txn.commit().await;
        }
        let Some(t) = self.turn.take() else {
            return Ok(());
        };
        let GroupTurn {
            guard,
            mut done,
            since,
        } = t;
        drop(guard);
        if let Some(s) = since {
            sql_stats::held(s.elapsed());
        }
        let outcome = done.wait_for(|o| o.is_some()).await.map(|o| o.clone());
        match outcome {
            Ok(Some(Ok(()))) => Ok(()),
            Ok(Some(Err(e))) => Err(DbErr::Custom(format!("group commit failed: {e}"))),
            // The batch was dropped without a commit (its committer gone at shutdown).
            Ok(None) | Err(_) => Err(DbErr::Custom(
                "group commit abandoned; the write is not committed".into(),
            )),
        }
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        // Still holding the turn: `finish` was not reached.
        if let Some(t) = self.turn.as_mut() {
            if self.atomic {
                if let Some(b) = t.guard.open.as_mut() {
                    b.poisoned = true;
                }
            }
        }
    }
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbError> {
    // Nodes of a cluster starting together migrate the same PostgreSQL database at
    // once: the loser of a race fails on what the winner just created, and finds it
    // all applied when it tries again.
    let mut attempt = 0;
    loop {
        match Migrator::up(db, None).await {
            Ok(()) => return Ok(()),
            Err(e) if db.get_database_backend() == sea_orm::DbBackend::Postgres && attempt < 5 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "migrating failed (another node migrating?); trying again");
                tokio::time::sleep(std::time::Duration::from_millis(500 * attempt)).await;
            }
            Err(e) => return Err(DbError::Migrate(e)),
        }
    }
}

/// Connects and migrates: what the server does at start.
pub async fn open(cfg: &DatabaseConfig) -> Result<DatabaseConnection, DbError> {
    let db = connect(cfg).await?;
    migrate(&db).await?;
    Ok(db)
}

/// The marker of a write the cluster's fence refused (see `crate::cluster`).
pub const FENCED: &str = "sudevwa fenced:";

type FencedHook = Box<dyn Fn(&str) + Send + Sync>;

static ON_FENCED: std::sync::OnceLock<FencedHook> = std::sync::OnceLock::new();

/// Called with the instance id whenever a write was refused by the fence (a cluster
/// node stops that instance's client at once). Set once per process.
pub fn on_fenced(hook: impl Fn(&str) + Send + Sync + 'static) {
    let _ = ON_FENCED.set(Box::new(hook));
}

/// If `e` is a write the fence refused: logs it, tells the hook, and returns the
/// instance it was for.
pub fn note_fenced(e: &sea_orm::DbErr) -> Option<String> {
    let text = e.to_string();
    let rest = &text[text.find(FENCED)? + FENCED.len()..];
    // "… instance <id>" (the trigger's message; PostgreSQL may append context).
    let id = rest
        .split_once(" instance ")
        .and_then(|(_, tail)| tail.split_whitespace().next())
        .map(|id| id.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
        .unwrap_or_default()
        .to_string();
    tracing::warn!(instance_id = %id, "fenced write refused: this node no longer holds the instance's lease");
    crate::metrics::fenced_write();
    if let Some(hook) = ON_FENCED.get() {
        hook(&id);
    }
    Some(id)
}
