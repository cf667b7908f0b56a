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
//! duplicates by `webhook-id`). Isolation and fairness: a pass of the worker reads the
//! oldest due rows of idle instances in one statement and starts one batch per
//! instance (the longest-waiting first, as many as there are free slots of
//! `max_in_flight`, at most 256 rows each); when the read was full it reads again
//! without the instances just started, so one tenant's backlog cannot hide the others'
//! rows. Each instance's batch (delivered in order over one kept-alive connection,
//! successes recorded 64 per UPDATE) runs beside the others, so a slow or dead endpoint
//! holds up only its own instance; a backlog goes on in further batches of the same
//! task for up to a second before the slot goes back to the pass. The worker sleeps
//! until a new event or a finished batch wakes it (or the next retry is due), then
//! lingers 20 ms so a burst's events travel together. Webhook targets (URL, secret) are
//! cached per instance until webhook settings change.
//! Retention: a delivered or dead row keeps its payload for
//! `webhook.payload_retention_secs`, then only its metadata; deleting an instance
//! deletes its rows. Redelivery by an instance token goes only to the URL the row was
//! queued for (`target`). This is single-node: two processes on one database
//! could both send a due row (a lease column would fence that; see the README).
//!
//! Files: [`outbox`] (the table: enqueue, due rows, redeliver, the delivery log),
//! [`worker`] (fair delivery, retries, dead-letter), [`signature`] (the signature
//! headers receivers verify).

pub mod outbox;
pub mod signature;
pub mod worker;

pub use outbox::{delivery_json, entity, Outbox, DEAD, DELIVERED, PENDING};
pub use signature::{delivery_headers, signature, standard_secret, standard_signature};
pub use worker::{WebhookWorker, WorkerHandle, WorkerSettings};

/// The webhook delivery log as the API needs it (implemented by [`Outbox`]).
#[async_trait::async_trait]
pub trait DeliveryLog: Send + Sync + 'static {
    /// Recent deliveries of an instance, newest first, as JSON objects.
    async fn recent(
        &self,
        instance_id: &str,
        limit: u64,
    ) -> Result<Vec<serde_json::Value>, sea_orm::DbErr>;
    /// Queues one delivery again if `rule` allows it.
    async fn redeliver(
        &self,
        instance_id: &str,
        id: &str,
        rule: &RedeliverRule,
    ) -> Result<Redelivery, sea_orm::DbErr>;
}

/// Who asks for a redelivery, and where the webhook points now.
#[derive(Debug, Clone)]
pub struct RedeliverRule {
    pub admin: bool,
    pub current_url: Option<String>,
}

/// What a redelivery request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    Queued,
    NotFound,
    /// The payload was dropped by retention (`webhook.payload_retention_secs`).
    PayloadExpired,
    /// An instance token asked for an event queued for another URL than today's.
    UrlChanged,
}
