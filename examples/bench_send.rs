//! B2 — send throughput and latency through `POST /api/send/:id`.
//!
//! The real server binary (release) against the mock network in this process: 4 sender
//! and 4 recipient instances, each recipient's `/api/listen` socket counting arrivals.
//! For webhooks off and on (every instance's webhook pointing at a fast local receiver):
//! a closed-loop run (8 connections, as fast as answers come) and an open-loop run at a
//! fixed offered rate (latency counted from the scheduled send time). SQLite always;
//! PostgreSQL too when `SUDEVWA_BENCH_POSTGRES_URL` is set (its public schema is emptied).
//!
//! ```sh
//! cargo run --release --features sandbox --example bench_send -- [secs=10] [rate=500] [conns=8]
//! ```
//! Loopback only; every run is bounded by its duration plus a drain deadline.
// Release builds nest the mock's warp filter chain deeper than the default limit of 128.
#![recursion_limit = "256"]

#[path = "benchkit/mod.rs"]
mod benchkit;

use benchkit::{load, sends_across, wait_count, Args, Arrivals, Db, Receiver, Server, FAST_GATE};
use mock_whatsapp::MockNetwork;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Sender and recipient instances each (4, as the issue's figures; `SUDEVWA_BENCH_SENDERS`
/// changes it for diagnosis).
fn fleet_size() -> usize {
    std::env::var("SUDEVWA_BENCH_SENDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(4)
}

async fn run(bin: &std::path::Path, db: Db, webhooks: bool, secs: u64, rate: f64, conns: usize) {
    let net = MockNetwork::start().await.expect("mock starts");
    let srv = Server::start(
        bin,
        &db,
        &net,
        &[
            (
                "SUDEVWA_ENABLE_WEBHOOK",
                if webhooks { "true" } else { "false" },
            ),
            FAST_GATE[0],
            FAST_GATE[1],
        ],
    );
    let (senders, _) = srv.pair_fleet(&net, "62811", fleet_size(), 8).await;
    let (recipients, _) = srv.pair_fleet(&net, "62812", fleet_size(), 8).await;
    let receiver = Receiver::start(200).await;
    if webhooks {
        for (id, _, _) in senders.iter().chain(recipients.iter()) {
            srv.set_webhook(id, &receiver.url()).await;
        }
    }
    let arrivals = Arrivals::listen(&srv, &recipients).await;
    let arrived = || arrivals.total();
    let make = sends_across(&senders, &recipients, "bench");
    // Warm-up: one send per pair, so number checks and sessions exist before timing.
    let _ = load(&srv, 4, Duration::from_secs(2), Some(8.0), make.clone()).await;
    let label = format!(
        "{}, webhooks {}",
        db.name(),
        if webhooks { "on" } else { "off" }
    );
    for offered in [None, Some(rate)] {
        let base_arrivals = arrived();
        let base_hooks = receiver.ok.load(Ordering::Relaxed);
        let base_cpu = srv.cpu_secs();
        let mut r = load(
            &srv,
            conns,
            Duration::from_secs(secs),
            offered,
            make.clone(),
        )
        .await;
        // The server's CPU time per accepted send while the load ran (arrivals and
        // deliveries still under way when it ends are not in it): steadier from run to
        // run than the rate on a machine whose speed drifts.
        let cpu_ms = (srv.cpu_secs() - base_cpu) * 1000.0 / r.ok.max(1) as f64;
        let got = wait_count(arrived, base_arrivals + r.ok, Duration::from_secs(60)).await;
        let hooks = receiver.ok.load(Ordering::Relaxed) - base_hooks;
        let mode = match offered {
            None => format!("closed loop, {conns} connections"),
            Some(x) => format!("open loop at {x:.0} msg/s offered, {conns} connections"),
        };
        println!(
            "B2 {label}, {mode}: {} | server CPU {cpu_ms:.2} ms/send | arrived {}/{} | webhook deliveries {hooks}{}",
            r.summary(),
            got - base_arrivals,
            r.ok,
            if r.error_samples.is_empty() {
                String::new()
            } else {
                format!(" | errors e.g. {:?}", r.error_samples)
            }
        );
    }
    srv.terminate();
    net.shutdown();
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::from_env();
    let secs = args.get(0, 10.0) as u64;
    let rate = args.get(1, 500.0);
    let conns = args.get(2, 8.0) as usize;
    let bin = benchkit::server_binary();
    println!("machine: {}", benchkit::machine());
    // SUDEVWA_BENCH_WEBHOOKS=on|off runs one half only (profiling); both by default.
    let only = std::env::var("SUDEVWA_BENCH_WEBHOOKS").ok();
    for webhooks in [false, true] {
        match only.as_deref() {
            Some("on") if !webhooks => continue,
            Some("off") if webhooks => continue,
            _ => {}
        }
        let dir = benchkit::scratch(&format!("send-{webhooks}"));
        run(&bin, Db::Sqlite(dir.clone()), webhooks, secs, rate, conns).await;
        let _ = std::fs::remove_dir_all(dir);
        if let Some(pg) = Db::postgres_from_env() {
            run(&bin, pg, webhooks, secs, rate, conns).await;
        }
    }
}
