//! Pairing benchmark (not a test): how long a fresh whatsapp-rust client takes from the
//! phone's scan to `Connected`, and from its start to `Connected`, against the mock.
//!
//! `cargo run --release -p mock-whatsapp --example pairing_bench -- [N]` (default 5).

use mock_whatsapp::contact::Contact;
use mock_whatsapp::MockNetwork;
use std::time::{Duration, Instant};
use whatsapp_rust::wacore::types::events::Event;

#[tokio::main]
async fn main() -> Result<(), String> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let net = MockNetwork::start().await.map_err(|e| e.to_string())?;
    let mut scan_to_connected = Vec::new();
    let mut start_to_connected = Vec::new();
    for i in 0..n {
        let phone = format!("6289900000{i:03}");
        let started = Instant::now();
        let mut c = Contact::start(&net, &phone, "bench", None).await?;
        let qr = c
            .wait("a QR code", |e| match e {
                Event::PairingQrCode(q) => Some(q.code.clone()),
                _ => None,
            })
            .await?;
        let scanned = Instant::now();
        net.scan_qr(&qr, Some(&phone)).map_err(|e| e.to_string())?;
        c.connected().await?;
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!("{i}: scan -> Connected {:?}", scanned.elapsed());
        }
        scan_to_connected.push(scanned.elapsed());
        start_to_connected.push(started.elapsed());
    }
    let report = |name: &str, v: &mut Vec<Duration>| {
        v.sort();
        let mean = v.iter().sum::<Duration>() / v.len() as u32;
        println!(
            "{name}: n={} min={:.1}ms median={:.1}ms mean={:.1}ms max={:.1}ms",
            v.len(),
            v[0].as_secs_f64() * 1e3,
            v[v.len() / 2].as_secs_f64() * 1e3,
            mean.as_secs_f64() * 1e3,
            v[v.len() - 1].as_secs_f64() * 1e3
        );
    };
    report("scan -> Connected", &mut scan_to_connected);
    report("start -> Connected", &mut start_to_connected);
    Ok(())
}
