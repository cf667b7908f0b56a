//! Route handlers. Each one parses its input, checks who may act on which instance,
//! sends one message to that instance's actor (or makes one store call) and maps the
//! answer to the envelope. Checks run in API.md's order, each with its own code.

use super::auth::Principal;
use super::error::ApiError;
use super::util::{self, ok};
use super::Shared;
use crate::net::fetch;
use crate::store::instances::Instance;
use actors::events::LifecycleNotice;
use actors::instance::{
    InstanceError, InstanceMsg, InstanceSnapshot, MediaKind, OutgoingMedia, Sent,
};
use actors::lifecycle::LifecycleError;
use actors::InstanceStatus;
use bytes::Bytes;
use futures_util::TryStreamExt;
use ractor::{call_t, ActorRef};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

type R = Result<Response, ApiError>;

/// Deadline of quick actor calls (status, QR, cancel).
const QUICK_MS: u64 = 10_000;
/// Deadline of calls that reach WhatsApp (send, check, logout, groups).
const SEND_MS: u64 = 90_000;
/// Deadline of media sends (upload included).
const MEDIA_MS: u64 = 300_000;
/// How long `GET /api/qr/:id` waits for the first code of a new flow.
const FIRST_QR_WAIT: Duration = Duration::from_secs(10);

// ---------- common pieces ----------

pub fn parse<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::bad_request("VALIDATION_ERROR", "A field has the wrong type")
        } else {
            ApiError::bad_request("INVALID_REQUEST", "Request body is not valid JSON")
        }
    })
}

/// A required, non-empty string field.
pub fn required(v: &Option<String>, name: &str) -> Result<String, ApiError> {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(ApiError::bad_request(
            "VALIDATION_ERROR",
            format!("{name} is required"),
        )),
    }
}

pub fn db_error(e: sea_orm::DbErr) -> ApiError {
    tracing::error!(error = %e, "database call failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        "The database is unavailable",
    )
}

fn forbidden() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
        "This token is not valid for this instance",
    )
}

pub fn admin_only(p: &Principal) -> Result<(), ApiError> {
    if p.is_admin() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "This route needs an admin token",
        ))
    }
}

fn actor_unreachable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "instance actor did not answer");
    ApiError::internal()
}

/// Maps a domain error of an actor to the API's status and code.
pub fn instance_error(e: InstanceError) -> ApiError {
    let status = match &e {
        InstanceError::VerificationFailed
        | InstanceError::SendFailed
        | InstanceError::UploadFailed
        | InstanceError::Storage => StatusCode::INTERNAL_SERVER_ERROR,
        InstanceError::Lifecycle(LifecycleError::QrInProgress)
        | InstanceError::Lifecycle(LifecycleError::AlreadyConnected) => StatusCode::CONFLICT,
        InstanceError::Lifecycle(LifecycleError::NoQrSession) => StatusCode::NOT_FOUND,
        InstanceError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    let message = match &e {
        InstanceError::Storage => "Internal server error".to_string(),
        other => capitalize(&other.to_string()),
    };
    let busy = matches!(e, InstanceError::Busy);
    let mut err = ApiError::new(status, e.code(), message);
    if busy {
        err.retry_after = Some(1);
    }
    err
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Refuses another instance's token before anything else is looked at.
fn guard(p: &Principal, id: &str) -> Result<(), ApiError> {
    if p.may_access(id) {
        Ok(())
    } else {
        Err(forbidden())
    }
}

/// The instance row, if the caller may see it: 403 for another instance's token
/// (before looking, so existence does not leak), 404 `SESSION_NOT_FOUND` when absent.
pub async fn instance(api: &Shared, p: &Principal, id: &str) -> Result<Instance, ApiError> {
    guard(p, id)?;
    api.instances
        .get(id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "SESSION_NOT_FOUND",
                "Instance not found",
            )
        })
}

async fn snapshot(actor: &ActorRef<InstanceMsg>) -> Result<InstanceSnapshot, ApiError> {
    call_t!(actor, InstanceMsg::Status, QUICK_MS).map_err(actor_unreachable)
}

/// The actor of an existing instance, started if it is not running.
async fn actor(api: &Shared, id: &str) -> Result<ActorRef<InstanceMsg>, ApiError> {
    api.runtime.ensure_started(id).await.map_err(|e| {
        tracing::warn!(instance_id = %id, error = %e, "instance actor could not start");
        ApiError::internal()
    })
}

/// Connected, then logged in (API.md's order). A socket that is up while waiting for
/// a QR scan counts as connected but not logged in.
async fn ready(api: &Shared, row: &Instance) -> Result<ActorRef<InstanceMsg>, ApiError> {
    let not_connected = || instance_error(InstanceError::NotConnected);
    let actor = api.runtime.actor(&row.id).ok_or_else(not_connected)?;
    let s = snapshot(&actor).await?;
    let socket_up = s.is_connected || s.status == InstanceStatus::QrPending;
    if !socket_up {
        return Err(not_connected());
    }
    if s.status != InstanceStatus::Online || s.identity.jid.is_none() {
        return Err(instance_error(InstanceError::NotLoggedIn));
    }
    Ok(actor)
}

/// The online instance whose own number is `phone` (by-number routes).
async fn by_number(
    api: &Shared,
    p: &Principal,
    phone: &str,
) -> Result<(Instance, ActorRef<InstanceMsg>), ApiError> {
    let phone = util::normalize_phone(phone, &api.config.whatsapp.default_country_code)?;
    let rows = api
        .instances
        .online_with_phone(&phone)
        .await
        .map_err(db_error)?;
    // Another tenant's number answers exactly like an unknown one (404): a token
    // cannot probe which numbers this server runs.
    let mut candidates = rows.into_iter().filter(|r| p.may_access(&r.id)).peekable();
    let none = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NO_ACTIVE_INSTANCE",
            "No connected instance has this phone number",
        )
    };
    if candidates.peek().is_none() {
        return Err(none());
    }
    for row in candidates {
        if let Ok(actor) = ready(api, &row).await {
            return Ok((row, actor));
        }
    }
    Err(none())
}

fn sent_data(sent: &Sent) -> Value {
    json!({"messageId": sent.message_id, "timestamp": sent.timestamp, "to": sent.to, "verified": true})
}

/// A send's `Idempotency-Key` (checked) and the instance it is scoped to.
pub struct Idem {
    instance_id: String,
    key: Option<String>,
}

impl Idem {
    /// `raw`: the header value, if any: 1-255 printable ASCII characters.
    pub fn new(instance_id: &str, raw: Option<String>) -> Result<Self, ApiError> {
        if let Some(k) = &raw {
            if k.is_empty() || k.len() > 255 || !k.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(ApiError::bad_request(
                    "VALIDATION_ERROR",
                    "Idempotency-Key must be 1-255 printable ASCII characters",
                ));
            }
        }
        Ok(Self {
            instance_id: instance_id.to_string(),
            key: raw,
        })
    }
}

/// SHA-256 (hex) over the parts of a request, each length-prefixed.
fn request_hash(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// What a send answered: its `data`, and whether it is the stored answer of an earlier
/// request with the same `Idempotency-Key` (then nothing was sent).
pub struct Outcome {
    data: Value,
    replayed: bool,
}

impl Outcome {
    /// The same outcome with its `data` changed by `f`.
    fn map(self, f: impl FnOnce(Value) -> Value) -> Self {
        Self {
            data: f(self.data),
            replayed: self.replayed,
        }
    }

    /// The success envelope; replays carry `Idempotent-Replayed: true`.
    fn reply(self, message: &str) -> Response {
        let mut r = ok(message, self.data);
        if self.replayed {
            r.headers_mut().insert(
                "idempotent-replayed",
                warp::http::HeaderValue::from_static("true"),
            );
        }
        r
    }
}

/// Runs `send` at most once per `Idempotency-Key`: the first request sends (with the
/// message id the key derives) and stores the answer; repeats with the same request
/// get that answer, repeats with another request 409 `IDEMPOTENCY_KEY_REUSED`, and
/// repeats while the first is still sending wait for it. Without a key: just `send`.
///
/// The keyed send runs in its own task: a client that hangs up mid-send (and retries
/// with the same key) does not cancel it, so its answer is still stored and the retry
/// gets it instead of waiting for the pending row to go stale.
async fn idempotent<F, Fut>(
    api: &Shared,
    idem: &Idem,
    to: &str,
    hash: String,
    send: F,
) -> Result<Outcome, ApiError>
where
    F: FnOnce(Option<String>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Value, ApiError>> + Send + 'static,
{
    use crate::store::idempotency::Begin;
    let Some(key) = &idem.key else {
        paced(api, &idem.instance_id, to)?;
        return send(None).await.map(|data| Outcome {
            data,
            replayed: false,
        });
    };
    let keys = &api.idempotency;
    let until = tokio::time::Instant::now() + Duration::from_millis(MEDIA_MS);
    let message_id = loop {
        match keys
            .begin(&idem.instance_id, key, &hash)
            .await
            .map_err(db_error)?
        {
            Begin::Send(id) => {
                if let Err(e) = paced(api, &idem.instance_id, to) {
                    if let Err(err) = keys.forget(&idem.instance_id, key).await {
                        tracing::warn!(error = %err, "releasing an idempotency key failed");
                    }
                    return Err(e);
                }
                break id;
            }
            Begin::Replay(body) => {
                let data = serde_json::from_str(&body).map_err(|e| {
                    tracing::error!(error = %e, "a stored idempotent answer is not JSON");
                    ApiError::internal()
                })?;
                return Ok(Outcome {
                    data,
                    replayed: true,
                });
            }
            Begin::Conflict => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "IDEMPOTENCY_KEY_REUSED",
                    "This Idempotency-Key was used for a different request",
                ))
            }
            Begin::Pending if tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Begin::Pending => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "IDEMPOTENCY_KEY_IN_PROGRESS",
                    "A request with this Idempotency-Key is still being processed",
                ))
            }
        }
    };
    let keys = keys.clone();
    let (instance_id, key) = (idem.instance_id.clone(), key.clone());
    let task = tokio::spawn(async move {
        match send(Some(message_id)).await {
            Ok(v) => {
                if let Err(e) = keys.finish(&instance_id, &key, &v.to_string()).await {
                    // Sent, but the answer is not stored: a repeat will wait for the
                    // stale-pending takeover and send again with the same message id.
                    tracing::warn!(error = %e, "storing an idempotent answer failed");
                }
                Ok(v)
            }
            Err(e) => {
                if let Err(err) = keys.forget(&instance_id, &key).await {
                    tracing::warn!(error = %err, "releasing an idempotency key failed");
                }
                Err(e)
            }
        }
    });
    let data = task.await.map_err(|e| {
        tracing::error!(error = %e, "an idempotent send task failed");
        ApiError::internal()
    })??;
    Ok(Outcome {
        data,
        replayed: false,
    })
}

/// The send governor's verdict for one new send (replays are not sends).
fn paced(api: &Shared, instance_id: &str, to: &str) -> Result<(), ApiError> {
    api.governor.admit(instance_id, to).map_err(|p| {
        let message = match p {
            super::ratelimit::Paced::Rate(_) => "Send rate limit of this instance reached",
            super::ratelimit::Paced::NewChats(_) => {
                "New-chat limit of this instance reached (limits.new_chats_per_hour)"
            }
        };
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", message);
        e.retry_after = Some(p.retry_after());
        e
    })
}

fn with_from(mut v: Value, from: &Instance) -> Value {
    v["from"] = json!(from.phone);
    v["instanceId"] = json!(from.id);
    v
}

async fn send_text_with(
    actor: &ActorRef<InstanceMsg>,
    to: String,
    text: String,
    message_id: Option<String>,
) -> Result<Sent, ApiError> {
    call_t!(
        actor,
        |reply| InstanceMsg::SendText {
            to,
            text,
            message_id,
            reply
        },
        SEND_MS
    )
    .map_err(actor_unreachable)?
    .map_err(instance_error)
}

// ---------- auth ----------

#[derive(Deserialize, Default)]
struct LoginBody {
    username: Option<String>,
    password: Option<String>,
}

/// `POST /login-jwt`.
pub async fn login_jwt(body: Bytes, ip: std::net::IpAddr, api: Shared) -> R {
    api.auth_failures.peek(&ip).map_err(super::auth_throttled)?;
    let b: LoginBody = parse(&body)?;
    let username = required(&b.username, "username")?;
    let password = b.password.unwrap_or_default();
    if password.is_empty() {
        return Err(ApiError::bad_request(
            "VALIDATION_ERROR",
            "password is required",
        ));
    }
    // Per account, from any address: a spread-out guess at one password waits too.
    api.login_backoff.check(&username).map_err(|retry| {
        // Still a guess from this address: it counts against the address too.
        let _ = api.auth_failures.check(&ip);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            "Too many failed logins for this account; try again later",
        );
        e.retry_after = Some(retry);
        e
    })?;
    match api.auth.login(&username, &password).await {
        Some(token) => {
            api.login_backoff.succeeded(&username);
            Ok(warp::reply::json(&json!({
                "success": true,
                "message": "Login successful",
                "token": token,
                "data": {"token": token, "expires_in": api.config.auth.jwt_ttl.as_secs()},
            }))
            .into_response())
        }
        None => {
            let _ = api.auth_failures.check(&ip);
            if api.auth.is_login_user(&username) {
                api.login_backoff.failed(&username);
            }
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "INVALID_CREDENTIALS",
                "Invalid username or password",
            ))
        }
    }
}

/// `GET /api/validate`.
pub async fn validate(p: Principal) -> R {
    let username = p.username();
    let instance_id = match &p {
        Principal::Instance { instance_id } => Some(instance_id.clone()),
        Principal::Admin { .. } => None,
    };
    Ok(warp::reply::json(&json!({
        "success": true,
        "message": "Token is valid",
        "username": username,
        "data": {"username": username, "admin": p.is_admin(), "instanceId": instance_id},
    }))
    .into_response())
}

// ---------- instances ----------

#[derive(Deserialize, Default)]
struct CreateBody {
    device_name: Option<String>,
    #[serde(rename = "deviceName")]
    device_name_camel: Option<String>,
}

fn new_instance_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `POST /api/login`: creates an instance and its token.
pub async fn create_instance(p: Principal, body: Bytes, api: Shared) -> R {
    admin_only(&p)?;
    let b: CreateBody = parse(&body)?;
    let device_name = b
        .device_name
        .or(b.device_name_camel)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| api.config.whatsapp.device_name.clone());
    if device_name.chars().count() > 64 || device_name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "VALIDATION_ERROR",
            "device_name must be 1-64 printable characters",
        ));
    }
    let id = new_instance_id();
    api.instances
        .create(&id, &device_name)
        .await
        .map_err(db_error)?;
    let token = api.auth.issue_instance_token(&id).await.map_err(db_error)?;
    actor(&api, &id).await?;
    Ok(ok(
        "Instance created",
        json!({
            "instanceId": id,
            "status": InstanceStatus::QrRequired.as_str(),
            "nextStep": format!("GET /api/qr/{id} to get the QR code, then scan it with WhatsApp"),
            "token": token,
            "deviceName": device_name,
        }),
    ))
}

fn instance_json(row: &Instance, snap: Option<&InstanceSnapshot>) -> Value {
    let ms = |t: Option<i64>| {
        t.and_then(chrono::DateTime::from_timestamp_millis)
            .map(actors::events::rfc3339)
    };
    let (status, is_connected, phone, jid, lid, connected_at) = match snap {
        Some(s) => (
            s.status.as_str().to_string(),
            s.is_connected,
            s.identity.phone.clone(),
            s.identity.jid.clone(),
            s.identity.lid.clone(),
            s.connected_at.map(actors::events::rfc3339),
        ),
        None => (
            row.status.clone(),
            false,
            row.phone.clone(),
            row.jid.clone(),
            row.lid.clone(),
            ms(row.connected_at),
        ),
    };
    json!({
        "instanceId": row.id,
        "status": status,
        "isConnected": is_connected,
        "phoneNumber": phone,
        "jid": jid,
        "lid": lid,
        "pushName": row.push_name,
        "deviceName": row.device_name,
        "reason": row.reason,
        "webhookUrl": row.webhook_url,
        "connectedAt": connected_at,
        "disconnectedAt": ms(row.disconnected_at),
        "createdAt": ms(Some(row.created_at)),
    })
}

/// `GET /api/status/:id` (with `restarts`: supervisor restarts since the process
/// started; a parked instance says `crashed` with its `reason`).
pub async fn status(id: String, p: Principal, api: Shared) -> R {
    let row = instance(&api, &p, &id).await?;
    let snap = match api.runtime.actor(&id) {
        Some(a) => Some(snapshot(&a).await?),
        None => None,
    };
    let mut v = instance_json(&row, snap.as_ref());
    v["restarts"] = json!(api.runtime.restarts(&id));
    Ok(ok("Instance status", v))
}

/// `POST /api/instances/:id/resume`: starts a crashed (parked) instance again.
pub async fn resume(id: String, p: Principal, api: Shared) -> R {
    instance(&api, &p, &id).await?;
    api.runtime.resume(&id).await.map_err(|e| match e {
        crate::runtime::ResumeError::NotCrashed => ApiError::new(
            StatusCode::CONFLICT,
            "INSTANCE_NOT_CRASHED",
            "The instance is not crashed",
        ),
        crate::runtime::ResumeError::Failed(e) => {
            tracing::warn!(instance_id = %id, error = %e, "resuming an instance failed");
            ApiError::internal()
        }
    })?;
    Ok(ok("Instance resumed", json!({"instanceId": id})))
}

/// `GET /api/instances[?all=true]`.
pub async fn list_instances(p: Principal, q: HashMap<String, String>, api: Shared) -> R {
    let all = q.get("all").is_some_and(|v| v == "true" || v == "1");
    let rows = api.instances.list().await.map_err(db_error)?;
    let items: Vec<Value> = rows
        .iter()
        .filter(|r| p.may_access(&r.id))
        .filter(|r| all || r.status == InstanceStatus::Online.as_str())
        .map(|r| instance_json(r, None))
        .collect();
    Ok(ok(
        "Instances",
        json!({"total": items.len(), "instances": items}),
    ))
}

/// `POST /api/logout/:id`.
pub async fn logout(id: String, p: Principal, api: Shared) -> R {
    instance(&api, &p, &id).await?;
    let a = actor(&api, &id).await?;
    call_t!(a, InstanceMsg::Logout, SEND_MS)
        .map_err(actor_unreachable)?
        .map_err(instance_error)?;
    api.sockets.revoke(super::ws::Revocation::Instance {
        instance_id: id.clone(),
        reason: "instance logged out",
    });
    Ok(ok(
        "Logged out; the instance can scan a new QR code",
        json!({"instanceId": id}),
    ))
}

/// `DELETE /api/instances/:id`.
pub async fn delete_instance(id: String, p: Principal, api: Shared) -> R {
    instance(&api, &p, &id).await?;
    if let Some(a) = api.runtime.actor(&id) {
        let s = snapshot(&a).await?;
        if s.is_connected || s.status == InstanceStatus::Online {
            return Err(ApiError::bad_request(
                "INSTANCE_STILL_CONNECTED",
                "Log the instance out before deleting it",
            ));
        }
    }
    api.runtime.stop(&id).await.map_err(actor_unreachable)?;
    // The row, its tokens, logs and outbox go in one transaction.
    api.instances.delete(&id).await.map_err(db_error)?;
    api.sockets.revoke(super::ws::Revocation::Tokens {
        instance_id: id.clone(),
    });
    api.sockets.revoke(super::ws::Revocation::Instance {
        instance_id: id.clone(),
        reason: "instance deleted",
    });
    Ok(ok("Instance deleted", json!({"instanceId": id})))
}

/// `POST /api/instances/:id/token`: a new token for the instance.
pub async fn new_token(id: String, p: Principal, api: Shared) -> R {
    instance(&api, &p, &id).await?;
    let token = api.auth.issue_instance_token(&id).await.map_err(db_error)?;
    Ok(ok(
        "Token issued",
        json!({"instanceId": id, "token": token}),
    ))
}

/// `DELETE /api/instances/:id/token`: revokes every token of the instance.
pub async fn revoke_tokens(id: String, p: Principal, api: Shared) -> R {
    instance(&api, &p, &id).await?;
    let n = api.auth.tokens().revoke_all(&id).await.map_err(db_error)?;
    api.sockets.revoke(super::ws::Revocation::Tokens {
        instance_id: id.clone(),
    });
    Ok(ok(
        "Tokens revoked",
        json!({"instanceId": id, "revoked": n}),
    ))
}

// ---------- QR ----------

/// Result of starting (or joining) a QR flow.
pub enum QrStart {
    /// Online already, with this JID.
    Connected(Option<String>),
    /// The flow runs; the code on offer (if it arrived in time) and its expiry.
    Code(Option<(String, String)>),
}

/// Starts (or joins) the QR flow of an existing instance and waits briefly for the
/// first code.
pub async fn start_qr(api: &Shared, id: &str) -> Result<QrStart, ApiError> {
    let a = actor(api, id).await?;
    // Subscribe before starting, so the first code cannot slip past.
    let mut notices = api.runtime.lifecycle();
    let started = call_t!(a, InstanceMsg::StartQr, QUICK_MS).map_err(actor_unreachable)?;
    let mut code = match started {
        Ok(code) => code,
        Err(InstanceError::Lifecycle(LifecycleError::AlreadyConnected)) => {
            return Ok(QrStart::Connected(snapshot(&a).await?.identity.jid));
        }
        Err(e) => return Err(instance_error(e)),
    }
    .map(|q| (q.code, actors::events::rfc3339(q.expires_at)));
    if code.is_none() {
        let deadline = tokio::time::Instant::now() + FIRST_QR_WAIT;
        while code.is_none() {
            match tokio::time::timeout_at(deadline, notices.recv()).await {
                Ok(Ok(LifecycleNotice::QrGenerated {
                    instance_id,
                    qr_data,
                    expires_at,
                    ..
                })) if instance_id == id => code = Some((qr_data, expires_at)),
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
    }
    Ok(QrStart::Code(code))
}

/// `GET /api/qr/:id`: starts (or joins) the QR flow and returns the current code.
pub async fn qr(id: String, p: Principal, api: Shared) -> R {
    instance(&api, &p, &id).await?;
    let code = match start_qr(&api, &id).await? {
        QrStart::Connected(jid) => {
            return Ok(ok(
                "Instance is already connected",
                json!({"status": "already_connected", "instance_id": id, "jid": jid}),
            ));
        }
        QrStart::Code(code) => code,
    };
    let mut data = json!({
        "status": "generating",
        "instance_id": id,
        "timeout": api.config.whatsapp.qr_timeout.as_secs(),
    });
    if let Some((qr, expires_at)) = code {
        data["qr"] = json!(qr);
        data["expires_at"] = json!(expires_at);
    }
    Ok(ok("QR login started; scan the code with WhatsApp", data))
}

/// `GET /api/qr/:id/image`: the current code as PNG.
pub async fn qr_image(id: String, p: Principal, api: Shared) -> R {
    instance(&api, &p, &id).await?;
    let no_qr = || instance_error(InstanceError::Lifecycle(LifecycleError::NoQrSession));
    let a = api.runtime.actor(&id).ok_or_else(no_qr)?;
    let code = snapshot(&a).await?.qr.ok_or_else(no_qr)?;
    let png = super::qr::png(&code.code).map_err(|e| {
        tracing::error!(error = %e, "rendering a QR code failed");
        ApiError::internal()
    })?;
    let mut r = Response::new(png.into());
    r.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("image/png"),
    );
    r.headers_mut().insert(
        warp::http::header::CACHE_CONTROL,
        warp::http::HeaderValue::from_static("no-store"),
    );
    Ok(r)
}

/// `DELETE /api/qr-cancel/:id`.
pub async fn qr_cancel(id: String, p: Principal, api: Shared) -> R {
    instance(&api, &p, &id).await?;
    let a = api
        .runtime
        .actor(&id)
        .ok_or_else(|| instance_error(InstanceError::Lifecycle(LifecycleError::NoQrSession)))?;
    call_t!(a, InstanceMsg::CancelQr, QUICK_MS)
        .map_err(actor_unreachable)?
        .map_err(instance_error)?;
    Ok(ok(
        "QR login cancelled",
        json!({"instance_id": id, "status": "cancelled"}),
    ))
}

// ---------- sending ----------

#[derive(Deserialize, Default)]
struct TextBody {
    to: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize, Default)]
struct CheckBody {
    phone: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MediaUrlBody {
    to: Option<String>,
    group_jid: Option<String>,
    media_url: Option<String>,
    caption: Option<String>,
    media_type: Option<String>,
    file_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GroupTextBody {
    group_jid: Option<String>,
    message: Option<String>,
}

fn text_body(body: &Bytes) -> Result<(String, String), ApiError> {
    let b: TextBody = parse(body)?;
    Ok((required(&b.to, "to")?, required(&b.message, "message")?))
}

async fn do_send_text(
    api: &Shared,
    actor: ActorRef<InstanceMsg>,
    to: String,
    text: String,
    idem: Idem,
) -> Result<Outcome, ApiError> {
    let phone = util::normalize_phone(&to, &api.config.whatsapp.default_country_code)?;
    let hash = request_hash(&[b"text", phone.as_bytes(), text.as_bytes()]);
    let to = phone.clone();
    idempotent(api, &idem, &to, hash, |id| async move {
        let sent = send_text_with(&actor, phone, text, id).await?;
        Ok(sent_data(&sent))
    })
    .await
}

/// `POST /api/send/:id`.
pub async fn send_text(
    id: String,
    p: Principal,
    body: Bytes,
    key: Option<String>,
    api: Shared,
) -> R {
    guard(&p, &id)?;
    let (to, text) = text_body(&body)?;
    let row = instance(&api, &p, &id).await?;
    let idem = Idem::new(&row.id, key)?;
    let a = ready(&api, &row).await?;
    let out = do_send_text(&api, a, to, text, idem).await?;
    Ok(out.reply("Message sent"))
}

/// `POST /api/by-number/:phone`.
pub async fn send_text_by_number(
    phone: String,
    p: Principal,
    body: Bytes,
    key: Option<String>,
    api: Shared,
) -> R {
    let (to, text) = text_body(&body)?;
    let (row, a) = by_number(&api, &p, &phone).await?;
    let idem = Idem::new(&row.id, key)?;
    let out = do_send_text(&api, a, to, text, idem).await?;
    Ok(out.map(|d| with_from(d, &row)).reply("Message sent"))
}

/// `POST /api/check/:id`.
pub async fn check(id: String, p: Principal, body: Bytes, api: Shared) -> R {
    guard(&p, &id)?;
    let b: CheckBody = parse(&body)?;
    let raw = required(&b.phone, "phone")?;
    let row = instance(&api, &p, &id).await?;
    let a = ready(&api, &row).await?;
    let phone = util::normalize_phone(&raw, &api.config.whatsapp.default_country_code)?;
    let phones = vec![phone.clone()];
    let r = call_t!(
        a,
        |reply| InstanceMsg::CheckNumbers { phones, reply },
        SEND_MS
    )
    .map_err(actor_unreachable)?
    .map_err(instance_error)?;
    let hit = r.into_iter().next();
    Ok(ok(
        "Number checked",
        json!({
            "phone": phone,
            "isRegistered": hit.as_ref().is_some_and(|h| h.is_registered),
            "jid": hit.and_then(|h| h.jid),
        }),
    ))
}

/// Media read from a request, before sending.
struct MediaInput {
    kind: MediaKind,
    bytes: Vec<u8>,
    mimetype: String,
    file_name: String,
    caption: Option<String>,
    /// The file's room under the media cap, held until the send ends.
    hold: super::budget::Hold,
}

fn cap_for(api: &Shared, kind: MediaKind) -> u64 {
    let l = &api.config.limits;
    match kind {
        MediaKind::Image => l.max_image_bytes,
        MediaKind::Video => l.max_video_bytes,
        MediaKind::Audio => l.max_audio_bytes,
        MediaKind::Document => l.max_document_bytes,
    }
}

fn too_large(kind: MediaKind, cap: u64) -> ApiError {
    ApiError::bad_request(
        "FILE_TOO_LARGE",
        format!(
            "{} files may be at most {cap} bytes",
            util::media_kind_word(kind)
        ),
    )
}

fn media_type_field(v: &Option<String>) -> Result<Option<MediaKind>, ApiError> {
    match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => util::parse_media_type(s).map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "VALIDATION_ERROR",
                "mediaType must be image, video, audio or document",
            )
        }),
    }
}

/// Fields of a multipart media upload.
struct Upload {
    fields: HashMap<String, String>,
    file: Option<(String, Option<String>, Vec<u8>)>,
    hold: super::budget::Hold,
}

/// A multipart upload and its announced length.
pub struct MediaForm {
    /// The request's `Content-Length` (absent with chunked bodies).
    pub len: Option<u64>,
    pub form: warp::multipart::FormData,
}

async fn read_upload(api: &Shared, form: MediaForm) -> Result<Upload, ApiError> {
    let MediaForm {
        len: announced,
        form,
    } = form;
    use bytes::Buf;
    let max_cap = [
        MediaKind::Image,
        MediaKind::Video,
        MediaKind::Audio,
        MediaKind::Document,
    ]
    .into_iter()
    .map(|k| cap_for(api, k))
    .max()
    .unwrap_or(0);
    let mut up = Upload {
        fields: HashMap::new(),
        file: None,
        hold: api.media.hold(),
    };
    let bad = || ApiError::bad_request("INVALID_REQUEST", "Multipart body could not be read");
    // With a length announced, the whole room is taken (or refused) before the first
    // byte is read: concurrent uploads cannot each take a part and starve together.
    let prepaid = announced.unwrap_or(0).min(max_cap);
    if prepaid > 0 && !up.hold.take(prepaid) {
        return Err(super::budget::busy());
    }
    let mut file_bytes = 0u64;
    let mut form = std::pin::pin!(form);
    while let Some(part) = form.try_next().await.map_err(|_| bad())? {
        let name = part.name().to_string();
        let file_name = part.filename().map(str::to_string);
        let ctype = part.content_type().map(str::to_string);
        // Chunks are kept as they come and joined once (no doubling copies).
        let mut chunks: Vec<bytes::Bytes> = Vec::new();
        let mut len = 0usize;
        let mut stream = std::pin::pin!(part.stream());
        let limit = if name == "file" { max_cap } else { MAX_FIELD };
        while let Some(mut chunk) = stream.try_next().await.map_err(|_| bad())? {
            if (len + chunk.remaining()) as u64 > limit {
                return Err(if name == "file" {
                    ApiError::bad_request(
                        "FILE_TOO_LARGE",
                        format!("files may be at most {max_cap} bytes"),
                    )
                } else {
                    ApiError::bad_request("VALIDATION_ERROR", format!("field {name} is too long"))
                });
            }
            if name == "file" {
                let n = chunk.remaining() as u64;
                // Only bytes beyond the prepaid room are taken now.
                let beyond = (file_bytes + n).saturating_sub(prepaid.max(file_bytes));
                if beyond > 0 && !up.hold.take(beyond) {
                    return Err(super::budget::busy());
                }
                file_bytes += n;
            }
            len += chunk.remaining();
            chunks.push(chunk.copy_to_bytes(chunk.remaining()));
        }
        let mut data = Vec::with_capacity(len);
        for c in chunks.drain(..) {
            data.extend_from_slice(&c);
        }
        if name == "file" {
            up.file = Some((file_name.unwrap_or_else(|| "file".to_string()), ctype, data));
        } else {
            let v = String::from_utf8(data).map_err(|_| {
                ApiError::bad_request("VALIDATION_ERROR", format!("field {name} is not UTF-8"))
            })?;
            up.fields.insert(name, v);
        }
    }
    Ok(up)
}

const MAX_FIELD: u64 = 64 * 1024;

/// Validates an upload: the target field (`to` or `groupJid`) and the file.
fn upload_media(api: &Shared, up: Upload, target: &str) -> Result<(String, MediaInput), ApiError> {
    let to = required(&up.fields.get(target).cloned(), target)?;
    let (file_name, ctype, bytes) = up.file.ok_or_else(|| {
        ApiError::bad_request(
            "FILE_REQUIRED",
            "A file is required (multipart field \"file\")",
        )
    })?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request("FILE_REQUIRED", "The file is empty"));
    }
    let kind = media_type_field(&up.fields.get("mediaType").cloned())?
        .unwrap_or_else(|| util::media_kind_for(&file_name));
    let cap = cap_for(api, kind);
    if bytes.len() as u64 > cap {
        return Err(too_large(kind, cap));
    }
    let mimetype = util::mimetype_for(&file_name, ctype.as_deref());
    let caption = up.fields.get("caption").cloned().filter(|c| !c.is_empty());
    Ok((
        to,
        MediaInput {
            kind,
            bytes,
            mimetype,
            file_name,
            caption,
            hold: up.hold,
        },
    ))
}

/// Downloads a media URL under the SSRF policy and the size cap of its type.
async fn url_media(api: &Shared, b: &MediaUrlBody) -> Result<MediaInput, ApiError> {
    let raw = required(&b.media_url, "mediaUrl")?;
    let url = url::Url::parse(&raw)
        .map_err(|_| ApiError::bad_request("VALIDATION_ERROR", "mediaUrl is not a valid URL"))?;
    let declared = media_type_field(&b.media_type)?;
    let url_name = b
        .file_name
        .clone()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| util::file_name_from_url(&url));
    let kind = declared.unwrap_or_else(|| util::media_kind_for(&url_name));
    let cap = cap_for(api, kind);
    let hold = api.media.hold();
    let fetched = fetch::fetch(url.as_str(), &api.fetch_policy(cap, &hold))
        .await
        .map_err(|e| match e {
            fetch::FetchError::TooLarge(_) => too_large(kind, cap),
            fetch::FetchError::Busy => super::budget::busy(),
            other => ApiError::bad_request(other.api_code(), capitalize(&other.to_string())),
        })?;
    let mimetype = util::mimetype_for(&url_name, fetched.content_type.as_deref());
    Ok(MediaInput {
        kind,
        bytes: fetched.bytes,
        mimetype,
        file_name: url_name,
        caption: b.caption.clone().filter(|c| !c.is_empty()),
        hold,
    })
}

async fn send_media_with(
    api: &Shared,
    actor: &ActorRef<InstanceMsg>,
    to: String,
    m: MediaInput,
    idem: &Idem,
) -> Result<Outcome, ApiError> {
    let hash = request_hash(&[
        b"media",
        to.as_bytes(),
        util::media_kind_word(m.kind).as_bytes(),
        m.mimetype.as_bytes(),
        m.file_name.as_bytes(),
        m.caption.as_deref().unwrap_or("").as_bytes(),
        &m.bytes,
    ]);
    let actor = actor.clone();
    let recipient = to.clone();
    idempotent(api, idem, &recipient, hash, move |id| async move {
        send_media_once(&actor, to, m, id).await
    })
    .await
}

async fn send_media_once(
    actor: &ActorRef<InstanceMsg>,
    to: String,
    m: MediaInput,
    message_id: Option<String>,
) -> Result<Value, ApiError> {
    let (kind, size, file_name) = (m.kind, m.bytes.len(), m.file_name.clone());
    // Kept until the actor answers: the upload holds the bytes (and their encrypted
    // copy) until then.
    let _hold = m.hold;
    let media = OutgoingMedia {
        kind: m.kind,
        bytes: m.bytes,
        mimetype: m.mimetype,
        file_name: Some(m.file_name),
        caption: m.caption,
    };
    let sent = call_t!(
        actor,
        |reply| InstanceMsg::SendMedia {
            to,
            media,
            message_id,
            reply
        },
        MEDIA_MS
    )
    .map_err(actor_unreachable)?
    .map_err(instance_error)?;
    let mut v = sent_data(&sent);
    v["mediaType"] = json!(util::media_kind_word(kind));
    v["fileName"] = json!(file_name);
    v["fileSize"] = json!(size);
    Ok(v)
}

/// Target of a media send: a normalised phone number or a validated group JID.
fn target(api: &Shared, raw: &str, group: bool) -> Result<String, ApiError> {
    if group {
        let jid = raw.trim();
        if !util::is_group_jid(jid) {
            return Err(instance_error(InstanceError::InvalidGroupJid));
        }
        Ok(jid.to_string())
    } else {
        util::normalize_phone(raw, &api.config.whatsapp.default_country_code)
    }
}

fn group_data(mut v: Value, group_jid: &str) -> Value {
    v["groupJid"] = json!(group_jid);
    v
}

async fn media_file(
    api: Shared,
    actor: ActorRef<InstanceMsg>,
    up: Upload,
    group: bool,
    idem: Idem,
) -> Result<Outcome, ApiError> {
    let (raw, m) = upload_media(&api, up, if group { "groupJid" } else { "to" })?;
    let to = target(&api, &raw, group)?;
    let out = send_media_with(&api, &actor, to.clone(), m, &idem).await?;
    Ok(if group {
        out.map(|v| group_data(v, &to))
    } else {
        out
    })
}

async fn media_url(
    api: Shared,
    actor: ActorRef<InstanceMsg>,
    b: MediaUrlBody,
    group: bool,
    idem: Idem,
) -> Result<Outcome, ApiError> {
    let raw = if group {
        required(&b.group_jid, "groupJid")?
    } else {
        required(&b.to, "to")?
    };
    let to = target(&api, &raw, group)?;
    let m = url_media(&api, &b).await?;
    let out = send_media_with(&api, &actor, to.clone(), m, &idem).await?;
    Ok(if group {
        out.map(|v| group_data(v, &to))
    } else {
        out
    })
}

fn media_url_body(body: &Bytes, group: bool) -> Result<MediaUrlBody, ApiError> {
    let b: MediaUrlBody = parse(body)?;
    if group {
        required(&b.group_jid, "groupJid")?;
    } else {
        required(&b.to, "to")?;
    }
    required(&b.media_url, "mediaUrl")?;
    media_type_field(&b.media_type)?;
    Ok(b)
}

/// `POST /api/send/:id/media` (multipart `to`, `caption`, `file`, optional `mediaType`).
pub async fn send_media_file(
    id: String,
    p: Principal,
    form: MediaForm,
    key: Option<String>,
    api: Shared,
) -> R {
    guard(&p, &id)?;
    let up = read_upload(&api, form).await?;
    let row = instance(&api, &p, &id).await?;
    let idem = Idem::new(&row.id, key)?;
    let a = ready(&api, &row).await?;
    Ok(media_file(api, a, up, false, idem)
        .await?
        .reply("Media sent"))
}

/// `POST /api/send/:id/media-url`.
pub async fn send_media_url(
    id: String,
    p: Principal,
    body: Bytes,
    key: Option<String>,
    api: Shared,
) -> R {
    guard(&p, &id)?;
    let b = media_url_body(&body, false)?;
    let row = instance(&api, &p, &id).await?;
    let idem = Idem::new(&row.id, key)?;
    let a = ready(&api, &row).await?;
    Ok(media_url(api, a, b, false, idem).await?.reply("Media sent"))
}

/// `POST /api/by-number/:phone/media-url`.
pub async fn send_media_url_by_number(
    phone: String,
    p: Principal,
    body: Bytes,
    key: Option<String>,
    api: Shared,
) -> R {
    let b = media_url_body(&body, false)?;
    let (row, a) = by_number(&api, &p, &phone).await?;
    let idem = Idem::new(&row.id, key)?;
    let out = media_url(api, a, b, false, idem).await?;
    Ok(out.map(|v| with_from(v, &row)).reply("Media sent"))
}

/// `POST /api/by-number/:phone/media-file`.
pub async fn send_media_file_by_number(
    phone: String,
    p: Principal,
    form: MediaForm,
    key: Option<String>,
    api: Shared,
) -> R {
    let up = read_upload(&api, form).await?;
    let (row, a) = by_number(&api, &p, &phone).await?;
    let idem = Idem::new(&row.id, key)?;
    let out = media_file(api, a, up, false, idem).await?;
    Ok(out.map(|v| with_from(v, &row)).reply("Media sent"))
}

// ---------- groups ----------

async fn list_groups(actor: &ActorRef<InstanceMsg>) -> Result<Value, ApiError> {
    let groups = call_t!(actor, InstanceMsg::ListGroups, SEND_MS)
        .map_err(actor_unreachable)?
        .map_err(instance_error)?;
    Ok(json!({"total": groups.len(), "groups": groups}))
}

/// `GET /api/groups/:id`.
pub async fn groups(id: String, p: Principal, api: Shared) -> R {
    let row = instance(&api, &p, &id).await?;
    let a = ready(&api, &row).await?;
    Ok(ok("Groups", list_groups(&a).await?))
}

/// `GET /api/groups/by-number/:phone`.
pub async fn groups_by_number(phone: String, p: Principal, api: Shared) -> R {
    let (row, a) = by_number(&api, &p, &phone).await?;
    Ok(ok("Groups", with_from(list_groups(&a).await?, &row)))
}

fn group_text_body(body: &Bytes) -> Result<(String, String), ApiError> {
    let b: GroupTextBody = parse(body)?;
    Ok((
        required(&b.group_jid, "groupJid")?,
        required(&b.message, "message")?,
    ))
}

async fn do_group_text(
    api: &Shared,
    actor: &ActorRef<InstanceMsg>,
    group_jid: String,
    text: String,
    idem: Idem,
) -> Result<Outcome, ApiError> {
    let jid = group_jid.trim().to_string();
    if !util::is_group_jid(&jid) {
        return Err(instance_error(InstanceError::InvalidGroupJid));
    }
    let hash = request_hash(&[b"group-text", jid.as_bytes(), text.as_bytes()]);
    let actor = actor.clone();
    idempotent(
        api,
        &idem,
        &jid.clone(),
        hash,
        move |message_id| async move {
            let g = jid.clone();
            let sent = call_t!(
                &actor,
                |reply| InstanceMsg::SendGroupText {
                    group_jid: g,
                    text,
                    message_id,
                    reply
                },
                SEND_MS
            )
            .map_err(actor_unreachable)?
            .map_err(instance_error)?;
            Ok(json!({"messageId": sent.message_id, "timestamp": sent.timestamp, "groupJid": jid}))
        },
    )
    .await
}

/// `POST /api/send-group/:id`.
pub async fn group_text(
    id: String,
    p: Principal,
    body: Bytes,
    key: Option<String>,
    api: Shared,
) -> R {
    guard(&p, &id)?;
    let (gid, text) = group_text_body(&body)?;
    let row = instance(&api, &p, &id).await?;
    let idem = Idem::new(&row.id, key)?;
    let a = ready(&api, &row).await?;
    Ok(do_group_text(&api, &a, gid, text, idem)
        .await?
        .reply("Message sent"))
}

/// `POST /api/send-group/by-number/:phone`.
pub async fn group_text_by_number(
    phone: String,
    p: Principal,
    body: Bytes,
    key: Option<String>,
    api: Shared,
) -> R {
    let (gid, text) = group_text_body(&body)?;
    let (row, a) = by_number(&api, &p, &phone).await?;
    let idem = Idem::new(&row.id, key)?;
    let out = do_group_text(&api, &a, gid, text, idem).await?;
    Ok(out.map(|v| with_from(v, &row)).reply("Message sent"))
}

/// `POST /api/send-group/:id/media`.
pub async fn group_media_file(
    id: String,
    p: Principal,
    form: MediaForm,
    key: Option<String>,
    api: Shared,
) -> R {
    guard(&p, &id)?;
    let up = read_upload(&api, form).await?;
    let row = instance(&api, &p, &id).await?;
    let idem = Idem::new(&row.id, key)?;
    let a = ready(&api, &row).await?;
    Ok(media_file(api, a, up, true, idem)
        .await?
        .reply("Media sent"))
}

/// `POST /api/send-group/:id/media-url`.
pub async fn group_media_url(
    id: String,
    p: Principal,
    body: Bytes,
    key: Option<String>,
    api: Shared,
) -> R {
    guard(&p, &id)?;
    let b = media_url_body(&body, true)?;
    let row = instance(&api, &p, &id).await?;
    let idem = Idem::new(&row.id, key)?;
    let a = ready(&api, &row).await?;
    Ok(media_url(api, a, b, true, idem).await?.reply("Media sent"))
}

/// `POST /api/send-group/by-number/:phone/media`.
pub async fn group_media_file_by_number(
    phone: String,
    p: Principal,
    form: MediaForm,
    key: Option<String>,
    api: Shared,
) -> R {
    let up = read_upload(&api, form).await?;
    let (row, a) = by_number(&api, &p, &phone).await?;
    let idem = Idem::new(&row.id, key)?;
    let out = media_file(api, a, up, true, idem).await?;
    Ok(out.map(|v| with_from(v, &row)).reply("Media sent"))
}

/// `POST /api/send-group/by-number/:phone/media-url`.
pub async fn group_media_url_by_number(
    phone: String,
    p: Principal,
    body: Bytes,
    key: Option<String>,
    api: Shared,
) -> R {
    let b = media_url_body(&body, true)?;
    let (row, a) = by_number(&api, &p, &phone).await?;
    let idem = Idem::new(&row.id, key)?;
    let out = media_url(api, a, b, true, idem).await?;
    Ok(out.map(|v| with_from(v, &row)).reply("Media sent"))
}

// ---------- webhooks ----------

#[derive(Deserialize, Default)]
struct WebhookBody {
    url: Option<String>,
    secret: Option<String>,
    /// Event names the webhook takes (absent: the message events).
    events: Option<Vec<String>>,
}

/// Checks a webhook event filter against the known event names.
fn webhook_events(events: &Option<Vec<String>>) -> Result<Option<Vec<String>>, ApiError> {
    use crate::store::journal::EVENT_NAMES;
    let Some(list) = events else {
        return Ok(None);
    };
    if list.is_empty() {
        return Err(ApiError::bad_request(
            "VALIDATION_ERROR",
            "events must name at least one event (or be left out for the default)",
        ));
    }
    if let Some(bad) = list
        .iter()
        .find(|e| *e != "*" && !EVENT_NAMES.contains(&e.as_str()))
    {
        return Err(ApiError::bad_request(
            "VALIDATION_ERROR",
            format!(
                "Unknown event {bad:?}: use * or any of {}",
                EVENT_NAMES.join(", ")
            ),
        ));
    }
    Ok(Some(list.clone()))
}

fn events_shown(events: &Option<Vec<String>>) -> Value {
    match events {
        Some(e) => json!(e),
        None => json!(crate::store::journal::MESSAGE_EVENTS),
    }
}

/// `POST /api/instances/:id/webhook-setconfig`: `{url, secret?}`; an empty url
/// turns the webhook off.
pub async fn webhook_setconfig(id: String, p: Principal, body: Bytes, api: Shared) -> R {
    guard(&p, &id)?;
    if !p.is_admin() && !api.config.webhook.instance_tokens_set_url {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "On this server only an admin may set webhook URLs (webhook.instance_tokens_set_url = false)",
        ));
    }
    let b: WebhookBody = parse(&body)?;
    let events = webhook_events(&b.events)?;
    let url = b.url.map(|u| u.trim().to_string()).unwrap_or_default();
    instance(&api, &p, &id).await?;
    if url.is_empty() {
        api.instances
            .set_webhook(&id, None, None)
            .await
            .map_err(db_error)?;
        api.instances
            .set_webhook_events(&id, None)
            .await
            .map_err(db_error)?;
        return Ok(ok(
            "Webhook removed",
            json!({
                "instanceId": id,
                "webhookUrl": null,
                "secret": null,
                "events": events_shown(&None),
            }),
        ));
    }
    let parsed = url::Url::parse(&url)
        .map_err(|_| ApiError::bad_request("VALIDATION_ERROR", "url is not a valid URL"))?;
    fetch::check_url(
        &parsed,
        &api.config.webhook.allowed_targets,
        &api.config.webhook.allowed_ports,
    )
    .await
    .map_err(|e| ApiError::bad_request("INVALID_WEBHOOK_URL", capitalize(&e.to_string())))?;
    let secret = match b
        .secret
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
    {
        Some(s) if s.len() < 16 || s.len() > 256 => {
            return Err(ApiError::bad_request(
                "VALIDATION_ERROR",
                "secret must be 16-256 characters (or omitted to generate one)",
            ))
        }
        Some(s) => s,
        None => hex::encode(rand::random::<[u8; 32]>()),
    };
    api.instances
        .set_webhook(&id, Some(&url), Some(&secret))
        .await
        .map_err(db_error)?;
    api.instances
        .set_webhook_events(&id, events.as_deref())
        .await
        .map_err(db_error)?;
    Ok(ok(
        "Webhook configured",
        json!({
            "instanceId": id,
            "webhookUrl": url,
            "secret": secret,
            "standardWebhooksSecret": crate::webhook::standard_secret(&secret),
            "events": events_shown(&events),
            "enabled": api.config.features.enable_webhook,
        }),
    ))
}

/// `GET /api/instances/:id/webhooks`: recent deliveries.
pub async fn webhook_log(id: String, p: Principal, api: Shared) -> R {
    instance(&api, &p, &id).await?;
    let items = match &api.webhooks {
        Some(o) => o.recent(&id, 100).await.map_err(db_error)?,
        None => Vec::new(),
    };
    Ok(ok(
        "Webhook deliveries",
        json!({"total": items.len(), "deliveries": items, "enabled": api.config.features.enable_webhook}),
    ))
}

/// `POST /api/instances/:id/webhooks/:delivery/redeliver`.
pub async fn webhook_redeliver(id: String, delivery: String, p: Principal, api: Shared) -> R {
    let row = instance(&api, &p, &id).await?;
    let rule = super::RedeliverRule {
        admin: p.is_admin(),
        current_url: row.webhook_url.clone(),
    };
    let outcome = match &api.webhooks {
        Some(o) => o.redeliver(&id, &delivery, &rule).await.map_err(db_error)?,
        None => super::Redelivery::NotFound,
    };
    match outcome {
        super::Redelivery::Queued => {}
        super::Redelivery::NotFound => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "DELIVERY_NOT_FOUND",
                "No such delivery",
            ))
        }
        super::Redelivery::PayloadExpired => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "PAYLOAD_EXPIRED",
                "This event's payload is past its retention (webhook.payload_retention_secs); it cannot be sent again",
            ))
        }
        super::Redelivery::UrlChanged => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "The webhook URL changed since this event was queued; only an admin may send it again",
            ))
        }
    }
    Ok(ok(
        "Delivery queued again",
        json!({"instanceId": id, "id": delivery}),
    ))
}

/// The id of an instance the caller may listen to (for `/api/listen/:id`).
pub async fn instance_for_ws(api: &Shared, p: &Principal, id: &str) -> Result<String, ApiError> {
    Ok(instance(api, p, id).await?.id)
}

// ---------- message log and event log ----------

/// A query string's pairs.
fn query_pairs(query: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

fn bad_query(name: &str, what: &str) -> ApiError {
    ApiError::bad_request("VALIDATION_ERROR", format!("{name} must be {what}"))
}

/// A time filter: RFC 3339 or unix milliseconds.
fn time_param(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(v) = q.get(name) else {
        return Ok(None);
    };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| bad_query(name, "an RFC 3339 time or unix milliseconds"))
}

fn int_param(
    q: &HashMap<String, String>,
    name: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, ApiError> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .map(Some)
            .ok_or_else(|| bad_query(name, &format!("an integer from {min} to {max}"))),
    }
}

/// `GET /api/instances/:id/messages`: the message log, newest first.
pub async fn messages_list(id: String, p: Principal, query: String, api: Shared) -> R {
    use crate::store::journal::MessageQuery;
    let q = query_pairs(&query);
    let direction = match q.get("direction").map(String::as_str) {
        None => None,
        Some(d @ ("in" | "out")) => Some(d.to_string()),
        Some(_) => return Err(bad_query("direction", "in or out")),
    };
    let mq = MessageQuery {
        chat: q.get("chat").filter(|c| !c.is_empty()).cloned(),
        direction,
        since: time_param(&q, "since")?,
        before: time_param(&q, "before")?,
        limit: int_param(&q, "limit", 1, 500)?.unwrap_or(50) as u64,
        cursor: int_param(&q, "cursor", 0, i64::MAX)?,
    };
    let row = instance(&api, &p, &id).await?;
    let page = api
        .journal
        .list_messages(&row.id, &mq)
        .await
        .map_err(db_error)?;
    Ok(ok(
        "Messages",
        json!({
            "instanceId": row.id,
            "messages": page.messages,
            "nextCursor": page.next_cursor.map(|c| c.to_string()),
        }),
    ))
}

/// `GET /api/instances/:id/messages/:messageId`: one message with its status timeline.
pub async fn message_get(id: String, message_id: String, p: Principal, api: Shared) -> R {
    let row = instance(&api, &p, &id).await?;
    match api
        .journal
        .get_message(&row.id, &message_id)
        .await
        .map_err(db_error)?
    {
        Some(m) => Ok(ok("Message", m)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "MESSAGE_NOT_FOUND",
            "No such message in this instance's log",
        )),
    }
}

/// `GET /api/instances/:id/events?after=&limit=`: the durable event log, oldest first.
pub async fn events_list(id: String, p: Principal, query: String, api: Shared) -> R {
    let q = query_pairs(&query);
    let after = int_param(&q, "after", 0, i64::MAX)?.unwrap_or(0);
    let limit = int_param(&q, "limit", 1, 1000)?.unwrap_or(100) as u64;
    let row = instance(&api, &p, &id).await?;
    let events = api
        .journal
        .events_after(&row.id, after, limit, None)
        .await
        .map_err(db_error)?;
    let next = events.last().map(|e| e.cursor).unwrap_or(after);
    let list: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(&e.json).unwrap_or(Value::Null))
        .collect();
    Ok(ok(
        "Events",
        json!({"instanceId": row.id, "events": list, "nextCursor": next.to_string()}),
    ))
}
