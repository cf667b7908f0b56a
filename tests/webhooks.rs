//! Durable signed webhooks, end to end: a contact's message reaches the listen socket
//! and a real HTTP receiver with identical payloads and a verifiable signature;
//! retries keep the `webhook-id`; hanging receivers time out; a receiver down for the
//! whole schedule ends in dead-letter and is redelivered by the API; a hard-killed
//! server delivers its outbox after restart; the feature flag sends nothing when off.

mod common;

use common::{TestServer, ADMIN_KEY, DEADLINE};
use futures_util::StreamExt;
use mock_whatsapp::MockNetwork;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sudevwa::webhook::signature;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use warp::Filter;

/// What a receiver does with the next request.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Status(u16),
    /// Never answers.
    Hang,
}

#[derive(Clone, Debug)]
struct Hit {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    answered: Option<u16>,
}

/// A local webhook receiver answering from a script (then 200 forever).
#[derive(Clone)]
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    script: Arc<Mutex<Vec<Answer>>>,
}

impl Receiver {
    async fn start(script: Vec<Answer>) -> Self {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let script = Arc::new(Mutex::new(script));
        let (h, sc) = (hits.clone(), script.clone());
        let route = warp::post()
            .and(warp::header::optional::<String>("webhook-id"))
            .and(warp::header::optional::<String>("webhook-timestamp"))
            .and(warp::header::optional::<String>("x-sudevwa-signature"))
            .and(warp::body::bytes())
            .then(
                move |id: Option<String>,
                      ts: Option<String>,
                      sig: Option<String>,
                      body: bytes::Bytes| {
                    let (h, sc) = (h.clone(), sc.clone());
                    async move {
                        let answer = {
                            let mut s = sc.lock().unwrap();
                            if s.is_empty() {
                                Answer::Status(200)
                            } else {
                                s.remove(0)
                            }
                        };
                        let mut hit = Hit {
                            id: id.unwrap_or_default(),
                            timestamp: ts.unwrap_or_default(),
                            signature: sig.unwrap_or_default(),
                            body: body.to_vec(),
                            answered: None,
                        };
                        match answer {
                            Answer::Hang => {
                                h.lock().unwrap().push(hit);
                                std::future::pending::<()>().await;
                                unreachable!()
                            }
                            Answer::Status(code) => {
                                hit.answered = Some(code);
                                h.lock().unwrap().push(hit);
                                warp::http::Response::builder()
                                    .status(code)
                                    .body(Vec::<u8>::new())
                                    .unwrap()
                            }
                        }
                    }
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Self {
            url: format!("http://{addr}/hook"),
            hits,
            script,
        }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let h = self.hits();
            if pred(&h) {
                return h;
            }
            let seen: Vec<(&str, Option<u16>)> =
                h.iter().map(|x| (x.id.as_str(), x.answered)).collect();
            assert!(
                tokio::time::Instant::now() < until,
                "timed out waiting for {what}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn set_webhook(srv: &TestServer, id: &str, url: &str, secret: Option<&str>) -> String {
    let mut body = json!({"url": url});
    if let Some(s) = secret {
        body["secret"] = json!(s);
    }
    let (s, v) = srv
        .admin(
            "POST",
            &format!("/api/instances/{id}/webhook-setconfig"),
            Some(body),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["data"]["secret"].as_str().unwrap().to_string()
}

async fn deliveries(srv: &TestServer, id: &str) -> Vec<Value> {
    let (s, v) = srv
        .admin("GET", &format!("/api/instances/{id}/webhooks"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["data"]["deliveries"].as_array().unwrap().clone()
}

async fn wait_deliveries(
    srv: &TestServer,
    id: &str,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let d = deliveries(srv, id).await;
        if pred(&d) {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const HOOK_ENV: &[(&str, &str)] = &[
    ("SUDEVWA_ENABLE_WEBHOOK", "true"),
    ("SUDEVWA_WEBHOOK_RETRY_SCHEDULE", "1s,1s,1s"),
    ("SUDEVWA_WEBHOOK_TIMEOUT_SECS", "1"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn message_reaches_listen_socket_and_signed_webhook_identically_with_retries() {
    let net = MockNetwork::start().await.unwrap();
    let dave = net.add_contact("6281200000041", "Dave").await.unwrap();
    let srv = TestServer::start(&net, "hooks", HOOK_ENV).await;
    let (id, token) = srv.paired_instance(&net, "6281100000041").await;
    // 500 three times, then 200.
    let rx = Receiver::start(vec![
        Answer::Status(500),
        Answer::Status(500),
        Answer::Status(500),
    ])
    .await;
    let secret = set_webhook(&srv, &id, &rx.url, None).await;
    assert_eq!(secret.len(), 64, "32 random bytes, hex");

    let mut req = format!("ws://{}/api/listen/{id}", srv.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let (mut listen, _) = tokio_tungstenite::connect_async(req).await.unwrap();

    let msg_id = dave.send_text("6281100000041", "webhook me").await.unwrap();
    let frame = tokio::time::timeout(DEADLINE, listen.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let live = frame.into_text().unwrap().to_string();

    let hits = rx
        .wait_for("a 2xx delivery", |h| {
            h.iter().any(|x| x.answered == Some(200))
        })
        .await;
    assert_eq!(hits.len(), 4, "three failures then one success: {hits:?}");
    assert!(
        hits.iter().all(|h| h.id == hits[0].id),
        "same webhook-id on every attempt"
    );
    assert!(
        hits.iter().all(|h| h.body == hits[0].body),
        "identical bytes on every attempt"
    );
    let body = &hits[3].body;
    assert_eq!(
        String::from_utf8(body.clone()).unwrap(),
        live,
        "webhook and listen socket carry the same payload"
    );
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["event"], "incoming_message");
    assert_eq!(v["data"]["message"], "webhook me");
    assert_eq!(v["data"]["message_id"], msg_id.as_str());
    // The signature verifies with the secret; a tampered body does not.
    assert_eq!(hits[3].signature, signature(&secret, body));
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    assert_ne!(hits[3].signature, signature(&secret, &tampered));
    assert_ne!(hits[3].signature, signature("another secret", body));
    let ts: i64 = hits[3].timestamp.parse().unwrap();
    assert!((ts - chrono::Utc::now().timestamp()).abs() < 120);

    let d = wait_deliveries(&srv, &id, "delivered", |d| {
        d.len() == 1 && d[0]["status"] == "delivered"
    })
    .await;
    assert_eq!(d[0]["id"], hits[0].id.as_str());
    assert_eq!(d[0]["attempts"], 4);
    assert_eq!(d[0]["last_status_code"], 200);
    assert!(
        d[0].get("payload").is_none(),
        "the log shows no message bodies"
    );

    // A receiver that hangs is timed out (1 s) and retried.
    let slow = Receiver::start(vec![Answer::Hang]).await;
    set_webhook(&srv, &id, &slow.url, Some("a-configured-secret-123")).await;
    dave.send_text("6281100000041", "second").await.unwrap();
    let hits = slow
        .wait_for("a retry after the hang", |h| {
            h.iter().any(|x| x.answered == Some(200))
        })
        .await;
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].id, hits[1].id);
    assert_eq!(
        hits[1].signature,
        signature("a-configured-secret-123", &hits[1].body)
    );

    // Down for the whole schedule (nothing listens): dead-letter, then redelivered by the API.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        format!("http://{a}/hook")
    };
    set_webhook(&srv, &id, &closed, Some("a-configured-secret-123")).await;
    dave.send_text("6281100000041", "third").await.unwrap();
    let d = wait_deliveries(&srv, &id, "dead-letter", |d| {
        d.iter().any(|x| x["status"] == "dead")
    })
    .await;
    let dead = d.iter().find(|x| x["status"] == "dead").unwrap().clone();
    assert_eq!(
        dead["attempts"], 4,
        "first attempt + three retries of the schedule"
    );
    let back = Receiver::start(vec![]).await;
    set_webhook(&srv, &id, &back.url, Some("a-configured-secret-123")).await;
    let dead_id = dead["id"].as_str().unwrap();
    let (s, v) = srv
        .admin(
            "POST",
            &format!("/api/instances/{id}/webhooks/{dead_id}/redeliver"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let hits = back.wait_for("the redelivery", |h| !h.is_empty()).await;
    assert_eq!(hits[0].id, dead_id);
    let v: Value = serde_json::from_slice(&hits[0].body).unwrap();
    assert_eq!(v["data"]["message"], "third");
    let (s, _) = srv
        .admin(
            "POST",
            &format!("/api/instances/{id}/webhooks/evt_nope/redeliver"),
            None,
        )
        .await;
    assert_eq!(s, 404);
    // Webhook URLs follow the SSRF rules.
    let (s, v) = srv
        .admin(
            "POST",
            &format!("/api/instances/{id}/webhook-setconfig"),
            Some(json!({"url": "http://169.254.169.254/hook"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("INVALID_WEBHOOK_URL"))
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_dead_endpoint_does_not_delay_other_instances() {
    let net = MockNetwork::start().await.unwrap();
    let erin = net.add_contact("6281200000051", "Erin").await.unwrap();
    let srv = TestServer::start(
        &net,
        "hooks-iso",
        &[
            ("SUDEVWA_ENABLE_WEBHOOK", "true"),
            ("SUDEVWA_WEBHOOK_TIMEOUT_SECS", "60"),
        ],
    )
    .await;
    let (a, _) = srv.paired_instance(&net, "6281100000051").await;
    let (b, _) = srv.paired_instance(&net, "6281100000052").await;
    let hang = Receiver::start(vec![Answer::Hang; 10]).await;
    let fine = Receiver::start(vec![]).await;
    set_webhook(&srv, &a, &hang.url, None).await;
    set_webhook(&srv, &b, &fine.url, None).await;
    erin.send_text("6281100000051", "to a").await.unwrap();
    hang.wait_for("A's attempt hanging", |h| !h.is_empty())
        .await;
    for i in 0..3 {
        erin.send_text("6281100000052", &format!("to b {i}"))
            .await
            .unwrap();
    }
    let hits = fine
        .wait_for("B's three deliveries", |h| h.len() >= 3)
        .await;
    let ids: std::collections::HashSet<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    assert_eq!((hits.len(), ids.len()), (3, 3), "each event exactly once");
    assert_eq!(
        hang.hits().len(),
        1,
        "A's first attempt is still hanging meanwhile"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_flag_off_sends_nothing() {
    let net = MockNetwork::start().await.unwrap();
    let fay = net.add_contact("6281200000061", "Fay").await.unwrap();
    let srv = TestServer::start(&net, "hooks-off", &[]).await;
    let (id, token) = srv.paired_instance(&net, "6281100000061").await;
    let rx = Receiver::start(vec![]).await;
    set_webhook(&srv, &id, &rx.url, None).await;
    // The listen socket proves the message arrived; the webhook must stay silent.
    let mut req = format!("ws://{}/api/listen/{id}", srv.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let (mut listen, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    fay.send_text("6281100000061", "quiet").await.unwrap();
    let frame = tokio::time::timeout(DEADLINE, listen.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(frame.into_text().unwrap().contains("quiet"));
    assert!(
        deliveries(&srv, &id).await.is_empty(),
        "nothing written to the outbox"
    );
    assert!(rx.hits().is_empty());
    let _ = ADMIN_KEY;
    srv.stop().await;
}

/// The real binary, killed with SIGKILL while its outbox holds undelivered events
/// (one attempt hanging mid-flight): after a restart every event is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hard_killed_server_delivers_its_outbox_after_restart() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = std::env::temp_dir().join(format!("sudevwa-hook-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db_url = format!("sqlite://{}/db.sqlite", dir.display());
    let spawn = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sudevwa"))
            // A sandbox build serves only in sandbox mode (its in-process mock is unused).
            .args(cfg!(feature = "sandbox").then_some("--sandbox"))
            .current_dir(&dir)
            .env_clear()
            .env("PORT", "0")
            .env("RUST_LOG", "warn")
            .env("DATABASE_URL", &db_url)
            .env("SUDEVWA_AUTH_ADMIN_API_KEYS", ADMIN_KEY)
            .env("SUDEVWA_ENABLE_WEBHOOK", "true")
            .env("SUDEVWA_ALLOWED_TARGETS", "127.0.0.0/8")
            .env("SUDEVWA_WEBHOOK_TIMEOUT_SECS", "60")
            .env("SUDEVWA_WEBHOOK_RETRY_SCHEDULE", "1s")
            // Instances never reach WhatsApp here; events are written as if they had arrived.
            .env("SUDEVWA_WHATSAPP_SOCKET_URL", "ws://127.0.0.1:9/ws/chat")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sudevwa");
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("listening on ") {
                    let _ = tx.send(a.to_string());
                }
            }
        });
        let base = rx.recv_timeout(DEADLINE).expect("server starts");
        (child, base)
    };
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (mut child, base) = spawn();
    let (s, v): (u16, Value) = {
        let r = http
            .post(format!("{base}/api/login"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    };
    assert_eq!(s, 200, "{v}");
    let id = v["data"]["instanceId"].as_str().unwrap().to_string();
    // Every request hangs until the process dies.
    let rx = Receiver::start(vec![Answer::Hang; 1000]).await;
    let r = http
        .post(format!("{base}/api/instances/{id}/webhook-setconfig"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"url": rx.url, "secret": "kill-test-secret-0123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Five events arrive (written to the outbox as the actor's sink does).
    let cfg = sudevwa::config::Config::load(&sudevwa::config::Sources {
        env: [("DATABASE_URL".to_string(), db_url.clone())]
            .into_iter()
            .collect(),
        ..Default::default()
    })
    .unwrap();
    let db = sudevwa::store::db::open(&cfg.database).await.unwrap();
    let outbox = sudevwa::webhook::Outbox::new(db.clone());
    let mut ids = Vec::new();
    for i in 0..5 {
        let m = actors::events::IncomingMessage {
            instance_id: id.clone(),
            from: "6281200000071@s.whatsapp.net".into(),
            from_me: false,
            message: format!("event {i}"),
            timestamp: chrono::Utc::now().timestamp(),
            is_group: false,
            message_id: format!("M{i}"),
            push_name: "Gus".into(),
            chat: "6281200000071@s.whatsapp.net".into(),
            from_phone: Some("6281200000071".into()),
            from_lid: None,
            kind: "text".into(),
            media: None,
            details: Default::default(),
            raw: None,
        };
        ids.push(
            outbox
                .enqueue(&m)
                .await
                .unwrap()
                .expect("instance has a webhook"),
        );
    }
    rx.wait_for("an attempt in flight", |h| !h.is_empty()).await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    // The receiver recovers; a new process delivers everything.
    rx.script.lock().unwrap().clear();
    let before = rx.hits().len();
    let (mut child, _base) = spawn();
    let hits = rx
        .wait_for("all five delivered", |h| {
            let ok: std::collections::HashSet<&str> = h[before..]
                .iter()
                .filter(|x| x.answered == Some(200))
                .map(|x| x.id.as_str())
                .collect();
            ids.iter().all(|i| ok.contains(i.as_str()))
        })
        .await;
    for i in &ids {
        let n = hits[before..]
            .iter()
            .filter(|x| &x.id == i && x.answered == Some(200))
            .count();
        assert_eq!(n, 1, "{i} delivered once after the restart");
        let row = outbox.get(i).await.unwrap().unwrap();
        assert_eq!(row.status, "delivered");
    }
    for h in &hits[before..] {
        assert_eq!(h.signature, signature("kill-test-secret-0123", &h.body));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Edits and deletes of a contact's message reach the webhook as `message_edited` and
/// `message_revoked` (default subscription), signed, naming the original message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edits_and_deletes_reach_the_webhook() {
    use whatsapp_rust::send::RevokeType;
    use whatsapp_rust::waproto::whatsapp as wa;
    use whatsapp_rust::Jid;
    const ME: &str = "6281100000047";
    let net = MockNetwork::start().await.unwrap();
    let erin = net.add_contact("6281200000047", "Erin").await.unwrap();
    let srv = TestServer::start(&net, "hooks-edit", HOOK_ENV).await;
    let (id, _) = srv.paired_instance(&net, ME).await;
    let rx = Receiver::start(vec![]).await;
    let secret = set_webhook(&srv, &id, &rx.url, None).await;
    let original = erin.send_text(ME, "frist").await.unwrap();
    let edited = wa::Message {
        conversation: Some("first".into()),
        ..Default::default()
    };
    erin.client
        .edit_message(Jid::pn(ME), original.clone(), edited)
        .await
        .unwrap();
    erin.client
        .revoke_message(Jid::pn(ME), original.clone(), RevokeType::Sender)
        .await
        .unwrap();
    let hits = rx.wait_for("three deliveries", |h| h.len() >= 3).await;
    let events: Vec<Value> = hits
        .iter()
        .map(|h| {
            assert_eq!(h.signature, signature(&secret, &h.body), "signed");
            serde_json::from_slice(&h.body).unwrap()
        })
        .collect();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["incoming_message", "message_edited", "message_revoked"]
    );
    assert_eq!(events[1]["data"]["message"], "first");
    for e in &events[1..] {
        assert_eq!(e["data"]["original_message_id"], original.as_str(), "{e}");
    }
}
