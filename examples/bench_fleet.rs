//! B1 idle cost per instance, B4 restart of a paired fleet, B5 full socket drop — at
//! fleet size (default 1,000 instances).
//!
//! The real server binary (release, SQLite in a temp dir) against the mock network in
//! this process, which outlives the server, so a restart reconnects the stored sessions
//! without a QR (B4). Steps:
//! 1. start the server with the connect gate at the "fast" setting, pair N instances
//!    through the API (QR from `GET /api/qr/:id`, scanned by the mock phone), report the
//!    pairing rate;
//! 2. B1: let it settle, read the server's RssAnon and its CPU time over an idle window,
//!    per instance;
//! 3. B5: drop every socket at the mock; time until all N are online again (connects/s),
//!    and whether any instance asked for a QR (none may);
//! 4. B4: SIGTERM, start again on the same database (gate "fast", then default when
//!    `--default-gate` is given): time until the API answers, until all N are online.
//!
//! ```sh
//! cargo run --release --features sandbox --example bench_fleet -- [N=1000] [idle_secs=30] [--default-gate]
//! ```
//! Loopback only; every wait has a deadline.
// Release builds nest the mock's warp filter chain deeper than the default limit of 128.
#![recursion_limit = "256"]

#[path = "benchkit/mod.rs"]
mod benchkit;

use benchkit::{Db, Server};
use mock_whatsapp::MockNetwork;
use std::time::{Duration, Instant};

/// The documented "fast" connect gate (config.toml, README).
const FAST: &[(&str, &str)] = &[
    ("SUDEVWA_WHATSAPP_CONNECT_CONCURRENCY", "64"),
    ("SUDEVWA_WHATSAPP_CONNECTS_PER_SECOND", "100"),
];

/// How many instances are not `online`/`connected` and which statuses they have.
async fn not_online(srv: &Server) -> (usize, Vec<String>) {
    let (_, v) = srv.call("GET", "/api/instances?all=true", None).await;
    let items = v["data"]["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut statuses: Vec<String> = items
        .iter()
        .filter(|i| i["status"] != "online")
        .map(|i| i["status"].as_str().unwrap_or("?").to_string())
        .collect();
    let n = statuses.len();
    statuses.sort();
    statuses.dedup();
    (n, statuses)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nums: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let n = nums.first().copied().unwrap_or(1000) as usize;
    let idle = nums.get(1).copied().unwrap_or(30);
    let default_gate = args.iter().any(|a| a == "--default-gate");
    let bin = benchkit::server_binary();
    println!("machine: {}", benchkit::machine());
    let dir = benchkit::scratch("fleet");
    let db = Db::Sqlite(dir.clone());
    let net = MockNetwork::start().await.expect("mock starts");

    // 1. Pair the fleet.
    let srv = Server::start(&bin, &db, &net, FAST);
    let rss0 = srv.rss_anon_kib();
    let (fleet, secs) = srv.pair_fleet(&net, "62813", n, 64).await;
    println!(
        "pairing (fast gate): {n} instances online in {secs:.1} s = {:.1} instances/s",
        n as f64 / secs
    );
    assert_eq!(fleet.len(), n);

    // 2. B1: idle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = srv.rss_anon_kib();
    let cpu0 = srv.cpu_secs();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let cpu = srv.cpu_secs() - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let online = srv.online_count().await;
    println!(
        "B1 idle, {online} online: server RssAnon {rss} KiB ({rss0} KiB before pairing) = {:.0} KiB per instance ({:.0} KiB above the empty server); CPU {cpu:.2} s over {wall:.0} s = {:.4} millicores per instance",
        rss as f64 / n as f64,
        (rss.saturating_sub(rss0)) as f64 / n as f64,
        cpu / wall * 1000.0 / n as f64
    );

    // 3. B5: every socket dropped at once.
    let t = Instant::now();
    let dropped = net.drop_connections(None);
    // Wait until the server has noticed (not everyone online), then until all are back.
    let until = Instant::now() + Duration::from_secs(30);
    while srv.online_count().await >= n && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = srv.wait_online_count(n, t, Duration::from_secs(300)).await;
    let (stuck, statuses) = not_online(&srv).await;
    println!(
        "B5 socket drop: {dropped} sockets dropped; all {n} online again after {back:.1} s = {:.0} connects/s; not online afterwards: {stuck} {statuses:?}",
        n as f64 / back
    );

    // 4. B4: restart.
    let stop_secs = srv.terminate();
    let gates: Vec<(&str, &[(&str, &str)])> = if default_gate {
        vec![("fast", FAST), ("default", &[])]
    } else {
        vec![("fast", FAST)]
    };
    for (name, gate) in gates {
        let srv = Server::start(&bin, &db, &net, gate);
        let listening = srv.listening_after.as_secs_f64();
        // The API answers (health, then an authenticated route) while restore runs.
        let until = Instant::now() + Duration::from_secs(30);
        let api = loop {
            let (s, _) = srv.call("GET", "/api/instances", None).await;
            if s == 200 {
                break srv.spawned.elapsed().as_secs_f64();
            }
            assert!(Instant::now() < until, "API does not answer after restart");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let all = srv
            .wait_online_count(n, srv.spawned, Duration::from_secs(900))
            .await;
        let (stuck, statuses) = not_online(&srv).await;
        println!(
            "B4 restart ({name} gate; previous stop took {stop_secs:.1} s): listening after {listening:.2} s, API answered after {api:.2} s, all {n} online after {all:.1} s; not online: {stuck} {statuses:?}",
        );
        srv.terminate();
    }
    net.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}
