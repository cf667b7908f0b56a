//! The delivery worker: fair batches per instance, retries on the configured schedule,
//! dead-letter after the last (see the module above for the rules).

use super::outbox::{entity, DueRow, Outbox, DEAD, DELIVERED, PENDING};
use super::signature::delivery_headers;
use crate::config::Cidr;
use crate::net::fetch::{self, FetchPolicy};
use crate::store::instances::entity as instance;
use sea_orm::entity::prelude::*;
use sea_orm::ActiveValue::Set;
use sea_orm::QueryTrait;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// How the worker delivers.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Delays between attempts; after the last, the row is dead.
    pub retry_schedule: Vec<Duration>,
    /// Deadline of one attempt.
    pub timeout: Duration,
    pub allowed_targets: Vec<Cidr>,
    pub allowed_ports: Vec<u16>,
    /// Longest sleep between looks at the table (a new event wakes it at once).
    pub poll_interval: Duration,
    /// Attempts in flight at once (over all instances).
    pub max_in_flight: usize,
    /// Pause after a wake-up before the next pass, so a burst's events are read and
    /// delivered together (zero: at once).
    pub linger: Duration,
}

/// The running worker.
pub struct WorkerHandle {
    task: tokio::task::JoinHandle<()>,
    stop: Arc<Notify>,
}

impl WorkerHandle {
    /// Stops looking for work, waits (bounded) for attempts in flight.
    pub async fn shutdown(self, grace: Duration) {
        self.stop.notify_one();
        let _ = tokio::time::timeout(grace, self.task).await;
    }

    /// Stops at once, as a crash would (attempts in flight are abandoned).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// The delivery worker.
pub struct WebhookWorker;

fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.8 + 0.4 * actors::backoff::random_unit())
}

impl WebhookWorker {
    /// Starts delivering due rows of `outbox`; `wake` is the sink's doorbell.
    pub fn spawn(outbox: Outbox, settings: WorkerSettings, wake: Arc<Notify>) -> WorkerHandle {
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(run(outbox, settings, wake, stop.clone()));
        WorkerHandle { task, stop }
    }
}

async fn run(outbox: Outbox, settings: WorkerSettings, wake: Arc<Notify>, stop: Arc<Notify>) {
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    let targets: Targets = Arc::default();
    let max = settings.max_in_flight.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let mut tasks = tokio::task::JoinSet::new();
    let busy_now = |busy: &Mutex<HashSet<String>>| -> Vec<String> {
        busy.lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    };
    // Consecutive batches that ended on a database error (backoff, see below).
    let db_failures = Arc::new(AtomicU32::new(0));
    loop {
        // A pass: the oldest due rows of idle instances in one read, one batch per
        // instance (the longest-waiting first), as many as there are free slots. A
        // full read may have left other instances' rows unread behind one backlog:
        // read again, the instances just started being busy now.
        while slots.available_permits() > 0 {
            let rows = match outbox.due_rows(PASS_ROWS, &busy_now(&busy)).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "reading the webhook outbox failed");
                    break;
                }
            };
            let full = rows.len() as u64 >= PASS_ROWS;
            for (instance_id, ids) in by_instance(rows) {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    break;
                };
                // A cluster: another node may be delivering this instance's rows.
                let hold = settings.timeout * 2 + CLAIM_MARGIN;
                match outbox.claim(&instance_id, hold).await {
                    Ok(true) => {}
                    Ok(false) | Err(_) => {
                        // Skipped for a while (kept among the busy ones meanwhile).
                        busy.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(instance_id.clone());
                        let (busy, id) = (busy.clone(), instance_id.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                        });
                        continue;
                    }
                }
                busy.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(instance_id.clone());
                // The instance may have more due rows than this pass read.
                let more = full || ids.len() as u64 >= BATCH;
                let (outbox, settings, busy, wake, targets) = (
                    outbox.clone(),
                    settings.clone(),
                    busy.clone(),
                    wake.clone(),
                    targets.clone(),
                );
                let db_failures = db_failures.clone();
                tasks.spawn(async move {
                    // In a cluster the rows seen before the claim may have been
                    // delivered since by the node that held it: read the due ones again.
                    let rows = match outbox.is_clustered() {
                        false => outbox.pending_rows(&ids).await,
                        true => outbox.due_of(&instance_id, BATCH, None).await,
                    };
                    let ok = match rows {
                        Ok(rows) => {
                            instance_turn(&outbox, &settings, &targets, &instance_id, rows, more)
                                .await
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "re-reading webhook rows failed");
                            false
                        }
                    };
                    if let Err(e) = outbox.release(&instance_id).await {
                        tracing::warn!(error = %e, "releasing a delivery claim failed (it expires)");
                    }
                    if ok {
                        db_failures.store(0, Ordering::Relaxed);
                    } else {
                        // The database failed: the instance stays busy (so the loop
                        // does not pick it again at once) for a backoff that grows
                        // with consecutive failures, up to 5 s.
                        let n = db_failures.fetch_add(1, Ordering::Relaxed).min(6);
                        tokio::time::sleep(Duration::from_millis(100 << n).min(DB_BACKOFF_MAX))
                            .await;
                    }
                    busy.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&instance_id);
                    drop(permit);
                    // A slot is free and the instance may have more due rows.
                    wake.notify_one();
                });
            }
            if !full {
                break;
            }
        }
        while tasks.try_join_next().is_some() {}
        // Sleep until woken (a new event, a batch ending), the next due time of an
        // idle instance, or the poll interval (a safety net only).
        let mut sleep = settings.poll_interval;
        if slots.available_permits() > 0 {
            if let Ok(Some(next)) = outbox.next_due(&busy_now(&busy)).await {
                let until = Duration::from_millis((next - now_ms()).max(0) as u64);
                sleep = sleep.min(until.max(Duration::from_millis(10)));
            }
        }
        tokio::select! {
            _ = wake.notified() => {
                // Let the events of a burst gather, so one pass and one batch carry
                // several of them instead of a read and an UPDATE per event.
                tokio::time::sleep(settings.linger).await;
            }
            _ = tokio::time::sleep(sleep) => {}
            _ = stop.notified() => {
                while tasks.join_next().await.is_some() {}
                return;
            }
        }
    }
}

/// A cluster node's delivery claim on an instance lasts two attempt deadlines and
/// this (a turn is at most [`BATCH_TURN`] plus one attempt).
const CLAIM_MARGIN: Duration = Duration::from_secs(10);

/// Rows one pass reads, over all idle instances.
const PASS_ROWS: u64 = 512;

/// Rows one batch of an instance takes.
const BATCH: u64 = 256;

/// How long an instance's task goes on taking its own next batches (a backlog) before
/// it gives its slot back to the pass, so backlogs drain without starving others.
const BATCH_TURN: Duration = Duration::from_secs(1);

/// Longest pause of an instance's deliveries after database errors.
const DB_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Successful deliveries recorded per UPDATE.
const RECORD_BATCH: usize = 64;

/// Instances' cached webhook targets: one row read per settings change, not one per
/// batch.
type Targets = Arc<crate::store::instances::WebhookSettingsCache<Target>>;

/// Where an instance's rows go.
#[derive(Clone)]
enum Target {
    Url { url: String, secret: String },
    NotConfigured,
    Deleted,
}

async fn target(outbox: &Outbox, targets: &Targets, instance_id: &str) -> Result<Target, DbErr> {
    targets
        .get_or_load(instance_id, async {
            let row = instance::Entity::find_by_id(instance_id.to_string())
                .one(&outbox.db)
                .await?;
            Ok(match row {
                None => Target::Deleted,
                Some(i) => match i.webhook_url {
                    Some(url) => Target::Url {
                        url,
                        secret: i.webhook_secret.unwrap_or_default(),
                    },
                    None => Target::NotConfigured,
                },
            })
        })
        .await
}

/// Due rows' ids grouped by instance, in the order each instance first appears (its
/// oldest due row), at most [`BATCH`] ids per instance.
fn by_instance(rows: Vec<DueRow>) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for row in rows {
        match out.iter_mut().find(|(id, _)| *id == row.instance_id) {
            Some((_, group)) => {
                if (group.len() as u64) < BATCH {
                    group.push(row.id);
                }
            }
            None => out.push((row.instance_id, vec![row.id])),
        }
    }
    out
}

/// How a batch ended.
enum Batch {
    /// Every row was delivered.
    AllDelivered,
    /// An attempt failed (its row is scheduled for a retry, the rest stay due) or the
    /// instance has no target (its rows are dead-lettered).
    Ended,
    /// The database failed (the caller backs off).
    DbFailed,
}

/// One instance's turn: `first` (read by the pass), then, while batches come full and
/// the turn lasts, its next due rows. `false` when the database failed.
async fn instance_turn(
    outbox: &Outbox,
    settings: &WorkerSettings,
    targets: &Targets,
    instance_id: &str,
    first: Vec<entity::Model>,
    mut more: bool,
) -> bool {
    let started = std::time::Instant::now();
    let mut rows = first;
    loop {
        // The next batch starts where this one ends in due order (see `Outbox::due_of`).
        let from = rows.iter().map(|r| r.next_attempt_at).max();
        match deliver_batch(outbox, settings, targets, instance_id, rows).await {
            Batch::DbFailed => return false,
            Batch::Ended => return true,
            Batch::AllDelivered => {}
        }
        if !more || started.elapsed() >= BATCH_TURN {
            return true;
        }
        rows = match outbox.due_of(instance_id, BATCH, from).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "re-reading webhook rows failed");
                return false;
            }
        };
        if rows.is_empty() {
            return true;
        }
        more = rows.len() as u64 >= BATCH;
    }
}

/// Delivers `rows` of one instance in order, over the pooled client's kept-alive
/// connection: the target comes from the cache, successes are recorded in batches (one
/// UPDATE per batch), and the first failure ends the batch (its row is scheduled for a
/// retry; the rest stay due for the next pass). A crash between a delivery and its
/// record sends that row again (at-least-once, deduplicated by `webhook-id`).
async fn deliver_batch(
    outbox: &Outbox,
    settings: &WorkerSettings,
    targets: &Targets,
    instance_id: &str,
    rows: Vec<entity::Model>,
) -> Batch {
    if rows.is_empty() {
        return Batch::AllDelivered;
    }
    let (url, secret) = match target(outbox, targets, instance_id).await {
        Ok(Target::Url { url, secret }) => (url, secret),
        Ok(t) => {
            let why = match t {
                Target::Deleted => "instance deleted",
                _ => "webhook not configured",
            };
            for row in &rows {
                fail(outbox, settings, row, None, why, true).await;
            }
            return Batch::Ended;
        }
        Err(e) => {
            tracing::error!(error = %e, "loading the webhook target failed");
            return Batch::DbFailed; // stays pending; retried on the next pass
        }
    };
    let policy = FetchPolicy {
        allowed_targets: settings.allowed_targets.clone(),
        allowed_ports: settings.allowed_ports.clone(),
        max_bytes: 64 * 1024,
        timeout: settings.timeout,
        connect_timeout: settings.timeout.min(Duration::from_secs(5)),
        max_redirects: 0,
        gate: None,
    };
    let mut delivered: Vec<(String, u16)> = Vec::new();
    for row in rows {
        let body = row.payload.clone().into_bytes();
        let headers = delivery_headers(&secret, &row.id, chrono::Utc::now().timestamp(), &body);
        match fetch::post(&url, body, &headers, &policy).await {
            Ok(code) if (200..300).contains(&code) => {
                crate::metrics::webhook_attempt("delivered", Some(row.created_at));
                delivered.push((row.id.clone(), code));
                if delivered.len() >= RECORD_BATCH {
                    record_delivered(outbox, std::mem::take(&mut delivered)).await;
                }
            }
            Ok(code) => {
                record_delivered(outbox, std::mem::take(&mut delivered)).await;
                fail(
                    outbox,
                    settings,
                    &row,
                    Some(code),
                    &format!("HTTP {code}"),
                    false,
                )
                .await;
                return Batch::Ended;
            }
            Err(e) => {
                record_delivered(outbox, std::mem::take(&mut delivered)).await;
                fail(outbox, settings, &row, None, &e.to_string(), false).await;
                return Batch::Ended;
            }
        }
    }
    record_delivered(outbox, delivered).await;
    Batch::AllDelivered
}

/// Marks rows delivered: one UPDATE per status code among them.
async fn record_delivered(outbox: &Outbox, rows: Vec<(String, u16)>) {
    let mut by_code: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
    for (id, code) in rows {
        by_code.entry(code).or_default().push(id);
    }
    for (code, ids) in by_code {
        let q = entity::Entity::update_many()
            .col_expr(entity::Column::Status, Expr::value(DELIVERED))
            .col_expr(
                entity::Column::Attempts,
                sea_orm::sea_query::ExprTrait::add(Expr::col(entity::Column::Attempts), 1),
            )
            .col_expr(entity::Column::LastStatusCode, Expr::value(i32::from(code)))
            .col_expr(
                entity::Column::LastError,
                Expr::value(Option::<String>::None),
            )
            .col_expr(entity::Column::DeliveredAt, Expr::value(now_ms()))
            .filter(entity::Column::Id.is_in(ids))
            .build(outbox.db.get_database_backend());
        let r = crate::store::queue::write_statements(&outbox.db, false, vec![q]).await;
        if let Err(e) = r {
            tracing::error!(error = %e, "recording webhook deliveries failed");
        }
    }
}

async fn fail(
    outbox: &Outbox,
    settings: &WorkerSettings,
    row: &entity::Model,
    code: Option<u16>,
    error: &str,
    final_: bool,
) {
    let attempts = row.attempts + 1;
    let delay = settings
        .retry_schedule
        .get((attempts - 1).max(0) as usize)
        .copied();
    let (status, next) = match delay {
        Some(d) if !final_ => (PENDING, now_ms() + jittered(d).as_millis() as i64),
        _ => (DEAD, row.next_attempt_at),
    };
    tracing::info!(event_id = %row.id, instance_id = %row.instance_id, attempts, status, error, "webhook attempt failed");
    crate::metrics::webhook_attempt(
        if status == DEAD {
            "dead_lettered"
        } else {
            "failed"
        },
        None,
    );
    let r = outbox
        .record(
            &row.id,
            entity::ActiveModel {
                status: Set(status.into()),
                attempts: Set(attempts),
                next_attempt_at: Set(next),
                last_status_code: Set(code.map(i32::from)),
                last_error: Set(Some(error.chars().take(200).collect())),
                ..Default::default()
            },
        )
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "recording a webhook failure failed");
    }
}
