//! `cargo run -p mock-whatsapp --features insecure-clients [-- --port N] [--tls] [--lid-migrated]`: runs the mock network alone on
//! loopback and prints its WebSocket URL and admin URL (with `--tls` also the `wss://`
//! and `https://` URLs and the self-signed certificate to trust); Ctrl-C stops it.

#[tokio::main]
async fn main() {
    let mut port = 0u16;
    let mut tls = false;
    let mut lid = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tls" => tls = true,
            "--lid-migrated" => lid = true,
            "--port" => match args.next().and_then(|p| p.parse().ok()) {
                Some(p) => port = p,
                None => usage(),
            },
            _ => usage(),
        }
    }
    let mut net = match mock_whatsapp::MockNetwork::start_on(std::net::SocketAddr::from((
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
    net.lid_migration(lid);
    println!("mock WhatsApp network");
    println!("  socket: {}", net.ws_url());
    println!("  admin:  {}/admin/accounts", net.base_url());
    if tls {
        if let Err(e) = net.enable_tls().await {
            eprintln!("mock-whatsapp: cannot start TLS: {e}");
            std::process::exit(1);
        }
        println!("  socket (TLS): {}", net.wss_url().unwrap_or_default());
        println!(
            "  admin (TLS):  {}/admin/accounts",
            net.https_base_url().unwrap_or_default()
        );
        println!("  certificate to trust:");
        print!("{}", net.tls_cert_pem().unwrap_or_default());
    }
    let _ = tokio::signal::ctrl_c().await;
    net.shutdown();
}

fn usage() -> ! {
    eprintln!("usage: mock-whatsapp [--port N] [--tls] [--lid-migrated]");
    std::process::exit(2);
}
