//! Durable webhooks: every event an instance's webhook takes is written to the
//! `webhook_outbox` table in the same transaction that stores it in the event log
//! ([`crate::store::journal::Journal`]), then a worker ([`WebhookWorker`]) delivers it.
//!
//! Delivery: `POST` of the stored bytes (the event's envelope with its cursor,
//! serialized once at enqueue time, so every retry sends identical bytes) with
//! `X-SUDEVWA-Signature` (lowercase hex HMAC-SHA256 of the raw body with the
//! instance's secret), `webhook-id` (the row id, stable across retries),
//! `webhook-timestamp` (unix seconds of the attempt) and `webhook-signature` (Standard
//! Webhooks, over `id.timestamp.body`; see [`delivery_headers`]). A 2xx answer is delivered;
//! anything else, a timeout or a connection error is retried after the configured
//! schedule (±20 % jitter); after the last delay the row is `dead` (dead-letter) and
//! can be queued again with [`Outbox::redeliver`]. Webhook URLs pass the same SSRF
//! checks as media URLs ([`crate::net::fetch::post`]).
//!
//! Crash safety: rows are claimed from the database, so a process killed hard leaves
//! them `pending` and the next start delivers them (at-least-once; receivers drop
//! duplicates by `webhook-id`). Isolation and fairness: each pass of the worker takes
//! one entry per instance with due rows (the longest-waiting instances first, as many
//! as there are free slots of `max_in_flight`), never a batch of rows one tenant's
//! backlog can fill; each instance's batch (its oldest due rows, delivered in order over
//! one kept-alive connection, successes recorded 64 per UPDATE) runs beside the others,
//! so a slow or dead endpoint holds up only its own instance, and another instance's
//! event waits at most one attempt timeout even when every slot is taken. The worker
//! sleeps until a new event or a finished batch wakes it (or the next retry is due).
//! Retention: a delivered or dead row keeps its payload for
//! `webhook.payload_retention_secs`, then only its metadata; deleting an instance
//! deletes its rows. Redelivery by an instance token goes only to the URL the row was
//! queued for (`target`). This is single-node: two processes on one database
//! could both send a due row (a lease column would fence that; see the README).

use crate::config::Cidr;
use crate::net::fetch::{self, FetchPolicy};
use crate::store::instances::entity as instance;
use actors::events::IncomingMessage;
use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, DatabaseConnection, QueryOrder, QuerySelect};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// The `webhook_outbox` row.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// One event to deliver.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_outbox")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub instance_id: String,
        pub event: String,
        pub payload: String,
        /// `pending`, `delivered` or `dead`.
        pub status: String,
        pub attempts: i32,
        pub next_attempt_at: i64,
        pub last_status_code: Option<i32>,
        pub last_error: Option<String>,
        pub created_at: i64,
        pub delivered_at: Option<i64>,
        /// The webhook URL the row was queued for (`None`: queued before this was kept).
        pub target: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const DEAD: &str = "dead";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The outbox table.
#[derive(Clone, Debug)]
pub struct Outbox {
    db: DatabaseConnection,
}

impl Outbox {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Writes `msg` for delivery if its instance has a webhook; returns the event id.
    pub async fn enqueue(&self, msg: &IncomingMessage) -> Result<Option<String>, DbErr> {
        let Some(row) = instance::Entity::find_by_id(msg.instance_id.clone())
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        if row.webhook_url.is_none() {
            return Ok(None);
        }
        let id = format!("evt_{}", hex::encode(rand::random::<[u8; 16]>()));
        let now = now_ms();
        entity::Entity::insert(entity::ActiveModel {
            id: Set(id.clone()),
            instance_id: Set(msg.instance_id.clone()),
            event: Set("incoming_message".into()),
            payload: Set(msg.to_envelope().to_string()),
            status: Set(PENDING.into()),
            attempts: Set(0),
            next_attempt_at: Set(now),
            last_status_code: Set(None),
            last_error: Set(None),
            created_at: Set(now),
            delivered_at: Set(None),
            target: Set(row.webhook_url.clone()),
        })
        .exec_without_returning(&self.db)
        .await?;
        Ok(Some(id))
    }

    /// Instances with due rows, not in `busy`, the longest-waiting first: at most
    /// `limit` of them. One entry per instance, however many rows it has queued, so a
    /// tenant's backlog cannot crowd others out of a pass.
    async fn due_instances(&self, limit: u64, busy: &[String]) -> Result<Vec<String>, DbErr> {
        use sea_orm::sea_query::{Alias, Order};
        let mut q = entity::Entity::find()
            .select_only()
            .column(entity::Column::InstanceId)
            .expr_as(
                sea_orm::sea_query::Func::min(Expr::col(entity::Column::NextAttemptAt)),
                "first_due",
            )
            .filter(entity::Column::Status.eq(PENDING))
            .filter(entity::Column::NextAttemptAt.lte(now_ms()));
        if !busy.is_empty() {
            q = q.filter(entity::Column::InstanceId.is_not_in(busy.iter().cloned()));
        }
        let rows: Vec<(String, i64)> = q
            .group_by(entity::Column::InstanceId)
            .order_by(Expr::col(Alias::new("first_due")), Order::Asc)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|(id, _)| id).collect())
    }

    /// The oldest due rows of one instance, at most `limit`.
    async fn due_of(&self, instance_id: &str, limit: u64) -> Result<Vec<entity::Model>, DbErr> {
        entity::Entity::find()
            .filter(entity::Column::InstanceId.eq(instance_id))
            .filter(entity::Column::Status.eq(PENDING))
            .filter(entity::Column::NextAttemptAt.lte(now_ms()))
            .order_by_asc(entity::Column::NextAttemptAt)
            .order_by_asc(entity::Column::CreatedAt)
            .limit(limit)
            .all(&self.db)
            .await
    }

    /// The earliest time a pending row of an instance not in `busy` becomes due, if
    /// any (a busy instance's batch wakes the worker when it ends).
    async fn next_due(&self, busy: &[String]) -> Result<Option<i64>, DbErr> {
        let mut q = entity::Entity::find().filter(entity::Column::Status.eq(PENDING));
        if !busy.is_empty() {
            q = q.filter(entity::Column::InstanceId.is_not_in(busy.iter().cloned()));
        }
        Ok(q.order_by_asc(entity::Column::NextAttemptAt)
            .one(&self.db)
            .await?
            .map(|r| r.next_attempt_at))
    }

    async fn record(&self, id: &str, update: entity::ActiveModel) -> Result<(), DbErr> {
        let _turn = crate::store::db::write_turn(&self.db).await;
        entity::Entity::update_many()
            .set(update)
            .filter(entity::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// One row.
    pub async fn get(&self, id: &str) -> Result<Option<entity::Model>, DbErr> {
        entity::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
    }

    /// Recent rows of an instance, newest first.
    pub async fn list(&self, instance_id: &str, limit: u64) -> Result<Vec<entity::Model>, DbErr> {
        entity::Entity::find()
            .filter(entity::Column::InstanceId.eq(instance_id))
            .order_by_desc(entity::Column::CreatedAt)
            .order_by_desc(entity::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
    }

    /// Queues a row again (attempts reset), if `rule` allows it.
    pub async fn redeliver_checked(
        &self,
        instance_id: &str,
        id: &str,
        rule: &crate::http::RedeliverRule,
    ) -> Result<crate::http::Redelivery, DbErr> {
        use crate::http::Redelivery;
        let Some(row) = self.get(id).await?.filter(|r| r.instance_id == instance_id) else {
            return Ok(Redelivery::NotFound);
        };
        if row.payload.is_empty() {
            return Ok(Redelivery::PayloadExpired);
        }
        // An instance token may send an event again only to the URL it was queued for:
        // never old message bodies to a URL set since.
        if !rule.admin && (row.target.is_none() || row.target != rule.current_url) {
            return Ok(Redelivery::UrlChanged);
        }
        Ok(if self.redeliver(instance_id, id).await? {
            Redelivery::Queued
        } else {
            Redelivery::NotFound
        })
    }

    /// Queues a row again (attempts reset); `false` when the instance has no such row.
    pub async fn redeliver(&self, instance_id: &str, id: &str) -> Result<bool, DbErr> {
        let _turn = crate::store::db::write_turn(&self.db).await;
        let r = entity::Entity::update_many()
            .col_expr(entity::Column::Status, Expr::value(PENDING))
            .col_expr(entity::Column::Attempts, Expr::value(0))
            .col_expr(entity::Column::NextAttemptAt, Expr::value(now_ms()))
            .filter(entity::Column::Id.eq(id))
            .filter(entity::Column::InstanceId.eq(instance_id))
            .filter(entity::Column::Payload.ne(""))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected > 0)
    }
}

fn ms_to_rfc3339(ms: Option<i64>) -> Value {
    json!(ms
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(actors::events::rfc3339))
}

/// A row as the delivery log shows it (no payload: it holds message bodies).
pub fn delivery_json(r: &entity::Model) -> Value {
    json!({
        "id": r.id,
        "event": r.event,
        "status": r.status,
        "attempts": r.attempts,
        "last_status_code": r.last_status_code,
        "last_error": r.last_error,
        "created_at": ms_to_rfc3339(Some(r.created_at)),
        "next_attempt_at": if r.status == PENDING { ms_to_rfc3339(Some(r.next_attempt_at)) } else { Value::Null },
        "delivered_at": ms_to_rfc3339(r.delivered_at),
    })
}

#[async_trait]
impl crate::http::DeliveryLog for Outbox {
    async fn recent(&self, instance_id: &str, limit: u64) -> Result<Vec<Value>, DbErr> {
        Ok(self
            .list(instance_id, limit)
            .await?
            .iter()
            .map(delivery_json)
            .collect())
    }

    async fn redeliver(
        &self,
        instance_id: &str,
        id: &str,
        rule: &crate::http::RedeliverRule,
    ) -> Result<crate::http::Redelivery, DbErr> {
        self.redeliver_checked(instance_id, id, rule).await
    }
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

/// The headers of one attempt. With a secret: `X-SUDEVWA-Signature` (SUDEVWA's, over the
/// body) and `webhook-signature` (Standard Webhooks: over `id.timestamp.body`, so a
/// receiver can refuse a replay with an old timestamp). Without one (a webhook stored
/// before secrets were always generated) no signature header is sent at all, rather
/// than one made with an empty key.
pub fn delivery_headers(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("content-type", "application/json".to_string()),
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", timestamp.to_string()),
    ];
    if !secret.is_empty() {
        h.push(("x-sudevwa-signature", signature(secret, body)));
        h.push((
            "webhook-signature",
            standard_signature(secret, id, timestamp, body),
        ));
    }
    h
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed with the secret's bytes: a
/// Standard Webhooks verifier takes the key as [`standard_secret`].
pub fn standard_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine;
    // HMAC accepts keys of any length.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// The webhook secret as Standard Webhooks libraries take it: `whsec_` and the base64
/// of the secret's bytes.
pub fn standard_secret(secret: &str) -> String {
    use base64::Engine;
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(secret.as_bytes())
    )
}

/// Lowercase hex HMAC-SHA256 of `body` with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

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
    loop {
        // One batch per idle instance with due rows, the longest-waiting instances
        // first, as many as there are free slots.
        let free = slots.available_permits() as u64;
        if free > 0 {
            match outbox.due_instances(free, &busy_now(&busy)).await {
                Ok(ids) => {
                    for instance_id in ids {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        busy.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(instance_id.clone());
                        let (outbox, settings, busy, wake) =
                            (outbox.clone(), settings.clone(), busy.clone(), wake.clone());
                        tasks.spawn(async move {
                            deliver_batch(&outbox, &settings, &instance_id).await;
                            busy.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&instance_id);
                            drop(permit);
                            // A slot is free and the instance may have more due rows.
                            wake.notify_one();
                        });
                    }
                }
                Err(e) => tracing::error!(error = %e, "reading the webhook outbox failed"),
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
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = stop.notified() => {
                while tasks.join_next().await.is_some() {}
                return;
            }
        }
    }
}

/// Rows one batch of an instance takes.
const BATCH: u64 = 256;

/// Successful deliveries recorded per UPDATE.
const RECORD_BATCH: usize = 64;

/// Delivers due rows of one instance in order, over the pooled client's kept-alive
/// connection: the target is loaded once, successes are recorded in batches (one
/// UPDATE per batch), and the first failure ends the batch (its row is scheduled for a
/// retry; the rest stay due for the next pass). A crash between a delivery and its
/// record sends that row again (at-least-once, deduplicated by `webhook-id`).
async fn deliver_batch(outbox: &Outbox, settings: &WorkerSettings, instance_id: &str) {
    let rows = match outbox.due_of(instance_id, BATCH).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "re-reading webhook rows failed");
            return;
        }
    };
    if rows.is_empty() {
        return;
    }
    let target = instance::Entity::find_by_id(instance_id.to_string())
        .one(&outbox.db)
        .await;
    let (url, secret) = match target {
        Ok(Some(i)) => match i.webhook_url {
            Some(u) => (u, i.webhook_secret.unwrap_or_default()),
            None => {
                for row in &rows {
                    fail(outbox, settings, row, None, "webhook not configured", true).await;
                }
                return;
            }
        },
        Ok(None) => {
            for row in &rows {
                fail(outbox, settings, row, None, "instance deleted", true).await;
            }
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "loading the webhook target failed");
            return; // stays pending; retried on the next pass
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
                return;
            }
            Err(e) => {
                record_delivered(outbox, std::mem::take(&mut delivered)).await;
                fail(outbox, settings, &row, None, &e.to_string(), false).await;
                return;
            }
        }
    }
    record_delivered(outbox, delivered).await;
}

/// Marks rows delivered: one UPDATE per status code among them.
async fn record_delivered(outbox: &Outbox, rows: Vec<(String, u16)>) {
    let mut by_code: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
    for (id, code) in rows {
        by_code.entry(code).or_default().push(id);
    }
    for (code, ids) in by_code {
        let _turn = crate::store::db::write_turn(&outbox.db).await;
        let r = entity::Entity::update_many()
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
            .exec(&outbox.db)
            .await;
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
