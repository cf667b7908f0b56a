//! HTTP surface (warp): filters, handlers and the error envelope.
//!
//! Handlers are thin: parse, authorize, send one message to an actor or make one store
//! call, map the reply. This module owns no per-instance state: instance actors are
//! found by registry name through [`InstanceRuntime`].
//!
//! Every route but the health check (and the static API description) needs a bearer
//! token; see [`auth`]. Every failure leaves as the one error envelope of
//! [`error::ApiError`].

pub mod auth;
pub mod conn;
pub mod error;
pub mod openapi;
pub mod qr;
pub mod ratelimit;
pub(crate) mod routes;
pub mod schema;
pub mod util;
pub mod ws;

use crate::config::Config;
use crate::net::fetch::FetchPolicy;
use crate::runtime::InstanceRuntime;
use crate::store::instances::Instances;
use auth::{Auth, AuthError, Principal};
use error::ApiError;
use futures_util::TryStreamExt;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// Version reported by the health check.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Largest JSON body accepted by the JSON routes.
pub const MAX_JSON_BODY: u64 = 64 * 1024;

/// Sandbox hooks (the `/sandbox/...` routes), present only when the server runs
/// against a mock network.
pub type SandboxRoutes = BoxedFilter<(Response,)>;

/// Everything the handlers share.
pub struct Api {
    /// The database (readiness checks and scrape-time metrics).
    pub db: sea_orm::DatabaseConnection,
    pub config: Arc<Config>,
    pub runtime: InstanceRuntime,
    pub instances: Instances,
    pub auth: Auth,
    /// General per-IP limit (off by default).
    pub limiter: ratelimit::RateLimiter,
    /// Failed authentications and logins per IP (brute force).
    pub auth_failures: ratelimit::RateLimiter,
    /// Failed logins per account (brute force spread over addresses).
    pub login_backoff: ratelimit::LoginBackoff,
    /// Open sockets, to cap them and close them when their credentials go.
    pub sockets: ws::Sockets,
    /// Media bytes held by requests (`limits.max_media_in_flight_bytes`).
    pub media: crate::media::MediaBudget,
    /// Optional per-instance send pacing.
    pub governor: ratelimit::SendGovernor,
    /// The webhook delivery log.
    pub webhooks: Option<Arc<dyn DeliveryLog>>,
    /// Message log, status timeline and durable event log.
    pub journal: crate::store::journal::Journal,
    /// `Idempotency-Key`s of sends.
    pub idempotency: crate::store::idempotency::IdempotencyKeys,
    /// This node's part in a cluster (`[cluster]`), if any.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

pub use crate::webhook::{DeliveryLog, RedeliverRule, Redelivery};

/// Shared handle on [`Api`].
pub type Shared = Arc<Api>;

impl Api {
    /// The size cap of each media kind (`limits.max_*_bytes`).
    pub fn media_caps(&self) -> crate::media::Caps {
        let l = &self.config.limits;
        crate::media::Caps {
            image: l.max_image_bytes,
            video: l.max_video_bytes,
            audio: l.max_audio_bytes,
            document: l.max_document_bytes,
        }
    }

    /// The fetch policy for media URLs of `max_bytes`, counting what it keeps against
    /// `hold`.
    pub fn fetch_policy(&self, max_bytes: u64, hold: &crate::media::Hold) -> FetchPolicy {
        let hold = hold.clone();
        FetchPolicy {
            allowed_targets: self.config.webhook.allowed_targets.clone(),
            allowed_ports: self.config.webhook.allowed_ports.clone(),
            max_bytes,
            gate: Some(crate::net::fetch::ByteGate(Arc::new(move |n| hold.take(n)))),
            ..FetchPolicy::default()
        }
    }
}

/// `GET /`: the public health check (no auth), SUDEVWA's shape.
pub fn health() -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path::end().and(warp::get()).map(|| {
        warp::reply::json(&json!({
            "success": true,
            "message": "WhatsApp API is running",
            "version": VERSION,
        }))
    })
}

/// `GET /ready`: 200 once the stored instances are restored and while the database
/// answers, else 503 (for load balancers and orchestrators; no auth).
pub fn ready(
    api: Shared,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("ready").and(warp::get()).then(move || {
        let api = api.clone();
        async move {
            let db = tokio::time::timeout(std::time::Duration::from_secs(3), api.db.ping())
                .await
                .is_ok_and(|r| r.is_ok());
            let restored = api.runtime.is_restored();
            let status = if db && restored {
                warp::http::StatusCode::OK
            } else {
                warp::http::StatusCode::SERVICE_UNAVAILABLE
            };
            let body = json!({"ready": db && restored, "database": db, "restored": restored});
            warp::reply::with_status(warp::reply::json(&body), status).into_response()
        }
    })
}

/// The operator console: one static page (HTML, CSS and script compiled into the
/// binary; it talks to this server's API only, which its Content-Security-Policy
/// enforces: the script is allowed by its hash, nothing may be loaded from elsewhere).
pub fn console() -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    const PAGE: &str = include_str!("console.html");
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    warp::path!("console").and(warp::get()).map(|| {
        let csp = CSP.get_or_init(|| {
            use base64::Engine as _;
            use sha2::Digest as _;
            let script = PAGE
                .split_once("<script>")
                .and_then(|(_, rest)| rest.split_once("</script>"))
                .map_or("", |(s, _)| s);
            let hash = base64::engine::general_purpose::STANDARD
                .encode(sha2::Sha256::digest(script.as_bytes()));
            format!(
                "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
                 img-src 'self' blob:; connect-src 'self'; form-action 'none'; \
                 frame-ancestors 'none'; base-uri 'none'"
            )
        });
        let mut r = warp::reply::html(PAGE).into_response();
        let h = r.headers_mut();
        if let Ok(v) = warp::http::HeaderValue::from_str(csp) {
            h.insert("content-security-policy", v);
        }
        h.insert(
            "x-content-type-options",
            warp::http::HeaderValue::from_static("nosniff"),
        );
        h.insert(
            "referrer-policy",
            warp::http::HeaderValue::from_static("no-referrer"),
        );
        r
    })
}

pub(crate) fn with_api(
    api: Shared,
) -> impl Filter<Extract = (Shared,), Error = Infallible> + Clone {
    warp::any().map(move || api.clone())
}

/// The bearer token of a request: `Authorization: Bearer ...`, or for WebSockets
/// (browsers cannot set headers there) the `Sec-WebSocket-Protocol` value.
pub(crate) fn bearer(authorization: Option<String>, protocol: Option<String>) -> Option<String> {
    if let Some(h) = authorization {
        let (scheme, token) = h.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    // `Sec-WebSocket-Protocol: <token>` or `bearer, <token>`.
    protocol.and_then(|p| {
        p.split(',')
            .map(str::trim)
            .find(|s| !s.is_empty() && !s.eq_ignore_ascii_case("bearer"))
            .map(str::to_string)
    })
}

fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::Unavailable => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            e.to_string(),
        ),
        _ => ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", e.to_string()),
    }
}

/// Extracts the authenticated caller or rejects with 401. A client IP that has spent
/// its failed-authentication budget gets 429 before its credentials are looked at.
pub(crate) fn authed(
    api: Shared,
) -> impl Filter<Extract = (Principal,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(warp::header::optional::<String>("sec-websocket-protocol"))
        .and(client_addr(api.clone()))
        .and(with_api(api))
        .and_then(
            |h: Option<String>, p: Option<String>, ip: std::net::IpAddr, api: Shared| async move {
                api.auth_failures
                    .peek(&ip)
                    .map_err(|retry| warp::reject::custom(auth_throttled(retry)))?;
                let result = match bearer(h, p) {
                    Some(token) => api.auth.authenticate(&token).await,
                    None => Err(AuthError::Missing),
                };
                result.map_err(|e| {
                    if matches!(e, AuthError::Invalid | AuthError::Expired) {
                        // Only wrong credentials count: a request without any is not a
                        // guess.
                        let _ = api.auth_failures.check(&ip);
                    }
                    warp::reject::custom(auth_error(e))
                })
            },
        )
}

/// The client's address as limits count it ([`conn::client_ip`] behind trusted
/// proxies, then [`conn::client_key`]: IPv6 per /64).
pub(crate) fn client_addr(
    api: Shared,
) -> impl Filter<Extract = (std::net::IpAddr,), Error = Rejection> + Clone {
    warp::ext::optional::<conn::PeerAddr>()
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .and(warp::header::headers_cloned())
        .map(
            move |peer: Option<conn::PeerAddr>,
                  xff: Option<String>,
                  headers: warp::http::HeaderMap| {
                // A request another node of the cluster forwarded: the caller's address
                // is the one that node saw.
                if let Some(c) = &api.cluster {
                    if crate::cluster::forward::from_peer(c, &headers) {
                        if let Some(ip) = headers
                            .get(crate::cluster::forward::CLIENT_IP)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                        {
                            return conn::client_key(ip);
                        }
                    }
                }
                conn::client_key(conn::client_ip(
                    peer.map(|p| p.0),
                    xff.as_deref(),
                    &api.config.server.trusted_proxies,
                ))
            },
        )
}

/// 429 for an IP over its failed-authentication budget.
pub(crate) fn auth_throttled(retry: u64) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "Too many failed authentication attempts from this address",
    );
    e.retry_after = Some(retry);
    e
}

/// Per-client rate limit (429 with `Retry-After`).
fn rate_limited(api: Shared) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    client_addr(api.clone())
        .and(with_api(api))
        .and_then(|ip: std::net::IpAddr, api: Shared| async move {
            api.limiter.check(&ip).map_err(|retry| {
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RATE_LIMITED",
                    "Too many requests",
                );
                e.retry_after = Some(retry);
                warp::reject::custom(e)
            })
        })
        .untuple_one()
}

fn too_large() -> Rejection {
    warp::reject::custom(ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        "Request body too large",
    ))
}

/// Reads a body stream, refusing more than `limit` bytes.
async fn collect_body<S, B>(
    len: Option<u64>,
    stream: S,
    limit: u64,
) -> Result<bytes::Bytes, Rejection>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    if len.is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let mut out = bytes::BytesMut::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(mut chunk) = stream.try_next().await.map_err(|_| {
        warp::reject::custom(ApiError::bad_request(
            "INVALID_REQUEST",
            "Request body could not be read",
        ))
    })? {
        if out.len() as u64 + chunk.remaining() as u64 > limit {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let c = chunk.chunk();
            out.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    Ok(out.freeze())
}

/// The raw body, at most `limit` bytes (413 beyond, whether or not a Content-Length
/// was sent).
pub(crate) fn body_limited(
    limit: u64,
) -> impl Filter<Extract = (bytes::Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |len, stream| collect_body(len, stream, limit))
}

/// Refuses another instance's token before the body is read (multipart routes, whose
/// body filter runs before the handler).
async fn scoped(id: String, p: Principal) -> Result<(String, Principal), Rejection> {
    routes::guard(&p, &id).map_err(warp::reject::custom)?;
    Ok((id, p))
}

/// The listen socket's feature flag, checked before the upgrade.
fn listen_enabled(api: Shared) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::any()
        .and_then(move || {
            let on = api.config.features.enable_websocket;
            async move {
                if on {
                    Ok(())
                } else {
                    Err(warp::reject::custom(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "WEBSOCKET_DISABLED",
                        "The listen socket is disabled (SUDEVWA_ENABLE_WEBSOCKET=false)",
                    )))
                }
            }
        })
        .untuple_one()
}

pub(crate) fn respond(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(ApiError::into_response)
}

/// `GET /`: the public health check.
pub const HEALTH: openapi::RouteDoc = openapi::doc(
    "get",
    "/",
    "health",
    "Health check (public)",
    false,
    openapi::Body::None,
    &[],
);
/// `GET /ws`: the lifecycle socket.
const WS: openapi::RouteDoc = openapi::doc(
    "get",
    "/ws",
    "events",
    "WebSocket: lifecycle events (QR_GENERATED, QR_SUCCESS, QR_TIMEOUT, QR_CANCELLED, INSTANCE_STATUS_CHANGED, INSTANCE_ERROR)",
    true,
    openapi::Body::None,
    &["RATE_LIMITED"],
);
/// `GET /api/listen/:id`: an instance's message socket.
const LISTEN: openapi::RouteDoc = openapi::doc(
    "get",
    "/api/listen/{id}",
    "events",
    "WebSocket: the instance's incoming_message and message_status events (?after=cursor replays the stored ones first)",
    true,
    openapi::Body::None,
    &["SESSION_NOT_FOUND", "FORBIDDEN", "WEBSOCKET_DISABLED", "RATE_LIMITED"],
);

/// The two WebSocket routes.
fn sockets(api: &Shared) -> routes::table::Table {
    use routes::table::{at0, at1, Table};
    let a = || with_api(api.clone());
    let auth = || authed(api.clone());
    // The raw credential and client address a socket remembers (checked by auth()).
    let credential = || {
        warp::header::optional::<String>("authorization")
            .and(warp::header::optional::<String>("sec-websocket-protocol"))
            .map(|h, p| bearer(h, p).unwrap_or_default())
            .and(client_addr(api.clone()))
    };
    let protocol = || warp::header::optional::<String>("sec-websocket-protocol");
    let mut t = Table::default();
    let global = at0(&WS)
        .and(auth())
        .and(credential())
        .and(warp::ws())
        .and(protocol())
        .and(a())
        .then(|p, t: String, ip, w, proto, api| ws::global(p, (t, ip), w, proto, api))
        .map(respond)
        .boxed();
    t.add(WS, global);
    let listen = at1(&LISTEN)
        .and(auth())
        .and_then(scoped)
        .untuple_one()
        .and(listen_enabled(api.clone()))
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(credential())
        .and(warp::ws())
        .and(protocol())
        .and(a())
        .then(|id, p, q, t: String, ip, w, proto, api| ws::listen(id, p, q, (t, ip), w, proto, api))
        .map(respond)
        .boxed();
    t.add(LISTEN, listen);
    t
}

/// Every route of the server, with the error envelope for anything that fails.
pub fn routes(api: Shared, sandbox: Option<SandboxRoutes>) -> BoxedFilter<(Response,)> {
    let mut table = routes::all(&api);
    table.extend(sockets(&api));
    // Every declared route: what the document lists and what 405 answers name.
    let mut docs = table.docs.clone();
    docs.extend([HEALTH, openapi::OPENAPI, openapi::DOCS]);
    let docs = Arc::new(docs);
    table.extend(openapi::routes(&api, docs.clone()));

    // Each step is boxed, so the filter type stays shallow however many routes there are.
    let mut filters = table.filters.into_iter();
    let first = filters.next().unwrap_or_else(|| {
        warp::any()
            .and_then(|| async { Err::<Response, _>(warp::reject::not_found()) })
            .boxed()
    });
    let everything = filters.fold(first, |acc, r| acc.or(r).unify().boxed());
    let everything = match sandbox {
        Some(s) => everything.or(s).unify().boxed(),
        None => everything,
    };

    // A known path asked with a method it does not take: 405 with `Allow` (from the
    // route declarations), before anything else is looked at.
    let methods = warp::path::full()
        .and(warp::method())
        .and_then(move |path: warp::path::FullPath, m: warp::http::Method| {
            let allowed = openapi::methods_for(&docs, path.as_str());
            async move {
                let ok = allowed.is_empty() || allowed.contains(&m.as_str());
                if ok {
                    Ok(())
                } else {
                    Err(warp::reject::custom(ApiError::method_not_allowed(
                        allowed.join(", "),
                    )))
                }
            }
        })
        .untuple_one();
    // A cluster node first passes requests for instances held elsewhere to their node.
    let everything = crate::cluster::forward::filter(api.clone())
        .or(everything)
        .unify()
        .boxed();
    let limited = rate_limited(api.clone()).and(methods).and(everything);
    let served = health()
        .map(Reply::into_response)
        .or(ready(api.clone()))
        .unify()
        .or(console())
        .unify()
        .or(limited)
        .unify()
        .recover(error::recover)
        .unify()
        .boxed();
    let origins = api.config.server.cors_origins.clone();
    if origins.is_empty() {
        served
    } else {
        let cors = warp::cors()
            .allow_origins(origins.iter().map(String::as_str))
            .allow_headers(["authorization", "content-type", "idempotency-key"])
            .expose_headers(["idempotent-replayed", "retry-after"])
            .allow_methods(["GET", "POST", "PATCH", "DELETE", "OPTIONS"])
            .max_age(600);
        served
            .with(cors)
            .map(Reply::into_response)
            .recover(error::recover)
            .unify()
            .boxed()
    }
}
