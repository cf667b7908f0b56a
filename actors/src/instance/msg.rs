//! The actor's vocabulary: its messages ([`InstanceMsg`]), its one error type
//! ([`InstanceError`], with the API code of each), and the values it answers with.

use crate::events::LiveEvent;
use crate::lifecycle::LifecycleError;
use crate::status::InstanceStatus;
use chrono::{DateTime, Utc};
use ractor::RpcReplyPort;
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::broadcast;
use whatsapp_rust::wacore::types::events::Event;

/// Who the instance is on WhatsApp, once known (kept in the instance row and shown
/// in status answers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Digits of the phone number.
    pub phone: Option<String>,
    /// `<phone>@s.whatsapp.net`.
    pub jid: Option<String>,
    /// `<lid>@lid`.
    pub lid: Option<String>,
    /// The name the phone gave.
    pub push_name: Option<String>,
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
    #[error("only messages this instance sent can be edited or deleted for everyone")]
    NotOwnMessage,
    #[error("this message cannot be forwarded: its content was not kept")]
    NotForwardable,
    #[error("this message carries no media")]
    NoMedia,
    #[error("the media keys of this message were not kept")]
    MediaUnavailable,
    #[error("the media has expired on WhatsApp's servers")]
    MediaExpired,
    #[error("the media could not be downloaded from WhatsApp")]
    MediaDownloadFailed,
    #[error("WhatsApp refused the pairing-code request")]
    PairCodeFailed,
    #[error("WhatsApp refused the group request (not a member or admin, or no such group)")]
    GroupRequestFailed,
    #[error("invalid group name or description (too long or empty)")]
    InvalidGroupSettings,
    /// The actor did not answer in time (or is gone).
    #[error("the instance did not answer")]
    Unavailable,
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
            Self::NotOwnMessage => "NOT_OWN_MESSAGE",
            Self::NotForwardable => "MESSAGE_NOT_FORWARDABLE",
            Self::NoMedia => "NO_MEDIA",
            Self::MediaUnavailable => "MEDIA_UNAVAILABLE",
            Self::MediaExpired => "MEDIA_EXPIRED",
            Self::MediaDownloadFailed => "MEDIA_DOWNLOAD_FAILED",
            Self::PairCodeFailed => "PAIR_CODE_FAILED",
            Self::GroupRequestFailed => "GROUP_REQUEST_FAILED",
            Self::InvalidGroupSettings => "INVALID_GROUP_SETTINGS",
            Self::Unavailable => "INTERNAL_ERROR",
        }
    }
}

/// A QR code currently on offer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QrCode {
    pub code: String,
    pub expires_at: DateTime<Utc>,
}

/// A pairing code on offer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairCode {
    pub code: String,
    pub phone: String,
    pub expires_at: DateTime<Utc>,
}

/// A snapshot for `GET /api/status/:id`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceSnapshot {
    pub instance_id: String,
    pub status: InstanceStatus,
    pub is_connected: bool,
    #[serde(flatten)]
    pub identity: Identity,
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
    /// The account's LID (`<digits>@lid`), when WhatsApp gave it.
    pub lid: Option<String>,
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
    /// Audio sent as a voice note (push-to-talk).
    Voice,
    /// A sticker (WebP).
    Sticker,
}

impl MediaKind {
    /// The kind WhatsApp's media servers file the upload under.
    pub fn upload_type(self) -> whatsapp_rust::download::MediaType {
        use whatsapp_rust::download::MediaType as T;
        match self {
            Self::Image => T::Image,
            Self::Video => T::Video,
            Self::Audio | Self::Voice => T::Audio,
            Self::Document => T::Document,
            Self::Sticker => T::Sticker,
        }
    }
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

/// A message in the instance's message log that a request refers to (quoted,
/// reacted to, edited, deleted, forwarded, marked read).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageRef {
    pub id: String,
    /// Its chat's JID.
    pub chat: String,
    /// Its sender's JID; empty for messages this instance sent.
    pub sender: String,
    pub from_me: bool,
    /// Its `type` (text, image, ...).
    pub kind: String,
    /// Its text or caption, if any.
    pub body: Option<String>,
    /// Its protobuf, if kept.
    pub raw: Option<Vec<u8>>,
}

/// A contact card to send.
#[derive(Debug, Clone, PartialEq)]
pub struct CardOut {
    pub name: String,
    /// Digits of the contact's number.
    pub phone: String,
}

/// A new message of a kind beyond plain text and media.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A text with mentions (JIDs) and a link preview.
    Text {
        text: String,
        mentions: Vec<String>,
        preview: Option<crate::events::LinkPreview>,
    },
    Location {
        latitude: f64,
        longitude: f64,
        name: Option<String>,
        address: Option<String>,
    },
    Contacts(Vec<CardOut>),
    Poll {
        name: String,
        options: Vec<String>,
        selectable_count: u32,
    },
    /// A copy of a message in the log, marked forwarded.
    Forward(MessageRef),
}

/// A logged message's media, downloaded and decrypted.
#[derive(Debug, Clone, PartialEq)]
pub struct Downloaded {
    pub bytes: Vec<u8>,
    pub mimetype: String,
    pub file_name: Option<String>,
}

/// An action on a message in the log.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageAction {
    /// React (an empty emoji removes the reaction).
    React(String),
    /// Replace the text of a message this instance sent.
    Edit(String),
    /// Delete for everyone.
    Revoke,
    /// Send a read receipt.
    Read,
}

/// What the instance shows a chat it is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatState {
    Typing,
    Recording,
    Paused,
}

/// Messages of [`InstanceActor`](super::InstanceActor).
pub enum InstanceMsg {
    /// Start (or join) a QR login; replies with the code on offer, waiting up to
    /// `first_qr_wait` for the first code of a new flow (`None` if none came).
    StartQr(RpcReplyPort<Result<Option<QrCode>, InstanceError>>),
    /// Start (or join) a login and ask WhatsApp for a pairing code for `phone`
    /// (digits): the code to type on that phone.
    StartPairCode {
        phone: String,
        reply: RpcReplyPort<Result<PairCode, InstanceError>>,
    },
    /// Internal: the pairing-code request of flow `.0` ended (the code, or why not).
    PairCodeDone(u64, Result<PairCode, InstanceError>),
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
    /// Send a message of another kind (optionally as a reply to `quoted`).
    Compose {
        to: String,
        content: Outgoing,
        quoted: Option<MessageRef>,
        message_id: Option<String>,
        reply: RpcReplyPort<Result<Sent, InstanceError>>,
    },
    /// Act on a message in the log (in its chat's turn).
    OnMessage {
        target: MessageRef,
        action: MessageAction,
        reply: RpcReplyPort<Result<Sent, InstanceError>>,
    },
    /// A group operation; answers its JSON result.
    Group {
        op: super::groups::GroupOp,
        reply: RpcReplyPort<Result<serde_json::Value, InstanceError>>,
    },
    /// A profile or blocking operation; answers its JSON result.
    Profile {
        op: super::profile::ProfileOp,
        reply: RpcReplyPort<Result<serde_json::Value, InstanceError>>,
    },
    /// A person's LID from their number, or number from their LID.
    LookupLid {
        what: super::contacts::Lookup,
        reply: RpcReplyPort<Result<Option<super::contacts::LidMapping>, InstanceError>>,
    },
    /// Download and decrypt a logged message's media.
    DownloadMedia {
        target: MessageRef,
        reply: RpcReplyPort<Result<Downloaded, InstanceError>>,
    },
    /// Show typing / recording / paused in a chat.
    SetChatState {
        to: String,
        state: ChatState,
        reply: RpcReplyPort<Result<(), InstanceError>>,
    },
    /// Subscribe to a contact's availability (`presence` events follow).
    SubscribePresence {
        who: String,
        reply: RpcReplyPort<Result<(), InstanceError>>,
    },
    /// Appear online (`true`, the default while connected) or offline.
    SetPresence {
        available: bool,
        reply: RpcReplyPort<Result<(), InstanceError>>,
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
    /// Internal: `StartQr` requests waiting longer than `first_qr_wait` get their
    /// answer without a code.
    QrWaitOver,
    /// Internal: presence heartbeat tick.
    Heartbeat,
    /// Internal: client generation `.0` could not commit incoming messages; their
    /// acks were withheld, so WhatsApp still holds them.
    CommitFailed(u64),
    /// Internal: the storage takes writes again; reconnect so WhatsApp redelivers
    /// what was not acknowledged.
    StorageRecovered,
}
