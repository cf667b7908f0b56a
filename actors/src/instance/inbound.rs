//! Incoming traffic of one instance: decrypted messages become `incoming_message`
//! payloads (stored, then broadcast), receipts and server acks become message
//! statuses, and a failed commit withholds acks until storage recovers.

use super::{InstanceMsg, InstanceState};
use crate::events::{
    ContactCard, Details, IncomingMessage, LinkPreview, Location, MediaInfo, MessageStatus, Poll,
    Quoted, Reaction,
};
use chrono::Utc;
use ractor::ActorRef;
use whatsapp_rust::wacore::proto_helpers::MessageExt as _;
use whatsapp_rust::wacore::types::events::{MessageBatch, Receipt, ServerAck};
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::Jid;

impl InstanceState {
    /// A batch of decrypted messages.
    pub(super) async fn messages(&mut self, batch: &MessageBatch) {
        self.save_media(batch);
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
        let mut msgs = msgs;
        if let Some(client) = &self.client {
            super::fill_ids(client, &mut msgs).await;
            super::open_votes(client, self.env.sink.as_ref(), &self.id, &mut msgs).await;
        }
        self.commit(msgs).await
    }

    /// Stores messages (after WhatsApp's ack), then broadcasts what was new.
    pub(super) async fn commit(&mut self, msgs: Vec<IncomingMessage>) {
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

    /// Records another event (`group_update`, ...) and broadcasts it.
    pub(super) async fn record_event(&mut self, env: serde_json::Value) {
        match self.env.sink.record_event(&self.id, &env).await {
            Ok(e) => {
                let _ = self.listeners.send(e);
            }
            Err(e) => {
                tracing::error!(instance_id = %self.id, error = %e, "recording an event failed");
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

/// The payload of a decrypted message: `incoming_message`, or `message_edited` /
/// `message_revoked` for an edit or a delete-for-everyone of an earlier message.
pub fn incoming(
    instance_id: &str,
    m: &wa::Message,
    info: &whatsapp_rust::wacore::types::message::MessageInfo,
) -> IncomingMessage {
    let src = &info.source;
    let Described {
        kind,
        text,
        media,
        details,
    } = read(m);
    let sender = src.sender.to_non_ad();
    let (from_phone, from_lid) = sender_ids(&sender, src.sender_alt.as_ref());
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
        details,
        raw: crate::events::raw_of(m),
    }
}

/// The `message_undecryptable` payload: a message WhatsApp delivered that this device
/// could not decrypt (the client asks the sender to resend it; if that works, it
/// arrives later as `incoming_message` with the same id).
pub fn undecryptable(
    instance_id: &str,
    u: &whatsapp_rust::wacore::types::events::UndecryptableMessage,
) -> IncomingMessage {
    let info = &u.info;
    let src = &info.source;
    let sender = src.sender.to_non_ad();
    let (from_phone, from_lid) = sender_ids(&sender, src.sender_alt.as_ref());
    let reason = if u.is_unavailable {
        format!("unavailable: {:?}", u.unavailable_type)
    } else {
        format!("decryption failed: {:?}", u.decrypt_fail_mode)
    };
    IncomingMessage {
        instance_id: instance_id.to_string(),
        from: sender.to_string(),
        from_me: src.is_from_me,
        message: String::new(),
        timestamp: info.timestamp.timestamp(),
        is_group: src.is_group,
        message_id: info.id.to_string(),
        push_name: info.push_name.clone(),
        chat: src.chat.to_non_ad().to_string(),
        from_phone,
        from_lid,
        kind: crate::events::KIND_UNDECRYPTABLE.to_string(),
        media: None,
        details: Details {
            reason: Some(reason.to_lowercase()),
            ..Default::default()
        },
        raw: None,
    }
}

/// The sender's phone digits and LID JID, from its JID and the alternative one
/// WhatsApp gave with it.
fn sender_ids(sender: &Jid, alt: Option<&Jid>) -> (Option<String>, Option<String>) {
    let alt = alt.map(|j| j.to_non_ad());
    if sender.is_pn() {
        (
            Some(sender.user.to_string()),
            alt.filter(|a| a.is_lid()).map(|a| a.to_string()),
        )
    } else if sender.is_lid() {
        (
            alt.filter(|a| a.is_pn()).map(|a| a.user.to_string()),
            Some(sender.to_string()),
        )
    } else {
        (None, None)
    }
}

/// Whether a decrypted message is device-to-device signalling (a protocol message
/// such as the phone's app-state key share, or a bare sender-key distribution)
/// rather than something a person sent. Edits and deletes-for-everyone are protocol
/// messages too, but people make them: they are reported.
pub fn is_signalling(m: &wa::Message) -> bool {
    let base = m.get_base_message();
    if let Some(p) = base.protocol_message.as_option() {
        return person_action(p).is_none();
    }
    base.sender_key_distribution_message.is_set() && describe(base).0 == "other"
}

/// An edit (`KIND_EDIT`) or a delete-for-everyone (`KIND_REVOKE`), else `None`.
fn person_action(p: &wa::message::ProtocolMessage) -> Option<&'static str> {
    use wa::message::protocol_message::Type;
    match p.r#type {
        Some(Type::MESSAGE_EDIT) => Some(crate::events::KIND_EDIT),
        Some(Type::REVOKE) => Some(crate::events::KIND_REVOKE),
        _ => None,
    }
}

/// A message read: its type, text (or caption), media metadata and details.
pub struct Described {
    pub kind: &'static str,
    pub text: String,
    pub media: Option<MediaInfo>,
    pub details: Details,
}

/// The message type, its text (or caption) and media metadata, read from the message
/// inside whatever wraps it (disappearing-messages `ephemeralMessage`, view-once,
/// document with caption, edit, a copy sent from the account's own phone).
pub fn describe(m: &wa::Message) -> (&'static str, String, Option<MediaInfo>) {
    let d = read(m);
    (d.kind, d.text, d.media)
}

/// Longest quoted text reported with a reply.
const QUOTED_TEXT_MAX: usize = 200;

/// Reads a message fully (see [`Described`]).
pub fn read(m: &wa::Message) -> Described {
    let base = m.get_base_message();
    let mut d = read_base(base);
    d.details.view_once = m.is_view_once();
    d.details.ephemeral = m.is_ephemeral();
    if let Some(ctx) = context_info(base) {
        d.details.mentions = ctx.mentioned_jid.clone();
        d.details.ephemeral_expiration = ctx.expiration.filter(|e| *e > 0);
        if let Some(id) = ctx.stanza_id.clone().filter(|i| !i.is_empty()) {
            let text = ctx
                .quoted_message
                .as_option()
                .map(|q| read_base(q.get_base_message()).text)
                .filter(|t| !t.is_empty())
                .map(|t| t.chars().take(QUOTED_TEXT_MAX).collect());
            d.details.quoted = Some(Quoted {
                message_id: id,
                sender: ctx.participant.clone().filter(|p| !p.is_empty()),
                text,
            });
        }
    }
    d
}

/// The context (reply, mentions, disappearing timer) of the message's own kind.
fn context_info(m: &wa::Message) -> Option<&wa::ContextInfo> {
    macro_rules! first {
        ($($f:ident),+) => {
            $(
                if let Some(x) = m.$f.as_option() {
                    return x.context_info.as_option();
                }
            )+
        };
    }
    first!(
        extended_text_message,
        image_message,
        video_message,
        audio_message,
        document_message,
        sticker_message,
        location_message,
        live_location_message,
        contact_message,
        contacts_array_message,
        poll_creation_message,
        poll_creation_message_v2,
        poll_creation_message_v3
    );
    None
}

/// What the base message (inside every wrapper) is.
fn read_base(m: &wa::Message) -> Described {
    let opt = |s: &Option<String>| s.clone().unwrap_or_default();
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    let mut details = Details::default();
    let done = |kind, text, media, details| Described {
        kind,
        text,
        media,
        details,
    };
    if let Some(t) = &m.conversation {
        return done("text", t.clone(), None, details);
    }
    if let Some(x) = m.extended_text_message.as_option() {
        if let Some(url) = non_empty(&x.matched_text) {
            details.link_preview = Some(LinkPreview {
                url,
                title: non_empty(&x.title),
                description: non_empty(&x.description),
            });
        }
        return done("text", opt(&x.text), None, details);
    }
    if let Some(x) = m.image_message.as_option() {
        let media = MediaInfo {
            mimetype: opt(&x.mimetype),
            size: x.file_length.unwrap_or(0),
            width: x.width,
            height: x.height,
            ..Default::default()
        };
        return done("image", opt(&x.caption), Some(media), details);
    }
    if let Some(x) = m.video_message.as_option() {
        let media = MediaInfo {
            mimetype: opt(&x.mimetype),
            size: x.file_length.unwrap_or(0),
            seconds: x.seconds,
            width: x.width,
            height: x.height,
            ..Default::default()
        };
        return done("video", opt(&x.caption), Some(media), details);
    }
    if let Some(x) = m.audio_message.as_option() {
        let media = MediaInfo {
            mimetype: opt(&x.mimetype),
            size: x.file_length.unwrap_or(0),
            ptt: x.ptt.unwrap_or(false),
            seconds: x.seconds,
            ..Default::default()
        };
        return done("audio", String::new(), Some(media), details);
    }
    if let Some(x) = m.document_message.as_option() {
        let media = MediaInfo {
            mimetype: opt(&x.mimetype),
            size: x.file_length.unwrap_or(0),
            file_name: x.file_name.clone(),
            ..Default::default()
        };
        return done("document", opt(&x.caption), Some(media), details);
    }
    if let Some(x) = m.sticker_message.as_option() {
        let media = MediaInfo {
            mimetype: opt(&x.mimetype),
            size: x.file_length.unwrap_or(0),
            width: x.width,
            height: x.height,
            animated: x.is_animated.unwrap_or(false),
            ..Default::default()
        };
        return done("sticker", String::new(), Some(media), details);
    }
    if let Some(x) = m.location_message.as_option() {
        let text = [x.name.as_deref(), x.address.as_deref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        details.location = Some(Location {
            latitude: x.degrees_latitude.unwrap_or(0.0),
            longitude: x.degrees_longitude.unwrap_or(0.0),
            name: non_empty(&x.name),
            address: non_empty(&x.address),
            live: x.is_live.unwrap_or(false),
        });
        return done("location", text, None, details);
    }
    if let Some(x) = m.live_location_message.as_option() {
        details.location = Some(Location {
            latitude: x.degrees_latitude.unwrap_or(0.0),
            longitude: x.degrees_longitude.unwrap_or(0.0),
            name: None,
            address: None,
            live: true,
        });
        return done("location", opt(&x.caption), None, details);
    }
    if let Some(x) = m.contact_message.as_option() {
        details.contacts = vec![card(x)];
        return done("contact", opt(&x.display_name), None, details);
    }
    if let Some(x) = m.contacts_array_message.as_option() {
        details.contacts = x.contacts.iter().map(card).collect();
        return done("contact", opt(&x.display_name), None, details);
    }
    if let Some(x) = m.reaction_message.as_option() {
        let emoji = opt(&x.text);
        details.reaction = Some(Reaction {
            message_id: x
                .key
                .as_option()
                .and_then(|k| k.id.clone())
                .unwrap_or_default(),
            removed: emoji.is_empty(),
            emoji: emoji.clone(),
        });
        return done("reaction", emoji, None, details);
    }
    for poll in [
        &m.poll_creation_message,
        &m.poll_creation_message_v2,
        &m.poll_creation_message_v3,
    ] {
        if let Some(x) = poll.as_option() {
            details.poll = Some(Poll {
                name: opt(&x.name),
                options: x.options.iter().map(|o| opt(&o.option_name)).collect(),
                selectable_count: x.selectable_options_count.unwrap_or(0),
            });
            return done("poll", opt(&x.name), None, details);
        }
    }
    if let Some(x) = m.poll_update_message.as_option() {
        details.poll_vote = Some(crate::events::PollVote {
            poll_message_id: x
                .poll_creation_message_key
                .as_option()
                .and_then(|k| k.id.clone())
                .unwrap_or_default(),
            selected_options: None,
        });
        return done("poll_vote", String::new(), None, details);
    }
    if let Some(p) = m.protocol_message.as_option() {
        if let Some(kind) = person_action(p) {
            details.original_message_id = p.key.as_option().and_then(|k| k.id.clone());
            // An edit carries the new content; a delete carries nothing.
            let (text, media) = match p.edited_message.as_option() {
                Some(new) if kind == crate::events::KIND_EDIT => {
                    let n = read_base(new.get_base_message());
                    (n.text, n.media)
                }
                _ => (String::new(), None),
            };
            return done(kind, text, media, details);
        }
    }
    done("other", String::new(), None, details)
}

fn card(x: &wa::message::ContactMessage) -> ContactCard {
    ContactCard {
        display_name: x.display_name.clone().unwrap_or_default(),
        vcard: x.vcard.clone().unwrap_or_default(),
    }
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

#[cfg(test)]
mod detail_tests {
    use super::{is_signalling, read};
    use whatsapp_rust::waproto::whatsapp as wa;

    fn key(id: &str) -> wa::MessageKey {
        wa::MessageKey {
            id: Some(id.into()),
            ..Default::default()
        }
    }

    #[test]
    fn edits_and_revokes_are_reported_with_the_original_id() {
        use wa::message::protocol_message::Type;
        let edit = wa::Message {
            protocol_message: wa::message::ProtocolMessage {
                r#type: Some(Type::MESSAGE_EDIT),
                key: key("ORIG").into(),
                edited_message: wa::Message {
                    conversation: Some("fixed typo".into()),
                    ..Default::default()
                }
                .into(),
                ..Default::default()
            }
            .into(),
            ..Default::default()
        };
        assert!(!is_signalling(&edit));
        let d = read(&edit);
        assert_eq!((d.kind, d.text.as_str()), ("edit", "fixed typo"));
        assert_eq!(d.details.original_message_id.as_deref(), Some("ORIG"));
        let revoke = wa::Message {
            protocol_message: wa::message::ProtocolMessage {
                r#type: Some(Type::REVOKE),
                key: key("GONE").into(),
                ..Default::default()
            }
            .into(),
            ..Default::default()
        };
        assert!(!is_signalling(&revoke));
        let d = read(&revoke);
        assert_eq!((d.kind, d.text.as_str()), ("revoke", ""));
        assert_eq!(d.details.original_message_id.as_deref(), Some("GONE"));
    }

    #[test]
    fn replies_mentions_previews_and_reactions_carry_their_details() {
        let reply = wa::Message {
            extended_text_message: wa::message::ExtendedTextMessage {
                text: Some("see https://example.org @62811".into()),
                matched_text: Some("https://example.org".into()),
                title: Some("Example".into()),
                context_info: wa::ContextInfo {
                    stanza_id: Some("Q1".into()),
                    participant: Some("62812@s.whatsapp.net".into()),
                    quoted_message: wa::Message {
                        conversation: Some("x".repeat(500)),
                        ..Default::default()
                    }
                    .into(),
                    mentioned_jid: vec!["62811@s.whatsapp.net".into()],
                    expiration: Some(86400),
                    ..Default::default()
                }
                .into(),
                ..Default::default()
            }
            .into(),
            ..Default::default()
        };
        let d = read(&reply).details;
        let q = d.quoted.expect("quoted");
        assert_eq!(q.message_id, "Q1");
        assert_eq!(q.sender.as_deref(), Some("62812@s.whatsapp.net"));
        assert_eq!(q.text.map(|t| t.chars().count()), Some(200));
        assert_eq!(d.mentions, vec!["62811@s.whatsapp.net".to_string()]);
        assert_eq!(d.ephemeral_expiration, Some(86400));
        let lp = d.link_preview.expect("preview");
        assert_eq!(
            (lp.url.as_str(), lp.title.as_deref()),
            ("https://example.org", Some("Example"))
        );
        let removal = wa::Message {
            reaction_message: wa::message::ReactionMessage {
                key: key("R1").into(),
                text: Some(String::new()),
                ..Default::default()
            }
            .into(),
            ..Default::default()
        };
        let r = read(&removal).details.reaction.expect("reaction");
        assert_eq!((r.message_id.as_str(), r.removed), ("R1", true));
        let voice = wa::Message {
            audio_message: wa::message::AudioMessage {
                ptt: Some(true),
                seconds: Some(7),
                ..Default::default()
            }
            .into(),
            ..Default::default()
        };
        let m = read(&voice).media.expect("media");
        assert!(m.ptt);
        assert_eq!(m.seconds, Some(7));
    }
}
