//! Sandbox mode (cargo feature `sandbox`, `sudevwa --sandbox`): the server runs against
//! an in-process mock WhatsApp network on loopback, and `/sandbox/...` routes (admin
//! auth) let a person or an integrator's CI be the phone and the other people:
//! scan an instance's QR (or type its pairing code), create contacts, send as a contact, read what a contact
//! received, create groups, unlink a device, drop sockets.
//!
//! A sandbox build only ever connects to a mock: the one it starts in-process, or —
//! with `--mock-url` / `[sandbox] mock_url` — one already running in another process
//! (`cargo run -p mock-whatsapp --features insecure-clients`), which outlives server restarts, so paired instances
//! come back without a new QR. The socket URL is always the mock's; production builds
//! have no sandbox and never accept a mock.

use crate::http::error::ApiError;
use crate::http::routes::{self, admin_only, parse, required};
use crate::http::util::{self, ok};
use crate::http::{authed, body_limited, respond, with_api, Shared, MAX_JSON_BODY};
use crate::runtime::QrStart;
use actors::instance::WaOptions;
use bytes::Bytes;
use mock_whatsapp::contact::Contact;
use mock_whatsapp::remote::RemoteNetwork;
use mock_whatsapp::{AccountInfo, AckStats, MockNetwork};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;
use whatsapp_rust::wacore::types::events::Event;
use whatsapp_rust::Jid;

/// Messages kept per contact (oldest dropped first).
const KEEP: usize = 1000;

type R = Result<Response, ApiError>;

/// A simulated person.
struct Person {
    client: Arc<whatsapp_rust::Client>,
    received: Arc<Mutex<VecDeque<Value>>>,
    _collector: tokio::task::JoinHandle<()>,
}

/// The mock network the sandbox uses: in this process, or in another one.
enum Net {
    Local(MockNetwork),
    Remote(RemoteNetwork),
}

impl Net {
    fn ws_url(&self) -> String {
        match self {
            Net::Local(n) => n.ws_url(),
            Net::Remote(n) => n.ws_url(),
        }
    }

    fn base_url(&self) -> String {
        match self {
            Net::Local(n) => n.base_url(),
            Net::Remote(n) => n.base_url(),
        }
    }

    fn http_client(&self) -> mock_whatsapp::MockHttpClient {
        match self {
            Net::Local(n) => n.http_client(),
            Net::Remote(n) => n.http_client(),
        }
    }

    async fn scan_qr(&self, qr: &str, phone: &str) -> Result<(), String> {
        match self {
            Net::Local(n) => n
                .scan_qr(qr, Some(phone))
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Net::Remote(n) => n.scan_qr(qr, Some(phone)).await,
        }
    }

    async fn enter_code(&self, phone: &str, code: &str) -> Result<(), String> {
        match self {
            Net::Local(n) => n.enter_pairing_code(phone, code).map_err(|e| e.to_string()),
            Net::Remote(n) => n.enter_pairing_code(phone, code).await,
        }
    }

    async fn add_contact(&self, phone: &str, name: &str) -> Result<Contact, String> {
        match self {
            Net::Local(n) => n.add_contact(phone, name).await,
            Net::Remote(n) => n.add_contact(phone, name).await,
        }
    }

    async fn create_group(
        &self,
        name: &str,
        creator: &str,
        rest: &[&str],
    ) -> Result<String, String> {
        match self {
            Net::Local(n) => n.create_group(name, creator, rest),
            Net::Remote(n) => n.create_group(name, creator, rest).await,
        }
    }

    async fn accounts(&self) -> Result<Vec<AccountInfo>, String> {
        match self {
            Net::Local(n) => Ok(n.accounts()),
            Net::Remote(n) => n.accounts().await,
        }
    }

    async fn unlink(&self, phone: &str, device: u32) -> Result<bool, String> {
        match self {
            Net::Local(n) => Ok(n.unlink(phone, device)),
            Net::Remote(n) => n.unlink(phone, device).await,
        }
    }

    async fn drop_connections(&self, phone: Option<&str>) -> Result<usize, String> {
        match self {
            Net::Local(n) => Ok(n.drop_connections(phone)),
            Net::Remote(n) => n.drop_connections(phone).await,
        }
    }

    async fn hold_acks(&self, phone: &str, on: bool) -> Result<bool, String> {
        match self {
            Net::Local(n) => Ok(n.hold_acks(phone, None, on)),
            Net::Remote(n) => n.device_fault("hold-acks", phone, None, on).await,
        }
    }

    async fn drop_before_ack(&self, phone: &str, on: bool) -> Result<bool, String> {
        match self {
            Net::Local(n) => Ok(n.drop_before_ack(phone, None, on)),
            Net::Remote(n) => n.device_fault("drop-before-ack", phone, None, on).await,
        }
    }

    async fn ack_stats(&self, phone: &str, device: u32) -> Result<Option<AckStats>, String> {
        match self {
            Net::Local(n) => Ok(n.ack_stats(phone, device)),
            Net::Remote(n) => n.ack_stats(phone, device).await,
        }
    }
}

/// The mock network and the simulated people on it.
pub struct Sandbox {
    net: Net,
    people: tokio::sync::Mutex<HashMap<String, Person>>,
}

impl Sandbox {
    /// Starts the mock network on 127.0.0.1 (an OS-chosen port).
    pub async fn start() -> std::io::Result<Arc<Self>> {
        let net = MockNetwork::start().await?;
        Ok(Self::with(Net::Local(net)))
    }

    /// Uses the mock network already running at `url` (`http://IP:PORT`, its admin
    /// base URL). Checks that it answers before the server starts.
    pub async fn connect(url: &str) -> Result<Arc<Self>, String> {
        let net = RemoteNetwork::new(url)?;
        net.accounts()
            .await
            .map_err(|e| format!("the mock network at {url} does not answer: {e}"))?;
        Ok(Self::with(Net::Remote(net)))
    }

    fn with(net: Net) -> Arc<Self> {
        Arc::new(Self {
            net,
            people: Default::default(),
        })
    }

    /// How instances reach the mock.
    pub fn wa_options(&self, push_name: &str) -> WaOptions {
        WaOptions {
            socket_url: Some(self.net.ws_url()),
            version: Some((2, 3000, 0)),
            push_name: push_name.to_string(),
            http: Some(Arc::new(self.net.http_client())),
            force_active_receipts: true,
        }
    }

    /// The mock's own address (admin API and media).
    pub fn mock_url(&self) -> String {
        self.net.base_url()
    }
}

/// The mock network failed or refused an admin call.
fn mock_error(e: String) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "MOCK_UNAVAILABLE", e)
}

fn not_found(code: &'static str, what: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, code, what.to_string())
}

/// Collects what a contact receives.
async fn collect(mut c: Contact, into: Arc<Mutex<VecDeque<Value>>>) {
    loop {
        let batch = c
            .wait("messages", |e| match e {
                Event::Messages(b) => Some(
                    b.messages
                        .iter()
                        .map(|m| {
                            let d = actors::instance::read(&m.message);
                            let mut v = json!({
                                "from": m.info.source.sender.to_non_ad().to_string(),
                                "chat": m.info.source.chat.to_non_ad().to_string(),
                                "message": d.text,
                                "message_id": m.info.id.to_string(),
                                "timestamp": m.info.timestamp.timestamp(),
                                "type": d.kind,
                                "is_group": m.info.source.is_group,
                                "media": d.media,
                            });
                            // The kind's details (reply, location, poll, ...), as the
                            // instance's own events carry them.
                            if let (Some(o), Ok(Value::Object(x))) =
                                (v.as_object_mut(), serde_json::to_value(&d.details))
                            {
                                o.extend(x);
                            }
                            v
                        })
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .await;
        match batch {
            Ok(items) => {
                let mut q = into.lock().unwrap_or_else(|p| p.into_inner());
                for v in items {
                    if q.len() >= KEEP {
                        q.pop_front();
                    }
                    q.push_back(v);
                }
            }
            // A quiet period (the wait has a deadline): keep listening.
            Err(e) if e.starts_with("timed out") => {}
            Err(_) => return,
        }
    }
}

#[derive(Deserialize, Default)]
struct ScanBody {
    phone: Option<String>,
}

#[derive(Deserialize, Default)]
struct ContactBody {
    phone: Option<String>,
    push_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SendBody {
    to: Option<String>,
    message: Option<String>,
    media_url: Option<String>,
    caption: Option<String>,
    media_type: Option<String>,
    /// Phone numbers mentioned in `message`.
    mentions: Option<Vec<String>>,
    /// The message this one replies to.
    quoted: Option<QuotedBody>,
    location: Option<LocationBody>,
    contacts: Option<Vec<CardBody>>,
    poll: Option<PollBody>,
    /// React to a message in this chat (an empty emoji takes the reaction back).
    reaction: Option<TargetBody>,
    /// Edit one of this contact's messages (`text`).
    edit: Option<TargetBody>,
    /// Delete one of this contact's messages for everyone (its id).
    revoke: Option<String>,
    /// Send as in a chat with disappearing messages on (the timer, seconds).
    ephemeral: Option<u32>,
    /// Send media as view-once.
    view_once: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct QuotedBody {
    message_id: Option<String>,
    /// The quoted message's sender (JID); the chat's other side when absent.
    sender: Option<String>,
    text: Option<String>,
}

#[derive(Deserialize, Default)]
struct LocationBody {
    latitude: Option<f64>,
    longitude: Option<f64>,
    name: Option<String>,
    address: Option<String>,
}

#[derive(Deserialize, Default)]
struct CardBody {
    name: Option<String>,
    phone: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PollBody {
    name: Option<String>,
    options: Option<Vec<String>>,
    selectable_count: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TargetBody {
    message_id: Option<String>,
    /// Reactions: the emoji; edits: the new text.
    emoji: Option<String>,
    text: Option<String>,
    /// Whether the target is this contact's own message (reactions; default false:
    /// a message the other side sent).
    from_me: Option<bool>,
}

#[derive(Deserialize, Default)]
struct GroupBody {
    name: Option<String>,
    participants: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
struct DropBody {
    instance_id: Option<String>,
}

#[derive(Deserialize, Default)]
struct AckFaultBody {
    instance_id: Option<String>,
    /// Ignore the instance's acks (messages stay queued and come again on reconnect).
    hold_acks: Option<bool>,
    /// Close the instance's socket right after the next message is written to it.
    drop_before_ack: Option<bool>,
}

fn phone(api: &Shared, raw: &str) -> Result<String, ApiError> {
    util::normalize_phone(raw, &api.config.whatsapp.default_country_code)
}

async fn scan(
    id: String,
    p: crate::http::auth::Principal,
    body: Bytes,
    api: Shared,
    sb: Arc<Sandbox>,
) -> R {
    admin_only(&p)?;
    let b: ScanBody = parse(&body)?;
    let number = phone(&api, &required(&b.phone, "phone")?)?;
    routes::instance(&api, &p, &id).await?;
    let code = match routes::start_qr(&api, &id).await? {
        QrStart::Connected(_) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "ALREADY_CONNECTED",
                "Instance is already connected",
            ))
        }
        QrStart::Code(Some(code)) => code.code,
        QrStart::Code(None) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "NO_QR_SESSION",
                "No QR code is on offer yet; try again",
            ))
        }
    };
    sb.net
        .scan_qr(&code, &number)
        .await
        .map_err(|e| ApiError::bad_request("SCAN_FAILED", e))?;
    Ok(ok(
        "Scanned; the instance is pairing",
        json!({"instance_id": id, "phone": number}),
    ))
}

#[derive(Deserialize, Default)]
struct CodeBody {
    phone: Option<String>,
    code: Option<String>,
}

/// `POST /sandbox/enter-code` `{phone, code}`: the person types a pairing code on
/// that phone (see `POST /api/pair-code/:id`).
async fn enter_code(
    p: crate::http::auth::Principal,
    body: Bytes,
    api: Shared,
    sb: Arc<Sandbox>,
) -> R {
    admin_only(&p)?;
    let b: CodeBody = parse(&body)?;
    let number = phone(&api, &required(&b.phone, "phone")?)?;
    let code = required(&b.code, "code")?;
    sb.net
        .enter_code(&number, &code)
        .await
        .map_err(|e| ApiError::bad_request("ENTER_CODE_FAILED", e))?;
    Ok(ok(
        "Code typed on the phone; the instance is pairing",
        json!({"phone": number}),
    ))
}

async fn add_contact(
    p: crate::http::auth::Principal,
    body: Bytes,
    api: Shared,
    sb: Arc<Sandbox>,
) -> R {
    admin_only(&p)?;
    let b: ContactBody = parse(&body)?;
    let number = phone(&api, &required(&b.phone, "phone")?)?;
    let name = b
        .push_name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| format!("Contact {number}"));
    let mut people = sb.people.lock().await;
    if people.contains_key(&number) {
        return Ok(ok("Contact exists", json!({"phone": number})));
    }
    let c = sb
        .net
        .add_contact(&number, &name)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "CONTACT_FAILED", e))?;
    let client = c.client.clone();
    let received: Arc<Mutex<VecDeque<Value>>> = Arc::default();
    let collector = tokio::spawn(collect(c, received.clone()));
    people.insert(
        number.clone(),
        Person {
            client,
            received,
            _collector: collector,
        },
    );
    Ok(ok(
        "Contact created",
        json!({"phone": number, "push_name": name}),
    ))
}

async fn contact_send(
    from: String,
    p: crate::http::auth::Principal,
    body: Bytes,
    api: Shared,
    sb: Arc<Sandbox>,
) -> R {
    admin_only(&p)?;
    let b: SendBody = parse(&body)?;
    let to_raw = required(&b.to, "to")?;
    let to: Jid = if to_raw.ends_with("@g.us") {
        if !util::is_group_jid(&to_raw) {
            return Err(ApiError::bad_request(
                "INVALID_GROUP_JID",
                "Invalid group JID",
            ));
        }
        to_raw
            .parse()
            .map_err(|_| ApiError::bad_request("INVALID_GROUP_JID", "Invalid group JID"))?
    } else {
        Jid::pn(phone(&api, &to_raw)?)
    };
    let from = phone(&api, &from)?;
    let client = {
        let people = sb.people.lock().await;
        people
            .get(&from)
            .map(|c| c.client.clone())
            .ok_or_else(|| not_found("CONTACT_NOT_FOUND", "No such sandbox contact"))?
    };
    let message = match (&b.message, &b.media_url) {
        (_, Some(url)) => {
            // The same fetch as a media-URL send: SSRF policy, caps, memory cap.
            let m = crate::media::fetch::UrlMedia {
                url,
                kind: crate::media::media_type_field(b.media_type.as_deref())?,
                file_name: None,
                caption: b.caption.clone(),
            };
            let policy = |cap, hold: &crate::media::Hold| api.fetch_policy(cap, hold);
            let fetched =
                crate::media::fetch::from_url(m, &api.media_caps(), &api.media, policy).await?;
            // The hold keeps the file's room under the memory cap until the upload ends.
            let crate::media::MediaInput {
                kind,
                bytes,
                mimetype,
                file_name: name,
                caption,
                hold: _hold,
            } = fetched;
            let media_type = kind.upload_type();
            let up = client
                .upload(bytes, media_type, Default::default())
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "UPLOAD_FAILED",
                        "Media upload failed",
                    )
                })?;
            actors::instance::media_message(&kind, up, mimetype, caption, Some(name))
        }
        _ => match other_kind(&api, &b, &to)? {
            Some(m) => m,
            None => match (&b.message, &b.edit, &b.revoke) {
                (_, Some(e), _) => {
                    let id = required(&e.message_id, "edit.messageId")?;
                    let text = required(&e.text, "edit.text")?;
                    let new = whatsapp_rust::waproto::whatsapp::Message {
                        conversation: Some(text),
                        ..Default::default()
                    };
                    client
                        .edit_message(to.clone(), id.clone(), new)
                        .await
                        .map_err(|e| ApiError::bad_request("SEND_FAILED", e.to_string()))?;
                    return Ok(ok("Edited as the contact", json!({"from": from, "message_id": id})));
                }
                (_, _, Some(id)) => {
                    client
                        .revoke_message(
                            to.clone(),
                            id.clone(),
                            whatsapp_rust::send::RevokeType::Sender,
                        )
                        .await
                        .map_err(|e| ApiError::bad_request("SEND_FAILED", e.to_string()))?;
                    return Ok(ok("Deleted as the contact", json!({"from": from, "message_id": id})));
                }
                (Some(text), _, _) if !text.is_empty() => text_message(&api, text, &b)?,
                _ => {
                    return Err(ApiError::bad_request(
                        "VALIDATION_ERROR",
                        "one of message, mediaUrl, location, contacts, poll, reaction, edit, revoke is required",
                    ))
                }
            },
        },
    };
    let message = wrap(message, &b, &to)?;
    let r = client
        .send_message(to.clone(), message)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SEND_FAILED",
                "Message could not be sent",
            )
        })?;
    Ok(ok(
        "Sent as the contact",
        json!({"from": from, "to": to.to_string(), "message_id": r.message_id}),
    ))
}

fn invalid(message: &str) -> ApiError {
    ApiError::bad_request("VALIDATION_ERROR", message)
}

/// A text, with its mentions.
fn text_message(
    api: &Shared,
    text: &str,
    b: &SendBody,
) -> Result<whatsapp_rust::waproto::whatsapp::Message, ApiError> {
    let mentions = b
        .mentions
        .iter()
        .flatten()
        .map(|m| phone(api, m).map(|d| format!("{d}@s.whatsapp.net")))
        .collect::<Result<Vec<_>, _>>()?;
    actors::instance::build_message(actors::instance::Outgoing::Text {
        text: text.to_string(),
        mentions,
        preview: None,
    })
    .map_err(ApiError::from)
}

/// A location, contact cards, a poll or a reaction, if the body asks for one.
fn other_kind(
    api: &Shared,
    b: &SendBody,
    to: &Jid,
) -> Result<Option<whatsapp_rust::waproto::whatsapp::Message>, ApiError> {
    use actors::instance::{build_message, CardOut, Outgoing};
    let content = if let Some(l) = &b.location {
        let (Some(latitude), Some(longitude)) = (l.latitude, l.longitude) else {
            return Err(invalid("location needs latitude and longitude"));
        };
        Outgoing::Location {
            latitude,
            longitude,
            name: l.name.clone(),
            address: l.address.clone(),
        }
    } else if let Some(cards) = &b.contacts {
        if cards.is_empty() {
            return Err(invalid("contacts must list at least one card"));
        }
        let cards = cards
            .iter()
            .map(|c| {
                Ok(CardOut {
                    name: required(&c.name, "contacts[].name")?,
                    phone: phone(api, &required(&c.phone, "contacts[].phone")?)?,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        Outgoing::Contacts(cards)
    } else if let Some(p) = &b.poll {
        let options = p.options.clone().unwrap_or_default();
        if options.len() < 2 {
            return Err(invalid("poll needs at least two options"));
        }
        Outgoing::Poll {
            name: required(&p.name, "poll.name")?,
            selectable_count: p
                .selectable_count
                .unwrap_or(1)
                .clamp(1, options.len() as u32),
            options,
        }
    } else if let Some(r) = &b.reaction {
        let key = whatsapp_rust::waproto::whatsapp::MessageKey {
            remote_jid: Some(to.to_string()),
            from_me: Some(r.from_me.unwrap_or(false)),
            id: Some(required(&r.message_id, "reaction.messageId")?),
            participant: None,
        };
        return Ok(Some(
            whatsapp_rust::wacore::proto_helpers::build_reaction_message(
                key,
                r.emoji.clone().unwrap_or_default(),
                chrono::Utc::now().timestamp_millis(),
            ),
        ));
    } else {
        return Ok(None);
    };
    build_message(content).map(Some).map_err(ApiError::from)
}

/// The reply context, then the wrappers real clients use: disappearing messages
/// (`ephemeralMessage` with the timer in the context) and view-once.
fn wrap(
    mut m: whatsapp_rust::waproto::whatsapp::Message,
    b: &SendBody,
    to: &Jid,
) -> Result<whatsapp_rust::waproto::whatsapp::Message, ApiError> {
    use whatsapp_rust::wacore::proto_helpers::MessageExt as _;
    use whatsapp_rust::waproto::whatsapp as wa;
    if b.quoted.is_some() || b.ephemeral.is_some() {
        let mut ctx = wa::ContextInfo::default();
        if let Some(q) = &b.quoted {
            ctx.stanza_id = Some(required(&q.message_id, "quoted.messageId")?);
            ctx.participant = Some(q.sender.clone().unwrap_or_else(|| to.to_string()));
            ctx.quoted_message = q
                .text
                .clone()
                .map(|t| wa::Message {
                    conversation: Some(t),
                    ..Default::default()
                })
                .into();
        }
        ctx.expiration = b.ephemeral;
        // Keep the mentions a text already carries.
        if let Some(x) = m.extended_text_message.as_option() {
            if let Some(own) = x.context_info.as_option() {
                ctx.mentioned_jid = own.mentioned_jid.clone();
            }
        }
        if !m.set_context_info(ctx) {
            return Err(invalid("this kind cannot carry a reply or a timer"));
        }
    }
    if b.view_once == Some(true) {
        m = wa::Message {
            view_once_message_v2: wa::message::FutureProofMessage { message: m.into() }.into(),
            ..Default::default()
        };
    }
    if b.ephemeral.is_some() {
        m = wa::Message {
            ephemeral_message: wa::message::FutureProofMessage { message: m.into() }.into(),
            ..Default::default()
        };
    }
    Ok(m)
}

async fn contact_messages(
    from: String,
    p: crate::http::auth::Principal,
    api: Shared,
    sb: Arc<Sandbox>,
) -> R {
    admin_only(&p)?;
    let from = phone(&api, &from)?;
    let people = sb.people.lock().await;
    let c = people
        .get(&from)
        .ok_or_else(|| not_found("CONTACT_NOT_FOUND", "No such sandbox contact"))?;
    let items: Vec<Value> = c
        .received
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    Ok(ok(
        "Messages received by the contact",
        json!({"total": items.len(), "messages": items}),
    ))
}

async fn create_group(
    p: crate::http::auth::Principal,
    body: Bytes,
    api: Shared,
    sb: Arc<Sandbox>,
) -> R {
    admin_only(&p)?;
    let b: GroupBody = parse(&body)?;
    let name = required(&b.name, "name")?;
    let members = b.participants.unwrap_or_default();
    let members: Vec<String> = members
        .iter()
        .map(|m| phone(&api, m))
        .collect::<Result<_, _>>()?;
    let Some((creator, rest)) = members.split_first() else {
        return Err(ApiError::bad_request(
            "VALIDATION_ERROR",
            "participants is required",
        ));
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let jid = sb
        .net
        .create_group(&name, creator, &rest)
        .await
        .map_err(|e| ApiError::bad_request("VALIDATION_ERROR", e))?;
    Ok(ok("Group created", json!({"jid": jid})))
}

async fn instance_phone(
    api: &Shared,
    p: &crate::http::auth::Principal,
    id: &str,
) -> Result<String, ApiError> {
    let row = routes::instance(api, p, id).await?;
    row.phone
        .ok_or_else(|| ApiError::bad_request("NOT_LOGGED_IN", "The instance is not paired"))
}

async fn unlink(id: String, p: crate::http::auth::Principal, api: Shared, sb: Arc<Sandbox>) -> R {
    admin_only(&p)?;
    let number = instance_phone(&api, &p, &id).await?;
    let devices: Vec<u32> = sb
        .net
        .accounts()
        .await
        .map_err(mock_error)?
        .into_iter()
        .filter(|a| a.phone == number)
        .flat_map(|a| a.devices.into_iter().map(|d| d.id))
        .collect();
    let mut n = 0;
    for d in devices {
        if sb.net.unlink(&number, d).await.map_err(mock_error)? {
            n += 1;
        }
    }
    Ok(ok(
        "The phone removed the linked device",
        json!({"instance_id": id, "unlinked": n}),
    ))
}

async fn drop_sockets(
    p: crate::http::auth::Principal,
    body: Bytes,
    api: Shared,
    sb: Arc<Sandbox>,
) -> R {
    admin_only(&p)?;
    let b: DropBody = parse(&body)?;
    let n = match b.instance_id {
        Some(id) => {
            let number = instance_phone(&api, &p, &id).await?;
            sb.net.drop_connections(Some(&number)).await
        }
        None => sb.net.drop_connections(None).await,
    }
    .map_err(mock_error)?;
    Ok(ok("Sockets dropped", json!({"dropped": n})))
}

/// `POST /sandbox/faults/acks`: the mock network's ack faults for an instance's
/// number (every linked device), and what is still unacknowledged.
async fn ack_faults(
    p: crate::http::auth::Principal,
    body: Bytes,
    api: Shared,
    sb: Arc<Sandbox>,
) -> R {
    admin_only(&p)?;
    let b: AckFaultBody = parse(&body)?;
    let id = required(&b.instance_id, "instance_id")?;
    let number = instance_phone(&api, &p, &id).await?;
    if let Some(on) = b.hold_acks {
        sb.net.hold_acks(&number, on).await.map_err(mock_error)?;
    }
    if let Some(on) = b.drop_before_ack {
        sb.net
            .drop_before_ack(&number, on)
            .await
            .map_err(mock_error)?;
    }
    let ids: Vec<u32> = sb
        .net
        .accounts()
        .await
        .map_err(mock_error)?
        .into_iter()
        .filter(|a| a.phone == number)
        .flat_map(|a| a.devices.into_iter().map(|d| d.id))
        .filter(|d| *d != 0)
        .collect();
    let mut devices: Vec<Value> = Vec::new();
    for d in ids {
        if let Some(s) = sb.net.ack_stats(&number, d).await.map_err(mock_error)? {
            devices.push(json!({"device": s.device, "unacked": s.unacked, "acked": s.acked, "redelivered": s.redelivered, "hold_acks": s.acks_held, "drop_before_ack": s.drop_before_ack}));
        }
    }
    Ok(ok(
        "Ack faults set",
        json!({"instance_id": id, "devices": devices}),
    ))
}

/// The `/sandbox/...` routes.
pub fn routes(api: Shared, sb: Arc<Sandbox>) -> BoxedFilter<(Response,)> {
    let a = || with_api(api.clone());
    let auth = || authed(api.clone());
    let json = || body_limited(MAX_JSON_BODY);
    let s = {
        let sb = sb.clone();
        move || {
            let sb = sb.clone();
            warp::any().map(move || sb.clone())
        }
    };
    use warp::path as p;
    let scan_r = p!("sandbox" / "scan" / String)
        .and(warp::post())
        .and(auth())
        .and(json())
        .and(a())
        .and(s())
        .then(scan)
        .map(respond)
        .boxed();
    let code_r = p!("sandbox" / "enter-code")
        .and(warp::post())
        .and(auth())
        .and(json())
        .and(a())
        .and(s())
        .then(enter_code)
        .map(respond)
        .boxed();
    let contacts = p!("sandbox" / "contacts")
        .and(warp::post())
        .and(auth())
        .and(json())
        .and(a())
        .and(s())
        .then(add_contact)
        .map(respond)
        .boxed();
    let send = p!("sandbox" / "contacts" / String / "send")
        .and(warp::post())
        .and(auth())
        .and(json())
        .and(a())
        .and(s())
        .then(contact_send)
        .map(respond)
        .boxed();
    let msgs = p!("sandbox" / "contacts" / String / "messages")
        .and(warp::get())
        .and(auth())
        .and(a())
        .and(s())
        .then(contact_messages)
        .map(respond)
        .boxed();
    let groups = p!("sandbox" / "groups")
        .and(warp::post())
        .and(auth())
        .and(json())
        .and(a())
        .and(s())
        .then(create_group)
        .map(respond)
        .boxed();
    let unlink_r = p!("sandbox" / "unlink" / String)
        .and(warp::post())
        .and(auth())
        .and(a())
        .and(s())
        .then(unlink)
        .map(respond)
        .boxed();
    let drop_r = p!("sandbox" / "faults" / "drop")
        .and(warp::post())
        .and(auth())
        .and(json())
        .and(a())
        .and(s())
        .then(drop_sockets)
        .map(respond)
        .boxed();
    let acks_r = p!("sandbox" / "faults" / "acks")
        .and(warp::post())
        .and(auth())
        .and(json())
        .and(a())
        .and(s())
        .then(ack_faults)
        .map(respond)
        .boxed();
    [
        code_r, contacts, send, msgs, groups, unlink_r, drop_r, acks_r,
    ]
    .into_iter()
    .fold(scan_r, |acc, r| acc.or(r).unify().boxed())
}
