//! `InstanceActor`: one actor per WhatsApp number; the only owner of its whatsapp-rust
//! client.
//!
//! The client's callbacks do no work: they forward each event into this actor's
//! mailbox tagged with the client's generation, so events of a client we already
//! replaced are recognised and dropped. Every status change goes through
//! [`lifecycle::transition`], whose actions this actor carries out; requests are
//! answered with values (`Result<_, InstanceError>`), never by failing the actor.
//!
//! Reconnects use whatsapp-rust's own policy (Fibonacci 1 s, 1 s, 2 s, 3 s, … with
//! ±10 % jitter, capped at 15 min), which it already stops after terminal events; this
//! actor maps what happens to the status words and stops the client itself after
//! temporary bans and outdated-client failures.

use crate::events::{
    rfc3339, EventSink, IncomingMessage, LifecycleNotice, LiveEvent, MediaInfo, MessageStatus,
    SentRecord,
};
use crate::lifecycle::{self, Action, LifecycleError, LifecycleEvent};
use crate::status::InstanceStatus;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use whatsapp_rust::bot::{Bot, BotHandle};
use whatsapp_rust::wacore::store::traits::Backend;
use whatsapp_rust::wacore::types::events::Event;
use whatsapp_rust::wacore_binary::JidExt;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::{Client, Jid};

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
    pub phone: Option<String>,
    pub jid: Option<String>,
    pub lid: Option<String>,
    pub push_name: Option<String>,
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

/// A domain error, with the API code it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceError {
    #[error("instance is not connected")]
    NotConnected,
    #[error("instance is not logged in")]
    NotLoggedIn,
    #[error("invalid phone number")]
    InvalidPhone,
    #[error("phone number is not registered on WhatsApp")]
    PhoneNotRegistered,
    #[error("could not verify the phone number")]
    VerificationFailed,
    #[error("invalid group JID")]
    InvalidGroupJid,
    #[error("message could not be sent")]
    SendFailed,
    #[error("media upload failed")]
    UploadFailed,
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error("instance storage failed")]
    Storage,
    #[error("instance has too many requests in flight; retry shortly")]
    Busy,
    #[error("the request was abandoned by its caller before it started; nothing was sent")]
    Abandoned,
}

impl InstanceError {
    /// The API.md error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotConnected => "NOT_CONNECTED",
            Self::NotLoggedIn => "NOT_LOGGED_IN",
            Self::InvalidPhone => "INVALID_PHONE",
            Self::PhoneNotRegistered => "PHONE_NOT_REGISTERED",
            Self::VerificationFailed => "VERIFICATION_FAILED",
            Self::InvalidGroupJid => "INVALID_GROUP_JID",
            Self::SendFailed => "SEND_FAILED",
            Self::UploadFailed => "UPLOAD_FAILED",
            Self::Lifecycle(LifecycleError::QrInProgress) => "QR_IN_PROGRESS",
            Self::Lifecycle(LifecycleError::AlreadyConnected) => "ALREADY_CONNECTED",
            Self::Lifecycle(LifecycleError::NoQrSession) => "NO_QR_SESSION",
            Self::Storage => "INTERNAL_ERROR",
            Self::Busy => "INSTANCE_BUSY",
            Self::Abandoned => "REQUEST_ABANDONED",
        }
    }
}

/// A QR code currently on offer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QrCode {
    pub code: String,
    pub expires_at: DateTime<Utc>,
}

/// A snapshot for `GET /api/status/:id`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceSnapshot {
    pub instance_id: String,
    pub status: InstanceStatus,
    pub is_connected: bool,
    pub phone: Option<String>,
    pub jid: Option<String>,
    pub lid: Option<String>,
    pub connected_at: Option<DateTime<Utc>>,
    pub qr: Option<QrCode>,
}

/// A sent message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sent {
    pub message_id: String,
    pub timestamp: i64,
    pub to: String,
}

/// One number-check answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NumberCheck {
    pub phone: String,
    pub is_registered: bool,
    pub jid: Option<String>,
}

/// A group, as `GET /api/groups/:id` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupInfo {
    pub jid: String,
    pub name: String,
    pub topic: Option<String>,
    /// Member JIDs.
    pub participants: Vec<String>,
    pub owner_jid: Option<String>,
    /// Unix seconds.
    pub created_at: Option<u64>,
}

/// Kind of media to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    Document,
}

/// Media to send.
#[derive(Debug, Clone)]
pub struct OutgoingMedia {
    pub kind: MediaKind,
    pub bytes: Vec<u8>,
    pub mimetype: String,
    pub file_name: Option<String>,
    pub caption: Option<String>,
}

/// Test-only faults, to exercise supervision with a real actor. Compiled only with the
/// `test-faults` feature (the server's tests turn it on; production builds lack it).
#[cfg(feature = "test-faults")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Panic inside `handle`.
    Panic,
}

/// Messages of [`InstanceActor`].
pub enum InstanceMsg {
    /// Start (or join) a QR login; replies with the current code if one is on offer.
    StartQr(RpcReplyPort<Result<Option<QrCode>, InstanceError>>),
    /// Cancel the running QR login.
    CancelQr(RpcReplyPort<Result<(), InstanceError>>),
    /// Current status.
    Status(RpcReplyPort<InstanceSnapshot>),
    /// Send a text to a phone number (digits) or a JID. `message_id`: a caller-chosen
    /// WhatsApp message id (idempotent sends), else one is generated.
    SendText {
        to: String,
        text: String,
        message_id: Option<String>,
        reply: RpcReplyPort<Result<Sent, InstanceError>>,
    },
    /// Send media to a phone number or a JID.
    SendMedia {
        to: String,
        media: OutgoingMedia,
        message_id: Option<String>,
        reply: RpcReplyPort<Result<Sent, InstanceError>>,
    },
    /// Check which numbers are on WhatsApp.
    CheckNumbers {
        phones: Vec<String>,
        reply: RpcReplyPort<Result<Vec<NumberCheck>, InstanceError>>,
    },
    /// The groups this number is in.
    ListGroups(RpcReplyPort<Result<Vec<GroupInfo>, InstanceError>>),
    /// Send a text to a group (`<id>@g.us`).
    SendGroupText {
        group_jid: String,
        text: String,
        message_id: Option<String>,
        reply: RpcReplyPort<Result<Sent, InstanceError>>,
    },
    /// Unlink on WhatsApp and wipe the keys; the instance stays.
    Logout(RpcReplyPort<Result<(), InstanceError>>),
    /// A receiver of this instance's stored events (`incoming_message` and
    /// `message_status`, with their cursors).
    Subscribe(RpcReplyPort<broadcast::Receiver<LiveEvent>>),
    /// Stop the client cleanly (process shutdown).
    Shutdown(RpcReplyPort<()>),
    /// Test-only fault hook (feature `test-faults`).
    #[cfg(feature = "test-faults")]
    Fault(Fault),
    /// Internal: an event from client generation `.0`.
    Wa(u64, Arc<Event>),
    /// Internal: the window of QR flow `.0` ended.
    QrDeadline(u64),
    /// Internal: presence heartbeat tick.
    Heartbeat,
    /// Internal: client generation `.0` could not commit incoming messages; their
    /// acks were withheld, so WhatsApp still holds them.
    CommitFailed(u64),
    /// Internal: the storage takes writes again; reconnect so WhatsApp redelivers
    /// what was not acknowledged.
    StorageRecovered,
}

/// The actor's behaviour.
pub struct InstanceActor;

/// The actor's state.
pub struct InstanceState {
    id: String,
    device_name: String,
    env: Arc<InstanceEnv>,
    status: InstanceStatus,
    reason: Option<String>,
    /// The running client and its task, if any.
    bot: Option<BotHandle>,
    client: Option<Arc<Client>>,
    /// Incremented for every client started; events carry it.
    generation: u64,
    /// Incremented for every QR flow; deadlines carry it.
    qr_flow: u64,
    qr: Option<QrCode>,
    heartbeat: Option<JoinHandle<()>>,
    /// Live listeners of stored events (bounded; lagging receivers are cut off,
    /// memory never grows; they can resume from their last cursor).
    listeners: broadcast::Sender<LiveEvent>,
    /// A storage probe is running after a failed commit.
    recovering: bool,
    phone: Option<String>,
    jid: Option<String>,
    lid: Option<String>,
    push_name: Option<String>,
    connected_at: Option<DateTime<Utc>>,
    disconnected_at: Option<DateTime<Utc>>,
    /// Network operations run as tasks (see [`Ops`]); the actor keeps answering.
    ops: OpTasks,
    /// Number checks reused by sends.
    numbers: Arc<NumberCache>,
    /// Stores message statuses off the mailbox (see [`crate::receipts`]).
    statuses: crate::receipts::StatusWriter,
}

impl Actor for InstanceActor {
    type Msg = InstanceMsg;
    type State = InstanceState;
    type Arguments = InstanceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<InstanceMsg>,
        args: InstanceArgs,
    ) -> Result<InstanceState, ActorProcessingErr> {
        let (listeners, _) = broadcast::channel(args.env.listener_capacity.max(1));
        let env_max_ops = args.env.timing.max_ops;
        let statuses = crate::receipts::StatusWriter::new(
            args.instance_id.clone(),
            args.env.sink.clone(),
            listeners.clone(),
        );
        let mut state = InstanceState {
            id: args.instance_id,
            device_name: args.device_name,
            env: args.env,
            status: args.stored_status,
            reason: None,
            bot: None,
            client: None,
            generation: 0,
            qr_flow: 0,
            qr: None,
            heartbeat: None,
            listeners,
            recovering: false,
            phone: None,
            jid: None,
            lid: None,
            push_name: None,
            connected_at: None,
            disconnected_at: None,
            ops: OpTasks::new(env_max_ops),
            numbers: Arc::new(NumberCache::default()),
            statuses,
        };
        // Restore: a paired session reconnects, a QR wait becomes "ready for a new QR".
        let backend = state.env.store.backend(&state.id);
        let paired = match backend.load().await {
            Ok(Some(device)) => {
                state.phone = device.pn.as_ref().map(|j| j.user.to_string());
                state.jid = device.pn.as_ref().map(|j| j.to_non_ad().to_string());
                state.lid = device.lid.as_ref().map(|j| j.to_non_ad().to_string());
                device.pn.is_some()
            }
            Ok(None) => false,
            Err(e) => return Err(format!("loading the session failed: {e}").into()),
        };
        state
            .apply(&myself, LifecycleEvent::Restored { paired })
            .await;
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<InstanceMsg>,
        state: &mut InstanceState,
    ) -> Result<(), ActorProcessingErr> {
        state.stop_heartbeat();
        state.ops.abort_all();
        state.stop_client().await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<InstanceMsg>,
        msg: InstanceMsg,
        state: &mut InstanceState,
    ) -> Result<(), ActorProcessingErr> {
        // Every log line of this message carries the instance it is about.
        let span = tracing::info_span!("instance", instance_id = %state.id);
        tracing::Instrument::instrument(self.dispatch(myself, msg, state), span).await
    }
}

impl InstanceActor {
    /// One message, in the actor's span (see `handle`).
    async fn dispatch(
        &self,
        myself: ActorRef<InstanceMsg>,
        msg: InstanceMsg,
        state: &mut InstanceState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            InstanceMsg::StartQr(reply) => {
                let r = match lifecycle::transition(state.status, LifecycleEvent::QrRequested) {
                    Ok(_) => {
                        state.apply(&myself, LifecycleEvent::QrRequested).await;
                        Ok(state.qr.clone())
                    }
                    // Joining a running flow is not an error for the caller who just wants the code.
                    Err(LifecycleError::QrInProgress) => Ok(state.qr.clone()),
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(r);
            }
            InstanceMsg::CancelQr(reply) => {
                let r = match lifecycle::transition(state.status, LifecycleEvent::QrCancelled) {
                    Ok(_) => {
                        state.apply(&myself, LifecycleEvent::QrCancelled).await;
                        state
                            .notify(LifecycleNotice::QrCancelled {
                                instance_id: state.id.clone(),
                                status: "cancelled",
                                message: "QR login cancelled".into(),
                            })
                            .await;
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(r);
            }
            InstanceMsg::Status(reply) => {
                let _ = reply.send(state.snapshot());
            }
            InstanceMsg::SendText {
                to,
                text,
                message_id,
                reply,
            } => {
                let chat = to.clone();
                state.run_op(reply, Some(chat), move |ops, turn| async move {
                    ops.send_text(&to, text, message_id, turn).await
                });
            }
            InstanceMsg::SendMedia {
                to,
                media,
                message_id,
                reply,
            } => {
                let chat = to.clone();
                state.run_op(reply, Some(chat), move |ops, turn| async move {
                    ops.send_media(&to, media, message_id, turn).await
                });
            }
            InstanceMsg::CheckNumbers { phones, reply } => {
                state.run_op(reply, None, move |ops, _| async move {
                    ops.check_numbers(&phones).await
                });
            }
            InstanceMsg::ListGroups(reply) => {
                state.run_op(
                    reply,
                    None,
                    move |ops, _| async move { ops.list_groups().await },
                );
            }
            InstanceMsg::SendGroupText {
                group_jid,
                text,
                message_id,
                reply,
            } => {
                let chat = group_jid.clone();
                state.run_op(reply, Some(chat), move |ops, turn| async move {
                    ops.send_group_text(&group_jid, text, message_id, turn)
                        .await
                });
            }
            InstanceMsg::Logout(reply) => {
                state.apply(&myself, LifecycleEvent::LogoutRequested).await;
                let _ = reply.send(Ok(()));
            }
            InstanceMsg::Subscribe(reply) => {
                let _ = reply.send(state.listeners.subscribe());
            }
            InstanceMsg::Shutdown(reply) => {
                state.apply(&myself, LifecycleEvent::Shutdown).await;
                state.stop_client().await;
                let _ = reply.send(());
            }
            #[cfg(feature = "test-faults")]
            InstanceMsg::Fault(Fault::Panic) => panic!("fault injected into instance {}", state.id),
            InstanceMsg::Wa(generation, event) => {
                if generation == state.generation {
                    state.on_event(&myself, &event).await;
                }
            }
            InstanceMsg::QrDeadline(flow) => {
                if flow == state.qr_flow && state.status == InstanceStatus::QrPending {
                    state.apply(&myself, LifecycleEvent::QrTimedOut).await;
                    state
                        .notify(LifecycleNotice::QrTimeout {
                            instance_id: state.id.clone(),
                            status: "timeout",
                        })
                        .await;
                }
            }
            InstanceMsg::Heartbeat => {
                if let (Some(client), InstanceStatus::Online) = (&state.client, state.status) {
                    // A round trip: run beside the actor, never inside it.
                    let (client, id) = (client.clone(), state.id.clone());
                    state.ops.track(async move {
                        if let Err(e) = client.presence().set_available().await {
                            tracing::debug!(instance_id = %id, error = %e, "presence heartbeat failed");
                        }
                    });
                }
            }
            InstanceMsg::CommitFailed(generation) => {
                if generation == state.generation && !state.recovering {
                    state.recovering = true;
                    tracing::warn!(instance_id = %state.id, "incoming messages could not be committed; acks withheld until storage recovers");
                    crate::durability::spawn_storage_probe(state.env.sink.clone(), myself.clone());
                }
            }
            InstanceMsg::StorageRecovered => {
                state.recovering = false;
                if let Some(client) = state.client.clone() {
                    if state.status.is_connected() || state.status == InstanceStatus::Reconnecting {
                        // WhatsApp redelivers what was not acknowledged on the next
                        // connect; the hook then commits it from the buffered copy.
                        tracing::info!(instance_id = %state.id, "storage recovered; reconnecting for redelivery");
                        client.reconnect_immediately().await;
                    }
                }
            }
        }
        Ok(())
    }
}

impl InstanceState {
    /// Runs one lifecycle event: transition, actions, persistence, notice.
    async fn apply(&mut self, myself: &ActorRef<InstanceMsg>, event: LifecycleEvent) {
        let Ok(tr) = lifecycle::transition(self.status, event) else {
            return;
        };
        let before = self.status;
        for action in &tr.actions {
            self.run(myself, *action).await;
        }
        self.status = tr.status;
        match tr.status {
            InstanceStatus::Online if before != InstanceStatus::Online => {
                self.connected_at = Some(Utc::now());
                self.reason = None;
            }
            s if before == InstanceStatus::Online && s != InstanceStatus::Online => {
                self.disconnected_at = Some(Utc::now());
            }
            _ => {}
        }
        if before != tr.status {
            tracing::info!(instance_id = %self.id, from = %before, to = %tr.status, ?event, "status changed");
            self.persist().await;
            self.notify(LifecycleNotice::InstanceStatusChanged {
                instance_id: self.id.clone(),
                phone_number: self.phone.clone(),
                status: tr.status.as_str().to_string(),
                is_connected: tr.status.is_connected(),
                connected_at: self.connected_at.map(rfc3339),
                disconnected_at: self.disconnected_at.map(rfc3339),
            })
            .await;
        }
    }

    async fn run(&mut self, myself: &ActorRef<InstanceMsg>, action: Action) {
        match action {
            Action::StartQrFlow => {
                self.qr = None;
                self.start_client(myself).await;
                // The deadline belongs to the flow, not to one client: a client restarted
                // for fresh codes keeps the original window.
                self.qr_flow += 1;
                let flow = self.qr_flow;
                myself.send_after(self.env.timing.qr_timeout, move || {
                    InstanceMsg::QrDeadline(flow)
                });
            }
            Action::StopQrFlow => {
                self.qr = None;
                self.stop_client().await;
            }
            Action::Connect => self.start_client(myself).await,
            // whatsapp-rust reconnects by itself with jittered Fibonacci backoff.
            Action::ScheduleReconnect => {}
            Action::StartHeartbeat => {
                self.stop_heartbeat();
                let me = myself.clone();
                let period = self.env.timing.presence_interval;
                self.heartbeat = Some(spawn_ticker(period, move || {
                    me.cast(InstanceMsg::Heartbeat).is_ok()
                }));
            }
            Action::StopHeartbeat => self.stop_heartbeat(),
            Action::UnlinkOnWhatsapp => {
                if let Some(client) = &self.client {
                    // logout() sends remove-companion-device and disconnects.
                    let _ = tokio::time::timeout(self.env.timing.request_timeout, client.logout())
                        .await;
                }
            }
            Action::Disconnect => self.stop_client().await,
            Action::WipeStore => {
                self.stop_client().await;
                self.qr = None;
                self.phone = None;
                self.jid = None;
                self.lid = None;
                if let Err(e) = self.env.store.wipe_session(&self.id).await {
                    tracing::error!(instance_id = %self.id, error = %e, "wiping the session failed");
                    self.error("STORAGE_FAILED", "wiping the session failed")
                        .await;
                }
            }
        }
    }

    /// Starts a fresh client (stopping any previous one); its events carry a new generation.
    async fn start_client(&mut self, myself: &ActorRef<InstanceMsg>) {
        self.stop_client().await;
        self.generation += 1;
        let generation = self.generation;
        let me = myself.clone();
        let opts = &self.env.options;
        let mut transport = whatsapp_rust::transport::TokioWebSocketTransportFactory::new();
        if let Some(url) = &opts.socket_url {
            transport = transport.with_url(url.clone());
        }
        let builder = Bot::builder()
            .with_backend_arc(self.env.store.backend(&self.id))
            .with_transport_factory(crate::admission::AdmittedTransport {
                inner: transport,
                gate: self.env.admission.clone(),
            })
            .with_push_name(opts.push_name.clone())
            .with_device_props(
                whatsapp_rust::wacore::store::DevicePropsOverride::new()
                    .with_os(self.device_name.clone()),
            )
            .skip_history_sync();
        let builder = if self.env.durability.ack_after_commit {
            builder.with_inbound_durability_hook(crate::durability::CommitHook {
                instance_id: self.id.clone(),
                sink: self.env.sink.clone(),
                listeners: self.listeners.clone(),
                actor: myself.clone(),
                generation,
                park: self.env.durability.park_before_commit,
            })
        } else {
            builder
        };
        let builder = builder.on_event(move |event, _client| {
            let me = me.clone();
            async move {
                // The actor may be gone (stopping); then the event has no one to inform.
                let _ = me.cast(InstanceMsg::Wa(generation, event));
            }
        });
        let builder = match opts.version {
            Some(v) => builder.with_version(v),
            None => builder,
        };
        let built = match &opts.http {
            Some(http) => {
                builder
                    .with_http_client(SharedHttp(http.clone()))
                    .build()
                    .await
            }
            None => builder.build().await,
        };
        match built {
            Ok(bot) => {
                let client = bot.client();
                if opts.force_active_receipts {
                    client.set_force_active_delivery_receipts(true);
                }
                self.client = Some(client);
                self.bot = Some(bot.spawn());
            }
            Err(e) => {
                tracing::error!(instance_id = %self.id, error = %e, "building the WhatsApp client failed");
                self.error("CLIENT_FAILED", "the WhatsApp client could not be started")
                    .await;
            }
        }
    }

    async fn stop_client(&mut self) {
        self.client = None;
        if let Some(bot) = self.bot.take() {
            // Bounded: a wedged client must not wedge the actor.
            let client = bot.client();
            if tokio::time::timeout(Duration::from_secs(10), bot.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(instance_id = %self.id, "client did not stop in time");
                client.disconnect().await;
            }
        }
    }

    fn stop_heartbeat(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }

    async fn on_event(&mut self, myself: &ActorRef<InstanceMsg>, event: &Event) {
        match event {
            Event::PairingQrCode(qr) => {
                let expires_at =
                    Utc::now() + chrono::Duration::from_std(qr.timeout).unwrap_or_default();
                self.qr = Some(QrCode {
                    code: qr.code.clone(),
                    expires_at,
                });
                self.notify(LifecycleNotice::QrGenerated {
                    instance_id: self.id.clone(),
                    phone_number: None,
                    qr_data: qr.code.clone(),
                    expires_at: rfc3339(expires_at),
                })
                .await;
            }
            Event::PairingQrCodesExhausted(_) => {
                // The client ran out of refs before our own timeout: start a new one
                // for fresh codes while the window is open.
                if self.status == InstanceStatus::QrPending {
                    self.start_client(myself).await;
                }
            }
            Event::PairSuccess(p) => {
                self.qr = None;
                self.phone = Some(p.id.user.to_string());
                self.jid = Some(p.id.to_non_ad().to_string());
                self.lid = Some(p.lid.to_non_ad().to_string());
                self.notify(LifecycleNotice::QrSuccess {
                    instance_id: self.id.clone(),
                    status: "connected",
                })
                .await;
            }
            Event::Connected(_) => {
                if let Some(client) = &self.client {
                    let device = client.persistence_manager().get_device_snapshot();
                    if let Some(pn) = &device.pn {
                        self.phone = Some(pn.user.to_string());
                        self.jid = Some(pn.to_non_ad().to_string());
                    }
                    if let Some(lid) = &device.lid {
                        self.lid = Some(lid.to_non_ad().to_string());
                    }
                    if !device.push_name.is_empty() {
                        self.push_name = Some(device.push_name.clone());
                    }
                }
                self.qr = None;
                self.apply(myself, LifecycleEvent::Connected).await;
            }
            Event::Disconnected(_) => self.apply(myself, LifecycleEvent::Disconnected).await,
            Event::LoggedOut(l) => {
                self.reason = Some(format!("logged out: {:?}", l.reason));
                self.apply(myself, LifecycleEvent::LoggedOutByPhone).await;
            }
            Event::StreamReplaced(_) => {
                self.reason = Some("stream replaced by another client".into());
                self.apply(myself, LifecycleEvent::StreamReplaced).await;
            }
            Event::TemporaryBan(b) => {
                self.reason = Some(format!("temporary ban: {:?}", b.code));
                self.apply(myself, LifecycleEvent::TempBanned).await;
            }
            Event::ClientOutdated(_) => {
                self.reason = Some("client version refused".into());
                self.apply(myself, LifecycleEvent::ClientOutdated).await;
            }
            Event::Messages(batch) => {
                if batch.hook_committed {
                    // The durability hook stored and broadcast them before the ack.
                    return;
                }
                // Without the hook (or for what bypasses it: newsletters, PDO
                // recoveries) the client acked already: store now, then broadcast.
                let msgs: Vec<IncomingMessage> = batch
                    .messages
                    .iter()
                    .filter(|m| !is_signalling(&m.message))
                    .map(|m| incoming(&self.id, &m.message, &m.info))
                    .collect();
                if msgs.is_empty() {
                    return;
                }
                match self.env.sink.commit_incoming(&self.id, &msgs).await {
                    Ok(events) => {
                        for e in events {
                            let _ = self.listeners.send(e);
                        }
                    }
                    Err(e) => {
                        tracing::error!(instance_id = %self.id, error = %e, "recording incoming messages failed");
                        self.error("SINK_FAILED", "an incoming message could not be recorded")
                            .await;
                    }
                }
            }
            Event::Receipt(r) => {
                use whatsapp_rust::wacore::types::presence::ReceiptType as T;
                let status = match &r.r#type {
                    T::Delivered => "delivered",
                    T::Read | T::ReadSelf => "read",
                    T::Played | T::PlayedSelf => "played",
                    T::Sent => "sent",
                    T::ServerError => "error",
                    // Retries and protocol receipts are not statuses of a message.
                    _ => return,
                };
                let st = MessageStatus {
                    instance_id: self.id.clone(),
                    message_ids: r.message_ids.iter().map(|m| m.to_string()).collect(),
                    status: status.to_string(),
                    chat: r.source.chat.to_non_ad().to_string(),
                    from: r.source.sender.to_non_ad().to_string(),
                    recipient: Some(r.source.sender.to_string()),
                    timestamp: r.timestamp.timestamp(),
                };
                self.status_event(st).await;
            }
            Event::ServerAck(a) if a.class.as_deref() == Some("message") => {
                let st = MessageStatus {
                    instance_id: self.id.clone(),
                    message_ids: vec![a.id.clone()],
                    status: if a.error.is_some() {
                        "error"
                    } else {
                        "server_ack"
                    }
                    .to_string(),
                    chat: a
                        .from
                        .as_ref()
                        .map(|j| j.to_non_ad().to_string())
                        .unwrap_or_default(),
                    from: String::new(),
                    recipient: None,
                    timestamp: a.timestamp.unwrap_or_else(Utc::now).timestamp(),
                };
                self.status_event(st).await;
            }
            _ => {}
        }
    }

    /// Queues a message status to be stored (timeline, event log, outbox) and
    /// broadcast, in order, without waiting for the database.
    async fn status_event(&mut self, st: MessageStatus) {
        self.statuses.push(st).await;
    }

    fn logged_in_client(&self) -> Result<Arc<Client>, InstanceError> {
        let client = self.client.clone().ok_or(InstanceError::NotConnected)?;
        if !client.is_connected() {
            return Err(InstanceError::NotConnected);
        }
        if !client.is_logged_in() || self.status != InstanceStatus::Online {
            return Err(InstanceError::NotLoggedIn);
        }
        Ok(client)
    }

    fn snapshot(&self) -> InstanceSnapshot {
        InstanceSnapshot {
            instance_id: self.id.clone(),
            status: self.status,
            is_connected: self.status.is_connected()
                && self.client.as_ref().is_some_and(|c| c.is_connected()),
            phone: self.phone.clone(),
            jid: self.jid.clone(),
            lid: self.lid.clone(),
            connected_at: self.connected_at,
            qr: self.qr.clone(),
        }
    }

    async fn persist(&self) {
        let record = InstanceRecord {
            status: self.status,
            reason: self.reason.clone(),
            phone: self.phone.clone(),
            jid: self.jid.clone(),
            lid: self.lid.clone(),
            push_name: self.push_name.clone(),
            connected_at: self.connected_at,
            disconnected_at: self.disconnected_at,
        };
        if let Err(e) = self.env.store.save(&self.id, &record).await {
            tracing::error!(instance_id = %self.id, error = %e, "saving the instance failed");
        }
    }

    /// Records a lifecycle notice in the event log (for webhooks that subscribe to
    /// lifecycle events and for catch-up), then broadcasts it to `/ws`.
    async fn notify(&self, notice: LifecycleNotice) {
        if let Err(e) = self.env.sink.record_lifecycle(&notice).await {
            tracing::warn!(instance_id = %self.id, error = %e, "recording a lifecycle event failed");
        }
        // No receiver is fine: nobody is watching /ws.
        let _ = self.env.lifecycle.send(notice);
    }

    async fn error(&self, code: &str, message: &str) {
        self.notify(LifecycleNotice::InstanceError {
            instance_id: self.id.clone(),
            code: code.to_string(),
            message: message.to_string(),
        })
        .await;
    }
}

/// The `incoming_message` payload of a decrypted message.
pub fn incoming(
    instance_id: &str,
    m: &wa::Message,
    info: &whatsapp_rust::wacore::types::message::MessageInfo,
) -> IncomingMessage {
    let src = &info.source;
    let (kind, text, media) = describe(m);
    let sender = src.sender.to_non_ad();
    let alt = src.sender_alt.as_ref().map(|j| j.to_non_ad());
    let (from_phone, from_lid) = match (sender.is_pn(), sender.is_lid()) {
        (true, _) => (
            Some(sender.user.to_string()),
            alt.filter(|a| a.is_lid()).map(|a| a.to_string()),
        ),
        (_, true) => (
            alt.filter(|a| a.is_pn()).map(|a| a.user.to_string()),
            Some(sender.to_string()),
        ),
        _ => (None, None),
    };
    IncomingMessage {
        instance_id: instance_id.to_string(),
        from: sender.to_string(),
        from_me: src.is_from_me,
        message: text,
        timestamp: info.timestamp.timestamp(),
        is_group: src.is_group,
        message_id: info.id.to_string(),
        push_name: info.push_name.clone(),
        chat: src.chat.to_non_ad().to_string(),
        from_phone,
        from_lid,
        kind: kind.to_string(),
        media,
    }
}

/// Whether a decrypted message is device-to-device signalling (a protocol message
/// such as the phone's app-state key share, or a bare sender-key distribution)
/// rather than something a person sent.
pub fn is_signalling(m: &wa::Message) -> bool {
    if m.protocol_message.is_set() {
        return true;
    }
    m.sender_key_distribution_message.is_set() && describe(m).0 == "other"
}

/// The message type, its text (or caption) and media metadata.
pub fn describe(m: &wa::Message) -> (&'static str, String, Option<MediaInfo>) {
    let opt = |s: &Option<String>| s.clone().unwrap_or_default();
    if let Some(t) = &m.conversation {
        return ("text", t.clone(), None);
    }
    if let Some(x) = m.extended_text_message.as_option() {
        return ("text", opt(&x.text), None);
    }
    if let Some(x) = m.image_message.as_option() {
        let media = MediaInfo {
            mimetype: opt(&x.mimetype),
            size: x.file_length.unwrap_or(0),
            file_name: None,
        };
        return ("image", opt(&x.caption), Some(media));
    }
    if let Some(x) = m.video_message.as_option() {
        let media = MediaInfo {
            mimetype: opt(&x.mimetype),
            size: x.file_length.unwrap_or(0),
            file_name: None,
        };
        return ("video", opt(&x.caption), Some(media));
    }
    if let Some(x) = m.audio_message.as_option() {
        let media = MediaInfo {
            mimetype: opt(&x.mimetype),
            size: x.file_length.unwrap_or(0),
            file_name: None,
        };
        return ("audio", String::new(), Some(media));
    }
    if let Some(x) = m.document_message.as_option() {
        let media = MediaInfo {
            mimetype: opt(&x.mimetype),
            size: x.file_length.unwrap_or(0),
            file_name: x.file_name.clone(),
        };
        return ("document", opt(&x.caption), Some(media));
    }
    if let Some(x) = m.sticker_message.as_option() {
        let media = MediaInfo {
            mimetype: opt(&x.mimetype),
            size: x.file_length.unwrap_or(0),
            file_name: None,
        };
        return ("sticker", String::new(), Some(media));
    }
    ("other", String::new(), None)
}

/// A media message for an uploaded file (also used by the sandbox's contacts).
pub fn media_message(
    kind: &MediaKind,
    up: whatsapp_rust::upload::UploadResponse,
    mimetype: String,
    caption: Option<String>,
    file_name: Option<String>,
) -> wa::Message {
    use wa::message::{AudioMessage, DocumentMessage, ImageMessage, VideoMessage};
    macro_rules! fill {
        ($t:ident) => {
            $t {
                url: Some(up.url.clone()),
                direct_path: Some(up.direct_path.clone()),
                media_key: Some(up.media_key.to_vec()),
                file_enc_sha256: Some(up.file_enc_sha256.to_vec()),
                file_sha256: Some(up.file_sha256.to_vec()),
                file_length: Some(up.file_length),
                mimetype: Some(mimetype.clone()),
                media_key_timestamp: Some(up.media_key_timestamp),
                ..Default::default()
            }
        };
    }
    let mut m = wa::Message::default();
    match kind {
        MediaKind::Image => {
            let mut x = fill!(ImageMessage);
            x.caption = caption;
            m.image_message = x.into();
        }
        MediaKind::Video => {
            let mut x = fill!(VideoMessage);
            x.caption = caption;
            x.streaming_sidecar = up.streaming_sidecar.clone();
            m.video_message = x.into();
        }
        MediaKind::Audio => {
            let mut x = fill!(AudioMessage);
            x.streaming_sidecar = up.streaming_sidecar.clone();
            m.audio_message = x.into();
        }
        MediaKind::Document => {
            let mut x = fill!(DocumentMessage);
            x.caption = caption;
            x.file_name = file_name;
            m.document_message = x.into();
        }
    }
    m
}

/// Lets a shared `Arc<dyn HttpClient>` be handed to the bot builder, which wants a value.
struct SharedHttp(Arc<dyn whatsapp_rust::http::HttpClient>);

#[async_trait]
impl whatsapp_rust::http::HttpClient for SharedHttp {
    async fn execute(
        &self,
        request: whatsapp_rust::http::HttpRequest,
    ) -> anyhow::Result<whatsapp_rust::http::HttpResponse> {
        self.0.execute(request).await
    }
}

/// A group JID (`<digits>@g.us` or `<digits>-<digits>@g.us`), or `InvalidGroupJid`.
fn group_jid_of(s: &str) -> Result<Jid, InstanceError> {
    let user = s
        .strip_suffix("@g.us")
        .ok_or(InstanceError::InvalidGroupJid)?;
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let ok = match user.split_once('-') {
        Some((a, b)) => digits(a) && digits(b),
        None => digits(user),
    };
    if !ok {
        return Err(InstanceError::InvalidGroupJid);
    }
    s.parse().map_err(|_| InstanceError::InvalidGroupJid)
}

/// Calls `tick` at once and then every `period` until it returns `false` (or the task
/// is aborted). Drives the presence heartbeat.
pub fn spawn_ticker(period: Duration, tick: impl Fn() -> bool + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await; // the first tick is immediate: "available" at once
            if !tick() {
                break;
            }
        }
    })
}

#[cfg(test)]
mod signalling_tests {
    use super::{describe, is_signalling};
    use whatsapp_rust::waproto::whatsapp as wa;

    #[test]
    fn key_shares_and_bare_sender_keys_are_not_user_messages() {
        let share = wa::Message {
            protocol_message: wa::message::ProtocolMessage {
                r#type: Some(wa::message::protocol_message::Type::APP_STATE_SYNC_KEY_SHARE),
                ..Default::default()
            }
            .into(),
            ..Default::default()
        };
        assert!(is_signalling(&share));
        let skdm = wa::Message {
            sender_key_distribution_message: wa::message::SenderKeyDistributionMessage {
                group_id: Some("1203@g.us".into()),
                ..Default::default()
            }
            .into(),
            ..Default::default()
        };
        assert!(is_signalling(&skdm));
        let text = wa::Message {
            conversation: Some("hi".into()),
            ..skdm.clone()
        };
        assert!(
            !is_signalling(&text),
            "a text that carries sender keys is a text"
        );
        assert_eq!(describe(&text).0, "text");
        let location = wa::Message {
            location_message: wa::message::LocationMessage::default().into(),
            ..Default::default()
        };
        assert!(
            !is_signalling(&location),
            "unknown kinds still reach users as 'other'"
        );
    }
}

/// What a network operation of one instance needs, cloned into the task that runs it,
/// so the actor never awaits a round trip to WhatsApp: sends, uploads, number checks
/// and group listings run beside it, bounded per instance, and reply when done.
#[derive(Clone)]
struct Ops {
    id: Arc<str>,
    client: Arc<Client>,
    env: Arc<InstanceEnv>,
    numbers: Arc<NumberCache>,
}

/// A send's place in its chat's queue: the send waits for the previous send to the
/// same chat to finish (or fail) before it goes out, so order per chat is kept while
/// different chats, uploads and number checks run in parallel.
struct Turn {
    prev: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Dropped when this operation ends, which releases the next one.
    _done: Option<tokio::sync::oneshot::Sender<()>>,
    /// Whether the caller stopped waiting for the answer (its reply port closed).
    caller_gone: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl Turn {
    fn free() -> Self {
        Self {
            prev: None,
            _done: None,
            caller_gone: None,
        }
    }

    /// The caller gave up (an HTTP request that timed out): a send that has not
    /// started yet must not start, or the caller's retry would send it twice.
    fn caller_gone(&self) -> bool {
        self.caller_gone.as_ref().is_some_and(|f| f())
    }

    async fn wait(&mut self) {
        if let Some(prev) = self.prev.take() {
            // Err only means the previous operation ended without a signal: its
            // sender was dropped, which is the signal.
            let _ = prev.await;
        }
    }
}

/// The operation tasks of one instance: at most `max` in flight, per-chat turns, and
/// their handles (aborted when the actor stops).
struct OpTasks {
    max: usize,
    slots: Arc<tokio::sync::Semaphore>,
    tasks: tokio::task::JoinSet<()>,
    chats: std::collections::HashMap<String, tokio::sync::oneshot::Receiver<()>>,
}

impl OpTasks {
    fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            max,
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
            tasks: tokio::task::JoinSet::new(),
            chats: std::collections::HashMap::new(),
        }
    }

    /// Runs `fut` as a tracked task (finished ones are reaped on the way).
    fn track(&mut self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        while self.tasks.try_join_next().is_some() {}
        self.tasks.spawn(fut);
    }

    /// The next turn in `chat`'s queue.
    fn turn(&mut self, chat: String) -> Turn {
        if self.chats.len() > 2 * self.max {
            // Drop queues whose last operation has ended.
            self.chats.retain(|_, rx| {
                matches!(
                    rx.try_recv(),
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty)
                )
            });
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        Turn {
            prev: self.chats.insert(chat, rx),
            _done: Some(tx),
            caller_gone: None,
        }
    }

    fn abort_all(&mut self) {
        self.tasks.abort_all();
        self.chats.clear();
    }
}

/// Number checks per instance: positive answers kept `number_cache_ttl`, negative ones
/// `number_cache_negative_ttl`; a failed send drops the recipient's entry. Bounded:
/// past `MAX_NUMBERS` entries, expired ones are dropped, then everything.
#[derive(Default)]
struct NumberCache {
    map: std::sync::Mutex<std::collections::HashMap<String, (Option<Jid>, std::time::Instant)>>,
}

const MAX_NUMBERS: usize = 20_000;

impl NumberCache {
    /// `Some(Some(jid))` registered, `Some(None)` not registered, `None` unknown.
    fn get(&self, phone: &str) -> Option<Option<Jid>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(phone) {
            Some((answer, until)) if *until > std::time::Instant::now() => Some(answer.clone()),
            _ => None,
        }
    }

    fn put(&self, phone: &str, answer: Option<Jid>, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = std::time::Instant::now();
        // A poisoned lock only means a panic elsewhere; the map is still valid.
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_NUMBERS {
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= MAX_NUMBERS {
                map.clear();
            }
        }
        map.insert(phone.to_string(), (answer, now + ttl));
    }

    fn forget(&self, phone: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(phone);
    }
}

impl InstanceState {
    /// The context of a network operation, if the instance can run one now.
    fn ops(&self) -> Result<Ops, InstanceError> {
        Ok(Ops {
            id: Arc::from(self.id.as_str()),
            client: self.logged_in_client()?,
            env: self.env.clone(),
            numbers: self.numbers.clone(),
        })
    }

    /// Starts `op` as a task and replies with its result when it ends. Refused at once
    /// (`NOT_CONNECTED`, `NOT_LOGGED_IN`, `INSTANCE_BUSY`) without starting anything.
    /// With a `chat`, the operation takes the next turn in that chat's queue.
    fn run_op<T, F, Fut>(
        &mut self,
        reply: RpcReplyPort<Result<T, InstanceError>>,
        chat: Option<String>,
        op: F,
    ) where
        T: Send + 'static,
        F: FnOnce(Ops, Turn) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, InstanceError>> + Send + 'static,
    {
        let ops = match self.ops() {
            Ok(o) => o,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        // Taken here, in mailbox order, so turns and slots cannot deadlock: every
        // operation ahead in a chat's queue already holds its slot.
        let Ok(permit) = self.ops.slots.clone().try_acquire_owned() else {
            let _ = reply.send(Err(InstanceError::Busy));
            return;
        };
        let mut turn = match chat {
            Some(c) => self.ops.turn(c),
            None => Turn::free(),
        };
        // The port is shared with the turn, which looks at it before a send starts.
        let port = Arc::new(std::sync::Mutex::new(Some(reply)));
        let seen = port.clone();
        turn.caller_gone = Some(Arc::new(move || {
            seen.lock()
                .map(|p| p.as_ref().is_none_or(|p| p.is_closed()))
                .unwrap_or(false)
        }));
        self.ops.track(async move {
            let r = op(ops, turn).await;
            drop(permit);
            let taken = port.lock().ok().and_then(|mut p| p.take());
            if let Some(reply) = taken {
                let _ = reply.send(r);
            }
        });
    }
}

impl Ops {
    /// Resolves `to` (digits or a JID) and, for phone numbers, checks it is on WhatsApp.
    /// Answers from the number cache when it can (see [`NumberCache`]).
    async fn recipient(&self, to: &str) -> Result<Jid, InstanceError> {
        if to.contains('@') {
            return group_jid_of(to);
        }
        if to.len() < 10 || !to.chars().all(|c| c.is_ascii_digit()) {
            return Err(InstanceError::InvalidPhone);
        }
        if let Some(known) = self.numbers.get(to) {
            return known.ok_or(InstanceError::PhoneNotRegistered);
        }
        let jid = Jid::pn(to);
        let res = tokio::time::timeout(
            self.env.timing.request_timeout,
            self.client
                .contacts()
                .is_on_whatsapp(std::slice::from_ref(&jid)),
        )
        .await
        .map_err(|_| InstanceError::VerificationFailed)?
        .map_err(|_| InstanceError::VerificationFailed)?;
        let timing = &self.env.timing;
        match res.first() {
            Some(r) if r.is_registered => {
                let jid = r.jid.to_non_ad();
                self.numbers
                    .put(to, Some(jid.clone()), timing.number_cache_ttl);
                Ok(jid)
            }
            _ => {
                self.numbers.put(to, None, timing.number_cache_negative_ttl);
                Err(InstanceError::PhoneNotRegistered)
            }
        }
    }

    /// Sends once `turn` comes (the previous send to this chat has ended).
    async fn send(
        &self,
        to: Jid,
        message: wa::Message,
        message_id: Option<String>,
        mut turn: Turn,
    ) -> Result<Sent, InstanceError> {
        turn.wait().await;
        if turn.caller_gone() {
            tracing::info!(instance_id = %self.id, "send dropped: its caller gave up before its turn came");
            return Err(InstanceError::Abandoned);
        }
        let client = &self.client;
        let (kind, body, media) = describe(&message);
        let (kind, is_group) = (kind.to_string(), to.is_group());
        let chat_user = to.user.to_string();
        let mut options = whatsapp_rust::send::SendOptions::default();
        if let Some(id) = message_id {
            options = options.with_message_id(id);
        }
        let r = tokio::time::timeout(
            self.env.timing.request_timeout,
            client.send_message_with_options(to, message, options),
        )
        .await
        .map_err(|_| InstanceError::SendFailed)?
        .map_err(|e| {
            tracing::warn!(instance_id = %self.id, error = %e, "send failed");
            // The cached check may be what is wrong (the number left WhatsApp).
            if !is_group {
                self.numbers.forget(&chat_user);
            }
            InstanceError::SendFailed
        })?;
        let sent = Sent {
            message_id: r.message_id,
            timestamp: Utc::now().timestamp(),
            to: r.to.to_string(),
        };
        let record = SentRecord {
            instance_id: self.id.to_string(),
            message_id: sent.message_id.clone(),
            chat: r.to.to_non_ad().to_string(),
            is_group,
            kind,
            body,
            media,
            timestamp: sent.timestamp,
        };
        if let Err(e) = self.env.sink.record_sent(&record).await {
            // The message is on its way; only its log row is missing.
            tracing::warn!(instance_id = %self.id, error = %e, "recording a sent message failed");
        }
        Ok(sent)
    }

    async fn send_text(
        &self,
        to: &str,
        text: String,
        message_id: Option<String>,
        turn: Turn,
    ) -> Result<Sent, InstanceError> {
        let jid = self.recipient(to).await?;
        let message = wa::Message {
            conversation: Some(text),
            ..Default::default()
        };
        self.send(jid, message, message_id, turn).await
    }

    /// The upload runs before the chat's turn (uploads overlap); the send keeps order.
    async fn send_media(
        &self,
        to: &str,
        media: OutgoingMedia,
        message_id: Option<String>,
        turn: Turn,
    ) -> Result<Sent, InstanceError> {
        use whatsapp_rust::download::MediaType;
        let client = &self.client;
        let jid = self.recipient(to).await?;
        let media_type = match media.kind {
            MediaKind::Image => MediaType::Image,
            MediaKind::Video => MediaType::Video,
            MediaKind::Audio => MediaType::Audio,
            MediaKind::Document => MediaType::Document,
        };
        let up = tokio::time::timeout(
            self.env.timing.request_timeout * 4,
            client.upload(media.bytes, media_type, Default::default()),
        )
        .await
        .map_err(|_| InstanceError::UploadFailed)?
        .map_err(|e| {
            tracing::warn!(instance_id = %self.id, error = %e, "upload failed");
            InstanceError::UploadFailed
        })?;
        let message = media_message(
            &media.kind,
            up,
            media.mimetype,
            media.caption,
            media.file_name,
        );
        self.send(jid, message, message_id, turn).await
    }

    async fn list_groups(&self) -> Result<Vec<GroupInfo>, InstanceError> {
        let client = &self.client;
        let groups = tokio::time::timeout(
            self.env.timing.request_timeout,
            client.groups().get_participating(),
        )
        .await
        .map_err(|_| InstanceError::SendFailed)?
        .map_err(|e| {
            tracing::warn!(instance_id = %self.id, error = %e, "listing groups failed");
            InstanceError::SendFailed
        })?;
        let mut out: Vec<GroupInfo> = groups
            .into_values()
            .map(|g| GroupInfo {
                jid: g.id.to_string(),
                name: g.subject,
                topic: g.description,
                participants: g.participants.iter().map(|p| p.jid.to_string()).collect(),
                owner_jid: g.creator.map(|c| c.to_string()),
                created_at: g.creation_time,
            })
            .collect();
        out.sort_by(|a, b| a.jid.cmp(&b.jid));
        Ok(out)
    }

    async fn send_group_text(
        &self,
        group_jid: &str,
        text: String,
        message_id: Option<String>,
        turn: Turn,
    ) -> Result<Sent, InstanceError> {
        let jid = group_jid_of(group_jid)?;
        let message = wa::Message {
            conversation: Some(text),
            ..Default::default()
        };
        self.send(jid, message, message_id, turn).await
    }

    async fn check_numbers(&self, phones: &[String]) -> Result<Vec<NumberCheck>, InstanceError> {
        let client = &self.client;
        if phones
            .iter()
            .any(|p| p.len() < 10 || !p.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(InstanceError::InvalidPhone);
        }
        let jids: Vec<Jid> = phones.iter().map(|p| Jid::pn(p.as_str())).collect();
        let res = tokio::time::timeout(
            self.env.timing.request_timeout,
            client.contacts().is_on_whatsapp(&jids),
        )
        .await
        .map_err(|_| InstanceError::VerificationFailed)?
        .map_err(|_| InstanceError::VerificationFailed)?;
        Ok(phones
            .iter()
            .map(|p| {
                let hit = res.iter().find(|r| r.jid.user.as_str() == p.as_str());
                NumberCheck {
                    phone: p.clone(),
                    is_registered: hit.is_some_and(|r| r.is_registered),
                    jid: hit
                        .filter(|r| r.is_registered)
                        .map(|r| r.jid.to_non_ad().to_string()),
                }
            })
            .collect())
    }
}
