//! WebSockets: `/ws` (lifecycle events of every instance the token may see) and
//! `/api/listen/:id` (one instance's `incoming_message` and `message_status` events).
//!
//! Upkeep, the same on both: the server pings every `websocket.ping_interval_secs`;
//! a connection that has not answered with a pong for `websocket.pong_timeout_secs`
//! is closed with code 4000 ("ping timeout"). Events come from bounded broadcasts; a
//! listener that falls more than `websocket.buffer` events behind, or whose socket
//! does not take a frame within `websocket.send_timeout_secs`, is closed with code
//! 4008 ("slow consumer") — memory never grows with a slow reader.

use super::auth::Principal;
use super::error::ApiError;
use super::{handlers, Shared};
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

/// Echoes the subprotocol a browser offered (it must see one it offered).
fn with_protocol(reply: impl Reply, offered: Option<String>) -> Response {
    let mut r = reply.into_response();
    if let Some(offered) = offered {
        let chosen = offered
            .split(',')
            .map(str::trim)
            .find(|s| s.eq_ignore_ascii_case("bearer"))
            .or_else(|| offered.split(',').map(str::trim).find(|s| !s.is_empty()))
            .map(str::to_string);
        if let Some(v) = chosen.and_then(|c| warp::http::HeaderValue::from_str(&c).ok()) {
            r.headers_mut().insert("sec-websocket-protocol", v);
        }
    }
    r
}

/// What a socket forwards.
enum Source {
    Lifecycle {
        rx: broadcast::Receiver<LifecycleNotice>,
        principal: Principal,
    },
    Listen {
        rx: broadcast::Receiver<LiveEvent>,
        /// Stored events still to replay before going live.
        backlog: std::collections::VecDeque<LiveEvent>,
        /// The cursor to read the next replay page after; `None` once caught up.
        replay_after: Option<i64>,
        /// The last cursor sent: live events at or below it were replayed already.
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
            Source::Lifecycle { rx, principal } => loop {
                match rx.recv().await {
                    Ok(n) if principal.may_access(n.instance_id()) => {
                        return Next::Event(n.to_envelope().to_string())
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => return Next::Slow,
                    Err(RecvError::Closed) => return Next::End,
                }
            },
            Source::Listen {
                rx,
                backlog,
                replay_after,
                last,
                instance_id,
                api,
            } => loop {
                if let Some(e) = backlog.pop_front() {
                    *last = e.cursor;
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
                    Ok(e) if e.cursor != 0 && e.cursor <= *last => {}
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
const LISTEN_EVENTS: &[&str] = &["incoming_message", "message_status"];

async fn subscribe(
    a: &ractor::ActorRef<InstanceMsg>,
) -> Result<broadcast::Receiver<LiveEvent>, ApiError> {
    call_t!(a, InstanceMsg::Subscribe, 5_000).map_err(|_| ApiError::internal())
}

/// Waits (bounded) for the instance's actor to be back and subscribes again.
async fn resubscribe(api: &Shared, id: &str) -> Option<broadcast::Receiver<LiveEvent>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(a) = api.runtime.actor(id) {
            if let Ok(pair) = subscribe(&a).await {
                return Some(pair);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
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
}

async fn pump(socket: WebSocket, cfg: WebsocketConfig, source: Source) -> Ended {
    let (tx, rx) = socket.split();
    run_pump(tx, rx, cfg, source).await
}

/// Forwards events to `tx` and keeps the connection honest (pings, pong timeout,
/// slow-consumer cut-off). Generic over the socket halves so it is testable.
async fn run_pump<T, R>(mut tx: T, mut rx: R, cfg: WebsocketConfig, mut source: Source) -> Ended
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

/// `GET /ws`.
pub fn global(p: Principal, ws: Ws, proto: Option<String>, api: Shared) -> Response {
    let cfg = api.config.websocket.clone();
    let rx = api.runtime.lifecycle();
    let reply = ws.on_upgrade(move |socket| async move {
        let ended = pump(socket, cfg, Source::Lifecycle { rx, principal: p }).await;
        tracing::debug!(?ended, "/ws connection ended");
    });
    with_protocol(reply, proto)
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
    ws: Ws,
    proto: Option<String>,
    api: Shared,
) -> Result<Response, ApiError> {
    let after = after_cursor(&query)?;
    let instance = handlers::instance_for_ws(&api, &p, &id).await?;
    let actor = api.runtime.ensure_started(&instance).await.map_err(|e| {
        tracing::warn!(instance_id = %id, error = %e, "instance actor could not start");
        ApiError::internal()
    })?;
    // Subscribed before the log is read: nothing committed in between is missed.
    let rx = subscribe(&actor).await?;
    let cfg = api.config.websocket.clone();
    let reply = ws.on_upgrade(move |socket| async move {
        let source = Source::Listen {
            rx,
            backlog: Default::default(),
            replay_after: after,
            last: after.unwrap_or(0),
            instance_id: id,
            api,
        };
        let ended = pump(socket, cfg, source).await;
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
                rx,
                principal: admin(),
            },
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
            rx,
            principal: admin(),
        };
        let started = Instant::now();
        let ended = run_pump(sink, pongs, cfg(), source).await;
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
                rx,
                principal: admin(),
            },
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
                rx,
                principal: admin(),
            },
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
            Source::Lifecycle { rx, principal: p },
        )
        .await;
        assert_eq!(ended, Ended::SourceEnded);
        let seen = seen.lock().unwrap();
        let texts: Vec<&str> = seen.iter().filter_map(|m| m.to_str().ok()).collect();
        assert_eq!(texts.len(), 1, "{texts:?}");
        assert!(texts[0].contains("\"instance_id\":\"i1\""), "{}", texts[0]);
    }
}
