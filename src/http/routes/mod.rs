//! The routes, one file per area, each ending in its `routes()`:
//!
//! | file | routes |
//! |---|---|
//! | `session.rs` | `/login-jwt`, `/api/validate` |
//! | `instances.rs` | create, status, list, logout, delete, resume, tokens |
//! | `qr.rs` | the QR login: code, image, cancel |
//! | `send.rs` | **every send** (by id or by number × phone or group × text, URL or file) and the number check |
//! | `compose.rs` | other message kinds (mentions, location, contacts, poll, forward), reactions, edits, deletes, read receipts, chat state, presence |
//! | `groups.rs` | group listings and management |
//! | `profile.rs` | contacts' profiles, own profile and picture, blocking |
//! | `webhooks.rs` | webhook settings, delivery log, redelivery |
//! | `journal.rs` | message log and event log |
//! | `ops.rs` | `/metrics` |
//!
//! A handler parses, makes one call (a store call or an [`InstanceHandle`] method)
//! and maps the answer; errors convert with `?` (`From` impls in [`super::error`]).
//! Checks run in API.md's order, each with its own code.
//!
//! [`InstanceHandle`]: crate::runtime::InstanceHandle

use super::auth::Principal;
use super::error::ApiError;
use super::Shared;
use crate::runtime::InstanceHandle;
use crate::store::instances::Instance;
use actors::instance::InstanceError;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use warp::http::StatusCode;

/// A route: its method-and-path filter (see [`table`]), then auth, the handler's
/// extra inputs, the shared state and the handler; the answer (or error) becomes a
/// response.
macro_rules! authed_route {
    ($api:expr, $at:expr, $handler:expr $(, $extra:expr)*) => {{
        use warp::Filter;
        $at
            .and($crate::http::authed($api.clone()))
            $(.and($extra))*
            .and($crate::http::with_api($api.clone()))
            .then($handler)
            .map($crate::http::respond)
            .boxed()
    }};
}

/// Declares one authenticated route in table `$t`: its description `$doc`, the path
/// filter maker for its parameter count (`at0`, `at1`, `at2`), its handler and extra
/// inputs.
macro_rules! declare {
    ($t:expr, $api:expr, $at:ident, $doc:expr, $handler:expr $(, $extra:expr)*) => {{
        let d = $doc;
        $t.add(d, authed_route!($api, $crate::http::routes::table::$at(&d), $handler $(, $extra)*));
    }};
}

mod cluster;
mod compose;
mod groups;
mod idempotent;
mod instances;
mod journal;
mod media;
mod ops;
mod profile;
mod qr;
mod send;
mod session;
pub(crate) mod table;
mod webhooks;

#[cfg(feature = "sandbox")]
pub(crate) use qr::start_qr;

/// What handlers answer.
pub(crate) type R = Result<warp::reply::Response, ApiError>;

/// Every route of these files, declared with its description (the WebSockets and the
/// API description are added by [`super::routes`]).
pub(crate) fn all(api: &Shared) -> table::Table {
    let mut t = table::Table::default();
    for part in [
        session::routes(api),
        instances::routes(api),
        qr::routes(api),
        send::routes(api),
        compose::routes(api),
        profile::routes(api),
        ops::routes(api),
        groups::routes(api),
        webhooks::routes(api),
        journal::routes(api),
        cluster::routes(api),
    ] {
        t.extend(part);
    }
    t
}

/// The JSON body of a route (at most [`super::MAX_JSON_BODY`] bytes).
fn json() -> warp::filters::BoxedFilter<(Bytes,)> {
    use warp::Filter;
    super::body_limited(super::MAX_JSON_BODY).boxed()
}

/// A JSON body; an empty one is the type's default (every field absent).
pub fn parse<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    let Some(first) = body.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Ok(T::default());
    };
    // serde would also read a struct from an array; the API takes objects only.
    if *first == b'[' {
        return Err(ApiError::bad_request(
            "VALIDATION_ERROR",
            "The body must be a JSON object",
        ));
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

/// 403 unless the caller holds an admin credential.
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

/// Refuses another instance's token before anything else is looked at.
pub(super) fn guard(p: &Principal, id: &str) -> Result<(), ApiError> {
    if p.may_access(id) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "This token is not valid for this instance",
        ))
    }
}

/// The instance row, if the caller may see it: 403 for another instance's token
/// (before looking, so existence does not leak), 404 `SESSION_NOT_FOUND` when absent.
pub async fn instance(api: &Shared, p: &Principal, id: &str) -> Result<Instance, ApiError> {
    guard(p, id)?;
    api.instances.get(id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "SESSION_NOT_FOUND",
            "Instance not found",
        )
    })
}

/// The handle of an instance that is connected and logged in (API.md's order:
/// `NOT_CONNECTED`, then `NOT_LOGGED_IN`).
async fn ready(api: &Shared, row: &Instance) -> Result<InstanceHandle, ApiError> {
    let handle = api
        .runtime
        .handle(&row.id)
        .ok_or(InstanceError::NotConnected)?;
    handle.ready().await?;
    Ok(handle)
}

/// The ready instance whose own number is `phone` (by-number routes). Another
/// tenant's number answers exactly like an unknown one (404): a token cannot probe
/// which numbers this server runs.
async fn by_number(
    api: &Shared,
    p: &Principal,
    phone: &str,
) -> Result<(Instance, InstanceHandle), ApiError> {
    // Path segments arrive percent-encoded (`+62%20811...`).
    let decoded = percent_encoding::percent_decode_str(phone).decode_utf8_lossy();
    let phone = super::util::normalize_phone(&decoded, &api.config.whatsapp.default_country_code)?;
    let found = api
        .runtime
        .ready_by_phone(&phone, |id| p.may_access(id))
        .await?;
    found.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NO_ACTIVE_INSTANCE",
            "No connected instance has this phone number",
        )
    })
}
