//! The SQLite group transaction's own connection, driven synchronously.
//!
//! Every frequent write of the process (whatsapp-rust's session store, the journal, the
//! webhook outbox) goes through the group transaction behind the SQLite write turn
//! (see [`super::db::group_write`]). Through sqlx, each of its statements was a round
//! trip to that connection's worker thread and back to the writer's task — a channel
//! hop, a thread wake-up and a wait for the task to be scheduled again on a busy
//! machine, about 0.1 ms — while every other writer waited for the turn. SQLite itself
//! takes microseconds per statement.
//!
//! So the group transaction runs on a connection of its own, opened on the same file
//! with the same settings, and its statements execute right where the writer holding
//! the turn calls them, on that task's thread (sea-orm's proxy interface lets the
//! writers keep building statements with sea-orm). Only the turn's holder ever touches
//! this connection, so its lock is never contended; SQLite's busy timeout still covers
//! the rare writers that write through the pool under the turn's protection.
//!
//! The writers call it through [`super::db::WriteConn`], which runs the same statements
//! through sea-orm on PostgreSQL (and on an in-memory SQLite database, which another
//! connection could not see).

use sea_orm::sea_query::Value;
use sea_orm::{DatabaseConnection, DbErr, RuntimeErr, Statement};
use std::sync::{Arc, Mutex, Weak};

/// A row read on the writer connection: its columns by name, as SQLite stored them.
pub(crate) type SyncRow = Vec<(String, rusqlite::types::Value)>;

/// A file-backed SQLite database's connection for the group transaction.
pub(crate) struct SyncSqlite {
    conn: Mutex<rusqlite::Connection>,
}

impl SyncSqlite {
    /// Runs a statement without parameters (`BEGIN IMMEDIATE`, `COMMIT`, `ROLLBACK`).
    pub(crate) fn run(&self, sql: &str) -> Result<(), DbErr> {
        let _timed = Timed::start(sql);
        let c = self.lock();
        // The same few statements (savepoints, BEGIN, COMMIT) each round: prepared once.
        let mut st = c.prepare_cached(sql).map_err(exec_err)?;
        st.raw_execute().map(|_| ()).map_err(exec_err)
    }

    /// A `RESTART` checkpoint: copies the whole WAL back and waits (busy timeout) for
    /// readers of it, so the next commit writes from the WAL's beginning. Call it
    /// holding the write turn, off the async threads (it syncs the database file).
    pub(crate) fn restart_wal(&self) -> Result<(), DbErr> {
        let c = self.lock();
        let busy: i64 = c
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get(0))
            .map_err(query_err)?;
        if busy != 0 {
            return Err(DbErr::Custom(
                "the WAL could not start over: a reader still needs it".into(),
            ));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        // A panic while holding it leaves a connection that is still usable: SQLite
        // keeps no half-done state across calls.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn exec_err(e: rusqlite::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::Internal(e.to_string()))
}

fn query_err(e: rusqlite::Error) -> DbErr {
    DbErr::Query(RuntimeErr::Internal(e.to_string()))
}

/// One bound parameter, borrowed from sea-orm's value (no copy of text or bytes).
struct Param<'a>(&'a Value);

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput as O, Value as S, ValueRef as R};
        let int = |x: Option<i64>| x.map_or(O::Owned(S::Null), |x| O::Owned(S::Integer(x)));
        Ok(match self.0 {
            Value::Bool(b) => int(b.map(i64::from)),
            Value::TinyInt(x) => int(x.map(i64::from)),
            Value::SmallInt(x) => int(x.map(i64::from)),
            Value::Int(x) => int(x.map(i64::from)),
            Value::BigInt(x) => int(*x),
            Value::TinyUnsigned(x) => int(x.map(i64::from)),
            Value::SmallUnsigned(x) => int(x.map(i64::from)),
            Value::Unsigned(x) => int(x.map(i64::from)),
            Value::BigUnsigned(x) => match x {
                None => O::Owned(S::Null),
                Some(x) => {
                    O::Owned(S::Integer(i64::try_from(*x).map_err(|e| {
                        rusqlite::Error::ToSqlConversionFailure(Box::new(e))
                    })?))
                }
            },
            Value::Float(x) => x.map_or(O::Owned(S::Null), |x| O::Owned(S::Real(x.into()))),
            Value::Double(x) => x.map_or(O::Owned(S::Null), |x| O::Owned(S::Real(x))),
            Value::String(s) => s
                .as_ref()
                .map_or(O::Owned(S::Null), |s| O::Borrowed(R::Text(s.as_bytes()))),
            Value::Char(c) => c.map_or(O::Owned(S::Null), |c| O::Owned(S::Text(c.to_string()))),
            Value::Bytes(b) => b
                .as_ref()
                .map_or(O::Owned(S::Null), |b| O::Borrowed(R::Blob(b))),
            // Dates, JSON and the like: the entities written here store none (the
            // message says which kind, never the value).
            _ => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    "the SQLite writer binds integers, reals, text and bytes only".into(),
                ))
            }
        })
    }
}

/// Times a statement for the SQL-stats profiling aid (`SUDEVWA_SQL_STATS`), when on.
struct Timed<'a>(Option<(&'a str, std::time::Instant)>);

impl<'a> Timed<'a> {
    fn start(sql: &'a str) -> Self {
        Self(super::db::sql_stats::on().then(|| (sql, std::time::Instant::now())))
    }
}

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        if let Some((sql, t)) = self.0 {
            super::db::sql_stats::statement(sql, t.elapsed());
        }
    }
}

fn params(stmt: &Statement) -> Vec<Param<'_>> {
    stmt.values
        .as_ref()
        .map(|v| v.0.iter().map(Param).collect())
        .unwrap_or_default()
}

impl SyncSqlite {
    /// Runs a query; its rows.
    pub(crate) fn query(&self, statement: Statement) -> Result<Vec<SyncRow>, DbErr> {
        let _timed = Timed::start(&statement.sql);
        let args = params(&statement);
        let c = self.lock();
        let mut st = c.prepare_cached(&statement.sql).map_err(query_err)?;
        let cols: Vec<String> = st.column_names().into_iter().map(String::from).collect();
        let mut rows = st
            .query(rusqlite::params_from_iter(args.iter()))
            .map_err(query_err)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(query_err)? {
            let mut row = Vec::with_capacity(cols.len());
            for (i, name) in cols.iter().enumerate() {
                row.push((name.clone(), r.get(i).map_err(query_err)?));
            }
            out.push(row);
        }
        Ok(out)
    }

    /// Runs a statement; the number of rows it changed.
    pub(crate) fn execute(&self, statement: Statement) -> Result<u64, DbErr> {
        let _timed = Timed::start(&statement.sql);
        let args = params(&statement);
        let c = self.lock();
        let mut st = c.prepare_cached(&statement.sql).map_err(exec_err)?;
        let n = st
            .execute(rusqlite::params_from_iter(args.iter()))
            .map_err(exec_err)?;
        Ok(n as u64)
    }
}

/// Opens the synchronous connection to the file behind `opts`; `None` for an
/// in-memory database (another connection would see a different one) or when opening
/// fails (logged; the group transaction then runs on the pool as before).
fn open(opts: &sea_orm::sqlx::sqlite::SqliteConnectOptions) -> Option<SyncSqlite> {
    let path = opts.get_filename();
    let text = path.to_string_lossy();
    if text.is_empty() || text.starts_with(":memory:") || text.starts_with("file:") {
        return None;
    }
    let opened = (|| {
        let c = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // The pool's settings (see `db::connect`): WAL, synchronous NORMAL, the busy
        // timeout, foreign keys, checkpoints left to the checkpointer task, the WAL cut
        // back to its limit when it starts over (this connection is the one writing then).
        // Its own: temporary files — the savepoints' sub-journals — in memory. (A
        // larger page cache was tried: SQLite walks all of it at every transaction's
        // end, which cost more than the page reads it saved.) The file mapped into
        // memory like the pool's (see `db::MMAP_SIZE`).
        c.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {}; PRAGMA temp_store = MEMORY; PRAGMA mmap_size = {};",
            super::db::WAL_SIZE_LIMIT,
            super::db::MMAP_SIZE
        ))?;
        c.busy_timeout(std::time::Duration::from_secs(10))?;
        c.set_prepared_statement_cache_capacity(256);
        Ok::<_, rusqlite::Error>(c)
    })();
    let c = match opened {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open SQLite's writer connection; writes go through the pool");
            return None;
        }
    };
    Some(SyncSqlite {
        conn: Mutex::new(c),
    })
}

type Registry = Vec<(
    Weak<sea_orm::sqlx::sqlite::SqliteConnectOptions>,
    Option<Arc<SyncSqlite>>,
)>;

/// The synchronous connections opened so far, one per SQLite pool (several in tests).
static OPENED: Mutex<Registry> = Mutex::new(Vec::new());

/// The synchronous connection of the SQLite pool behind `db` (opened on first use);
/// `None` for an in-memory database.
pub(crate) fn for_pool(db: &DatabaseConnection) -> Option<Arc<SyncSqlite>> {
    let opts = db.get_sqlite_connection_pool().connect_options();
    let mut reg = OPENED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, s)) = reg
        .iter()
        .find(|(w, _)| w.upgrade().is_some_and(|o| Arc::ptr_eq(&o, &opts)))
    {
        return s.clone();
    }
    // Pools closed since are forgotten (and their connections closed).
    reg.retain(|(w, _)| w.strong_count() > 0);
    let s = open(&opts).map(Arc::new);
    reg.push((Arc::downgrade(&opts), s.clone()));
    s
}
