//! WebSockets: `/ws` (lifecycle events of every instance the token may see) and
//! `/api/listen/:id` (one instance's `incoming_message` events).
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
use actors::events::{IncomingMessage, LifecycleNotice};
use actors::instance::InstanceMsg;
use futures_util::{SinkExt, StreamExt};
use ractor::call_t;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;
use warp::filters::ws::{Message, WebSocket, Ws};
use warp::http::StatusCode;
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
        rx: broadcast::Receiver<IncomingMessage>,
        instance_id: String,
        api: Shared,
    },
}

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
                instance_id,
                api,
            } => loop {
                match rx.recv().await {
                    Ok(m) => return Next::Event(m.to_envelope().to_string()),
                    Err(RecvError::Lagged(_)) => return Next::Slow,
                    Err(RecvError::Closed) => {
                        // The actor restarted: follow the new one.
                        match resubscribe(api, instance_id).await {
                            Some(new_rx) => *rx = new_rx,
                            None => return Next::End,
                        }
                    }
                }
            },
        }
    }
}

/// Waits (bounded) for the instance's actor to be back and subscribes again.
async fn resubscribe(api: &Shared, id: &str) -> Option<broadcast::Receiver<IncomingMessage>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(a) = api.runtime.actor(id) {
            if let Ok(rx) = call_t!(a, InstanceMsg::Subscribe, 5_000) {
                return Some(rx);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

async fn pump(socket: WebSocket, cfg: WebsocketConfig, mut source: Source) {
    let (mut tx, mut rx) = socket.split();
    let start = Instant::now() + cfg.ping_interval;
    let mut ping = tokio::time::interval_at(start, cfg.ping_interval);
    let mut last_pong = Instant::now();
    let close = |code: u16, why: &'static str| Message::close_with(code, why);
    loop {
        tokio::select! {
            next = source.next() => match next {
                Next::Event(text) => {
                    match tokio::time::timeout(cfg.send_timeout, tx.send(Message::text(text))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break,
                        Err(_) => {
                            let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(close(CLOSE_SLOW_CONSUMER, "slow consumer"))).await;
                            break;
                        }
                    }
                }
                Next::Slow => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(close(CLOSE_SLOW_CONSUMER, "slow consumer"))).await;
                    break;
                }
                Next::End => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(close(1001, "going away"))).await;
                    break;
                }
            },
            msg = rx.next() => match msg {
                Some(Ok(m)) if m.is_pong() => last_pong = Instant::now(),
                Some(Ok(m)) if m.is_close() => break,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            _ = ping.tick() => {
                if last_pong.elapsed() >= cfg.pong_timeout {
                    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(close(CLOSE_PING_TIMEOUT, "ping timeout"))).await;
                    break;
                }
                match tokio::time::timeout(cfg.send_timeout, tx.send(Message::ping(Vec::new()))).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
        }
    }
}

/// `GET /ws`.
pub fn global(p: Principal, ws: Ws, proto: Option<String>, api: Shared) -> Response {
    let cfg = api.config.websocket.clone();
    let rx = api.runtime.lifecycle();
    let reply = ws.on_upgrade(move |socket| pump(socket, cfg, Source::Lifecycle { rx, principal: p }));
    with_protocol(reply, proto)
}

/// `GET /api/listen/:id`.
pub async fn listen(
    id: String,
    p: Principal,
    ws: Ws,
    proto: Option<String>,
    api: Shared,
) -> Result<Response, ApiError> {
    if !api.config.features.enable_websocket {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "WEBSOCKET_DISABLED",
            "The listen socket is disabled (SUDEVWA_ENABLE_WEBSOCKET=false)",
        ));
    }
    let instance = handlers::instance_for_ws(&api, &p, &id).await?;
    let actor = api.runtime.ensure_started(&instance).await.map_err(|e| {
        tracing::warn!(instance_id = %id, error = %e, "instance actor could not start");
        ApiError::internal()
    })?;
    let rx = call_t!(actor, InstanceMsg::Subscribe, 5_000).map_err(|_| ApiError::internal())?;
    let cfg = api.config.websocket.clone();
    let reply = ws.on_upgrade(move |socket| {
        pump(
            socket,
            cfg,
            Source::Listen {
                rx,
                instance_id: id,
                api,
            },
        )
    });
    Ok(with_protocol(reply, proto))
}
