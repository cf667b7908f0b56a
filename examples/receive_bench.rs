//! Receive throughput with and without the inbound durability hook.
//!
//! The real server (in-process, SQLite in a temp dir, webhooks on with a local
//! receiver) against the mock network: `CONTACTS` contacts send `N` texts each to one
//! instance as fast as their clients allow; the figure is messages per second from
//! the first send until the last one is on the instance's listen socket, once with
//! `messages.ack_after_commit = true` (ack only after the commit) and once with
//! `false` (ack on decrypt, commit afterwards).
//!
//! ```sh
//! cargo run --release --features sandbox --example receive_bench -- 200 4
//! ```
//! Loopback only; bounded by N and a deadline.

#[path = "../tests/common/mod.rs"]
mod common;

use common::TestServer;
use futures_util::StreamExt;
use mock_whatsapp::MockNetwork;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use warp::Filter;

async fn run(n: usize, contacts: usize, hook: bool) -> f64 {
    let net = MockNetwork::start().await.expect("mock starts");
    let flag = if hook { "true" } else { "false" };
    let srv = TestServer::start(
        &net,
        &format!("bench-{flag}"),
        &[
            ("SUDEVWA_ENABLE_WEBHOOK", "true"),
            ("SUDEVWA_MESSAGES_ACK_AFTER_COMMIT", flag),
        ],
    )
    .await;
    let (id, token) = srv.paired_instance(&net, "6281700000001").await;
    // A receiver that takes every webhook.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        warp::serve(warp::any().map(warp::reply))
            .incoming(listener)
            .run(),
    );
    let (s, v) = srv
        .admin(
            "POST",
            &format!("/api/instances/{id}/webhook-setconfig"),
            Some(json!({"url": format!("http://{addr}/hook")})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut req = format!("ws://{}/api/listen/{id}", srv.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut senders = Vec::new();
    for c in 0..contacts {
        senders.push(
            net.add_contact(&format!("62817000001{c:02}"), "Bench")
                .await
                .unwrap(),
        );
    }
    let total = n * contacts;
    let start = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                for i in 0..n {
                    c.send_text("6281700000001", &format!("bench {i}"))
                        .await
                        .unwrap();
                }
                c
            })
        })
        .collect();
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while got < total {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("all messages within the deadline")
            .unwrap()
            .unwrap();
        if let Ok(t) = m.to_text() {
            if serde_json::from_str::<Value>(t).is_ok_and(|v| v["event"] == "incoming_message") {
                got += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    srv.stop().await;
    total as f64 / secs
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(200);
    let contacts = args.get(1).copied().unwrap_or(4);
    for hook in [false, true, false, true] {
        let rate = run(n, contacts, hook).await;
        println!(
            "ack_after_commit={hook}: {} messages from {contacts} contacts: {rate:.0} msg/s",
            n * contacts
        );
    }
}
