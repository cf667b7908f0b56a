//! Hardening, tried as an attacker would, against the real server: sockets that
//! outlive their credentials, half-sent requests and connection floods, one tenant's
//! webhook backlog starving others, redelivering old events to a new URL, memory
//! floods with large uploads, spoofed client addresses and password guessing, a
//! token echoed in a header, probing other tenants' numbers, CORS from a foreign
//! origin, and a send retried after its caller gave up.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{code, TestServer, ADMIN_KEY, DEADLINE, JWT_SECRET, PASSWORD, USER};
use futures_util::StreamExt;
use hmac::Mac;
use mock_whatsapp::MockNetwork;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use warp::Filter;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_ws(srv: &TestServer, path: &str, token: &str) -> Result<Socket, String> {
    let mut req = format!("ws://{}{}", srv.addr, path)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

/// Reads until the server closes the socket; returns the close code and reason.
async fn closed(ws: &mut Socket, what: &str) -> (u16, String) {
    let until = Instant::now() + DEADLINE;
    loop {
        let next = tokio::time::timeout_at(until, ws.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: the socket is still open"));
        match next {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None => panic!("{what}: closed without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("{what}: {e}"),
        }
    }
}

/// The next text frame.
async fn next_text(ws: &mut Socket) -> String {
    let until = Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no text frame: {other:?}"),
        }
    }
}

/// A JWT signed with the test server's secret, expiring `ttl` seconds from now.
fn jwt_expiring_in(ttl: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({"username": USER, "iat": now, "nbf": now, "exp": now + ttl,
        "iss": "sudevwa", "aud": "sudevwa-admin"});
    let b = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{h}.{b}");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(JWT_SECRET.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{input}.{sig}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sockets_close_when_their_credentials_or_instance_go() {
    let net = MockNetwork::start().await.unwrap();
    let erin = net.add_contact("6281200000101", "Erin").await.unwrap();
    let srv = TestServer::start(&net, "sec-sockets", &[]).await;
    let (a, ta) = srv.paired_instance(&net, "6281100000101").await;

    let mut listen_a = open_ws(&srv, &format!("/api/listen/{a}"), &ta)
        .await
        .unwrap();
    let mut ws_a = open_ws(&srv, "/ws", &ta).await.unwrap();
    let mut admin_listen = open_ws(&srv, &format!("/api/listen/{a}"), ADMIN_KEY)
        .await
        .unwrap();
    // Live before anything happens.
    erin.send_text("6281100000101", "before").await.unwrap();
    assert!(next_text(&mut listen_a).await.contains("before"));
    assert!(next_text(&mut admin_listen).await.contains("before"));

    // Revoking the instance's tokens closes the sockets opened with them, at once.
    let (s, v) = srv
        .admin("DELETE", &format!("/api/instances/{a}/token"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        closed(&mut listen_a, "listen socket after revoke").await,
        (4001, "credentials revoked".into())
    );
    assert_eq!(closed(&mut ws_a, "/ws after revoke").await.0, 4001);
    assert!(
        open_ws(&srv, &format!("/api/listen/{a}"), &ta)
            .await
            .is_err(),
        "the revoked token cannot open a new one"
    );
    // The admin's socket was not opened with those tokens: still live.
    erin.send_text("6281100000101", "after revoke")
        .await
        .unwrap();
    assert!(next_text(&mut admin_listen).await.contains("after revoke"));

    // Logging the instance out closes its listen sockets, whoever opened them.
    let (s, v) = srv.admin("POST", &format!("/api/logout/{a}"), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        closed(&mut admin_listen, "listen socket after logout").await,
        (4004, "instance logged out".into())
    );

    // Deleting an instance closes every socket of it.
    let (b, tb) = srv.create_instance().await;
    let mut listen_b = open_ws(&srv, &format!("/api/listen/{b}"), &tb)
        .await
        .unwrap();
    let mut ws_b = open_ws(&srv, "/ws", &tb).await.unwrap();
    let (s, v) = srv
        .admin("DELETE", &format!("/api/instances/{b}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let code_b = closed(&mut listen_b, "listen socket after delete").await.0;
    assert!([4001, 4004].contains(&code_b), "{code_b}");
    assert_eq!(closed(&mut ws_b, "/ws after delete").await.0, 4001);

    // A JWT's sockets close when it expires.
    let jwt = jwt_expiring_in(3);
    let mut ws_jwt = open_ws(&srv, "/ws", &jwt).await.unwrap();
    assert_eq!(
        closed(&mut ws_jwt, "/ws at JWT expiry").await,
        (4001, "token expired".into())
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn socket_caps_and_message_size_hold() {
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(
        &net,
        "sec-socket-caps",
        &[
            ("SUDEVWA_WEBSOCKET_MAX_SOCKETS_PER_PRINCIPAL", "3"),
            ("SUDEVWA_WEBSOCKET_MAX_SOCKETS_PER_IP", "5"),
            ("SUDEVWA_WEBSOCKET_MAX_MESSAGE_BYTES", "1024"),
        ],
    )
    .await;
    let (_a, ta) = srv.create_instance().await;
    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(open_ws(&srv, "/ws", &ta).await.unwrap());
    }
    let refused = open_ws(&srv, "/ws", &ta).await.unwrap_err();
    assert!(
        refused.contains("429"),
        "a 4th socket on one token: {refused}"
    );
    // Other credentials from the same address, up to the address's cap.
    mine.push(open_ws(&srv, "/ws", ADMIN_KEY).await.unwrap());
    mine.push(open_ws(&srv, "/ws", ADMIN_KEY).await.unwrap());
    let refused = open_ws(&srv, "/ws", ADMIN_KEY).await.unwrap_err();
    assert!(
        refused.contains("429"),
        "a 6th socket from one address: {refused}"
    );
    // Closing one gives its place back.
    let mut first = mine.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    let until = Instant::now() + DEADLINE;
    let mut again = loop {
        match open_ws(&srv, "/ws", &ta).await {
            Ok(ws) => break ws,
            Err(e) => {
                assert!(Instant::now() < until, "the place never came back: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // A client message over the limit ends the socket.
    {
        use futures_util::SinkExt;
        let _ = again.send(Message::text("x".repeat(64 * 1024))).await;
    }
    let until = Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(until, again.next()).await {
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(_))) => continue,
            Err(_) => panic!("an oversized message did not end the socket"),
        }
    }
    srv.stop().await;
}

/// Reads until the peer closes; `true` if it closed (EOF or reset) within `within`.
async fn server_closes(s: &mut TcpStream, within: Duration) -> bool {
    let until = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_sent_requests_are_cut_off_and_connection_caps_hold() {
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(
        &net,
        "sec-conn",
        &[
            ("SUDEVWA_SERVER_HEADER_READ_TIMEOUT_SECS", "2"),
            ("SUDEVWA_SERVER_MAX_CONNECTIONS", "40"),
            ("SUDEVWA_SERVER_MAX_CONNECTIONS_PER_IP", "1000"),
        ],
    )
    .await;
    // 40 slowloris connections, no auth: each sends half a header and stops.
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        held.push(s);
    }
    // The 41st is closed at once: the cap holds.
    let mut over = TcpStream::connect(srv.addr).await.unwrap();
    let _ = over.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        server_closes(&mut over, Duration::from_secs(1)).await,
        "a connection over the cap was served"
    );
    // Every half-sent request is cut off at the header timeout.
    let started = Instant::now();
    for (i, s) in held.iter_mut().enumerate() {
        assert!(
            server_closes(s, DEADLINE).await,
            "half-sent request {i} still held"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed by the timeout, not at once"
    );
    // The places are free again, and an idle kept-alive connection is closed too.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        server_closes(&mut s, DEADLINE).await,
        "idle kept-alive connection"
    );
    srv.stop().await;

    // Per client address.
    let srv = TestServer::start(
        &net,
        "sec-conn-ip",
        &[("SUDEVWA_SERVER_MAX_CONNECTIONS_PER_IP", "3")],
    )
    .await;
    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    let mut fourth = TcpStream::connect(srv.addr).await.unwrap();
    let _ = fourth.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        server_closes(&mut fourth, Duration::from_secs(1)).await,
        "a 4th connection from one address was served"
    );
    drop(mine);
    srv.stop().await;
}

/// A webhook receiver: answers 200, or never (`hang`).
#[derive(Clone)]
struct Hook {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
    /// Answers wait while this is false.
    open: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Hook {
    async fn start(hang: bool) -> Self {
        Self::serve(hang, true).await
    }

    /// A hook that takes requests but holds every answer until [`Hook::release`].
    async fn holding() -> Self {
        Self::serve(false, false).await
    }

    fn release(&self) {
        self.open.send_replace(true);
    }

    async fn serve(hang: bool, open: bool) -> Self {
        let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
        let open = Arc::new(tokio::sync::watch::channel(open).0);
        let (b, o) = (bodies.clone(), open.clone());
        let route = warp::post()
            .and(warp::body::bytes())
            .then(move |body: bytes::Bytes| {
                let (b, mut open) = (b.clone(), o.subscribe());
                async move {
                    b.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body).into_owned());
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    // The sender lives as long as the hook's server; if it went, answer.
                    let _ = open.wait_for(|o| *o).await;
                    warp::reply()
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Self {
            url: format!("http://{addr}/hook"),
            bodies,
            open,
        }
    }

    fn count(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&[String]) -> bool) {
        let until = Instant::now() + DEADLINE;
        while !pred(&self.bodies.lock().unwrap()) {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn set_hook(srv: &TestServer, id: &str, token: &str, url: &str) -> (u16, Value) {
    srv.call(
        "POST",
        &format!("/api/instances/{id}/webhook-setconfig"),
        Some(token),
        Some(json!({"url": url})),
    )
    .await
}

/// Pending outbox rows of an instance, read from the server's SQLite file.
async fn pending_rows(srv: &TestServer, id: &str) -> i64 {
    let rows = sqlite(
        &srv.dir,
        "SELECT COUNT(*) AS n FROM webhook_outbox WHERE instance_id = ? AND status = 'pending'",
        vec![id.into()],
    )
    .await;
    rows[0].try_get("", "n").unwrap()
}

/// An outbox row's payload, read from the server's SQLite file.
async fn outbox_payload(srv: &TestServer, id: &str) -> String {
    let rows = sqlite(
        &srv.dir,
        "SELECT payload FROM webhook_outbox WHERE id = ?",
        vec![id.into()],
    )
    .await;
    rows.first()
        .expect("the row exists")
        .try_get("", "payload")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_endpoint_with_500_queued_events_delays_others_by_one_timeout_at_most() {
    const TIMEOUT_SECS: u64 = 3;
    let net = MockNetwork::start().await.unwrap();
    let erin = net.add_contact("6281200000111", "Erin").await.unwrap();
    let srv = TestServer::start(
        &net,
        "sec-fair",
        &[
            ("SUDEVWA_ENABLE_WEBHOOK", "true"),
            ("SUDEVWA_WEBHOOK_TIMEOUT_SECS", "3"),
            ("SUDEVWA_WEBHOOK_RETRY_SCHEDULE", "10m"),
        ],
    )
    .await;
    let (a, ta) = srv.paired_instance(&net, "6281100000111").await;
    let (b, tb) = srv.paired_instance(&net, "6281100000112").await;
    let hang = Hook::start(true).await;
    let fine = Hook::start(false).await;
    assert_eq!(set_hook(&srv, &a, &ta, &hang.url).await.0, 200);
    assert_eq!(set_hook(&srv, &b, &tb, &fine.url).await.0, 200);
    // The attacker's contact floods A: 500 events queue behind A's hung endpoint.
    for i in 0..500 {
        erin.send_text("6281100000111", &format!("flood {i}"))
            .await
            .unwrap();
    }
    let until = Instant::now() + DEADLINE * 2;
    while pending_rows(&srv, &a).await < 490 {
        assert!(Instant::now() < until, "A's backlog never built up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(hang.count() >= 1, "A's endpoint is being tried (and hangs)");
    // B's event is delivered within one attempt timeout of A's endpoint.
    let sent = Instant::now();
    erin.send_text("6281100000112", "to b").await.unwrap();
    fine.wait_for("B's delivery", |b| b.iter().any(|x| x.contains("to b")))
        .await;
    let waited = sent.elapsed();
    assert!(
        waited <= Duration::from_secs(TIMEOUT_SECS) + Duration::from_secs(2),
        "B waited {waited:?} behind A's backlog"
    );
    srv.stop().await;
}

/// One instance's backlog longer than a worker batch (256) goes out complete and in
/// the order it was written, across the worker's passes and an instance's continued
/// turn (which looks up its next rows from where the last batch ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_longer_than_a_batch_arrives_complete_and_in_order() {
    const N: usize = 600;
    let net = MockNetwork::start().await.unwrap();
    let erin = net.add_contact("6281200000131", "Erin").await.unwrap();
    let srv = TestServer::start(
        &net,
        "sec-order",
        &[
            ("SUDEVWA_ENABLE_WEBHOOK", "true"),
            ("SUDEVWA_WEBHOOK_TIMEOUT_SECS", "60"),
        ],
    )
    .await;
    let (a, ta) = srv.paired_instance(&net, "6281100000131").await;
    let hook = Hook::holding().await;
    assert_eq!(set_hook(&srv, &a, &ta, &hook.url).await.0, 200);
    for i in 0..N {
        erin.send_text("6281100000131", &format!("queued {i}"))
            .await
            .unwrap();
    }
    let until = Instant::now() + DEADLINE * 2;
    while pending_rows(&srv, &a).await < N as i64 {
        assert!(Instant::now() < until, "the backlog never built up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hook.release();
    let texts = |bodies: &[String]| -> Vec<String> {
        bodies
            .iter()
            .filter_map(|b| {
                let v: Value = serde_json::from_str(b).ok()?;
                let t = v["data"]["message"].as_str()?;
                t.starts_with("queued ").then(|| t.to_string())
            })
            .collect()
    };
    hook.wait_for("every queued event", |b| texts(b).len() >= N)
        .await;
    let bodies = hook.bodies.lock().unwrap().clone();
    let want: Vec<String> = (0..N).map(|i| format!("queued {i}")).collect();
    let got = texts(&bodies);
    let first_off = got.iter().zip(&want).position(|(g, w)| g != w);
    assert!(
        got.len() == want.len() && first_off.is_none(),
        "each once, in the order written: {} delivered, first out of place at {first_off:?}: {:?}",
        got.len(),
        first_off.map(|i| &got[i..(i + 3).min(got.len())])
    );
    let cursors: Vec<i64> = bodies
        .iter()
        .map(|b| {
            let v: Value = serde_json::from_str(b).unwrap();
            v["cursor"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "deliveries in cursor order"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn old_events_cannot_be_redelivered_to_a_new_url_by_an_instance_token() {
    let net = MockNetwork::start().await.unwrap();
    let erin = net.add_contact("6281200000121", "Erin").await.unwrap();
    let srv = TestServer::start(
        &net,
        "sec-redeliver",
        &[
            ("SUDEVWA_ENABLE_WEBHOOK", "true"),
            ("SUDEVWA_MESSAGES_PRUNE_INTERVAL_SECS", "1"),
            ("SUDEVWA_WEBHOOK_PAYLOAD_RETENTION_SECS", "10"),
        ],
    )
    .await;
    let (a, ta) = srv.paired_instance(&net, "6281100000121").await;
    let first = Hook::start(false).await;
    assert_eq!(set_hook(&srv, &a, &ta, &first.url).await.0, 200);
    erin.send_text("6281100000121", "old secret").await.unwrap();
    first
        .wait_for("the first delivery", |b| {
            b.iter().any(|x| x.contains("old secret"))
        })
        .await;
    let log = |token: String| {
        let srv = &srv;
        let a = a.clone();
        async move {
            let (s, v) = srv
                .call(
                    "GET",
                    &format!("/api/instances/{a}/webhooks"),
                    Some(&token),
                    None,
                )
                .await;
            assert_eq!(s, 200, "{v}");
            v["data"]["deliveries"].as_array().unwrap().clone()
        }
    };
    let old_id = log(ta.clone()).await[0]["id"].as_str().unwrap().to_string();

    // The token holder points the webhook elsewhere and asks for the old event again.
    let second = Hook::start(false).await;
    assert_eq!(set_hook(&srv, &a, &ta, &second.url).await.0, 200);
    let redeliver = |token: String, id: String| {
        let srv = &srv;
        let a = a.clone();
        async move {
            srv.call(
                "POST",
                &format!("/api/instances/{a}/webhooks/{id}/redeliver"),
                Some(&token),
                None,
            )
            .await
        }
    };
    let (s, v) = redeliver(ta.clone(), old_id.clone()).await;
    assert_eq!((s, code(&v)), (403, "FORBIDDEN"), "{v}");
    // Events queued for today's URL may be redelivered by the token.
    erin.send_text("6281100000121", "new one").await.unwrap();
    second
        .wait_for("the new delivery", |b| {
            b.iter().any(|x| x.contains("new one"))
        })
        .await;
    let new_id = log(ta.clone()).await[0]["id"].as_str().unwrap().to_string();
    let (s, v) = redeliver(ta.clone(), new_id).await;
    assert_eq!(s, 200, "{v}");
    // An admin may send the old one on purpose.
    let (s, v) = redeliver(ADMIN_KEY.to_string(), old_id.clone()).await;
    assert_eq!(s, 200, "{v}");
    second
        .wait_for("the admin's redelivery", |b| {
            b.iter().any(|x| x.contains("old secret"))
        })
        .await;
    // After the retention, a delivered event keeps no payload and cannot be sent again.
    // (Watched in the database: asking for a redelivery would queue it afresh.)
    let until = Instant::now() + DEADLINE;
    while !outbox_payload(&srv, &old_id).await.is_empty() {
        assert!(Instant::now() < until, "the payload was never dropped");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (s, v) = redeliver(ADMIN_KEY.to_string(), old_id.clone()).await;
    assert_eq!((s, code(&v)), (410, "PAYLOAD_EXPIRED"), "{v}");
    let (s, v) = redeliver(ta.clone(), old_id.clone()).await;
    assert_eq!(s, 410, "{v}");
    srv.stop().await;

    // With webhook.instance_tokens_set_url = false only an admin sets URLs.
    let srv = TestServer::start(
        &net,
        "sec-redeliver-admin-only",
        &[("SUDEVWA_WEBHOOK_INSTANCE_TOKENS_SET_URL", "false")],
    )
    .await;
    let (b, tb) = srv.create_instance().await;
    let (s, v) = set_hook(&srv, &b, &tb, &first.url).await;
    assert_eq!((s, code(&v)), (403, "FORBIDDEN"), "{v}");
    assert_eq!(set_hook(&srv, &b, ADMIN_KEY, &first.url).await.0, 200);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spoofed_addresses_and_spread_password_guessing_are_limited() {
    let net = MockNetwork::start().await.unwrap();
    // No trusted proxy: X-Forwarded-For is the attacker's to write and means nothing.
    let srv = TestServer::start(
        &net,
        "sec-proxy-off",
        &[
            ("SUDEVWA_LIMITS_AUTH_FAILURES_PER_MIN", "1"),
            ("SUDEVWA_LIMITS_AUTH_FAILURE_BURST", "3"),
        ],
    )
    .await;
    let wrong = |srv: &TestServer, xff: &str| {
        srv.http
            .get(srv.url("/api/instances"))
            .bearer_auth("wrong-token")
            .header("x-forwarded-for", xff.to_string())
            .send()
    };
    for i in 0..3 {
        let r = wrong(&srv, &format!("10.0.0.{i}")).await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = wrong(&srv, "10.0.0.99").await.unwrap();
    assert_eq!(
        r.status(),
        429,
        "a new header value does not buy new guesses"
    );
    srv.stop().await;

    // Behind a trusted proxy, each forwarded client has its own budget, and
    // guessing one account's password from many addresses backs off per account.
    let srv = TestServer::start(
        &net,
        "sec-proxy-on",
        &[
            ("SUDEVWA_SERVER_TRUSTED_PROXIES", "127.0.0.1/32"),
            ("SUDEVWA_LIMITS_AUTH_FAILURES_PER_MIN", "1"),
            ("SUDEVWA_LIMITS_AUTH_FAILURE_BURST", "3"),
        ],
    )
    .await;
    for i in 0..3 {
        assert_eq!(
            wrong(&srv, "203.0.113.7").await.unwrap().status(),
            401,
            "{i}"
        );
    }
    assert_eq!(wrong(&srv, "203.0.113.7").await.unwrap().status(), 429);
    assert_eq!(
        wrong(&srv, "203.0.113.8").await.unwrap().status(),
        401,
        "another client behind the proxy is not throttled"
    );
    let login = |xff: String, password: &'static str| {
        srv.http
            .post(srv.url("/login-jwt"))
            .header("x-forwarded-for", xff)
            .json(&json!({"username": USER, "password": password}))
            .send()
    };
    // Six wrong passwords, each from a fresh address (no per-address limit is hit).
    for i in 0..6 {
        let r = login(format!("198.51.100.{i}"), "guess").await.unwrap();
        assert_eq!(r.status(), 401, "guess {i}");
    }
    let r = login("198.51.100.200".into(), PASSWORD).await.unwrap();
    assert_eq!(
        r.status(),
        429,
        "the account backs off, right password included"
    );
    assert!(r.headers().contains_key("retry-after"));
    let until = Instant::now() + DEADLINE;
    for attempt in 1.. {
        // A fresh address each time: only the account's backoff is in the way.
        let r = login(format!("198.51.100.{}", 200 + attempt), PASSWORD)
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 429);
        assert!(Instant::now() < until, "the backoff never ended");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn low_findings_token_echo_number_probing_cors_and_abandoned_sends() {
    let net = MockNetwork::start().await.unwrap();
    let mut bob = net.add_contact("6281200000131", "Bob").await.unwrap();
    let srv = TestServer::start(
        &net,
        "sec-low",
        &[("SUDEVWA_SERVER_CORS_ORIGINS", "https://app.example")],
    )
    .await;
    let (a, ta) = srv.paired_instance(&net, "6281100000131").await;
    let (_b, _tb) = srv.paired_instance(&net, "6281100000132").await;

    // A token offered as the only subprotocol is never echoed back.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: {ta}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains(&ta.to_lowercase()), "token echoed: {head}");
    drop(s);

    // Another tenant's number reads exactly like an unknown one.
    let send = |number: &str| {
        let path = format!("/api/by-number/{number}");
        let (srv, ta) = (&srv, ta.clone());
        async move {
            srv.call(
                "POST",
                &path,
                Some(&ta),
                Some(json!({"to": "6281200000131", "message": "probe"})),
            )
            .await
        }
    };
    let (s_other, v_other) = send("6281100000132").await;
    let (s_unknown, v_unknown) = send("6281100000199").await;
    assert_eq!((s_other, s_unknown), (404, 404));
    assert_eq!(v_other, v_unknown);

    // CORS from a foreign origin: 403 in the envelope, not a server error.
    let r = srv
        .http
        .get(srv.url("/api/instances"))
        .header("origin", "https://evil.example")
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(code(&v), "CORS_FORBIDDEN");
    let r = srv
        .http
        .get(srv.url("/api/instances"))
        .header("origin", "https://app.example")
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A send whose caller gave up before its turn came is not sent: a held upload
    // keeps the chat's turn, a text behind it times out at the client, and after
    // the upload is released only the media and a later text arrive.
    net.hold_uploads(true);
    let upload = {
        let (http, url, token) = (
            srv.http.clone(),
            srv.url(&format!("/api/send/{a}/media")),
            ta.clone(),
        );
        tokio::spawn(async move {
            let form = reqwest::multipart::Form::new()
                .text("to", "6281200000131")
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(vec![7u8; 10_000]).file_name("doc.pdf"),
                );
            http.post(url)
                .bearer_auth(&token)
                .multipart(form)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let until = Instant::now() + DEADLINE;
    while net.uploads_held() < 1 {
        assert!(Instant::now() < until, "the upload never reached the mock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gave_up = srv
        .http
        .post(srv.url(&format!("/api/send/{a}")))
        .bearer_auth(&ta)
        .json(&json!({"to": "6281200000131", "message": "abandoned"}))
        .timeout(Duration::from_millis(1500))
        .send()
        .await;
    assert!(gave_up.is_err(), "the text waited behind the upload");
    net.hold_uploads(false);
    assert_eq!(upload.await.unwrap(), 200);
    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/send/{a}"),
            Some(&ta),
            Some(json!({"to": "6281200000131", "message": "later"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // Same chat, in order: had the abandoned text gone out, it would come first.
    let first_text = bob.next_text().await.unwrap();
    assert_eq!(first_text.text, "later");
    srv.stop().await;
}

/// A process's resident memory (`VmRSS`) or its peak (`VmHWM`), in bytes.
#[cfg(feature = "sandbox")]
fn proc_mem(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("a memory field in /proc/PID/status")
        * 1024
}

/// The real binary (its memory is its own), a media cap of 256 MiB, eight clients
/// uploading 90 MiB documents at once: the sends that fit go through, the rest are
/// told 503 SERVER_BUSY at once, and the server's peak memory grows by less than the
/// cap (plus a margin for the allocator and the server itself).
#[cfg(feature = "sandbox")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_90_mib_uploads_stay_under_the_media_cap() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    const CAP: u64 = 256 * 1024 * 1024;
    const FILE: u64 = 90 * 1024 * 1024;
    const MARGIN: u64 = 64 * 1024 * 1024;
    let net = MockNetwork::start().await.unwrap();
    let _cai = net.add_contact("6281200000141", "Cai").await.unwrap();
    let dir = std::env::temp_dir().join(format!("sudevwa-sec-media-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sudevwa"))
        .args(["--sandbox", "--mock-url", &net.base_url()])
        .current_dir(&dir)
        .env_clear()
        .env("PORT", "0")
        .env("RUST_LOG", "warn")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/db.sqlite", dir.display()),
        )
        .env("SUDEVWA_AUTH_ADMIN_API_KEYS", ADMIN_KEY)
        .env("SUDEVWA_LIMITS_MAX_MEDIA_IN_FLIGHT_BYTES", CAP.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let out = BufReader::new(child.stdout.take().unwrap());
    let child = Kill(child);
    let pid = child.0.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("listening on ") {
                let _ = tx.send(a.to_string());
            }
        }
    });
    let base = rx.recv_timeout(DEADLINE).expect("server starts");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let call = |method: &str, path: &str| {
        http.request(method.parse().unwrap(), format!("{base}{path}"))
            .bearer_auth(ADMIN_KEY)
            .send()
    };
    let v: Value = call("POST", "/api/login")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = v["data"]["instanceId"].as_str().unwrap().to_string();
    let until = Instant::now() + DEADLINE;
    let qr = loop {
        let v: Value = call("GET", &format!("/api/qr/{id}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(q) = v["data"]["qr"].as_str() {
            break q.to_string();
        }
        assert!(Instant::now() < until, "no QR: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    net.scan_qr(&qr, Some("6281100000141")).unwrap();
    loop {
        let v: Value = call("GET", &format!("/api/status/{id}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["data"]["status"] == "online" {
            break;
        }
        assert!(Instant::now() < until, "never online: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let baseline = proc_mem(pid, "VmRSS:");

    let uploads: Vec<_> = (0..8)
        .map(|i| {
            let (http, url) = (http.clone(), format!("{base}/api/send/{id}/media"));
            tokio::spawn(async move {
                // Streamed: the test process never holds the 90 MiB.
                let chunks = futures_util::stream::iter(
                    (0..90)
                        .map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 1 << 20]))),
                );
                let part = reqwest::multipart::Part::stream_with_length(
                    reqwest::Body::wrap_stream(chunks),
                    FILE,
                )
                .file_name(format!("big{i}.pdf"));
                let form = reqwest::multipart::Form::new()
                    .text("to", "6281200000141")
                    .part("file", part);
                match http
                    .post(url)
                    .bearer_auth(ADMIN_KEY)
                    .multipart(form)
                    .send()
                    .await
                {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        Some((s, v))
                    }
                    // Refused mid-body: the server answered and closed first.
                    Err(_) => None,
                }
            })
        })
        .collect();
    let mut sent = 0;
    for u in uploads {
        match u.await.unwrap() {
            Some((200, _)) => sent += 1,
            Some((503, v)) => assert_eq!(code(&v), "SERVER_BUSY"),
            None => {}
            Some(other) => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(sent >= 1, "at least the uploads that fit go through");
    let peak = proc_mem(pid, "VmHWM:");
    let grew = peak.saturating_sub(baseline);
    eprintln!(
        "media cap: {sent}/8 sent, peak RSS grew {} MiB over {} MiB (cap {} MiB)",
        grew >> 20,
        baseline >> 20,
        CAP >> 20
    );
    assert!(
        grew <= CAP + MARGIN,
        "peak RSS grew {} MiB, over the {} MiB cap",
        grew >> 20,
        CAP >> 20
    );
    drop(child);
}

/// Runs one SQL statement on the server's SQLite file (between runs, or read-only).
async fn sqlite(
    srv_dir: &std::path::Path,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> Vec<sea_orm::QueryResult> {
    use sea_orm::{ConnectionTrait, Statement};
    let db = sea_orm::Database::connect(format!("sqlite://{}/db.sqlite", srv_dir.display()))
        .await
        .unwrap();
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            sea_orm::DatabaseBackend::Sqlite,
            sql,
            values,
        ))
        .await
        .unwrap();
    let _ = db.close().await;
    rows
}

/// The generated login is checked with the round count stored beside its hash (off
/// the async workers), and an instance token's use is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stored_login_uses_its_round_count_and_token_use_is_recorded() {
    let net = MockNetwork::start().await.unwrap();
    // No login configured: the first start generates one and stores its hash.
    let no_login = [("APP_LOGIN_USERNAME", ""), ("APP_LOGIN_PASSWORD", "")];
    let srv = TestServer::start(&net, "sec-login", &no_login).await;
    let (id, token) = srv.create_instance().await;
    let (s, _) = srv
        .call("GET", &format!("/api/status/{id}"), Some(&token), None)
        .await;
    assert_eq!(s, 200);
    let dir = srv.dir.clone();
    let until = Instant::now() + DEADLINE;
    loop {
        let rows = sqlite(
            &dir,
            "SELECT last_used_at FROM api_tokens WHERE instance_id = ?",
            vec![id.clone().into()],
        )
        .await;
        let used: Option<i64> = rows[0].try_get("", "last_used_at").unwrap();
        if used.is_some_and(|t| t > 0) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the token's last use was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    srv.stop().await;

    // An operator's hash made with 1,000 rounds (not the default 100,000).
    let salt = "0123456789abcdef";
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(b"thousand-rounds", salt.as_bytes(), 1000, &mut out);
    let value = format!("pbkdf2-sha256$1000${salt}${}", hex::encode(out));
    sqlite(
        &dir,
        "UPDATE settings SET value = ? WHERE key = 'login:admin'",
        vec![value.into()],
    )
    .await;
    let srv = TestServer::start_in(&net, dir, &no_login).await;
    let login = |password: &'static str| {
        srv.http
            .post(srv.url("/login-jwt"))
            .json(&json!({"username": "admin", "password": password}))
            .send()
    };
    assert_eq!(login("thousand-rounds").await.unwrap().status(), 200);
    assert_eq!(login("wrong").await.unwrap().status(), 401);
    // Parallel guesses are hashed off the async workers: the server keeps answering.
    let guesses: Vec<_> = (0..8).map(|_| tokio::spawn(login("wrong"))).collect();
    let (s, _) = srv.call("GET", "/", None, None).await;
    assert_eq!(s, 200);
    for g in guesses {
        let s = g.await.unwrap().unwrap().status().as_u16();
        assert!([401, 429].contains(&s), "{s}");
    }
    srv.stop().await;
}

/// A receiver keeping every request's headers and body.
async fn capture() -> (
    String,
    Arc<Mutex<Vec<(warp::http::HeaderMap, bytes::Bytes)>>>,
) {
    let seen: Arc<Mutex<Vec<(warp::http::HeaderMap, bytes::Bytes)>>> = Arc::default();
    let s = seen.clone();
    let route = warp::post()
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .map(move |h, b| {
            s.lock().unwrap().push((h, b));
            warp::reply()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (format!("http://{addr}/hook"), seen)
}

/// Deliveries carry a Standard Webhooks signature over id, timestamp and body (a
/// stock verifier accepts it; a replay under a fresh timestamp fails), beside
/// SUDEVWA's; a webhook stored without a secret is sent unsigned, never signed with
/// an empty key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_verify_with_a_standard_webhooks_verifier() {
    let net = MockNetwork::start().await.unwrap();
    let erin = net.add_contact("6281200000151", "Erin").await.unwrap();
    let srv = TestServer::start(&net, "sec-stdhooks", &[("SUDEVWA_ENABLE_WEBHOOK", "true")]).await;
    let (a, _) = srv.paired_instance(&net, "6281100000151").await;
    let (url, seen) = capture().await;
    let (s, v) = srv
        .admin(
            "POST",
            &format!("/api/instances/{a}/webhook-setconfig"),
            Some(json!({"url": url})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let secret = v["data"]["secret"].as_str().unwrap().to_string();
    let std_secret = v["data"]["standardWebhooksSecret"]
        .as_str()
        .unwrap()
        .to_string();
    erin.send_text("6281100000151", "signed").await.unwrap();
    let until = Instant::now() + DEADLINE;
    let (headers, body) = loop {
        if let Some(hit) = seen.lock().unwrap().first().cloned() {
            break hit;
        }
        assert!(Instant::now() < until, "no delivery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let wh = standardwebhooks::Webhook::new(&std_secret).unwrap();
    wh.verify(&body, &headers)
        .expect("a Standard Webhooks verifier accepts it");
    assert_eq!(
        headers["x-sudevwa-signature"].to_str().unwrap(),
        sudevwa::webhook::signature(&secret, &body)
    );
    // A replay that claims a fresh timestamp no longer verifies (and an old timestamp
    // is refused by the verifier's tolerance).
    let mut replay = headers.clone();
    let fresh = (chrono::Utc::now().timestamp() + 1).to_string();
    replay.insert("webhook-timestamp", fresh.parse().unwrap());
    assert!(wh.verify(&body, &replay).is_err());
    let mut tampered = body.to_vec();
    tampered.extend_from_slice(b" ");
    assert!(wh.verify(&tampered, &headers).is_err());

    // A webhook without a stored secret (set before secrets were always generated).
    sqlite(
        &srv.dir,
        "UPDATE instances SET webhook_secret = NULL WHERE id = ?",
        vec![a.clone().into()],
    )
    .await;
    // The server caches webhook targets; a change made behind its back by SQL is
    // announced (a legacy row without a secret is simply read at start).
    sudevwa::store::instances::webhook_settings_changed();
    erin.send_text("6281100000151", "unsigned").await.unwrap();
    let until = Instant::now() + DEADLINE;
    let headers = loop {
        let hit = seen
            .lock()
            .unwrap()
            .iter()
            .find(|(_, b)| String::from_utf8_lossy(b).contains("unsigned"))
            .cloned();
        if let Some((h, _)) = hit {
            break h;
        }
        assert!(Instant::now() < until, "no second delivery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(headers.contains_key("webhook-id"));
    assert!(!headers.contains_key("x-sudevwa-signature"));
    assert!(!headers.contains_key("webhook-signature"));
    srv.stop().await;
}
