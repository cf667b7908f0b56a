//! Message kinds beyond text and media, and actions on messages already in the log:
//! replies (quotes), mentions, locations, contact cards, polls, forwards; reactions,
//! edits, deletes for everyone and read receipts; chat states and the instance's own
//! presence. Each runs like a send ([`super::outbound`]): as an operation task beside
//! the actor, in its chat's turn where order matters.

use super::outbound::{Ops, Turn};
use super::{
    CardOut, ChatState, Downloaded, InstanceError, InstanceState, MessageAction, MessageRef,
    Outgoing, Sent,
};
use ractor::RpcReplyPort;
use std::future::Future;
use whatsapp_rust::buffa::Message as _;
use whatsapp_rust::wacore::proto_helpers::MessageExt as _;
use whatsapp_rust::wacore_binary::JidExt;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::Jid;

impl InstanceState {
    /// `Compose`: a message of another kind, optionally quoting a logged message.
    pub(super) fn compose(
        &mut self,
        to: String,
        content: Outgoing,
        quoted: Option<MessageRef>,
        message_id: Option<String>,
        reply: RpcReplyPort<Result<Sent, InstanceError>>,
    ) {
        let chat = to.clone();
        self.run_op(reply, Some(chat), move |ops, turn| async move {
            let jid = ops.recipient(&to).await?;
            let me = own_jid(&ops)?;
            let mut message = build(content)?;
            if let Some(q) = quoted {
                let ctx = quote_context(&q, &me, &jid)?;
                if !message.set_context_info(merge_context(&message, ctx)) {
                    return Err(InstanceError::SendFailed);
                }
            }
            ops.send(jid, message, message_id, turn).await
        });
    }

    /// `OnMessage`: react, edit, delete for everyone or mark read, in the chat's turn.
    pub(super) fn on_message(
        &mut self,
        target: MessageRef,
        action: MessageAction,
        reply: RpcReplyPort<Result<Sent, InstanceError>>,
    ) {
        let chat = target.chat.clone();
        self.run_op(reply, Some(chat), move |ops, turn| async move {
            act(&ops, target, action, turn).await
        });
    }

    /// `DownloadMedia`: a logged message's media, with the keys the message carries.
    pub(super) fn download_media(
        &mut self,
        target: MessageRef,
        reply: RpcReplyPort<Result<Downloaded, InstanceError>>,
    ) {
        self.run_op(reply, None, move |ops, _| async move {
            download(&ops, &target).await
        });
    }

    /// `SetChatState`: typing, recording or paused, shown in one chat.
    pub(super) fn set_chat_state(
        &mut self,
        to: String,
        state: ChatState,
        reply: RpcReplyPort<Result<(), InstanceError>>,
    ) {
        use whatsapp_rust::features::ChatStateType as T;
        self.run_op(reply, None, move |ops, _| async move {
            let jid = ops.recipient(&to).await?;
            let state = match state {
                ChatState::Typing => T::Composing,
                ChatState::Recording => T::Recording,
                ChatState::Paused => T::Paused,
            };
            let chatstate = ops.client.chatstate();
            within(&ops, chatstate.send(&jid, state)).await
        });
    }

    /// `SetPresence`: appear online or offline. Offline also pauses the presence
    /// heartbeat until online is asked for again (or the instance restarts).
    pub(super) fn set_presence(
        &mut self,
        available: bool,
        reply: RpcReplyPort<Result<(), InstanceError>>,
    ) {
        self.appear_offline = !available;
        self.run_op(reply, None, move |ops, _| async move {
            let p = ops.client.presence();
            if available {
                within(&ops, p.set_available()).await
            } else {
                within(&ops, p.set_unavailable()).await
            }
        });
    }
}

/// Runs a client call within the request timeout; any failure is `SEND_FAILED`.
async fn within<T, E: std::fmt::Display>(
    ops: &Ops,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, InstanceError> {
    tokio::time::timeout(ops.env.timing.request_timeout, call)
        .await
        .map_err(|_| InstanceError::SendFailed)?
        .map_err(|e| {
            tracing::warn!(instance_id = %ops.id, error = %e, "client call failed");
            InstanceError::SendFailed
        })
}

/// This account's own JID (phone number), for keys of its own messages.
fn own_jid(ops: &Ops) -> Result<Jid, InstanceError> {
    ops.client
        .pn()
        .map(|j| j.to_non_ad())
        .ok_or(InstanceError::NotLoggedIn)
}

/// The chat of a logged message, as a JID.
fn chat_of(m: &MessageRef) -> Result<Jid, InstanceError> {
    m.chat.parse().map_err(|_| InstanceError::SendFailed)
}

/// The key that names a logged message to WhatsApp. In groups it names the sender
/// (`participant`), ourselves for our own messages.
fn key_of(m: &MessageRef, me: &Jid) -> wa::MessageKey {
    let group = m.chat.ends_with("@g.us");
    let participant = group.then(|| {
        if m.from_me || m.sender.is_empty() {
            me.to_string()
        } else {
            m.sender.clone()
        }
    });
    wa::MessageKey {
        remote_jid: Some(m.chat.clone()),
        from_me: Some(m.from_me),
        id: Some(m.id.clone()),
        participant,
    }
}

/// The logged message as a protobuf: its kept copy, else a text of its body.
fn content_of(m: &MessageRef) -> Option<wa::Message> {
    if let Some(raw) = &m.raw {
        if let Ok(msg) = wa::Message::decode_from_slice(raw) {
            return Some(msg);
        }
    }
    m.body.clone().map(|text| wa::Message {
        conversation: Some(text),
        ..Default::default()
    })
}

/// The reply context quoting `q` in a message to `to`.
fn quote_context(q: &MessageRef, me: &Jid, to: &Jid) -> Result<wa::ContextInfo, InstanceError> {
    let sender: Jid = if q.from_me || q.sender.is_empty() {
        me.clone()
    } else {
        q.sender.parse().map_err(|_| InstanceError::SendFailed)?
    };
    let quoted = content_of(q).unwrap_or_default();
    Ok(
        whatsapp_rust::wacore::proto_helpers::build_quote_context_with_info(
            q.id.clone(),
            &sender,
            &chat_of(q)?,
            to,
            quoted.get_base_message(),
        ),
    )
}

/// The quote context with the mentions the message already carries.
fn merge_context(m: &wa::Message, mut ctx: wa::ContextInfo) -> wa::ContextInfo {
    if let Some(x) = m.extended_text_message.as_option() {
        if let Some(own) = x.context_info.as_option() {
            ctx.mentioned_jid = own.mentioned_jid.clone();
        }
    }
    ctx
}

/// The protobuf of a new message (also what the sandbox's contacts send).
pub fn build(content: Outgoing) -> Result<wa::Message, InstanceError> {
    use wa::message as m;
    let mut msg = wa::Message::default();
    match content {
        Outgoing::Text {
            text,
            mentions,
            preview,
        } => {
            if mentions.is_empty() && preview.is_none() {
                msg.conversation = Some(text);
            } else {
                let mut x = m::ExtendedTextMessage {
                    text: Some(text),
                    ..Default::default()
                };
                if !mentions.is_empty() {
                    x.context_info = wa::ContextInfo {
                        mentioned_jid: mentions,
                        ..Default::default()
                    }
                    .into();
                }
                if let Some(p) = preview {
                    x.matched_text = Some(p.url);
                    x.title = p.title;
                    x.description = p.description;
                }
                msg.extended_text_message = x.into();
            }
        }
        Outgoing::Location {
            latitude,
            longitude,
            name,
            address,
        } => {
            msg.location_message = m::LocationMessage {
                degrees_latitude: Some(latitude),
                degrees_longitude: Some(longitude),
                name,
                address,
                ..Default::default()
            }
            .into();
        }
        Outgoing::Contacts(cards) => {
            let mut cards: Vec<m::ContactMessage> = cards.iter().map(card).collect();
            if cards.len() == 1 {
                msg.contact_message = cards.remove(0).into();
            } else {
                msg.contacts_array_message = m::ContactsArrayMessage {
                    display_name: Some(format!("{} contacts", cards.len())),
                    contacts: cards,
                    ..Default::default()
                }
                .into();
            }
        }
        Outgoing::Poll {
            name,
            options,
            selectable_count,
        } => {
            let poll = m::PollCreationMessage {
                name: Some(name),
                options: options
                    .into_iter()
                    .map(|o| m::poll_creation_message::Option {
                        option_name: Some(o),
                        ..Default::default()
                    })
                    .collect(),
                selectable_options_count: Some(selectable_count),
                ..Default::default()
            };
            // As WhatsApp's clients do: v3 for single choice, v1 for several.
            if selectable_count == 1 {
                msg.poll_creation_message_v3 = poll.into();
            } else {
                msg.poll_creation_message = poll.into();
            }
            // Voters derive their vote key from this secret.
            msg.message_context_info = wa::MessageContextInfo {
                message_secret: Some(rand_secret()),
                ..Default::default()
            }
            .into();
        }
        Outgoing::Forward(source) => {
            // Without its kept copy, only a text can be rebuilt faithfully.
            if source.raw.is_none() && source.kind != "text" {
                return Err(InstanceError::NotForwardable);
            }
            let original = content_of(&source).ok_or(InstanceError::NotForwardable)?;
            if original.get_base_message().protocol_message.is_set() {
                return Err(InstanceError::NotForwardable);
            }
            msg = *original.get_base_message().prepare_for_forward();
        }
    }
    Ok(msg)
}

/// A fresh 32-byte message secret.
fn rand_secret() -> Vec<u8> {
    rand::random::<[u8; 32]>().to_vec()
}

/// A vCard 3.0 contact message for a name and number.
fn card(c: &CardOut) -> wa::message::ContactMessage {
    let name = c.name.replace(['\r', '\n'], " ");
    let vcard = format!(
        "BEGIN:VCARD\nVERSION:3.0\nFN:{name}\nTEL;type=CELL;waid={p}:+{p}\nEND:VCARD",
        p = c.phone
    );
    wa::message::ContactMessage {
        display_name: Some(name),
        vcard: Some(vcard),
        ..Default::default()
    }
}

/// One action on a logged message, once its chat's turn comes.
async fn act(
    ops: &Ops,
    target: MessageRef,
    action: MessageAction,
    mut turn: Turn,
) -> Result<Sent, InstanceError> {
    use whatsapp_rust::send::RevokeType;
    let chat = chat_of(&target)?;
    let me = own_jid(ops)?;
    let key = key_of(&target, &me);
    if matches!(action, MessageAction::React(_)) {
        // A reaction is a message of its own: logged, acked, with statuses.
        let emoji = match &action {
            MessageAction::React(e) => e.clone(),
            _ => String::new(),
        };
        let reaction = whatsapp_rust::wacore::proto_helpers::build_reaction_message(
            key,
            emoji,
            chrono::Utc::now().timestamp_millis(),
        );
        return ops.send(chat, reaction, None, turn).await;
    }
    turn.wait().await;
    if turn.caller_gone() {
        return Err(InstanceError::Abandoned);
    }
    let client = &ops.client;
    match action {
        MessageAction::Edit(text) => {
            if !target.from_me {
                return Err(InstanceError::NotOwnMessage);
            }
            let new = wa::Message {
                conversation: Some(text),
                ..Default::default()
            };
            within(
                ops,
                client.edit_message(chat.clone(), target.id.clone(), new),
            )
            .await?;
        }
        MessageAction::Revoke => {
            let how = if target.from_me {
                RevokeType::Sender
            } else if chat.is_group() {
                // Allowed to group admins only; WhatsApp refuses it otherwise.
                let original_sender = target
                    .sender
                    .parse()
                    .map_err(|_| InstanceError::NotOwnMessage)?;
                RevokeType::Admin { original_sender }
            } else {
                return Err(InstanceError::NotOwnMessage);
            };
            within(
                ops,
                client.revoke_message(chat.clone(), target.id.clone(), how),
            )
            .await?;
        }
        MessageAction::Read => {
            let sender: Option<Jid> = chat
                .is_group()
                .then(|| target.sender.parse().ok())
                .flatten();
            within(
                ops,
                client.mark_as_read(&chat, sender.as_ref(), &[target.id.as_str()]),
            )
            .await?;
        }
        MessageAction::React(_) => {}
    }
    Ok(Sent {
        message_id: target.id,
        timestamp: chrono::Utc::now().timestamp(),
        to: chat.to_string(),
    })
}

/// Downloads the media of a logged message (its kept protobuf carries the keys).
async fn download(ops: &Ops, target: &MessageRef) -> Result<Downloaded, InstanceError> {
    use whatsapp_rust::download::Downloadable;
    use whatsapp_rust::error::ErrorChainExt as _;
    let Some(raw) = &target.raw else {
        return Err(if target.kind == "text" {
            InstanceError::NoMedia
        } else {
            InstanceError::MediaUnavailable
        });
    };
    let msg = wa::Message::decode_from_slice(raw).map_err(|_| InstanceError::MediaUnavailable)?;
    let m = msg.get_base_message();
    let opt = |s: &Option<String>| s.clone().unwrap_or_default();
    let (media, mimetype, file_name): (&dyn Downloadable, String, Option<String>) =
        if let Some(x) = m.image_message.as_option() {
            (x, opt(&x.mimetype), None)
        } else if let Some(x) = m.video_message.as_option() {
            (x, opt(&x.mimetype), None)
        } else if let Some(x) = m.audio_message.as_option() {
            (x, opt(&x.mimetype), None)
        } else if let Some(x) = m.document_message.as_option() {
            (x, opt(&x.mimetype), x.file_name.clone())
        } else if let Some(x) = m.sticker_message.as_option() {
            (x, opt(&x.mimetype), None)
        } else {
            return Err(InstanceError::NoMedia);
        };
    // Large files take longer than a request: the upload's allowance.
    let bytes = tokio::time::timeout(
        ops.env.timing.request_timeout * 4,
        ops.client.download(media),
    )
    .await
    .map_err(|_| InstanceError::MediaDownloadFailed)?
    .map_err(|e| {
        tracing::warn!(instance_id = %ops.id, error = %e, "media download failed");
        match e.http_status() {
            Some(404 | 410) => InstanceError::MediaExpired,
            _ => InstanceError::MediaDownloadFailed,
        }
    })?;
    Ok(Downloaded {
        bytes,
        mimetype: if mimetype.is_empty() {
            "application/octet-stream".into()
        } else {
            mimetype
        },
        file_name,
    })
}
