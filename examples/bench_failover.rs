//! B6 cluster failover: N paired instances (default 1,000) spread over three nodes on
//! one PostgreSQL database; one node SIGKILLed; how long until the other two hold all
//! its instances, and until every instance is online again (no QR). Then a clean
//! shutdown of a second node: how long its hand-over takes.
//!
//! The real server binary (release, sandbox build) three times, against the mock
//! network in this process; PostgreSQL from `$SUDEVWA_BENCH_POSTGRES_URL` (emptied
//! first). Lease and renew interval are the defaults unless set in the environment
//! (`SUDEVWA_CLUSTER_LEASE_TTL_SECS`, `SUDEVWA_CLUSTER_RENEW_INTERVAL_MS`); the connect
//! gate is the documented "fast" one.
//!
//! ```sh
//! SUDEVWA_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:55432/bench \
//!   cargo run --release --features sandbox --example bench_failover -- [N=1000]
//! ```
//! Loopback only; every wait has a deadline.
// Release builds nest the mock's warp filter chain deeper than the default limit of 128.
#![recursion_limit = "256"]

#[path = "benchkit/mod.rs"]
mod benchkit;

use benchkit::{Db, Server};
use mock_whatsapp::MockNetwork;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const SECRET: &str = "bench-cluster-secret-0123456789abcdef";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port()
}

fn node(bin: &std::path::Path, db: &Db, net: &MockNetwork, name: &str) -> Server {
    let port = free_port().to_string();
    let url = format!("http://127.0.0.1:{port}");
    Server::start(
        bin,
        db,
        net,
        &[
            ("PORT", port.as_str()),
            ("SUDEVWA_WHATSAPP_CONNECT_CONCURRENCY", "64"),
            ("SUDEVWA_WHATSAPP_CONNECTS_PER_SECOND", "100"),
            ("SUDEVWA_CLUSTER_NODE_ID", name),
            ("SUDEVWA_CLUSTER_INTERNAL_URL", url.as_str()),
            ("SUDEVWA_CLUSTER_SECRET", SECRET),
        ],
    )
}

/// Live leases per node, from `GET /api/cluster/nodes` on `srv`.
async fn held(srv: &Server) -> BTreeMap<String, i64> {
    let (_, v) = srv.call("GET", "/api/cluster/nodes", None).await;
    v["data"]["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|n: &Value| {
            (
                n["nodeId"].as_str().unwrap_or("?").to_string(),
                n["instances"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

/// Waits until `pred` holds on the lease counts; seconds since `since`.
async fn wait_held(
    srv: &Server,
    since: Instant,
    within: Duration,
    pred: impl Fn(&BTreeMap<String, i64>) -> bool,
) -> f64 {
    let until = Instant::now() + within;
    loop {
        let h = held(srv).await;
        if pred(&h) {
            return since.elapsed().as_secs_f64();
        }
        assert!(Instant::now() < until, "leases never settled: {h:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000usize);
    let db = Db::postgres_from_env()
        .expect("set SUDEVWA_BENCH_POSTGRES_URL: a cluster needs PostgreSQL");
    let bin = benchkit::server_binary();
    println!("machine: {}", benchkit::machine());
    let net = MockNetwork::start().await.expect("mock starts");
    let a = node(&bin, &db, &net, "bench-a");
    let b = node(&bin, &db, &net, "bench-b");
    let c = node(&bin, &db, &net, "bench-c");
    let three = Instant::now();
    wait_held(&a, three, Duration::from_secs(60), |h| h.len() == 3).await;

    // Pair through node A; placement spreads them over the three.
    let (fleet, secs) = a.pair_fleet(&net, "62819", n, 64).await;
    assert_eq!(fleet.len(), n);
    let spread = held(&a).await;
    println!(
        "pairing through one node: {n} online in {secs:.1} s ({:.1}/s); leases per node {spread:?}",
        n as f64 / secs
    );
    let on_c = spread.get("bench-c").copied().unwrap_or(0);

    // SIGKILL node C.
    let t0 = Instant::now();
    c.kill();
    let taken = wait_held(&a, t0, Duration::from_secs(300), |h| {
        h.get("bench-a").copied().unwrap_or(0) + h.get("bench-b").copied().unwrap_or(0) == n as i64
    })
    .await;
    let online = a.wait_online_count(n, t0, Duration::from_secs(600)).await;
    println!(
        "B6 failover (SIGKILL of the node holding {on_c}): all leases on the other two after {taken:.1} s, all {n} online again after {online:.1} s; leases per node {:?}",
        held(&a).await
    );

    // Clean shutdown of node B: hand-over to A.
    let on_b = held(&a).await.get("bench-b").copied().unwrap_or(0);
    let t1 = Instant::now();
    let stop = b.terminate();
    let taken = wait_held(&a, t1, Duration::from_secs(300), |h| {
        h.get("bench-a").copied().unwrap_or(0) == n as i64
    })
    .await;
    let online = a.wait_online_count(n, t1, Duration::from_secs(600)).await;
    println!(
        "B6 hand-over (SIGTERM of the node holding {on_b}): the node stopped in {stop:.1} s, all leases on the last node after {taken:.1} s, all {n} online after {online:.1} s"
    );
    a.terminate();
    net.shutdown();
}
