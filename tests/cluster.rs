//! Several real server processes on one real PostgreSQL database and one standalone
//! mock network (`[cluster]`, docs/cluster.md): placement, forwarding, events across
//! nodes, webhook delivery claims, failover after SIGKILL, fencing after SIGSTOP, and
//! hand-over on a clean shutdown.
#![cfg(feature = "sandbox")]

use mock_whatsapp::MockNetwork;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const ADMIN_KEY: &str = "cluster-test-admin-key-0123456789abcdef";
const SECRET: &str = "cluster-test-node-secret-0123456789abcdef";
const HOOK_SECRET: &str = "cluster-test-webhook-secret";
const DEADLINE: Duration = Duration::from_secs(90);
/// The two tests run one after the other: each starts several servers, and on two
/// cores their timings (hand-over, failover) should not depend on the other test.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The lease of these tests' nodes (the failover delay).
const LEASE_SECS: u64 = 8;

/// A fresh database on the suite's PostgreSQL server.
async fn fresh_database(name: &str) -> String {
    let admin_url = std::env::var("SUDEVWA_TEST_POSTGRES_URL").expect(
        "SUDEVWA_TEST_POSTGRES_URL must point at a PostgreSQL server: run the suite with tests/run.sh",
    );
    let db = format!("sudevwa_cluster_{name}_{}", std::process::id());
    let admin = Database::connect(&admin_url)
        .await
        .expect("connect to PostgreSQL");
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {db}"))
        .await
        .expect("drop old test db");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {db}"))
        .await
        .expect("create test db");
    let (base, _) = admin_url.rsplit_once('/').expect("url has a database part");
    format!("{base}/{db}")
}

/// One node: the real binary, killed when dropped.
struct Node {
    child: Option<Child>,
    base: String,
    /// Every line the node wrote on stderr so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = signal(c, "CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(c: &Child, sig: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill")
        .args([&format!("-{sig}"), &c.id().to_string()])
        .status()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Node {
    fn start(name: &str, db_url: &str, mock_url: &str) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("sudevwa-cluster-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sudevwa"))
            .args(["--sandbox", "--mock-url", mock_url])
            .current_dir(&dir)
            .env_clear()
            .env("PORT", port.to_string())
            .env("RUST_LOG", "warn,sudevwa::cluster=info")
            .env("DATABASE_URL", db_url)
            .env("SUDEVWA_AUTH_ADMIN_API_KEYS", ADMIN_KEY)
            .env("SUDEVWA_ENABLE_WEBHOOK", "true")
            .env("SUDEVWA_ALLOWED_TARGETS", "127.0.0.0/8")
            .env("SUDEVWA_WHATSAPP_CONNECT_CONCURRENCY", "64")
            .env("SUDEVWA_WHATSAPP_CONNECTS_PER_SECOND", "100")
            .env("SUDEVWA_MESSAGES_SPOOL_DIR", dir.join("spool"))
            .env("SUDEVWA_CLUSTER_NODE_ID", name)
            .env(
                "SUDEVWA_CLUSTER_INTERNAL_URL",
                format!("http://127.0.0.1:{port}"),
            )
            .env("SUDEVWA_CLUSTER_SECRET", SECRET)
            .env("SUDEVWA_CLUSTER_LEASE_TTL_SECS", LEASE_SECS.to_string())
            .env("SUDEVWA_CLUSTER_RENEW_INTERVAL_MS", "2000")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sudevwa");
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (l, err) = (log.clone(), BufReader::new(child.stderr.take().unwrap()));
        let tag = name.to_string();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                l.lock().unwrap().push(line);
            }
        });
        let base = loop {
            let line = rx.recv_timeout(DEADLINE).expect("node starts");
            if let Some(a) = line.strip_prefix("listening on ") {
                break a.to_string();
            }
        };
        Node {
            child: Some(child),
            base,
            log,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut r = http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(ADMIN_KEY)
            .timeout(Duration::from_secs(30));
        if let Some(b) = body {
            r = r.json(&b);
        }
        match r.send().await {
            Ok(resp) => {
                let s = resp.status().as_u16();
                (s, resp.json::<Value>().await.unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({"transport": e.to_string()})),
        }
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

async fn eventually<T>(what: &str, deadline: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node holding each instance (live leases).
/// Waits until `node` holds a live lease on every one of `ids`.
async fn wait_held(db: &DatabaseConnection, ids: &[String], node: &str) {
    eventually(&format!("{node} holds {ids:?}"), DEADLINE, async || {
        let o = owners(db).await;
        ids.iter()
            .all(|i| o.get(i).map(String::as_str) == Some(node))
            .then_some(())
    })
    .await;
}

async fn owners(db: &DatabaseConnection) -> HashMap<String, String> {
    db.query_all_raw(Statement::from_string(
        DbBackend::Postgres,
        "SELECT instance_id, node_id FROM instance_leases WHERE expires_at > now()",
    ))
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        (
            r.try_get_by_index::<String>(0).unwrap(),
            r.try_get_by_index::<String>(1).unwrap(),
        )
    })
    .collect()
}

/// Webhook requests received, by message id.
#[derive(Clone, Default)]
struct Hook {
    url: String,
    incoming: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Hook {
    async fn start() -> Self {
        use warp::Filter;
        let hook = Hook::default();
        let seen = hook.incoming.clone();
        let route = warp::post()
            .and(warp::body::bytes())
            .map(move |body: bytes::Bytes| {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if v["event"] == "incoming_message" {
                    let id = v["data"]["message_id"].as_str().unwrap_or("").to_string();
                    *seen.lock().unwrap().entry(id).or_insert(0) += 1;
                }
                warp::reply()
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Hook {
            url: format!("http://{addr}/hook"),
            ..hook
        }
    }

    fn count(&self, id: &str) -> usize {
        self.incoming.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

/// Opens the WebSocket at `path` on `node` as admin; every JSON frame it receives is
/// collected.
async fn socket(node: &Node, path: &str) -> Arc<Mutex<Vec<Value>>> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{}{path}", node.base.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_KEY}").parse().unwrap(),
    );
    let (mut sock, _) = tokio_tungstenite::connect_async(req)
        .await
        .unwrap_or_else(|e| panic!("{path} on {}: {e}", node.base));
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some(Ok(m)) = sock.next().await {
            if let Ok(t) = m.into_text() {
                if let Ok(v) = serde_json::from_str::<Value>(&t) {
                    s.lock().unwrap().push(v);
                }
            }
        }
    });
    seen
}

/// Points the instance's webhook at `hook`, through `node`.
async fn set_hook(node: &Node, id: &str, hook: &Hook) {
    let (s, v) = node
        .call(
            "POST",
            &format!("/api/instances/{id}/webhook-setconfig"),
            Some(json!({"url": hook.url, "secret": HOOK_SECRET})),
        )
        .await;
    assert_eq!(s, 200, "webhook-setconfig of {id}: {v}");
}

/// Creates and pairs an instance through `node` (placement may put it elsewhere);
/// returns its id.
async fn paired(node: &Node, net: &MockNetwork, phone: &str) -> String {
    let (s, v) = node.call("POST", "/api/login", None).await;
    assert_eq!(s, 200, "{v}");
    let id = v["data"]["instanceId"].as_str().unwrap().to_string();
    let qr = eventually("a QR code", DEADLINE, async || {
        let (_, v) = node.call("GET", &format!("/api/qr/{id}"), None).await;
        v["data"]["qr"].as_str().map(str::to_string)
    })
    .await;
    net.scan_qr(&qr, Some(phone)).expect("scan");
    wait_online(node, &id, DEADLINE).await;
    id
}

async fn is_online(node: &Node, id: &str) -> bool {
    let (s, v) = node.call("GET", &format!("/api/status/{id}"), None).await;
    s == 200 && v["data"]["status"] == "online"
}

async fn wait_online(node: &Node, id: &str, deadline: Duration) {
    eventually(&format!("{id} online"), deadline, async || {
        is_online(node, id).await.then_some(())
    })
    .await;
}

/// Three nodes, 30 paired instances spread over them; requests on any node; events
/// of every node on any node's `/ws`; each webhook event delivered once while three
/// workers race for the outbox; one node SIGKILLed: its instances are back online on
/// the others within 30 s without a QR and the messages sent to them meanwhile all
/// reach the webhook; then a clean shutdown hands the next node's instances over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_place_forward_fail_over_and_hand_over() {
    let _serial = SERIAL.lock().await;
    let url = fresh_database("main").await;
    let net = MockNetwork::start().await.unwrap();
    let mock = net.base_url();
    let a = Node::start("node-a", &url, &mock);
    let b = Node::start("node-b", &url, &mock);
    let mut c = Node::start("node-c", &url, &mock);
    let nodes = [&a, &b, &c];
    let db = Database::connect(&url).await.unwrap();

    // Every node sees the other two live.
    eventually("three live nodes", DEADLINE, async || {
        let (s, v) = a.call("GET", "/api/cluster/nodes", None).await;
        let live = v["data"]["nodes"]
            .as_array()
            .map(|n| n.iter().filter(|n| n["live"] == true).count());
        (s == 200 && live == Some(3)).then_some(())
    })
    .await;

    // /ws on node A, open before anything happens.
    let ws_seen = socket(&a, "/ws").await;

    // 30 instances, created through the three nodes in turn, 6 at a time.
    const N: usize = 30;
    let phones: Vec<String> = (0..N).map(|i| format!("62817000{i:04}")).collect();
    let mut ids = Vec::new();
    for chunk in phones.chunks(6).enumerate() {
        let (k, chunk) = chunk;
        let node = nodes[k % 3];
        let made =
            futures_util::future::join_all(chunk.iter().map(|p| paired(node, &net, p))).await;
        ids.extend(made);
    }
    let by_phone: HashMap<String, String> =
        ids.iter().cloned().zip(phones.iter().cloned()).collect();

    // Placement: every node holds some, none holds most.
    let held = owners(&db).await;
    assert_eq!(held.len(), N, "{held:?}");
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for n in held.values() {
        *per_node.entry(n.clone()).or_default() += 1;
    }
    eprintln!("placement: {per_node:?}");
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(
        per_node.values().all(|&n| n >= 5 && n <= 15),
        "{per_node:?}"
    );

    // Any node answers for any instance: a send through A of an instance held by B.
    let mut contact = net.add_contact("6281799990000", "Kiki").await.unwrap();
    let on_b = held.iter().find(|(_, n)| *n == "node-b").unwrap().0.clone();
    let (s, v) = a
        .call(
            "POST",
            &format!("/api/send/{on_b}"),
            Some(json!({"to": "6281799990000", "message": "through node A"})),
        )
        .await;
    assert_eq!(s, 200, "send through A for B's instance: {v}");
    let got = contact.next_text().await.unwrap();
    assert_eq!(got.text, "through node A");
    // ...and /ws on A saw B's (and C's) instances' events.
    let on_c: HashSet<String> = held
        .iter()
        .filter(|(_, n)| *n == "node-c")
        .map(|(i, _)| i.clone())
        .collect();
    eventually("B's and C's events on A's /ws", DEADLINE, async || {
        let seen = ws_seen.lock().unwrap();
        let online = |id: &str| {
            seen.iter().any(|e| {
                e["event"] == "INSTANCE_STATUS_CHANGED"
                    && e["data"]["instance_id"] == id
                    && e["data"]["status"] == "online"
            })
        };
        (online(&on_b) && on_c.iter().all(|i| online(i))).then_some(())
    })
    .await;

    // Webhooks everywhere (set through node A; forwarded to each owner).
    let hook = Hook::start().await;
    for id in &ids {
        set_hook(&a, id, &hook).await;
    }
    // A listen socket on node A for an instance held by B.
    let listened = socket(&a, &format!("/api/listen/{on_b}")).await;

    // One message to each: three nodes' workers race for the outbox; each event is
    // delivered once.
    let mut first = Vec::new();
    for p in &phones {
        first.push(contact.send_text(p, "hello").await.unwrap());
    }
    eventually("the first round delivered", DEADLINE, async || {
        first.iter().all(|m| hook.count(m) >= 1).then_some(())
    })
    .await;
    let to_b = first[ids.iter().position(|i| *i == on_b).unwrap()].clone();
    eventually(
        "B's incoming message on A's listen socket",
        DEADLINE,
        async || {
            listened
                .lock()
                .unwrap()
                .iter()
                .any(|e| {
                    e["event"] == "incoming_message" && e["data"]["message_id"] == to_b.as_str()
                })
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // a late duplicate would show now
    for m in &first {
        assert_eq!(hook.count(m), 1, "message {m} delivered more than once");
    }

    // SIGKILL node C; messages go to its numbers meanwhile.
    let killed_at = Instant::now();
    {
        let child = c.child.as_mut().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
    c.child = None;
    let mut during = Vec::new();
    for id in &on_c {
        during.push(
            contact
                .send_text(&by_phone[id], "during failover")
                .await
                .unwrap(),
        );
    }
    let qr_before = ws_seen
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "QR_GENERATED")
        .count();
    for id in &on_c {
        wait_online(
            &a,
            id,
            Duration::from_secs(30).saturating_sub(killed_at.elapsed()),
        )
        .await;
    }
    let failover = killed_at.elapsed();
    eprintln!("failover of {} instances: {failover:?}", on_c.len());
    assert!(failover <= Duration::from_secs(30));
    let after = owners(&db).await;
    for id in &on_c {
        assert!(
            matches!(after.get(id).map(String::as_str), Some("node-a" | "node-b")),
            "{id}: {after:?}"
        );
    }
    // No new QR: nothing asked for one.
    let qr_after = ws_seen
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "QR_GENERATED")
        .count();
    assert_eq!(qr_before, qr_after, "a QR was generated during failover");
    eventually(
        "messages sent during failover delivered",
        DEADLINE,
        async || during.iter().all(|m| hook.count(m) >= 1).then_some(()),
    )
    .await;

    // An operator moves one of A's instances to B (asked on B: forwarded to A).
    let moved = owners(&db)
        .await
        .into_iter()
        .find(|(_, n)| n == "node-a")
        .unwrap()
        .0;
    let (s, v) = b
        .call(
            "POST",
            &format!("/api/instances/{moved}/move"),
            Some(json!({"node": "node-b"})),
        )
        .await;
    assert_eq!(s, 200, "move: {v}");
    eventually("the moved instance on B", DEADLINE, async || {
        (owners(&db).await.get(&moved).map(String::as_str) == Some("node-b")).then_some(())
    })
    .await;
    wait_online(&b, &moved, DEADLINE).await;
    let (s, v) = b
        .call(
            "POST",
            &format!("/api/instances/{moved}/move"),
            Some(json!({"node": "node-z"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("NODE_NOT_FOUND")),
        "{v}"
    );

    // Clean shutdown of node B: its instances move to A, each within 5 s.
    let on_b_now: Vec<String> = owners(&db)
        .await
        .into_iter()
        .filter(|(_, n)| n == "node-b")
        .map(|(i, _)| i)
        .collect();
    assert!(!on_b_now.is_empty());
    let mut b = b;
    let stopped_at = Instant::now();
    signal(b.child.as_ref().unwrap(), "TERM").unwrap();
    for id in &on_b_now {
        wait_online(&a, id, Duration::from_secs(30)).await;
    }
    let handover = stopped_at.elapsed();
    let status = b.child.as_mut().unwrap().wait().unwrap();
    b.child = None;
    eprintln!(
        "hand-over of {} instances: {handover:?} (node B exited {status})",
        on_b_now.len()
    );
    assert!(status.success(), "node B exits cleanly");
    // Every instance of B is online on A within 5 s of B being told to stop.
    assert!(handover < Duration::from_secs(5), "{handover:?}");
    assert!(
        b.logged("handed every instance over"),
        "node B says it handed over"
    );
    let last = owners(&db).await;
    assert!(last.values().all(|n| n == "node-a"), "{last:?}");
    assert_eq!(last.len(), N);
    drop(a);
}

/// A node paused (SIGSTOP) past its lease loses its instances to another node; once
/// resumed it cannot write to them (the fence refuses, and the node says so) and
/// never reconnects them: they stay online on the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_node_is_fenced_and_never_reconnects() {
    let _serial = SERIAL.lock().await;
    let url = fresh_database("fence").await;
    let net = MockNetwork::start().await.unwrap();
    let mock = net.base_url();
    let a = Node::start("fence-a", &url, &mock);
    let db = Database::connect(&url).await.unwrap();
    let ids = vec![
        paired(&a, &net, "6281780000001").await,
        paired(&a, &net, "6281780000002").await,
    ];
    let b = Node::start("fence-b", &url, &mock);
    assert!(owners(&db).await.values().all(|n| n == "fence-a"));

    signal(a.child.as_ref().unwrap(), "STOP").unwrap();
    // B takes both once A's leases expire, and reconnects them without a QR.
    for id in &ids {
        wait_online(&b, id, DEADLINE).await;
    }
    wait_held(&db, &ids, "fence-b").await;

    // A write as node A (a connection carrying its id) is refused by the fence.
    let as_a = Database::connect(format!("{url}?options=-c%20sudevwa.node%3Dfence-a"))
        .await
        .unwrap();
    let refused = as_a
        .execute_unprepared(&format!(
            "UPDATE wa_device SET instance_id = instance_id WHERE instance_id = '{}'",
            ids[0]
        ))
        .await
        .expect_err("the fence refuses a write of a node without the lease");
    assert!(refused.to_string().contains("sudevwa fenced"), "{refused}");

    signal(a.child.as_ref().unwrap(), "CONT").unwrap();
    // A notices (its leases were not renewed in time) and stops its clients; its
    // writes for them, if any are still attempted, are refused and logged.
    eventually("A stops its instances", DEADLINE, async || {
        a.logged("leases not renewed in time").then_some(())
    })
    .await;
    // For three leases, the instances stay online on B and A holds nothing.
    let until = Instant::now() + Duration::from_secs(3 * LEASE_SECS);
    while Instant::now() < until {
        for id in &ids {
            assert!(is_online(&b, id).await, "{id} dropped off B");
        }
        let o = owners(&db).await;
        assert!(o.values().all(|n| n == "fence-b"), "{o:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The instance's device is on B only: a message reaches it there.
    let contact = net.add_contact("6281780000099", "Uli").await.unwrap();
    let hook = Hook::start().await;
    set_hook(&b, &ids[0], &hook).await;
    let m = contact
        .send_text("6281780000001", "after the pause")
        .await
        .unwrap();
    eventually("delivered through B", DEADLINE, async || {
        (hook.count(&m) >= 1).then_some(())
    })
    .await;
    // (A may have tried to write for them as it woke — the fence refused that.)

    // The fence also catches a node that has not noticed yet: the second instance's
    // lease is taken from B behind its back (right after B renewed it, so B will not
    // notice for a renew interval) and a message arrives for it at once. B's commit
    // is refused, B says so and stops the instance; the message, never acknowledged,
    // arrives once a node holds the instance again.
    set_hook(&b, &ids[1], &hook).await;
    let expiry = async || -> String {
        db.query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT expires_at::text FROM instance_leases WHERE instance_id = $1",
            vec![ids[1].clone().into()],
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<String>(0)
        .unwrap()
    };
    let before = expiry().await;
    eventually("B renews", DEADLINE, async || {
        (expiry().await != before).then_some(())
    })
    .await;
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE instance_leases SET node_id = 'elsewhere', token = token + 1 WHERE instance_id = $1",
        vec![ids[1].clone().into()],
    ))
    .await
    .unwrap();
    let m2 = contact
        .send_text("6281780000002", "while fenced")
        .await
        .unwrap();
    eventually("B's write refused and logged", DEADLINE, async || {
        b.logged("fenced write refused").then_some(())
    })
    .await;
    eventually("the fenced message delivered later", DEADLINE, async || {
        (hook.count(&m2) >= 1).then_some(())
    })
    .await;

    // An operator drains B (asked on A): B hands both over and takes nothing more.
    let (s, v) = a
        .call("POST", "/api/cluster/nodes/fence-b/drain", None)
        .await;
    assert_eq!(s, 200, "drain: {v}");
    wait_held(&db, &ids, "fence-a").await;
    for id in &ids {
        wait_online(&a, id, DEADLINE).await;
    }
    let (_, v) = b.call("GET", "/api/cluster/nodes", None).await;
    let nodes = v["data"]["nodes"].as_array().cloned().unwrap_or_default();
    let b_row = nodes.iter().find(|n| n["nodeId"] == "fence-b").unwrap();
    assert_eq!(
        (b_row["draining"].as_bool(), b_row["instances"].as_i64()),
        (Some(true), Some(0)),
        "{v}"
    );
    let (s, v) = a
        .call(
            "POST",
            "/api/cluster/nodes/nowhere/drain",
            Some(json!({"draining": true})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("NODE_NOT_FOUND")),
        "{v}"
    );
    drop(b);
    drop(a);
}
