//! Webhook settings and deliveries: `POST /api/instances/:id/webhook-setconfig`,
//! the delivery log and redelivery. Delivery itself (outbox, worker, signatures)
//! lives in `src/webhook/`.

use super::table::Table;
use super::{guard, instance, json, parse, R};
use crate::http::auth::Principal;
use crate::http::error::{capitalize, ApiError};
use crate::http::openapi::{doc, Body, INSTANCE};
use crate::http::schema;
use crate::http::util::ok;
use crate::http::Shared;
use crate::net::fetch;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;

pub(super) fn routes(api: &Shared) -> Table {
    let mut t = Table::default();
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/instances/{id}/webhook-setconfig",
            "webhooks",
            "Set the webhook URL, secret and events (empty url: off)",
            true,
            Body::OptionalJson(schema::of::<WebhookBody>()),
            &[
                "VALIDATION_ERROR",
                "INVALID_WEBHOOK_URL",
                "SESSION_NOT_FOUND",
                "FORBIDDEN"
            ]
        ),
        setconfig,
        json()
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "get",
            "/api/instances/{id}/webhooks",
            "webhooks",
            "Recent webhook deliveries",
            true,
            Body::None,
            INSTANCE
        ),
        log
    );
    declare!(
        t,
        api,
        at2,
        doc(
            "post",
            "/api/instances/{id}/webhooks/{delivery}/redeliver",
            "webhooks",
            "Deliver one event again",
            true,
            Body::None,
            &[
                "SESSION_NOT_FOUND",
                "FORBIDDEN",
                "DELIVERY_NOT_FOUND",
                "PAYLOAD_EXPIRED"
            ]
        ),
        redeliver
    );
    t
}

/// A webhook's settings; each field left out keeps its value.
#[derive(Deserialize, Default, ToSchema)]
struct WebhookBody {
    #[schema(schema_with = schema::webhook_url)]
    url: Option<String>,
    #[schema(schema_with = schema::secret)]
    secret: Option<String>,
    /// Event names the webhook takes (absent: the message events).
    #[schema(schema_with = schema::events)]
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

/// `POST /api/instances/:id/webhook-setconfig`: `{url, secret?, events?}`; an empty
/// url turns the webhook off.
async fn setconfig(id: String, p: Principal, body: Bytes, api: Shared) -> R {
    guard(&p, &id)?;
    may_set_url(&api, &p)?;
    let b: WebhookBody = parse(&body)?;
    let events = webhook_events(&b.events)?;
    let url = b.url.map(|u| u.trim().to_string()).unwrap_or_default();
    instance(&api, &p, &id).await?;
    if url.is_empty() {
        api.instances.set_webhook(&id, None, None).await?;
        api.instances.set_webhook_events(&id, None).await?;
        let data = json!({"instanceId": id, "webhookUrl": null, "secret": null, "events": events_shown(&None)});
        return Ok(ok("Webhook removed", data));
    }
    checked_url(&api, &url).await?;
    let secret = secret_or_new(b.secret)?;
    api.instances
        .set_webhook(&id, Some(&url), Some(&secret))
        .await?;
    api.instances
        .set_webhook_events(&id, events.as_deref())
        .await?;
    Ok(configured(&api, &id, &url, &secret, &events))
}

/// The answer to a configured webhook (the secret in both forms it is used in).
fn configured(
    api: &Shared,
    id: &str,
    url: &str,
    secret: &str,
    events: &Option<Vec<String>>,
) -> Response {
    ok(
        "Webhook configured",
        json!({
            "instanceId": id,
            "webhookUrl": url,
            "secret": secret,
            "standardWebhooksSecret": crate::webhook::standard_secret(secret),
            "events": events_shown(events),
            "enabled": api.config.features.enable_webhook,
        }),
    )
}

/// Instance tokens may set URLs unless `webhook.instance_tokens_set_url = false`.
fn may_set_url(api: &Shared, p: &Principal) -> Result<(), ApiError> {
    if p.is_admin() || api.config.webhook.instance_tokens_set_url {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
        "On this server only an admin may set webhook URLs (webhook.instance_tokens_set_url = false)",
    ))
}

/// A webhook URL the SSRF policy lets through (`INVALID_WEBHOOK_URL` otherwise).
async fn checked_url(api: &Shared, url: &str) -> Result<(), ApiError> {
    let parsed = url::Url::parse(url)
        .map_err(|_| ApiError::bad_request("VALIDATION_ERROR", "url is not a valid URL"))?;
    let w = &api.config.webhook;
    fetch::check_url(&parsed, &w.allowed_targets, &w.allowed_ports)
        .await
        .map_err(|e| ApiError::bad_request("INVALID_WEBHOOK_URL", capitalize(&e.to_string())))?;
    Ok(())
}

/// The given secret (16-256 characters), or a new random one.
fn secret_or_new(secret: Option<String>) -> Result<String, ApiError> {
    match secret
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
    {
        Some(s) if !(16..=256).contains(&s.chars().count()) => Err(ApiError::bad_request(
            "VALIDATION_ERROR",
            "secret must be 16-256 characters (or omitted to generate one)",
        )),
        Some(s) => Ok(s),
        None => Ok(hex::encode(rand::random::<[u8; 32]>())),
    }
}

/// `GET /api/instances/:id/webhooks`: recent deliveries.
async fn log(id: String, p: Principal, api: Shared) -> R {
    instance(&api, &p, &id).await?;
    let items = match &api.webhooks {
        Some(o) => o.recent(&id, 100).await?,
        None => Vec::new(),
    };
    Ok(ok(
        "Webhook deliveries",
        json!({"total": items.len(), "deliveries": items, "enabled": api.config.features.enable_webhook}),
    ))
}

/// `POST /api/instances/:id/webhooks/:delivery/redeliver`.
async fn redeliver(id: String, delivery: String, p: Principal, api: Shared) -> R {
    use crate::webhook::{RedeliverRule, Redelivery};
    let row = instance(&api, &p, &id).await?;
    let rule = RedeliverRule {
        admin: p.is_admin(),
        current_url: row.webhook_url.clone(),
    };
    let outcome = match &api.webhooks {
        Some(o) => o.redeliver(&id, &delivery, &rule).await?,
        None => Redelivery::NotFound,
    };
    if let Some(e) = refused(outcome) {
        return Err(e);
    }
    Ok(ok(
        "Delivery queued again",
        json!({"instanceId": id, "id": delivery}),
    ))
}

/// Why a redelivery was refused, if it was.
fn refused(outcome: crate::webhook::Redelivery) -> Option<ApiError> {
    use crate::webhook::Redelivery as D;
    let (status, code, message) = match outcome {
        D::Queued => return None,
        D::NotFound => (StatusCode::NOT_FOUND, "DELIVERY_NOT_FOUND", "No such delivery"),
        D::PayloadExpired => (
            StatusCode::GONE,
            "PAYLOAD_EXPIRED",
            "This event's payload is past its retention (webhook.payload_retention_secs); it cannot be sent again",
        ),
        D::UrlChanged => (
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "The webhook URL changed since this event was queued; only an admin may send it again",
        ),
    };
    Some(ApiError::new(status, code, message))
}
