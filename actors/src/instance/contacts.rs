//! Who people are: the LID ↔ phone-number mapping WhatsApp gives the client (from
//! number checks, incoming messages, group metadata). Incoming messages that name only
//! one of the two get the other filled in from it, and the API can look either up.

use super::{InstanceError, InstanceState};
use crate::events::IncomingMessage;
use ractor::RpcReplyPort;
use whatsapp_rust::{Client, Jid};

/// A person's phone number and LID, as far as the instance knows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LidMapping {
    /// Digits of the phone number.
    pub phone: String,
    /// `<digits>@lid`.
    pub lid: String,
}

/// What to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The LID of a phone number (digits); asks WhatsApp when not known yet.
    Phone(String),
    /// The phone number of a LID (`<digits>@lid`); only what the instance was told.
    Lid(String),
}

impl InstanceState {
    /// `LookupLid`.
    pub(super) fn lookup(
        &mut self,
        what: Lookup,
        reply: RpcReplyPort<Result<Option<LidMapping>, InstanceError>>,
    ) {
        self.run_op(reply, None, move |ops, _| async move {
            let client = &ops.client;
            let known = |jid: Jid| async move {
                client
                    .get_lid_pn_entry(&jid)
                    .await
                    .map_err(|_| InstanceError::Storage)
                    .map(|e| {
                        e.map(|e| LidMapping {
                            phone: e.phone_number.to_string(),
                            lid: format!("{}@lid", e.lid),
                        })
                    })
            };
            match what {
                Lookup::Lid(lid) => {
                    let user = lid.strip_suffix("@lid").unwrap_or(&lid).to_string();
                    known(Jid::lid(user)).await
                }
                Lookup::Phone(phone) => {
                    if let Some(m) = known(Jid::pn(phone.as_str())).await? {
                        return Ok(Some(m));
                    }
                    // Not met yet: WhatsApp's number check answers the LID (and the
                    // client keeps the mapping).
                    let checked = ops.check_numbers(std::slice::from_ref(&phone)).await?;
                    Ok(checked.into_iter().find_map(|c| {
                        c.lid.map(|lid| LidMapping {
                            phone: c.phone,
                            lid,
                        })
                    }))
                }
            }
        });
    }
}

/// Fills in `from_phone` / `from_lid` where the message named only one of them and the
/// client knows the other.
pub async fn fill_ids(client: &Client, msgs: &mut [IncomingMessage]) {
    for m in msgs.iter_mut() {
        let jid = match (&m.from_phone, &m.from_lid) {
            (None, Some(lid)) => lid.parse::<Jid>().ok(),
            (Some(phone), None) => Some(Jid::pn(phone.as_str())),
            _ => None,
        };
        let Some(jid) = jid else { continue };
        if let Ok(Some(e)) = client.get_lid_pn_entry(&jid).await {
            if m.from_phone.is_none() {
                m.from_phone = Some(e.phone_number.to_string());
            }
            if m.from_lid.is_none() {
                m.from_lid = Some(format!("{}@lid", e.lid));
            }
        }
    }
}

/// Decrypts the poll votes among `msgs` with their polls' secrets and options, read
/// from the message log (a vote on a poll the log does not hold stays undecrypted).
pub async fn open_votes(
    client: &Client,
    sink: &dyn crate::events::EventSink,
    instance_id: &str,
    msgs: &mut [IncomingMessage],
) {
    use whatsapp_rust::buffa::Message as _;
    use whatsapp_rust::wacore::poll::{compute_option_hash, PollVoteCiphertext};
    use whatsapp_rust::wacore::proto_helpers::MessageExt as _;
    use whatsapp_rust::waproto::whatsapp as wa;
    for m in msgs.iter_mut() {
        let Some(vote) = m.details.poll_vote.as_mut() else {
            continue;
        };
        let Some(raw) = &m.raw else { continue };
        let Ok(update) = wa::Message::decode_from_slice(raw) else {
            continue;
        };
        let Some(enc) = update
            .get_base_message()
            .poll_update_message
            .as_option()
            .and_then(|u| u.vote.as_option())
        else {
            continue;
        };
        let (Some(payload), Some(iv)) = (&enc.enc_payload, &enc.enc_iv) else {
            continue;
        };
        let Ok(Some(poll)) = sink.message_ref(instance_id, &vote.poll_message_id).await else {
            continue;
        };
        let Some(poll_msg) = poll
            .raw
            .as_deref()
            .and_then(|r| wa::Message::decode_from_slice(r).ok())
        else {
            continue;
        };
        let Some(secret) = poll_msg
            .message_context_info
            .as_option()
            .and_then(|c| c.message_secret.clone())
        else {
            continue;
        };
        let base = poll_msg.get_base_message();
        let Some(creation) = [
            &base.poll_creation_message,
            &base.poll_creation_message_v2,
            &base.poll_creation_message_v3,
        ]
        .into_iter()
        .find_map(|p| p.as_option()) else {
            continue;
        };
        let creator = if poll.from_me || poll.sender.is_empty() {
            client.pn().map(|j| j.to_non_ad())
        } else {
            poll.sender.parse::<Jid>().ok()
        };
        let (Some(creator), Ok(voter)) = (creator, m.from.parse::<Jid>()) else {
            continue;
        };
        let ciphertext = PollVoteCiphertext {
            enc_payload: payload,
            enc_iv: iv,
        };
        let polls = client.polls();
        match polls
            .decrypt_vote(ciphertext, &secret, &poll.id, &creator, &voter)
            .await
        {
            Ok(hashes) => {
                let names = creation
                    .options
                    .iter()
                    .filter_map(|o| o.option_name.clone())
                    .filter(|n| hashes.iter().any(|h| h[..] == compute_option_hash(n)[..]))
                    .collect();
                vote.selected_options = Some(names);
            }
            Err(e) => {
                tracing::debug!(instance_id, error = %e, "a poll vote could not be decrypted");
            }
        }
    }
}

/// The `presence` event of a contact's availability (after a presence subscription).
pub fn presence_event(
    instance_id: &str,
    p: &whatsapp_rust::wacore::types::events::PresenceUpdate,
) -> serde_json::Value {
    let now = chrono::Utc::now();
    serde_json::json!({
        "event": "presence",
        "timestamp": crate::events::rfc3339(now),
        "data": {
            "instance_id": instance_id,
            "from": p.from.to_non_ad().to_string(),
            "available": !p.unavailable,
            "last_seen": p.last_seen.map(|t| t.timestamp()),
        },
    })
}

/// The `chat_presence` event of a contact typing or recording in a chat.
pub fn chat_presence_event(
    instance_id: &str,
    c: &whatsapp_rust::wacore::types::events::ChatPresenceUpdate,
) -> serde_json::Value {
    use whatsapp_rust::wacore::types::presence::{ChatPresence, ChatPresenceMedia};
    let state = match (&c.state, &c.media) {
        (ChatPresence::Composing, ChatPresenceMedia::Audio) => "recording",
        (ChatPresence::Composing, _) => "typing",
        (ChatPresence::Paused, _) => "paused",
    };
    let now = chrono::Utc::now();
    serde_json::json!({
        "event": "chat_presence",
        "timestamp": crate::events::rfc3339(now),
        "data": {
            "instance_id": instance_id,
            "from": c.source.sender.to_non_ad().to_string(),
            "chat": c.source.chat.to_non_ad().to_string(),
            "state": state,
        },
    })
}

impl InstanceState {
    /// `SubscribePresence`: ask WhatsApp for a contact's availability (`presence`
    /// events follow).
    pub(super) fn subscribe_presence(
        &mut self,
        who: String,
        reply: RpcReplyPort<Result<(), InstanceError>>,
    ) {
        self.run_op(reply, None, move |ops, _| async move {
            let jid = super::groups::person(&who)?;
            let presence = ops.client.presence();
            tokio::time::timeout(ops.env.timing.request_timeout, presence.subscribe(jid))
                .await
                .map_err(|_| InstanceError::SendFailed)?
                .map_err(|e| {
                    tracing::warn!(instance_id = %ops.id, error = %e, "presence subscription failed");
                    InstanceError::SendFailed
                })
        });
    }
}
