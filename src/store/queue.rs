//! The SQLite writer thread: frequent writes handed over as jobs, run in one group
//! transaction per round, with no turn passed from task to task.
//!
//! Behind the write turn (see [`super::db::group_write`]) every writer used to take the
//! turn itself: under load, ~20 tasks queued on it, and each hand-over woke the next
//! task and waited for a busy async thread to poll it — the turn stood idle about 40 %
//! of the time while the writers' statements took microseconds. Here a writer gives
//! its work to one thread instead, as a closure over [`WriteConn`]; the thread takes
//! the turn once, runs every job waiting in its queue into the open group transaction,
//! commits, and tells each writer how its job ended. The writers build their inputs
//! (rows, JSON, statements) in their own tasks, in parallel, before they hand over.
//!
//! A job's code is the same async code that runs on PostgreSQL (a transaction of its
//! own when atomic, the pool otherwise) and on an in-memory SQLite database (the group
//! transaction, through the turn): on the writer connection its statements execute
//! synchronously, so its future completes on the first poll, which is all the thread
//! gives it. A job that waits on anything else fails (and is undone).
//!
//! An atomic job runs inside a savepoint: if it fails, its own statements are undone
//! and the other jobs of the round are committed as usual.

use super::db::{self, WriteConn};
use super::sync_sqlite::SyncSqlite;
use sea_orm::{DatabaseConnection, DbErr, Statement};
use std::future::Future;
use std::pin::Pin;
use std::sync::{mpsc, Arc, OnceLock};

/// A job's work: its statements on the connection it is given, as a future.
pub type WriteFut<'c, T> = Pin<Box<dyn Future<Output = Result<T, DbErr>> + Send + 'c>>;

/// Called with the outcome of the round's commit: hands the job's result over.
type Deliver = Box<dyn FnOnce(Result<(), Arc<str>>) + Send>;

/// A job for the writer thread: the pool it writes to, that pool's writer connection,
/// and its work (given the connection, or why the work cannot run).
struct Job {
    pool: usize,
    conn: Arc<SyncSqlite>,
    run: Work,
}

/// A job's work, given the writer connection (or why it cannot run).
type Work = Box<dyn FnOnce(Result<&SyncSqlite, DbErr>) -> Deliver + Send>;

/// Runs `f`'s statements as one writer of the group write and returns its result once
/// they are committed. `atomic`: they land together or not at all. On a SQLite file
/// the writer thread runs them (see the module); on PostgreSQL they run on the pool
/// (in a transaction of their own when atomic); on an in-memory SQLite database, in
/// the group transaction behind the turn.
pub async fn write<T, F>(db: &DatabaseConnection, atomic: bool, f: F) -> Result<T, DbErr>
where
    T: Send + 'static,
    F: for<'c> FnOnce(WriteConn<'c>) -> WriteFut<'c, T> + Send + 'static,
{
    if db.get_database_backend() != sea_orm::DbBackend::Sqlite {
        if !atomic {
            return f(WriteConn::from(db)).await;
        }
        use sea_orm::TransactionTrait;
        let txn = db.begin().await?;
        let out = f(WriteConn::from(&txn)).await?;
        txn.commit().await?;
        return Ok(out);
    }
    let Some(conn) = super::sync_sqlite::for_pool(db) else {
        let mut w = db::group_write(db).await?;
        if atomic {
            w.atomic().await?;
        }
        let out = f(w.conn()).await?;
        w.finish().await?;
        return Ok(out);
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = Job {
        pool: db::pool_key(db),
        conn,
        run: Box::new(move |c| run_job(c, atomic, f, tx)),
    };
    if queue().send(job).is_err() {
        return Err(stopped());
    }
    rx.await.unwrap_or_else(|_| Err(stopped()))
}

/// Runs prebuilt statements as one writer (see [`write`]); the rows they changed.
pub async fn write_statements(
    db: &DatabaseConnection,
    atomic: bool,
    statements: Vec<Statement>,
) -> Result<u64, DbErr> {
    if statements.is_empty() {
        return Ok(0);
    }
    write(db, atomic, move |c| {
        Box::pin(async move {
            let mut n = 0;
            for st in statements {
                n += c.run_stmt(st).await?;
            }
            Ok(n)
        })
    })
    .await
}

fn stopped() -> DbErr {
    DbErr::Custom("the SQLite writer thread stopped; the write is not committed".into())
}

/// Runs one job on the writer connection (inside a savepoint when atomic) and answers
/// how to deliver its result once the round is committed.
fn run_job<T, F>(
    c: Result<&SyncSqlite, DbErr>,
    atomic: bool,
    f: F,
    tx: tokio::sync::oneshot::Sender<Result<T, DbErr>>,
) -> Deliver
where
    T: Send + 'static,
    F: for<'c> FnOnce(WriteConn<'c>) -> WriteFut<'c, T>,
{
    let c = match c {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(e));
            return Box::new(|_| {});
        }
    };
    let res = (|| {
        if atomic {
            c.run("SAVEPOINT job")?;
        }
        let mut fut = f(WriteConn::sync(c));
        let polled = fut
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        drop(fut);
        let res = match polled {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => Err(DbErr::Custom(
                "a queued database write waited on something other than the database".into(),
            )),
        };
        if !atomic {
            return res;
        }
        match res {
            Ok(v) => c.run("RELEASE job").map(|_| v),
            Err(e) => {
                // Its own statements undone; the round's other jobs stand.
                let _ = c.run("ROLLBACK TO job");
                let _ = c.run("RELEASE job");
                Err(e)
            }
        }
    })();
    match res {
        Ok(v) => Box::new(move |outcome| {
            let _ = tx.send(
                outcome
                    .map(|()| v)
                    .map_err(|e| DbErr::Custom(format!("group commit failed: {e}"))),
            );
        }),
        Err(e) => {
            let _ = tx.send(Err(e));
            Box::new(|_| {})
        }
    }
}

/// The writer thread's queue (the thread starts with the first job).
fn queue() -> &'static mpsc::Sender<Job> {
    static QUEUE: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        if let Err(e) = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer(rx))
        {
            // Jobs then fail with "stopped" (their receiver is gone): every write
            // answers an error rather than hanging.
            tracing::error!(error = %e, "cannot start the SQLite writer thread");
        }
        tx
    })
}

/// At most this many jobs per round (then the round commits and the turn is offered
/// to the writers that take it themselves).
const ROUND_JOBS: usize = 256;

/// The writer thread: waits for a job, takes the turn, runs every job waiting (up to
/// [`ROUND_JOBS`]) into the open group transaction, commits, delivers.
fn writer(rx: mpsc::Receiver<Job>) {
    let mut next: Option<Job> = None;
    loop {
        let first = match next.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        // Phase times for the SQL-stats aid only: no clock read when it is off.
        use db::sql_stats::{clock, phase_since as phase};
        let asked = clock();
        let (mut turn, since) = db::blocking_turn();
        phase("writer thread: waiting for the turn", asked);
        let mut delivers: Vec<Deliver> = Vec::new();
        let mut foreign = false;
        let mut job = Some(first);
        while let Some(j) = job.take() {
            if turn.foreign_open() {
                // Another database's async batch is open: let its committer run.
                foreign = true;
                next = Some(j);
                break;
            }
            if turn.stale_for(j.pool) {
                if delivers.is_empty() {
                    // Interactive writers' batch, full or old or another pool's.
                    let _ = turn.commit_sync();
                } else {
                    // This round commits first; the job opens the next one.
                    next = Some(j);
                    break;
                }
            }
            let Job { pool, conn, run } = j;
            let t0 = clock();
            match turn.join_sync(pool, &conn) {
                Ok(()) => {
                    let ran =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(Ok(&conn))));
                    match ran {
                        Ok(d) => delivers.push(d),
                        // Its statements may be half done: the round is rolled back
                        // (the job's writer sees its answer channel dropped).
                        Err(_) => turn.poison(),
                    }
                }
                Err(e) => {
                    let _ = run(Err(e));
                }
            }
            phase("writer thread: running jobs", t0);
            if delivers.len() >= ROUND_JOBS {
                break;
            }
            job = rx.try_recv().ok();
        }
        let t0 = clock();
        let outcome = turn.commit_sync();
        drop(turn);
        phase("writer thread: committing", t0);
        if let Some(t) = since {
            db::sql_stats::held(t.elapsed());
        }
        let t0 = clock();
        for d in delivers {
            d(outcome.clone());
        }
        phase("writer thread: delivering answers", t0);
        if foreign {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
