//! The README's five-minute tour, run against the real binary in sandbox mode
//! (`--sandbox`, cargo feature `sandbox`): the SUDEVWA client flow with the sandbox
//! routes playing the phone and the other person; and the same server restarted
//! against a standalone mock network (`--mock-url`).
#![cfg(feature = "sandbox")]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(90);

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
/// `--sandbox`. Returns the process, its base URL once it listens, and the mock
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

/// One server's API, as the admin signed in with `/login-jwt`.
struct Api {
    http: reqwest::Client,
    base: String,
    jwt: String,
}

impl Api {
    /// Step 1 of the tour: sign in.
    async fn login(base: &str) -> Api {
        let mut api = Api {
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: base.to_string(),
            jwt: String::new(),
        };
        let v = api
            .ok(
                "POST",
                "/login-jwt",
                Some(json!({"username": "admin", "password": "sandbox-password"})),
            )
            .await;
        api.jwt = v["token"].as_str().unwrap().to_string();
        api
    }

    /// A request; `token` false sends none.
    async fn request(
        &self,
        method: &str,
        path: &str,
        token: bool,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if token && !self.jwt.is_empty() {
            r = r.bearer_auth(&self.jwt);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let s = resp.status().as_u16();
        (s, resp.json().await.unwrap_or(Value::Null))
    }

    /// A request that must answer 200; its JSON.
    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.request(method, path, true, body).await;
        assert_eq!(s, 200, "{method} {path}: {v}");
        v
    }

    async fn status(&self, id: &str) -> Value {
        self.request("GET", &format!("/api/status/{id}"), true, None)
            .await
            .1["data"]
            .clone()
    }

    /// Online with a live socket (a row left "online" by a killed process is not enough).
    async fn online(&self, id: &str) -> bool {
        let s = self.status(id).await;
        s["status"] == "online" && s["isConnected"] == true
    }

    /// Steps 2–4: create an instance, ask for its QR, let the mock phone of `phone`
    /// scan it; waits until it is online.
    async fn pair(&self, phone: &str) -> String {
        let v = self.ok("POST", "/api/login", None).await;
        let id = v["data"]["instanceId"].as_str().unwrap().to_string();
        self.ok("GET", &format!("/api/qr/{id}"), None).await;
        self.ok(
            "POST",
            &format!("/sandbox/scan/{id}"),
            Some(json!({"phone": phone})),
        )
        .await;
        eventually("online", async || self.online(&id).await).await;
        id
    }

    /// The same by pairing code: ask for a code for `phone`, let that mock phone type it.
    async fn pair_by_code(&self, phone: &str) -> String {
        let v = self.ok("POST", "/api/login", None).await;
        let id = v["data"]["instanceId"].as_str().unwrap().to_string();
        let v = self
            .ok(
                "POST",
                &format!("/api/pair-code/{id}"),
                Some(json!({"phone": phone})),
            )
            .await;
        let code = v["data"]["code"].as_str().unwrap().to_string();
        self.ok(
            "POST",
            "/sandbox/enter-code",
            Some(json!({"phone": phone, "code": code})),
        )
        .await;
        eventually("online by code", async || self.online(&id).await).await;
        id
    }

    async fn add_contact(&self, phone: &str, name: &str) {
        self.ok(
            "POST",
            "/sandbox/contacts",
            Some(json!({"phone": phone, "push_name": name})),
        )
        .await;
    }

    async fn send(&self, id: &str, to: &str, text: &str) {
        self.ok(
            "POST",
            &format!("/api/send/{id}"),
            Some(json!({"to": to, "message": text})),
        )
        .await;
    }

    /// Waits until the sandbox contact `phone` has received a message `pick` accepts.
    async fn contact_received(&self, phone: &str, what: &str, pick: impl Fn(&Value) -> bool) {
        eventually(what, async || {
            let v = self
                .ok("GET", &format!("/sandbox/contacts/{phone}/messages"), None)
                .await;
            v["data"]["messages"]
                .as_array()
                .is_some_and(|m| m.iter().any(&pick))
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_tour_in_sandbox_mode() {
    let dir = scratch("sandbox");
    let (child, base, mock) = spawn_server(&dir, &[]);
    assert!(
        mock.starts_with("http://127.0.0.1:"),
        "an in-process mock on loopback: {mock}"
    );
    // 1. login-jwt, 2.–4. create, QR, scan
    let api = Api::login(&base).await;
    let id = api.pair("6281100000101").await;
    // The pairing-code alternative.
    let by_code = api.pair_by_code("6281100000102").await;
    assert_ne!(by_code, id);
    // 5. a contact, 6. send to it, 7. check, 8. read what it got, 9. it answers
    api.add_contact("6281200000101", "Rina").await;
    api.send(&id, "6281200000101", "Halo Rina").await;
    let v = api
        .ok(
            "POST",
            &format!("/api/check/{id}"),
            Some(json!({"phone": "6281200000101"})),
        )
        .await;
    assert_eq!(v["data"]["isRegistered"], true);
    api.contact_received("6281200000101", "the contact received it", |x| {
        x["message"] == "Halo Rina" && x["type"] == "text"
    })
    .await;
    let v = api
        .ok(
            "POST",
            "/sandbox/contacts/6281200000101/send",
            Some(json!({"to": "6281100000101", "message": "Halo juga"})),
        )
        .await;
    let halo = v["data"]["message_id"].as_str().unwrap().to_string();
    // The contact sends every other kind, as real clients do; the instance reports each.
    let contact_sends = [
        json!({"to": "6281100000101", "location": {"latitude": -6.2, "longitude": 106.8, "name": "Monas"}}),
        json!({"to": "6281100000101", "poll": {"name": "Lunch?", "options": ["Rice", "Noodles"]}}),
        json!({"to": "6281100000101", "contacts": [{"name": "Eko", "phone": "6281200000109"}]}),
        json!({"to": "6281100000101", "message": "gone soon", "ephemeral": 86400,
               "quoted": {"messageId": halo, "text": "Halo juga"}, "mentions": ["6281100000101"]}),
        json!({"to": "6281100000101", "reaction": {"messageId": halo, "emoji": "👍", "fromMe": true}}),
        json!({"to": "6281100000101", "edit": {"messageId": halo, "text": "Halo juga!"}}),
        json!({"to": "6281100000101", "revoke": halo}),
    ];
    for body in contact_sends {
        api.ok("POST", "/sandbox/contacts/6281200000101/send", Some(body))
            .await;
    }
    let seen = |e: &Value| -> bool {
        let d = &e["data"];
        match (e["event"].as_str(), d["type"].as_str()) {
            (Some("incoming_message"), Some("location")) => d["location"]["name"] == "Monas",
            (Some("incoming_message"), Some("poll")) => {
                d["poll"]["options"] == json!(["Rice", "Noodles"])
            }
            (Some("incoming_message"), Some("contact")) => {
                d["contacts"][0]["display_name"] == "Eko"
            }
            (Some("incoming_message"), Some("text")) => {
                d["ephemeral"] == true && d["quoted"]["message_id"] == halo.as_str()
            }
            (Some("incoming_message"), Some("reaction")) => {
                d["reaction"]["message_id"] == halo.as_str()
            }
            (Some("message_edited"), _) => d["message"] == "Halo juga!",
            (Some("message_revoked"), _) => d["original_message_id"] == halo.as_str(),
            _ => false,
        }
    };
    eventually("every kind reported", async || {
        let v = api
            .ok(
                "GET",
                &format!("/api/instances/{id}/events?limit=1000"),
                None,
            )
            .await;
        v["data"]["events"]
            .as_array()
            .is_some_and(|list| list.iter().filter(|e| seen(e)).count() >= 7)
    })
    .await;
    // What the contact received shows its kind too.
    api.ok(
        "POST",
        &format!("/api/instances/{id}/send/location"),
        Some(json!({"to": "6281200000101", "latitude": 1.5, "longitude": 2.5, "name": "Here"})),
    )
    .await;
    api.contact_received("6281200000101", "the location arrived", |x| {
        x["type"] == "location" && x["location"]["name"] == "Here"
    })
    .await;
    // 10. a group
    let v = api
        .ok(
            "POST",
            "/sandbox/groups",
            Some(json!({"name": "Tour", "participants": ["6281100000101", "6281200000101"]})),
        )
        .await;
    let gid = v["data"]["jid"].as_str().unwrap().to_string();
    api.ok(
        "POST",
        &format!("/api/send-group/{id}"),
        Some(json!({"groupJid": gid, "message": "to the group"})),
    )
    .await;
    api.contact_received("6281200000101", "the group message arrived", |x| {
        x["message"] == "to the group" && x["is_group"] == true
    })
    .await;
    // Sandbox routes need auth too.
    let (s, _) = api
        .request(
            "POST",
            "/sandbox/contacts",
            false,
            Some(json!({"phone": "6281200000102"})),
        )
        .await;
    assert_eq!(s, 401);
    // 11. the phone unlinks the device: the instance ends logged out.
    let v = api.ok("POST", &format!("/sandbox/unlink/{id}"), None).await;
    assert_eq!(v["data"]["unlinked"].as_u64(), Some(1), "{v}");
    eventually("logged_out", async || {
        api.status(&id).await["status"] == "logged_out"
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

    let (first, base, mock) = spawn_server(&dir, &["--mock-url", &url]);
    assert_eq!(mock, url, "the sandbox uses the given mock, not its own");
    // The sandbox routes drive the remote mock through its admin API.
    let api = Api::login(&base).await;
    let id = api.pair("6281100000201").await;
    api.pair_by_code("6281100000202").await;
    api.add_contact("6281200000201", "Sari").await;
    api.send(&id, "6281200000201", "before the restart").await;
    api.contact_received("6281200000201", "the sandbox contact received it", |x| {
        x["message"] == "before the restart"
    })
    .await;
    let v = api
        .ok(
            "POST",
            "/sandbox/faults/acks",
            Some(json!({"instance_id": id})),
        )
        .await;
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
    let api = Api::login(&base).await;
    // Never "online" without a live socket, also before the restore reaches it.
    eventually("online again after the restart", async || {
        let s = api.status(&id).await;
        assert!(
            s["status"] != "online" || s["isConnected"] == true,
            "online without a socket: {s}"
        );
        s["status"] == "online"
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
    api.send(&id, "6281200000202", "after the restart").await;
    let got = rina.next_text().await.unwrap();
    assert_eq!(
        (got.from.as_str(), got.text.as_str()),
        ("6281100000201", "after the restart")
    );
    rina.send_text("6281100000201", "welcome back")
        .await
        .unwrap();
    eventually("the answer is in the message log", async || {
        let v = api
            .ok(
                "GET",
                &format!("/api/instances/{id}/messages?direction=in"),
                None,
            )
            .await;
        v.to_string().contains("welcome back")
    })
    .await;
    drop(second);
    net.shutdown();
}
