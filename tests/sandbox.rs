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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_tour_in_sandbox_mode() {
    let dir = std::env::temp_dir().join(format!("sudevwa-sandbox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sudevwa"))
        .arg("--sandbox")
        .current_dir(&dir)
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
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut base = None;
    let mut saw_mock = false;
    while base.is_none() {
        let line = rx.recv_timeout(DEADLINE).expect("server starts");
        saw_mock |= line.starts_with("sandbox: mock WhatsApp network at http://127.0.0.1:");
        base = line.strip_prefix("listening on ").map(str::to_string);
    }
    assert!(saw_mock, "the sandbox says where its mock network is");
    let base = base.unwrap();
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
    child.kill().unwrap();
    child.wait().unwrap();
}
