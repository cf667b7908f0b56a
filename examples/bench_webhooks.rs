//! B3 — webhook backlog drain rate, and what one hung endpoint does to the others.
//!
//! The real server binary against the mock network in this process: 4 sender and 4
//! recipient instances, every webhook pointing at a fast local receiver that first
//! *holds* its answers, so sends through the API build a backlog in the outbox. Then
//! the receiver answers at once and the drain rate (deliveries per second until the
//! backlog is gone) is measured. Second round: one sender's webhook points at an
//! endpoint that never answers; the other seven instances' drain rate is measured
//! again and compared.
//!
//! ```sh
//! cargo run --release --features sandbox --example bench_webhooks -- [secs=8] [conns=8]
//! ```
//! Loopback only; every phase is bounded.
// Release builds nest the mock's warp filter chain deeper than the default limit of 128.
#![recursion_limit = "256"]

#[path = "benchkit/mod.rs"]
mod benchkit;

use benchkit::{load, sends_across, wait_count, Args, Arrivals, Db, Receiver, Server, FAST_GATE};
use mock_whatsapp::MockNetwork;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const SENDERS: usize = 4;

/// Releases the held receiver and measures deliveries per second until no delivery
/// has arrived for 1.5 s (bounded by 120 s): in all, and of the instances in `steady`
/// alone (their deliveries over the time to their last one).
async fn drain(fast: &Receiver, steady: &[String]) -> (u64, f64, f64) {
    let base = fast.ok.load(Ordering::Relaxed);
    let steady_base = fast.tagged(steady).0;
    let t0 = Instant::now();
    fast.status.store(200, Ordering::Relaxed);
    let (mut last, mut last_at) = (base, t0);
    while last_at.elapsed() < Duration::from_millis(1500) && t0.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = fast.ok.load(Ordering::Relaxed);
        if now != last {
            (last, last_at) = (now, Instant::now());
        }
    }
    let n = last - base;
    let (steady_n, steady_last) = fast.tagged(steady);
    let steady_secs = steady_last.map_or(0.0, |at| at.saturating_duration_since(t0).as_secs_f64());
    (
        n,
        n as f64 / last_at.duration_since(t0).as_secs_f64().max(0.001),
        (steady_n - steady_base) as f64 / steady_secs.max(0.001),
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::from_env();
    let secs = args.get(0, 8.0) as u64;
    let conns = args.get(1, 8.0) as usize;
    let bin = benchkit::server_binary();
    println!("machine: {}", benchkit::machine());
    let dir = benchkit::scratch("webhooks");
    let net = MockNetwork::start().await.expect("mock starts");
    let srv = Server::start(
        &bin,
        &Db::Sqlite(dir.clone()),
        &net,
        &[
            ("SUDEVWA_ENABLE_WEBHOOK", "true"),
            // Held answers must not time out while the backlog builds.
            ("SUDEVWA_WEBHOOK_TIMEOUT_SECS", "120"),
            FAST_GATE[0],
            FAST_GATE[1],
        ],
    );
    let (senders, _) = srv.pair_fleet(&net, "62815", SENDERS, 8).await;
    let (recipients, _) = srv.pair_fleet(&net, "62816", SENDERS, 8).await;
    let fast = Receiver::start(1).await;
    let hung = Receiver::start(0).await;
    for (id, _, _) in senders.iter().chain(recipients.iter()) {
        srv.set_webhook(id, &fast.url_for(id)).await;
    }
    // The seven instances whose endpoint stays healthy in both rounds.
    let steady: Vec<String> = senders[1..]
        .iter()
        .chain(recipients.iter())
        .map(|(id, _, _)| id.clone())
        .collect();
    let arrivals = Arrivals::listen(&srv, &recipients).await;
    let arrived = || arrivals.total();
    let make = sends_across(&senders, &recipients, "hook");
    let mut rates = Vec::new();
    for round in ["all endpoints healthy", "one sender's endpoint hung"] {
        if rates.len() == 1 {
            fast.status.store(1, Ordering::Relaxed);
            srv.set_webhook(&senders[0].0, &hung.url()).await;
        }
        let base = arrived();
        let mut r = load(&srv, conns, Duration::from_secs(secs), None, make.clone()).await;
        wait_count(arrived, base + r.ok, Duration::from_secs(60)).await;
        // Let the last events (statuses) reach the outbox.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (n, rate, steady_rate) = drain(&fast, &steady).await;
        println!(
            "B3 {round}: backlog built by {} | drained {n} deliveries at {rate:.0} deliveries/s ({steady_rate:.0}/s of the seven always-healthy instances)",
            r.summary()
        );
        rates.push((rate, steady_rate));
    }
    println!(
        "B3 healthy endpoints' drain rate beside a hung one: {:.1} % of the all-healthy rate; the seven always-healthy instances: {:.1} % of their own rate in the all-healthy round",
        100.0 * rates[1].0 / rates[0].0.max(1.0),
        100.0 * rates[1].1 / rates[0].1.max(1.0)
    );
    srv.terminate();
    net.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}
