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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MediaInfo {
    pub mimetype: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
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
    /// text, image, video, audio, document, sticker, other.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaInfo>,
}

impl IncomingMessage {
    /// The listen-socket / webhook envelope. Its timestamp is the message's own, so
    /// the listen socket and the webhook carry byte-identical payloads.
    pub fn to_envelope(&self) -> Value {
        let at = DateTime::from_timestamp(self.timestamp, 0).unwrap_or_else(Utc::now);
        json!({
            "event": "incoming_message",
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
#[async_trait]
pub trait IncomingSink: Send + Sync + 'static {
    /// Records `msg` durably.
    async fn record(&self, msg: &IncomingMessage) -> Result<(), String>;
}

/// A sink that keeps nothing (webhooks disabled).
pub struct NoSink;

#[async_trait]
impl IncomingSink for NoSink {
    async fn record(&self, _msg: &IncomingMessage) -> Result<(), String> {
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
