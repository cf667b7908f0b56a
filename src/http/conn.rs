//! Serving connections: our own accept loop around the warp filter, so the server
//! sets what warp's `serve` leaves open.
//!
//! - **Header-read timeout** (hyper's timer): a client must send a request's whole
//!   header within `server.header_read_timeout_secs`; the same clock runs while a
//!   kept-alive connection waits for its next request, so a half-sent request or an
//!   idle connection is closed then.
//! - **Connection caps**: at most `server.max_connections` open HTTP connections, and
//!   `server.max_connections_per_ip` from one client address (IPv6 per /64). A
//!   connection over a cap is closed at once, before a byte is read.
//! - **HTTP/1 only** (no HTTP/2 prior knowledge: a TLS-terminating proxy in front
//!   speaks HTTP/2 to clients if wanted).
//! - **Client address**: every request carries [`PeerAddr`], the TCP peer; see
//!   [`client_ip`] for the trusted-proxy rule.
//!
//! WebSocket upgrades leave these counts when they upgrade; open sockets have their
//! own caps (`websocket.max_sockets_per_*`, see `ws.rs`).

use crate::config::Cidr;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// The TCP peer of a request (request extension set by [`serve`]).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Limits of [`serve`].
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// How long in-flight requests may finish after the shutdown signal.
    pub shutdown_grace: Duration,
}

/// The key a client address is counted and rate-limited under: IPv4 as is (IPv4 in
/// IPv6 as its IPv4), IPv6 by its /64 (one subscriber's usual allocation).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy; then the
/// rightmost `X-Forwarded-For` entry that is not itself a trusted proxy (entries to
/// its left were written by the client and prove nothing).
pub fn client_ip(peer: Option<SocketAddr>, forwarded: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    let peer_ip = peer
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if trusted.is_empty() || !is_trusted(peer_ip) {
        return peer_ip;
    }
    let Some(list) = forwarded else {
        return peer_ip;
    };
    let mut last = peer_ip;
    for entry in list.rsplit(',') {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => last = ip,
            Ok(ip) => return ip,
            // A malformed entry ends what can be believed.
            Err(_) => return last,
        }
    }
    last
}

/// Open things (connections, sockets) per key, each released when its [`Slot`] drops.
pub(crate) struct Counter<K: std::hash::Hash + Eq + Clone>(Mutex<HashMap<K, usize>>);

impl<K: std::hash::Hash + Eq + Clone> Default for Counter<K> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

/// One counted thing; dropping it gives the place back.
pub(crate) struct Slot<K: std::hash::Hash + Eq + Clone> {
    table: Arc<Counter<K>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone> Counter<K> {
    /// A place for `key` unless it already holds `max`.
    pub(crate) fn take(self: &Arc<Self>, key: K, max: usize) -> Option<Slot<K>> {
        // A poisoned lock only means a panic elsewhere mid-update; the counts stay usable.
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            table: self.clone(),
            key,
        })
    }
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut m = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// Serves `filter` on `listener` until `shutdown` resolves; then stops accepting and
/// lets requests in flight finish for at most `limits.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    filter: BoxedFilter<(Response,)>,
    limits: ConnLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_ip: Arc<Counter<IpAddr>> = Arc::new(Counter::default());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder.http1_only());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::debug!("connection cap reached: closing a new connection");
            continue;
        };
        let Some(slot) = per_ip.take(client_key(peer.ip()), limits.max_connections_per_ip) else {
            tracing::debug!("per-address connection cap reached: closing a new connection");
            continue;
        };
        let filter = filter.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                let mut svc = warp::service(filter.clone());
                tower_service::Service::call(&mut svc, req)
            });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("requests still in flight after the shutdown grace; closing them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_are_keyed_per_64() {
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            client_key(ip("2001:db8:1:2:ffff::9")),
            client_key(ip("2001:db8:1:2::1"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:3::1")),
            client_key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(client_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(client_key(ip("10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let peer = |s: &str| Some(SocketAddr::new(ip(s), 1234));
        let trusted = vec![Cidr::parse("127.0.0.1/32").unwrap()];
        // No trusted proxies configured: the header is ignored.
        assert_eq!(
            client_ip(peer("127.0.0.1"), Some("9.9.9.9"), &[]),
            ip("127.0.0.1")
        );
        // An untrusted peer cannot pick its address.
        assert_eq!(
            client_ip(peer("8.8.8.8"), Some("9.9.9.9"), &trusted),
            ip("8.8.8.8")
        );
        // Through the proxy: the rightmost untrusted entry; what the client wrote to
        // its left is not believed.
        assert_eq!(
            client_ip(peer("127.0.0.1"), Some("1.2.3.4, 5.6.7.8"), &trusted),
            ip("5.6.7.8")
        );
        assert_eq!(
            client_ip(peer("127.0.0.1"), Some("5.6.7.8, 127.0.0.1"), &trusted),
            ip("5.6.7.8")
        );
        assert_eq!(
            client_ip(peer("127.0.0.1"), None, &trusted),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_ip(peer("127.0.0.1"), Some("junk"), &trusted),
            ip("127.0.0.1")
        );
    }
}
