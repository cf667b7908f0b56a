//! `cargo run -p mock-whatsapp [-- --port N]`: runs the mock network alone on loopback
//! and prints its WebSocket URL and admin URL; Ctrl-C stops it.

#[tokio::main]
async fn main() {
    let mut port = 0u16;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|p| p.parse().ok())) {
            ("--port", Some(p)) => port = p,
            _ => {
                eprintln!("usage: mock-whatsapp [--port N]");
                std::process::exit(2);
            }
        }
    }
    let net = match mock_whatsapp::MockNetwork::start_on(std::net::SocketAddr::from((
        [127, 0, 0, 1],
        port,
    )))
    .await
    {
        Ok(n) => n,
        Err(e) => {
            eprintln!("mock-whatsapp: cannot listen: {e}");
            std::process::exit(1);
        }
    };
    println!("mock WhatsApp network");
    println!("  socket: {}", net.ws_url());
    println!("  admin:  {}/admin/accounts", net.base_url());
    let _ = tokio::signal::ctrl_c().await;
    net.shutdown();
}
