//! The API description: an OpenAPI 3.0 document built from one table of routes
//! ([`ROUTES`]), served at `GET /api/openapi.json` (auth like every `/api` route),
//! and a self-contained docs page at `GET /docs` (static HTML, no data: it asks for a
//! token and fetches the document with it; nothing is loaded from the internet).

use super::Shared;
use serde_json::{json, Map, Value};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

/// A request body kind.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    None,
    /// JSON with these (field, type, required) entries.
    Json(&'static [(&'static str, &'static str, bool)]),
    /// multipart/form-data with these (field, type, required) entries; `file` is binary.
    Multipart(&'static [(&'static str, &'static str, bool)]),
}

/// One documented route.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    pub method: &'static str,
    /// OpenAPI path (`{id}` for parameters).
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub auth: bool,
    pub body: Body,
    /// Error codes this route can answer with (beyond auth, rate limit and 500).
    pub errors: &'static [&'static str],
}

const TEXT: &[(&str, &str, bool)] = &[("to", "string", true), ("message", "string", true)];
const MEDIA_URL: &[(&str, &str, bool)] = &[
    ("to", "string", true),
    ("mediaUrl", "string", true),
    ("caption", "string", false),
    ("mediaType", "string", false),
    ("fileName", "string", false),
];
const MEDIA_FILE: &[(&str, &str, bool)] = &[
    ("to", "string", true),
    ("file", "binary", true),
    ("caption", "string", false),
    ("mediaType", "string", false),
];
const GROUP_TEXT: &[(&str, &str, bool)] =
    &[("groupJid", "string", true), ("message", "string", true)];
const GROUP_URL: &[(&str, &str, bool)] = &[
    ("groupJid", "string", true),
    ("mediaUrl", "string", true),
    ("caption", "string", false),
    ("mediaType", "string", false),
    ("fileName", "string", false),
];
const GROUP_FILE: &[(&str, &str, bool)] = &[
    ("groupJid", "string", true),
    ("file", "binary", true),
    ("caption", "string", false),
    ("mediaType", "string", false),
];
const SEND_ERRORS: &[&str] = &[
    "VALIDATION_ERROR",
    "INVALID_REQUEST",
    "FORBIDDEN",
    "SESSION_NOT_FOUND",
    "NOT_CONNECTED",
    "NOT_LOGGED_IN",
    "INVALID_PHONE",
    "PHONE_NOT_REGISTERED",
    "VERIFICATION_FAILED",
    "SEND_FAILED",
    "INSTANCE_BUSY",
];
const MEDIA_ERRORS: &[&str] = &[
    "VALIDATION_ERROR",
    "INVALID_REQUEST",
    "FORBIDDEN",
    "SESSION_NOT_FOUND",
    "NOT_CONNECTED",
    "NOT_LOGGED_IN",
    "INVALID_PHONE",
    "PHONE_NOT_REGISTERED",
    "VERIFICATION_FAILED",
    "FILE_REQUIRED",
    "FILE_TOO_LARGE",
    "DOWNLOAD_FAILED",
    "UPLOAD_FAILED",
    "SEND_FAILED",
    "INSTANCE_BUSY",
    "SERVER_BUSY",
];
const BY_NUMBER: &[&str] = &["NO_ACTIVE_INSTANCE", "INVALID_PHONE", "FORBIDDEN"];
const GROUP_ERRORS: &[&str] = &[
    "VALIDATION_ERROR",
    "SESSION_NOT_FOUND",
    "NOT_CONNECTED",
    "NOT_LOGGED_IN",
    "INVALID_GROUP_JID",
    "SEND_FAILED",
    "INSTANCE_BUSY",
    "FORBIDDEN",
];
const INSTANCE: &[&str] = &["SESSION_NOT_FOUND", "FORBIDDEN"];

macro_rules! route {
    ($m:literal, $p:literal, $tag:literal, $s:literal, $auth:expr, $body:expr, $err:expr) => {
        RouteDoc {
            method: $m,
            path: $p,
            tag: $tag,
            summary: $s,
            auth: $auth,
            body: $body,
            errors: $err,
        }
    };
}

/// Every route the server serves.
pub const ROUTES: &[RouteDoc] = &[
    route!("get", "/", "health", "Health check (public)", false, Body::None, &[]),
    route!("get", "/docs", "docs", "This documentation as a web page (public, static)", false, Body::None, &[]),
    route!("get", "/api/openapi.json", "docs", "This document", true, Body::None, &[]),
    route!("post", "/login-jwt", "auth", "Exchange the login credentials for an admin JWT (public)", false,
        Body::Json(&[("username", "string", true), ("password", "string", true)]), &["VALIDATION_ERROR", "INVALID_CREDENTIALS", "RATE_LIMITED"]),
    route!("get", "/api/validate", "auth", "Check a token", true, Body::None, &[]),
    route!("post", "/api/login", "instances", "Create an instance (admin); returns its instance token", true,
        Body::Json(&[("device_name", "string", false)]), &["VALIDATION_ERROR", "FORBIDDEN"]),
    route!("get", "/api/instances", "instances", "List instances (connected ones unless ?all=true)", true, Body::None, &[]),
    route!("get", "/api/status/{id}", "instances", "Status of an instance", true, Body::None, INSTANCE),
    route!("post", "/api/logout/{id}", "instances", "Unlink the device and wipe its keys; the instance stays", true, Body::None, INSTANCE),
    route!("delete", "/api/instances/{id}", "instances", "Delete an instance (refused while connected)", true, Body::None,
        &["SESSION_NOT_FOUND", "FORBIDDEN", "INSTANCE_STILL_CONNECTED"]),
    route!("post", "/api/instances/{id}/token", "instances", "Issue another instance token", true, Body::None, INSTANCE),
    route!("delete", "/api/instances/{id}/token", "instances", "Revoke every token of the instance", true, Body::None, INSTANCE),
    route!("post", "/api/instances/{id}/resume", "instances", "Start a crashed (parked) instance again", true, Body::None,
        &["SESSION_NOT_FOUND", "FORBIDDEN", "INSTANCE_NOT_CRASHED"]),
    route!("get", "/api/qr/{id}", "qr", "Start (or join) the QR login and get the current code", true, Body::None,
        &["SESSION_NOT_FOUND", "FORBIDDEN", "QR_IN_PROGRESS"]),
    route!("get", "/api/qr/{id}/image", "qr", "The current QR code as image/png", true, Body::None,
        &["SESSION_NOT_FOUND", "FORBIDDEN", "NO_QR_SESSION"]),
    route!("delete", "/api/qr-cancel/{id}", "qr", "Cancel the running QR login", true, Body::None,
        &["SESSION_NOT_FOUND", "FORBIDDEN", "NO_QR_SESSION"]),
    route!("post", "/api/send/{id}", "messages", "Send a text", true, Body::Json(TEXT), SEND_ERRORS),
    route!("post", "/api/check/{id}", "messages", "Is a number on WhatsApp?", true,
        Body::Json(&[("phone", "string", true)]), SEND_ERRORS),
    route!("post", "/api/send/{id}/media", "messages", "Send an uploaded file", true, Body::Multipart(MEDIA_FILE), MEDIA_ERRORS),
    route!("post", "/api/send/{id}/media-url", "messages", "Send a file fetched from a URL", true, Body::Json(MEDIA_URL), MEDIA_ERRORS),
    route!("post", "/api/by-number/{phone}", "by-number", "Send a text from the instance whose number is {phone}", true, Body::Json(TEXT), BY_NUMBER),
    route!("post", "/api/by-number/{phone}/media-url", "by-number", "Send a file from a URL, by sender number", true, Body::Json(MEDIA_URL), BY_NUMBER),
    route!("post", "/api/by-number/{phone}/media-file", "by-number", "Send an uploaded file, by sender number", true, Body::Multipart(MEDIA_FILE), BY_NUMBER),
    route!("post", "/api/send/by-number/{phone}", "by-number", "Alias of /api/by-number/{phone}", true, Body::Json(TEXT), BY_NUMBER),
    route!("post", "/api/send/by-number/{phone}/media-url", "by-number", "Alias of /api/by-number/{phone}/media-url", true, Body::Json(MEDIA_URL), BY_NUMBER),
    route!("post", "/api/send/by-number/{phone}/media-file", "by-number", "Alias of /api/by-number/{phone}/media-file", true, Body::Multipart(MEDIA_FILE), BY_NUMBER),
    route!("get", "/api/groups/{id}", "groups", "Groups the instance is in", true, Body::None, GROUP_ERRORS),
    route!("get", "/api/groups/by-number/{phone}", "groups", "Groups, by sender number", true, Body::None, BY_NUMBER),
    route!("post", "/api/send-group/{id}", "groups", "Send a text to a group", true, Body::Json(GROUP_TEXT), GROUP_ERRORS),
    route!("post", "/api/send-group/{id}/media", "groups", "Send an uploaded file to a group", true, Body::Multipart(GROUP_FILE), MEDIA_ERRORS),
    route!("post", "/api/send-group/{id}/media-url", "groups", "Send a file from a URL to a group", true, Body::Json(GROUP_URL), MEDIA_ERRORS),
    route!("post", "/api/send-group/by-number/{phone}", "groups", "Send a text to a group, by sender number", true, Body::Json(GROUP_TEXT), BY_NUMBER),
    route!("post", "/api/send-group/by-number/{phone}/media", "groups", "Send an uploaded file to a group, by sender number", true, Body::Multipart(GROUP_FILE), BY_NUMBER),
    route!("post", "/api/send-group/by-number/{phone}/media-url", "groups", "Send a file from a URL to a group, by sender number", true, Body::Json(GROUP_URL), BY_NUMBER),
    route!("post", "/api/instances/{id}/webhook-setconfig", "webhooks", "Set the webhook URL and secret (empty url: off)", true,
        Body::Json(&[("url", "string", true), ("secret", "string", false), ("events", "array", false)]), &["VALIDATION_ERROR", "INVALID_WEBHOOK_URL", "SESSION_NOT_FOUND", "FORBIDDEN"]),
    route!("get", "/api/instances/{id}/webhooks", "webhooks", "Recent webhook deliveries", true, Body::None, INSTANCE),
    route!("post", "/api/instances/{id}/webhooks/{delivery}/redeliver", "webhooks", "Deliver one event again", true, Body::None,
        &["SESSION_NOT_FOUND", "FORBIDDEN", "DELIVERY_NOT_FOUND", "PAYLOAD_EXPIRED"]),
    route!("get", "/api/instances/{id}/messages", "log", "The message log, newest first (query: chat, direction=in|out, since, before, limit 1-500, cursor)", true, Body::None,
        &["VALIDATION_ERROR", "SESSION_NOT_FOUND", "FORBIDDEN"]),
    route!("get", "/api/instances/{id}/messages/{messageId}", "log", "One message with its status timeline", true, Body::None,
        &["SESSION_NOT_FOUND", "FORBIDDEN", "MESSAGE_NOT_FOUND"]),
    route!("get", "/api/instances/{id}/events", "log", "The instance's events from the durable log, oldest first (query: after=cursor, limit 1-1000)", true, Body::None,
        &["VALIDATION_ERROR", "SESSION_NOT_FOUND", "FORBIDDEN"]),
    route!("get", "/ws", "events", "WebSocket: lifecycle events (QR_GENERATED, QR_SUCCESS, QR_TIMEOUT, QR_CANCELLED, INSTANCE_STATUS_CHANGED, INSTANCE_ERROR)", true, Body::None, &["RATE_LIMITED"]),
    route!("get", "/api/listen/{id}", "events", "WebSocket: the instance's incoming_message and message_status events (?after=cursor replays the stored ones first)", true, Body::None,
        &["SESSION_NOT_FOUND", "FORBIDDEN", "WEBSOCKET_DISABLED", "RATE_LIMITED"]),
];

/// The methods the route table serves on `path` (upper case, `GET` also answering
/// `HEAD`), empty for a path it does not know.
pub fn methods_for(path: &str) -> Vec<&'static str> {
    let given: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut out: Vec<&'static str> = Vec::new();
    for r in ROUTES {
        let templ: Vec<&str> = r.path.trim_end_matches('/').split('/').collect();
        let matches = templ.len() == given.len()
            && templ.iter().zip(&given).all(|(t, g)| {
                if t.starts_with('{') {
                    !g.is_empty()
                } else {
                    t == g
                }
            });
        if matches {
            let m = match r.method {
                "get" => "GET",
                "post" => "POST",
                "delete" => "DELETE",
                "put" => "PUT",
                _ => continue,
            };
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

fn status_of(code: &str) -> u16 {
    match code {
        "SESSION_NOT_FOUND" | "NO_QR_SESSION" | "NO_ACTIVE_INSTANCE" | "DELIVERY_NOT_FOUND"
        | "MESSAGE_NOT_FOUND" => 404,
        "FORBIDDEN" | "WEBSOCKET_DISABLED" => 403,
        "QR_IN_PROGRESS"
        | "IDEMPOTENCY_KEY_REUSED"
        | "IDEMPOTENCY_KEY_IN_PROGRESS"
        | "INSTANCE_NOT_CRASHED" => 409,
        "VERIFICATION_FAILED" | "SEND_FAILED" | "UPLOAD_FAILED" => 500,
        "INVALID_CREDENTIALS" => 401,
        "INSTANCE_BUSY" | "SERVER_BUSY" => 503,
        "PAYLOAD_EXPIRED" => 410,
        "RATE_LIMITED" => 429,
        _ => 400,
    }
}

/// A route that sends a message (and so takes an `Idempotency-Key`).
fn is_send(r: &RouteDoc) -> bool {
    r.method == "post" && (r.path.starts_with("/api/send") || r.path.starts_with("/api/by-number"))
}

/// The query parameters of the log routes.
fn query_params(r: &RouteDoc) -> Vec<(&'static str, Value)> {
    let int = |min: i64, max: i64| json!({"type": "integer", "minimum": min, "maximum": max});
    match (r.method, r.path) {
        ("get", "/api/instances/{id}/messages") => vec![
            ("chat", json!({"type": "string"})),
            (
                "direction",
                json!({"type": "string", "enum": ["in", "out"]}),
            ),
            (
                "since",
                json!({"type": "string", "description": "RFC 3339 or unix milliseconds"}),
            ),
            (
                "before",
                json!({"type": "string", "description": "RFC 3339 or unix milliseconds"}),
            ),
            ("limit", int(1, 500)),
            (
                "cursor",
                json!({"type": "string", "description": "nextCursor of the previous page"}),
            ),
        ],
        ("get", "/api/instances/{id}/events") => vec![
            (
                "after",
                json!({"type": "string", "description": "an event cursor; 0 or absent: from the start"}),
            ),
            ("limit", int(1, 1000)),
        ],
        ("get", "/api/listen/{id}") => vec![(
            "after",
            json!({"type": "string", "description": "replay the stored events after this cursor first"}),
        )],
        _ => Vec::new(),
    }
}

fn body_schema(fields: &[(&str, &str, bool)]) -> Value {
    let mut props = Map::new();
    for (name, ty, _) in fields {
        let schema = if *ty == "binary" {
            json!({"type": "string", "format": "binary"})
        } else if *ty == "array" {
            json!({"type": "array", "items": {"type": "string"}})
        } else {
            json!({"type": ty})
        };
        props.insert((*name).to_string(), schema);
    }
    let required: Vec<&str> = fields.iter().filter(|f| f.2).map(|f| f.0).collect();
    let mut s = json!({"type": "object", "properties": props});
    if !required.is_empty() {
        s["required"] = json!(required);
    }
    s
}

/// The OpenAPI 3.0 document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let mut op = json!({
            "summary": r.summary,
            "tags": [r.tag],
            "operationId": format!("{}_{}", r.method, r.path.trim_matches('/').replace(['/', '{', '}', '.', '-'], "_")),
        });
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut params = params;
        if r.path == "/api/instances" && r.method == "get" {
            params.push(json!({"name": "all", "in": "query", "required": false, "schema": {"type": "boolean"}}));
        }
        for (name, schema) in query_params(r) {
            params.push(json!({"name": name, "in": "query", "required": false, "schema": schema}));
        }
        if is_send(r) {
            params.push(json!({
                "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "1-255 printable ASCII characters: repeats of the request with the same key send nothing and get the first answer (header Idempotent-Replayed: true)",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }));
        }
        if !params.is_empty() {
            op["parameters"] = json!(params);
        }
        match r.body {
            Body::None => {}
            Body::Json(f) => {
                op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": body_schema(f)}}})
            }
            Body::Multipart(f) => {
                op["requestBody"] = json!({"required": true, "content": {"multipart/form-data": {"schema": body_schema(f)}}})
            }
        }
        let mut responses = Map::new();
        let ok_content = if r.path.ends_with("/image") {
            json!({"image/png": {"schema": {"type": "string", "format": "binary"}}})
        } else {
            json!({"application/json": {"schema": {"$ref": "#/components/schemas/Success"}}})
        };
        let ok_desc = if r.tag == "events" {
            "WebSocket upgrade (101); events as JSON text frames"
        } else {
            "Success"
        };
        responses.insert(
            "200".into(),
            json!({"description": ok_desc, "content": ok_content}),
        );
        let mut by_status: std::collections::BTreeMap<u16, Vec<&str>> = Default::default();
        let idempotency: &[&str] = if is_send(r) {
            &["IDEMPOTENCY_KEY_REUSED", "IDEMPOTENCY_KEY_IN_PROGRESS"]
        } else {
            &[]
        };
        for c in r.errors.iter().chain(idempotency) {
            by_status.entry(status_of(c)).or_default().push(c);
        }
        if r.auth {
            by_status.entry(401).or_default().push("UNAUTHORIZED");
        }
        if r.path != "/" {
            by_status.entry(429).or_default().push("RATE_LIMITED");
        }
        if r.body.is_some() {
            by_status.entry(413).or_default().push("PAYLOAD_TOO_LARGE");
        }
        for (status, codes) in by_status {
            responses.insert(
                status.to_string(),
                json!({"description": codes.join(", "), "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
            );
        }
        op["responses"] = Value::Object(responses);
        if r.auth {
            op["security"] = json!([{"bearer": []}]);
        } else {
            op["security"] = json!([]);
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "sudevwa",
            "version": super::VERSION,
            "description": "Self-hosted multi-instance WhatsApp HTTP API (SUDEVWA-compatible). Every failure uses the Error envelope. Tokens: admin JWT from /login-jwt, admin API keys from config, or an instance token (that instance only).",
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Success": {"type": "object", "required": ["success", "message"], "properties": {
                    "success": {"type": "boolean"}, "message": {"type": "string"}, "data": {"type": "object"}}},
                "Error": {"type": "object", "required": ["success", "message", "error"], "properties": {
                    "success": {"type": "boolean"}, "message": {"type": "string"},
                    "error": {"type": "object", "required": ["code", "details"], "properties": {
                        "code": {"type": "string"}, "details": {"type": "string"}}}}},
            },
        },
        "paths": paths,
    })
}

impl Body {
    fn is_some(&self) -> bool {
        !matches!(self, Body::None)
    }
}

const DOCS_HTML: &str = include_str!("docs.html");

/// `GET /api/openapi.json` (authenticated) and `GET /docs` (static page).
pub fn routes(api: Shared) -> BoxedFilter<(Response,)> {
    let doc = warp::path!("api" / "openapi.json")
        .and(warp::get())
        .and(super::authed(api))
        .map(|_p| warp::reply::json(&document()).into_response());
    let page = warp::path!("docs")
        .and(warp::get())
        .map(|| warp::reply::html(DOCS_HTML).into_response());
    doc.or(page).unify().boxed()
}
