//! Message kinds beyond text and media, and actions on messages in the log:
//!
//! - `POST /api/instances/:id/send/{text,location,contact,poll}`: a text with
//!   mentions, a location, contact cards, a poll — each optionally a reply
//!   (`quotedMessageId`), each at most once per `Idempotency-Key`;
//! - `POST /api/instances/:id/messages/:messageId/{forward,reaction,read}`,
//!   `PATCH` (edit) and `DELETE` (delete for everyone) of `/messages/:messageId`;
//! - `POST /api/instances/:id/chat-state` (typing, recording, paused) and
//!   `POST /api/instances/:id/presence` (online, offline).
//!
//! A recipient (`to`) is a phone number, `<digits>@s.whatsapp.net`, `<digits>@lid` or
//! a group JID. Messages are named by their id in the instance's message log
//! (`MESSAGE_NOT_FOUND` otherwise).

use super::idempotent::{idempotent, request_hash, Idem};
use super::table::Table;
use super::{guard, instance, json, parse, ready, required, R};
use crate::http::auth::Principal;
use crate::http::error::ApiError;
use crate::http::openapi::{doc, Body, SEND_ERRORS};
use crate::http::schema;
use crate::http::util::{self, ok};
use crate::http::Shared;
use actors::instance::{CardOut, ChatState, MessageAction, MessageRef, Outgoing, Sent};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use warp::http::StatusCode;

/// Errors of routes that name a logged message.
const ON_MESSAGE_ERRORS: &[&str] = &[
    "VALIDATION_ERROR",
    "INVALID_REQUEST",
    "FORBIDDEN",
    "SESSION_NOT_FOUND",
    "NOT_CONNECTED",
    "NOT_LOGGED_IN",
    "MESSAGE_NOT_FOUND",
    "NOT_OWN_MESSAGE",
    "SEND_FAILED",
    "INSTANCE_BUSY",
];

/// Errors of the compose routes.
const COMPOSE_ERRORS: &[&str] = &[
    "VALIDATION_ERROR",
    "INVALID_REQUEST",
    "FORBIDDEN",
    "SESSION_NOT_FOUND",
    "NOT_CONNECTED",
    "NOT_LOGGED_IN",
    "INVALID_PHONE",
    "INVALID_GROUP_JID",
    "PHONE_NOT_REGISTERED",
    "VERIFICATION_FAILED",
    "MESSAGE_NOT_FOUND",
    "MESSAGE_NOT_FORWARDABLE",
    "SEND_FAILED",
    "INSTANCE_BUSY",
];

pub(super) fn routes(api: &Shared) -> Table {
    let mut t = Table::default();
    let key = super::send::idempotency_key;
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/instances/{id}/send/text",
            "messages",
            "Send a text with mentions, optionally as a reply",
            true,
            Body::Json(schema::of::<TextBody>()),
            COMPOSE_ERRORS
        ),
        text,
        json(),
        key()
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/instances/{id}/send/location",
            "messages",
            "Send a location",
            true,
            Body::Json(schema::of::<LocationBody>()),
            COMPOSE_ERRORS
        ),
        location,
        json(),
        key()
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/instances/{id}/send/contact",
            "messages",
            "Send one or more contact cards",
            true,
            Body::Json(schema::of::<ContactBody>()),
            COMPOSE_ERRORS
        ),
        contact,
        json(),
        key()
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/instances/{id}/send/poll",
            "messages",
            "Send a poll",
            true,
            Body::Json(schema::of::<PollBody>()),
            COMPOSE_ERRORS
        ),
        poll,
        json(),
        key()
    );
    declare!(
        t,
        api,
        at2,
        doc(
            "post",
            "/api/instances/{id}/messages/{messageId}/forward",
            "messages",
            "Forward a logged message",
            true,
            Body::Json(schema::of::<ForwardBody>()),
            COMPOSE_ERRORS
        ),
        forward,
        json(),
        key()
    );
    declare!(
        t,
        api,
        at2,
        doc(
            "post",
            "/api/instances/{id}/messages/{messageId}/reaction",
            "messages",
            "React to a logged message (an empty emoji removes the reaction)",
            true,
            Body::Json(schema::of::<ReactionBody>()),
            ON_MESSAGE_ERRORS
        ),
        reaction,
        json()
    );
    declare!(
        t,
        api,
        at2,
        doc(
            "patch",
            "/api/instances/{id}/messages/{messageId}",
            "messages",
            "Edit the text of a message this instance sent",
            true,
            Body::Json(schema::of::<EditBody>()),
            ON_MESSAGE_ERRORS
        ),
        edit,
        json()
    );
    declare!(
        t,
        api,
        at2,
        doc(
            "delete",
            "/api/instances/{id}/messages/{messageId}",
            "messages",
            "Delete a message for everyone (own messages; others' in groups this number admins)",
            true,
            Body::None,
            ON_MESSAGE_ERRORS
        ),
        revoke
    );
    declare!(
        t,
        api,
        at2,
        doc(
            "post",
            "/api/instances/{id}/messages/{messageId}/read",
            "messages",
            "Mark a received message read (blue ticks)",
            true,
            Body::None,
            ON_MESSAGE_ERRORS
        ),
        read
    );
    declare!(
        t,
        api,
        at2,
        doc(
            "get",
            "/api/instances/{id}/messages/{messageId}/media",
            "messages",
            "Download a logged message's media (decrypted; Content-Type and file name set)",
            true,
            Body::None,
            &[
                "FORBIDDEN",
                "SESSION_NOT_FOUND",
                "NOT_CONNECTED",
                "NOT_LOGGED_IN",
                "MESSAGE_NOT_FOUND",
                "NO_MEDIA",
                "MEDIA_UNAVAILABLE",
                "MEDIA_EXPIRED",
                "MEDIA_DOWNLOAD_FAILED",
                "INSTANCE_BUSY"
            ]
        ),
        media
    );
    for (path, summary) in [
        (
            "/api/instances/{id}/lid/{phone}",
            "The LID of a phone number (asks WhatsApp when not known yet)",
        ),
        (
            "/api/instances/{id}/phone/{lid}",
            "The phone number of a LID, as far as this instance was told",
        ),
    ] {
        declare!(
            t,
            api,
            at2,
            doc(
                "get",
                path,
                "messages",
                summary,
                true,
                Body::None,
                &[
                    "FORBIDDEN",
                    "SESSION_NOT_FOUND",
                    "NOT_CONNECTED",
                    "NOT_LOGGED_IN",
                    "INVALID_PHONE",
                    "VERIFICATION_FAILED",
                    "MAPPING_NOT_FOUND",
                    "INSTANCE_BUSY"
                ]
            ),
            lid_lookup
        );
    }
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/instances/{id}/chat-state",
            "messages",
            "Show typing, recording or paused in a chat",
            true,
            Body::Json(schema::of::<ChatStateBody>()),
            SEND_ERRORS
        ),
        chat_state,
        json()
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/instances/{id}/presence/subscribe",
            "messages",
            "Subscribe to a contact's availability (presence events follow)",
            true,
            Body::Json(schema::of::<SubscribeBody>()),
            SEND_ERRORS
        ),
        presence_subscribe,
        json()
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/instances/{id}/presence",
            "messages",
            "Appear online or offline",
            true,
            Body::Json(schema::of::<PresenceBody>()),
            &[
                "VALIDATION_ERROR",
                "INVALID_REQUEST",
                "FORBIDDEN",
                "SESSION_NOT_FOUND",
                "NOT_CONNECTED",
                "NOT_LOGGED_IN",
                "SEND_FAILED",
                "INSTANCE_BUSY"
            ]
        ),
        presence,
        json()
    );
    t
}

/// A text, with mentions.
#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase")]
struct TextBody {
    #[schema(value_type = String, required = true, pattern = "{recipient}")]
    to: Option<String>,
    #[schema(value_type = String, required = true, pattern = r"\S")]
    text: Option<String>,
    /// Phone numbers or JIDs mentioned (the text names them as `@<digits>`).
    #[schema(schema_with = schema::people)]
    mentions: Option<Vec<String>>,
    /// The id of a logged message this one replies to.
    quoted_message_id: Option<String>,
    /// Fetch the first URL of the text and send its title and description with it.
    link_preview: Option<bool>,
}

/// A location.
#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase")]
struct LocationBody {
    #[schema(value_type = String, required = true, pattern = "{recipient}")]
    to: Option<String>,
    #[schema(value_type = f64, required = true, minimum = -90, maximum = 90)]
    latitude: Option<f64>,
    #[schema(value_type = f64, required = true, minimum = -180, maximum = 180)]
    longitude: Option<f64>,
    name: Option<String>,
    address: Option<String>,
    quoted_message_id: Option<String>,
}

/// One contact card.
#[derive(Deserialize, Default, ToSchema)]
struct CardBody {
    #[schema(value_type = String, required = true, pattern = r"\S")]
    name: Option<String>,
    #[schema(value_type = String, required = true, pattern = "{phone}")]
    phone: Option<String>,
}

/// Contact cards (1-20).
#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ContactBody {
    #[schema(value_type = String, required = true, pattern = "{recipient}")]
    to: Option<String>,
    #[schema(inline, value_type = Vec<CardBody>, required = true, min_items = 1, max_items = 20)]
    contacts: Option<Vec<CardBody>>,
    quoted_message_id: Option<String>,
}

/// A poll: 2-12 distinct options; `selectableCount` 1 (default) to 12, how many
/// options a voter may pick (more than there are options: any number of them).
#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase")]
struct PollBody {
    #[schema(value_type = String, required = true, pattern = "{recipient}")]
    to: Option<String>,
    #[schema(value_type = String, required = true, pattern = r"\S")]
    name: Option<String>,
    #[schema(schema_with = schema::poll_options, required = true)]
    options: Option<Vec<String>>,
    #[schema(minimum = 1, maximum = 12)]
    selectable_count: Option<u32>,
    quoted_message_id: Option<String>,
}

/// Where to forward.
#[derive(Deserialize, Default, ToSchema)]
struct ForwardBody {
    #[schema(value_type = String, required = true, pattern = "{recipient}")]
    to: Option<String>,
}

/// A reaction; `""` removes ours.
#[derive(Deserialize, Default, ToSchema)]
struct ReactionBody {
    #[schema(value_type = String, required = true, max_length = 16)]
    emoji: Option<String>,
}

/// The new text.
#[derive(Deserialize, Default, ToSchema)]
struct EditBody {
    #[schema(value_type = String, required = true, pattern = r"\S")]
    text: Option<String>,
}

/// A chat state shown in `to`.
#[derive(Deserialize, Default, ToSchema)]
struct ChatStateBody {
    #[schema(value_type = String, required = true, pattern = "{recipient}")]
    to: Option<String>,
    /// `typing`, `recording` or `paused`.
    #[schema(value_type = String, required = true, pattern = "^(typing|recording|paused)$")]
    state: Option<String>,
}

/// Whose availability to follow.
#[derive(Deserialize, Default, ToSchema)]
struct SubscribeBody {
    /// A phone number or person JID.
    #[schema(value_type = String, required = true, pattern = "{person}")]
    to: Option<String>,
}

/// `available` (online) or `unavailable` (offline).
#[derive(Deserialize, Default, ToSchema)]
struct PresenceBody {
    #[schema(value_type = String, required = true, pattern = "^(available|unavailable)$")]
    presence: Option<String>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("VALIDATION_ERROR", message)
}

/// A recipient as the actor takes it (see the module doc).
fn recipient(api: &Shared, raw: &str) -> Result<String, ApiError> {
    let raw = raw.trim();
    if raw.ends_with("@g.us") {
        if !util::is_group_jid(raw) {
            return Err(actors::instance::InstanceError::InvalidGroupJid.into());
        }
        return Ok(raw.to_string());
    }
    util::person(raw, &api.config.whatsapp.default_country_code)
}

/// A mention: a phone number or a person's JID, as a JID.
fn mention(api: &Shared, raw: &str) -> Result<String, ApiError> {
    let who = util::person(raw, &api.config.whatsapp.default_country_code)
        .map_err(|_| invalid("mentions must be phone numbers or person JIDs"))?;
    Ok(if who.ends_with("@lid") {
        who
    } else {
        format!("{who}@s.whatsapp.net")
    })
}

/// A logged message of the instance, or 404 `MESSAGE_NOT_FOUND`.
async fn logged(api: &Shared, instance_id: &str, message_id: &str) -> Result<MessageRef, ApiError> {
    let id = percent_encoding::percent_decode_str(message_id).decode_utf8_lossy();
    api.journal
        .message_ref(instance_id, id.trim())
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "MESSAGE_NOT_FOUND",
                "No such message in this instance's log",
            )
        })
}

/// What a compose request carries once its body is checked.
struct Draft {
    to: String,
    content: Outgoing,
    quoted: Option<String>,
    /// Distinguishes kinds in the request hash.
    tag: &'static [u8],
}

/// The common part of the compose routes: instance, key, readiness, reply target,
/// then the send (at most once per `Idempotency-Key`).
async fn compose(
    id: String,
    p: Principal,
    body: Bytes,
    key: Option<String>,
    api: Shared,
    draft: impl FnOnce(&Shared) -> Result<Draft, ApiError>,
) -> R {
    guard(&p, &id)?;
    let d = draft(&api)?;
    let row = instance(&api, &p, &id).await?;
    let idem = Idem::new(&row.id, key)?;
    let handle = ready(&api, &row).await?;
    let quoted = match &d.quoted {
        Some(q) => Some(logged(&api, &row.id, q).await?),
        None => None,
    };
    let hash = request_hash(&[d.tag, d.to.as_bytes(), &body]);
    let to = d.to.clone();
    let (mut content, target) = (d.content, d.to);
    if let (b"text+preview", Outgoing::Text { text, preview, .. }) = (d.tag, &mut content) {
        *preview = preview_of(&api, text).await;
    }
    let send = move |mid| async move {
        let sent = handle.compose(target, content, quoted, mid).await?;
        Ok(sent_data(&sent))
    };
    Ok(idempotent(&api, &idem, &to, hash, send)
        .await?
        .reply("Message sent"))
}

fn sent_data(s: &Sent) -> Value {
    json!({"messageId": s.message_id, "timestamp": s.timestamp, "to": s.to})
}

/// `quotedMessageId`, if given (blank counts as absent).
fn quoted(q: Option<String>) -> Option<String> {
    q.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// `POST /api/instances/:id/send/text`.
async fn text(id: String, p: Principal, body: Bytes, key: Option<String>, api: Shared) -> R {
    let b: TextBody = parse(&body)?;
    compose(id, p, body, key, api, move |api| {
        let to = recipient(api, &required(&b.to, "to")?)?;
        let text = required(&b.text, "text")?;
        let mentions = b.mentions.unwrap_or_default();
        if mentions.len() > 256 {
            return Err(invalid("at most 256 mentions"));
        }
        let mentions = mentions
            .iter()
            .map(|m| mention(api, m))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Draft {
            to,
            content: Outgoing::Text {
                text,
                mentions,
                preview: None,
            },
            quoted: quoted(b.quoted_message_id),
            tag: if b.link_preview == Some(true) {
                b"text+preview"
            } else {
                b"text"
            },
        })
    })
    .await
}

/// The link preview of a text, fetched under the media-URL rules (SSRF policy), at
/// most [`MAX_PAGE`](crate::net::preview::MAX_PAGE) bytes within 5 s.
async fn preview_of(api: &Shared, text: &str) -> Option<actors::events::LinkPreview> {
    let policy = crate::net::fetch::FetchPolicy {
        allowed_targets: api.config.webhook.allowed_targets.clone(),
        allowed_ports: api.config.webhook.allowed_ports.clone(),
        max_bytes: crate::net::preview::MAX_PAGE,
        timeout: std::time::Duration::from_secs(5),
        ..Default::default()
    };
    crate::net::preview::link_preview(text, &policy).await
}

/// `POST /api/instances/:id/send/location`.
async fn location(id: String, p: Principal, body: Bytes, key: Option<String>, api: Shared) -> R {
    let b: LocationBody = parse(&body)?;
    compose(id, p, body, key, api, move |api| {
        let to = recipient(api, &required(&b.to, "to")?)?;
        let latitude = b
            .latitude
            .filter(|l| (-90.0..=90.0).contains(l))
            .ok_or_else(|| invalid("latitude is required, from -90 to 90"))?;
        let longitude = b
            .longitude
            .filter(|l| (-180.0..=180.0).contains(l))
            .ok_or_else(|| invalid("longitude is required, from -180 to 180"))?;
        let text = |s: Option<String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        Ok(Draft {
            to,
            content: Outgoing::Location {
                latitude,
                longitude,
                name: text(b.name),
                address: text(b.address),
            },
            quoted: quoted(b.quoted_message_id),
            tag: b"location",
        })
    })
    .await
}

/// `POST /api/instances/:id/send/contact`.
async fn contact(id: String, p: Principal, body: Bytes, key: Option<String>, api: Shared) -> R {
    let b: ContactBody = parse(&body)?;
    compose(id, p, body, key, api, move |api| {
        let to = recipient(api, &required(&b.to, "to")?)?;
        let cards = b.contacts.unwrap_or_default();
        if cards.is_empty() || cards.len() > 20 {
            return Err(invalid("contacts must list 1 to 20 cards"));
        }
        let cc = &api.config.whatsapp.default_country_code;
        let cards = cards
            .iter()
            .map(|c| {
                Ok(CardOut {
                    name: required(&c.name, "contacts[].name")?,
                    phone: util::normalize_phone(&required(&c.phone, "contacts[].phone")?, cc)?,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok(Draft {
            to,
            content: Outgoing::Contacts(cards),
            quoted: quoted(b.quoted_message_id),
            tag: b"contact",
        })
    })
    .await
}

/// `POST /api/instances/:id/send/poll`.
async fn poll(id: String, p: Principal, body: Bytes, key: Option<String>, api: Shared) -> R {
    let b: PollBody = parse(&body)?;
    compose(id, p, body, key, api, move |api| {
        let to = recipient(api, &required(&b.to, "to")?)?;
        let name = required(&b.name, "name")?;
        let options: Vec<String> = b
            .options
            .unwrap_or_default()
            .iter()
            .map(|o| o.trim().to_string())
            .collect();
        if options.len() < 2 || options.len() > 12 || options.iter().any(String::is_empty) {
            return Err(invalid("options must list 2 to 12 non-blank options"));
        }
        let distinct: std::collections::HashSet<&String> = options.iter().collect();
        if distinct.len() != options.len() {
            return Err(invalid("options must be distinct"));
        }
        // More than there are options means "any number of them".
        let selectable_count = b.selectable_count.unwrap_or(1);
        if !(1..=12).contains(&selectable_count) {
            return Err(invalid("selectableCount must be from 1 to 12"));
        }
        let selectable_count = selectable_count.min(options.len() as u32);
        Ok(Draft {
            to,
            content: Outgoing::Poll {
                name,
                options,
                selectable_count,
            },
            quoted: quoted(b.quoted_message_id),
            tag: b"poll",
        })
    })
    .await
}

/// `POST /api/instances/:id/messages/:messageId/forward`.
async fn forward(
    id: String,
    message_id: String,
    p: Principal,
    body: Bytes,
    key: Option<String>,
    api: Shared,
) -> R {
    guard(&p, &id)?;
    let b: ForwardBody = parse(&body)?;
    let to = recipient(&api, &required(&b.to, "to")?)?;
    let row = instance(&api, &p, &id).await?;
    let idem = Idem::new(&row.id, key)?;
    let handle = ready(&api, &row).await?;
    let source = logged(&api, &row.id, &message_id).await?;
    let hash = request_hash(&[b"forward", to.as_bytes(), source.id.as_bytes()]);
    let target = to.clone();
    let send = move |mid| async move {
        let sent = handle
            .compose(target, Outgoing::Forward(source), None, mid)
            .await?;
        Ok(sent_data(&sent))
    };
    Ok(idempotent(&api, &idem, &to, hash, send)
        .await?
        .reply("Message forwarded"))
}

/// An action on a logged message (the body already checked into `action`).
async fn on_message(
    id: String,
    message_id: String,
    p: Principal,
    api: Shared,
    action: MessageAction,
    done: &str,
) -> R {
    let row = instance(&api, &p, &id).await?;
    let handle = ready(&api, &row).await?;
    let target = logged(&api, &row.id, &message_id).await?;
    let sent = handle.on_message(target, action).await?;
    Ok(ok(done, sent_data(&sent)))
}

/// `POST /api/instances/:id/messages/:messageId/reaction`.
async fn reaction(id: String, message_id: String, p: Principal, body: Bytes, api: Shared) -> R {
    guard(&p, &id)?;
    let b: ReactionBody = parse(&body)?;
    let emoji = b
        .emoji
        .map(|e| e.trim().to_string())
        .ok_or_else(|| invalid("emoji is required (empty removes the reaction)"))?;
    if emoji.chars().count() > 16 {
        return Err(invalid("emoji must be one emoji"));
    }
    let done = if emoji.is_empty() {
        "Reaction removed"
    } else {
        "Reaction sent"
    };
    on_message(id, message_id, p, api, MessageAction::React(emoji), done).await
}

/// `PATCH /api/instances/:id/messages/:messageId`.
async fn edit(id: String, message_id: String, p: Principal, body: Bytes, api: Shared) -> R {
    guard(&p, &id)?;
    let text = required(&parse::<EditBody>(&body)?.text, "text")?;
    on_message(
        id,
        message_id,
        p,
        api,
        MessageAction::Edit(text),
        "Message edited",
    )
    .await
}

/// `DELETE /api/instances/:id/messages/:messageId`.
async fn revoke(id: String, message_id: String, p: Principal, api: Shared) -> R {
    on_message(
        id,
        message_id,
        p,
        api,
        MessageAction::Revoke,
        "Message deleted for everyone",
    )
    .await
}

/// `POST /api/instances/:id/messages/:messageId/read`.
async fn read(id: String, message_id: String, p: Principal, api: Shared) -> R {
    on_message(id, message_id, p, api, MessageAction::Read, "Marked read").await
}

/// `GET /api/instances/:id/messages/:messageId/media`: the decrypted file.
async fn media(id: String, message_id: String, p: Principal, api: Shared) -> R {
    let row = instance(&api, &p, &id).await?;
    let handle = ready(&api, &row).await?;
    let target = logged(&api, &row.id, &message_id).await?;
    let file = handle.download_media(target).await?;
    let mut r = warp::reply::Response::new(file.bytes.into());
    let h = r.headers_mut();
    let content_type = warp::http::HeaderValue::from_str(&file.mimetype).unwrap_or(
        warp::http::HeaderValue::from_static("application/octet-stream"),
    );
    h.insert("content-type", content_type);
    if let Some(name) = file.file_name {
        // Only safe characters in the plain form; the full name percent-encoded.
        let plain: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._- ".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let encoded =
            percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC);
        let v = format!("attachment; filename=\"{plain}\"; filename*=UTF-8''{encoded}");
        if let Ok(v) = warp::http::HeaderValue::from_str(&v) {
            h.insert("content-disposition", v);
        }
    }
    h.insert(
        "x-content-type-options",
        warp::http::HeaderValue::from_static("nosniff"),
    );
    Ok(r)
}

/// `GET /api/instances/:id/lid/:phone` and `GET /api/instances/:id/phone/:lid`.
async fn lid_lookup(id: String, who: String, p: Principal, api: Shared) -> R {
    use actors::instance::Lookup;
    guard(&p, &id)?;
    let who = percent_encoding::percent_decode_str(&who)
        .decode_utf8_lossy()
        .into_owned();
    let what = match util::lid_jid(&who) {
        Some(lid) => Lookup::Lid(lid),
        None => Lookup::Phone(util::normalize_phone(
            &who,
            &api.config.whatsapp.default_country_code,
        )?),
    };
    let row = instance(&api, &p, &id).await?;
    let handle = ready(&api, &row).await?;
    match handle.lookup_lid(what).await? {
        Some(m) => Ok(ok("Found", json!({"phone": m.phone, "lid": m.lid}))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "MAPPING_NOT_FOUND",
            "This instance knows no LID for that number (or no number for that LID)",
        )),
    }
}

/// `POST /api/instances/:id/chat-state`.
async fn chat_state(id: String, p: Principal, body: Bytes, api: Shared) -> R {
    guard(&p, &id)?;
    let b: ChatStateBody = parse(&body)?;
    let to = recipient(&api, &required(&b.to, "to")?)?;
    let state = match required(&b.state, "state")?.as_str() {
        "typing" => ChatState::Typing,
        "recording" => ChatState::Recording,
        "paused" => ChatState::Paused,
        _ => return Err(invalid("state must be typing, recording or paused")),
    };
    let row = instance(&api, &p, &id).await?;
    let handle = ready(&api, &row).await?;
    handle.chat_state(to.clone(), state).await?;
    Ok(ok("Chat state sent", json!({"to": to})))
}

/// `POST /api/instances/:id/presence/subscribe`.
async fn presence_subscribe(id: String, p: Principal, body: Bytes, api: Shared) -> R {
    guard(&p, &id)?;
    let b: SubscribeBody = parse(&body)?;
    let who = mention(&api, &required(&b.to, "to")?)
        .map_err(|_| actors::instance::InstanceError::InvalidPhone)?;
    let row = instance(&api, &p, &id).await?;
    let handle = ready(&api, &row).await?;
    handle.subscribe_presence(who.clone()).await?;
    Ok(ok("Subscribed; presence events follow", json!({"to": who})))
}

/// `POST /api/instances/:id/presence`.
async fn presence(id: String, p: Principal, body: Bytes, api: Shared) -> R {
    guard(&p, &id)?;
    let b: PresenceBody = parse(&body)?;
    let available = match required(&b.presence, "presence")?.as_str() {
        "available" => true,
        "unavailable" => false,
        _ => return Err(invalid("presence must be available or unavailable")),
    };
    let row = instance(&api, &p, &id).await?;
    let handle = ready(&api, &row).await?;
    handle.set_presence(available).await?;
    Ok(ok(
        "Presence set",
        json!({"presence": if available { "available" } else { "unavailable" }}),
    ))
}
