//! Incoming traffic of one instance: decrypted messages become `incoming_message`
//! payloads (stored, then broadcast), receipts and server acks become message
//! statuses, and a failed commit withholds acks until storage recovers.

use super::{InstanceMsg, InstanceState};
use crate::events::{IncomingMessage, MediaInfo, MessageStatus};
use chrono::Utc;
use ractor::ActorRef;
use whatsapp_rust::wacore::proto_helpers::MessageExt as _;
use whatsapp_rust::wacore::types::events::{MessageBatch, Receipt, ServerAck};
use whatsapp_rust::waproto::whatsapp as wa;

impl InstanceState {
    /// A batch of decrypted messages.
    pub(super) async fn messages(&mut self, batch: &MessageBatch) {
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

    /// A receipt from a recipient (delivered, read, played, ...).
    pub(super) async fn receipt(&mut self, r: &Receipt) {
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

    /// WhatsApp's server took (or refused) one of our messages.
    pub(super) async fn server_ack(&mut self, a: &ServerAck) {
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

    /// Queues a message status to be stored (timeline, event log, outbox) and
    /// broadcast, in order, without waiting for the database.
    async fn status_event(&mut self, st: MessageStatus) {
        self.statuses.push(st).await;
    }

    /// Client generation `generation` could not commit incoming messages: their acks
    /// were withheld (WhatsApp still holds them); probe storage until it recovers.
    pub(super) fn commit_failed(&mut self, myself: &ActorRef<InstanceMsg>, generation: u64) {
        if generation == self.generation && !self.recovering {
            self.recovering = true;
            tracing::warn!(instance_id = %self.id, "incoming messages could not be committed; acks withheld until storage recovers");
            crate::durability::spawn_storage_probe(self.env.sink.clone(), myself.clone());
        }
    }

    /// Storage takes writes again: reconnect so WhatsApp redelivers what was not
    /// acknowledged; the durability hook then commits it.
    pub(super) async fn storage_recovered(&mut self) {
        self.recovering = false;
        if let Some(client) = self.client.clone() {
            if self.status.is_connected()
                || self.status == crate::status::InstanceStatus::Reconnecting
            {
                tracing::info!(instance_id = %self.id, "storage recovered; reconnecting for redelivery");
                client.reconnect_immediately().await;
            }
        }
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
    let m = m.get_base_message();
    if m.protocol_message.is_set() {
        return true;
    }
    m.sender_key_distribution_message.is_set() && describe(m).0 == "other"
}

/// The message type, its text (or caption) and media metadata, read from the message
/// inside whatever wraps it (disappearing-messages `ephemeralMessage`, view-once,
/// document with caption, edit, a copy sent from the account's own phone).
pub fn describe(m: &wa::Message) -> (&'static str, String, Option<MediaInfo>) {
    let m = m.get_base_message();
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
    if let Some(x) = m.location_message.as_option() {
        let text = [x.name.as_deref(), x.address.as_deref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        return ("location", text, None);
    }
    if let Some(x) = m.live_location_message.as_option() {
        return ("location", opt(&x.caption), None);
    }
    if let Some(x) = m.contact_message.as_option() {
        return ("contact", opt(&x.display_name), None);
    }
    if let Some(x) = m.contacts_array_message.as_option() {
        return ("contact", opt(&x.display_name), None);
    }
    if let Some(x) = m.reaction_message.as_option() {
        return ("reaction", opt(&x.text), None);
    }
    for poll in [
        &m.poll_creation_message,
        &m.poll_creation_message_v2,
        &m.poll_creation_message_v3,
    ] {
        if let Some(x) = poll.as_option() {
            return ("poll", opt(&x.name), None);
        }
    }
    ("other", String::new(), None)
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
        assert!(!is_signalling(&location), "a location is a user message");
        assert_eq!(describe(&location).0, "location");
        let poll = wa::Message {
            poll_creation_message_v3: wa::message::PollCreationMessage::default().into(),
            ..Default::default()
        };
        assert!(!is_signalling(&poll));
        assert_eq!(describe(&poll).0, "poll");
        let odd = wa::Message {
            call: wa::message::Call::default().into(),
            ..Default::default()
        };
        assert!(
            !is_signalling(&odd),
            "unknown kinds still reach users as 'other'"
        );
        assert_eq!(describe(&odd).0, "other");
    }

    fn text(t: &str) -> wa::Message {
        wa::Message {
            conversation: Some(t.into()),
            ..Default::default()
        }
    }

    fn wrapped(inner: wa::Message) -> wa::message::FutureProofMessage {
        wa::message::FutureProofMessage {
            message: inner.into(),
        }
    }

    #[test]
    fn wrapped_messages_are_described_by_what_they_wrap() {
        // A text in a chat with disappearing messages on.
        let ephemeral = wa::Message {
            ephemeral_message: wrapped(text("gone soon")).into(),
            ..Default::default()
        };
        assert_eq!(describe(&ephemeral).0, "text");
        assert_eq!(describe(&ephemeral).1, "gone soon");
        // A view-once image, inside a disappearing chat.
        let image = wa::Message {
            image_message: wa::message::ImageMessage {
                caption: Some("once".into()),
                mimetype: Some("image/jpeg".into()),
                file_length: Some(42),
                ..Default::default()
            }
            .into(),
            ..Default::default()
        };
        let view_once = wa::Message {
            ephemeral_message: wrapped(wa::Message {
                view_once_message_v2: wrapped(image).into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let (kind, caption, media) = describe(&view_once);
        assert_eq!((kind, caption.as_str()), ("image", "once"));
        assert_eq!(
            media.map(|m| (m.mimetype, m.size)),
            Some(("image/jpeg".into(), 42))
        );
        // A document sent with a caption.
        let document = wa::Message {
            document_with_caption_message: wrapped(wa::Message {
                document_message: wa::message::DocumentMessage {
                    caption: Some("the report".into()),
                    file_name: Some("r.pdf".into()),
                    ..Default::default()
                }
                .into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let (kind, caption, media) = describe(&document);
        assert_eq!((kind, caption.as_str()), ("document", "the report"));
        assert_eq!(media.and_then(|m| m.file_name).as_deref(), Some("r.pdf"));
        // A copy of what the account's own phone sent.
        let from_phone = wa::Message {
            device_sent_message: wa::message::DeviceSentMessage {
                destination_jid: Some("6281@s.whatsapp.net".into()),
                message: text("sent from the phone").into(),
                ..Default::default()
            }
            .into(),
            ..Default::default()
        };
        assert_eq!(
            describe(&from_phone),
            ("text", "sent from the phone".into(), None)
        );
        // A wrapped protocol message is still signalling.
        let wrapped_protocol = wa::Message {
            ephemeral_message: wrapped(wa::Message {
                protocol_message: wa::message::ProtocolMessage::default().into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        assert!(is_signalling(&wrapped_protocol));
    }
}
