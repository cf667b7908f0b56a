//! What an instance actor is given: how to reach WhatsApp ([`WaOptions`]), its
//! timing, the storage and event sink it writes to, and its start-up arguments.

use super::Identity;
use crate::events::{EventSink, LifecycleNotice};
use crate::status::InstanceStatus;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use whatsapp_rust::wacore::store::traits::Backend;

/// How instances reach WhatsApp: the same code runs against the real service and the
/// mock network.
#[derive(Clone)]
pub struct WaOptions {
    /// `None`: the real service. Tests: `ws://127.0.0.1:PORT/ws/chat`.
    pub socket_url: Option<String>,
    /// Fixed client version (skips the version lookup on the web; tests always set it).
    pub version: Option<(u32, u32, u32)>,
    /// Push name used until the phone provides one.
    pub push_name: String,
    /// HTTP client for media (tests inject one that reaches the mock's media host).
    pub http: Option<Arc<dyn whatsapp_rust::http::HttpClient>>,
    /// Send plain "delivered" receipts even before presence is set.
    pub force_active_receipts: bool,
}

/// Timing of one instance.
#[derive(Debug, Clone, Copy)]
pub struct InstanceTiming {
    /// How long a QR flow may wait for a scan (SUDEVWA: 3 minutes).
    pub qr_timeout: Duration,
    /// How long a `StartQr` request waits for the first code of a new flow before it
    /// is answered without one.
    pub first_qr_wait: Duration,
    /// Interval of the "available" presence heartbeat while online.
    pub presence_interval: Duration,
    /// Deadline for calls into whatsapp-rust (send, check, ...).
    pub request_timeout: Duration,
    /// How long a number check's "on WhatsApp" answer is reused for sends.
    pub number_cache_ttl: Duration,
    /// How long a "not on WhatsApp" answer is reused (shorter: people join).
    pub number_cache_negative_ttl: Duration,
    /// Network operations (sends, uploads, checks) in flight per instance; beyond it
    /// a request is answered `INSTANCE_BUSY`.
    pub max_ops: usize,
}

impl Default for InstanceTiming {
    fn default() -> Self {
        Self {
            qr_timeout: Duration::from_secs(180),
            first_qr_wait: Duration::from_secs(10),
            presence_interval: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            number_cache_ttl: Duration::from_secs(6 * 3600),
            number_cache_negative_ttl: Duration::from_secs(600),
            max_ops: 256,
        }
    }
}

/// What the actor persists about itself, after every transition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceRecord {
    pub status: InstanceStatus,
    pub reason: Option<String>,
    #[serde(flatten)]
    pub identity: Identity,
    pub connected_at: Option<DateTime<Utc>>,
    pub disconnected_at: Option<DateTime<Utc>>,
}

/// Storage the actor needs: whatsapp-rust's backend for this instance, wiping it, and
/// saving the instance row.
#[async_trait]
pub trait InstanceStore: Send + Sync + 'static {
    /// whatsapp-rust storage scoped to `instance_id`.
    fn backend(&self, instance_id: &str) -> Arc<dyn Backend>;
    /// Deletes every whatsapp-rust row of `instance_id` (logout).
    async fn wipe_session(&self, instance_id: &str) -> Result<(), String>;
    /// Saves the instance's state.
    async fn save(&self, instance_id: &str, record: &InstanceRecord) -> Result<(), String>;
}

/// Everything instance actors share.
pub struct InstanceEnv {
    pub options: WaOptions,
    pub timing: InstanceTiming,
    pub store: Arc<dyn InstanceStore>,
    /// Global lifecycle broadcast (bounded; slow receivers lag).
    pub lifecycle: broadcast::Sender<LifecycleNotice>,
    /// Durable destination of messages, statuses and lifecycle events.
    pub sink: Arc<dyn EventSink>,
    /// How incoming messages are made durable (see [`Durability`]).
    pub durability: Durability,
    /// Capacity of each instance's listener broadcast.
    pub listener_capacity: usize,
    /// Every connect of every instance passes this gate.
    pub admission: Arc<crate::admission::AdmissionGate>,
    /// Where incoming media is saved, if anywhere.
    pub media_dir: Option<Arc<super::mediadir::MediaDir>>,
    /// Asked before every connect (first or again) of every instance; `None`: always
    /// allowed. A cluster node answers from the instance's lease, so a node that lost
    /// an instance never opens a socket for it again.
    pub connect_permit: Option<Arc<dyn crate::admission::ConnectPermit>>,
}

/// How incoming messages are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    /// Register the inbound durability hook: WhatsApp gets its ack only after the
    /// message is committed (message log + event log + outbox). `false` is the old
    /// at-most-once path (ack on decrypt, commit afterwards), kept for benchmarks.
    pub ack_after_commit: bool,
    /// Test-only fault: the hook parks forever before committing (and says so on
    /// stdout), so a test can kill the process between delivery and commit.
    pub park_before_commit: bool,
}

impl Default for Durability {
    fn default() -> Self {
        Self {
            ack_after_commit: true,
            park_before_commit: false,
        }
    }
}

/// Start-up arguments of one actor.
pub struct InstanceArgs {
    pub instance_id: String,
    /// Name in the phone's "Linked devices".
    pub device_name: String,
    /// The status stored before this start (restart recovery).
    pub stored_status: InstanceStatus,
    pub env: Arc<InstanceEnv>,
}
