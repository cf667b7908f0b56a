//! The API description: an OpenAPI 3.0 document built from one table of routes
//! (the route declarations, see `routes/table.rs`), served at `GET /api/openapi.json` (auth like every `/api` route),
//! and a self-contained docs page at `GET /docs` (static HTML, no data: it asks for a
//! token and fetches the document with it; nothing is loaded from the internet).

use super::Shared;
use serde_json::{json, Map, Value};
use warp::{Filter, Reply};

/// What a body field takes: each kind states the rule the server enforces on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// A required string with at least one non-blank character.
    Text,
    /// An optional free string.
    Str,
    /// A phone number: digits with optional `+ -.()` and spaces, 10-15 digits once a
    /// leading `0` becomes the default country code.
    Phone,
    /// A group JID: `<digits>@g.us` or `<digits>-<digits>@g.us`.
    GroupJid,
    /// `image`, `video`, `audio`, `document` or `file` (any case), or empty.
    MediaType,
    /// A URL (http or https).
    Url,
    /// A webhook URL; empty turns the webhook off.
    WebhookUrl,
    /// A webhook secret: 16-256 characters, or empty to have one generated.
    Secret,
    /// Event names (`*` or known names), at least one.
    Events,
    /// A device name: up to 64 characters, no control characters.
    DeviceName,
    /// A non-empty password.
    Password,
    /// The uploaded file.
    Binary,
}

pub type Fields = &'static [(&'static str, Field, bool)];

/// A request body kind.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    None,
    /// JSON with these (field, kind, required) entries; the body itself is required.
    Json(Fields),
    /// JSON that may be left out (every field optional).
    OptionalJson(Fields),
    /// multipart/form-data with these (field, kind, required) entries.
    Multipart(Fields),
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
    /// Only admin credentials may call it (`x-admin-only` in the document).
    pub admin_only: bool,
    pub body: Body,
    /// Error codes this route can answer with (beyond auth, rate limit and 500).
    pub errors: &'static [&'static str],
}

pub const TEXT: Fields = &[("to", Field::Phone, true), ("message", Field::Text, true)];
pub const MEDIA_URL: Fields = &[
    ("to", Field::Phone, true),
    ("mediaUrl", Field::Url, true),
    ("caption", Field::Str, false),
    ("mediaType", Field::MediaType, false),
    ("fileName", Field::Str, false),
];
pub const MEDIA_FILE: Fields = &[
    ("to", Field::Phone, true),
    ("file", Field::Binary, true),
    ("caption", Field::Str, false),
    ("mediaType", Field::MediaType, false),
];
pub const GROUP_TEXT: Fields = &[
    ("groupJid", Field::GroupJid, true),
    ("message", Field::Text, true),
];
pub const GROUP_URL: Fields = &[
    ("groupJid", Field::GroupJid, true),
    ("mediaUrl", Field::Url, true),
    ("caption", Field::Str, false),
    ("mediaType", Field::MediaType, false),
    ("fileName", Field::Str, false),
];
pub const GROUP_FILE: Fields = &[
    ("groupJid", Field::GroupJid, true),
    ("file", Field::Binary, true),
    ("caption", Field::Str, false),
    ("mediaType", Field::MediaType, false),
];
pub const SEND_ERRORS: &[&str] = &[
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
pub const MEDIA_ERRORS: &[&str] = &[
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
pub const BY_NUMBER: &[&str] = &["NO_ACTIVE_INSTANCE", "INVALID_PHONE", "FORBIDDEN"];
pub const GROUP_ERRORS: &[&str] = &[
    "VALIDATION_ERROR",
    "SESSION_NOT_FOUND",
    "NOT_CONNECTED",
    "NOT_LOGGED_IN",
    "INVALID_GROUP_JID",
    "SEND_FAILED",
    "INSTANCE_BUSY",
    "FORBIDDEN",
];
pub const INSTANCE: &[&str] = &["SESSION_NOT_FOUND", "FORBIDDEN"];

/// A route's description (see [`RouteDoc`]); `.admin()` marks routes only admins may call.
#[allow(clippy::too_many_arguments)]
pub const fn doc(
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    auth: bool,
    body: Body,
    errors: &'static [&'static str],
) -> RouteDoc {
    RouteDoc {
        method,
        path,
        tag,
        summary,
        auth,
        admin_only: false,
        body,
        errors,
    }
}

impl RouteDoc {
    /// The same route, for admins only.
    pub const fn admin(mut self) -> Self {
        self.admin_only = true;
        self
    }
}

/// The methods the routes in `docs` serve on `path` (upper case), empty for a path
/// none of them knows.
pub fn methods_for(docs: &[RouteDoc], path: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in docs {
        if super::routes::table::matches(r.path, path).is_none() {
            continue;
        }
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

/// The query parameters of the list and log routes.
fn query_params(r: &RouteDoc) -> Vec<(&'static str, Value)> {
    let int = |min: i64, max: i64| json!({"type": "integer", "minimum": min, "maximum": max});
    let cursor = |what: &str| json!({"type": "integer", "minimum": 0, "description": what});
    let time = json!({
        "description": "RFC 3339 time or unix milliseconds",
        "anyOf": [{"type": "integer"}, {"type": "string", "format": "date-time"}],
    });
    match (r.method, r.path) {
        ("get", "/api/instances") => vec![(
            "all",
            json!({"type": "string", "enum": ["true", "false", "1", "0"], "description": "true: every instance, not only connected ones"}),
        )],
        ("get", "/api/instances/{id}/messages") => vec![
            ("chat", json!({"type": "string"})),
            (
                "direction",
                json!({"type": "string", "enum": ["in", "out"]}),
            ),
            ("since", time.clone()),
            ("before", time),
            ("limit", int(1, 500)),
            ("cursor", cursor("nextCursor of the previous page")),
        ],
        ("get", "/api/instances/{id}/events") => vec![
            (
                "after",
                cursor("an event cursor; 0 or absent: from the start"),
            ),
            ("limit", int(1, 1000)),
        ],
        ("get", "/api/listen/{id}") => vec![(
            "after",
            cursor("replay the stored events after this cursor first"),
        )],
        _ => Vec::new(),
    }
}

/// The pattern of a phone number (see [`Field::Phone`]) when the default country
/// code has `cc_len` digits: 10-15 digits, or a leading `0` and as many digits as
/// make 10-15 once the `0` becomes the country code.
pub fn phone_pattern(cc_len: usize) -> String {
    let sep = r"[ +\-.()]*";
    let (lo, hi) = (
        10usize.saturating_sub(cc_len),
        15usize.saturating_sub(cc_len),
    );
    format!(r"^{sep}(?:[1-9]{sep}(?:[0-9]{sep}){{9,14}}|0{sep}(?:[0-9]{sep}){{{lo},{hi}}})$")
}

/// The schema of one field kind.
fn field_schema(kind: Field, required: bool, cc_len: usize) -> Value {
    use crate::store::journal::EVENT_NAMES;
    let mut v = match kind {
        Field::Text => json!({"type": "string", "pattern": r"\S"}),
        Field::Str => json!({"type": "string"}),
        Field::Phone => json!({"type": "string", "pattern": phone_pattern(cc_len)}),
        Field::GroupJid => json!({"type": "string", "pattern": r"^[0-9]+(-[0-9]+)?@g\.us$"}),
        Field::MediaType => json!({
            "type": "string",
            "pattern": r"^ *(?:(?i:image|video|audio|document|file) *)?$",
        }),
        Field::Url => json!({"type": "string", "format": "uri", "pattern": r"^https?://"}),
        Field::WebhookUrl => json!({
            "type": "string",
            "description": "http(s) URL the SSRF policy allows; empty turns the webhook off",
            "anyOf": [{"pattern": r"^\s*$"}, {"format": "uri", "pattern": r"^https?://"}],
        }),
        Field::Secret => json!({
            "type": "string",
            "description": "16-256 characters; empty or absent: one is generated",
            "anyOf": [{"pattern": r"^\s*$"}, {"pattern": r"^\s*\S.{14,254}\S\s*$"}],
        }),
        Field::Events => {
            let names: Vec<&str> = ["*"].iter().chain(EVENT_NAMES).copied().collect();
            json!({"type": "array", "minItems": 1, "items": {"type": "string", "enum": names}})
        }
        Field::DeviceName => json!({
            "type": "string",
            "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]{0,64}$",
        }),
        Field::Password => json!({"type": "string", "minLength": 1}),
        Field::Binary => json!({"type": "string", "format": "binary"}),
    };
    // An optional field may be null: the server reads null as absent.
    if !required && kind != Field::Binary {
        v["nullable"] = json!(true);
    }
    v
}

fn body_schema(fields: Fields, cc_len: usize) -> Value {
    let mut props = Map::new();
    for (name, kind, required) in fields {
        props.insert((*name).to_string(), field_schema(*kind, *required, cc_len));
    }
    let required: Vec<&str> = fields.iter().filter(|f| f.2).map(|f| f.0).collect();
    let mut s = json!({"type": "object", "properties": props});
    if !required.is_empty() {
        s["required"] = json!(required);
    }
    s
}

/// The OpenAPI 3.0 document; `cc_len`: digits of the default country code (phone
/// patterns depend on it).
pub fn document(docs: &[RouteDoc], cc_len: usize) -> Value {
    let mut paths = Map::new();
    for r in docs {
        let mut op = json!({
            "summary": r.summary,
            "tags": [r.tag],
            "operationId": format!("{}_{}", r.method, r.path.trim_matches('/').replace(['/', '{', '}', '.', '-'], "_")),
        });
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                let schema = if name == "phone" {
                    field_schema(Field::Phone, true, cc_len)
                } else {
                    json!({"type": "string", "minLength": 1})
                };
                json!({"name": name, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        let mut params = params;
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
                op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": body_schema(f, cc_len)}}})
            }
            Body::OptionalJson(f) => {
                op["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": body_schema(f, cc_len)}}})
            }
            Body::Multipart(f) => {
                let mut schema = body_schema(f, cc_len);
                // Parts other than these are not read (and odd part names may not parse).
                schema["additionalProperties"] = json!(false);
                op["requestBody"] = json!({"required": true, "content": {"multipart/form-data": {"schema": schema}}})
            }
        }
        let mut responses = Map::new();
        let ok_content = if r.path.ends_with("/image") {
            json!({"image/png": {"schema": {"type": "string", "format": "binary"}}})
        } else if r.path == "/docs" {
            json!({"text/html": {"schema": {"type": "string"}}})
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
            let bad = by_status.entry(400).or_default();
            for c in ["INVALID_REQUEST", "VALIDATION_ERROR"] {
                if !bad.contains(&c) {
                    bad.push(c);
                }
            }
        }
        if !query_params(r).is_empty() {
            let bad = by_status.entry(400).or_default();
            if !bad.contains(&"VALIDATION_ERROR") {
                bad.push("VALIDATION_ERROR");
            }
        }
        if r.tag == "events" {
            // A request that is not a WebSocket upgrade.
            let bad = by_status.entry(400).or_default();
            if !bad.contains(&"INVALID_REQUEST") {
                bad.push("INVALID_REQUEST");
            }
        }
        if r.auth {
            by_status
                .entry(503)
                .or_default()
                .push("DATABASE_UNAVAILABLE");
        }
        for (status, codes) in by_status {
            responses.insert(
                status.to_string(),
                json!({"description": codes.join(", "), "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
            );
        }
        op["responses"] = Value::Object(responses);
        if r.admin_only {
            op["x-admin-only"] = json!(true);
        }
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

/// `GET /api/openapi.json` (authenticated): the document of every route.
pub const OPENAPI: RouteDoc = doc(
    "get",
    "/api/openapi.json",
    "docs",
    "This document",
    true,
    Body::None,
    &[],
);
/// `GET /docs`: the static page.
pub const DOCS: RouteDoc = doc(
    "get",
    "/docs",
    "docs",
    "This documentation as a web page (public, static)",
    false,
    Body::None,
    &[],
);

/// The routes of [`OPENAPI`] and [`DOCS`] (`docs`: every route, these included).
pub(crate) fn routes(
    api: &Shared,
    docs: std::sync::Arc<Vec<RouteDoc>>,
) -> super::routes::table::Table {
    use super::routes::table::{at0, Table};
    let mut t = Table::default();
    let document = at0(&OPENAPI)
        .and(super::authed(api.clone()))
        .and(super::with_api(api.clone()))
        .map(move |_p, api: Shared| {
            let cc = api.config.whatsapp.default_country_code.len();
            warp::reply::json(&document(&docs, cc)).into_response()
        })
        .boxed();
    t.add(OPENAPI, document);
    let page = at0(&DOCS)
        .map(|| warp::reply::html(DOCS_HTML).into_response())
        .boxed();
    t.add(DOCS, page);
    t
}
