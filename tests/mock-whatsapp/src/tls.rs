//! The optional TLS front: a second loopback port that terminates TLS with a
//! self-signed certificate made at start-up and passes the plaintext to the plain port,
//! so `wss://…/ws/chat` and `https://…/admin/…` serve exactly what the plain port does.
//! Clients trust it through [`crate::MockNetwork::tls_connector`] (a rustls config
//! whose only root is this certificate); nothing else is loosened.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A running TLS front.
pub(crate) struct TlsFront {
    pub addr: SocketAddr,
    pub cert: CertificateDer<'static>,
    pub cert_pem: String,
    /// TLS handshakes completed.
    pub handshakes: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Starts a TLS front on a fresh loopback port, forwarding to `plain`.
pub(crate) async fn start(plain: SocketAddr) -> std::io::Result<TlsFront> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), plain.ip().to_string()])
            .map_err(io_err)?;
    let cert = ck.cert.der().clone();
    let cert_pem = ck.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io_err)?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .map_err(io_err)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(SocketAddr::new(plain.ip(), 0)).await?;
    let addr = listener.local_addr()?;
    let handshakes = Arc::new(AtomicU64::new(0));
    let counted = handshakes.clone();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                _ = &mut stopped => break,
                r = listener.accept() => match r {
                    Ok((tcp, _)) => tcp,
                    Err(_) => continue,
                },
            };
            let acceptor = acceptor.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                // A handshake that does not finish in 10 s is dropped.
                let accepted =
                    tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                        .await;
                let Ok(Ok(mut tls)) = accepted else {
                    return;
                };
                counted.fetch_add(1, Ordering::Relaxed);
                let Ok(mut upstream) = TcpStream::connect(plain).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    Ok(TlsFront {
        addr,
        cert,
        cert_pem,
        handshakes,
        stop: Some(stop),
    })
}

/// A client TLS config that trusts only `cert`.
pub(crate) fn client_config(
    cert: &CertificateDer<'static>,
) -> std::io::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).map_err(io_err)?;
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io_err)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// One HTTP/1.1 request over TLS to the front at `front` (the mock's own contacts
/// fetch and upload media this way once TLS is on): `Connection: close`, the answer
/// read to the end, a chunked body decoded.
pub(crate) async fn https(
    front: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    request: whatsapp_rust::http::HttpRequest,
) -> anyhow::Result<whatsapp_rust::http::HttpResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let prefix = format!("https://{front}");
    let path = request.url.strip_prefix(&prefix).unwrap_or("/");
    let body = request.body.unwrap_or_default();
    let mut head = format!(
        "{} {path} HTTP/1.1\r\nHost: {front}\r\nConnection: close\r\nContent-Length: {}\r\n",
        request.method,
        body.len()
    );
    for (k, v) in &request.headers {
        if !["host", "connection", "content-length"].contains(&k.to_ascii_lowercase().as_str()) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    let tcp = TcpStream::connect(front).await?;
    let name = rustls::pki_types::ServerName::IpAddress(front.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(&body).await?;
    tls.flush().await?;
    let mut out = Vec::new();
    // The front closes without close_notify when the plain side hangs up: what was
    // read is the whole answer.
    match tls.read_to_end(&mut out).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP header in the answer"))?;
    let header = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let status_code = header
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no HTTP status"))?;
    let mut body = out[split + 4..].to_vec();
    if header.contains("transfer-encoding: chunked") {
        body = dechunk(&body)?;
    }
    Ok(whatsapp_rust::http::HttpResponse { status_code, body })
}

/// Decodes a chunked body.
fn dechunk(mut rest: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow::anyhow!("bad chunk"))?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest
            .get(..size)
            .ok_or_else(|| anyhow::anyhow!("short chunk"))?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).unwrap_or(&[]);
    }
}
