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
