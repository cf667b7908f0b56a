//! Instances: create (`POST /api/login`), status, list, logout, delete, resume after
//! a crash, and instance tokens.

use super::table::Table;
use super::{admin_only, instance, json, parse, R};
use crate::http::auth::Principal;
use crate::http::error::ApiError;
use crate::http::openapi::{doc, Body, INSTANCE};
use crate::http::schema;
use crate::http::util::ok;
use crate::http::ws::Revocation;
use crate::http::Shared;
use crate::store::instances::Instance;
use actors::instance::InstanceSnapshot;
use actors::InstanceStatus;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use utoipa::ToSchema;
use warp::http::StatusCode;

pub(super) fn routes(api: &Shared) -> Table {
    let mut t = Table::default();
    let query = warp::query::<HashMap<String, String>>;
    declare!(
        t,
        api,
        at0,
        doc(
            "post",
            "/api/login",
            "instances",
            "Create an instance (admin); returns its instance token",
            true,
            Body::OptionalJson(schema::of::<CreateBody>()),
            &["VALIDATION_ERROR", "FORBIDDEN"]
        )
        .admin(),
        create,
        json()
    );
    declare!(
        t,
        api,
        at0,
        doc(
            "get",
            "/api/instances",
            "instances",
            "List instances (connected ones unless ?all=true)",
            true,
            Body::None,
            &[]
        ),
        list,
        query()
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "get",
            "/api/status/{id}",
            "instances",
            "Status of an instance",
            true,
            Body::None,
            INSTANCE
        ),
        status
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/logout/{id}",
            "instances",
            "Unlink the device and wipe its keys; the instance stays",
            true,
            Body::None,
            INSTANCE
        ),
        logout
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "delete",
            "/api/instances/{id}",
            "instances",
            "Delete an instance (refused while connected)",
            true,
            Body::None,
            &["SESSION_NOT_FOUND", "FORBIDDEN", "INSTANCE_STILL_CONNECTED"]
        ),
        delete
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/instances/{id}/token",
            "instances",
            "Issue another instance token",
            true,
            Body::None,
            INSTANCE
        ),
        new_token
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "delete",
            "/api/instances/{id}/token",
            "instances",
            "Revoke every token of the instance",
            true,
            Body::None,
            INSTANCE
        ),
        revoke_tokens
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/instances/{id}/resume",
            "instances",
            "Start a crashed (parked) instance again",
            true,
            Body::None,
            &["SESSION_NOT_FOUND", "FORBIDDEN", "INSTANCE_NOT_CRASHED"]
        ),
        resume
    );
    t
}

/// A new instance's settings: the device name shown on the phone (either spelling;
/// up to 64 characters, no control characters).
#[derive(Deserialize, Default, ToSchema)]
struct CreateBody {
    #[schema(pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]{0,64}$")]
    device_name: Option<String>,
    #[serde(rename = "deviceName")]
    #[schema(pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]{0,64}$")]
    device_name_camel: Option<String>,
}

impl CreateBody {
    /// The device name: the first of `device_name`, `deviceName` that is not blank,
    /// else the configured one. Each given value must be at most 64 characters
    /// without control characters.
    fn device_name(self, default: &str) -> Result<String, ApiError> {
        let given = [self.device_name, self.device_name_camel];
        let bad = |s: &String| s.chars().count() > 64 || s.chars().any(char::is_control);
        if given.iter().flatten().any(bad) {
            return Err(ApiError::bad_request(
                "VALIDATION_ERROR",
                "device_name must be 1-64 printable characters",
            ));
        }
        let name = given
            .into_iter()
            .flatten()
            .map(|s| s.trim().to_string())
            .find(|s| !s.is_empty());
        Ok(name.unwrap_or_else(|| default.to_string()))
    }
}

/// `POST /api/login`: creates an instance and its token.
async fn create(p: Principal, body: Bytes, api: Shared) -> R {
    admin_only(&p)?;
    let device_name = parse::<CreateBody>(&body)?.device_name(&api.config.whatsapp.device_name)?;
    let id = api.runtime.create(&device_name).await?;
    let token = api.auth.issue_instance_token(&id).await?;
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

/// An instance as the API shows it: the live snapshot when its actor runs, else the row.
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
async fn status(id: String, p: Principal, api: Shared) -> R {
    let row = instance(&api, &p, &id).await?;
    let snap = match api.runtime.handle(&id) {
        Some(h) => Some(h.status().await?),
        None => None,
    };
    let mut v = instance_json(&row, snap.as_ref());
    v["restarts"] = json!(api.runtime.restarts(&id));
    Ok(ok("Instance status", v))
}

/// `POST /api/instances/:id/resume`: starts a crashed (parked) instance again.
async fn resume(id: String, p: Principal, api: Shared) -> R {
    use crate::runtime::ResumeError;
    instance(&api, &p, &id).await?;
    api.runtime.resume(&id).await.map_err(|e| match e {
        ResumeError::NotCrashed => ApiError::new(
            StatusCode::CONFLICT,
            "INSTANCE_NOT_CRASHED",
            "The instance is not crashed",
        ),
        ResumeError::Failed(e) => {
            tracing::warn!(instance_id = %id, error = %e, "resuming an instance failed");
            ApiError::internal()
        }
    })?;
    Ok(ok("Instance resumed", json!({"instanceId": id})))
}

/// `GET /api/instances[?all=true]`.
async fn list(p: Principal, q: HashMap<String, String>, api: Shared) -> R {
    let all = match q.get("all").map(String::as_str) {
        None | Some("false" | "0") => false,
        Some("true" | "1") => true,
        Some(_) => {
            let msg = "all must be true, false, 1 or 0";
            return Err(ApiError::bad_request("VALIDATION_ERROR", msg));
        }
    };
    let rows = api.instances.list().await?;
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
async fn logout(id: String, p: Principal, api: Shared) -> R {
    instance(&api, &p, &id).await?;
    api.runtime.ensure_handle(&id).await?.logout().await?;
    api.sockets.revoke(Revocation::Instance {
        instance_id: id.clone(),
        reason: "instance logged out",
    });
    Ok(ok(
        "Logged out; the instance can scan a new QR code",
        json!({"instanceId": id}),
    ))
}

/// `DELETE /api/instances/:id`.
async fn delete(id: String, p: Principal, api: Shared) -> R {
    instance(&api, &p, &id).await?;
    api.runtime.delete(&id).await?;
    let instance_id = id.clone();
    api.sockets.revoke(Revocation::Tokens { instance_id });
    let instance_id = id.clone();
    let reason = "instance deleted";
    api.sockets.revoke(Revocation::Instance {
        instance_id,
        reason,
    });
    Ok(ok("Instance deleted", json!({"instanceId": id})))
}

/// `POST /api/instances/:id/token`: a new token for the instance.
async fn new_token(id: String, p: Principal, api: Shared) -> R {
    instance(&api, &p, &id).await?;
    let token = api.auth.issue_instance_token(&id).await?;
    Ok(ok(
        "Token issued",
        json!({"instanceId": id, "token": token}),
    ))
}

/// `DELETE /api/instances/:id/token`: revokes every token of the instance.
async fn revoke_tokens(id: String, p: Principal, api: Shared) -> R {
    instance(&api, &p, &id).await?;
    let n = api.auth.tokens().revoke_all(&id).await?;
    let instance_id = id.clone();
    api.sockets.revoke(Revocation::Tokens { instance_id });
    Ok(ok(
        "Tokens revoked",
        json!({"instanceId": id, "revoked": n}),
    ))
}
