//! The QR login over HTTP: `GET /api/qr/:id` starts (or joins) the flow and answers
//! the code (the actor waits briefly for the first one), `GET /api/qr/:id/image` the
//! code as PNG, `DELETE /api/qr-cancel/:id` ends the flow. The flow itself lives in
//! the actor (`actors/src/instance/qr.rs`).

use super::table::Table;
use super::{instance, R};
use crate::http::auth::Principal;
use crate::http::error::ApiError;
use crate::http::openapi::{doc, Body};
use crate::http::util::ok;
use crate::http::Shared;
use crate::runtime::QrStart;
use actors::instance::InstanceError;
use actors::lifecycle::LifecycleError;
use serde_json::json;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::http::HeaderValue;
use warp::reply::Response;

pub(super) fn routes(api: &Shared) -> Table {
    let mut t = Table::default();
    declare!(
        t,
        api,
        at1,
        doc(
            "get",
            "/api/qr/{id}",
            "qr",
            "Start (or join) the QR login and get the current code",
            true,
            Body::None,
            &["SESSION_NOT_FOUND", "FORBIDDEN", "QR_IN_PROGRESS"]
        ),
        qr
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "get",
            "/api/qr/{id}/image",
            "qr",
            "The current QR code as image/png",
            true,
            Body::None,
            &["SESSION_NOT_FOUND", "FORBIDDEN", "NO_QR_SESSION"]
        ),
        qr_image
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/pair-code/{id}",
            "qr",
            "Start (or join) the login and get a pairing code to type on the phone",
            true,
            Body::Json(crate::http::schema::of::<PairCodeBody>()),
            &[
                "VALIDATION_ERROR",
                "INVALID_REQUEST",
                "INVALID_PHONE",
                "SESSION_NOT_FOUND",
                "FORBIDDEN",
                "QR_IN_PROGRESS",
                "ALREADY_CONNECTED",
                "PAIR_CODE_FAILED"
            ]
        ),
        pair_code,
        super::json()
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "delete",
            "/api/qr-cancel/{id}",
            "qr",
            "Cancel the running QR login",
            true,
            Body::None,
            &["SESSION_NOT_FOUND", "FORBIDDEN", "NO_QR_SESSION"]
        ),
        qr_cancel
    );
    t
}

fn no_qr() -> ApiError {
    InstanceError::Lifecycle(LifecycleError::NoQrSession).into()
}

/// Starts (or joins) the QR flow of an existing instance (the sandbox's scan uses it too).
pub(crate) async fn start_qr(api: &Shared, id: &str) -> Result<QrStart, ApiError> {
    Ok(api.runtime.ensure_handle(id).await?.start_qr().await?)
}

/// `GET /api/qr/:id`: starts (or joins) the QR flow and returns the current code.
async fn qr(id: String, p: Principal, api: Shared) -> R {
    instance(&api, &p, &id).await?;
    let code = match start_qr(&api, &id).await? {
        QrStart::Connected(jid) => {
            let data = json!({"status": "already_connected", "instance_id": id, "jid": jid});
            return Ok(ok("Instance is already connected", data));
        }
        QrStart::Code(code) => code,
    };
    let timeout = api.config.whatsapp.qr_timeout.as_secs();
    let mut data = json!({"status": "generating", "instance_id": id, "timeout": timeout});
    if let Some(code) = code {
        data["qr"] = json!(code.code);
        data["expires_at"] = json!(actors::events::rfc3339(code.expires_at));
    }
    Ok(ok("QR login started; scan the code with WhatsApp", data))
}

/// The number to link.
#[derive(serde::Deserialize, Default, utoipa::ToSchema)]
struct PairCodeBody {
    /// The phone number of the WhatsApp account to link (country code included).
    #[schema(value_type = String, required = true, pattern = "{phone}")]
    phone: Option<String>,
}

/// `POST /api/pair-code/:id`: starts (or joins) the login flow and returns a pairing
/// code for the phone (also sent on `/ws` as `PAIR_CODE`).
async fn pair_code(id: String, p: Principal, body: bytes::Bytes, api: Shared) -> R {
    super::guard(&p, &id)?;
    let raw = super::required(&super::parse::<PairCodeBody>(&body)?.phone, "phone")?;
    let phone =
        crate::http::util::normalize_phone(&raw, &api.config.whatsapp.default_country_code)?;
    instance(&api, &p, &id).await?;
    let code = api
        .runtime
        .ensure_handle(&id)
        .await?
        .start_pair_code(phone)
        .await?;
    let timeout = api.config.whatsapp.qr_timeout.as_secs();
    Ok(ok(
        "Pairing code issued; type it on the phone (Linked devices, link with phone number)",
        json!({
            "status": "pairing",
            "instance_id": id,
            "phone": code.phone,
            "code": code.code,
            "expires_at": actors::events::rfc3339(code.expires_at),
            "timeout": timeout,
        }),
    ))
}

/// `GET /api/qr/:id/image`: the current code as PNG.
async fn qr_image(id: String, p: Principal, api: Shared) -> R {
    instance(&api, &p, &id).await?;
    let handle = api.runtime.handle(&id).ok_or_else(no_qr)?;
    let code = handle.status().await?.qr.ok_or_else(no_qr)?;
    let png = crate::http::qr::png(&code.code).map_err(|e| {
        tracing::error!(error = %e, "rendering a QR code failed");
        ApiError::internal()
    })?;
    let mut r = Response::new(png.into());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("image/png"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `DELETE /api/qr-cancel/:id`.
async fn qr_cancel(id: String, p: Principal, api: Shared) -> R {
    instance(&api, &p, &id).await?;
    api.runtime
        .handle(&id)
        .ok_or_else(no_qr)?
        .cancel_qr()
        .await?;
    Ok(ok(
        "QR login cancelled",
        json!({"instance_id": id, "status": "cancelled"}),
    ))
}
