//! The message log (`GET /api/instances/:id/messages[/:messageId]`, with status
//! timelines) and the durable event log (`GET /api/instances/:id/events`).

use super::table::Table;
use super::{instance, R};
use crate::http::auth::Principal;
use crate::http::error::ApiError;
use crate::http::openapi::{doc, Body};
use crate::http::util::ok;
use crate::http::Shared;
use serde_json::{json, Value};
use std::collections::HashMap;
use warp::http::StatusCode;

pub(super) fn routes(api: &Shared) -> Table {
    use warp::Filter;
    let mut t = Table::default();
    let raw_query = || warp::query::raw().or(warp::any().map(String::new)).unify();
    declare!(t, api, at1, doc("get", "/api/instances/{id}/messages", "log", "The message log, newest first (query: chat, direction=in|out, since, before, limit 1-500, cursor)", true, Body::None,
        &["VALIDATION_ERROR", "SESSION_NOT_FOUND", "FORBIDDEN"]), messages_list, raw_query());
    declare!(
        t,
        api,
        at2,
        doc(
            "get",
            "/api/instances/{id}/messages/{messageId}",
            "log",
            "One message with its status timeline",
            true,
            Body::None,
            &["SESSION_NOT_FOUND", "FORBIDDEN", "MESSAGE_NOT_FOUND"]
        ),
        message_get
    );
    declare!(t, api, at1, doc("get", "/api/instances/{id}/events", "log", "The instance's events from the durable log, oldest first (query: after=cursor, limit 1-1000)", true, Body::None,
        &["VALIDATION_ERROR", "SESSION_NOT_FOUND", "FORBIDDEN"]), events_list, raw_query());
    t
}

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
async fn messages_list(id: String, p: Principal, query: String, api: Shared) -> R {
    let mq = message_query(&query)?;
    let row = instance(&api, &p, &id).await?;
    let page = api.journal.list_messages(&row.id, &mq).await?;
    Ok(ok(
        "Messages",
        json!({
            "instanceId": row.id,
            "messages": page.messages,
            "nextCursor": page.next_cursor.map(|c| c.to_string()),
        }),
    ))
}

/// The filters of `GET /api/instances/:id/messages`, checked.
fn message_query(query: &str) -> Result<crate::store::journal::MessageQuery, ApiError> {
    let q = query_pairs(query);
    let direction = match q.get("direction").map(String::as_str) {
        None => None,
        Some(d @ ("in" | "out")) => Some(d.to_string()),
        Some(_) => return Err(bad_query("direction", "in or out")),
    };
    Ok(crate::store::journal::MessageQuery {
        chat: q.get("chat").filter(|c| !c.is_empty()).cloned(),
        direction,
        since: time_param(&q, "since")?,
        before: time_param(&q, "before")?,
        limit: int_param(&q, "limit", 1, 500)?.unwrap_or(50) as u64,
        cursor: int_param(&q, "cursor", 0, i64::MAX)?,
    })
}

/// `GET /api/instances/:id/messages/:messageId`: one message with its status timeline.
async fn message_get(id: String, message_id: String, p: Principal, api: Shared) -> R {
    let row = instance(&api, &p, &id).await?;
    match api.journal.get_message(&row.id, &message_id).await? {
        Some(m) => Ok(ok("Message", m)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "MESSAGE_NOT_FOUND",
            "No such message in this instance's log",
        )),
    }
}

/// `GET /api/instances/:id/events?after=&limit=`: the durable event log, oldest first.
async fn events_list(id: String, p: Principal, query: String, api: Shared) -> R {
    let q = query_pairs(&query);
    let after = int_param(&q, "after", 0, i64::MAX)?.unwrap_or(0);
    let limit = int_param(&q, "limit", 1, 1000)?.unwrap_or(100) as u64;
    let row = instance(&api, &p, &id).await?;
    let events = api
        .journal
        .events_after(&row.id, after, limit, None)
        .await?;
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
