//! Nothing lost: incoming messages are acknowledged to WhatsApp only after they are
//! committed, so storage outages, a hard kill between delivery and commit and a socket
//! dropped between delivery and ack all end with every message in the webhook and the
//! message log, reported once. Also: `message_status` events reach webhooks signed and
//! in order, `listen?after=` replays exactly what was missed, retention prunes only
//! what it should.
//!
//! The fault tests print their figures (sent / stored / delivered / duplicates) on
//! stdout; run with `--nocapture` to see them.

mod common;

use common::{TestServer, ADMIN_KEY, DEADLINE};
use futures_util::StreamExt;
use mock_whatsapp::MockNetwork;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sudevwa::store::journal::{Journal, MessageQuery, Retention};
use sudevwa::webhook::signature;
use warp::Filter;

/// Long enough for a 20 s outage, the storage probe and the redelivery.
const OUTAGE_DEADLINE: Duration = Duration::from_secs(240);
const SECRET: &str = "durability-test-secret-0123";

/// One webhook request.
#[derive(Clone, Debug)]
struct Hit {
    id: String,
    signature: String,
    body: Vec<u8>,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A webhook receiver that answers 200 to everything and records it.
#[derive(Clone)]
struct Collector {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Collector {
    async fn start() -> Self {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let h = hits.clone();
        let route = warp::post()
            .and(warp::header::optional::<String>("webhook-id"))
            .and(warp::header::optional::<String>("x-sudevwa-signature"))
            .and(warp::body::bytes())
            .map(
                move |id: Option<String>, sig: Option<String>, body: bytes::Bytes| {
                    h.lock().unwrap().push(Hit {
                        id: id.unwrap_or_default(),
                        signature: sig.unwrap_or_default(),
                        body: body.to_vec(),
                    });
                    warp::reply()
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Self {
            url: format!("http://{addr}/hook"),
            hits,
        }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Message ids of the `incoming_message` deliveries, with how often each arrived.
    fn incoming_ids(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for h in self.hits() {
            let v = h.json();
            if v["event"] == "incoming_message" {
                *m.entry(v["data"]["message_id"].as_str().unwrap_or("").to_string())
                    .or_insert(0) += 1;
            }
        }
        m
    }
}

/// Polls `pred` until it holds or `deadline` passes (then panics with `what`).
async fn eventually<T>(what: &str, deadline: Duration, mut pred: impl FnMut() -> Option<T>) -> T {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = pred() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The message log of an instance, read straight from the database.
async fn logged_ids(journal: &Journal, instance: &str) -> Vec<String> {
    let page = journal
        .list_messages(
            instance,
            &MessageQuery {
                direction: Some("in".into()),
                limit: 500,
                ..Default::default()
            },
        )
        .await
        .expect("message log readable");
    page.messages
        .iter()
        .map(|m| m["messageId"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn set_webhook(srv: &TestServer, id: &str, url: &str) {
    let (s, v) = srv
        .admin(
            "POST",
            &format!("/api/instances/{id}/webhook-setconfig"),
            Some(json!({"url": url, "secret": SECRET})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

/// Sends `n` texts from `contact` to `to`, spread over `span`; returns their ids.
async fn send_spread(
    contact: &mock_whatsapp::contact::Contact,
    to: &str,
    tag: &str,
    n: usize,
    span: Duration,
) -> Vec<String> {
    let gap = span / n as u32;
    let mut ids = Vec::new();
    for i in 0..n {
        let t = tokio::time::Instant::now();
        ids.push(
            contact
                .send_text(to, &format!("{tag} {i}"))
                .await
                .expect("contact sends"),
        );
        tokio::time::sleep_until(t + gap).await;
    }
    ids
}

/// Waits until every id reached the webhook and the log; prints and returns the
/// figures (sent, stored, delivered distinct, duplicate deliveries).
async fn account(
    what: &str,
    hook: &Collector,
    journal: &Journal,
    instance: &str,
    ids: &[String],
) -> (usize, usize, usize, usize) {
    let until = tokio::time::Instant::now() + OUTAGE_DEADLINE;
    loop {
        let delivered = hook.incoming_ids();
        let logged = logged_ids(journal, instance).await;
        let all_delivered = ids.iter().all(|i| delivered.contains_key(i));
        let all_logged = ids.iter().all(|i| logged.contains(i));
        if all_delivered && all_logged {
            let dups: usize = delivered.values().map(|n| n - 1).sum();
            let stored = ids.iter().filter(|i| logged.contains(i)).count();
            let distinct = ids.iter().filter(|i| delivered.contains_key(*i)).count();
            println!(
                "{what}: sent {} stored {stored} delivered {distinct} duplicate deliveries {dups} (log rows for them {})",
                ids.len(),
                logged.iter().filter(|l| ids.contains(l)).count()
            );
            // One log row per message, whatever was redelivered.
            assert_eq!(
                logged.iter().filter(|l| ids.contains(l)).count(),
                ids.len(),
                "one log row per message"
            );
            return (ids.len(), stored, distinct, dups);
        }
        if tokio::time::Instant::now() >= until {
            let missing_hook: Vec<_> = ids.iter().filter(|i| !delivered.contains_key(*i)).collect();
            let missing_log: Vec<_> = ids.iter().filter(|i| !logged.contains(i)).collect();
            panic!(
                "{what}: lost messages: {} not delivered {missing_hook:?}, {} not logged {missing_log:?}",
                missing_hook.len(),
                missing_log.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn journal_for(url: &str) -> Journal {
    let cfg = sudevwa::config::Config::load(&sudevwa::config::Sources {
        env: [("DATABASE_URL".to_string(), url.to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    })
    .unwrap();
    let db = sudevwa::store::db::connect(&cfg.database).await.unwrap();
    Journal::new(db, false, Arc::new(tokio::sync::Notify::new()))
}

/// SQLite made unwritable for 20 s (another connection holds the write lock) while a
/// contact sends 50 messages: all of them reach the webhook and the log afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_write_lock_for_20s_loses_nothing() {
    use sea_orm::sqlx::Connection;
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(&net, "dur-sqlite", &[("SUDEVWA_ENABLE_WEBHOOK", "true")]).await;
    let contact = net.add_contact("6281500000002", "Sri").await.unwrap();
    let (id, _) = srv.paired_instance(&net, "6281500000001").await;
    let hook = Collector::start().await;
    set_webhook(&srv, &id, &hook.url).await;
    let url = format!("sqlite://{}/db.sqlite", srv.dir.display());
    let journal = journal_for(&url).await;

    // Warm up: one message through the normal path.
    let first = contact.send_text("6281500000001", "before").await.unwrap();
    account("sqlite warm-up", &hook, &journal, &id, &[first]).await;

    let mut lock = sea_orm::sqlx::SqliteConnection::connect(&url)
        .await
        .unwrap();
    sea_orm::sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    let ids = send_spread(
        &contact,
        "6281500000001",
        "locked",
        50,
        Duration::from_secs(20),
    )
    .await;
    sea_orm::sqlx::query("COMMIT")
        .execute(&mut lock)
        .await
        .unwrap();
    drop(lock);

    let (sent, stored, delivered, _) =
        account("sqlite write lock 20 s", &hook, &journal, &id, &ids).await;
    assert_eq!((sent, stored, delivered), (50, 50, 50));
    for h in hook.hits() {
        assert_eq!(h.signature, signature(SECRET, &h.body));
    }
    srv.stop().await;
}

/// A PostgreSQL server of this test's own (so stopping it disturbs no other test).
struct PrivatePg {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
}

impl PrivatePg {
    fn as_pg(&self, prog: &str) -> std::process::Command {
        let exe = self.bin.join(prog);
        // PostgreSQL refuses to run as root: use its own account then.
        if unsafe { libc_geteuid() } == 0 {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            std::process::Command::new(exe)
        }
    }

    fn start_new(name: &str) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (tests/run.sh installs it)")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .max()
            .expect("a PostgreSQL bin directory");
        let dir = std::env::temp_dir().join(format!("sudevwa-pg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self { bin, dir, port };
        if unsafe { libc_geteuid() } == 0 {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&pg.dir)
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown to postgres");
        }
        let ok = pg
            .as_pg("initdb")
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
            .arg(pg.dir.join("data"))
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "initdb");
        pg.start();
        pg
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let ok = self
            .as_pg("pg_ctl")
            .args(["-w", "-t", "60", "-o", &opts, "-l"])
            .arg(self.dir.join("log"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("start")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "pg_ctl start");
    }

    fn stop(&self, mode: &str) {
        let _ = self
            .as_pg("pg_ctl")
            .args(["-w", "-m", mode, "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .stdout(std::process::Stdio::null())
            .status();
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.stop("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// PostgreSQL stopped for 20 s while a contact sends 50 messages: after it is back,
/// every message reaches the webhook and the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_for_20s_loses_nothing() {
    let pg = PrivatePg::start_new("outage");
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(
        &net,
        "dur-pg",
        &[
            ("SUDEVWA_ENABLE_WEBHOOK", "true"),
            ("DATABASE_URL", &pg.url()),
            ("SUDEVWA_DATABASE_ACQUIRE_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let contact = net.add_contact("6281500000012", "Tari").await.unwrap();
    let (id, _) = srv.paired_instance(&net, "6281500000011").await;
    let hook = Collector::start().await;
    set_webhook(&srv, &id, &hook.url).await;
    let journal = journal_for(&pg.url()).await;
    let first = contact.send_text("6281500000011", "before").await.unwrap();
    account("postgres warm-up", &hook, &journal, &id, &[first]).await;

    pg.stop("fast");
    let ids = send_spread(
        &contact,
        "6281500000011",
        "outage",
        50,
        Duration::from_secs(20),
    )
    .await;
    pg.start();

    let (sent, stored, delivered, _) =
        account("postgres stopped 20 s", &hook, &journal, &id, &ids).await;
    assert_eq!((sent, stored, delivered), (50, 50, 50));
    for h in hook.hits() {
        assert_eq!(h.signature, signature(SECRET, &h.body));
    }
    srv.stop().await;
}

/// The real binary, SIGKILLed after the mock delivered messages and while the hook
/// holds them uncommitted (a test-only fault parks it): after a restart every
/// message arrives, once in the log.
#[cfg(feature = "sandbox")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_between_delivery_and_commit_loses_nothing() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let net = MockNetwork::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("sudevwa-dur-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db_url = format!("sqlite://{}/db.sqlite", dir.display());
    let mock_url = net.base_url();
    let spawn = |park: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sudevwa"));
        // A sandbox build serves only in sandbox mode; the test's mock is its network.
        cmd.args(["--sandbox", "--mock-url", &mock_url])
            .current_dir(&dir)
            .env_clear()
            .env("PORT", "0")
            .env("RUST_LOG", "warn")
            .env("DATABASE_URL", &db_url)
            .env("SUDEVWA_AUTH_ADMIN_API_KEYS", ADMIN_KEY)
            .env("SUDEVWA_ENABLE_WEBHOOK", "true")
            .env("SUDEVWA_ALLOWED_TARGETS", "127.0.0.0/8")
            .env("SUDEVWA_LIMITS_RATE_LIMIT_PER_SEC", "100000")
            .env("SUDEVWA_LIMITS_RATE_LIMIT_BURST", "100000")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if park {
            cmd.env("SUDEVWA_FAULT_PARK_INBOUND_COMMIT", "1");
        }
        let mut child = cmd.spawn().expect("spawn sudevwa");
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let base = loop {
            let line = rx.recv_timeout(DEADLINE).expect("server starts");
            if let Some(a) = line.strip_prefix("listening on ") {
                break a.to_string();
            }
        };
        (child, base, rx)
    };
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let call = |base: &str, method: &str, path: &str, body: Option<Value>| {
        let mut r = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let resp = r.send().await.expect("server answers");
            let s = resp.status().as_u16();
            (s, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let (mut child, base, lines) = spawn(true);
    let (s, v) = call(&base, "POST", "/api/login", None).await;
    assert_eq!(s, 200, "{v}");
    let id = v["data"]["instanceId"].as_str().unwrap().to_string();
    let code = loop {
        let (_, v) = call(&base, "GET", &format!("/api/qr/{id}"), None).await;
        if let Some(q) = v["data"]["qr"].as_str() {
            break q.to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    net.scan_qr(&code, Some("6281500000021")).expect("scan");
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (_, v) = call(&base, "GET", &format!("/api/status/{id}"), None).await;
        if v["data"]["status"] == "online" {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "never online: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hook = Collector::start().await;
    let (s, v) = call(
        &base,
        "POST",
        &format!("/api/instances/{id}/webhook-setconfig"),
        Some(json!({"url": hook.url, "secret": SECRET})),
    )
    .await;
    assert_eq!(s, 200, "{v}");

    let contact = net.add_contact("6281500000022", "Uli").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            contact
                .send_text("6281500000021", &format!("kill {i}"))
                .await
                .unwrap(),
        );
    }
    // The hook holds the first message, uncommitted; the mock delivered all five and
    // none is acknowledged.
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        let line = lines
            .recv_timeout(until.saturating_duration_since(std::time::Instant::now()))
            .expect("the hook parks");
        if line.contains(actors::durability::PARKED_LINE) {
            break;
        }
    }
    let unacked = eventually("five unacked deliveries", DEADLINE, || {
        let u = net.unacked("6281500000021", 1);
        (u.len() == 5).then_some(u)
    })
    .await;
    assert!(ids.iter().all(|i| unacked.contains(i)), "{unacked:?}");
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    assert!(hook.incoming_ids().is_empty(), "nothing was committed");

    let (mut child, _base, _lines) = spawn(false);
    let journal = journal_for(&db_url).await;
    let (sent, stored, delivered, _) =
        account("SIGKILL before commit", &hook, &journal, &id, &ids).await;
    assert_eq!((sent, stored, delivered), (5, 5, 5));
    eventually("every redelivery acknowledged", DEADLINE, || {
        net.unacked("6281500000021", 1).is_empty().then_some(())
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The instance's socket dropped between delivery and ack: the message comes again on
/// reconnect and is reported once. Deterministic variant: the mock ignores the
/// instance's ack (as if it never arrived), then the socket drops. Then the one-shot
/// fault that closes the socket right after writing the next message (the client may
/// or may not have acked in between: either way it is reported once).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_before_ack_is_redelivered_and_reported_once() {
    const ME: &str = "6281500000031";
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(&net, "dur-drop", &[("SUDEVWA_ENABLE_WEBHOOK", "true")]).await;
    let (id, _) = srv.paired_instance(&net, ME).await;
    let hook = Collector::start().await;
    set_webhook(&srv, &id, &hook.url).await;
    let contact = net.add_contact("6281500000032", "Vera").await.unwrap();
    let journal = journal_for(&format!("sqlite://{}/db.sqlite", srv.dir.display())).await;
    let stats = || net.ack_stats(ME, 1).expect("the instance's device");

    // 1. The ack is lost: committed and reported, but the mock still holds it.
    assert!(net.hold_acks(ME, None, true));
    let mid = contact.send_text(ME, "ack lost").await.unwrap();
    account("ack lost", &hook, &journal, &id, &[mid.clone()]).await;
    eventually("the ack ignored", DEADLINE, || {
        let s = stats();
        (s.held_acks >= 1 && s.unacked == [mid.clone()]).then_some(())
    })
    .await;
    assert!(net.hold_acks(ME, None, false));
    net.drop_connections(Some(ME));
    let until = tokio::time::Instant::now() + OUTAGE_DEADLINE;
    let s = loop {
        let s = stats();
        if s.redelivered >= 1 && s.unacked.is_empty() {
            break s;
        }
        if tokio::time::Instant::now() >= until {
            let (_, st) = srv.admin("GET", &format!("/api/status/{id}"), None).await;
            panic!("redelivery never acknowledged: {s:?}, instance {st}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("ack lost, socket dropped: mock counters {s:?}");

    // 2. The socket closes right after the next message is written.
    assert!(net.drop_before_ack(ME, None, true));
    let mid2 = contact.send_text(ME, "dropped right after").await.unwrap();
    account(
        "dropped right after delivery",
        &hook,
        &journal,
        &id,
        &[mid2.clone()],
    )
    .await;
    eventually("everything acknowledged", OUTAGE_DEADLINE, || {
        let s = stats();
        (!s.drop_before_ack && s.unacked.is_empty()).then_some(())
    })
    .await;
    println!("dropped right after delivery: mock counters {:?}", stats());

    // A later message proves the instance is past both; each stays single.
    let later = contact.send_text(ME, "after").await.unwrap();
    account("after the drops", &hook, &journal, &id, &[later]).await;
    let delivered = hook.incoming_ids();
    assert_eq!((delivered[&mid], delivered[&mid2]), (1, 1), "reported once");
    let rows = logged_ids(&journal, &id).await;
    for m in [&mid, &mid2] {
        assert_eq!(rows.iter().filter(|r| *r == m).count(), 1, "one log row");
    }
    srv.stop().await;
}

/// A sent message's statuses reach the webhook signed and in order (server ack,
/// delivered, read), and its log entry shows the timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn message_status_reaches_the_webhook_in_order() {
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(&net, "dur-status", &[("SUDEVWA_ENABLE_WEBHOOK", "true")]).await;
    let mut contact = net.add_contact("6281500000042", "Wati").await.unwrap();
    let (id, _) = srv.paired_instance(&net, "6281500000041").await;
    let hook = Collector::start().await;
    set_webhook(&srv, &id, &hook.url).await;
    let (s, v) = srv
        .admin(
            "POST",
            &format!("/api/send/{id}"),
            Some(json!({"to": "6281500000042", "message": "status please"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mid = v["data"]["messageId"].as_str().unwrap().to_string();
    let got = contact.next_text().await.unwrap();
    assert_eq!(got.message_id, mid);
    let statuses = |hits: &[Hit]| -> Vec<String> {
        hits.iter()
            .map(Hit::json)
            .filter(|v| {
                v["event"] == "message_status"
                    && v["data"]["message_ids"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == mid.as_str()))
            })
            .map(|v| v["data"]["status"].as_str().unwrap_or("").to_string())
            .collect()
    };
    // The contact's client sends its delivery receipt on its own, in a task of its
    // own; reading before that receipt has reached us would let the two race on the
    // wire. Wait for it (the server must report what the wire carries, in order).
    eventually("delivered", DEADLINE, || {
        statuses(&hook.hits())
            .iter()
            .any(|x| x == "delivered")
            .then_some(())
    })
    .await;
    let chat: whatsapp_rust::Jid = "6281500000041@s.whatsapp.net".parse().unwrap();
    contact
        .client
        .mark_as_read(&chat, None, &[mid.as_str()])
        .await
        .unwrap();
    let seen = eventually("server_ack, delivered and read", DEADLINE, || {
        let s = statuses(&hook.hits());
        ["server_ack", "delivered", "read"]
            .iter()
            .all(|w| s.iter().any(|x| x == w))
            .then_some(s)
    })
    .await;
    let pos = |w: &str| seen.iter().position(|x| x == w).unwrap();
    assert!(
        pos("server_ack") < pos("delivered") && pos("delivered") < pos("read"),
        "in order: {seen:?}"
    );
    // Cursors grow with delivery order, and every body is signed.
    let cursors: Vec<i64> = hook
        .hits()
        .iter()
        .map(|h| h.json()["cursor"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    for h in hook.hits() {
        assert_eq!(h.signature, signature(SECRET, &h.body));
        assert!(!h.id.is_empty());
    }

    let journal = journal_for(&format!("sqlite://{}/db.sqlite", srv.dir.display())).await;
    let m = journal
        .get_message(&id, &mid)
        .await
        .unwrap()
        .expect("logged");
    assert_eq!(m["direction"], "out");
    assert_eq!(m["status"], "read");
    let timeline: Vec<&str> = m["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    for w in ["sent", "server_ack", "delivered", "read"] {
        assert!(timeline.contains(&w), "{w} in {timeline:?}");
    }
    srv.stop().await;
}

/// A group message's timeline shows each member's device: delivered by both
/// members, read by the one who read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_message_timeline_is_per_recipient() {
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(&net, "dur-group", &[]).await;
    let mut ana = net.add_contact("6281500000072", "Ana").await.unwrap();
    let (id, token) = srv.paired_instance(&net, "6281500000071").await;
    let mut ben = net.add_contact("6281500000073", "Ben").await.unwrap();
    let gid = net
        .create_group(
            "Timeline",
            "6281500000071",
            &["6281500000072", "6281500000073"],
        )
        .unwrap();
    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/send-group/{id}"),
            Some(&token),
            Some(json!({"groupJid": gid, "message": "per recipient"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mid = v["data"]["messageId"].as_str().unwrap().to_string();
    for c in [&mut ana, &mut ben] {
        assert_eq!(c.next_text().await.unwrap().message_id, mid);
    }
    let group: whatsapp_rust::Jid = gid.parse().unwrap();
    let sender: whatsapp_rust::Jid = "6281500000071@s.whatsapp.net".parse().unwrap();
    ana.client
        .mark_as_read(&group, Some(&sender), &[mid.as_str()])
        .await
        .unwrap();
    let journal = journal_for(&format!("sqlite://{}/db.sqlite", srv.dir.display())).await;
    let until = tokio::time::Instant::now() + DEADLINE;
    let timeline = loop {
        let m = journal
            .get_message(&id, &mid)
            .await
            .unwrap()
            .expect("logged");
        let t: Vec<(String, String)> = m["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["status"].as_str().unwrap_or("").to_string(),
                    s["recipient"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let delivered: std::collections::BTreeSet<&str> = t
            .iter()
            .filter(|(s, _)| s == "delivered")
            .map(|(_, r)| r.split(['@', ':']).next().unwrap_or(""))
            .collect();
        let read: Vec<&str> = t
            .iter()
            .filter(|(s, _)| s == "read")
            .map(|(_, r)| r.split(['@', ':']).next().unwrap_or(""))
            .collect();
        if delivered.contains("6281500000072")
            && delivered.contains("6281500000073")
            && read == ["6281500000072"]
        {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "per-recipient timeline: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(timeline.iter().any(|(s, r)| s == "sent" && r.is_empty()));
    srv.stop().await;
}

/// `listen?after=CURSOR` replays exactly the events after the cursor, then goes live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listen_after_a_cursor_replays_exactly_what_was_missed() {
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(&net, "dur-listen", &[]).await;
    let contact = net.add_contact("6281500000052", "Yuni").await.unwrap();
    let (id, token) = srv.paired_instance(&net, "6281500000051").await;
    let connect = |after: Option<String>| {
        let url = match after {
            Some(c) => format!("ws://{}/api/listen/{id}?after={c}", srv.addr),
            None => format!("ws://{}/api/listen/{id}", srv.addr),
        };
        let token = token.clone();
        async move {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut req = url.into_client_request().unwrap();
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            tokio_tungstenite::connect_async(req).await.unwrap().0
        }
    };
    async fn next_incoming<S>(ws: &mut S) -> Value
    where
        S: futures_util::Stream<
                Item = Result<
                    tokio_tungstenite::tungstenite::Message,
                    tokio_tungstenite::tungstenite::Error,
                >,
            > + Unpin,
    {
        loop {
            let m = tokio::time::timeout(DEADLINE, ws.next())
                .await
                .expect("an event in time")
                .expect("socket open")
                .unwrap();
            if let Ok(t) = m.to_text() {
                let v: Value = serde_json::from_str(t).unwrap();
                if v["event"] == "incoming_message" {
                    return v;
                }
            }
        }
    }

    let mut ws = connect(None).await;
    let mut seen = Vec::new();
    for i in 0..3 {
        contact
            .send_text("6281500000051", &format!("live {i}"))
            .await
            .unwrap();
        seen.push(next_incoming(&mut ws).await);
    }
    let cursor = seen[2]["cursor"].as_str().unwrap().to_string();
    drop(ws);
    // Missed while away.
    let mut missed = Vec::new();
    for i in 0..2 {
        missed.push(
            contact
                .send_text("6281500000051", &format!("missed {i}"))
                .await
                .unwrap(),
        );
    }
    let journal = journal_for(&format!("sqlite://{}/db.sqlite", srv.dir.display())).await;
    let until = tokio::time::Instant::now() + DEADLINE;
    while {
        let logged = logged_ids(&journal, &id).await;
        !missed.iter().all(|m| logged.contains(m))
    } {
        assert!(
            tokio::time::Instant::now() < until,
            "missed messages never stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut ws = connect(Some(cursor.clone())).await;
    let a = next_incoming(&mut ws).await;
    let b = next_incoming(&mut ws).await;
    assert_eq!(
        [
            a["data"]["message_id"].clone(),
            b["data"]["message_id"].clone()
        ],
        [json!(missed[0]), json!(missed[1])],
        "exactly the missed events, in order"
    );
    assert!(a["cursor"].as_str().unwrap().parse::<i64>().unwrap() > cursor.parse::<i64>().unwrap());
    // Then live, with no repeat.
    let live = contact
        .send_text("6281500000051", "live again")
        .await
        .unwrap();
    let c = next_incoming(&mut ws).await;
    assert_eq!(c["data"]["message_id"], json!(live));

    // A bad cursor is a clear 400 before any upgrade.
    let (s, v) = srv
        .call(
            "GET",
            &format!("/api/listen/{id}?after=abc"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, 400, "{v}");
    srv.stop().await;
}

/// Retention removes old rows and rows past the per-instance cap, nothing else;
/// undelivered webhook events stay.
#[tokio::test]
async fn retention_prunes_what_it_should_and_nothing_else() {
    use sea_orm::{ConnectionTrait, Statement};
    let dir = std::env::temp_dir().join(format!("sudevwa-dur-ret-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/db.sqlite", dir.display());
    let cfg = sudevwa::config::Config::load(&sudevwa::config::Sources {
        env: [("DATABASE_URL".to_string(), url.clone())]
            .into_iter()
            .collect(),
        ..Default::default()
    })
    .unwrap();
    let db = sudevwa::store::db::open(&cfg.database).await.unwrap();
    let journal = Journal::new(db.clone(), false, Arc::new(tokio::sync::Notify::new()));
    let msg = |inst: &str, i: usize| actors::events::IncomingMessage {
        instance_id: inst.into(),
        from: "6281500000061@s.whatsapp.net".into(),
        from_me: false,
        message: format!("m{i}"),
        timestamp: chrono::Utc::now().timestamp(),
        is_group: false,
        message_id: format!("{inst}-M{i}"),
        push_name: "Zed".into(),
        chat: "6281500000061@s.whatsapp.net".into(),
        from_phone: Some("6281500000061".into()),
        from_lid: None,
        kind: "text".into(),
        media: None,
        details: Default::default(),
        raw: None,
    };
    // A: 3 old + 5 new; B: 2 new.
    let old: Vec<_> = (0..3).map(|i| msg("A", i)).collect();
    journal.commit_incoming("A", &old).await.unwrap();
    let day = 86_400_000i64;
    let old_ms = chrono::Utc::now().timestamp_millis() - 40 * day;
    for table in ["messages", "events"] {
        db.execute_raw(Statement::from_string(
            db.get_database_backend(),
            format!("UPDATE {table} SET created_at = {old_ms}"),
        ))
        .await
        .unwrap();
    }
    let new: Vec<_> = (3..8).map(|i| msg("A", i)).collect();
    journal.commit_incoming("A", &new).await.unwrap();
    let b: Vec<_> = (0..2).map(|i| msg("B", i)).collect();
    journal.commit_incoming("B", &b).await.unwrap();
    // An undelivered outbox row as old as the old messages.
    db.execute_raw(Statement::from_string(
        db.get_database_backend(),
        format!(
            "INSERT INTO webhook_outbox (id, instance_id, event, payload, status, attempts, next_attempt_at, created_at) \
             VALUES ('evt_old', 'A', 'incoming_message', '{{}}', 'pending', 3, 0, {old_ms})"
        ),
    ))
    .await
    .unwrap();

    let now = chrono::Utc::now().timestamp_millis();
    let p = journal
        .prune_at(
            Retention {
                days: 30,
                max_rows_per_instance: 0,
                payload_ms: None,
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!((p.messages, p.events, p.outbox), (3, 3, 0));
    let a_ids = logged_ids(&journal, "A").await;
    assert_eq!(a_ids.len(), 5);
    assert!(a_ids
        .iter()
        .all(|i| !["A-M0", "A-M1", "A-M2"].contains(&i.as_str())));
    assert_eq!(logged_ids(&journal, "B").await.len(), 2);
    let ev = journal.events_after("A", 0, 100, None).await.unwrap();
    assert_eq!(ev.len(), 5, "old events pruned, new kept");

    // The cap: A keeps its 2 newest, B (under the cap) keeps both.
    let p = journal
        .prune_at(
            Retention {
                days: 30,
                max_rows_per_instance: 2,
                payload_ms: None,
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(p.messages, 3);
    let mut a_ids = logged_ids(&journal, "A").await;
    a_ids.sort();
    assert_eq!(a_ids, ["A-M6", "A-M7"]);
    assert_eq!(logged_ids(&journal, "B").await.len(), 2);
    let outbox = sudevwa::webhook::Outbox::new(db.clone());
    let left: Vec<String> = outbox
        .list("A", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, ["evt_old"], "undelivered events are never pruned");
}

/// `GET /ready` is 200 once the stored instances are restored and the database answers,
/// 503 while PostgreSQL is down, and 200 again once it is back (no auth needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ready_follows_the_database() {
    let pg = PrivatePg::start_new("ready");
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(
        &net,
        "ready",
        &[
            ("DATABASE_URL", &pg.url()),
            ("SUDEVWA_DATABASE_ACQUIRE_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let ready = || async {
        let r = srv.http.get(srv.url("/ready")).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().await.unwrap())
    };
    let until_status = |want: u16| async move {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let (s, v) = ready().await;
            if s == want {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "/ready never {want}: {s} {v}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let v = until_status(200).await;
    assert_eq!(
        v,
        serde_json::json!({"ready": true, "database": true, "restored": true})
    );
    pg.stop("fast");
    let v = until_status(503).await;
    assert_eq!(
        (&v["ready"], &v["database"]),
        (&serde_json::json!(false), &serde_json::json!(false))
    );
    pg.start();
    until_status(200).await;
    srv.stop().await;
}
