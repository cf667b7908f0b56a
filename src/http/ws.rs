//! WebSockets: `/ws` (lifecycle events of every instance the token may see) and
//! `/api/listen/:id` (one instance's `incoming_message` and `message_status` events).
//!
//! Upkeep, the same on both: the server pings every `websocket.ping_interval_secs`;
//! a connection that has not answered with a pong for `websocket.pong_timeout_secs`
//! is closed with code 4000 ("ping timeout"). Events come from bounded broadcasts; a
//! listener that falls more than `websocket.buffer` events behind, or whose socket
//! does not take a frame within `websocket.send_timeout_secs`, is closed with code
//! 4008 ("slow consumer") — memory never grows with a slow reader.
//!
//! Sockets follow their credentials: each remembers who opened it (the token, its
//! instance, a JWT's expiry). Revoking an instance's tokens or deleting the instance
//! closes the sockets opened with its tokens, and a JWT's sockets close when it
//! expires — code 4001 ("credentials revoked" / "token expired"); logging an
//! instance out or deleting it closes its listen sockets, whoever opened them — code
//! 4004 ("instance logged out" / "instance deleted"). The token is also checked again
//! on every ping tick. Caps: `websocket.max_sockets_per_principal` sockets per
//! credential and `websocket.max_sockets_per_ip` per client address (429 beyond), and
//! no client message larger than `websocket.max_message_bytes`.

use super::auth::Principal;
use super::error::ApiError;
use super::{routes, Shared};
use crate::config::WebsocketConfig;
use actors::events::{LifecycleNotice, LiveEvent};
use actors::instance::InstanceMsg;
use futures_util::{SinkExt, StreamExt};
use ractor::call_t;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;
use warp::filters::ws::{Message, WebSocket, Ws};
use warp::reply::Response;
use warp::Reply;

/// Close code for a listener that cannot keep up.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code for a connection that stopped answering pings.
pub const CLOSE_PING_TIMEOUT: u16 = 4000;
/// Close code for a socket whose credentials were revoked or expired.
pub const CLOSE_CREDENTIALS: u16 = 4001;
/// Close code for a listen socket whose instance was logged out or deleted.
pub const CLOSE_INSTANCE_GONE: u16 = 4004;

/// Echoes `bearer` when the browser offered it (`Sec-WebSocket-Protocol: bearer,
/// <token>`); nothing else is ever echoed, so a token never comes back in a header.
fn with_protocol(reply: impl Reply, offered: Option<String>) -> Response {
    let mut r = reply.into_response();
    let bearer = offered.as_deref().is_some_and(|o| {
        o.split(',')
            .any(|s| s.trim().eq_ignore_ascii_case("bearer"))
    });
    if bearer {
        r.headers_mut().insert(
            "sec-websocket-protocol",
            warp::http::HeaderValue::from_static("bearer"),
        );
    }
    r
}

/// What took a socket's credentials away (broadcast to every socket; each keeps
/// what concerns it).
#[derive(Debug, Clone)]
pub enum Revocation {
    /// Every token of the instance was revoked (or deleted with it).
    Tokens { instance_id: String },
    /// The instance was logged out or deleted: its listen sockets close.
    Instance {
        instance_id: String,
        reason: &'static str,
    },
}

/// The open sockets: their caps and the revocation channel.
pub struct Sockets {
    revoked: broadcast::Sender<Revocation>,
    per_credential: std::sync::Arc<super::conn::Counter<String>>,
    per_ip: std::sync::Arc<super::conn::Counter<std::net::IpAddr>>,
}

impl Default for Sockets {
    fn default() -> Self {
        Self {
            revoked: broadcast::channel(256).0,
            per_credential: Default::default(),
            per_ip: Default::default(),
        }
    }
}

impl Sockets {
    /// Closes the sockets `r` concerns.
    pub fn revoke(&self, r: Revocation) {
        let _ = self.revoked.send(r);
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    Credentials(&'static str),
    Instance(&'static str),
}

/// Who opened a socket, and its places under the caps.
pub(crate) struct Session {
    principal: Principal,
    token: String,
    /// The instance of a listen socket.
    instance: Option<String>,
    /// A JWT's expiry (unix seconds).
    expires_at: Option<i64>,
    revoked: broadcast::Receiver<Revocation>,
    api: Shared,
    _slots: (
        super::conn::Slot<String>,
        super::conn::Slot<std::net::IpAddr>,
    ),
}

impl Session {
    /// Takes a place under both caps (429 when either is full).
    fn open(
        api: &Shared,
        principal: &Principal,
        token: String,
        ip: std::net::IpAddr,
        instance: Option<String>,
    ) -> Result<Self, ApiError> {
        let cfg = &api.config.websocket;
        let full = |what: &str| {
            let mut e = ApiError::new(
                warp::http::StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                format!("Too many open sockets {what}"),
            );
            e.retry_after = Some(5);
            e
        };
        let by_credential = api
            .sockets
            .per_credential
            .take(
                super::auth::token_hash(&token),
                cfg.max_sockets_per_principal,
            )
            .ok_or_else(|| full("for this credential"))?;
        let by_ip = api
            .sockets
            .per_ip
            .take(ip, cfg.max_sockets_per_ip)
            .ok_or_else(|| full("from this address"))?;
        Ok(Self {
            principal: principal.clone(),
            expires_at: api.auth.jwt_expiry(&token),
            token,
            instance,
            revoked: api.sockets.revoked.subscribe(),
            api: api.clone(),
            _slots: (by_credential, by_ip),
        })
    }

    /// Waits until a revocation concerns this socket, or its JWT expires.
    async fn ended(&mut self) -> Gone {
        let expiry = async {
            match self.expires_at {
                Some(exp) => {
                    let left = exp - chrono::Utc::now().timestamp();
                    tokio::time::sleep(Duration::from_secs(left.max(0) as u64)).await;
                }
                None => std::future::pending().await,
            }
        };
        let revoked = async {
            loop {
                match self.revoked.recv().await {
                    Ok(Revocation::Tokens { instance_id }) => {
                        if matches!(&self.principal, Principal::Instance { instance_id: own } if *own == instance_id)
                        {
                            return Gone::Credentials("credentials revoked");
                        }
                    }
                    Ok(Revocation::Instance {
                        instance_id,
                        reason,
                    }) => {
                        if self.instance.as_deref() == Some(instance_id.as_str()) {
                            return Gone::Instance(reason);
                        }
                    }
                    // Missed some: the ping tick's recheck catches what they said
                    // about credentials.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                }
            }
        };
        tokio::select! {
            _ = expiry => Gone::Credentials("token expired"),
            g = revoked => g,
        }
    }

    /// The credentials checked again (each ping tick).
    async fn recheck(&self) -> Option<Gone> {
        match self.api.auth.authenticate(&self.token).await {
            Ok(_) => None,
            Err(super::auth::AuthError::Expired) => Some(Gone::Credentials("token expired")),
            Err(super::auth::AuthError::Invalid) | Err(super::auth::AuthError::Missing) => {
                Some(Gone::Credentials("credentials revoked"))
            }
            // The token store is down: not the client's fault; check again later.
            Err(super::auth::AuthError::Unavailable) => None,
        }
    }
}

async fn session_ended(s: &mut Option<Session>) -> Gone {
    match s {
        Some(s) => s.ended().await,
        None => std::future::pending().await,
    }
}

/// What a socket forwards.
enum Source {
    Lifecycle {
        rx: broadcast::Receiver<LifecycleNotice>,
        /// A cluster node: other nodes' instances' events (from the event log).
        remote: Option<broadcast::Receiver<crate::cluster::relay::RemoteNotice>>,
        principal: Principal,
    },
    Listen {
        rx: broadcast::Receiver<LiveEvent>,
        /// Stored events still to replay before going live.
        backlog: std::collections::VecDeque<LiveEvent>,
        /// The cursor to read the next replay page after; `None` once caught up.
        replay_after: Option<i64>,
        /// The highest cursor the client had or was replayed: live events at or below
        /// it were sent already. Live events are not held to it: writers committed
        /// together publish in any order.
        replayed: i64,
        /// The highest cursor sent (where a replay after a restart of the actor
        /// starts).
        last: i64,
        instance_id: String,
        api: Shared,
    },
}

/// Events read from the log per replay page.
const REPLAY_PAGE: u64 = 256;

enum Next {
    Event(String),
    Slow,
    End,
}

impl Source {
    async fn next(&mut self) -> Next {
        match self {
            Source::Lifecycle {
                rx,
                remote,
                principal,
            } => loop {
                let remote_next = async {
                    match remote {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    n = rx.recv() => match n {
                        Ok(n) if principal.may_access(n.instance_id()) => {
                            return Next::Event(n.to_envelope().to_string())
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => return Next::Slow,
                        Err(RecvError::Closed) => return Next::End,
                    },
                    n = remote_next => match n {
                        Ok(n) if principal.may_access(&n.instance_id) => return Next::Event(n.json),
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => return Next::Slow,
                        Err(RecvError::Closed) => *remote = None,
                    },
                }
            },
            Source::Listen {
                rx,
                backlog,
                replay_after,
                replayed,
                last,
                instance_id,
                api,
            } => loop {
                if let Some(e) = backlog.pop_front() {
                    *replayed = (*replayed).max(e.cursor);
                    *last = (*last).max(e.cursor);
                    return Next::Event(e.json.to_string());
                }
                if let Some(after) = *replay_after {
                    match api
                        .journal
                        .events_after(instance_id, after, REPLAY_PAGE, Some(LISTEN_EVENTS))
                        .await
                    {
                        Ok(page) => {
                            *replay_after = match page.last() {
                                Some(e) if page.len() as u64 == REPLAY_PAGE => Some(e.cursor),
                                _ => None,
                            };
                            backlog.extend(page);
                        }
                        Err(e) => {
                            tracing::warn!(instance_id = %instance_id, error = %e, "replaying the event log failed");
                            return Next::End;
                        }
                    }
                    continue;
                }
                match rx.recv().await {
                    // Already replayed from the log.
                    Ok(e) if e.cursor != 0 && e.cursor <= *replayed => {}
                    Ok(e) => {
                        *last = (*last).max(e.cursor);
                        return Next::Event(e.json.to_string());
                    }
                    Err(RecvError::Lagged(_)) => return Next::Slow,
                    Err(RecvError::Closed) => {
                        // The actor restarted: follow the new one, and fill the gap
                        // from the log.
                        match resubscribe(api, instance_id).await {
                            Some(new_rx) => {
                                *rx = new_rx;
                                if *last > 0 {
                                    *replay_after = Some(*last);
                                }
                            }
                            None => return Next::End,
                        }
                    }
                }
            },
        }
    }
}

/// The events the listen socket carries (and replays).
const LISTEN_EVENTS: &[&str] = crate::store::journal::MESSAGE_EVENTS;

async fn subscribe(
    a: &ractor::ActorRef<InstanceMsg>,
) -> Result<broadcast::Receiver<LiveEvent>, ApiError> {
    call_t!(a, InstanceMsg::Subscribe, 5_000).map_err(|_| ApiError::internal())
}

/// Waits (bounded) for the instance's actor to be back and subscribes again.
async fn resubscribe(api: &Shared, id: &str) -> Option<broadcast::Receiver<LiveEvent>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        // A cluster node whose instance moved to another node follows it there.
        if let Some(rx) = remote_listen(api, id) {
            return Some(rx);
        }
        if let Some(a) = api.runtime.actor(id) {
            if let Ok(pair) = subscribe(&a).await {
                return Some(pair);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// The instance's events from the event log, if it is held by another node.
fn remote_listen(api: &Shared, id: &str) -> Option<broadcast::Receiver<LiveEvent>> {
    let c = api.cluster.as_ref()?;
    if c.holds(id) {
        return None;
    }
    c.relay().map(|r| r.listen(id))
}

/// Why a socket's pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client closed or the connection broke.
    ClientGone,
    /// Fell behind the buffer, or a frame could not be written in time (4008).
    SlowConsumer,
    /// No pong within the timeout (4000).
    PingTimeout,
    /// The event source ended (1001).
    SourceEnded,
    /// The credentials were revoked or expired (4001).
    CredentialsGone,
    /// The listen socket's instance was logged out or deleted (4004).
    InstanceGone,
}

async fn pump(socket: WebSocket, cfg: WebsocketConfig, source: Source, session: Session) -> Ended {
    let (tx, rx) = socket.split();
    run_pump(tx, rx, cfg, source, Some(session)).await
}

/// Forwards events to `tx` and keeps the connection honest (pings, pong timeout,
/// slow-consumer cut-off). Generic over the socket halves so it is testable.
async fn run_pump<T, R>(
    mut tx: T,
    mut rx: R,
    cfg: WebsocketConfig,
    mut source: Source,
    mut session: Option<Session>,
) -> Ended
where
    T: futures_util::Sink<Message> + Unpin,
    R: futures_util::Stream<Item = Result<Message, warp::Error>> + Unpin,
{
    let start = Instant::now() + cfg.ping_interval;
    let mut ping = tokio::time::interval_at(start, cfg.ping_interval);
    let mut last_pong = Instant::now();
    let grace = Duration::from_secs(1);
    loop {
        tokio::select! {
            gone = session_ended(&mut session) => {
                let (code, reason, ended) = match gone {
                    Gone::Credentials(r) => (CLOSE_CREDENTIALS, r, Ended::CredentialsGone),
                    Gone::Instance(r) => (CLOSE_INSTANCE_GONE, r, Ended::InstanceGone),
                };
                let _ = tokio::time::timeout(grace, tx.send(Message::close_with(code, reason))).await;
                return ended;
            }
            next = source.next() => match next {
                Next::Event(text) => {
                    match tokio::time::timeout(cfg.send_timeout, tx.send(Message::text(text))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Ended::ClientGone,
                        Err(_) => {
                            let _ = tokio::time::timeout(grace, tx.send(Message::close_with(CLOSE_SLOW_CONSUMER, "slow consumer"))).await;
                            return Ended::SlowConsumer;
                        }
                    }
                }
                Next::Slow => {
                    let _ = tokio::time::timeout(grace, tx.send(Message::close_with(CLOSE_SLOW_CONSUMER, "slow consumer"))).await;
                    return Ended::SlowConsumer;
                }
                Next::End => {
                    let _ = tokio::time::timeout(grace, tx.send(Message::close_with(1001u16, "going away"))).await;
                    return Ended::SourceEnded;
                }
            },
            msg = rx.next() => match msg {
                Some(Ok(m)) if m.is_pong() => last_pong = Instant::now(),
                Some(Ok(m)) if m.is_close() => return Ended::ClientGone,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Ended::ClientGone,
            },
            _ = ping.tick() => {
                if let Some(gone) = match &session { Some(s) => s.recheck().await, None => None } {
                    let reason = match gone { Gone::Credentials(r) | Gone::Instance(r) => r };
                    let _ = tokio::time::timeout(grace, tx.send(Message::close_with(CLOSE_CREDENTIALS, reason))).await;
                    return Ended::CredentialsGone;
                }
                if last_pong.elapsed() >= cfg.pong_timeout {
                    let _ = tokio::time::timeout(grace, tx.send(Message::close_with(CLOSE_PING_TIMEOUT, "ping timeout"))).await;
                    return Ended::PingTimeout;
                }
                match tokio::time::timeout(cfg.send_timeout, tx.send(Message::ping(Vec::new()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Ended::ClientGone,
                    Err(_) => return Ended::SlowConsumer,
                }
            }
        }
    }
}

/// The largest client message a socket takes.
fn limited(ws: Ws, cfg: &WebsocketConfig) -> Ws {
    ws.max_message_size(cfg.max_message_bytes)
        .max_frame_size(cfg.max_message_bytes)
}

/// `GET /ws`.
pub async fn global(
    p: Principal,
    (token, ip): (String, std::net::IpAddr),
    ws: Ws,
    proto: Option<String>,
    api: Shared,
) -> Result<Response, ApiError> {
    let session = Session::open(&api, &p, token, ip, None)?;
    let cfg = api.config.websocket.clone();
    let rx = api.runtime.lifecycle();
    let remote = api
        .cluster
        .as_ref()
        .and_then(|c| c.relay())
        .map(|r| r.lifecycle());
    let reply = limited(ws, &cfg).on_upgrade(move |socket| async move {
        crate::metrics::websocket("ws", 1.0);
        let source = Source::Lifecycle {
            rx,
            remote,
            principal: p,
        };
        let ended = pump(socket, cfg, source, session).await;
        crate::metrics::websocket("ws", -1.0);
        tracing::debug!(?ended, "/ws connection ended");
    });
    Ok(with_protocol(reply, proto))
}

/// The `after` cursor of `?after=N` (absent: live only).
pub fn after_cursor(query: &str) -> Result<Option<i64>, ApiError> {
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if k == "after" {
            return v
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .map(Some)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "VALIDATION_ERROR",
                        "after must be a cursor from an earlier event (a non-negative integer)",
                    )
                });
        }
    }
    Ok(None)
}

/// `GET /api/listen/:id[?after=CURSOR]`: with `after`, the stored events after the
/// cursor are sent first, then live ones, without a gap or a repeat.
pub async fn listen(
    id: String,
    p: Principal,
    query: String,
    (token, ip): (String, std::net::IpAddr),
    ws: Ws,
    proto: Option<String>,
    api: Shared,
) -> Result<Response, ApiError> {
    let after = after_cursor(&query)?;
    let instance = routes::instance(&api, &p, &id).await?.id;
    let session = Session::open(&api, &p, token, ip, Some(instance.clone()))?;
    // Subscribed before the log is read: nothing committed in between is missed.
    let rx = match remote_listen(&api, &instance) {
        Some(rx) => rx,
        None => {
            let actor = api.runtime.ensure_started(&instance).await.map_err(|e| {
                tracing::warn!(instance_id = %id, error = %e, "instance actor could not start");
                ApiError::internal()
            })?;
            subscribe(&actor).await?
        }
    };
    let cfg = api.config.websocket.clone();
    let reply = limited(ws, &cfg).on_upgrade(move |socket| async move {
        let source = Source::Listen {
            rx,
            backlog: Default::default(),
            replay_after: after,
            replayed: after.unwrap_or(0),
            last: after.unwrap_or(0),
            instance_id: id,
            api,
        };
        crate::metrics::websocket("listen", 1.0);
        let ended = pump(socket, cfg, source, session).await;
        crate::metrics::websocket("listen", -1.0);
        tracing::debug!(?ended, "listen connection ended");
    });
    Ok(with_protocol(reply, proto))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actors::events::LifecycleNotice;
    use futures_util::stream;

    fn cfg() -> WebsocketConfig {
        WebsocketConfig {
            ping_interval: Duration::from_secs(300),
            pong_timeout: Duration::from_secs(900),
            buffer: 4,
            send_timeout: Duration::from_secs(10),
            max_message_bytes: 65536,
            max_sockets_per_principal: 8,
            max_sockets_per_ip: 8,
        }
    }

    fn notice(i: u32) -> LifecycleNotice {
        LifecycleNotice::QrTimeout {
            instance_id: format!("i{i}"),
            status: "timeout",
        }
    }

    fn admin() -> Principal {
        Principal::Admin {
            username: "t".into(),
        }
    }

    /// A sink that records what it is given.
    fn recorder() -> (
        impl futures_util::Sink<Message, Error = std::convert::Infallible> + Unpin,
        std::sync::Arc<std::sync::Mutex<Vec<Message>>>,
    ) {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let sink = Box::pin(futures_util::sink::unfold((), move |(), m: Message| {
            let s2 = s2.clone();
            async move {
                s2.lock().unwrap().push(m);
                Ok::<_, std::convert::Infallible>(())
            }
        }));
        (sink, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn ghost_connection_is_closed_after_the_pong_timeout() {
        let (tx_events, rx) = broadcast::channel::<LifecycleNotice>(4);
        let (sink, seen) = recorder();
        // The client never answers (no frames at all).
        let silent = stream::pending::<Result<Message, warp::Error>>();
        let started = Instant::now();
        let ended = run_pump(
            sink,
            silent,
            cfg(),
            Source::Lifecycle {
                remote: None,
                rx,
                principal: admin(),
            },
            None,
        )
        .await;
        assert_eq!(ended, Ended::PingTimeout);
        // Pings at 5, 10 minutes; the 15-minute tick finds no pong since the start.
        assert_eq!(started.elapsed(), Duration::from_secs(900));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.iter().filter(|m| m.is_ping()).count(), 2);
        assert_eq!(
            seen.last().unwrap().close_frame().map(|c| c.0),
            Some(CLOSE_PING_TIMEOUT)
        );
        drop(tx_events);
    }

    #[tokio::test(start_paused = true)]
    async fn answered_pings_keep_the_connection() {
        let (tx_events, rx) = broadcast::channel::<LifecycleNotice>(4);
        let (sink, seen) = recorder();
        // The client answers every ping (a pong every 5 minutes), for an hour.
        let pongs = stream::unfold(0u32, |n| async move {
            if n >= 12 {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_secs(300)).await;
            Some((Ok(Message::pong(Vec::new())), n + 1))
        });
        let pongs = Box::pin(pongs);
        let source = Source::Lifecycle {
            remote: None,
            rx,
            principal: admin(),
        };
        let started = Instant::now();
        let ended = run_pump(sink, pongs, cfg(), source, None).await;
        // Alive for the hour of pongs, then closed 15 minutes after the last one.
        assert_eq!(ended, Ended::PingTimeout);
        assert!(
            started.elapsed() >= Duration::from_secs(3600 + 900),
            "{:?}",
            started.elapsed()
        );
        assert!(seen.lock().unwrap().iter().filter(|m| m.is_ping()).count() >= 12);
        drop(tx_events);
    }

    #[tokio::test(start_paused = true)]
    async fn listener_that_falls_behind_is_cut_off() {
        let (tx_events, rx) = broadcast::channel::<LifecycleNotice>(4);
        // More events than the buffer arrive before the pump gets to run.
        for i in 0..10 {
            tx_events.send(notice(i)).unwrap();
        }
        let (sink, seen) = recorder();
        let ended = run_pump(
            sink,
            stream::pending(),
            cfg(),
            Source::Lifecycle {
                remote: None,
                rx,
                principal: admin(),
            },
            None,
        )
        .await;
        assert_eq!(ended, Ended::SlowConsumer);
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.last().unwrap().close_frame().map(|c| c.0),
            Some(CLOSE_SLOW_CONSUMER)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn socket_that_stops_taking_frames_is_cut_off() {
        let (tx_events, rx) = broadcast::channel::<LifecycleNotice>(4);
        tx_events.send(notice(1)).unwrap();
        // A socket whose write never completes (the client stopped reading).
        let stuck = Box::pin(futures_util::sink::unfold(
            (),
            |(), _m: Message| async move {
                std::future::pending::<Result<(), std::convert::Infallible>>().await
            },
        ));
        let started = Instant::now();
        let ended = run_pump(
            stuck,
            stream::pending(),
            cfg(),
            Source::Lifecycle {
                remote: None,
                rx,
                principal: admin(),
            },
            None,
        )
        .await;
        assert_eq!(ended, Ended::SlowConsumer);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(10) + Duration::from_secs(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn lifecycle_events_are_filtered_by_token() {
        let (tx_events, rx) = broadcast::channel::<LifecycleNotice>(8);
        tx_events.send(notice(2)).unwrap();
        tx_events.send(notice(1)).unwrap();
        drop(tx_events);
        let (sink, seen) = recorder();
        let p = Principal::Instance {
            instance_id: "i1".into(),
        };
        let ended = run_pump(
            sink,
            stream::pending(),
            cfg(),
            Source::Lifecycle {
                rx,
                remote: None,
                principal: p,
            },
            None,
        )
        .await;
        assert_eq!(ended, Ended::SourceEnded);
        let seen = seen.lock().unwrap();
        let texts: Vec<&str> = seen.iter().filter_map(|m| m.to_str().ok()).collect();
        assert_eq!(texts.len(), 1, "{texts:?}");
        assert!(texts[0].contains("\"instance_id\":\"i1\""), "{}", texts[0]);
    }
}
