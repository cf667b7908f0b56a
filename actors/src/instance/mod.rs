//! `InstanceActor`: one actor per WhatsApp number; the only owner of its whatsapp-rust
//! client.
//!
//! The client's callbacks do no work: they forward each event into this actor's
//! mailbox tagged with the client's generation, so events of a client we already
//! replaced are recognised and dropped. Every status change goes through
//! [`lifecycle::transition`], whose actions this actor carries out; requests are
//! answered with values (`Result<_, InstanceError>`), never by failing the actor.
//!
//! Where each concern lives:
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the actor: start-up, the message switch, the event switch, lifecycle transitions, persistence and notices |
//! | `msg.rs` | its messages, its error type (with API codes) and its answers |
//! | `env.rs` | what it is given: WhatsApp options, timing, storage, sink |
//! | `client.rs` | the whatsapp-rust client: start, stop, logout, wipe |
//! | `reconnect.rs` | connection events and the **reconnect policy** (whose it is, what the actor does) |
//! | `qr.rs` | the **QR login flow**: start, join, cancel, codes, deadline, pairing |
//! | `paircode.rs` | login by **pairing code**, riding on the QR flow |
//! | `presence.rs` | the **presence heartbeat** while online |
//! | `inbound.rs` | incoming messages and receipts: translation, commit, storage recovery |
//! | `outbound.rs` | the **send path**: operations beside the actor, per-chat order, number cache, uploads, groups |
//! | `groups.rs` | group management and `group_update` events |
//! | `profile.rs` | contacts' about and picture; own push name, about, picture; blocking |
//! | `mediadir.rs` | incoming media saved to a local directory (optional) |
//! | `contacts.rs` | the LID ↔ phone mapping: lookups, filling in incoming senders |
//! | `compose.rs` | other kinds (reply, mentions, location, contacts, poll, forward), actions on logged messages (react, edit, delete, read), chat state, own presence |

mod client;
mod compose;
mod contacts;
mod env;
mod groups;
mod inbound;
mod mediadir;
mod msg;
mod outbound;
mod paircode;
mod presence;
mod profile;
mod qr;
mod reconnect;

pub use compose::build as build_message;
pub use contacts::{fill_ids, open_votes, LidMapping, Lookup};
pub use env::{
    Durability, InstanceArgs, InstanceEnv, InstanceRecord, InstanceStore, InstanceTiming, WaOptions,
};
pub use groups::{GroupOp, GroupSettings, ParticipantAction};
pub use inbound::{describe, incoming, is_signalling, read, undecryptable, Described};
pub use mediadir::MediaDir;
#[cfg(feature = "test-faults")]
pub use msg::Fault;
pub use msg::{
    CardOut, ChatState, Downloaded, GroupInfo, Identity, InstanceError, InstanceMsg,
    InstanceSnapshot, MediaKind, MessageAction, MessageRef, NumberCheck, Outgoing, OutgoingMedia,
    PairCode, QrCode, Sent,
};
pub use outbound::media_message;
pub use presence::spawn_ticker;
pub use profile::ProfileOp;

use crate::events::{rfc3339, LifecycleNotice, LiveEvent};
use crate::lifecycle::{self, Action, LifecycleEvent};
use crate::status::InstanceStatus;
use chrono::{DateTime, Utc};
use outbound::{NumberCache, OpTasks};
use qr::QrReply;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use whatsapp_rust::bot::BotHandle;
use whatsapp_rust::wacore::types::events::Event;
use whatsapp_rust::Client;

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
    /// `StartQr` requests waiting for the first code of the flow, with their deadlines.
    qr_waiters: Vec<(tokio::time::Instant, QrReply)>,
    heartbeat: Option<JoinHandle<()>>,
    /// Live listeners of stored events (bounded; lagging receivers are cut off,
    /// memory never grows; they can resume from their last cursor).
    listeners: broadcast::Sender<LiveEvent>,
    /// A storage probe is running after a failed commit.
    recovering: bool,
    identity: Identity,
    connected_at: Option<DateTime<Utc>>,
    disconnected_at: Option<DateTime<Utc>>,
    /// Network operations run as tasks (see [`Ops`]); the actor keeps answering.
    ops: OpTasks,
    /// Number checks reused by sends.
    numbers: Arc<NumberCache>,
    /// Stores message statuses off the mailbox (see [`crate::receipts`]).
    statuses: crate::receipts::StatusWriter,
    /// Asked to appear offline: the presence heartbeat stays quiet.
    appear_offline: bool,
    /// The pairing-code request of the running login flow.
    pairing: paircode::PairState,
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
            qr_waiters: Vec::new(),
            heartbeat: None,
            listeners,
            recovering: false,
            identity: Identity::default(),
            connected_at: None,
            disconnected_at: None,
            ops: OpTasks::new(env_max_ops),
            numbers: Arc::new(NumberCache::default()),
            statuses,
            appear_offline: false,
            pairing: Default::default(),
        };
        // Restore: a paired session reconnects, a QR wait becomes "ready for a new QR".
        let backend = state.env.store.backend(&state.id);
        let paired = match backend.load().await {
            Ok(Some(device)) => {
                state.identity.phone = device.pn.as_ref().map(|j| j.user.to_string());
                state.identity.jid = device.pn.as_ref().map(|j| j.to_non_ad().to_string());
                state.identity.lid = device.lid.as_ref().map(|j| j.to_non_ad().to_string());
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
    /// One message, in the actor's span (see `handle`). Every arm is one call.
    async fn dispatch(
        &self,
        myself: ActorRef<InstanceMsg>,
        msg: InstanceMsg,
        state: &mut InstanceState,
    ) -> Result<(), ActorProcessingErr> {
        let me = &myself;
        match msg {
            InstanceMsg::StartQr(reply) => state.start_qr(me, reply).await,
            InstanceMsg::StartPairCode { phone, reply } => {
                state.start_pair_code(me, phone, reply).await
            }
            InstanceMsg::PairCodeDone(flow, r) => state.pair_code_done(flow, r).await,
            InstanceMsg::CancelQr(reply) => state.cancel_qr(me, reply).await,
            InstanceMsg::Status(reply) => drop(reply.send(state.snapshot())),
            InstanceMsg::SendText {
                to,
                text,
                message_id,
                reply,
            } => state.send_text(to, text, message_id, reply),
            InstanceMsg::SendMedia {
                to,
                media,
                message_id,
                reply,
            } => state.send_media(to, media, message_id, reply),
            InstanceMsg::CheckNumbers { phones, reply } => state.check_numbers(phones, reply),
            InstanceMsg::ListGroups(reply) => state.list_groups(reply),
            InstanceMsg::SendGroupText {
                group_jid,
                text,
                message_id,
                reply,
            } => state.send_group_text(group_jid, text, message_id, reply),
            InstanceMsg::Compose {
                to,
                content,
                quoted,
                message_id,
                reply,
            } => state.compose(to, content, quoted, message_id, reply),
            InstanceMsg::OnMessage {
                target,
                action,
                reply,
            } => state.on_message(target, action, reply),
            InstanceMsg::DownloadMedia { target, reply } => state.download_media(target, reply),
            InstanceMsg::LookupLid { what, reply } => state.lookup(what, reply),
            InstanceMsg::Group { op, reply } => state.group(op, reply),
            InstanceMsg::Profile { op, reply } => state.profile(op, reply),
            InstanceMsg::SetChatState {
                to,
                state: s,
                reply,
            } => state.set_chat_state(to, s, reply),
            InstanceMsg::SetPresence { available, reply } => state.set_presence(available, reply),
            InstanceMsg::SubscribePresence { who, reply } => state.subscribe_presence(who, reply),
            InstanceMsg::Logout(reply) => state.logout(me, reply).await,
            InstanceMsg::Subscribe(reply) => drop(reply.send(state.listeners.subscribe())),
            InstanceMsg::Shutdown(reply) => state.shutdown(me, reply).await,
            #[cfg(feature = "test-faults")]
            InstanceMsg::Fault(Fault::Panic) => panic!("fault injected into instance {}", state.id),
            InstanceMsg::Wa(generation, event) => state.on_wa(me, generation, &event).await,
            InstanceMsg::QrDeadline(flow) => state.qr_deadline(me, flow).await,
            InstanceMsg::QrWaitOver => state.qr_wait_over(),
            InstanceMsg::Heartbeat => state.heartbeat(),
            InstanceMsg::CommitFailed(generation) => state.commit_failed(me, generation),
            InstanceMsg::StorageRecovered => state.storage_recovered().await,
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
        if tr.status != InstanceStatus::QrPending {
            // The flow ended (paired, cancelled, timed out): no code is coming.
            self.answer_qr_waiters();
        }
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
                phone_number: self.identity.phone.clone(),
                status: tr.status.as_str().to_string(),
                is_connected: tr.status.is_connected(),
                connected_at: self.connected_at.map(rfc3339),
                disconnected_at: self.disconnected_at.map(rfc3339),
            })
            .await;
        }
    }

    /// Carries out one action of a transition.
    async fn run(&mut self, myself: &ActorRef<InstanceMsg>, action: Action) {
        match action {
            Action::StartQrFlow => self.start_qr_flow(myself).await,
            Action::StopQrFlow => self.stop_qr_flow().await,
            Action::Connect => self.start_client(myself).await,
            // The reconnect policy is whatsapp-rust's (see reconnect.rs).
            Action::ScheduleReconnect => {}
            Action::StartHeartbeat => self.start_heartbeat(myself),
            Action::StopHeartbeat => self.stop_heartbeat(),
            Action::UnlinkOnWhatsapp => self.unlink().await,
            Action::Disconnect => self.stop_client().await,
            Action::WipeStore => self.wipe_session().await,
        }
    }

    /// An event of client generation `generation`; those of replaced clients are dropped.
    async fn on_wa(&mut self, myself: &ActorRef<InstanceMsg>, generation: u64, event: &Event) {
        if generation == self.generation {
            self.on_event(myself, event).await;
        }
    }

    /// The event switch: every arm is one call into the file of its concern.
    async fn on_event(&mut self, myself: &ActorRef<InstanceMsg>, event: &Event) {
        use LifecycleEvent as L;
        match event {
            Event::PairingQrCode(qr) => {
                self.qr_code(qr).await;
                self.ask_pair_code(myself);
            }
            Event::PairingCodeError(e) => self.pair_code_ended(false, &e.error).await,
            Event::PairingCodeRefresh(_) => self.pair_code_ended(true, "expired").await,
            Event::PairingQrCodesExhausted(_) => self.qr_codes_exhausted(myself).await,
            Event::PairSuccess(p) => self.pair_success(p).await,
            Event::Connected(_) => self.connected(myself).await,
            Event::Disconnected(_) => {
                metrics::counter!("sudevwa_connection_losses_total", "cause" => "disconnected")
                    .increment(1);
                self.apply(myself, L::Disconnected).await
            }
            Event::LoggedOut(l) => {
                let reason = format!("logged out: {:?}", l.reason);
                self.lost(myself, reason, L::LoggedOutByPhone).await
            }
            Event::StreamReplaced(_) => {
                let reason = "stream replaced by another client".to_string();
                self.lost(myself, reason, L::StreamReplaced).await
            }
            Event::TemporaryBan(b) => {
                let reason = format!("temporary ban: {:?}", b.code);
                self.lost(myself, reason, L::TempBanned).await
            }
            Event::ClientOutdated(_) => {
                let reason = "client version refused".to_string();
                self.lost(myself, reason, L::ClientOutdated).await
            }
            Event::Messages(batch) => self.messages(batch).await,
            Event::Receipt(r) => self.receipt(r).await,
            Event::Presence(p) => {
                let env = contacts::presence_event(&self.id, p);
                self.record_event(env).await
            }
            Event::ChatPresence(c) => {
                let env = contacts::chat_presence_event(&self.id, c);
                self.record_event(env).await
            }
            Event::GroupUpdate(u) => {
                if let Some(env) = groups::group_event(&self.id, u) {
                    self.record_event(env).await
                }
            }
            Event::UndecryptableMessage(u) => {
                let m = undecryptable(&self.id, u);
                self.commit(vec![m]).await
            }
            Event::ServerAck(a) if a.class.as_deref() == Some("message") => {
                self.server_ack(a).await
            }
            _ => {}
        }
    }

    fn snapshot(&self) -> InstanceSnapshot {
        InstanceSnapshot {
            instance_id: self.id.clone(),
            status: self.status,
            is_connected: self.status.is_connected()
                && self.client.as_ref().is_some_and(|c| c.is_connected()),
            identity: self.identity.clone(),
            connected_at: self.connected_at,
            qr: self.qr.clone(),
        }
    }

    async fn persist(&self) {
        let record = InstanceRecord {
            status: self.status,
            reason: self.reason.clone(),
            identity: self.identity.clone(),
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
