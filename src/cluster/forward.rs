//! One API on every node: a request naming an instance held by another node goes to
//! that node over its internal URL, carrying the cluster secret (so the owner serves it
//! as it arrived — the caller's own credentials are checked there — and never forwards
//! it again), and the answer comes back unchanged.
//!
//! Why HTTP forwarding rather than a command channel in PostgreSQL: every route keeps
//! its one handler and its exact answers (status, headers, envelope), request bodies of
//! any size need no table, and a forward costs one extra hop on the internal network
//! instead of a database round trip or two per request. The listen sockets are not
//! forwarded: any node serves `/api/listen/:id` from the durable event log.

use super::{Cluster, Place};
use crate::http::error::ApiError;
use crate::http::{client_addr, with_api, Shared};
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::path::FullPath;
use warp::reply::Response;
use warp::Filter;

/// The cluster secret, on requests one node forwards to another.
pub const NODE_AUTH: &str = "x-sudevwa-node-auth";
/// The caller's address as the first node saw it (believed only with [`NODE_AUTH`]).
pub const CLIENT_IP: &str = "x-sudevwa-client-ip";
/// The node that forwarded a request (informational).
pub const FROM_NODE: &str = "x-sudevwa-forwarded-by";
/// On answers: the node that served a forwarded request.
pub const SERVED_BY: &str = "x-sudevwa-node";

/// What a request path is about, for placement.
#[derive(Debug, PartialEq, Eq)]
pub enum Subject {
    /// An instance by id.
    Instance(String),
    /// The instance whose own number this is (`by-number` routes).
    Phone(String),
    /// A new instance (`POST /api/login`).
    Create,
}

/// The instance (or number) a request path names, if any.
pub fn subject(method: &Method, path: &str) -> Option<Subject> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", "login"] if method == Method::POST => Some(Subject::Create),
        // Served from the event log by any node.
        ["api", "listen", ..] => None,
        ["api", "instances", id, ..] if !id.is_empty() => Some(Subject::Instance(id.to_string())),
        ["api", "by-number", phone, ..]
        | ["api", "send" | "send-group" | "groups", "by-number", phone, ..]
            if !phone.is_empty() =>
        {
            Some(Subject::Phone(phone.to_string()))
        }
        ["api", "send" | "send-group" | "check" | "groups" | "logout" | "pair-code" | "qr-cancel"
        | "qr" | "status", id, ..]
            if !id.is_empty() && *id != "by-number" =>
        {
            Some(Subject::Instance(id.to_string()))
        }
        _ => None,
    }
}

/// Whether `headers` carry this cluster's secret (constant-time comparison).
pub fn from_peer(cluster: &Cluster, headers: &HeaderMap) -> bool {
    use subtle::ConstantTimeEq;
    headers
        .get(NODE_AUTH)
        .is_some_and(|v| bool::from(v.as_bytes().ct_eq(cluster.secret().as_bytes())))
}

/// Where a request goes: `None` serves it here.
async fn destination(
    cluster: &Arc<Cluster>,
    api: &Shared,
    method: &Method,
    path: &str,
) -> Option<String> {
    let place = match subject(method, path)? {
        Subject::Instance(id) => cluster.place(&id).await,
        Subject::Phone(phone) => {
            let rows = api.instances.online_with_phone(&phone).await.ok()?;
            if rows.iter().any(|r| cluster.holds(&r.id)) {
                return None;
            }
            match rows.first() {
                Some(r) => cluster.place(&r.id).await,
                None => return None,
            }
        }
        Subject::Create => match cluster.least_loaded().await {
            Ok(Some((node, url))) if node != cluster.node_id() => Ok(Place::Remote { node, url }),
            Ok(_) => Ok(Place::Local),
            Err(e) => Err(e),
        },
    };
    match place {
        Ok(Place::Remote { url, .. }) => Some(url),
        Ok(Place::Local) => None,
        Err(e) => {
            tracing::warn!(error = %e, "placing a request failed: serving it here");
            None
        }
    }
}

/// Headers never passed on (hop-by-hop, or ours).
fn passed_on(name: &str) -> bool {
    !matches!(
        name,
        "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | NODE_AUTH
            | CLIENT_IP
            | FROM_NODE
    )
}

/// The filter placed before the routes: forwards what another node holds, rejects
/// (not found) everything else so the routes serve it here.
pub fn filter(api: Shared) -> BoxedFilter<(Response,)> {
    let limit = api.config.limits.max_media_in_flight_bytes.max(1 << 20);
    warp::method()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(with_api(api.clone()))
        .and_then(
            |method: Method, path: FullPath, headers: HeaderMap, api: Shared| async move {
                let Some(cluster) = api.cluster.clone() else {
                    return Err(warp::reject::not_found());
                };
                if from_peer(&cluster, &headers) || subject(&method, path.as_str()).is_none() {
                    return Err(warp::reject::not_found());
                }
                // Only authenticated callers make this node look up (or adopt) an
                // instance; anyone else gets the route's own 401 here (counted once
                // by the brute-force limit). The owner checks the credentials again.
                let token = crate::http::bearer(
                    headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                    None,
                );
                match token {
                    Some(t) if api.auth.authenticate(&t).await.is_ok() => {}
                    _ => return Err(warp::reject::not_found()),
                }
                match destination(&cluster, &api, &method, path.as_str()).await {
                    Some(url) => Ok((url, cluster)),
                    None => Err(warp::reject::not_found()),
                }
            },
        )
        .untuple_one()
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(client_addr(api))
        .and(crate::http::body_limited(limit))
        .then(
            |url: String,
             cluster: Arc<Cluster>,
             method: Method,
             path: FullPath,
             query: String,
             headers: HeaderMap,
             ip: std::net::IpAddr,
             body: bytes::Bytes| async move {
                crate::metrics::forwarded_request();
                forward(
                    &cluster,
                    &url,
                    method,
                    path.as_str(),
                    &query,
                    &headers,
                    ip,
                    body,
                )
                .await
                .unwrap_or_else(ApiError::into_response)
            },
        )
        .boxed()
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    cluster: &Cluster,
    base: &str,
    method: Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    ip: std::net::IpAddr,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let mut url = format!("{base}{path}");
    if !query.is_empty() {
        url.push('?');
        url.push_str(query);
    }
    let mut req = cluster.http.request(method, &url).body(body);
    for (name, value) in headers {
        if passed_on(name.as_str()) {
            req = req.header(name, value);
        }
    }
    let req = req
        .header(NODE_AUTH, cluster.secret())
        .header(CLIENT_IP, ip.to_string())
        .header(FROM_NODE, cluster.node_id());
    let unavailable = |e: reqwest::Error| {
        tracing::warn!(error = %e, "forwarding to the owning node failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "The node holding this instance does not answer; try again shortly",
        )
    };
    let resp = req.send().await.map_err(unavailable)?;
    let status = resp.status();
    let mut out_headers = HeaderMap::new();
    for (name, value) in resp.headers() {
        if passed_on(name.as_str()) {
            out_headers.append(name.clone(), value.clone());
        }
    }
    let bytes = resp.bytes().await.map_err(unavailable)?;
    let mut out = Response::new(bytes.into());
    *out.status_mut() = status;
    *out.headers_mut() = out_headers;
    if let Ok(v) = HeaderValue::from_str(base) {
        out.headers_mut().insert("x-sudevwa-forwarded-to", v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_of_paths() {
        let get = Method::GET;
        assert_eq!(
            subject(&get, "/api/status/abc"),
            Some(Subject::Instance("abc".into()))
        );
        assert_eq!(
            subject(&Method::POST, "/api/send/abc/media"),
            Some(Subject::Instance("abc".into()))
        );
        assert_eq!(
            subject(&Method::POST, "/api/send/by-number/628"),
            Some(Subject::Phone("628".into()))
        );
        assert_eq!(
            subject(&get, "/api/instances/x/messages"),
            Some(Subject::Instance("x".into()))
        );
        assert_eq!(subject(&get, "/api/instances"), None);
        assert_eq!(subject(&get, "/api/listen/x"), None);
        assert_eq!(subject(&Method::POST, "/api/login"), Some(Subject::Create));
        assert_eq!(subject(&get, "/api/login"), None);
        assert_eq!(subject(&get, "/metrics"), None);
    }
}
