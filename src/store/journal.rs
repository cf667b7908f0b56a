//! The durable message path: the message log, the status timeline of sent messages,
//! the durable event log (whose sequence numbers are the cursors clients resume from),
//! and the webhook outbox rows derived from it — [`Journal`], the actors'
//! [`EventSink`].
//!
//! Invariants:
//! - Incoming messages are committed in one transaction per batch: message-log rows
//!   (one per (chat, sender, message id); a repeat is ignored), one event per newly
//!   stored message, and an outbox row per event the instance's webhook takes. A
//!   replayed message therefore produces no second event and no second delivery.
//! - Cursors only grow per instance, in commit order: every event-log write of one
//!   instance runs under that instance's stripe lock, so a reader that saw cursor N has
//!   already seen every smaller cursor of that instance that will ever exist.
//! - The JSON an event is sent with (listen socket, webhook, catch-up) is built the same
//!   way everywhere — the stored envelope plus its cursor — so the bytes are identical.

use crate::store::db::WriteConn;
use crate::store::instances::entity as instance;
use crate::store::queue;
use crate::webhook::entity as outbox;
use actors::events::{
    with_cursor, EventSink, IncomingMessage, LifecycleNotice, LiveEvent, MessageStatus, SentRecord,
};
use async_trait::async_trait;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, DatabaseConnection, QueryOrder, QuerySelect, QueryTrait};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::Notify;

/// The `messages` table: one row per message of an instance, in or out.
pub mod message {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "messages")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub seq: i64,
        pub instance_id: String,
        /// `in` or `out`.
        pub direction: String,
        pub message_id: String,
        pub chat: String,
        /// The sender's JID for incoming messages; empty for messages sent here.
        pub sender: String,
        pub sender_phone: Option<String>,
        pub sender_lid: Option<String>,
        pub push_name: Option<String>,
        pub from_me: bool,
        pub is_group: bool,
        pub kind: String,
        pub body: Option<String>,
        /// Media metadata as JSON.
        pub media: Option<String>,
        /// Incoming: `received`. Outgoing: the furthest status reached.
        pub status: String,
        /// Unix milliseconds (the message's own time).
        pub timestamp: i64,
        pub created_at: i64,
        pub updated_at: i64,
        /// The WhatsApp message protobuf (see [`actors::events::RAW_MAX`]).
        pub raw: Option<Vec<u8>>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `message_status` table: the timeline of sent messages, one row per
/// (message, recipient device, status).
pub mod status {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "message_status")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub seq: i64,
        pub instance_id: String,
        pub message_id: String,
        /// The device that reported it (empty for the server's ack and our own send).
        pub recipient: String,
        pub status: String,
        /// Unix milliseconds.
        pub at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `events` table: the durable event log.
pub mod event {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "events")]
    pub struct Model {
        /// The cursor.
        #[sea_orm(primary_key)]
        pub seq: i64,
        pub instance_id: String,
        pub event: String,
        /// The envelope without its cursor.
        pub payload: String,
        pub created_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Event names of the message events (the default webhook subscription).
pub const MESSAGE_EVENTS: &[&str] = &[
    "incoming_message",
    "message_status",
    "message_edited",
    "message_revoked",
    "message_undecryptable",
    "group_update",
];

/// Every event name a webhook filter may list (`*` means all of them).
pub const EVENT_NAMES: &[&str] = &[
    "incoming_message",
    "message_status",
    "message_edited",
    "message_revoked",
    "message_undecryptable",
    "group_update",
    "presence",
    "chat_presence",
    "QR_GENERATED",
    "PAIR_CODE",
    "QR_SUCCESS",
    "QR_TIMEOUT",
    "QR_CANCELLED",
    "INSTANCE_STATUS_CHANGED",
    "INSTANCE_ERROR",
];

/// Order of outbound statuses: a message's row only moves forward.
fn rank(status: &str) -> i32 {
    match status {
        "pending" => 0,
        "sent" => 1,
        "server_ack" => 2,
        "delivered" => 3,
        "read" => 4,
        "played" => 5,
        _ => -1,
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Whether the filter (stored JSON array, `None` = default) takes `event`.
/// Each instance's webhook, with the settings generation it was read at.
type WebhookCache = Arc<crate::store::instances::WebhookSettingsCache<Option<Hook>>>;

/// An instance's webhook as the journal queues for it.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The URL rows are queued for (kept on each row as `target`).
    pub url: String,
    /// The event filter (`None`: the default set).
    pub events: Option<String>,
}

pub fn filter_takes(filter: Option<&str>, event: &str) -> bool {
    match filter {
        None => MESSAGE_EVENTS.contains(&event),
        Some(f) => match serde_json::from_str::<Vec<String>>(f) {
            Ok(list) => list.iter().any(|e| e == "*" || e == event),
            // An unreadable filter (never written by us) falls back to the default.
            Err(_) => MESSAGE_EVENTS.contains(&event),
        },
    }
}

/// A message is stored once per (instance, chat, sender, id): a repeat is ignored.
fn message_key_conflict() -> OnConflict {
    OnConflict::columns([
        message::Column::InstanceId,
        message::Column::Chat,
        message::Column::Sender,
        message::Column::MessageId,
    ])
    .do_nothing()
    .to_owned()
}

/// The message-log row of an incoming message (or one of ours seen from another device).
fn incoming_row(instance_id: &str, m: &IncomingMessage, now: i64) -> message::ActiveModel {
    message::ActiveModel {
        instance_id: Set(instance_id.to_string()),
        direction: Set(if m.from_me { "out" } else { "in" }.into()),
        message_id: Set(m.message_id.clone()),
        chat: Set(m.chat.clone()),
        sender: Set(m.from.clone()),
        sender_phone: Set(m.from_phone.clone()),
        sender_lid: Set(m.from_lid.clone()),
        push_name: Set(Some(m.push_name.clone()).filter(|p| !p.is_empty())),
        from_me: Set(m.from_me),
        is_group: Set(m.is_group),
        kind: Set(m.kind.clone()),
        body: Set(Some(m.message.clone()).filter(|b| !b.is_empty())),
        media: Set(media_text(m.media.as_ref())),
        status: Set(if m.from_me { "sent" } else { "received" }.into()),
        timestamp: Set(m.timestamp * 1000),
        created_at: Set(now),
        updated_at: Set(now),
        raw: Set(m.raw.clone()),
        ..Default::default()
    }
}

fn media_text(m: Option<&actors::events::MediaInfo>) -> Option<String> {
    m.map(|x| serde_json::to_value(x).unwrap_or(Value::Null).to_string())
}

/// The JSON text an event is sent with: its envelope with the `cursor` added.
///
/// Envelopes are stored as `serde_json::Value` writes them: compact, keys sorted. When
/// the first key sorts after `"cursor"` (every envelope's do: `data`, `event`,
/// `timestamp`), the cursor goes in front as text, which is exactly what parsing,
/// inserting and writing again would give — without doing so, on the SQLite writer
/// thread where this runs. Anything else takes the long way.
pub(crate) fn event_json(payload: &str, seq: i64) -> Arc<str> {
    let first_key = payload
        .strip_prefix("{\"")
        .and_then(|rest| rest.split_once('"'))
        .map(|(key, _)| key);
    match first_key {
        Some(key) if key > "cursor" && !key.contains('\\') => {
            format!("{{\"cursor\":\"{seq}\",{}", &payload[1..]).into()
        }
        _ => {
            let v: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
            with_cursor(v, seq).to_string().into()
        }
    }
}

/// Filters of [`Journal::list_messages`].
#[derive(Debug, Clone, Default)]
pub struct MessageQuery {
    pub chat: Option<String>,
    /// `in` or `out`.
    pub direction: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub before: Option<i64>,
    /// Page size (1-500).
    pub limit: u64,
    /// From a previous page's `next_cursor`: only older rows.
    pub cursor: Option<i64>,
}

/// A page of the message log, newest first.
#[derive(Debug, Clone)]
pub struct MessagePage {
    pub messages: Vec<Value>,
    /// Pass as `cursor` for the next (older) page; `None` on the last page.
    pub next_cursor: Option<i64>,
}

/// What [`Journal::prune_at`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub messages: u64,
    pub statuses: u64,
    pub events: u64,
    pub outbox: u64,
    /// Delivered or dead outbox rows whose payload was dropped (metadata kept).
    pub payloads: u64,
}

/// Retention of the message log and the event log.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Rows older than this many days go; 0 keeps them forever.
    pub days: u32,
    /// At most this many messages per instance (the oldest go first); 0: no cap.
    pub max_rows_per_instance: u64,
    /// Delivered (or dead) webhook events keep their payload this long; then only
    /// their metadata. `None`: forever.
    pub payload_ms: Option<i64>,
}

/// The message log, status timeline, event log and outbox writer.
#[derive(Clone)]
pub struct Journal {
    db: DatabaseConnection,
    /// Webhooks on (`features.enable_webhook`): outbox rows are written.
    webhooks: bool,
    /// Rings the webhook worker.
    wake: Arc<Notify>,
    stripes: Arc<Vec<tokio::sync::Mutex<()>>>,
    /// SQLite: one writer at a time. All journal writes join the process's group
    /// write (`db::group_write`, behind the SQLite write turn shared with the session
    /// store), so they queue in the process (fair, no waiting) instead of colliding
    /// in SQLite, where a second writer either sleeps in the busy handler
    /// (milliseconds at a time) or, in a transaction that read first, fails at once
    /// with a stale snapshot.
    single_writer: bool,
    /// Each instance's webhook filter as last read, with the settings generation it was
    /// read at (see `instances::webhook_settings_generation`): one row read per change,
    /// not one per event.
    webhook_cache: WebhookCache,
}

const STRIPES: usize = 64;

/// The instance's stripe a PostgreSQL journal writer holds (see [`Journal::writer`]).
type Stripe<'a> = Option<tokio::sync::MutexGuard<'a, ()>>;

impl Journal {
    pub fn new(db: DatabaseConnection, webhooks: bool, wake: Arc<Notify>) -> Self {
        Self {
            webhooks,
            wake,
            stripes: Arc::new((0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect()),
            single_writer: db.get_database_backend() == sea_orm::DbBackend::Sqlite,
            webhook_cache: Arc::default(),
            db,
        }
    }

    /// The instance's stripe a journal writer holds on PostgreSQL (until dropped) so
    /// its writes keep their order; none on SQLite, whose writes run one at a time in
    /// the order they were handed to the writer thread (see `queue::write`).
    async fn stripe(&self, instance_id: &str) -> Stripe<'_> {
        if self.single_writer {
            return None;
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        instance_id.hash(&mut h);
        Some(self.stripes[(h.finish() as usize) % STRIPES].lock().await)
    }

    /// The webhook's URL and event filter, when the instance has a webhook and webhooks
    /// are on.
    async fn webhook_filter(&self, instance_id: &str) -> Result<Option<Hook>, DbErr> {
        if !self.webhooks {
            return Ok(None);
        }
        self.webhook_cache
            .get_or_load(instance_id, async {
                let row = instance::Entity::find_by_id(instance_id.to_string())
                    .one(&self.db)
                    .await?;
                Ok(row.and_then(|r| {
                    r.webhook_url.map(|url| Hook {
                        url,
                        events: r.webhook_events,
                    })
                }))
            })
            .await
    }

    /// Appends an event (and its outbox row when the webhook takes it) inside `txn`.
    /// `payload`: the event's envelope, serialized.
    async fn append(
        txn: &WriteConn<'_>,
        instance_id: &str,
        event: &str,
        payload: &str,
        webhook: &Option<Hook>,
        now: i64,
    ) -> Result<(LiveEvent, bool), DbErr> {
        let mut insert = event::Entity::insert(event::ActiveModel {
            instance_id: Set(instance_id.to_string()),
            event: Set(event.to_string()),
            payload: Set(payload.to_string()),
            created_at: Set(now),
            ..Default::default()
        })
        .into_query();
        insert.returning_col(event::Column::Seq);
        let seq = match txn.rows(&insert).await?.first() {
            Some(r) => r.i64("seq")?,
            None => return Err(DbErr::RecordNotInserted),
        };
        let json = event_json(payload, seq);
        let mut queued = false;
        if let Some(hook) = webhook {
            if filter_takes(hook.events.as_deref(), event) {
                txn.run(&outbox::Entity::insert(outbox::ActiveModel {
                    id: Set(crate::webhook::outbox::event_id(now)),
                    instance_id: Set(instance_id.to_string()),
                    event: Set(event.to_string()),
                    payload: Set(json.to_string()),
                    status: Set(crate::webhook::PENDING.into()),
                    attempts: Set(0),
                    next_attempt_at: Set(now),
                    last_status_code: Set(None),
                    last_error: Set(None),
                    created_at: Set(now),
                    delivered_at: Set(None),
                    target: Set(Some(hook.url.clone())),
                }))
                .await?;
                queued = true;
            }
        }
        Ok((
            LiveEvent {
                cursor: seq,
                event: event.to_string(),
                json,
            },
            queued,
        ))
    }

    /// Commits incoming messages (see the module invariants); returns the new events.
    pub async fn commit_incoming(
        &self,
        instance_id: &str,
        msgs: &[IncomingMessage],
    ) -> Result<Vec<LiveEvent>, DbErr> {
        let webhook = self.webhook_filter(instance_id).await?;
        let _stripe = self.stripe(instance_id).await;
        let now = now_ms();
        let id = instance_id.to_string();
        // Rows and event payloads are built here, in the caller's task; the write
        // itself only runs the statements.
        let items: Vec<_> = msgs
            .iter()
            .map(|m| {
                // An undecryptable message is not a message yet (its id arrives again
                // if the sender's resend decrypts): an event only.
                let row = (m.kind != actors::events::KIND_UNDECRYPTABLE)
                    .then(|| (incoming_row(instance_id, m, now), m.from_me));
                (row, m.event().to_string(), m.to_envelope().to_string())
            })
            .collect();
        let (out, queued) = queue::write(&self.db, true, move |txn| {
            Box::pin(async move {
                let mut out = Vec::new();
                let mut queued = false;
                for (row, event, payload) in items {
                    if let Some((row, from_me)) = row {
                        let inserted = txn
                            .run(&message::Entity::insert(row).on_conflict(message_key_conflict()))
                            .await?;
                        if inserted == 0 {
                            continue; // already stored: a replay after a lost ack
                        }
                        crate::metrics::message(if from_me { "out" } else { "in" }, &id);
                    }
                    let (e, q) = Self::append(&txn, &id, &event, &payload, &webhook, now).await?;
                    queued |= q;
                    out.push(e);
                }
                Ok((out, queued))
            })
        })
        .await?;
        if queued {
            self.wake.notify_one();
        }
        Ok(out)
    }

    /// Logs a message this instance sent, with `sent` as its first status.
    pub async fn record_sent(&self, s: &SentRecord) -> Result<(), DbErr> {
        let now = now_ms();
        let _stripe = self.stripe(&s.instance_id).await;
        let insert = message::Entity::insert(message::ActiveModel {
            instance_id: Set(s.instance_id.clone()),
            direction: Set("out".into()),
            message_id: Set(s.message_id.clone()),
            chat: Set(s.chat.clone()),
            sender: Set(String::new()),
            sender_phone: Set(None),
            sender_lid: Set(None),
            push_name: Set(None),
            from_me: Set(true),
            is_group: Set(s.is_group),
            kind: Set(s.kind.clone()),
            body: Set(Some(s.body.clone()).filter(|b| !b.is_empty())),
            media: Set(media_text(s.media.as_ref())),
            status: Set("sent".into()),
            timestamp: Set(s.timestamp * 1000),
            created_at: Set(now),
            updated_at: Set(now),
            raw: Set(s.raw.clone()),
            ..Default::default()
        })
        .on_conflict(message_key_conflict());
        let (id, msg) = (s.instance_id.clone(), s.message_id.clone());
        queue::write(&self.db, true, move |txn| {
            Box::pin(async move {
                txn.run(&insert).await?;
                Self::timeline(&txn, &id, &msg, "", "sent", now).await
            })
        })
        .await?;
        crate::metrics::message("out", &s.instance_id);
        Ok(())
    }

    async fn timeline(
        txn: &WriteConn<'_>,
        instance_id: &str,
        message_id: &str,
        recipient: &str,
        st: &str,
        at: i64,
    ) -> Result<u64, DbErr> {
        txn.run(
            &status::Entity::insert(status::ActiveModel {
                instance_id: Set(instance_id.to_string()),
                message_id: Set(message_id.to_string()),
                recipient: Set(recipient.to_string()),
                status: Set(st.to_string()),
                at: Set(at),
                ..Default::default()
            })
            .on_conflict(
                OnConflict::columns([
                    status::Column::InstanceId,
                    status::Column::MessageId,
                    status::Column::Recipient,
                    status::Column::Status,
                ])
                .do_nothing()
                .to_owned(),
            ),
        )
        .await
    }

    /// Records a status of sent messages: timeline rows, the messages' furthest
    /// status, `message_status` events (and outbox rows); returns the events stored.
    /// A server ack for a message the log does not know is ignored (acks cover every
    /// stanza we send).
    pub async fn record_status(&self, st: &MessageStatus) -> Result<Vec<LiveEvent>, DbErr> {
        self.record_statuses(std::slice::from_ref(st)).await
    }

    /// Statuses of one instance, in order, in one transaction; the events stored, in
    /// order. A status may store none (a server ack of a message not in the log, or
    /// one already reported) or two: a receipt that overtook its message's server ack
    /// reports the ack first (see [`Journal::status_in`]).
    pub async fn record_statuses(
        &self,
        statuses: &[MessageStatus],
    ) -> Result<Vec<LiveEvent>, DbErr> {
        let Some(first) = statuses.first() else {
            return Ok(Vec::new());
        };
        let webhook = self.webhook_filter(&first.instance_id).await?;
        let _stripe = self.stripe(&first.instance_id).await;
        let now = now_ms();
        // Serialized here, outside the write turn.
        let items: Vec<_> = statuses
            .iter()
            .map(|st| (st.clone(), st.to_envelope().to_string()))
            .collect();
        let (out, queued_any) = queue::write(&self.db, true, move |txn| {
            Box::pin(async move {
                let mut out = Vec::with_capacity(items.len());
                let mut queued_any = false;
                for (st, payload) in &items {
                    queued_any |=
                        Self::status_in(&txn, st, payload, &webhook, now, &mut out).await?;
                }
                Ok((out, queued_any))
            })
        })
        .await?;
        if queued_any {
            self.wake.notify_one();
        }
        Ok(out)
    }

    /// One status inside `txn` (`payload`: its envelope): the timeline, the message's
    /// status (it only moves forward), the event log and the outbox; pushes the events
    /// it stored to `out` and says whether any went to the outbox.
    ///
    /// The server's ack and a recipient's receipt reach the client separately, and a
    /// receipt can come first. It implies the server took the message, so a receipt
    /// for a logged message without an ack in its timeline records and reports the
    /// ack first; the real ack, when it comes, finds it there and reports nothing.
    /// Every stream of a message's statuses (event log, sockets, webhook) then runs
    /// `server_ack`, `delivered`, `read` in that order.
    async fn status_in(
        txn: &WriteConn<'_>,
        st: &MessageStatus,
        payload: &str,
        webhook: &Option<Hook>,
        now: i64,
        out: &mut Vec<LiveEvent>,
    ) -> Result<bool, DbErr> {
        let at = if st.timestamp > 0 {
            st.timestamp * 1000
        } else {
            now
        };
        let is_ack = st.status == "server_ack";
        // Ids this status reports; ids whose ack it reports first.
        let (mut reported, mut unacked) = (Vec::new(), Vec::new());
        for id in &st.message_ids {
            let rows = txn
                .rows(
                    &message::Entity::find()
                        .select_only()
                        .column(message::Column::Seq)
                        .column(message::Column::Status)
                        .filter(message::Column::InstanceId.eq(st.instance_id.as_str()))
                        .filter(message::Column::MessageId.eq(id.as_str()))
                        .filter(message::Column::Direction.eq("out"))
                        .into_query(),
                )
                .await?;
            if rows.is_empty() && is_ack {
                continue;
            }
            if !rows.is_empty() && rank(&st.status) > rank("server_ack") {
                let added = Self::timeline(txn, &st.instance_id, id, "", "server_ack", at).await?;
                if added > 0 {
                    unacked.push(id.clone());
                }
            }
            let recipient = st.recipient.clone().unwrap_or_default();
            let added =
                Self::timeline(txn, &st.instance_id, id, &recipient, &st.status, at).await?;
            if is_ack && added == 0 {
                continue;
            }
            reported.push(id.clone());
            for r in rows {
                let (seq, old) = (r.i64("seq")?, r.string("status")?);
                let new = if st.status == "error" {
                    "failed"
                } else {
                    st.status.as_str()
                };
                if rank(new) > rank(&old) || (new == "failed" && rank(&old) < 3) {
                    txn.run(
                        &message::Entity::update_many()
                            .col_expr(message::Column::Status, Expr::value(new))
                            .col_expr(message::Column::UpdatedAt, Expr::value(now))
                            .filter(message::Column::Seq.eq(seq)),
                    )
                    .await?;
                }
            }
        }
        if is_ack && reported.is_empty() {
            return Ok(false);
        }
        // The ack a receipt implies, first; then this status (an ack lists only the
        // ids it reports: acks carry one id).
        let implied = (!unacked.is_empty()).then(|| {
            MessageStatus {
                message_ids: unacked,
                status: "server_ack".into(),
                from: String::new(),
                recipient: None,
                ..st.clone()
            }
            .to_envelope()
            .to_string()
        });
        let partial = (reported.len() < st.message_ids.len()).then(|| {
            MessageStatus {
                message_ids: reported,
                ..st.clone()
            }
            .to_envelope()
            .to_string()
        });
        let mut queued = false;
        for body in [
            implied.as_deref(),
            Some(partial.as_deref().unwrap_or(payload)),
        ]
        .into_iter()
        .flatten()
        {
            let (e, q) =
                Self::append(txn, &st.instance_id, "message_status", body, webhook, now).await?;
            out.push(e);
            queued |= q;
        }
        Ok(queued)
    }

    /// Appends a lifecycle notice to the event log (and the outbox if subscribed).
    pub async fn record_lifecycle(&self, n: &LifecycleNotice) -> Result<(), DbErr> {
        self.record_event(n.instance_id(), &n.to_envelope())
            .await
            .map(|_| ())
    }

    /// Records an instance event (envelope `{event, timestamp, data}`) in the event log
    /// and, when the webhook takes it, the outbox; returns it with its cursor.
    pub async fn record_event(&self, instance_id: &str, env: &Value) -> Result<LiveEvent, DbErr> {
        let webhook = self.webhook_filter(instance_id).await?;
        let name = env["event"].as_str().unwrap_or_default().to_string();
        let _stripe = self.stripe(instance_id).await;
        let (id, payload, now) = (instance_id.to_string(), env.to_string(), now_ms());
        let (e, queued) = queue::write(&self.db, true, move |txn| {
            Box::pin(async move { Self::append(&txn, &id, &name, &payload, &webhook, now).await })
        })
        .await?;
        if queued {
            self.wake.notify_one();
        }
        Ok(e)
    }

    /// Events of an instance after `after` (exclusive), oldest first; `kinds` limits
    /// them to those event names.
    pub async fn events_after(
        &self,
        instance_id: &str,
        after: i64,
        limit: u64,
        kinds: Option<&[&str]>,
    ) -> Result<Vec<LiveEvent>, DbErr> {
        let mut q = event::Entity::find()
            .filter(event::Column::InstanceId.eq(instance_id))
            .filter(event::Column::Seq.gt(after));
        if let Some(k) = kinds {
            q = q.filter(event::Column::Event.is_in(k.iter().copied()));
        }
        Ok(q.order_by_asc(event::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|r| LiveEvent {
                json: event_json(&r.payload, r.seq),
                cursor: r.seq,
                event: r.event,
            })
            .collect())
    }

    /// A page of an instance's message log, newest first.
    pub async fn list_messages(
        &self,
        instance_id: &str,
        q: &MessageQuery,
    ) -> Result<MessagePage, DbErr> {
        let limit = q.limit.clamp(1, 500);
        let mut s = message::Entity::find().filter(message::Column::InstanceId.eq(instance_id));
        if let Some(c) = &q.chat {
            s = s.filter(message::Column::Chat.eq(c.as_str()));
        }
        if let Some(d) = &q.direction {
            s = s.filter(message::Column::Direction.eq(d.as_str()));
        }
        if let Some(t) = q.since {
            s = s.filter(message::Column::Timestamp.gte(t));
        }
        if let Some(t) = q.before {
            s = s.filter(message::Column::Timestamp.lt(t));
        }
        if let Some(c) = q.cursor {
            s = s.filter(message::Column::Seq.lt(c));
        }
        let mut rows = s
            .order_by_desc(message::Column::Seq)
            .limit(limit + 1)
            .all(&self.db)
            .await?;
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = if more {
            rows.last().map(|r| r.seq)
        } else {
            None
        };
        Ok(MessagePage {
            messages: rows.iter().map(message_json).collect(),
            next_cursor,
        })
    }

    /// One message (the newest with that id) with its status timeline.
    /// A logged message, as actions refer to it (the newest with this id).
    pub async fn message_ref(
        &self,
        instance_id: &str,
        message_id: &str,
    ) -> Result<Option<actors::instance::MessageRef>, DbErr> {
        let row = message::Entity::find()
            .filter(message::Column::InstanceId.eq(instance_id))
            .filter(message::Column::MessageId.eq(message_id))
            .order_by_desc(message::Column::Seq)
            .one(&self.db)
            .await?;
        Ok(row.map(|r| actors::instance::MessageRef {
            id: r.message_id,
            chat: r.chat,
            sender: r.sender,
            from_me: r.from_me,
            kind: r.kind,
            body: r.body,
            raw: r.raw,
        }))
    }

    pub async fn get_message(
        &self,
        instance_id: &str,
        message_id: &str,
    ) -> Result<Option<Value>, DbErr> {
        let Some(row) = message::Entity::find()
            .filter(message::Column::InstanceId.eq(instance_id))
            .filter(message::Column::MessageId.eq(message_id))
            .order_by_desc(message::Column::Seq)
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let timeline = status::Entity::find()
            .filter(status::Column::InstanceId.eq(instance_id))
            .filter(status::Column::MessageId.eq(message_id))
            .order_by_asc(status::Column::At)
            .order_by_asc(status::Column::Seq)
            .all(&self.db)
            .await?;
        let mut v = message_json(&row);
        v["statuses"] = Value::Array(
            timeline
                .iter()
                .map(|t| {
                    json!({
                        "status": t.status,
                        "recipient": Some(&t.recipient).filter(|r| !r.is_empty()),
                        "at": ms_rfc3339(t.at),
                    })
                })
                .collect(),
        );
        Ok(Some(v))
    }

    /// Removes what retention says is old, as of `now` (unix ms). Outbox rows go only
    /// once delivered or dead.
    pub async fn prune_at(&self, r: Retention, now: i64) -> Result<Pruned, DbErr> {
        let mut p = Pruned::default();
        if let Some(keep) = r.payload_ms {
            let cutoff = now - keep;
            let _turn = crate::store::db::write_turn(&self.db).await;
            for (status, at) in [
                (crate::webhook::DELIVERED, outbox::Column::DeliveredAt),
                (crate::webhook::DEAD, outbox::Column::NextAttemptAt),
            ] {
                p.payloads += outbox::Entity::update_many()
                    .col_expr(outbox::Column::Payload, Expr::value(""))
                    .filter(outbox::Column::Status.eq(status))
                    .filter(outbox::Column::Payload.ne(""))
                    .filter(at.lt(cutoff))
                    .exec(&self.db)
                    .await?
                    .rows_affected;
            }
        }
        if r.days > 0 {
            let cutoff = now - i64::from(r.days) * 86_400_000;
            p.messages += message::Entity::delete_many()
                .filter(message::Column::CreatedAt.lt(cutoff))
                .exec(&self.db)
                .await?
                .rows_affected;
            p.statuses += status::Entity::delete_many()
                .filter(status::Column::At.lt(cutoff))
                .exec(&self.db)
                .await?
                .rows_affected;
            p.events += event::Entity::delete_many()
                .filter(event::Column::CreatedAt.lt(cutoff))
                .exec(&self.db)
                .await?
                .rows_affected;
            p.outbox += outbox::Entity::delete_many()
                .filter(outbox::Column::CreatedAt.lt(cutoff))
                .filter(outbox::Column::Status.ne(crate::webhook::PENDING))
                .exec(&self.db)
                .await?
                .rows_affected;
        }
        if r.max_rows_per_instance > 0 {
            let ids: Vec<String> = message::Entity::find()
                .select_only()
                .column(message::Column::InstanceId)
                .distinct()
                .into_tuple()
                .all(&self.db)
                .await?;
            for id in ids {
                // The seq of the newest row past the cap: it and everything older go.
                let edge: Option<i64> = message::Entity::find()
                    .select_only()
                    .column(message::Column::Seq)
                    .filter(message::Column::InstanceId.eq(id.as_str()))
                    .order_by_desc(message::Column::Seq)
                    .offset(r.max_rows_per_instance)
                    .into_tuple()
                    .one(&self.db)
                    .await?;
                if let Some(edge) = edge {
                    p.messages += message::Entity::delete_many()
                        .filter(message::Column::InstanceId.eq(id.as_str()))
                        .filter(message::Column::Seq.lte(edge))
                        .exec(&self.db)
                        .await?
                        .rows_affected;
                }
            }
        }
        Ok(p)
    }

    /// Prunes every `every` until the process ends (and expired idempotency keys).
    pub fn spawn_pruner(
        self,
        r: Retention,
        keys: crate::store::idempotency::IdempotencyKeys,
        every: std::time::Duration,
    ) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if r.days > 0 || r.max_rows_per_instance > 0 || r.payload_ms.is_some() {
                    match self.prune_at(r, now_ms()).await {
                        Ok(p) if p != Pruned::default() => tracing::info!(?p, "retention pruned"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "retention pruning failed"),
                    }
                }
                if let Err(e) = keys.prune().await {
                    tracing::warn!(error = %e, "pruning idempotency keys failed");
                }
            }
        });
    }

    /// Whether the database takes writes: one tiny write transaction.
    pub async fn probe_writable(&self) -> Result<(), DbErr> {
        let txn = crate::store::db::begin_immediate(&self.db).await?;
        event::Entity::delete_many()
            .filter(event::Column::Seq.lt(0))
            .exec(&txn)
            .await?;
        // An UPDATE that matches nothing still needs the write lock on SQLite.
        crate::store::settings::setting::Entity::update_many()
            .col_expr(
                crate::store::settings::setting::Column::UpdatedAt,
                Expr::value(0),
            )
            .filter(crate::store::settings::setting::Column::Key.eq("sudevwa.write-probe"))
            .exec(&txn)
            .await?;
        txn.commit().await
    }
}

fn ms_rfc3339(ms: i64) -> Value {
    json!(chrono::DateTime::from_timestamp_millis(ms).map(actors::events::rfc3339))
}

/// A message-log row as the API shows it.
pub fn message_json(r: &message::Model) -> Value {
    let media: Value = r
        .media
        .as_deref()
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or(Value::Null);
    json!({
        "messageId": r.message_id,
        "direction": r.direction,
        "chat": r.chat,
        "from": Some(&r.sender).filter(|s| !s.is_empty()),
        "fromPhone": r.sender_phone,
        "fromLid": r.sender_lid,
        "pushName": r.push_name,
        "fromMe": r.from_me,
        "isGroup": r.is_group,
        "type": r.kind,
        "text": r.body,
        "media": media,
        "status": r.status,
        "timestamp": ms_rfc3339(r.timestamp),
        "storedAt": ms_rfc3339(r.created_at),
        "cursor": r.seq.to_string(),
    })
}

/// A journal error as the sink reports it; a write the cluster's fence refused is
/// noted (logged, the instance's client stopped).
fn sink_err(e: DbErr) -> String {
    crate::store::db::note_fenced(&e);
    e.to_string()
}

#[async_trait]
impl EventSink for Journal {
    async fn commit_incoming(
        &self,
        instance_id: &str,
        msgs: &[IncomingMessage],
    ) -> Result<Vec<LiveEvent>, String> {
        Journal::commit_incoming(self, instance_id, msgs)
            .await
            .map_err(|e| format!("committing incoming messages failed: {}", sink_err(e)))
    }

    async fn record_sent(&self, sent: &SentRecord) -> Result<(), String> {
        Journal::record_sent(self, sent).await.map_err(sink_err)
    }

    async fn record_status(&self, status: &MessageStatus) -> Result<Vec<LiveEvent>, String> {
        Journal::record_status(self, status).await.map_err(sink_err)
    }

    async fn record_statuses(&self, statuses: &[MessageStatus]) -> Result<Vec<LiveEvent>, String> {
        Journal::record_statuses(self, statuses)
            .await
            .map_err(sink_err)
    }

    async fn record_lifecycle(&self, notice: &LifecycleNotice) -> Result<(), String> {
        Journal::record_lifecycle(self, notice)
            .await
            .map_err(sink_err)
    }

    async fn message_ref(
        &self,
        instance_id: &str,
        message_id: &str,
    ) -> Result<Option<actors::instance::MessageRef>, String> {
        Journal::message_ref(self, instance_id, message_id)
            .await
            .map_err(sink_err)
    }

    async fn record_event(&self, instance_id: &str, env: &Value) -> Result<LiveEvent, String> {
        Journal::record_event(self, instance_id, env)
            .await
            .map_err(sink_err)
    }

    async fn probe_writable(&self) -> Result<(), String> {
        Journal::probe_writable(self).await.map_err(sink_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The short way gives exactly what parsing, adding the cursor and writing again
    /// gives, for envelopes and for what takes the long way.
    #[test]
    fn event_json_matches_the_parsed_envelope_with_its_cursor() {
        let envelopes = [
            json!({"event": "message", "timestamp": 1, "data": {"text": "a \"quoted\" \\ line\nnext ✓", "id": "X"}}),
            json!({"event": "message_status", "timestamp": 1_733_000_000_000_i64, "data": {"status": "read", "ids": ["a", "b"]}}),
            json!({"data": null, "event": "x", "timestamp": 0}),
            json!({"at": 1, "event": "x"}),
            json!({"cursor": "7", "event": "x"}),
            json!({}),
            json!([1, 2]),
        ];
        for env in envelopes {
            let payload = env.to_string();
            let want = with_cursor(env.clone(), 42).to_string();
            assert_eq!(&*event_json(&payload, 42), want.as_str(), "for {payload}");
        }
    }
}
