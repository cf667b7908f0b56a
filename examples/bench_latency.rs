//! Per-instance throughput behind a slow network: one sender instance, the mock
//! delaying every frame it writes by `delay` ms (latency, not a throughput cap), sends
//! round-robin to `recipients` distinct paired instances whose `/api/listen` sockets
//! count arrivals. Shows that an instance runs its sends side by side instead of one
//! round trip at a time (goal: >= 80 msg/s with 100 ms per frame).
//!
//! ```sh
//! cargo run --release --features sandbox --example bench_latency -- [secs=10] [delay_ms=100] [conns=64] [recipients=32]
//! ```
//! Loopback only; bounded by its duration plus a drain deadline.
// Release builds nest the mock's warp filter chain deeper than the default limit of 128.
#![recursion_limit = "256"]

#[path = "benchkit/mod.rs"]
mod benchkit;

use benchkit::{load, sends_across, wait_count, Args, Arrivals, Db, Server, FAST_GATE};
use mock_whatsapp::MockNetwork;
use std::time::Duration;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::from_env();
    let secs = args.get(0, 10.0) as u64;
    let delay = args.get(1, 100.0) as u64;
    let conns = args.get(2, 64.0) as usize;
    let n = args.get(3, 32.0) as usize;
    let bin = benchkit::server_binary();
    println!("machine: {}", benchkit::machine());
    let dir = benchkit::scratch("latency");
    let net = MockNetwork::start().await.expect("mock starts");
    let srv = Server::start(
        &bin,
        &Db::Sqlite(dir.clone()),
        &net,
        &[
            ("SUDEVWA_ENABLE_WEBHOOK", "false"),
            FAST_GATE[0],
            FAST_GATE[1],
        ],
    );
    let (senders, _) = srv.pair_fleet(&net, "62813", 1, 1).await;
    let (recipients, _) = srv.pair_fleet(&net, "62814", n, 8).await;
    let arrivals = Arrivals::listen(&srv, &recipients).await;
    let arrived = || arrivals.total();
    let make = sends_across(&senders, &recipients, "slow");
    net.delay_frames(delay);
    // Warm-up at the same delay: number checks and encryption sessions for every
    // recipient exist before the timed run.
    let mut w = load(&srv, n, Duration::from_secs(3), None, make.clone()).await;
    println!("warm-up: {}", w.summary());
    let base = arrived();
    let mut r = load(&srv, conns, Duration::from_secs(secs), None, make).await;
    let got = wait_count(arrived, base + r.ok, Duration::from_secs(60)).await;
    println!(
        "latency {delay} ms per frame, one instance, {n} recipients, closed loop {conns} connections: {} | arrived {}/{}{}",
        r.summary(),
        got - base,
        r.ok,
        if r.error_samples.is_empty() {
            String::new()
        } else {
            format!(" | errors e.g. {:?}", r.error_samples)
        }
    );
    net.delay_frames(0);
    srv.terminate();
    net.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}
