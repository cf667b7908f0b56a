//! The benchmark suite's shared harness: the real server binary (release build, sandbox
//! feature so it may talk to the mock) started as a child process against a mock WhatsApp
//! network that lives in the benchmark's own process, and driven only over HTTP and
//! WebSockets, as an integrator would.
//!
//! Because the mock lives here, it outlives server restarts (B4) and the server's memory
//! and CPU figures are the server's alone. Everything binds to 127.0.0.1; every wait has a
//! deadline; the child is killed when its [`Server`] is dropped.
#![allow(dead_code)]

use futures_util::StreamExt;
use mock_whatsapp::MockNetwork;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The admin key the benchmark server accepts (generated per run would be nicer; the
/// server only listens on loopback and lives as long as the benchmark).
pub const ADMIN_KEY: &str = "bench-admin-key-0123456789abcdef0123456789";

/// The server binary: `$SUDEVWA_BIN`, else `target/release/sudevwa` next to this
/// example, built first with `cargo build --release --features sandbox --bin sudevwa`.
pub fn server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("SUDEVWA_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("own path");
    // target/<profile>/examples/<name> -> target/<profile>/sudevwa
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("examples live two levels below the target dir")
        .to_path_buf();
    let profile = dir
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("release");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--features", "sandbox", "--bin", "sudevwa"]);
    if profile == "release" {
        cmd.arg("--release");
    }
    let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "building the server binary failed");
    dir.join("sudevwa")
}

/// A scratch directory for one run (database, logs), removed first if it exists.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sudevwa-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Where the benchmark keeps its data: SQLite in `dir`, or the PostgreSQL database at
/// `$SUDEVWA_BENCH_POSTGRES_URL` (emptied first).
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Db {
    pub fn url(&self) -> String {
        match self {
            Db::Sqlite(dir) => format!("sqlite://{}/db.sqlite", dir.display()),
            Db::Postgres(u) => u.clone(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "SQLite",
            Db::Postgres(_) => "PostgreSQL",
        }
    }

    /// PostgreSQL from `$SUDEVWA_BENCH_POSTGRES_URL`, with its public schema dropped and
    /// made again (so each run starts empty), if the variable is set.
    pub fn postgres_from_env() -> Option<Db> {
        let url = std::env::var("SUDEVWA_BENCH_POSTGRES_URL").ok()?;
        let ok = Command::new("psql")
            .args([
                url.as_str(),
                "-q",
                "-c",
                "DROP SCHEMA public CASCADE; CREATE SCHEMA public;",
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "emptying the PostgreSQL database failed (psql on PATH?)"
        );
        Some(Db::Postgres(url))
    }
}

/// The server binary running as a child process.
pub struct Server {
    child: Child,
    pub base: String,
    pub http: reqwest::Client,
    /// When the process was spawned and when it printed its address.
    pub spawned: Instant,
    pub listening_after: Duration,
}

impl Server {
    /// Starts the server on `db` against `net`, with `extra` environment settings
    /// (they override the defaults set here). Waits until it prints its address.
    pub fn start(bin: &Path, db: &Db, net: &MockNetwork, extra: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(bin);
        // The benchmarks run a sandbox build (it must connect to the mock network),
        // which serves only in sandbox mode: on this harness's mock.
        cmd.args(["--sandbox", "--mock-url", &net.base_url()])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", "0")
            .env(
                "RUST_LOG",
                std::env::var("SUDEVWA_BENCH_LOG").unwrap_or("warn".into()),
            )
            .env("DATABASE_URL", db.url())
            .env("SUDEVWA_AUTH_ADMIN_API_KEYS", ADMIN_KEY)
            .env("SUDEVWA_ALLOWED_TARGETS", "127.0.0.0/8")
            .env("SUDEVWA_WHATSAPP_QR_TIMEOUT_SECS", "600");
        if let Db::Sqlite(dir) = db {
            cmd.current_dir(dir);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        // Settings from the benchmark's own environment win (e.g. to measure a
        // non-default limit): every SUDEVWA_* variable but the harness's own.
        for (k, v) in std::env::vars() {
            if k.starts_with("SUDEVWA_") && k != "SUDEVWA_BIN" && !k.starts_with("SUDEVWA_BENCH") {
                cmd.env(k, v);
            }
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let spawned = Instant::now();
        let mut child = cmd.spawn().expect("spawn the server binary");
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let base = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the server prints its address within 60 s");
            if let Some(a) = line.strip_prefix("listening on ") {
                break a.to_string();
            }
        };
        let listening_after = spawned.elapsed();
        Server {
            child,
            base,
            http: reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(256)
                .build()
                .expect("HTTP client"),
            spawned,
            listening_after,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A request as admin; (status, JSON body or the text as a string).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.clone_handle().call(method, path, body).await
    }

    /// Creates an instance; (id, instance token).
    pub async fn create_instance(&self) -> (String, String) {
        self.clone_handle().create_instance().await
    }

    /// Creates `n` instances and pairs them with phones `prefix` + index (13 digits),
    /// `parallel` at a time; returns their (id, token, phone) and the seconds it took
    /// until all were online.
    pub async fn pair_fleet(
        &self,
        net: &MockNetwork,
        prefix: &str,
        n: usize,
        parallel: usize,
    ) -> (Vec<(String, String, String)>, f64) {
        let t0 = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let mut tasks = Vec::new();
        for i in 0..n {
            let phone = format!("{prefix}{:0w$}", i + 1, w = 13 - prefix.len());
            let permit = sem.clone().acquire_owned().await.expect("semaphore open");
            let me = self.clone_handle();
            let net_ws = net.clone_handle();
            tasks.push(tokio::spawn(async move {
                let (id, token) = me.create_instance().await;
                me.scan(&net_ws, &id, &phone).await;
                me.wait_online(&id, Duration::from_secs(300)).await;
                drop(permit);
                (id, token, phone)
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("pairing task"));
        }
        (out, t0.elapsed().as_secs_f64())
    }

    pub fn clone_handle(&self) -> ServerHandle {
        ServerHandle {
            base: self.base.clone(),
            http: self.http.clone(),
        }
    }

    /// Polls the instance's status until it is online.
    pub async fn wait_online(&self, id: &str, within: Duration) {
        self.clone_handle().wait_online(id, within).await
    }

    /// How many instances `GET /api/instances` lists as connected.
    pub async fn online_count(&self) -> usize {
        let (s, v) = self.call("GET", "/api/instances", None).await;
        if s != 200 {
            return 0;
        }
        v["data"]
            .as_array()
            .or_else(|| v["data"]["instances"].as_array())
            .map(|a| {
                a.iter()
                    .filter(|i| i["status"] == "online" || i["isConnected"] == true)
                    .count()
            })
            .unwrap_or(0)
    }

    /// Waits until `n` instances are online; the time since `since`.
    pub async fn wait_online_count(&self, n: usize, since: Instant, within: Duration) -> f64 {
        let until = Instant::now() + within;
        loop {
            let c = self.online_count().await;
            if c >= n {
                return since.elapsed().as_secs_f64();
            }
            assert!(
                Instant::now() < until,
                "only {c} of {n} online after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sets the instance's webhook.
    pub async fn set_webhook(&self, id: &str, url: &str) {
        let (s, v) = self
            .call(
                "POST",
                &format!("/api/instances/{id}/webhook-setconfig"),
                Some(json!({"url": url, "secret": "bench-secret-0123456789"})),
            )
            .await;
        assert_eq!(s, 200, "webhook-setconfig: {v}");
    }

    /// Anonymous resident memory (heap and stacks) of the server, KiB.
    pub fn rss_anon_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "RssAnon:")
    }

    /// CPU time the server has used so far, in seconds (user + system).
    pub fn cpu_secs(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which is in parentheses and may hold spaces).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 of stat; here 0-based after ')' they are 11, 12.
        (ticks(11) + ticks(12)) / clock_ticks()
    }

    /// SIGTERM and wait for the exit (graceful shutdown); seconds it took.
    pub fn terminate(mut self) -> f64 {
        let t = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let _ = self.child.wait();
        t.elapsed().as_secs_f64()
    }

    /// SIGKILL.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cheap clone of the parts of [`Server`] that tasks need.
#[derive(Clone)]
pub struct ServerHandle {
    pub base: String,
    pub http: reqwest::Client,
}

impl ServerHandle {
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(
                method.parse().expect("a valid method"),
                format!("{}{path}", self.base),
            )
            .bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            r = r.json(&b);
        }
        match r.send().await {
            Ok(resp) => {
                let s = resp.status().as_u16();
                let t = resp.text().await.unwrap_or_default();
                (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    pub async fn create_instance(&self) -> (String, String) {
        let (s, v) = self.call("POST", "/api/login", None).await;
        assert_eq!(s, 200, "create instance: {v}");
        (
            v["data"]["instanceId"].as_str().expect("id").to_string(),
            v["data"]["token"].as_str().expect("token").to_string(),
        )
    }

    pub async fn scan(&self, net: &MockHandle, id: &str, phone: &str) {
        let until = Instant::now() + Duration::from_secs(120);
        let qr = loop {
            let (s, v) = self.call("GET", &format!("/api/qr/{id}"), None).await;
            if let Some(q) = v["data"]["qr"].as_str() {
                break q.to_string();
            }
            assert!(Instant::now() < until, "no QR for {id}: {s} {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        net.scan(&qr, phone).await;
    }

    pub async fn wait_online(&self, id: &str, within: Duration) {
        let until = Instant::now() + within;
        loop {
            let (_, v) = self.call("GET", &format!("/api/status/{id}"), None).await;
            if v["data"]["status"] == "online" && v["data"]["isConnected"] == true {
                return;
            }
            assert!(Instant::now() < until, "{id} not online: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The mock's admin API, for tasks (the mock itself is not `Clone`).
#[derive(Clone)]
pub struct MockHandle {
    base: String,
    http: reqwest::Client,
}

impl MockHandle {
    async fn scan(&self, qr: &str, phone: &str) {
        let r = self
            .http
            .post(format!("{}/admin/mock-phone/scan-qr", self.base))
            .json(&json!({"qr": qr, "phone": phone}))
            .send()
            .await
            .expect("the mock answers");
        assert!(r.status().is_success(), "mock scan: {}", r.status());
    }
}

/// A handle on the mock that tasks can hold.
pub trait MockExt {
    fn clone_handle(&self) -> MockHandle;
}

impl MockExt for MockNetwork {
    fn clone_handle(&self) -> MockHandle {
        MockHandle {
            base: self.base_url(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("HTTP client"),
        }
    }
}

fn clock_ticks() -> f64 {
    // getconf CLK_TCK; 100 on every Linux this runs on, asked anyway.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Counts `event` frames on an instance's listen socket until the returned counter is
/// dropped with the task (the task ends when the socket closes).
pub async fn count_listen(
    base: &str,
    id: &str,
    token: &str,
    event: &'static str,
) -> Arc<AtomicU64> {
    let count = Arc::new(AtomicU64::new(0));
    let ws_base = base.replacen("http://", "ws://", 1);
    let mut req = format!("{ws_base}/api/listen/{id}")
        .into_client_request()
        .expect("listen URL");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("listen socket opens");
    let c = count.clone();
    tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            if let Ok(t) = m.to_text() {
                if serde_json::from_str::<Value>(t).is_ok_and(|v| v["event"] == event) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    count
}

/// A webhook receiver on 127.0.0.1: answers every POST with the status in `status`
/// (0: accept the request and never answer — a hung endpoint), counting 2xx answers.
/// A local webhook receiver answering `status`: 0 hangs forever (a hung endpoint),
/// 1 holds every answer until the status is changed (to build a backlog).
pub struct Receiver {
    pub addr: std::net::SocketAddr,
    pub ok: Arc<AtomicU64>,
    pub status: Arc<AtomicU16>,
    /// 2xx answers per URL tag (see [`Receiver::url_for`]) and when the last was given.
    pub by_tag: Arc<std::sync::Mutex<HashMap<String, (u64, Instant)>>>,
}

impl Receiver {
    pub async fn start(status: u16) -> Receiver {
        use warp::Filter;
        let ok = Arc::new(AtomicU64::new(0));
        let st = Arc::new(AtomicU16::new(status));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let by_tag = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let (ok2, st2, tags2) = (ok.clone(), st.clone(), by_tag.clone());
        let route = warp::path::full().then(move |path: warp::path::FullPath| {
            let (ok, st, tags) = (ok2.clone(), st2.clone(), tags2.clone());
            async move {
                let mut s = st.load(Ordering::Relaxed);
                if s == 0 {
                    std::future::pending::<()>().await;
                }
                // 1: hold the answer until the status changes (a backlog builds up).
                while s == 1 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    s = st.load(Ordering::Relaxed);
                }
                if (200..300).contains(&s) {
                    ok.fetch_add(1, Ordering::Relaxed);
                    if let Some(tag) = path.as_str().strip_prefix("/hook/") {
                        let mut tags = tags.lock().unwrap_or_else(|p| p.into_inner());
                        let e = tags.entry(tag.to_string()).or_insert((0, Instant::now()));
                        *e = (e.0 + 1, Instant::now());
                    }
                }
                warp::reply::with_status(
                    "",
                    warp::http::StatusCode::from_u16(s).unwrap_or(warp::http::StatusCode::OK),
                )
            }
        });
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Receiver {
            addr,
            ok,
            status: st,
            by_tag,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// A URL whose deliveries are also counted under `tag` (in [`Receiver::by_tag`]).
    pub fn url_for(&self, tag: &str) -> String {
        format!("http://{}/hook/{tag}", self.addr)
    }

    /// Deliveries counted under `tags` so far, and the time of the last of them.
    pub fn tagged(&self, tags: &[String]) -> (u64, Option<Instant>) {
        let map = self.by_tag.lock().unwrap_or_else(|p| p.into_inner());
        let counted = tags.iter().filter_map(|t| map.get(t));
        (
            counted.clone().map(|(n, _)| n).sum(),
            counted.map(|(_, at)| *at).max(),
        )
    }
}

/// Latency samples and their summary.
#[derive(Default)]
pub struct Latencies(pub Vec<Duration>);

impl Latencies {
    pub fn pct(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[i.min(self.0.len() - 1)].as_secs_f64() * 1000.0
    }
}

/// Outcome of a load run.
pub struct LoadResult {
    pub ok: u64,
    pub errors: u64,
    /// Status codes of failures (first few).
    pub error_samples: Vec<String>,
    pub secs: f64,
    pub lat: Latencies,
}

impl LoadResult {
    pub fn summary(&mut self) -> String {
        format!(
            "{} ok, {} errors in {:.1} s = {:.0} msg/s; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.ok,
            self.errors,
            self.secs,
            self.ok as f64 / self.secs,
            self.lat.pct(0.50),
            self.lat.pct(0.99),
            self.lat.pct(1.0),
        )
    }
}

/// Sends with `conns` concurrent workers for `dur`: closed loop (each worker sends its
/// next request when the last is answered) when `rate` is `None`, else open loop at
/// `rate` requests/s in total (latency counted from the scheduled start, so a stall
/// shows in the percentiles). `req(i)` gives request i's (path, body).
pub async fn load(
    srv: &Server,
    conns: usize,
    dur: Duration,
    rate: Option<f64>,
    req: impl Fn(u64) -> (String, Value) + Send + Sync + 'static,
) -> LoadResult {
    let req = Arc::new(req);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + dur;
    let mut tasks = Vec::new();
    for _ in 0..conns.max(1) {
        let (h, req, next) = (srv.clone_handle(), req.clone(), next.clone());
        let conns = conns.max(1) as f64;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut ok, mut err, mut samples) = (0u64, 0u64, Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let scheduled = match rate {
                    Some(r) => start + Duration::from_secs_f64(i as f64 / r),
                    None => Instant::now(),
                };
                if scheduled >= end {
                    break;
                }
                if rate.is_some() {
                    tokio::time::sleep_until(scheduled.into()).await;
                }
                let (path, body) = req(i);
                let (s, v) = h.call("POST", &path, Some(body)).await;
                lat.push(scheduled.elapsed());
                if s == 200 {
                    ok += 1;
                } else {
                    err += 1;
                    if samples.len() < 3 {
                        samples.push(format!("{s} {}", v["error"]["code"]));
                    }
                }
                let _ = conns;
            }
            (ok, err, samples, lat)
        }));
    }
    let mut r = LoadResult {
        ok: 0,
        errors: 0,
        error_samples: Vec::new(),
        secs: 0.0,
        lat: Latencies::default(),
    };
    for t in tasks {
        if let Ok((ok, err, samples, lat)) = t.await {
            r.ok += ok;
            r.errors += err;
            r.error_samples.extend(samples);
            r.lat.0.extend(lat);
        }
    }
    r.secs = start.elapsed().as_secs_f64();
    r.error_samples.truncate(3);
    r
}

/// Waits until `f()` reaches `n` or `within` passes; returns the value reached.
pub async fn wait_count(f: impl Fn() -> u64, n: u64, within: Duration) -> u64 {
    let until = Instant::now() + within;
    loop {
        let v = f();
        if v >= n || Instant::now() >= until {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One line describing the machine, for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = proc_meminfo_gib();
    format!("{cores} cores ({cpu}), {mem:.0} GiB")
}

fn proc_meminfo_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0)
}

/// The documented "fast" connect gate, as server settings.
pub const FAST_GATE: [(&str, &str); 2] = [
    ("SUDEVWA_WHATSAPP_CONNECT_CONCURRENCY", "64"),
    ("SUDEVWA_WHATSAPP_CONNECTS_PER_SECOND", "100"),
];

/// Numeric command-line arguments, by position (non-numbers are skipped).
pub struct Args(Vec<f64>);

impl Args {
    pub fn from_env() -> Args {
        Args(
            std::env::args()
                .skip(1)
                .filter_map(|a| a.parse().ok())
                .collect(),
        )
    }

    /// The `i`-th number, or `default`.
    pub fn get(&self, i: usize, default: f64) -> f64 {
        self.0.get(i).copied().unwrap_or(default)
    }
}

/// `incoming_message` frames counted on each recipient's listen socket.
pub struct Arrivals(Vec<Arc<AtomicU64>>);

impl Arrivals {
    /// Listens on every `(id, token, _)` of `recipients`.
    pub async fn listen(srv: &Server, recipients: &[(String, String, String)]) -> Arrivals {
        let mut counters = Vec::new();
        for (id, token, _) in recipients {
            counters.push(count_listen(&srv.base, id, token, "incoming_message").await);
        }
        Arrivals(counters)
    }

    /// Messages arrived so far, over all recipients.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// The `i`-th request of a run: `POST /api/send/<sender>` to a recipient, senders and
/// recipients taken in rotation so every sender writes to every recipient.
pub fn sends_across(
    senders: &[(String, String, String)],
    recipients: &[(String, String, String)],
    tag: &'static str,
) -> impl Fn(u64) -> (String, Value) + Clone + Send + Sync + 'static {
    let ids: Vec<String> = senders.iter().map(|s| s.0.clone()).collect();
    let phones: Vec<String> = recipients.iter().map(|r| r.2.clone()).collect();
    move |i: u64| {
        let i = i as usize;
        let s = i % ids.len();
        let r = (i / ids.len() + s) % phones.len();
        (
            format!("/api/send/{}", ids[s]),
            json!({"to": phones[r], "message": format!("{tag} {i}")}),
        )
    }
}
