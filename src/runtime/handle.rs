//! [`InstanceHandle`]: the typed way to talk to one instance actor. Every request is
//! a method with its own deadline, and every failure is one [`InstanceError`] (an
//! actor that does not answer in time is [`InstanceError::Unavailable`]).

use actors::events::LiveEvent;
use actors::instance::{
    ChatState, Downloaded, GroupInfo, InstanceError, InstanceMsg, InstanceSnapshot, MessageAction,
    MessageRef, NumberCheck, Outgoing, OutgoingMedia, PairCode, QrCode, Sent,
};
use actors::lifecycle::LifecycleError;
use actors::InstanceStatus;
use ractor::{call_t, ActorRef};
use tokio::sync::broadcast;

/// Deadline of quick calls (status, QR cancel, subscribe).
const QUICK_MS: u64 = 10_000;
/// Deadline of a QR start: the actor waits up to `first_qr_wait` (10 s) for the
/// first code.
const QR_MS: u64 = 25_000;
/// Deadline of calls that reach WhatsApp (text sends, checks, logout, groups).
const SEND_MS: u64 = 90_000;
/// Deadline of media sends (upload included).
const MEDIA_MS: u64 = 300_000;

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// Digits of a phone number (normalised).
    Phone(String),
    /// A group JID (`…@g.us`, validated).
    Group(String),
    /// A person known by LID (`<digits>@lid`, validated).
    Lid(String),
}

impl Recipient {
    /// The phone digits or the group JID.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Phone(s) | Self::Group(s) | Self::Lid(s) => s,
        }
    }
}

/// What a message carries.
#[derive(Debug)]
pub enum Content {
    Text(String),
    Media(OutgoingMedia),
}

/// The answer to a QR start.
#[derive(Debug, Clone, PartialEq)]
pub enum QrStart {
    /// Online already, with this JID.
    Connected(Option<String>),
    /// The flow runs; the code on offer, if one came in time.
    Code(Option<QrCode>),
}

/// A typed handle on one instance's actor.
#[derive(Clone)]
pub struct InstanceHandle {
    actor: ActorRef<InstanceMsg>,
}

fn unavailable(e: impl std::fmt::Display) -> InstanceError {
    tracing::warn!(error = %e, "instance actor did not answer");
    InstanceError::Unavailable
}

impl InstanceHandle {
    pub(crate) fn new(actor: ActorRef<InstanceMsg>) -> Self {
        Self { actor }
    }

    /// Current status and identity.
    pub async fn status(&self) -> Result<InstanceSnapshot, InstanceError> {
        call_t!(self.actor, InstanceMsg::Status, QUICK_MS).map_err(unavailable)
    }

    /// Connected, then logged in (API.md's order): a socket that is up while waiting
    /// for a QR scan counts as connected but not logged in.
    pub async fn ready(&self) -> Result<(), InstanceError> {
        let s = self.status().await?;
        if !(s.is_connected || s.status == InstanceStatus::QrPending) {
            return Err(InstanceError::NotConnected);
        }
        if s.status != InstanceStatus::Online || s.identity.jid.is_none() {
            return Err(InstanceError::NotLoggedIn);
        }
        Ok(())
    }

    /// Starts (or joins) the QR flow; the first code of a new flow is waited for.
    pub async fn start_qr(&self) -> Result<QrStart, InstanceError> {
        match call_t!(self.actor, InstanceMsg::StartQr, QR_MS).map_err(unavailable)? {
            Ok(code) => Ok(QrStart::Code(code)),
            Err(InstanceError::Lifecycle(LifecycleError::AlreadyConnected)) => {
                Ok(QrStart::Connected(self.status().await?.identity.jid))
            }
            Err(e) => Err(e),
        }
    }

    /// Starts (or joins) the login flow and asks for a pairing code for `phone`.
    pub async fn start_pair_code(&self, phone: String) -> Result<PairCode, InstanceError> {
        call_t!(
            self.actor,
            |reply| InstanceMsg::StartPairCode { phone, reply },
            SEND_MS
        )
        .map_err(unavailable)?
    }

    /// Cancels the running QR flow.
    pub async fn cancel_qr(&self) -> Result<(), InstanceError> {
        call_t!(self.actor, InstanceMsg::CancelQr, QUICK_MS).map_err(unavailable)?
    }

    /// Sends one message (`message_id`: a caller-chosen id for idempotent sends).
    pub async fn send(
        &self,
        to: Recipient,
        content: Content,
        message_id: Option<String>,
    ) -> Result<Sent, InstanceError> {
        let started = std::time::Instant::now();
        let r = self.send_inner(to, content, message_id).await;
        crate::metrics::send(started, &r, InstanceError::code);
        r
    }

    async fn send_inner(
        &self,
        to: Recipient,
        content: Content,
        message_id: Option<String>,
    ) -> Result<Sent, InstanceError> {
        let r = match (to, content) {
            (Recipient::Phone(to) | Recipient::Lid(to), Content::Text(text)) => call_t!(
                self.actor,
                |reply| InstanceMsg::SendText {
                    to,
                    text,
                    message_id,
                    reply
                },
                SEND_MS
            ),
            (Recipient::Group(group_jid), Content::Text(text)) => call_t!(
                self.actor,
                |reply| InstanceMsg::SendGroupText {
                    group_jid,
                    text,
                    message_id,
                    reply
                },
                SEND_MS
            ),
            (to, Content::Media(media)) => {
                let to = match to {
                    Recipient::Phone(s) | Recipient::Group(s) | Recipient::Lid(s) => s,
                };
                call_t!(
                    self.actor,
                    |reply| InstanceMsg::SendMedia {
                        to,
                        media,
                        message_id,
                        reply
                    },
                    MEDIA_MS
                )
            }
        };
        r.map_err(unavailable)?
    }

    /// Sends a message of another kind (`quoted`: the message it replies to).
    pub async fn compose(
        &self,
        to: String,
        content: Outgoing,
        quoted: Option<MessageRef>,
        message_id: Option<String>,
    ) -> Result<Sent, InstanceError> {
        let started = std::time::Instant::now();
        let r = call_t!(
            self.actor,
            |reply| InstanceMsg::Compose {
                to,
                content,
                quoted,
                message_id,
                reply
            },
            SEND_MS
        )
        .map_err(unavailable)
        .and_then(|r| r);
        crate::metrics::send(started, &r, InstanceError::code);
        r
    }

    /// Reacts to, edits, deletes or marks read a logged message.
    pub async fn on_message(
        &self,
        target: MessageRef,
        action: MessageAction,
    ) -> Result<Sent, InstanceError> {
        call_t!(
            self.actor,
            |reply| InstanceMsg::OnMessage {
                target,
                action,
                reply
            },
            SEND_MS
        )
        .map_err(unavailable)?
    }

    /// Runs a group operation; its JSON result.
    pub async fn group(
        &self,
        op: actors::instance::GroupOp,
    ) -> Result<serde_json::Value, InstanceError> {
        call_t!(
            self.actor,
            |reply| InstanceMsg::Group { op, reply },
            SEND_MS
        )
        .map_err(unavailable)?
    }

    /// Runs a profile or blocking operation; its JSON result.
    pub async fn profile(
        &self,
        op: actors::instance::ProfileOp,
    ) -> Result<serde_json::Value, InstanceError> {
        call_t!(
            self.actor,
            |reply| InstanceMsg::Profile { op, reply },
            SEND_MS
        )
        .map_err(unavailable)?
    }

    /// A person's LID from their number, or number from their LID.
    pub async fn lookup_lid(
        &self,
        what: actors::instance::Lookup,
    ) -> Result<Option<actors::instance::LidMapping>, InstanceError> {
        call_t!(
            self.actor,
            |reply| InstanceMsg::LookupLid { what, reply },
            SEND_MS
        )
        .map_err(unavailable)?
    }

    /// Downloads and decrypts a logged message's media.
    pub async fn download_media(&self, target: MessageRef) -> Result<Downloaded, InstanceError> {
        call_t!(
            self.actor,
            |reply| InstanceMsg::DownloadMedia { target, reply },
            MEDIA_MS
        )
        .map_err(unavailable)?
    }

    /// Shows typing, recording or paused in a chat.
    pub async fn chat_state(&self, to: String, state: ChatState) -> Result<(), InstanceError> {
        call_t!(
            self.actor,
            |reply| InstanceMsg::SetChatState { to, state, reply },
            SEND_MS
        )
        .map_err(unavailable)?
    }

    /// Subscribes to a contact's availability.
    pub async fn subscribe_presence(&self, who: String) -> Result<(), InstanceError> {
        call_t!(
            self.actor,
            |reply| InstanceMsg::SubscribePresence { who, reply },
            SEND_MS
        )
        .map_err(unavailable)?
    }

    /// Appears online or offline.
    pub async fn set_presence(&self, available: bool) -> Result<(), InstanceError> {
        call_t!(
            self.actor,
            |reply| InstanceMsg::SetPresence { available, reply },
            SEND_MS
        )
        .map_err(unavailable)?
    }

    /// Which of `phones` are on WhatsApp.
    pub async fn check_numbers(
        &self,
        phones: Vec<String>,
    ) -> Result<Vec<NumberCheck>, InstanceError> {
        call_t!(
            self.actor,
            |reply| InstanceMsg::CheckNumbers { phones, reply },
            SEND_MS
        )
        .map_err(unavailable)?
    }

    /// The groups this number is in.
    pub async fn list_groups(&self) -> Result<Vec<GroupInfo>, InstanceError> {
        call_t!(self.actor, InstanceMsg::ListGroups, SEND_MS).map_err(unavailable)?
    }

    /// Unlinks on WhatsApp and wipes the keys; the instance stays.
    pub async fn logout(&self) -> Result<(), InstanceError> {
        call_t!(self.actor, InstanceMsg::Logout, SEND_MS).map_err(unavailable)?
    }

    /// A receiver of the instance's stored events (listen sockets).
    pub async fn subscribe(&self) -> Result<broadcast::Receiver<LiveEvent>, InstanceError> {
        call_t!(self.actor, InstanceMsg::Subscribe, QUICK_MS).map_err(unavailable)
    }
}
