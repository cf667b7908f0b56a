//! The send path. Twelve routes — sender by instance id or by its own number ×
//! recipient a phone or a group × a text, a media URL or an uploaded file — run one
//! handler, [`send`], parameterised by a [`Route`]:
//!
//! 1. the caller's scope (by id), then the body (required fields, file read);
//! 2. the sender: the instance (404, `Idempotency-Key` check, connected and logged
//!    in), or the ready instance with that number (404 `NO_ACTIVE_INSTANCE`);
//! 3. the recipient (`INVALID_PHONE`, `INVALID_GROUP_JID`) and the media (checks and
//!    caps, or the URL fetched);
//! 4. the send, at most once per `Idempotency-Key` ([`super::idempotent`]), through
//!    the instance's [`InstanceHandle`] (the actor keeps per-chat order).
//!
//! `POST /api/check/:id` (is a number on WhatsApp) lives here too.

use super::idempotent::{idempotent, request_hash, Idem};
use super::media::{media_type_field, read_upload, upload_media, url_media, MediaForm, MediaUrl};
use super::media::{FileSend, GroupFileSend};
use super::table::{at1, Table};
use super::{by_number, guard, instance, json, parse, ready, required, R};
use crate::http::auth::Principal;
use crate::http::error::ApiError;
use crate::http::openapi::{
    doc, Body, RouteDoc, BY_NUMBER, GROUP_ERRORS, MEDIA_ERRORS, SEND_ERRORS,
};
use crate::http::schema;
use crate::http::util::{self, ok};
use crate::http::{authed, respond, scoped, with_api, Shared};
use crate::media::MediaInput;
use crate::runtime::{Content, InstanceHandle, Recipient};
use crate::store::instances::Instance;
use actors::instance::{InstanceError, Sent};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

/// Which instance sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    /// `:id` in the path.
    Id,
    /// The instance whose own number is `:phone` in the path.
    Number,
}

/// What the request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Url,
    File,
}

/// One of the twelve send routes.
#[derive(Debug, Clone, Copy)]
struct Route {
    by: By,
    group: bool,
    kind: Kind,
}

pub(super) fn routes(api: &Shared) -> Table {
    use {By::*, Kind::*};
    let r = |by, group, kind| Route { by, group, kind };
    let mut t = Table::default();
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/check/{id}",
            "messages",
            "Is a number on WhatsApp?",
            true,
            Body::Json(schema::of::<CheckBody>()),
            SEND_ERRORS
        ),
        check,
        json()
    );
    // By-number routes first: `/api/send/by-number/x` must not be read as instance
    // `by-number`.
    let sends = [
        (
            post(
                "/api/by-number/{phone}",
                "by-number",
                "Send a text from the instance whose number is {phone}",
                Body::Json(schema::of::<TextSend>()),
                BY_NUMBER,
            ),
            r(Number, false, Text),
        ),
        (
            post(
                "/api/by-number/{phone}/media-url",
                "by-number",
                "Send a file from a URL, by sender number",
                Body::Json(schema::of::<UrlSend>()),
                BY_NUMBER,
            ),
            r(Number, false, Url),
        ),
        (
            post(
                "/api/by-number/{phone}/media-file",
                "by-number",
                "Send an uploaded file, by sender number",
                Body::Multipart(schema::of::<FileSend>()),
                BY_NUMBER,
            ),
            r(Number, false, File),
        ),
        (
            post(
                "/api/send/by-number/{phone}",
                "by-number",
                "Alias of /api/by-number/{phone}",
                Body::Json(schema::of::<TextSend>()),
                BY_NUMBER,
            ),
            r(Number, false, Text),
        ),
        (
            post(
                "/api/send/by-number/{phone}/media-url",
                "by-number",
                "Alias of /api/by-number/{phone}/media-url",
                Body::Json(schema::of::<UrlSend>()),
                BY_NUMBER,
            ),
            r(Number, false, Url),
        ),
        (
            post(
                "/api/send/by-number/{phone}/media-file",
                "by-number",
                "Alias of /api/by-number/{phone}/media-file",
                Body::Multipart(schema::of::<FileSend>()),
                BY_NUMBER,
            ),
            r(Number, false, File),
        ),
        (
            post(
                "/api/send/{id}",
                "messages",
                "Send a text",
                Body::Json(schema::of::<TextSend>()),
                SEND_ERRORS,
            ),
            r(Id, false, Text),
        ),
        (
            post(
                "/api/send/{id}/media",
                "messages",
                "Send an uploaded file",
                Body::Multipart(schema::of::<FileSend>()),
                MEDIA_ERRORS,
            ),
            r(Id, false, File),
        ),
        (
            post(
                "/api/send/{id}/media-url",
                "messages",
                "Send a file fetched from a URL",
                Body::Json(schema::of::<UrlSend>()),
                MEDIA_ERRORS,
            ),
            r(Id, false, Url),
        ),
        (
            post(
                "/api/send-group/by-number/{phone}",
                "groups",
                "Send a text to a group, by sender number",
                Body::Json(schema::of::<GroupTextSend>()),
                BY_NUMBER,
            ),
            r(Number, true, Text),
        ),
        (
            post(
                "/api/send-group/by-number/{phone}/media",
                "groups",
                "Send an uploaded file to a group, by sender number",
                Body::Multipart(schema::of::<GroupFileSend>()),
                BY_NUMBER,
            ),
            r(Number, true, File),
        ),
        (
            post(
                "/api/send-group/by-number/{phone}/media-url",
                "groups",
                "Send a file from a URL to a group, by sender number",
                Body::Json(schema::of::<GroupUrlSend>()),
                BY_NUMBER,
            ),
            r(Number, true, Url),
        ),
        (
            post(
                "/api/send-group/{id}",
                "groups",
                "Send a text to a group",
                Body::Json(schema::of::<GroupTextSend>()),
                GROUP_ERRORS,
            ),
            r(Id, true, Text),
        ),
        (
            post(
                "/api/send-group/{id}/media",
                "groups",
                "Send an uploaded file to a group",
                Body::Multipart(schema::of::<GroupFileSend>()),
                MEDIA_ERRORS,
            ),
            r(Id, true, File),
        ),
        (
            post(
                "/api/send-group/{id}/media-url",
                "groups",
                "Send a file from a URL to a group",
                Body::Json(schema::of::<GroupUrlSend>()),
                MEDIA_ERRORS,
            ),
            r(Id, true, Url),
        ),
    ];
    for (d, route_of) in sends {
        t.add(d, route(api, at1(&d), route_of));
    }
    t
}

/// An authenticated POST route's description (every send route is one).
const fn post(
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    body: Body,
    errors: &'static [&'static str],
) -> RouteDoc {
    doc("post", path, tag, summary, true, body, errors)
}

/// A request body: JSON, or a multipart upload.
enum Payload {
    Json(Bytes),
    Form(MediaForm),
}

/// The filter of one send route (`at`: its method and path).
fn route(api: &Shared, at: BoxedFilter<(String,)>, r: Route) -> BoxedFilter<(Response,)> {
    let caller = at.and(authed(api.clone()));
    // By id, a file upload checks the caller's scope before the body is read.
    let caller = if r.by == By::Id && r.kind == Kind::File {
        caller.and_then(scoped).untuple_one().boxed()
    } else {
        caller.boxed()
    };
    let payload = match r.kind {
        Kind::File => multipart(api).map(Payload::Form).boxed(),
        Kind::Text | Kind::Url => json().map(Payload::Json).boxed(),
    };
    caller
        .and(payload)
        .and(idempotency_key())
        .and(with_api(api.clone()))
        .then(move |s, p, body, key, api| send(r, s, p, body, key, api))
        .map(respond)
        .boxed()
}

/// A multipart body, at most the largest media cap (plus room for the other fields).
fn multipart(api: &Shared) -> BoxedFilter<(MediaForm,)> {
    let l = &api.config.limits;
    let limit = l.max_document_bytes.max(l.max_video_bytes) + 1024 * 1024;
    warp::header::optional::<u64>("content-length")
        .and(warp::multipart::form().max_length(limit))
        .map(|len, form| MediaForm { len, form })
        .boxed()
}

/// The raw `Idempotency-Key` (checked after the instance scope, so a malformed key is
/// a `VALIDATION_ERROR` rather than a header rejection).
pub(super) fn idempotency_key() -> BoxedFilter<(Option<String>,)> {
    warp::header::headers_cloned()
        .map(|h: warp::http::HeaderMap| {
            h.get("idempotency-key")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        })
        .boxed()
}

/// Every send route: body → sender → recipient and media → send (see the module doc).
async fn send(
    r: Route,
    sender: String,
    p: Principal,
    body: Payload,
    key: Option<String>,
    api: Shared,
) -> R {
    if r.by == By::Id {
        guard(&p, &sender)?;
    }
    let draft = Draft::read(&api, r, body).await?;
    let (row, handle, idem) = resolve(&api, &p, r.by, &sender, key).await?;
    let (to, content, hash) = draft.finish(&api, r.group).await?;
    let limit_key = to.as_str().to_string();
    let send = move |id| deliver(handle, to, content, id);
    let out = idempotent(&api, &idem, &limit_key, hash, send).await?;
    // Only a send by number has the row: its answer names the sender.
    let out = match &row {
        Some(row) => out.map(|v| with_from(v, row)),
        None => out,
    };
    let message = if r.kind == Kind::Text {
        "Message sent"
    } else {
        "Media sent"
    };
    Ok(out.reply(message))
}

/// The sending instance (its row when sent by number, whose answer names it), its
/// handle and its checked `Idempotency-Key`. By id, the token's scope was checked
/// already ([`send`] does it before reading the body).
async fn resolve(
    api: &Shared,
    p: &Principal,
    by: By,
    sender: &str,
    key: Option<String>,
) -> Result<(Option<Instance>, InstanceHandle, Idem), ApiError> {
    match by {
        By::Id => {
            // A ready actor's instance row exists (an instance is deleted only when
            // not connected, and its actor is stopped before its row goes), so a send
            // to a ready instance skips reading the row; otherwise the row decides
            // between 404 and the not-ready errors, as before.
            if let Some(handle) = api.runtime.handle(sender) {
                if handle.ready().await.is_ok() {
                    let idem = Idem::new(sender, key)?;
                    return Ok((None, handle, idem));
                }
            }
            let row = instance(api, p, sender).await?;
            let idem = Idem::new(&row.id, key)?;
            let handle = ready(api, &row).await?;
            Ok((None, handle, idem))
        }
        By::Number => {
            let (row, handle) = by_number(api, p, sender).await?;
            let idem = Idem::new(&row.id, key)?;
            Ok((Some(row), handle, idem))
        }
    }
}

/// What a request asks to send.
enum Message {
    Text(String),
    Media(MediaInput),
}

/// A body read and its required fields present; the rest is checked once the
/// sender is known.
enum Draft {
    Text { to: String, text: String },
    Url { to: String, body: MediaUrl },
    File(crate::media::upload::Upload),
}

/// A text to a number.
#[derive(Deserialize, Default, ToSchema)]
struct TextSend {
    /// The recipient's phone number.
    #[schema(value_type = String, required = true, pattern = "{phone}")]
    to: Option<String>,
    #[schema(value_type = String, required = true, pattern = r"\S")]
    message: Option<String>,
}

/// A text to a group.
#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase")]
struct GroupTextSend {
    #[schema(value_type = String, required = true, pattern = r"^[0-9]+(-[0-9]+)?@g\.us$")]
    group_jid: Option<String>,
    #[schema(value_type = String, required = true, pattern = r"\S")]
    message: Option<String>,
}

/// A file from a URL to a number.
#[derive(Deserialize, Default, ToSchema)]
struct UrlSend {
    /// The recipient's phone number.
    #[schema(value_type = String, required = true, pattern = "{phone}")]
    to: Option<String>,
    #[serde(flatten)]
    #[schema(inline)]
    media: MediaUrl,
}

/// A file from a URL to a group.
#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase")]
struct GroupUrlSend {
    #[schema(value_type = String, required = true, pattern = r"^[0-9]+(-[0-9]+)?@g\.us$")]
    group_jid: Option<String>,
    #[serde(flatten)]
    #[schema(inline)]
    media: MediaUrl,
}

/// The recipient field of a route: `groupJid` for groups, else `to`.
fn field(group: bool) -> &'static str {
    if group {
        "groupJid"
    } else {
        "to"
    }
}

impl Draft {
    async fn read(api: &Shared, r: Route, body: Payload) -> Result<Self, ApiError> {
        match (r.kind, body) {
            (Kind::Text, Payload::Json(b)) => {
                let (to, text) = if r.group {
                    let b: GroupTextSend = parse(&b)?;
                    (b.group_jid, b.message)
                } else {
                    let b: TextSend = parse(&b)?;
                    (b.to, b.message)
                };
                let to = required(&to, field(r.group))?;
                let text = required(&text, "message")?;
                Ok(Self::Text { to, text })
            }
            (Kind::Url, Payload::Json(b)) => {
                let (to, body) = if r.group {
                    let b: GroupUrlSend = parse(&b)?;
                    (b.group_jid, b.media)
                } else {
                    let b: UrlSend = parse(&b)?;
                    (b.to, b.media)
                };
                let to = required(&to, field(r.group))?;
                required(&body.media_url, "mediaUrl")?;
                media_type_field(&body.media_type)?;
                Ok(Self::Url { to, body })
            }
            (_, Payload::Form(form)) => Ok(Self::File(read_upload(api, form).await?)),
            // The route table pairs JSON kinds with JSON bodies and files with forms.
            (Kind::File, Payload::Json(_)) => Err(ApiError::internal()),
        }
    }

    /// The recipient, the content and the request's idempotency hash.
    async fn finish(
        self,
        api: &Shared,
        group: bool,
    ) -> Result<(Recipient, Message, String), ApiError> {
        match self {
            Self::Text { to, text } => {
                let to = recipient(api, &to, group)?;
                let tag: &[u8] = if group { b"group-text" } else { b"text" };
                let hash = request_hash(&[tag, to.as_str().as_bytes(), text.as_bytes()]);
                Ok((to, Message::Text(text), hash))
            }
            Self::Url { to, body } => {
                let to = recipient(api, &to, group)?;
                let m = url_media(api, &body).await?;
                Ok(media_content(to, m))
            }
            Self::File(up) => {
                let (to, m) = upload_media(api, up, field(group))?;
                let to = recipient(api, &to, group)?;
                Ok(media_content(to, m))
            }
        }
    }
}

/// Media content and its hash (over every part of the request that shapes the message).
fn media_content(to: Recipient, m: MediaInput) -> (Recipient, Message, String) {
    let hash = request_hash(&[
        b"media",
        to.as_str().as_bytes(),
        crate::media::media_kind_word(m.kind).as_bytes(),
        m.mimetype.as_bytes(),
        m.file_name.as_bytes(),
        m.caption.as_deref().unwrap_or("").as_bytes(),
        &m.bytes,
    ]);
    (to, Message::Media(m), hash)
}

/// A normalised phone number, or a validated group JID.
fn recipient(api: &Shared, raw: &str, group: bool) -> Result<Recipient, ApiError> {
    if group {
        let jid = raw.trim();
        if !util::is_group_jid(jid) {
            return Err(InstanceError::InvalidGroupJid.into());
        }
        Ok(Recipient::Group(jid.to_string()))
    } else if let Some(lid) = util::lid_jid(raw) {
        Ok(Recipient::Lid(lid))
    } else {
        if let Some(digits) = util::pn_jid_digits(raw) {
            return Ok(Recipient::Phone(digits));
        }
        let cc = &api.config.whatsapp.default_country_code;
        Ok(Recipient::Phone(util::normalize_phone(raw, cc)?))
    }
}

/// Sends through the handle; the answer's `data`.
async fn deliver(
    handle: InstanceHandle,
    to: Recipient,
    message: Message,
    message_id: Option<String>,
) -> Result<Value, ApiError> {
    let group = matches!(to, Recipient::Group(_));
    let target = to.as_str().to_string();
    let (content, media, _hold) = match message {
        Message::Text(text) => (Content::Text(text), None, None),
        Message::Media(m) => {
            let about = (m.kind, m.bytes.len(), m.file_name.clone());
            // The hold is kept until the actor answers (it has the bytes until then).
            let (media, hold) = m.into_outgoing();
            (Content::Media(media), Some(about), Some(hold))
        }
    };
    let sent = handle.send(to, content, message_id).await?;
    Ok(sent_data(&sent, group, &target, media))
}

/// The `data` of a sent message.
fn sent_data(
    sent: &Sent,
    group: bool,
    target: &str,
    media: Option<(actors::instance::MediaKind, usize, String)>,
) -> Value {
    let mut v = if group && media.is_none() {
        json!({"messageId": sent.message_id, "timestamp": sent.timestamp})
    } else {
        json!({"messageId": sent.message_id, "timestamp": sent.timestamp, "to": sent.to, "verified": true})
    };
    if let Some((kind, size, file_name)) = media {
        v["mediaType"] = json!(crate::media::media_kind_word(kind));
        v["fileName"] = json!(file_name);
        v["fileSize"] = json!(size);
    }
    if group {
        v["groupJid"] = json!(target);
    }
    v
}

fn with_from(mut v: Value, from: &Instance) -> Value {
    v["from"] = json!(from.phone);
    v["instanceId"] = json!(from.id);
    v
}

/// The number to check.
#[derive(Deserialize, Default, ToSchema)]
struct CheckBody {
    #[schema(value_type = String, required = true, pattern = "{phone}")]
    phone: Option<String>,
}

/// `POST /api/check/:id`.
async fn check(id: String, p: Principal, body: Bytes, api: Shared) -> R {
    guard(&p, &id)?;
    let raw = required(&parse::<CheckBody>(&body)?.phone, "phone")?;
    let row = instance(&api, &p, &id).await?;
    let handle = ready(&api, &row).await?;
    let phone = util::normalize_phone(&raw, &api.config.whatsapp.default_country_code)?;
    let hit = handle
        .check_numbers(vec![phone.clone()])
        .await?
        .into_iter()
        .next();
    Ok(ok(
        "Number checked",
        json!({
            "phone": phone,
            "isRegistered": hit.as_ref().is_some_and(|h| h.is_registered),
            "lid": hit.as_ref().and_then(|h| h.lid.clone()),
            "jid": hit.and_then(|h| h.jid),
        }),
    ))
}
