//! The README's five-minute tour, run against the real binary in sandbox mode
//! (`--sandbox`, cargo feature `sandbox`): the SUDEVWA client flow with the sandbox
//! routes playing the phone and the other person.
#![cfg(feature = "sandbox")]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(90);

async fn call(
    http: &reqwest::Client,
    method: &str,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let until = tokio::time::Instant::now() + DEADLINE;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The server process, killed when dropped (also when a test panics: no orphan keeps
/// the test's output pipe open).
struct ServerProc(std::process::Child);

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server binary in sandbox mode on `dir`'s database, with `args` after
/// `--sandbox`. Returns the child and its base URL once it listens, and the mock
/// network URL it announced.
fn spawn_server(dir: &std::path::Path, args: &[&str]) -> (ServerProc, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sudevwa"))
        .arg("--sandbox")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PORT", "0")
        .env("RUST_LOG", "warn")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/sandbox.db", dir.display()),
        )
        .env("APP_LOGIN_USERNAME", "admin")
        .env("APP_LOGIN_PASSWORD", "sandbox-password")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let child = ServerProc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut base = None;
    let mut mock = None;
    while base.is_none() {
        let line = rx.recv_timeout(DEADLINE).expect("server starts");
        if let Some(m) = line.strip_prefix("sandbox: mock WhatsApp network at ") {
            mock = Some(m.to_string());
        }
        base = line.strip_prefix("listening on ").map(str::to_string);
    }
    let mock = mock.expect("the sandbox says where its mock network is");
    (child, base.unwrap(), mock)
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sudevwa-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn login(http: &reqwest::Client, base: &str) -> String {
    let (s, v) = call(
        http,
        "POST",
        format!("{base}/login-jwt"),
        None,
        Some(json!({"username": "admin", "password": "sandbox-password"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["token"].as_str().unwrap().to_string()
}

/// Online with a live socket (a row left "online" by a killed process is not enough).
async fn online(http: &reqwest::Client, base: &str, jwt: &str, id: &str) -> bool {
    let (_, v) = call(
        http,
        "GET",
        format!("{base}/api/status/{id}"),
        Some(jwt),
        None,
    )
    .await;
    v["data"]["status"] == "online" && v["data"]["isConnected"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_tour_in_sandbox_mode() {
    let dir = scratch("sandbox");
    let (child, base, mock) = spawn_server(&dir, &[]);
    assert!(
        mock.starts_with("http://127.0.0.1:"),
        "an in-process mock on loopback: {mock}"
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // 1. login-jwt
    let (s, v) = call(
        &http,
        "POST",
        format!("{base}/login-jwt"),
        None,
        Some(json!({"username": "admin", "password": "sandbox-password"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let jwt = v["token"].as_str().unwrap().to_string();
    // 2. create an instance, 3. ask for its QR, 4. let a mock phone scan it
    let (_, v) = call(&http, "POST", format!("{base}/api/login"), Some(&jwt), None).await;
    let id = v["data"]["instanceId"].as_str().unwrap().to_string();
    let (s, v) = call(
        &http,
        "GET",
        format!("{base}/api/qr/{id}"),
        Some(&jwt),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &http,
        "POST",
        format!("{base}/sandbox/scan/{id}"),
        Some(&jwt),
        Some(json!({"phone": "6281100000101"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    eventually("online", async || {
        let (_, v) = call(
            &http,
            "GET",
            format!("{base}/api/status/{id}"),
            Some(&jwt),
            None,
        )
        .await;
        v["data"]["status"] == "online"
    })
    .await;
    // 5. a contact, 6. send to it, 7. check, 8. read what it got, 9. it answers
    let (s, v) = call(
        &http,
        "POST",
        format!("{base}/sandbox/contacts"),
        Some(&jwt),
        Some(json!({"phone": "6281200000101", "push_name": "Rina"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &http,
        "POST",
        format!("{base}/api/send/{id}"),
        Some(&jwt),
        Some(json!({"to": "6281200000101", "message": "Halo Rina"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = call(
        &http,
        "POST",
        format!("{base}/api/check/{id}"),
        Some(&jwt),
        Some(json!({"phone": "6281200000101"})),
    )
    .await;
    assert_eq!(v["data"]["isRegistered"], true);
    eventually("the contact received it", async || {
        let (_, v) = call(
            &http,
            "GET",
            format!("{base}/sandbox/contacts/6281200000101/messages"),
            Some(&jwt),
            None,
        )
        .await;
        v["data"]["messages"].as_array().is_some_and(|m| {
            m.iter()
                .any(|x| x["message"] == "Halo Rina" && x["type"] == "text")
        })
    })
    .await;
    let (s, v) = call(
        &http,
        "POST",
        format!("{base}/sandbox/contacts/6281200000101/send"),
        Some(&jwt),
        Some(json!({"to": "6281100000101", "message": "Halo juga"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // 10. a group
    let (s, v) = call(
        &http,
        "POST",
        format!("{base}/sandbox/groups"),
        Some(&jwt),
        Some(json!({"name": "Tour", "participants": ["6281100000101", "6281200000101"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let gid = v["data"]["jid"].as_str().unwrap().to_string();
    let (s, v) = call(
        &http,
        "POST",
        format!("{base}/api/send-group/{id}"),
        Some(&jwt),
        Some(json!({"groupJid": gid, "message": "to the group"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    eventually("the group message arrived", async || {
        let (_, v) = call(
            &http,
            "GET",
            format!("{base}/sandbox/contacts/6281200000101/messages"),
            Some(&jwt),
            None,
        )
        .await;
        v["data"]["messages"].as_array().is_some_and(|m| {
            m.iter()
                .any(|x| x["message"] == "to the group" && x["is_group"] == true)
        })
    })
    .await;
    // Sandbox routes need auth too.
    let (s, _) = call(
        &http,
        "POST",
        format!("{base}/sandbox/contacts"),
        None,
        Some(json!({"phone": "6281200000102"})),
    )
    .await;
    assert_eq!(s, 401);
    // 11. the phone unlinks the device: the instance ends logged out.
    let (s, v) = call(
        &http,
        "POST",
        format!("{base}/sandbox/unlink/{id}"),
        Some(&jwt),
        None,
    )
    .await;
    assert_eq!((s, v["data"]["unlinked"].as_u64()), (200, Some(1)), "{v}");
    eventually("logged_out", async || {
        let (_, v) = call(
            &http,
            "GET",
            format!("{base}/api/status/{id}"),
            Some(&jwt),
            None,
        )
        .await;
        v["data"]["status"] == "logged_out"
    })
    .await;
    drop(child);
}

/// A standalone mock network (here in the test process, outside the server's) outlives
/// the server: paired in one server process, killed, started again on the same
/// database and mock URL, the instance comes back online with no new QR and no new
/// device, and its messages flow both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_restarted_against_a_standalone_mock_keeps_its_instances() {
    let net = mock_whatsapp::MockNetwork::start().await.unwrap();
    let url = net.base_url();
    let dir = scratch("sandbox-restart");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    let (first, base, mock) = spawn_server(&dir, &["--mock-url", &url]);
    assert_eq!(mock, url, "the sandbox uses the given mock, not its own");
    let jwt = login(&http, &base).await;
    let (_, v) = call(&http, "POST", format!("{base}/api/login"), Some(&jwt), None).await;
    let id = v["data"]["instanceId"].as_str().unwrap().to_string();
    let (s, v) = call(
        &http,
        "GET",
        format!("{base}/api/qr/{id}"),
        Some(&jwt),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // The sandbox routes drive the remote mock through its admin API.
    let (s, v) = call(
        &http,
        "POST",
        format!("{base}/sandbox/scan/{id}"),
        Some(&jwt),
        Some(json!({"phone": "6281100000201"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    eventually("online", async || online(&http, &base, &jwt, &id).await).await;
    let (s, v) = call(
        &http,
        "POST",
        format!("{base}/sandbox/contacts"),
        Some(&jwt),
        Some(json!({"phone": "6281200000201", "push_name": "Sari"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &http,
        "POST",
        format!("{base}/api/send/{id}"),
        Some(&jwt),
        Some(json!({"to": "6281200000201", "message": "before the restart"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    eventually("the sandbox contact received it", async || {
        let (_, v) = call(
            &http,
            "GET",
            format!("{base}/sandbox/contacts/6281200000201/messages"),
            Some(&jwt),
            None,
        )
        .await;
        v["data"]["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x["message"] == "before the restart"))
    })
    .await;
    let (s, v) = call(
        &http,
        "POST",
        format!("{base}/sandbox/faults/acks"),
        Some(&jwt),
        Some(json!({"instance_id": id})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["data"]["devices"].as_array().map(Vec::len),
        Some(1),
        "{v}"
    );
    let devices_of = |phone: &str| {
        net.accounts()
            .into_iter()
            .filter(|a| a.phone == phone)
            .map(|a| a.devices.len())
            .sum::<usize>()
    };
    let paired = devices_of("6281100000201");
    assert_eq!(paired, 1);

    // The server dies without warning; the mock keeps running.
    drop(first);

    let (second, base, _) = spawn_server(&dir, &["--mock-url", &url]);
    let jwt = login(&http, &base).await;
    eventually("online again after the restart", async || {
        online(&http, &base, &jwt, &id).await
    })
    .await;
    assert_eq!(
        devices_of("6281100000201"),
        paired,
        "no new device was paired (no QR)"
    );
    // Messages flow both ways: a contact made now, outside the server, receives a
    // send and answers; the answer reaches the instance's message log.
    let mut rina = net.add_contact("6281200000202", "Rina").await.unwrap();
    let (s, v) = call(
        &http,
        "POST",
        format!("{base}/api/send/{id}"),
        Some(&jwt),
        Some(json!({"to": "6281200000202", "message": "after the restart"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let got = rina.next_text().await.unwrap();
    assert_eq!(
        (got.from.as_str(), got.text.as_str()),
        ("6281100000201", "after the restart")
    );
    rina.send_text("6281100000201", "welcome back")
        .await
        .unwrap();
    eventually("the answer is in the message log", async || {
        let (_, v) = call(
            &http,
            "GET",
            format!("{base}/api/instances/{id}/messages?direction=in"),
            Some(&jwt),
            None,
        )
        .await;
        v.to_string().contains("welcome back")
    })
    .await;
    drop(second);
    net.shutdown();
}
