//! SSRF corpus: user-given URLs that must be refused without any connection to the
//! target, and the limits (size, time, redirects) on allowed ones.
//!
//! Targets are counting TCP listeners on loopback addresses; "private" targets are
//! loopback addresses outside the allow-list (127.0.0.2 while only 127.0.0.1/32 is
//! allowed), so the corpus never sends a packet off this machine even if a check failed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use sudevwa::config::Cidr;
use sudevwa::net::fetch::{fetch, FetchError, FetchPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A loopback HTTP server that counts connections and answers with `respond`.
struct Target {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

#[derive(Clone)]
enum Respond {
    Ok(Vec<u8>),
    Redirect(String),
    /// Sends headers, then one byte every 200 ms, forever.
    Trickle,
    /// Claims a small Content-Length but keeps sending.
    Lying(usize),
}

async fn target(ip: &str, respond: Respond) -> Target {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let respond = respond.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                match respond {
                    Respond::Ok(body) => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = sock.write_all(head.as_bytes()).await;
                        let _ = sock.write_all(&body).await;
                    }
                    Respond::Redirect(to) => {
                        let head = format!(
                            "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                        let _ = sock.write_all(head.as_bytes()).await;
                    }
                    Respond::Trickle => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n")
                            .await;
                        for _ in 0..100 {
                            if sock.write_all(b"x").await.is_err() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    Respond::Lying(n) => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
                            .await;
                        let _ = sock.write_all(&vec![b'y'; n]).await;
                    }
                }
            });
        }
    });
    Target { addr, accepted }
}

fn policy(allowed: &[&str]) -> FetchPolicy {
    FetchPolicy {
        allowed_targets: allowed.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
        allowed_ports: Vec::new(),
        max_bytes: 64 * 1024,
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        max_redirects: 3,
        gate: None,
    }
}

#[tokio::test]
async fn non_public_targets_are_refused_without_connecting() {
    let t = target("127.0.0.1", Respond::Ok(b"secret".to_vec())).await;
    let t6 = match TcpListener::bind("[::1]:0").await {
        Ok(l) => {
            drop(l);
            Some(target("::1", Respond::Ok(b"secret".to_vec())).await)
        }
        Err(_) => None, // no IPv6 loopback on this machine
    };
    let p = t.addr.port();
    let mut corpus = vec![
        format!("http://127.0.0.1:{p}/"),
        format!("http://localhost:{p}/"),
        format!("http://2130706433:{p}/"),         // decimal
        format!("http://0177.0.0.1:{p}/"),         // octal
        format!("http://0x7f.0.0.1:{p}/"),         // hex
        format!("http://0x7f000001:{p}/"),         // hex, one number
        format!("http://127.1:{p}/"),              // short form
        format!("http://[::ffff:127.0.0.1]:{p}/"), // IPv4-mapped IPv6
        format!("http://[::ffff:7f00:1]:{p}/"),
        format!("http://[::ffff:0:7f00:1]:{p}/"), // IPv4-translated (SIIT)
        format!("http://[::ffff:0:127.0.0.1]:{p}/"),
        format!("https://127.0.0.1:{p}/"),
        format!("http://user:pw@127.0.0.1:{p}/"),
    ];
    if let Some(t6) = &t6 {
        corpus.push(format!("http://[::1]:{}/", t6.addr.port()));
    }
    for url in &corpus {
        let r = fetch(url, &policy(&[])).await;
        assert_eq!(r.unwrap_err(), FetchError::TargetNotAllowed, "{url}");
    }
    // Targets that are not loopback are refused by the check alone (no socket opened).
    for url in [
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://172.16.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[::]/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[2002:a9fe:a9fe::]/",
    ] {
        assert_eq!(
            fetch(url, &policy(&[])).await.unwrap_err(),
            FetchError::TargetNotAllowed,
            "{url}"
        );
    }
    for url in [
        "file:///etc/passwd",
        "ftp://127.0.0.1/",
        "gopher://127.0.0.1:70/",
        "data:text/plain,hi",
    ] {
        assert_eq!(
            fetch(url, &policy(&[])).await.unwrap_err(),
            FetchError::SchemeNotAllowed,
            "{url}"
        );
    }
    assert_eq!(
        fetch("not a url", &policy(&[])).await.unwrap_err(),
        FetchError::InvalidUrl
    );
    assert_eq!(
        t.accepted.load(Ordering::SeqCst),
        0,
        "no connection reached the target"
    );
    if let Some(t6) = t6 {
        assert_eq!(t6.accepted.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test]
async fn allow_listed_target_is_fetched() {
    let t = target("127.0.0.1", Respond::Ok(b"\x89PNG-body".to_vec())).await;
    let got = fetch(
        &format!("http://127.0.0.1:{}/img.png", t.addr.port()),
        &policy(&["127.0.0.1/32"]),
    )
    .await
    .expect("allowed");
    assert_eq!(got.bytes, b"\x89PNG-body");
    assert_eq!(got.content_type.as_deref(), Some("image/png"));
    assert_eq!(t.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn redirect_to_a_refused_address_is_not_followed() {
    // 127.0.0.2 stands in for a private address: loopback, but outside the allow-list.
    let private = target("127.0.0.2", Respond::Ok(b"internal".to_vec())).await;
    let cases = [
        format!("http://127.0.0.2:{}/", private.addr.port()),
        format!("http://2130706434:{}/", private.addr.port()),
        "http://169.254.169.254/".to_string(),
        "file:///etc/passwd".to_string(),
    ];
    for to in cases {
        let hop = target("127.0.0.1", Respond::Redirect(to.clone())).await;
        let r = fetch(
            &format!("http://127.0.0.1:{}/", hop.addr.port()),
            &policy(&["127.0.0.1/32"]),
        )
        .await;
        assert!(
            matches!(
                r,
                Err(FetchError::TargetNotAllowed) | Err(FetchError::SchemeNotAllowed)
            ),
            "{to}: {r:?}"
        );
        assert_eq!(hop.accepted.load(Ordering::SeqCst), 1);
    }
    assert_eq!(
        private.accepted.load(Ordering::SeqCst),
        0,
        "the private target was never contacted"
    );
}

#[tokio::test]
async fn redirect_chains_are_limited() {
    let end = target("127.0.0.1", Respond::Ok(b"done".to_vec())).await;
    let mut next = format!("http://127.0.0.1:{}/", end.addr.port());
    let mut hops = Vec::new();
    for _ in 0..4 {
        let h = target("127.0.0.1", Respond::Redirect(next.clone())).await;
        next = format!("http://127.0.0.1:{}/", h.addr.port());
        hops.push(h);
    }
    // 4 redirects > limit 3.
    assert_eq!(
        fetch(&next, &policy(&["127.0.0.1/32"])).await.unwrap_err(),
        FetchError::TooManyRedirects
    );
    assert_eq!(end.accepted.load(Ordering::SeqCst), 0);
    // Starting one hop later, 3 redirects are fine.
    let start = format!("http://127.0.0.1:{}/", hops[2].addr.port());
    assert_eq!(
        fetch(&start, &policy(&["127.0.0.1/32"]))
            .await
            .unwrap()
            .bytes,
        b"done"
    );
}

#[tokio::test]
async fn oversize_and_slow_bodies_are_cut_off() {
    let big = target("127.0.0.1", Respond::Ok(vec![0u8; 200 * 1024])).await;
    let r = fetch(
        &format!("http://127.0.0.1:{}/", big.addr.port()),
        &policy(&["127.0.0.1/32"]),
    )
    .await;
    assert_eq!(r.unwrap_err(), FetchError::TooLarge(64 * 1024));
    assert_eq!(FetchError::TooLarge(1).api_code(), "FILE_TOO_LARGE");

    // No Content-Length: the cap is enforced while streaming.
    let lying = target("127.0.0.1", Respond::Lying(200 * 1024)).await;
    let r = fetch(
        &format!("http://127.0.0.1:{}/", lying.addr.port()),
        &policy(&["127.0.0.1/32"]),
    )
    .await;
    assert_eq!(r.unwrap_err(), FetchError::TooLarge(64 * 1024));

    let slow = target("127.0.0.1", Respond::Trickle).await;
    let r = fetch(
        &format!("http://127.0.0.1:{}/", slow.addr.port()),
        &policy(&["127.0.0.1/32"]),
    )
    .await;
    assert_eq!(r.unwrap_err(), FetchError::Timeout);
    assert_eq!(FetchError::Timeout.api_code(), "DOWNLOAD_FAILED");
}

/// A keep-alive HTTP/1.1 receiver: answers every request on a connection with 204 and
/// counts connections and requests.
async fn keepalive_receiver() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let reqs = Arc::new(AtomicUsize::new(0));
    let (c, r) = (conns.clone(), reqs.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: headers, then Content-Length bytes of body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    r.fetch_add(1, Ordering::SeqCst);
                    if sock
                        .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns, reqs)
}

#[tokio::test]
async fn deliveries_reuse_one_pooled_client_and_connection() {
    let (addr, conns, reqs) = keepalive_receiver().await;
    let url = format!("http://127.0.0.1:{}/hook", addr.port());
    let p = policy(&["127.0.0.1/32"]);
    let first = sudevwa::net::fetch::post(&url, b"{}".to_vec(), &[], &p)
        .await
        .expect("first delivery");
    assert_eq!(first, 204);
    let built = sudevwa::net::fetch::clients_built();
    for i in 0..20 {
        let body = format!("{{\"n\":{i}}}").into_bytes();
        let status = sudevwa::net::fetch::post(&url, body, &[("x-n", i.to_string())], &p)
            .await
            .expect("delivery");
        assert_eq!(status, 204);
    }
    assert_eq!(reqs.load(Ordering::SeqCst), 21);
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "21 sequential deliveries to one receiver share one kept-alive connection"
    );
    // Other tests in this binary run concurrently and may build the client for their
    // own policies (at most one each); 20 deliveries building 20 clients cannot pass.
    assert!(
        sudevwa::net::fetch::clients_built() - built <= 3,
        "deliveries do not build clients"
    );
}

/// `webhook.allowed_ports`: a URL on any other port is refused before connecting,
/// with the same words as any refused target; redirects are checked again.
#[tokio::test]
async fn only_allowed_ports_are_reached() {
    let t = target("127.0.0.1", Respond::Ok(b"fine".to_vec())).await;
    let port = t.addr.port();
    let mut p = policy(&["127.0.0.0/8"]);
    p.allowed_ports = vec![port];
    let ok = fetch(&format!("http://127.0.0.1:{port}/"), &p)
        .await
        .unwrap();
    assert_eq!(ok.bytes, b"fine");
    p.allowed_ports = vec![port.wrapping_add(1).max(1)];
    let before = t.accepted.load(std::sync::atomic::Ordering::SeqCst);
    let err = fetch(&format!("http://127.0.0.1:{port}/"), &p)
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::TargetNotAllowed);
    assert_eq!(
        t.accepted.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "no connection was made"
    );
    // A refused target and a name that does not resolve read the same.
    assert_eq!(
        FetchError::TargetNotAllowed.to_string(),
        FetchError::Dns.to_string()
    );
}

/// The memory gate (the server's media cap) is asked for an announced length once,
/// before the body is read, and a refusal ends the fetch as `Busy`.
#[tokio::test]
async fn the_memory_gate_is_asked_before_the_body() {
    let body = vec![5u8; 100_000];
    let t = target("127.0.0.1", Respond::Ok(body.clone())).await;
    let url = format!("http://127.0.0.1:{}/", t.addr.port());
    let asked: Arc<std::sync::Mutex<Vec<u64>>> = Arc::default();
    let a = asked.clone();
    let mut p = policy(&["127.0.0.0/8"]);
    p.max_bytes = 1 << 20;
    p.gate = Some(sudevwa::net::fetch::ByteGate(Arc::new(move |n| {
        a.lock().unwrap().push(n);
        true
    })));
    let got = fetch(&url, &p).await.unwrap();
    assert_eq!(got.bytes, body);
    assert_eq!(
        *asked.lock().unwrap(),
        vec![100_000],
        "one question, for the whole body"
    );
    p.gate = Some(sudevwa::net::fetch::ByteGate(Arc::new(|_| false)));
    assert_eq!(fetch(&url, &p).await.unwrap_err(), FetchError::Busy);
}
