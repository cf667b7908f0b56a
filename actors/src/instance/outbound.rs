//! The send path of one instance. A request becomes an operation task beside the
//! actor (the actor never awaits a round trip to WhatsApp), bounded per instance
//! (`INSTANCE_BUSY` beyond `max_ops`); sends to one chat keep their order through
//! per-chat turns while different chats, uploads and number checks overlap. Number
//! checks are cached (positive and negative TTLs), and a send that fails drops the
//! recipient's cached answer.

use super::InstanceEnv;
use super::{
    describe, GroupInfo, InstanceError, InstanceState, MediaKind, NumberCheck, OutgoingMedia, Sent,
};
use crate::events::SentRecord;
use chrono::Utc;
use ractor::RpcReplyPort;
use std::sync::Arc;
use std::time::Duration;
use whatsapp_rust::wacore_binary::JidExt;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::{Client, Jid};

impl InstanceState {
    /// `SendText`: to a phone number (digits) or a JID, in that chat's turn.
    pub(super) fn send_text(
        &mut self,
        to: String,
        text: String,
        message_id: Option<String>,
        reply: RpcReplyPort<Result<Sent, InstanceError>>,
    ) {
        let chat = to.clone();
        self.run_op(reply, Some(chat), move |ops, turn| async move {
            ops.send_text(&to, text, message_id, turn).await
        });
    }

    /// `SendMedia`: upload, then send in that chat's turn.
    pub(super) fn send_media(
        &mut self,
        to: String,
        media: OutgoingMedia,
        message_id: Option<String>,
        reply: RpcReplyPort<Result<Sent, InstanceError>>,
    ) {
        let chat = to.clone();
        self.run_op(reply, Some(chat), move |ops, turn| async move {
            ops.send_media(&to, media, message_id, turn).await
        });
    }

    /// `SendGroupText`: to `<id>@g.us`, in that group's turn.
    pub(super) fn send_group_text(
        &mut self,
        group_jid: String,
        text: String,
        message_id: Option<String>,
        reply: RpcReplyPort<Result<Sent, InstanceError>>,
    ) {
        let chat = group_jid.clone();
        self.run_op(reply, Some(chat), move |ops, turn| async move {
            ops.send_group_text(&group_jid, text, message_id, turn)
                .await
        });
    }

    /// `CheckNumbers`.
    pub(super) fn check_numbers(
        &mut self,
        phones: Vec<String>,
        reply: RpcReplyPort<Result<Vec<NumberCheck>, InstanceError>>,
    ) {
        self.run_op(reply, None, move |ops, _| async move {
            ops.check_numbers(&phones).await
        });
    }

    /// `ListGroups`.
    pub(super) fn list_groups(
        &mut self,
        reply: RpcReplyPort<Result<Vec<GroupInfo>, InstanceError>>,
    ) {
        self.run_op(
            reply,
            None,
            move |ops, _| async move { ops.list_groups().await },
        );
    }
}

/// What a network operation of one instance needs, cloned into the task that runs it,
/// so the actor never awaits a round trip to WhatsApp: sends, uploads, number checks
/// and group listings run beside it, bounded per instance, and reply when done.
#[derive(Clone)]
pub(super) struct Ops {
    pub(super) id: Arc<str>,
    pub(super) client: Arc<Client>,
    pub(super) env: Arc<InstanceEnv>,
    numbers: Arc<NumberCache>,
}

/// A send's place in its chat's queue: the send waits for the previous send to the
/// same chat to finish (or fail) before it goes out, so order per chat is kept while
/// different chats, uploads and number checks run in parallel.
pub(super) struct Turn {
    prev: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Dropped when this operation ends, which releases the next one.
    _done: Option<tokio::sync::oneshot::Sender<()>>,
    /// Whether the caller stopped waiting for the answer (its reply port closed).
    caller_gone: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl Turn {
    fn free() -> Self {
        Self {
            prev: None,
            _done: None,
            caller_gone: None,
        }
    }

    /// The caller gave up (an HTTP request that timed out): a send that has not
    /// started yet must not start, or the caller's retry would send it twice.
    pub(super) fn caller_gone(&self) -> bool {
        self.caller_gone.as_ref().is_some_and(|f| f())
    }

    pub(super) async fn wait(&mut self) {
        if let Some(prev) = self.prev.take() {
            // Err only means the previous operation ended without a signal: its
            // sender was dropped, which is the signal.
            let _ = prev.await;
        }
    }
}

/// The operation tasks of one instance: at most `max` in flight, per-chat turns, and
/// their handles (aborted when the actor stops).
pub(super) struct OpTasks {
    max: usize,
    slots: Arc<tokio::sync::Semaphore>,
    tasks: tokio::task::JoinSet<()>,
    chats: std::collections::HashMap<String, tokio::sync::oneshot::Receiver<()>>,
}

impl OpTasks {
    pub(super) fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            max,
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
            tasks: tokio::task::JoinSet::new(),
            chats: std::collections::HashMap::new(),
        }
    }

    /// Runs `fut` as a tracked task (finished ones are reaped on the way).
    pub(super) fn track(&mut self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        while self.tasks.try_join_next().is_some() {}
        self.tasks.spawn(fut);
    }

    /// The next turn in `chat`'s queue.
    fn turn(&mut self, chat: String) -> Turn {
        if self.chats.len() > 2 * self.max {
            // Drop queues whose last operation has ended.
            self.chats.retain(|_, rx| {
                matches!(
                    rx.try_recv(),
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty)
                )
            });
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        Turn {
            prev: self.chats.insert(chat, rx),
            _done: Some(tx),
            caller_gone: None,
        }
    }

    pub(super) fn abort_all(&mut self) {
        self.tasks.abort_all();
        self.chats.clear();
    }
}

/// Number checks per instance: positive answers kept `number_cache_ttl`, negative ones
/// `number_cache_negative_ttl`; a failed send drops the recipient's entry. Bounded:
/// past `MAX_NUMBERS` entries, expired ones are dropped, then everything.
#[derive(Default)]
pub(super) struct NumberCache {
    map: std::sync::Mutex<std::collections::HashMap<String, (Option<Jid>, std::time::Instant)>>,
}

const MAX_NUMBERS: usize = 20_000;

impl NumberCache {
    /// `Some(Some(jid))` registered, `Some(None)` not registered, `None` unknown.
    fn get(&self, phone: &str) -> Option<Option<Jid>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(phone) {
            Some((answer, until)) if *until > std::time::Instant::now() => Some(answer.clone()),
            _ => None,
        }
    }

    fn put(&self, phone: &str, answer: Option<Jid>, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = std::time::Instant::now();
        // A poisoned lock only means a panic elsewhere; the map is still valid.
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_NUMBERS {
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= MAX_NUMBERS {
                map.clear();
            }
        }
        map.insert(phone.to_string(), (answer, now + ttl));
    }

    fn forget(&self, phone: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(phone);
    }
}

impl InstanceState {
    /// The context of a network operation, if the instance can run one now.
    fn ops(&self) -> Result<Ops, InstanceError> {
        Ok(Ops {
            id: Arc::from(self.id.as_str()),
            client: self.logged_in_client()?,
            env: self.env.clone(),
            numbers: self.numbers.clone(),
        })
    }

    /// Starts `op` as a task and replies with its result when it ends. Refused at once
    /// (`NOT_CONNECTED`, `NOT_LOGGED_IN`, `INSTANCE_BUSY`) without starting anything.
    /// With a `chat`, the operation takes the next turn in that chat's queue.
    pub(super) fn run_op<T, F, Fut>(
        &mut self,
        reply: RpcReplyPort<Result<T, InstanceError>>,
        chat: Option<String>,
        op: F,
    ) where
        T: Send + 'static,
        F: FnOnce(Ops, Turn) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, InstanceError>> + Send + 'static,
    {
        let ops = match self.ops() {
            Ok(o) => o,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        // Taken here, in mailbox order, so turns and slots cannot deadlock: every
        // operation ahead in a chat's queue already holds its slot.
        let Ok(permit) = self.ops.slots.clone().try_acquire_owned() else {
            let _ = reply.send(Err(InstanceError::Busy));
            return;
        };
        let mut turn = match chat {
            Some(c) => self.ops.turn(c),
            None => Turn::free(),
        };
        // The port is shared with the turn, which looks at it before a send starts.
        let port = Arc::new(std::sync::Mutex::new(Some(reply)));
        let seen = port.clone();
        turn.caller_gone = Some(Arc::new(move || {
            seen.lock()
                .map(|p| p.as_ref().is_none_or(|p| p.is_closed()))
                .unwrap_or(false)
        }));
        self.ops.track(async move {
            let r = op(ops, turn).await;
            drop(permit);
            let taken = port.lock().ok().and_then(|mut p| p.take());
            if let Some(reply) = taken {
                let _ = reply.send(r);
            }
        });
    }
}

impl Ops {
    /// Resolves `to` — phone digits, `<digits>@s.whatsapp.net`, `<digits>@lid` or a
    /// group JID — and, for phone numbers, checks it is on WhatsApp. Answers from the
    /// number cache when it can (see [`NumberCache`]). A LID is sent to as it is:
    /// WhatsApp gave it, so it exists.
    pub(super) async fn recipient(&self, to: &str) -> Result<Jid, InstanceError> {
        let to = to.strip_suffix("@s.whatsapp.net").unwrap_or(to);
        if let Some(user) = to.strip_suffix("@lid") {
            if user.is_empty() || !user.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InstanceError::InvalidPhone);
            }
            return Ok(Jid::lid(user));
        }
        if to.contains('@') {
            return group_jid_of(to);
        }
        if to.len() < 10 || !to.chars().all(|c| c.is_ascii_digit()) {
            return Err(InstanceError::InvalidPhone);
        }
        if let Some(known) = self.numbers.get(to) {
            return known.ok_or(InstanceError::PhoneNotRegistered);
        }
        let jid = Jid::pn(to);
        let res = tokio::time::timeout(
            self.env.timing.request_timeout,
            self.client
                .contacts()
                .is_on_whatsapp(std::slice::from_ref(&jid)),
        )
        .await
        .map_err(|_| InstanceError::VerificationFailed)?
        .map_err(|_| InstanceError::VerificationFailed)?;
        let timing = &self.env.timing;
        match res.first() {
            Some(r) if r.is_registered => {
                let jid = r.jid.to_non_ad();
                self.numbers
                    .put(to, Some(jid.clone()), timing.number_cache_ttl);
                Ok(jid)
            }
            _ => {
                self.numbers.put(to, None, timing.number_cache_negative_ttl);
                Err(InstanceError::PhoneNotRegistered)
            }
        }
    }

    /// Sends once `turn` comes (the previous send to this chat has ended).
    pub(super) async fn send(
        &self,
        to: Jid,
        message: wa::Message,
        message_id: Option<String>,
        mut turn: Turn,
    ) -> Result<Sent, InstanceError> {
        turn.wait().await;
        if turn.caller_gone() {
            tracing::info!(instance_id = %self.id, "send dropped: its caller gave up before its turn came");
            return Err(InstanceError::Abandoned);
        }
        let client = &self.client;
        let (kind, body, media) = describe(&message);
        let raw = crate::events::raw_of(&message);
        let (kind, is_group) = (kind.to_string(), to.is_group());
        let chat_user = to.user.to_string();
        // Without an id from the caller (an idempotency key's), one that sorts by time.
        let id = message_id.unwrap_or_else(|| time_ordered_id(Utc::now().timestamp_millis()));
        let options = whatsapp_rust::send::SendOptions::default().with_message_id(id);
        let r = tokio::time::timeout(
            self.env.timing.request_timeout,
            client.send_message_with_options(to, message, options),
        )
        .await
        .map_err(|_| InstanceError::SendFailed)?
        .map_err(|e| {
            tracing::warn!(instance_id = %self.id, error = %e, "send failed");
            // The cached check may be what is wrong (the number left WhatsApp).
            if !is_group {
                self.numbers.forget(&chat_user);
            }
            InstanceError::SendFailed
        })?;
        let sent = Sent {
            message_id: r.message_id,
            timestamp: Utc::now().timestamp(),
            to: r.to.to_string(),
        };
        let record = SentRecord {
            instance_id: self.id.to_string(),
            message_id: sent.message_id.clone(),
            chat: r.to.to_non_ad().to_string(),
            is_group,
            kind,
            body,
            media,
            timestamp: sent.timestamp,
            raw,
        };
        if let Err(e) = self.env.sink.record_sent(&record).await {
            // The message is on its way; only its log row is missing.
            tracing::warn!(instance_id = %self.id, error = %e, "recording a sent message failed");
        }
        Ok(sent)
    }

    async fn send_text(
        &self,
        to: &str,
        text: String,
        message_id: Option<String>,
        turn: Turn,
    ) -> Result<Sent, InstanceError> {
        let jid = self.recipient(to).await?;
        let message = wa::Message {
            conversation: Some(text),
            ..Default::default()
        };
        self.send(jid, message, message_id, turn).await
    }

    /// The upload runs before the chat's turn (uploads overlap); the send keeps order.
    async fn send_media(
        &self,
        to: &str,
        media: OutgoingMedia,
        message_id: Option<String>,
        turn: Turn,
    ) -> Result<Sent, InstanceError> {
        let client = &self.client;
        let jid = self.recipient(to).await?;
        let media_type = media.kind.upload_type();
        // A voice note shows its length; Ogg/Opus files carry it.
        let seconds = (media.kind == MediaKind::Voice)
            .then(|| ogg_opus_seconds(&media.bytes))
            .flatten();
        let up = tokio::time::timeout(
            self.env.timing.request_timeout * 4,
            client.upload(media.bytes, media_type, Default::default()),
        )
        .await
        .map_err(|_| InstanceError::UploadFailed)?
        .map_err(|e| {
            tracing::warn!(instance_id = %self.id, error = %e, "upload failed");
            InstanceError::UploadFailed
        })?;
        let mut message = media_message(
            &media.kind,
            up,
            media.mimetype,
            media.caption,
            media.file_name,
        );
        if let Some(a) = message.audio_message.as_option_mut() {
            a.seconds = seconds;
        }
        self.send(jid, message, message_id, turn).await
    }

    async fn list_groups(&self) -> Result<Vec<GroupInfo>, InstanceError> {
        let client = &self.client;
        let groups = tokio::time::timeout(
            self.env.timing.request_timeout,
            client.groups().get_participating(),
        )
        .await
        .map_err(|_| InstanceError::SendFailed)?
        .map_err(|e| {
            tracing::warn!(instance_id = %self.id, error = %e, "listing groups failed");
            InstanceError::SendFailed
        })?;
        let mut out: Vec<GroupInfo> = groups
            .into_values()
            .map(|g| GroupInfo {
                jid: g.id.to_string(),
                name: g.subject,
                topic: g.description,
                participants: g.participants.iter().map(|p| p.jid.to_string()).collect(),
                owner_jid: g.creator.map(|c| c.to_string()),
                created_at: g.creation_time,
            })
            .collect();
        out.sort_by(|a, b| a.jid.cmp(&b.jid));
        Ok(out)
    }

    async fn send_group_text(
        &self,
        group_jid: &str,
        text: String,
        message_id: Option<String>,
        turn: Turn,
    ) -> Result<Sent, InstanceError> {
        let jid = group_jid_of(group_jid)?;
        let message = wa::Message {
            conversation: Some(text),
            ..Default::default()
        };
        self.send(jid, message, message_id, turn).await
    }

    pub(super) async fn check_numbers(
        &self,
        phones: &[String],
    ) -> Result<Vec<NumberCheck>, InstanceError> {
        let client = &self.client;
        if phones
            .iter()
            .any(|p| p.len() < 10 || !p.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(InstanceError::InvalidPhone);
        }
        let jids: Vec<Jid> = phones.iter().map(|p| Jid::pn(p.as_str())).collect();
        let res = tokio::time::timeout(
            self.env.timing.request_timeout,
            client.contacts().is_on_whatsapp(&jids),
        )
        .await
        .map_err(|_| InstanceError::VerificationFailed)?
        .map_err(|_| InstanceError::VerificationFailed)?;
        Ok(phones
            .iter()
            .map(|p| {
                let hit = res.iter().find(|r| r.jid.user.as_str() == p.as_str());
                NumberCheck {
                    phone: p.clone(),
                    is_registered: hit.is_some_and(|r| r.is_registered),
                    jid: hit
                        .filter(|r| r.is_registered)
                        .map(|r| r.jid.to_non_ad().to_string()),
                    lid: hit
                        .filter(|r| r.is_registered)
                        .and_then(|r| r.lid.as_ref())
                        .map(|l| l.to_non_ad().to_string()),
                }
            })
            .collect())
    }
}

/// A new outgoing message's id: `3EB0` (as WhatsApp Web's), then the time in
/// milliseconds (its low 40 bits, 10 upper-case hex digits) and 40 random bits (10
/// more). The library's own ids are a hash, so every send put its rows — the message
/// log's keys, its statuses, its secret, the copy kept for retries — on a random page
/// of each of those indexes; ids that grow with time put them at the end, where the
/// previous sends' rows already are: a group commit writes a few pages of each index
/// instead of one per row. Ids stay unique per sender: two sends in the same
/// millisecond differ in their random part (a 2^-40 chance of a clash).
pub fn time_ordered_id(now_ms: i64) -> String {
    let ms = u64::try_from(now_ms).unwrap_or(0) & 0xff_ffff_ffff;
    let random = rand::random::<u64>() & 0xff_ffff_ffff;
    format!("3EB0{ms:010X}{random:010X}")
}

/// A media message for an uploaded file (also used by the sandbox's contacts).
pub fn media_message(
    kind: &MediaKind,
    up: whatsapp_rust::upload::UploadResponse,
    mimetype: String,
    caption: Option<String>,
    file_name: Option<String>,
) -> wa::Message {
    use wa::message::{AudioMessage, DocumentMessage, ImageMessage, StickerMessage, VideoMessage};
    macro_rules! fill {
        ($t:ident) => {
            $t {
                url: Some(up.url.clone()),
                direct_path: Some(up.direct_path.clone()),
                media_key: Some(up.media_key.to_vec()),
                file_enc_sha256: Some(up.file_enc_sha256.to_vec()),
                file_sha256: Some(up.file_sha256.to_vec()),
                file_length: Some(up.file_length),
                mimetype: Some(mimetype.clone()),
                media_key_timestamp: Some(up.media_key_timestamp),
                ..Default::default()
            }
        };
    }
    let mut m = wa::Message::default();
    match kind {
        MediaKind::Image => {
            let mut x = fill!(ImageMessage);
            x.caption = caption;
            m.image_message = x.into();
        }
        MediaKind::Video => {
            let mut x = fill!(VideoMessage);
            x.caption = caption;
            x.streaming_sidecar = up.streaming_sidecar.clone();
            m.video_message = x.into();
        }
        MediaKind::Audio | MediaKind::Voice => {
            let mut x = fill!(AudioMessage);
            x.streaming_sidecar = up.streaming_sidecar.clone();
            if *kind == MediaKind::Voice {
                x.ptt = Some(true);
            }
            m.audio_message = x.into();
        }
        MediaKind::Sticker => {
            let x = fill!(StickerMessage);
            m.sticker_message = x.into();
        }
        MediaKind::Document => {
            let mut x = fill!(DocumentMessage);
            x.caption = caption;
            x.file_name = file_name;
            m.document_message = x.into();
        }
    }
    m
}

/// The length of an Ogg/Opus file in whole seconds (rounded up): the granule position
/// of its last page (48 kHz samples) less the pre-skip of its `OpusHead`. `None` for
/// anything else.
pub fn ogg_opus_seconds(b: &[u8]) -> Option<u32> {
    if !b.starts_with(b"OggS") {
        return None;
    }
    let head = b.windows(8).position(|w| w == b"OpusHead")?;
    let pre_skip = u16::from_le_bytes([*b.get(head + 10)?, *b.get(head + 11)?]) as u64;
    // The last page header: "OggS", version, type, then the granule position.
    let last = b.windows(4).rposition(|w| w == b"OggS")?;
    let granule = u64::from_le_bytes(b.get(last + 6..last + 14)?.try_into().ok()?);
    if granule == u64::MAX {
        return None;
    }
    let samples = granule.saturating_sub(pre_skip);
    u32::try_from(samples.div_ceil(48_000)).ok()
}

/// A group JID (`<digits>@g.us` or `<digits>-<digits>@g.us`), or `InvalidGroupJid`.
pub(super) fn group_jid_of(s: &str) -> Result<Jid, InstanceError> {
    let user = s
        .strip_suffix("@g.us")
        .ok_or(InstanceError::InvalidGroupJid)?;
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let ok = match user.split_once('-') {
        Some((a, b)) => digits(a) && digits(b),
        None => digits(user),
    };
    if !ok {
        return Err(InstanceError::InvalidGroupJid);
    }
    s.parse().map_err(|_| InstanceError::InvalidGroupJid)
}

#[cfg(test)]
mod tests {
    use super::time_ordered_id;

    #[test]
    fn message_ids_sort_by_time_and_differ_within_a_millisecond() {
        let a = time_ordered_id(1_765_000_000_000);
        let b = time_ordered_id(1_765_000_000_001);
        let c = time_ordered_id(1_765_000_000_001);
        for id in [&a, &b, &c] {
            assert_eq!(id.len(), 24, "{id}");
            assert!(id.starts_with("3EB0"), "{id}");
            assert!(id[4..]
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)));
        }
        assert!(a < b, "a later send sorts after an earlier one: {a} {b}");
        assert_eq!(b[..14], c[..14], "same millisecond, same time part");
        assert_ne!(b, c, "same millisecond, different ids");
    }
}
