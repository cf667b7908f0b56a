//! What instance actors tell the world: lifecycle notices for `/ws` (a global bounded
//! broadcast) and `incoming_message` payloads for `/api/listen/:id` and webhooks (a
//! per-instance bounded broadcast plus a durable [`IncomingSink`]).
//!
//! Payload shapes follow API.md exactly: snake_case keys, the SUDEVWA event names, and
//! the `{"event", "timestamp", "data"}` envelope built by [`envelope`].

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{json, Value};

/// A lifecycle notice for `/ws`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", content = "data", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LifecycleNotice {
    /// A new QR code to show.
    QrGenerated {
        instance_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        phone_number: Option<String>,
        qr_data: String,
        expires_at: String,
    },
    /// A pairing code to type on the phone (the pairing-code alternative to the QR).
    PairCode {
        instance_id: String,
        phone_number: String,
        code: String,
        expires_at: String,
    },
    /// The phone scanned the code and pairing succeeded.
    QrSuccess {
        instance_id: String,
        status: &'static str,
    },
    /// The QR window closed without a scan.
    QrTimeout {
        instance_id: String,
        status: &'static str,
    },
    /// The QR flow was cancelled on request.
    QrCancelled {
        instance_id: String,
        status: &'static str,
        message: String,
    },
    /// The instance's status changed.
    InstanceStatusChanged {
        instance_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        phone_number: Option<String>,
        status: String,
        is_connected: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        connected_at: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        disconnected_at: Option<String>,
    },
    /// Something went wrong that an operator should see.
    InstanceError {
        instance_id: String,
        code: String,
        message: String,
    },
}

impl LifecycleNotice {
    /// The instance this notice is about (for per-token filtering on `/ws`).
    pub fn instance_id(&self) -> &str {
        match self {
            Self::QrGenerated { instance_id, .. }
            | Self::PairCode { instance_id, .. }
            | Self::QrSuccess { instance_id, .. }
            | Self::QrTimeout { instance_id, .. }
            | Self::QrCancelled { instance_id, .. }
            | Self::InstanceStatusChanged { instance_id, .. }
            | Self::InstanceError { instance_id, .. } => instance_id,
        }
    }

    /// The `/ws` envelope with the current time.
    pub fn to_envelope(&self) -> Value {
        // Serializing a plain enum of strings and bools cannot fail.
        let v = serde_json::to_value(self).unwrap_or(Value::Null);
        envelope(v["event"].as_str().unwrap_or_default(), v["data"].clone())
    }
}

/// Media metadata of an incoming message.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MediaInfo {
    pub mimetype: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// Audio recorded as a voice note (push-to-talk).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ptt: bool,
    /// Duration of audio and video.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// An animated sticker.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub animated: bool,
}

/// The message a reply quotes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quoted {
    pub message_id: String,
    /// The quoted message's sender (JID), when the reply names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The quoted message's text or caption, at most 200 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// The link preview of a text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkPreview {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A shared location (`live`: a live location's latest point).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub live: bool,
}

/// A shared contact card.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContactCard {
    pub display_name: String,
    pub vcard: String,
}

/// A reaction to a message (`removed`: the sender took its reaction back).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reaction {
    /// The message reacted to.
    pub message_id: String,
    pub emoji: String,
    pub removed: bool,
}

/// A poll as created.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Poll {
    pub name: String,
    pub options: Vec<String>,
    /// How many options a voter may choose (0: any number).
    pub selectable_count: u32,
}

/// A vote on a poll, decrypted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PollVote {
    /// The poll voted on.
    pub poll_message_id: String,
    /// The options now chosen (empty: the vote was taken back); `None` when the vote
    /// could not be decrypted (the poll is not in the message log).
    pub selected_options: Option<Vec<String>>,
}

/// What an incoming message carries beyond its type and text (each field only when
/// present), the same in the listen socket, the webhook and the event log.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Details {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quoted: Option<Quoted>,
    /// JIDs mentioned in the text.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_preview: Option<LinkPreview>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<ContactCard>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reaction: Option<Reaction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll: Option<Poll>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_vote: Option<PollVote>,
    /// `message_edited` / `message_revoked`: the id of the message edited or deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_message_id: Option<String>,
    /// `message_undecryptable`: why the message could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Sent as view-once.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub view_once: bool,
    /// Sent in a chat with disappearing messages on.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
    /// The disappearing-messages timer, in seconds, when the message carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ephemeral_expiration: Option<u32>,
}

/// The `incoming_message` payload (API.md), sent to listeners and webhooks alike.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncomingMessage {
    pub instance_id: String,
    /// Sender JID as WhatsApp addressed it (may be `@lid`).
    pub from: String,
    pub from_me: bool,
    /// Text: conversation, extended text, or a media caption.
    pub message: String,
    /// Unix seconds.
    pub timestamp: i64,
    pub is_group: bool,
    pub message_id: String,
    pub push_name: String,
    /// Chat JID (the group for group messages).
    pub chat: String,
    /// Sender's phone number (digits), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_phone: Option<String>,
    /// Sender's LID JID, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_lid: Option<String>,
    /// text, image, video, audio, document, sticker, location, contact, reaction,
    /// poll, other — of the message inside any wrapper (disappearing, view-once, ...).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaInfo>,
    #[serde(flatten)]
    pub details: Details,
    /// The message protobuf, kept in the message log (never sent in events).
    #[serde(skip)]
    pub raw: Option<Vec<u8>>,
}

/// Largest message protobuf kept in the message log; a bigger one (a huge embedded
/// thumbnail) is kept without it.
pub const RAW_MAX: usize = 128 * 1024;

/// The protobuf of `m` to keep beside its log row, if small enough.
pub fn raw_of(m: &whatsapp_rust::waproto::whatsapp::Message) -> Option<Vec<u8>> {
    use whatsapp_rust::buffa::Message as _;
    Some(m.encode_to_vec()).filter(|b| b.len() <= RAW_MAX)
}

/// `type` of an edit of an earlier message (event `message_edited`).
pub const KIND_EDIT: &str = "edit";
/// `type` of a delete-for-everyone (event `message_revoked`).
pub const KIND_REVOKE: &str = "revoke";
/// `type` of a message that could not be decrypted (event `message_undecryptable`).
pub const KIND_UNDECRYPTABLE: &str = "undecryptable";

impl IncomingMessage {
    /// The event this message is reported as: `message_edited`, `message_revoked`,
    /// `message_undecryptable`, or `incoming_message`.
    pub fn event(&self) -> &'static str {
        match self.kind.as_str() {
            KIND_EDIT => "message_edited",
            KIND_REVOKE => "message_revoked",
            KIND_UNDECRYPTABLE => "message_undecryptable",
            _ => "incoming_message",
        }
    }

    /// The listen-socket / webhook envelope. Its timestamp is the message's own, so
    /// the listen socket and the webhook carry byte-identical payloads.
    pub fn to_envelope(&self) -> Value {
        let at = DateTime::from_timestamp(self.timestamp, 0).unwrap_or_else(Utc::now);
        json!({
            "event": self.event(),
            "timestamp": rfc3339(at),
            "data": serde_json::to_value(self).unwrap_or(Value::Null),
        })
    }
}

/// A delivery/read status of messages this instance sent (`message_status` on the
/// listen socket).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageStatus {
    pub instance_id: String,
    pub message_ids: Vec<String>,
    /// `delivered`, `read`, `played`, `sent`, ... (WhatsApp's receipt type).
    pub status: String,
    /// The chat the messages belong to.
    pub chat: String,
    /// Who sent the receipt.
    pub from: String,
    /// The device that sent the receipt (`from` with its device part), for the
    /// per-recipient-device timeline of group messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// Unix seconds.
    pub timestamp: i64,
}

impl MessageStatus {
    /// The listen-socket envelope.
    pub fn to_envelope(&self) -> Value {
        let at = DateTime::from_timestamp(self.timestamp, 0).unwrap_or_else(Utc::now);
        json!({
            "event": "message_status",
            "timestamp": rfc3339(at),
            "data": serde_json::to_value(self).unwrap_or(Value::Null),
        })
    }
}

/// `{"event", "timestamp", "data"}` with the current time in RFC 3339 UTC.
pub fn envelope(event: &str, data: Value) -> Value {
    json!({"event": event, "timestamp": rfc3339(Utc::now()), "data": data})
}

/// RFC 3339 UTC with second precision, as the API writes times.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Where incoming messages must go durably (the webhook outbox) before anything else
/// is done with them. An error is logged by the actor and reported as INSTANCE_ERROR;
/// it never crashes the actor.
/// An event as the durable event log holds it: its cursor (the log's sequence number,
/// as a string: opaque to clients) and the exact JSON text sent to listeners and
/// webhooks (`{"event", "timestamp", "data", "cursor"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEvent {
    pub cursor: i64,
    /// `incoming_message`, `message_status` or a lifecycle event name.
    pub event: String,
    pub json: std::sync::Arc<str>,
}

/// Adds the cursor to an envelope built by [`envelope`] and friends.
pub fn with_cursor(mut envelope: Value, cursor: i64) -> Value {
    if let Some(o) = envelope.as_object_mut() {
        o.insert("cursor".into(), Value::String(cursor.to_string()));
    }
    envelope
}

/// A message this instance sent, for the message log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SentRecord {
    pub instance_id: String,
    pub message_id: String,
    /// The chat (recipient JID or group JID).
    pub chat: String,
    pub is_group: bool,
    #[serde(rename = "type")]
    pub kind: String,
    /// Text or caption.
    pub body: String,
    pub media: Option<MediaInfo>,
    /// Unix seconds.
    pub timestamp: i64,
    /// The message protobuf (see [`raw_of`]).
    #[serde(skip)]
    pub raw: Option<Vec<u8>>,
}

/// Where everything an instance observes is made durable: the message log, the status
/// timeline, the durable event log (cursors) and the webhook outbox.
///
/// `commit_incoming` is called from whatsapp-rust's inbound durability hook, before the
/// client acknowledges the messages to WhatsApp: it must be all-or-nothing and
/// idempotent on (chat, sender, message id). It returns the events it newly stored
/// (already-stored messages produce none), which the caller then broadcasts live.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn commit_incoming(
        &self,
        instance_id: &str,
        msgs: &[IncomingMessage],
    ) -> Result<Vec<LiveEvent>, String>;
    /// A message the instance sent (status `sent`).
    async fn record_sent(&self, sent: &SentRecord) -> Result<(), String>;
    /// A status of sent messages (server ack, delivered, read, played, error); the
    /// events it gave, in order (none, one, or a sink's own additions such as an ack
    /// a receipt overtook).
    async fn record_status(&self, status: &MessageStatus) -> Result<Vec<LiveEvent>, String>;
    /// Several statuses of one instance, in order; their events, in order. Sinks that
    /// can store them together (one transaction) override this.
    async fn record_statuses(&self, statuses: &[MessageStatus]) -> Result<Vec<LiveEvent>, String> {
        let mut out = Vec::with_capacity(statuses.len());
        for st in statuses {
            out.extend(self.record_status(st).await?);
        }
        Ok(out)
    }
    /// Another instance event (`group_update`, ...): an envelope `{event, timestamp,
    /// data}` for the event log and the webhook; returns it with its cursor.
    /// The default keeps nothing (cursor 0): the event reaches live listeners only.
    async fn record_event(
        &self,
        _instance_id: &str,
        envelope: &Value,
    ) -> Result<LiveEvent, String> {
        Ok(LiveEvent {
            cursor: 0,
            event: envelope["event"].as_str().unwrap_or_default().into(),
            json: envelope.to_string().into(),
        })
    }
    /// A logged message (poll votes are decrypted with their poll's kept secret).
    /// The default knows none.
    async fn message_ref(
        &self,
        _instance_id: &str,
        _message_id: &str,
    ) -> Result<Option<crate::instance::MessageRef>, String> {
        Ok(None)
    }
    /// A lifecycle notice, for the event log and subscribed webhooks.
    async fn record_lifecycle(&self, notice: &LifecycleNotice) -> Result<(), String>;
    /// Succeeds when the storage takes writes again (after a failed commit).
    async fn probe_writable(&self) -> Result<(), String>;
}

/// A sink that stores nothing; events still reach live listeners (cursor 0).
pub struct NoSink;

#[async_trait]
impl EventSink for NoSink {
    async fn commit_incoming(
        &self,
        _instance_id: &str,
        msgs: &[IncomingMessage],
    ) -> Result<Vec<LiveEvent>, String> {
        Ok(msgs
            .iter()
            .map(|m| LiveEvent {
                cursor: 0,
                event: m.event().into(),
                json: m.to_envelope().to_string().into(),
            })
            .collect())
    }
    async fn record_sent(&self, _sent: &SentRecord) -> Result<(), String> {
        Ok(())
    }
    async fn record_status(&self, status: &MessageStatus) -> Result<Vec<LiveEvent>, String> {
        Ok(vec![LiveEvent {
            cursor: 0,
            event: "message_status".into(),
            json: status.to_envelope().to_string().into(),
        }])
    }
    async fn record_lifecycle(&self, _notice: &LifecycleNotice) -> Result<(), String> {
        Ok(())
    }
    async fn probe_writable(&self) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_envelopes_have_the_documented_shape() {
        let n = LifecycleNotice::QrGenerated {
            instance_id: "i1".into(),
            phone_number: None,
            qr_data: "2@abc".into(),
            expires_at: "2026-01-01T00:00:00Z".into(),
        };
        let e = n.to_envelope();
        assert_eq!(e["event"], "QR_GENERATED");
        assert_eq!(
            e["data"],
            json!({"instance_id": "i1", "qr_data": "2@abc", "expires_at": "2026-01-01T00:00:00Z"})
        );
        assert!(e["timestamp"].as_str().unwrap().ends_with('Z'));
        let e = LifecycleNotice::InstanceStatusChanged {
            instance_id: "i1".into(),
            phone_number: Some("6281".into()),
            status: "online".into(),
            is_connected: true,
            connected_at: None,
            disconnected_at: None,
        }
        .to_envelope();
        assert_eq!(e["event"], "INSTANCE_STATUS_CHANGED");
        assert_eq!(e["data"]["is_connected"], true);
    }

    #[test]
    fn incoming_message_keys_match_api() {
        let m = IncomingMessage {
            instance_id: "i".into(),
            from: "1@s.whatsapp.net".into(),
            from_me: false,
            message: "hi".into(),
            timestamp: 1,
            is_group: false,
            message_id: "M".into(),
            push_name: "P".into(),
            chat: "1@s.whatsapp.net".into(),
            from_phone: Some("1".into()),
            from_lid: None,
            kind: "text".into(),
            media: None,
            details: Default::default(),
            raw: None,
        };
        let v = m.to_envelope();
        assert_eq!(v["event"], "incoming_message");
        let keys: Vec<_> = v["data"].as_object().unwrap().keys().cloned().collect();
        for k in [
            "instance_id",
            "from",
            "from_me",
            "message",
            "timestamp",
            "is_group",
            "message_id",
            "push_name",
            "chat",
            "from_phone",
            "type",
        ] {
            assert!(keys.contains(&k.to_string()), "{k}");
        }
    }
}
