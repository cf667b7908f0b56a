//! Shared harness of the black-box API tests: the real server (routes, auth, actors,
//! database) started in-process on 127.0.0.1:0 against a mock WhatsApp network, and
//! driven over real HTTP and WebSockets.
#![allow(dead_code)]

use actors::instance::WaOptions;
use mock_whatsapp::MockNetwork;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use sudevwa::config::{Config, Sources};
use sudevwa::server::{run_with, Overrides};
use tokio::sync::oneshot;

pub const DEADLINE: Duration = Duration::from_secs(60);
pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef0123456789";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";
pub const USER: &str = "operator";
pub const PASSWORD: &str = "correct horse battery staple";

pub struct TestServer {
    pub base: String,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub dir: std::path::PathBuf,
}

impl TestServer {
    /// Starts a server on a fresh SQLite database with `extra` env settings.
    pub async fn start(net: &MockNetwork, name: &str, extra: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("sudevwa-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self::start_in(net, dir, extra).await
    }

    /// Starts a server on the database in `dir` (reused across restarts).
    pub async fn start_in(
        net: &MockNetwork,
        dir: std::path::PathBuf,
        extra: &[(&str, &str)],
    ) -> Self {
        Self::start_with(net, dir, extra, None).await
    }

    /// [`TestServer::start_in`] with instance timing overridden.
    pub async fn start_with(
        net: &MockNetwork,
        dir: std::path::PathBuf,
        extra: &[(&str, &str)],
        timing: Option<actors::instance::InstanceTiming>,
    ) -> Self {
        // SUDEVWA_TEST_LOG=<filter> prints the server's logs while debugging a test.
        if let Ok(filter) = std::env::var("SUDEVWA_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let mut env = BTreeMap::new();
        for (k, v) in [
            (
                "DATABASE_URL",
                format!("sqlite://{}/db.sqlite", dir.display()),
            ),
            ("PORT", "0".into()),
            ("JWT_SECRET", JWT_SECRET.into()),
            ("APP_LOGIN_USERNAME", USER.into()),
            ("APP_LOGIN_PASSWORD", PASSWORD.into()),
            ("SUDEVWA_AUTH_ADMIN_API_KEYS", ADMIN_KEY.into()),
            ("SUDEVWA_ALLOWED_TARGETS", "127.0.0.0/8".into()),
        ] {
            env.insert(k.to_string(), v);
        }
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let config = Config::load(&Sources {
            env,
            ..Default::default()
        })
        .expect("test config is valid");
        let wa = WaOptions {
            socket_url: Some(net.ws_url()),
            version: Some((2, 3000, 0)),
            push_name: "sudevwa".into(),
            http: Some(Arc::new(net.http_client())),
            force_active_receipts: true,
        };
        let (bound_tx, bound_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let r = run_with(
                config,
                Overrides {
                    wa: Some(wa),
                    timing,
                    ..Default::default()
                },
                move |a| {
                    let _ = bound_tx.send(a);
                },
                async move {
                    let _ = stop_rx.await;
                },
            )
            .await;
            if let Err(e) = r {
                panic!("server failed: {e}");
            }
        });
        let addr = tokio::time::timeout(DEADLINE, bound_rx)
            .await
            .expect("server binds in time")
            .expect("server reports its address");
        Self {
            base: format!("http://{addr}"),
            addr,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            stop: Some(stop_tx),
            task: Some(task),
            dir,
        }
    }

    /// Graceful stop (like SIGTERM), waiting until the server is done.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(DEADLINE, t).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request with an optional bearer token; returns (status, JSON body).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method.parse().unwrap(), self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request reaches the server");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, Some(ADMIN_KEY), body).await
    }

    /// Creates an instance; returns (id, instance token).
    pub async fn create_instance(&self) -> (String, String) {
        let (s, v) = self.admin("POST", "/api/login", None).await;
        assert_eq!(s, 200, "{v}");
        (
            v["data"]["instanceId"].as_str().unwrap().to_string(),
            v["data"]["token"].as_str().unwrap().to_string(),
        )
    }

    /// Polls `GET /api/status/:id` until `pred` holds.
    pub async fn wait_status(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let (_, v) = self.admin("GET", &format!("/api/status/{id}"), None).await;
            if pred(&v["data"]) {
                return v["data"].clone();
            }
            assert!(
                tokio::time::Instant::now() < until,
                "timed out waiting for {what}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates an instance and pairs it with the mock phone `phone` through the API.
    pub async fn paired_instance(&self, net: &MockNetwork, phone: &str) -> (String, String) {
        let (id, token) = self.create_instance().await;
        let qr = self.current_qr(&id, &token).await;
        net.scan_qr(&qr, Some(phone)).expect("mock phone scans");
        self.wait_status(&id, "online", |d| {
            d["status"] == "online" && d["isConnected"] == true
        })
        .await;
        (id, token)
    }

    /// `GET /api/qr/:id` until it carries a code.
    pub async fn current_qr(&self, id: &str, token: &str) -> String {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let (s, v) = self
                .call("GET", &format!("/api/qr/{id}"), Some(token), None)
                .await;
            assert_eq!(s, 200, "{v}");
            if let Some(q) = v["data"]["qr"].as_str() {
                return q.to_string();
            }
            assert!(tokio::time::Instant::now() < until, "no QR code: {v}");
        }
    }
}

/// The error code of an error envelope.
pub fn code(v: &Value) -> &str {
    assert_eq!(v["success"], false, "{v}");
    v["error"]["code"].as_str().unwrap_or("")
}
