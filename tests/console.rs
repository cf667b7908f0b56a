//! The operator console in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `tests/run.sh`), driven over WebDriver by
//! `fantoccini`, against the real server and the mock network: sign in (a wrong
//! password first), create an instance, read its QR image and decode it, let the mock
//! phone scan it and watch the row turn online without a reload, send a test message
//! to a contact, see the contact's answer stream in, watch a failing webhook's attempts
//! and redeliver it, log the instance out, and fall back to sign-in on a bad token.
//! Every request the page made went to the server. Screenshots of the main views go
//! to `target/console-screenshots/`.

mod common;

use common::{TestServer, DEADLINE, PASSWORD, USER};
use fantoccini::{Client, ClientBuilder};
use mock_whatsapp::MockNetwork;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: std::process::Child,
    port: u16,
    profile: std::path::PathBuf,
}

impl Driver {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let exe = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("chromedriver is installed (tests/run.sh installs chromium-driver)");
        let child = std::process::Command::new(exe)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = std::env::temp_dir().join(format!("sudevwa-chromium-{}", std::process::id()));
        Self {
            child,
            port,
            profile,
        }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,1000", "--no-first-run", "--disable-extensions",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--metrics-recording-only", "--no-default-browser-check",
                    format!("--user-data-dir={}", self.profile.display()),
                ],
            }),
        );
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{}", self.port))
                .await
            {
                Ok(c) => return c,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < until, "no browser: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Runs `script` in the page; its value.
async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Waits until `script` (an expression) is truthy in the page.
async fn until(c: &Client, what: &str, script: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let v = js(c, &format!("return !!({script});")).await;
        if v == Value::Bool(true) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Saves a screenshot of the page as `target/console-screenshots/<name>.png`.
async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Sets an input's value as a person typing would.
async fn fill(c: &Client, id: &str, value: &str) {
    js(
        c,
        &format!(
            "const e = document.getElementById({id}); e.value = {value}; e.dispatchEvent(new Event('input'));",
            id = json!(id),
            value = json!(value)
        ),
    )
    .await;
}

async fn click(c: &Client, selector: &str) {
    js(
        c,
        &format!("document.querySelector({}).click();", json!(selector)),
    )
    .await;
}

/// The status word shown in instance `id`'s row.
fn row_status(id: &str) -> String {
    format!("(document.querySelector('tr[data-id=\"{id}\"] .status') || {{}}).textContent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_end_to_end_in_chromium() {
    const ME: &str = "6281100000081";
    const KIM: &str = "6281200000081";
    let net = MockNetwork::start().await.unwrap();
    let mut kim = net.add_contact(KIM, "Kim").await.unwrap();
    kim.client.wait_for_connected(DEADLINE).await.unwrap();
    let srv = TestServer::start(
        &net,
        "console",
        &[
            ("SUDEVWA_ENABLE_WEBHOOK", "true"),
            ("SUDEVWA_WEBHOOK_RETRY_SCHEDULE", "1s"),
            ("SUDEVWA_WEBHOOK_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    // A webhook receiver that fails until told otherwise.
    let failing = Arc::new(Mutex::new(true));
    let hits = Arc::new(Mutex::new(0u32));
    let (f, h) = (failing.clone(), hits.clone());
    use warp::Filter as _;
    let hook = warp::post()
        .and(warp::body::bytes())
        .map(move |_b: bytes::Bytes| {
            *h.lock().unwrap() += 1;
            let code = if *f.lock().unwrap() { 500 } else { 200 };
            warp::http::Response::builder()
                .status(code)
                .body(Vec::<u8>::new())
                .unwrap()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(hook).incoming(listener).run());

    let driver = Driver::start();
    let c = driver.browser().await;
    c.goto(&srv.url("/console")).await.unwrap();

    // A wrong password is an error in words; the right one signs in.
    fill(&c, "username", USER).await;
    fill(&c, "password", "not the password").await;
    click(&c, "#login").await;
    until(
        &c,
        "the wrong-password error",
        "document.getElementById('signin-error').textContent.length > 0",
    )
    .await;
    fill(&c, "password", PASSWORD).await;
    click(&c, "#login").await;
    until(
        &c,
        "the instances view",
        "!document.getElementById('app').hidden",
    )
    .await;
    until(
        &c,
        "live updates",
        "document.getElementById('live').textContent === 'Live updates on'",
    )
    .await;
    shot(&c, "instances-empty").await;

    // Create an instance: the QR image appears and is a QR code the phone can scan.
    click(&c, "#create").await;
    until(
        &c,
        "the QR image",
        "document.getElementById('qr-img').naturalWidth > 0",
    )
    .await;
    shot(&c, "login-qr").await;
    let data_url = js(
        &c,
        "const i = document.getElementById('qr-img'); const cv = document.createElement('canvas');
         cv.width = i.naturalWidth; cv.height = i.naturalHeight; cv.getContext('2d').drawImage(i, 0, 0);
         return cv.toDataURL('image/png');",
    )
    .await;
    let id = js(
        &c,
        "return document.getElementById('login-id').textContent;",
    )
    .await
    .as_str()
    .unwrap()
    .to_string();
    let png = {
        use base64::Engine as _;
        let b64 = data_url
            .as_str()
            .unwrap()
            .trim_start_matches("data:image/png;base64,");
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    };
    let img = image::load_from_memory(&png).unwrap().to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(img);
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the image");
    let (_, qr) = grids[0].decode().expect("a valid QR code");
    net.scan_qr(&qr, Some(ME))
        .expect("the mock phone scans the code from the screen");
    // The row turns online with no reload, and the login panel closes.
    until(
        &c,
        "the row online",
        &format!("{} === 'online'", row_status(&id)),
    )
    .await;
    until(
        &c,
        "the panel closed",
        "document.getElementById('login-panel').hidden",
    )
    .await;
    shot(&c, "instances-online").await;

    // Per instance: a test message reaches the contact; the contact's answer streams in.
    js(&c, &format!("openDetail({});", json!(id))).await;
    until(
        &c,
        "the detail view",
        "!document.getElementById('detail').hidden",
    )
    .await;
    fill(&c, "send-to", KIM).await;
    fill(&c, "send-text", "hello from the console").await;
    click(&c, "#send").await;
    until(
        &c,
        "the send result",
        "document.getElementById('send-result').textContent.startsWith('Sent')",
    )
    .await;
    assert_eq!(
        kim.next_text().await.unwrap().text,
        "hello from the console"
    );
    // Give the listen socket a moment to be open: wait until it reports OPEN.
    until(&c, "the listen socket", "listen && listen.readyState === 1").await;
    kim.send_text(ME, "hello back").await.unwrap();
    until(
        &c,
        "the incoming message",
        "document.getElementById('incoming').textContent.includes('hello back')",
    )
    .await;

    // A failing webhook: its attempts show, then a redelivery succeeds.
    fill(&c, "hook-url", &format!("http://{hook_addr}/hook")).await;
    click(&c, "#hook-save").await;
    until(
        &c,
        "the webhook saved",
        "document.getElementById('hook-result').textContent === 'Saved'",
    )
    .await;
    kim.send_text(ME, "for the webhook").await.unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        click(&c, "#deliveries-refresh").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let dead = js(&c, "return [...document.querySelectorAll('#deliveries tr')].some(r => r.textContent.includes('dead'));").await;
        if dead == Value::Bool(true) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delivery never failed for good"
        );
    }
    assert!(*hits.lock().unwrap() >= 2, "first attempt and one retry");
    shot(&c, "deliveries").await;
    *failing.lock().unwrap() = false;
    click(&c, "#deliveries button").await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        click(&c, "#deliveries-refresh").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ok = js(&c, "return [...document.querySelectorAll('#deliveries tr')].some(r => r.textContent.includes('delivered'));").await;
        if ok == Value::Bool(true) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the redelivery never arrived"
        );
    }

    // Log out: the row leaves online, as the API says.
    js(&c, "window.confirm = () => true;").await;
    js(
        &c,
        &format!(
            "[...document.querySelectorAll('tr[data-id=\"{id}\"] button')].find(b => b.textContent === 'Log out').click();"
        ),
    )
    .await;
    until(
        &c,
        "the row logged out",
        &format!("{} !== 'online'", row_status(&id)),
    )
    .await;
    let (_, v) = srv.admin("GET", &format!("/api/status/{id}"), None).await;
    let api_status = v["data"]["status"].as_str().unwrap().to_string();
    until(
        &c,
        "the row as the API says",
        &format!("{} === {}", row_status(&id), json!(api_status)),
    )
    .await;

    // Every request the page made went to this server.
    let origin = srv.url("");
    let names = js(
        &c,
        "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href]);",
    )
    .await;
    for n in names.as_array().unwrap() {
        let n = n.as_str().unwrap();
        assert!(
            n.starts_with(origin.trim_end_matches('/')) || n.starts_with("blob:"),
            "a request elsewhere: {n}"
        );
    }

    // A token the server no longer takes returns to sign-in, with a reason.
    js(
        &c,
        "sessionStorage.setItem('token', 'expired-or-revoked'); location.reload();",
    )
    .await;
    until(&c, "sign-in again", "document.readyState === 'complete' && !document.getElementById('signin').hidden && document.getElementById('signin-error').textContent.includes('expired')").await;
    shot(&c, "signin").await;
    c.close().await.unwrap();
}
