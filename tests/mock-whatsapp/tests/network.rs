//! The real whatsapp-rust client against the mock network: QR pairing by the mock
//! phone, login, text both ways with receipts, media round trips, restart from the
//! persisted store, number checks, logout and unlink, dropped sockets, IK fallback,
//! ack tracking (held acks, drop before ack, redelivery at the next login).
//! Every wait has a deadline; nothing sleeps for a fixed time.

// The tests' async blocks nest deep (client futures inside waits); the default limit
// can be hit when computing their layout in some build configurations.
#![recursion_limit = "256"]

use mock_whatsapp::contact::Contact;
use mock_whatsapp::MockNetwork;
use std::time::Duration;
use whatsapp_rust::download::MediaType;
use whatsapp_rust::wacore::types::events::Event;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::Jid;

/// A media message of kind `$t` (`ImageMessage`, ...) pointing at the upload `$up`.
macro_rules! media_fields {
    ($t:ident, $up:expr) => {
        wa::message::$t {
            url: Some($up.url.clone()),
            direct_path: Some($up.direct_path.clone()),
            media_key: Some($up.media_key.to_vec()),
            file_enc_sha256: Some($up.file_enc_sha256.to_vec()),
            file_sha256: Some($up.file_sha256.to_vec()),
            file_length: Some($up.file_length),
            mimetype: Some("application/octet-stream".into()),
            ..Default::default()
        }
    };
}

async fn contact(net: &MockNetwork, name: &str, phone: &str) -> Contact {
    // With RUST_LOG set, the client's and the mock's logs go to the test output.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    net.add_contact(phone, name)
        .await
        .expect("pairs and connects")
}

#[tokio::test]
async fn two_clients_pair_and_exchange_text_with_receipts() {
    let net = MockNetwork::start().await.unwrap();
    let mut a = contact(&net, "Alice", "15550000001").await;
    let mut b = contact(&net, "Bob", "15550000002").await;
    let accounts = net.accounts();
    assert_eq!(accounts.len(), 2);
    assert!(accounts
        .iter()
        .all(|a| a.devices.len() == 1 && a.devices[0].connected));
    assert!(
        accounts.iter().all(|a| a.devices[0].prekeys_left > 0),
        "prekeys were uploaded"
    );

    let id = a.send_text("15550000002", "hello bob").await.expect("send");
    let got = b.next_text().await.unwrap();
    assert_eq!(
        (
            got.from.as_str(),
            got.text.as_str(),
            got.message_id.as_str()
        ),
        ("15550000001", "hello bob", id.as_str())
    );
    a.wait("delivery receipt", |e| match e {
        Event::Receipt(r) if r.message_ids.iter().any(|m| *m == id) => Some(()),
        _ => None,
    })
    .await
    .unwrap();

    let reply = b.send_text("15550000001", "hi alice").await.expect("reply");
    let got = a.next_text().await.unwrap();
    assert_eq!(
        (got.from.as_str(), got.text.as_str()),
        ("15550000002", "hi alice")
    );
    b.wait("delivery receipt of the reply", |e| match e {
        Event::Receipt(r) if r.message_ids.iter().any(|m| *m == reply) => Some(()),
        _ => None,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn image_and_document_round_trip_byte_exact() {
    let net = MockNetwork::start().await.unwrap();
    let a = contact(&net, "Alice", "15550000051").await;
    let mut b = contact(&net, "Bob", "15550000052").await;
    for (kind, len) in [
        (MediaType::Image, 50_000usize),
        (MediaType::Document, 300_000),
    ] {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let up = a
            .client
            .upload(data.clone(), kind, Default::default())
            .await
            .expect("upload");
        let mut msg = wa::Message::default();
        match kind {
            MediaType::Image => msg.image_message = media_fields!(ImageMessage, up).into(),
            _ => msg.document_message = media_fields!(DocumentMessage, up).into(),
        }
        a.client
            .send_message(Jid::pn("15550000052"), msg)
            .await
            .expect("send media");
        let got = b
            .wait("a media message", |e| match e {
                // Skips the phone's key share and other protocol messages.
                Event::Messages(batch) => batch
                    .messages
                    .iter()
                    .find(|m| {
                        m.message.image_message.is_set() || m.message.document_message.is_set()
                    })
                    .map(|m| m.message.clone()),
                _ => None,
            })
            .await
            .unwrap();
        let bytes = if let Some(img) = got.image_message.as_option() {
            b.client.download(img).await.expect("download image")
        } else {
            let doc = got.document_message.as_option().expect("a document");
            b.client.download(doc).await.expect("download document")
        };
        assert_eq!(bytes, data, "{kind:?} round trip");
    }
}

#[tokio::test]
async fn number_check_says_yes_and_no() {
    let net = MockNetwork::start().await.unwrap();
    let a = contact(&net, "Alice", "15550000011").await;
    net.add_account("15550000012", "Phone only");
    let res = a
        .client
        .contacts()
        .is_on_whatsapp(&[Jid::pn("15550000012"), Jid::pn("15559999999")])
        .await
        .expect("usync");
    let reg = |u: &str| {
        res.iter()
            .find(|r| r.jid.user.as_str() == u)
            .map(|r| r.is_registered)
    };
    assert_eq!(reg("15550000012"), Some(true));
    assert_eq!(reg("15559999999"), Some(false));
}

#[tokio::test]
async fn offline_device_gets_queued_messages_and_restart_needs_no_qr() {
    let net = MockNetwork::start().await.unwrap();
    let a = contact(&net, "Alice", "15550000021").await;
    let b = contact(&net, "Bob", "15550000022").await;
    // Bob's process goes away; his store stays.
    let backend = b.backend.clone();
    b.client.disconnect().await;
    drop(b);
    a.send_text("15550000022", "while you were out")
        .await
        .expect("send");
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while net
        .accounts()
        .iter()
        .find(|x| x.phone == "15550000022")
        .unwrap()
        .devices[0]
        .offline_queue
        == 0
    {
        assert!(tokio::time::Instant::now() < until, "message never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A new process state on the same store: no QR, straight to Connected (its IK
    // hello accepted), then the queued message.
    let mut b2 = Contact::start(&net, "15550000022", "Bob", Some(backend))
        .await
        .unwrap();
    let first = b2
        .wait("Connected or a QR", |e| match e {
            Event::Connected(_) => Some(true),
            Event::PairingQrCode(_) => Some(false),
            _ => None,
        })
        .await
        .unwrap();
    assert!(first, "a paired store must not ask for a QR");
    assert_eq!(b2.next_text().await.unwrap().text, "while you were out");
    assert_eq!(
        net.accounts()
            .iter()
            .find(|x| x.phone == "15550000022")
            .unwrap()
            .devices[0]
            .offline_queue,
        0
    );
}

#[tokio::test]
async fn logout_and_unlink_end_logged_out() {
    let net = MockNetwork::start().await.unwrap();
    let mut a = contact(&net, "Alice", "15550000031").await;
    a.client.logout().await;
    a.wait("LoggedOut", |e| {
        matches!(e, Event::LoggedOut(_)).then_some(())
    })
    .await
    .unwrap();
    assert!(
        net.accounts()[0].devices.is_empty(),
        "logout removed the companion"
    );

    let mut b = contact(&net, "Bob", "15550000032").await;
    assert!(net.unlink("15550000032", 1));
    b.wait("LoggedOut after unlink", |e| {
        matches!(e, Event::LoggedOut(_)).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn dropped_socket_reconnects_by_itself() {
    let net = MockNetwork::start().await.unwrap();
    let mut a = contact(&net, "Alice", "15550000041").await;
    drop_and_reconnect(&net, &mut a).await;
}

/// Drops the only connection on `net` and waits for `c` to notice and come back.
async fn drop_and_reconnect(net: &MockNetwork, c: &mut Contact) {
    assert_eq!(net.drop_connections(None), 1);
    c.wait("Disconnected", |e| {
        matches!(e, Event::Disconnected(_)).then_some(())
    })
    .await
    .unwrap();
    c.connected().await.unwrap();
    assert!(net.accounts()[0].devices[0].connected);
}

/// The mock phone's Signal-encrypted app-state key share reached the new device: the
/// key is in the client's own store under the id the phone used.
#[tokio::test]
async fn a_fresh_pairing_receives_the_phones_app_state_key_share() {
    let net = MockNetwork::start().await.unwrap();
    let a = contact(&net, "Alice", "15550000071").await;
    let acc = net.accounts().remove(0);
    assert!(acc.devices[0].key_share_sent, "the phone sent the share");
    let key_id: Vec<u8> = (0..acc.app_state_key_id.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&acc.app_state_key_id[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(key_id.len(), 6);
    // Connected may come before the share is stored only if the client sat out its
    // grace; wait on the store with a deadline instead of assuming either order.
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    let key = loop {
        if let Some(k) = a.backend.get_sync_key(&key_id).await.unwrap() {
            break k;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the client never stored the shared key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(key.key_data.len(), 32);
    assert!(key.timestamp > 0);
}

/// A paired client's reconnects: IK accepted by default; with IK refused, the
/// XXfallback path; both end connected.
#[tokio::test]
async fn paired_reconnect_works_with_ik_and_with_the_xx_fallback() {
    let net = MockNetwork::start().await.unwrap();
    let mut a = contact(&net, "Alice", "15550000081").await;
    let before = net.handshake_stats();
    for accept in [true, false, true] {
        net.accept_ik(accept);
        drop_and_reconnect(&net, &mut a).await;
    }
    let after = net.handshake_stats();
    assert_eq!(after.ik_accepted - before.ik_accepted, 2, "{after:?}");
    assert_eq!(after.xx_fallbacks - before.xx_fallbacks, 1, "{after:?}");
    // Still usable after the switches.
    let mut b = contact(&net, "Bob", "15550000082").await;
    a.send_text("15550000082", "after fallback").await.unwrap();
    assert_eq!(b.next_text().await.unwrap().text, "after fallback");
}

/// Presence reaches subscribers (the current state at once, then changes) and typing
/// reaches the other side of the chat.
#[tokio::test]
async fn presence_and_typing_reach_subscribers() {
    let net = MockNetwork::start().await.unwrap();
    let mut a = contact(&net, "Alice", "15550000091").await;
    let b = contact(&net, "Bob", "15550000092").await;
    b.client.presence().set_available().await.unwrap();
    // Wait until the network holds Bob's state, so the subscription sees it.
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while !net
        .presences("15550000092")
        .iter()
        .any(|p| p == "available")
    {
        assert!(
            tokio::time::Instant::now() < until,
            "presence never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.client
        .presence()
        .subscribe(Jid::pn("15550000092"))
        .await
        .unwrap();
    let first = a
        .wait("Bob's presence", |e| match e {
            Event::Presence(p) if p.from.user == "15550000092" => Some(p.unavailable),
            _ => None,
        })
        .await
        .unwrap();
    assert!(!first, "Bob is available");
    b.client.presence().set_unavailable().await.unwrap();
    let (unavailable, last) = a
        .wait("Bob going away", |e| match e {
            Event::Presence(p) if p.from.user == "15550000092" && p.unavailable => {
                Some((p.unavailable, p.last_seen))
            }
            _ => None,
        })
        .await
        .unwrap();
    assert!(unavailable && last.is_some());

    b.client
        .chatstate()
        .send_composing(&Jid::pn("15550000091"))
        .await
        .unwrap();
    let state = a
        .wait("Bob typing", |e| match e {
            Event::ChatPresence(c) if c.source.chat.user == "15550000092" => {
                Some(format!("{:?}", c.state))
            }
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(state, "Composing");
}

/// The same network over TLS: contacts pair, connect and talk over `wss://`, trusting
/// only the network's self-signed certificate; the admin API answers over https.
#[tokio::test]
async fn contacts_work_over_tls() {
    let mut net = MockNetwork::start().await.unwrap();
    net.enable_tls().await.unwrap();
    assert!(net.wss_url().unwrap().starts_with("wss://127.0.0.1:"));
    let a = contact(&net, "Alice", "15550000101").await;
    let mut b = contact(&net, "Bob", "15550000102").await;
    a.send_text("15550000102", "over tls").await.unwrap();
    assert_eq!(b.next_text().await.unwrap().text, "over tls");
    // Media too: the URLs name the TLS port, and both ends speak TLS to it.
    let tls_host = net.https_base_url().unwrap();
    let data: Vec<u8> = (0..40_000usize).map(|i| (i * 7 % 253) as u8).collect();
    let before = net.tls_handshakes();
    let up = a
        .client
        .upload(data.clone(), MediaType::Image, Default::default())
        .await
        .expect("upload over TLS");
    assert!(
        up.url.starts_with(&tls_host),
        "{} is not on {tls_host}",
        up.url
    );
    let mut msg = wa::Message::default();
    msg.image_message = media_fields!(ImageMessage, up).into();
    a.client
        .send_message(Jid::pn("15550000102"), msg)
        .await
        .expect("send media");
    let got = b
        .wait("an image", |e| match e {
            Event::Messages(batch) => batch
                .messages
                .iter()
                .find_map(|m| m.message.image_message.as_option().cloned()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(
        b.client.download(&got).await.expect("download over TLS"),
        data
    );
    assert!(
        net.tls_handshakes() >= before + 2,
        "the upload and the download each shook hands with the TLS front"
    );
    // Two pairings, each a registration connection and a login connection, at least.
    assert!(net.tls_handshakes() >= 4, "{}", net.tls_handshakes());
    assert!(net
        .tls_cert_pem()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));

    // The admin API over https, with the certificate trusted...
    let addr = net.https_base_url().unwrap()["https://".len()..].to_string();
    let get = |config: rustls::ClientConfig| {
        let addr = addr.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect(name, tcp)
                .await?;
            tls.write_all(
                b"GET /admin/accounts HTTP/1.1\r\nHost: mock\r\nConnection: close\r\n\r\n",
            )
            .await?;
            let mut out = Vec::new();
            tls.read_to_end(&mut out).await?;
            Ok::<String, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
        }
    };
    let page = get(net.tls_client_config().unwrap()).await.unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("15550000101"));
    // ...and refused by a client that does not trust it (nothing is loosened).
    let untrusting = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    assert!(get(untrusting).await.is_err());
}

/// Pairing by code: the client asks for a code, the person types it on the mock phone,
/// and the client pairs and connects (no QR scanned). A wrong code is refused.
#[tokio::test]
async fn pairing_by_code_with_the_right_and_a_wrong_code() {
    use whatsapp_rust::wacore::pair_code::PairCodeOptions;
    let net = MockNetwork::start().await.unwrap();
    let start = |phone: &'static str| {
        let net = &net;
        async move {
            let mut c = Contact::start(net, phone, "Coder", None).await.unwrap();
            // The device registered (it shows QR codes) before it can ask for a code.
            c.wait("a QR code", |e| {
                matches!(e, Event::PairingQrCode(_)).then_some(())
            })
            .await
            .unwrap();
            let code = c
                .client
                .pair_with_code(PairCodeOptions {
                    phone_number: phone.to_string(),
                    ..Default::default()
                })
                .await
                .expect("a pairing code");
            (c, code)
        }
    };
    let (mut a, code) = start("15550000111").await;
    assert_eq!(
        code.chars().filter(|c| c.is_ascii_alphanumeric()).count(),
        8
    );
    net.enter_pairing_code("15550000111", &code).unwrap();
    a.connected().await.unwrap();
    let acc = net
        .accounts()
        .into_iter()
        .find(|x| x.phone == "15550000111")
        .unwrap();
    assert_eq!(acc.devices.len(), 1);
    assert!(acc.devices[0].connected);

    let (mut b, code) = start("15550000112").await;
    let wrong: String = code
        .chars()
        .map(|c| if c == 'A' { 'B' } else { 'A' })
        .collect();
    net.enter_pairing_code("15550000112", &wrong).unwrap();
    b.wait("the pairing failing", |e| {
        matches!(e, Event::PairingCodeError(_) | Event::PairError(_)).then_some(())
    })
    .await
    .unwrap();
    assert!(net
        .accounts()
        .iter()
        .find(|x| x.phone == "15550000112")
        .is_none_or(|x| x.devices.is_empty()));
}

#[tokio::test]
async fn replaced_stream_is_reported() {
    let net = MockNetwork::start().await.unwrap();
    let mut a = contact(&net, "Alice", "15550000061").await;
    assert!(net.replace_stream("15550000061", 1));
    a.wait("StreamReplaced", |e| {
        matches!(e, Event::StreamReplaced(_)).then_some(())
    })
    .await
    .unwrap();
}

/// Three contacts in one group: metadata and "groups I'm in" answer, and a group text
/// (sender keys distributed on the way) reaches both other members.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_messages_fan_out_to_every_member() {
    let net = MockNetwork::start().await.unwrap();
    let ann = net.add_contact("6281300000001", "Ann").await.unwrap();
    let mut ben = net.add_contact("6281300000002", "Ben").await.unwrap();
    let mut cat = net.add_contact("6281300000003", "Cat").await.unwrap();
    let outsider = net.add_contact("6281300000004", "Out").await.unwrap();
    let gid = net
        .create_group("Team", "6281300000001", &["6281300000002", "6281300000003"])
        .unwrap();
    assert!(gid.ends_with("@g.us"));
    assert!(net
        .create_group("Bad", "6281300000001", &["6289999999999"])
        .is_err());

    let mine = ann.client.groups().get_participating().await.unwrap();
    assert_eq!(mine.len(), 1);
    let meta = mine.values().next().unwrap();
    assert_eq!(meta.subject, "Team");
    assert_eq!(meta.participants.len(), 3);
    let jid: whatsapp_rust::Jid = gid.parse().unwrap();
    let meta = ben.client.groups().get_metadata(&jid).await.unwrap();
    assert_eq!(
        meta.creator.as_ref().map(|c| c.user.to_string()),
        Some("6281300000001".into())
    );
    assert!(
        outsider.client.groups().get_metadata(&jid).await.is_err(),
        "non-members are refused"
    );
    assert!(outsider
        .client
        .groups()
        .get_participating()
        .await
        .unwrap()
        .is_empty());

    let id = ann.send_group_text(&gid, "hello team").await.unwrap();
    for c in [&mut ben, &mut cat] {
        let got = c.next_text().await.unwrap();
        assert_eq!(
            (got.text.as_str(), got.message_id.as_str()),
            ("hello team", id.as_str())
        );
        assert!(got.is_group);
        assert_eq!(got.chat, gid);
        assert_eq!(got.from, "6281300000001");
    }
    // A second message reuses the distributed sender key.
    ben.send_group_text(&gid, "second").await.unwrap();
    let got = cat.next_text().await.unwrap();
    assert_eq!(
        (got.text.as_str(), got.from.as_str()),
        ("second", "6281300000002")
    );
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after 30 s.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request to the admin API over plain HTTP: (status, JSON body).
async fn admin(
    net: &MockNetwork,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let (status, bytes) = http(net, method, path, body).await;
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("no JSON body: {}", String::from_utf8_lossy(&bytes)));
    (status, json)
}

/// One plain HTTP/1.1 request to the mock's port: (status, body bytes).
async fn http(
    net: &MockNetwork,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(net.addr()).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: mock\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("not HTTP: {}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {head}"));
    (status, out[split + 4..].to_vec())
}

/// Waits until `phone`'s device 1 got the phone's key share and acked everything
/// written to it, so a test's own messages are the only ones in flight.
async fn settled(net: &MockNetwork, phone: &str) {
    until(&format!("{phone} settled"), || {
        let shared = net
            .accounts()
            .into_iter()
            .find(|a| a.phone == phone)
            .is_some_and(|a| a.devices.iter().all(|d| d.key_share_sent));
        shared && net.unacked(phone, 1).is_empty()
    })
    .await;
}

/// Waits for `c` to see its socket go and come back.
async fn reconnected(c: &mut Contact) {
    c.wait("Disconnected", |e| {
        matches!(e, Event::Disconnected(_)).then_some(())
    })
    .await
    .unwrap();
    c.connected().await.unwrap();
}

/// With the recipient's acks held, a message stays unacked; after its socket drops
/// the client reconnects by itself and the message is redelivered (and acked again,
/// still held); once the hold is off the next redelivery's ack clears it.
#[tokio::test]
async fn held_acks_keep_a_message_unacked_and_it_is_redelivered() {
    let net = MockNetwork::start().await.unwrap();
    let a = contact(&net, "Alice", "15550000121").await;
    let mut b = contact(&net, "Bob", "15550000122").await;
    settled(&net, "15550000122").await;
    let stats = || net.ack_stats("15550000122", 1).expect("Bob's device");
    assert!(net.hold_acks("15550000122", None, true));
    assert!(stats().acks_held);
    assert!(!net.hold_acks("15559999999", None, true), "unknown account");

    let id = a.send_text("15550000122", "held").await.unwrap();
    assert_eq!(b.next_text().await.unwrap().text, "held");
    // Bob's client acked (its delivery receipt), and the ack was ignored.
    until("Bob's held ack", || stats().held_acks >= 1).await;
    assert_eq!(net.unacked("15550000122", 1), vec![id.clone()]);
    let before = stats();
    assert_eq!(before.redelivered, 0);

    assert_eq!(net.drop_connections(Some("15550000122")), 1);
    reconnected(&mut b).await;
    until("the redelivery and its (held) ack", || {
        let s = stats();
        s.redelivered == 1 && s.held_acks > before.held_acks
    })
    .await;
    assert_eq!(net.unacked("15550000122", 1), vec![id.clone()]);

    // Released through the admin API this time.
    let (status, body) = admin(
        &net,
        "POST",
        "/admin/faults/hold-acks",
        Some(serde_json::json!({"phone": "15550000122", "on": false})),
    )
    .await;
    assert_eq!(
        (status, &body["hold-acks"]),
        (200, &serde_json::json!(false))
    );
    assert!(!stats().acks_held);
    assert_eq!(net.drop_connections(Some("15550000122")), 1);
    reconnected(&mut b).await;
    until("the message acked", || {
        net.unacked("15550000122", 1).is_empty()
    })
    .await;
    let after = stats();
    assert_eq!(after.redelivered, 2, "{after:?}");
    assert_eq!(after.delivered, before.delivered, "{after:?}");
    assert!(after.acked > before.acked, "{after:?}");
    assert_eq!(after.offline_queue, 0);
}

/// The drop-before-ack fault: the message is written, the socket closes at once, the
/// client reconnects, the message is redelivered and acked; the text was seen.
#[tokio::test]
async fn drop_before_ack_redelivers_the_message_after_the_reconnect() {
    let net = MockNetwork::start().await.unwrap();
    let a = contact(&net, "Alice", "15550000131").await;
    let mut b = contact(&net, "Bob", "15550000132").await;
    settled(&net, "15550000132").await;
    let stats = || net.ack_stats("15550000132", 1).expect("Bob's device");
    // Armed through the admin API (the Rust API's `drop_before_ack` does the same).
    let arm = |device: u32| {
        admin(
            &net,
            "POST",
            "/admin/faults/drop-before-ack",
            Some(serde_json::json!({"phone": "15550000132", "device": device, "on": true})),
        )
    };
    assert_eq!(arm(9).await.0, 404, "no such device");
    assert_eq!(arm(1).await.0, 200);
    assert!(stats().drop_before_ack);

    let id = a.send_text("15550000132", "dropped").await.unwrap();
    let got = b.next_text().await.unwrap();
    assert_eq!(
        (got.text.as_str(), got.message_id.as_str()),
        ("dropped", id.as_str())
    );
    b.wait("Disconnected", |e| {
        matches!(e, Event::Disconnected(_)).then_some(())
    })
    .await
    .unwrap();
    b.connected().await.unwrap();
    until("the redelivered message acked", || {
        let s = stats();
        s.redelivered == 1 && s.unacked.is_empty()
    })
    .await;
    let s = stats();
    assert!(!s.drop_before_ack, "one-shot: {s:?}");
    assert!(s.acked >= 1 && s.connected, "{s:?}");
    let (status, body) = admin(&net, "GET", "/admin/devices/15550000132/1/acks", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["redelivered"], 1);
    assert_eq!(body["unacked"], serde_json::json!([]));
    assert_eq!(
        admin(&net, "GET", "/admin/devices/15550000132/7/acks", None)
            .await
            .0,
        404
    );
    assert!(
        !net.drop_before_ack("15550000132", Some(9), true),
        "no such device"
    );
}

/// Ordinary traffic (1:1 both ways, to and from a second device of the same account,
/// and a group) leaves every device's unacked list empty: acks and receipts match.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordinary_traffic_leaves_nothing_unacked() {
    let net = MockNetwork::start().await.unwrap();
    let a = contact(&net, "Alice", "15550000141").await;
    // Alice's second device gets copies of what she sends and what she is sent.
    let _a2 = contact(&net, "Alice", "15550000141").await;
    let mut b = contact(&net, "Bob", "15550000142").await;
    let mut c = contact(&net, "Cat", "15550000143").await;
    assert_eq!(net.accounts()[0].devices.len(), 2);
    a.send_text("15550000142", "one").await.unwrap();
    assert_eq!(b.next_text().await.unwrap().text, "one");
    b.send_text("15550000141", "two").await.unwrap();
    let gid = net
        .create_group("Acks", "15550000141", &["15550000142", "15550000143"])
        .unwrap();
    a.send_group_text(&gid, "to all").await.unwrap();
    assert_eq!(b.next_text().await.unwrap().text, "to all");
    assert_eq!(c.next_text().await.unwrap().text, "to all");
    c.send_group_text(&gid, "back").await.unwrap();
    assert_eq!(b.next_text().await.unwrap().text, "back");

    let devices = || {
        net.accounts()
            .into_iter()
            .flat_map(|acc| acc.devices.into_iter().map(move |d| (acc.phone.clone(), d)))
            .collect::<Vec<_>>()
    };
    until("every device's acks", || {
        devices().iter().all(|(_, d)| d.unacked == 0)
    })
    .await;
    assert_eq!(devices().len(), 4);
    for (phone, d) in devices() {
        let s = net.ack_stats(&phone, d.id).unwrap();
        // A sender's resend (after a retry receipt) is delivered again under the same
        // key, so acks can be fewer than deliveries, never more.
        // A reconnect under load may redeliver what was not acked yet; acks still
        // match deliveries (first or repeated), never more.
        assert!(
            s.acked >= 2 && s.acked <= s.delivered + s.redelivered,
            "{s:?}"
        );
    }
}

/// A client-side suite posts the raw QR text without a number: a push name the mock
/// has not seen gets a new account with a fresh number; the same push name again
/// joins that account as another device.
#[tokio::test]
async fn raw_qr_scan_without_a_number_creates_an_account_then_joins_it() {
    let net = MockNetwork::start().await.unwrap();
    async fn scan_raw(net: &MockNetwork, qr: &str) -> (u16, serde_json::Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(net.addr()).await.unwrap();
        let request = format!(
            "POST /admin/mock-phone/scan-qr HTTP/1.1\r\nHost: mock\r\nConnection: close\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{qr}",
            qr.len()
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or_default())
    }
    let (mut first, qr) = Contact::start_for_qr(net.endpoint(), "", "Nadia Fresh")
        .await
        .unwrap();
    let (status, v) = scan_raw(&net, &qr).await;
    assert_eq!(status, 200, "{v}");
    let phone = v["phone"].as_str().expect("the new number").to_string();
    assert!(
        phone.len() >= 8 && phone.chars().all(|c| c.is_ascii_digit()),
        "{phone}"
    );
    first.connected().await.unwrap();
    let account = |p: &str| net.accounts().into_iter().find(|a| a.phone == p);
    let acc = account(&phone).expect("a new account");
    assert_eq!(acc.push_name, "Nadia Fresh");
    assert_eq!(acc.devices.len(), 1);

    // The same push name again: another device of that account, not a new account.
    let (mut second, qr) = Contact::start_for_qr(net.endpoint(), "", "Nadia Fresh")
        .await
        .unwrap();
    let (status, v) = scan_raw(&net, &qr).await;
    assert_eq!(
        (status, v["phone"].as_str()),
        (200, Some(phone.as_str())),
        "{v}"
    );
    second.connected().await.unwrap();
    assert_eq!(account(&phone).unwrap().devices.len(), 2);

    // Another new name: another account, with another number.
    let (mut third, qr) = Contact::start_for_qr(net.endpoint(), "", "Omar Other")
        .await
        .unwrap();
    let (status, v) = scan_raw(&net, &qr).await;
    assert_eq!(status, 200, "{v}");
    let other = v["phone"].as_str().unwrap();
    assert_ne!(other, phone);
    third.connected().await.unwrap();
    assert_eq!(account(other).unwrap().push_name, "Omar Other");
}

/// The body of a plain GET on the mock's HTTP port: (status, bytes).
async fn get_bytes(net: &MockNetwork, path: &str) -> (u16, Vec<u8>) {
    http(net, "GET", path, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn profile_pictures_are_set_fetched_cached_replaced_and_removed() {
    use whatsapp_rust::wacore::iq::contacts::ProfilePictureSpec;
    use whatsapp_rust::wacore::iq::groups::PictureType;
    let net = MockNetwork::start().await.unwrap();
    let ann = contact(&net, "Ann", "6281400000001").await;
    let ben = contact(&net, "Ben", "6281400000002").await;
    let ann_jid: Jid = "6281400000001@s.whatsapp.net".parse().unwrap();
    let contacts = ben.client.contacts();
    assert!(
        contacts
            .get_profile_picture(&ann_jid, true)
            .await
            .unwrap()
            .is_none(),
        "no picture yet: not found"
    );

    let first = b"\xff\xd8\xff\xe0 first picture".to_vec();
    let set = ann
        .client
        .profile()
        .set_profile_picture(first.clone())
        .await
        .unwrap();
    assert!(!set.id.is_empty());
    let pic = contacts
        .get_profile_picture(&ann_jid, false)
        .await
        .unwrap()
        .expect("a picture");
    assert_eq!(pic.id, set.id);
    let path = pic.direct_path.clone().expect("a direct path");
    assert!(
        pic.url.starts_with("https://") && pic.url.ends_with(&path),
        "{}",
        pic.url
    );
    assert_eq!(get_bytes(&net, &path).await, (200, first));

    // A profile query (usync) names the current picture and the "about" text.
    ann.client
        .profile()
        .set_status_text("Out fishing")
        .await
        .unwrap();
    let info = contacts.get_user_info(&[ann_jid.clone()]).await.unwrap();
    let about = info.values().next().expect("Ann's profile");
    assert_eq!(about.status.as_deref(), Some("Out fishing"));
    assert_eq!(about.picture_id.as_deref(), Some(set.id.as_str()));

    // Asking with the id already held: "unchanged".
    let mut spec = ProfilePictureSpec::preview(&ann_jid);
    spec.existing_id = Some(pic.id.clone());
    assert!(ben.client.execute(spec).await.unwrap().is_none());

    // A new picture gets a new id; the old bytes are gone.
    let second = ann
        .client
        .profile()
        .set_profile_picture(b"second".to_vec())
        .await
        .unwrap();
    assert_ne!(second.id, set.id);
    let mut spec = ProfilePictureSpec::preview(&ann_jid);
    spec.existing_id = Some(pic.id.clone());
    let now = ben.client.execute(spec).await.unwrap().expect("changed");
    assert_eq!(now.id, second.id);
    assert_eq!(get_bytes(&net, &path).await.0, 404);

    // Removed: not found again.
    ann.client.profile().remove_profile_picture().await.unwrap();
    assert!(contacts
        .get_profile_picture(&ann_jid, true)
        .await
        .unwrap()
        .is_none());

    // Groups: a member sets it; members read it singly and in a batch.
    let gid = net
        .create_group("Pics", "6281400000001", &["6281400000002"])
        .unwrap();
    let group: Jid = gid.parse().unwrap();
    ann.client
        .groups()
        .set_profile_picture(group.clone(), b"group picture".to_vec())
        .await
        .unwrap();
    let one = contacts
        .get_profile_picture(&group, true)
        .await
        .unwrap()
        .expect("the group's picture");
    let batch = ben
        .client
        .groups()
        .get_profile_pictures(vec![group.clone()], PictureType::Preview)
        .await
        .unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].photo_id.as_deref(), Some(one.id.as_str()));
    let gpath = batch[0].direct_path.clone().expect("a direct path");
    assert_eq!(
        get_bytes(&net, &gpath).await,
        (200, b"group picture".to_vec())
    );
    let outsider = contact(&net, "Out", "6281400000003").await;
    assert!(
        outsider
            .client
            .groups()
            .set_profile_picture(group, b"x".to_vec())
            .await
            .is_err(),
        "non-members cannot set a group's picture"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_digest_matches_the_upload_and_a_lost_bundle_is_uploaded_again() {
    use whatsapp_rust::wacore::iq::prekeys::DigestKeyBundleSpec;
    use whatsapp_rust::wacore::prekeys::{compute_key_bundle_digest, extract_prekey_public_key};
    const ANN: &str = "6281500000001";
    let net = MockNetwork::start().await.unwrap();
    let ann = contact(&net, "Ann", ANN).await;
    let digest = ann
        .client
        .execute(DigestKeyBundleSpec::new())
        .await
        .unwrap();

    // The server holds exactly the keys the client has.
    let me = ann.backend.load().await.unwrap().expect("a stored device");
    assert_eq!(digest.reg_id, me.registration_id);
    assert_eq!(
        digest.identity,
        me.identity_key.public_key.public_key_bytes()
    );
    assert_eq!(digest.skey_id, me.signed_pre_key_id);
    assert_eq!(
        digest.skey_pubkey,
        me.signed_pre_key.public_key.public_key_bytes()
    );
    assert_eq!(digest.skey_signature, me.signed_pre_key_signature.to_vec());
    assert!(!digest.prekey_ids.is_empty());
    let records: std::collections::HashMap<u32, _> = ann
        .backend
        .load_prekeys_batch(&digest.prekey_ids)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let prekeys: Vec<Vec<u8>> = digest
        .prekey_ids
        .iter()
        .map(|id| {
            let key = extract_prekey_public_key(&records[id]).expect("a public key");
            // Stored with the key-type byte; uploaded (and hashed by the server) without.
            key.strip_prefix(&[5])
                .filter(|k| k.len() == 32)
                .unwrap_or(key)
                .to_vec()
        })
        .collect();
    let refs: Vec<&[u8]> = prekeys.iter().map(Vec::as_slice).collect();
    assert_eq!(
        digest.hash,
        compute_key_bundle_digest(
            &digest.identity,
            &digest.skey_pubkey,
            &digest.skey_signature,
            &refs
        )
    );

    // The server loses the bundle: 404, and the nudge makes the client upload again.
    assert!(net.forget_key_bundle(ANN, 1));
    let err = ann
        .client
        .execute(DigestKeyBundleSpec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, whatsapp_rust::IqError::ServerError { code: 404, .. }),
        "{err:?}"
    );
    assert!(net.request_digest(ANN, 1));
    until("the keys uploaded again", || {
        net.accounts()
            .into_iter()
            .find(|a| a.phone == ANN)
            .is_some_and(|a| a.devices.iter().any(|d| d.prekeys_left > 0))
    })
    .await;
    let again = ann
        .client
        .execute(DigestKeyBundleSpec::new())
        .await
        .unwrap();
    assert_eq!(again.identity, digest.identity);
    assert_eq!(again.reg_id, digest.reg_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_create_and_manage_groups() {
    use whatsapp_rust::features::GroupSubject;
    use whatsapp_rust::wacore::iq::groups::ParticipantType;
    const ANN: &str = "6281600000001";
    const BEN: &str = "6281600000002";
    const CAT: &str = "6281600000003";
    const DAN: &str = "6281600000004";
    let net = MockNetwork::start().await.unwrap();
    let ann = contact(&net, "Ann", ANN).await;
    let mut ben = contact(&net, "Ben", BEN).await;
    let cat = contact(&net, "Cat", CAT).await;
    let mut dan = contact(&net, "Dan", DAN).await;
    fn groups(c: &Contact) -> whatsapp_rust::Groups<'_> {
        c.client.groups()
    }

    // Ann creates a group with Ben; the answer is the whole group.
    let created = create_group_with(&ann, "Plans", BEN).await;
    let gid = created.id.clone();
    assert_eq!(created.subject, "Plans");
    assert_eq!(created.participants.len(), 2);
    // Ben learns of it by a w:gp2 notification, and can read it and talk in it.
    ben.wait("the create notification", |e| match e {
        Event::GroupUpdate(u) if u.group_jid == gid => Some(()),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(
        groups(&ben).get_metadata(&gid).await.unwrap().subject,
        "Plans"
    );
    ann.send_group_text(&gid.to_string(), "hello plans")
        .await
        .unwrap();
    assert_eq!(ben.next_text().await.unwrap().text, "hello plans");

    // Members cannot add; admins can, with an error entry for a number not on WhatsApp.
    assert!(groups(&ben)
        .add_participants(gid.clone(), &[Jid::pn(CAT)])
        .await
        .is_err());
    let added = groups(&ann)
        .add_participants(gid.clone(), &[Jid::pn(CAT), Jid::pn("6289999999999")])
        .await
        .unwrap();
    assert!(added[0].is_ok() && !added[1].is_ok(), "{added:?}");
    assert_eq!(
        groups(&cat)
            .get_metadata(&gid)
            .await
            .unwrap()
            .participants
            .len(),
        3
    );

    // Promote Ben; as an admin he renames the group; everyone sees it.
    groups(&ann)
        .promote_participants(gid.clone(), &[Jid::pn(BEN)])
        .await
        .unwrap();
    groups(&ben)
        .set_subject(gid.clone(), GroupSubject::new("New plans").unwrap())
        .await
        .unwrap();
    let meta = groups(&cat).get_metadata(&gid).await.unwrap();
    assert_eq!(meta.subject, "New plans");
    let ben_type = meta
        .participants
        .iter()
        .find(|p| p.jid.user == BEN)
        .map(|p| p.participant_type.clone());
    assert!(
        matches!(ben_type, Some(ParticipantType::Admin)),
        "{ben_type:?}"
    );
    // Locked: a plain member may no longer rename it.
    groups(&ann).set_locked(gid.clone(), true).await.unwrap();
    assert!(groups(&cat)
        .set_subject(gid.clone(), GroupSubject::new("Mine").unwrap())
        .await
        .is_err());

    // An invite link lets Dan join; a reset makes the old code useless.
    let link = groups(&ann)
        .get_invite_link(gid.clone(), false)
        .await
        .unwrap();
    let code = link.rsplit('/').next().unwrap().to_string();
    let joined = groups(&dan).join_with_invite_code(&code).await.unwrap();
    assert_eq!(joined.group_jid(), &gid);
    let fresh = groups(&ann)
        .get_invite_link(gid.clone(), true)
        .await
        .unwrap();
    assert_ne!(fresh, link);
    assert!(groups(&cat).join_with_invite_code(&code).await.is_err());

    // Cat is removed, Ben leaves: neither may read the group any more.
    groups(&ann)
        .remove_participants(gid.clone(), &[Jid::pn(CAT)])
        .await
        .unwrap();
    groups(&ben).leave(gid.clone()).await.unwrap();
    assert!(groups(&cat).get_metadata(&gid).await.is_err());
    let left: Vec<String> = groups(&ann)
        .get_metadata(&gid)
        .await
        .unwrap()
        .participants
        .iter()
        .map(|p| p.jid.user.to_string())
        .collect();
    assert_eq!(left, vec![ANN.to_string(), DAN.to_string()]);

    // Announcement mode: only admins talk. Dan's message is nacked and reaches nobody;
    // Ann's still reaches Dan.
    groups(&ann).set_announce(gid.clone(), true).await.unwrap();
    let ann_had = net.ack_stats(ANN, 1).expect("Ann's device").delivered;
    let refused = dan
        .send_group_text(&gid.to_string(), "may I?")
        .await
        .unwrap();
    let error = nack_of(&mut dan, &refused).await;
    assert_eq!(error.as_deref(), Some("403"));
    assert_eq!(
        net.ack_stats(ANN, 1).expect("Ann's device").delivered,
        ann_had,
        "Dan's message reached Ann"
    );
    ann.send_group_text(&gid.to_string(), "only admins here")
        .await
        .unwrap();
    assert_eq!(dan.next_text().await.unwrap().text, "only admins here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_receipts_reach_the_sender_live_and_queued_while_offline() {
    use whatsapp_rust::wacore::types::presence::ReceiptType;
    const ANN: &str = "6281700000001";
    const BEN: &str = "6281700000002";
    let net = MockNetwork::start().await.unwrap();
    let mut ann = contact(&net, "Ann", ANN).await;
    let mut ben = contact(&net, "Ben", BEN).await;
    let read_of = |id: String| {
        move |e: &Event| match e {
            Event::Receipt(r)
                if r.r#type == ReceiptType::Read
                    && r.message_ids.iter().any(|m| m.as_str() == id) =>
            {
                Some(r.offline)
            }
            _ => None,
        }
    };

    // Live: Ben reads, Ann is told at once.
    let id = ann.send_text(BEN, "read me").await.unwrap();
    let got = ben.next_text().await.unwrap();
    ben.client
        .mark_as_read(&Jid::pn(ANN), None, &[got.message_id.as_str()])
        .await
        .unwrap();
    let offline = ann.wait("a live read receipt", read_of(id)).await.unwrap();
    assert!(!offline, "a live receipt is not marked offline");

    // Queued: Ann's process is gone while Ben reads; her next login gets the receipt,
    // marked as coming from the offline queue.
    let id = ann.send_text(BEN, "read me later").await.unwrap();
    let got = ben.next_text().await.unwrap();
    // Ben's delivery receipt first, so that it is not what lands in Ann's queue.
    let delivered = id.clone();
    ann.wait("the delivery receipt", move |e| match e {
        Event::Receipt(r)
            if r.r#type == ReceiptType::Delivered
                && r.message_ids.iter().any(|m| m.as_str() == delivered) =>
        {
            Some(())
        }
        _ => None,
    })
    .await
    .unwrap();
    let backend = ann.backend.clone();
    ann.client.disconnect().await;
    drop(ann);
    until("Ann's device offline", || {
        net.accounts()
            .iter()
            .find(|a| a.phone == ANN)
            .is_some_and(|a| !a.devices[0].connected)
    })
    .await;
    ben.client
        .mark_as_read(&Jid::pn(ANN), None, &[got.message_id.as_str()])
        .await
        .unwrap();
    until("the receipt queued for Ann", || {
        net.accounts()
            .iter()
            .find(|a| a.phone == ANN)
            .is_some_and(|a| a.devices[0].offline_queue > 0)
    })
    .await;
    let mut ann = Contact::start(&net, ANN, "Ann", Some(backend))
        .await
        .unwrap();
    let offline = ann
        .wait("the queued read receipt", read_of(id))
        .await
        .unwrap();
    assert!(offline, "a receipt from the offline queue says so");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_push_name_reaches_the_receiver() {
    const ANN: &str = "6281800000001";
    const BEN: &str = "6281800000002";
    let net = MockNetwork::start().await.unwrap();
    let ann = contact(&net, "Ann", ANN).await;
    let mut ben = contact(&net, "Ben", BEN).await;
    async fn name_of_next(ben: &mut Contact) -> Result<String, String> {
        ben.wait("a text with a push name", |e| match e {
            Event::Messages(batch) => batch
                .messages
                .iter()
                .find(|m| m.message.conversation.is_some())
                .map(|m| m.info.push_name.clone()),
            _ => None,
        })
        .await
    }
    ann.send_text(BEN, "hi").await.unwrap();
    assert_eq!(name_of_next(&mut ben).await.unwrap(), "Ann");
    ann.client.profile().set_push_name("Annie").await.unwrap();
    until("the new name recorded", || {
        net.accounts()
            .iter()
            .any(|a| a.phone == ANN && a.push_name == "Annie")
    })
    .await;
    ann.send_text(BEN, "hi again").await.unwrap();
    assert_eq!(name_of_next(&mut ben).await.unwrap(), "Annie");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn channels_are_created_followed_posted_to_reacted_to_and_edited() {
    use whatsapp_rust::features::{NewsletterMessageType, NewsletterRole};
    const ANN: &str = "6281700000001";
    const BEN: &str = "6281700000002";
    const CAT: &str = "6281700000003";
    let net = MockNetwork::start().await.unwrap();
    let ann = contact(&net, "Ann", ANN).await;
    let mut ben = contact(&net, "Ben", BEN).await;
    let cat = contact(&net, "Cat", CAT).await;

    // Ann creates a channel; she owns it and nobody follows it yet.
    let made = ann
        .client
        .newsletter()
        .create("Daily news", Some("every day"))
        .await
        .unwrap();
    let jid = made.jid.clone();
    assert!(jid.to_string().ends_with("@newsletter"), "{jid}");
    assert_eq!(made.name, "Daily news");
    assert_eq!(made.description.as_deref(), Some("every day"));
    assert_eq!(made.role, Some(NewsletterRole::Owner));
    assert_eq!(made.subscriber_count, 0);
    let invite = made.invite_code.clone().expect("an invite code");

    // Ben finds it by JID and by invite code as a guest, then follows it.
    let seen = ben.client.newsletter().get_metadata(&jid).await.unwrap();
    assert_eq!(
        (seen.name.as_str(), seen.role.clone()),
        ("Daily news", Some(NewsletterRole::Guest))
    );
    let by_code = ben
        .client
        .newsletter()
        .get_metadata_by_invite(&invite)
        .await
        .unwrap();
    assert_eq!(by_code.jid, jid);
    let joined = ben.client.newsletter().join(&jid).await.unwrap();
    assert_eq!(joined.role, Some(NewsletterRole::Subscriber));
    assert_eq!(joined.subscriber_count, 1);
    let mine = ben.client.newsletter().list_subscribed().await.unwrap();
    assert_eq!(
        mine.iter().map(|m| m.jid.clone()).collect::<Vec<_>>(),
        vec![jid.clone()]
    );
    assert!(cat
        .client
        .newsletter()
        .list_subscribed()
        .await
        .unwrap()
        .is_empty());
    assert!(ben
        .client
        .newsletter()
        .get_metadata(&"120363999999999999@newsletter".parse().unwrap())
        .await
        .is_err());

    // Ann posts; Ben's device gets the plaintext post pushed.
    let post = ann
        .client
        .send_message(
            jid.clone(),
            wa::Message {
                conversation: Some("first post".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .message_id;
    let got = ben.next_text().await.unwrap();
    assert_eq!(
        (got.text.as_str(), got.chat.as_str()),
        ("first post", jid.to_string().as_str())
    );
    assert_eq!(got.message_id, post);

    // History: the post with a server id; the owner is its sender, Ben is not.
    let history = ben
        .client
        .newsletter()
        .get_messages(jid.clone(), 10, None)
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    let server_id = history[0].server_id;
    assert!(server_id >= 99, "{server_id}");
    assert_eq!(history[0].message_id, post);
    assert_eq!(history[0].message_type, NewsletterMessageType::Text);
    assert!(!history[0].is_sender);
    assert_eq!(
        history[0]
            .message
            .as_ref()
            .and_then(|m| m.conversation.clone())
            .as_deref(),
        Some("first post")
    );
    let owner_view = ann
        .client
        .newsletter()
        .get_messages(jid.clone(), 10, None)
        .await
        .unwrap();
    assert!(owner_view[0].is_sender);
    // Followers cannot post (nothing new appears in the history).
    ben.client
        .send_message(
            jid.clone(),
            wa::Message {
                conversation: Some("not mine to post".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // Ben watches live updates and reacts; the count reaches him and the history.
    assert_eq!(
        ben.client
            .newsletter()
            .subscribe_live_updates(jid.clone())
            .await
            .unwrap(),
        300
    );
    ben.client
        .newsletter()
        .send_reaction(&jid, server_id, "👍")
        .await
        .unwrap();
    let counts = ben
        .wait("the live reaction count", |e| match e {
            Event::NewsletterLiveUpdate(u) if u.newsletter_jid == jid => u
                .messages
                .iter()
                .find(|m| m.server_id == server_id)
                .map(|m| {
                    m.reactions
                        .iter()
                        .map(|r| (r.code.clone(), r.count))
                        .collect::<Vec<_>>()
                }),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(counts, vec![("👍".to_string(), 1)]);

    // Ann edits the post: Ben gets the new body and the history holds it; a second
    // post pages separately (`before`), and the revoke empties the first.
    ann.client
        .newsletter()
        .edit_message(
            &jid,
            post.clone(),
            wa::Message {
                conversation: Some("first post, fixed".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ben.next_text().await.unwrap().text, "first post, fixed");
    ann.client
        .send_message(
            jid.clone(),
            wa::Message {
                conversation: Some("second post".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ben.next_text().await.unwrap().text, "second post");
    let history = ben
        .client
        .newsletter()
        .get_messages(jid.clone(), 10, None)
        .await
        .unwrap();
    assert_eq!(history.len(), 2, "the follower's post was refused");
    let text = |m: &whatsapp_rust::features::NewsletterMessage| {
        m.message.as_ref().and_then(|m| m.conversation.clone())
    };
    assert_eq!(text(&history[0]).as_deref(), Some("first post, fixed"));
    assert_eq!(
        history[0]
            .reactions
            .iter()
            .map(|r| (r.code.as_str(), r.count))
            .collect::<Vec<_>>(),
        vec![("👍", 1)]
    );
    let older = ben
        .client
        .newsletter()
        .get_messages(jid.clone(), 10, Some(history[1].server_id))
        .await
        .unwrap();
    assert_eq!(older.len(), 1);
    assert_eq!(older[0].server_id, server_id);
    ann.client
        .newsletter()
        .revoke_message(&jid, post.clone())
        .await
        .unwrap();
    // Ben's device gets the revoke (the post's id, an empty body) ...
    ben.wait("the revoke", |e| match e {
        Event::Messages(b) => b
            .messages
            .iter()
            .any(|m| m.info.id == post && m.message.conversation.is_none())
            .then_some(()),
        _ => None,
    })
    .await
    .unwrap();
    // ... and the history keeps the post without its text.
    let h = ann
        .client
        .newsletter()
        .get_messages(jid.clone(), 10, None)
        .await
        .unwrap();
    assert_eq!(h[0].message_id, post);
    assert_eq!(text(&h[0]), None);

    // Only the owner renames; followers mute, guests cannot; Ben leaves.
    assert!(ben
        .client
        .newsletter()
        .update(&jid, Some("mine now"), None)
        .await
        .is_err());
    let renamed = ann
        .client
        .newsletter()
        .update(&jid, Some("Weekly news"), None)
        .await
        .unwrap();
    assert_eq!(renamed.name, "Weekly news");
    assert_eq!(
        ben.client
            .newsletter()
            .get_metadata(&jid)
            .await
            .unwrap()
            .name,
        "Weekly news"
    );
    ben.client
        .newsletter()
        .set_follower_mute(&jid, true)
        .await
        .unwrap();
    assert!(cat
        .client
        .newsletter()
        .set_follower_mute(&jid, true)
        .await
        .is_err());
    ben.client.newsletter().leave(&jid).await.unwrap();
    assert!(ben
        .client
        .newsletter()
        .list_subscribed()
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ann.client
            .newsletter()
            .get_metadata(&jid)
            .await
            .unwrap()
            .subscriber_count,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn communities_link_subgroups_and_members_join_them() {
    use whatsapp_rust::features::CreateCommunityOptions;
    const ANN: &str = "6281800000001";
    const BEN: &str = "6281800000002";
    const CAT: &str = "6281800000003";
    let net = MockNetwork::start().await.unwrap();
    let ann = contact(&net, "Ann", ANN).await;
    let mut ben = contact(&net, "Ben", BEN).await;
    let cat = contact(&net, "Cat", CAT).await;
    let members = |m: &whatsapp_rust::features::GroupMetadata| {
        let mut v: Vec<String> = m
            .participants
            .iter()
            .map(|p| p.jid.user.to_string())
            .collect();
        v.sort();
        v
    };

    // Ann creates a community: it comes with an announcement group and a general chat.
    let mut options = CreateCommunityOptions::new("Town");
    options.description = Some("our town".into());
    let town = ann
        .client
        .community()
        .create(options)
        .await
        .unwrap()
        .metadata;
    assert!(town.is_parent_group);
    assert_eq!(town.description.as_deref(), Some("our town"));
    let parent = town.id.clone();
    let subs = ann.client.community().get_subgroups(&parent).await.unwrap();
    assert_eq!(subs.len(), 2, "{subs:?}");
    assert!(subs
        .iter()
        .any(|s| s.is_default_sub_group && s.subject == "Town"));
    assert!(subs.iter().any(|s| s.is_general_chat));
    let announce = subs
        .iter()
        .find(|s| s.is_default_sub_group)
        .unwrap()
        .id
        .clone();
    let meta = ann.client.groups().get_metadata(&announce).await.unwrap();
    assert!(meta.is_default_sub_group && meta.is_announcement);
    assert_eq!(meta.parent_group_jid.as_ref(), Some(&parent));

    // An existing group of Ann's (with Ben) is linked; an unknown group is refused.
    let book = create_group_with(&ann, "Book club", BEN).await.id;
    let unknown: Jid = "120363999999999999@g.us".parse().unwrap();
    let linked = ann
        .client
        .community()
        .link_subgroups(parent.clone(), &[book.clone(), unknown.clone()])
        .await
        .unwrap();
    assert_eq!(linked.linked_jids, vec![book.clone()]);
    assert_eq!(linked.failed_groups, vec![(unknown, 404)]);
    // Ben, in the linked group, is now a community member and hears of the link.
    ben.wait("the link notification", |e| match e {
        Event::GroupUpdate(u) if u.group_jid == parent => Some(()),
        _ => None,
    })
    .await
    .unwrap();
    let his = ben.client.community().get_participating().await.unwrap();
    assert!(
        his.contains_key(&parent),
        "{:?}",
        his.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        members(&ann.client.groups().get_metadata(&announce).await.unwrap()),
        vec![ANN.to_string(), BEN.to_string()]
    );
    // Only admins link.
    assert!(ben
        .client
        .community()
        .link_subgroups(parent.clone(), std::slice::from_ref(&book))
        .await
        .is_err());

    // Ann creates a subgroup inside; Ben looks it up and joins it.
    let garden = ann
        .client
        .community()
        .create_subgroup("Garden", &[], parent.clone())
        .await
        .unwrap()
        .metadata;
    assert_eq!(garden.parent_group_jid.as_ref(), Some(&parent));
    let seen = ben
        .client
        .community()
        .query_linked_group(parent.clone(), garden.id.clone())
        .await
        .unwrap();
    assert_eq!(seen.subject, "Garden");
    let joined = ben
        .client
        .community()
        .join_subgroup(parent.clone(), garden.id.clone())
        .await
        .unwrap();
    assert_eq!(members(&joined), vec![ANN.to_string(), BEN.to_string()]);
    let everyone = ann
        .client
        .community()
        .get_linked_groups_participants(parent.clone())
        .await
        .unwrap();
    let mut everyone: Vec<String> = everyone.iter().map(|p| p.jid.user.to_string()).collect();
    everyone.sort();
    everyone.dedup();
    assert_eq!(everyone, vec![ANN.to_string(), BEN.to_string()]);
    let counts = ann
        .client
        .community()
        .get_subgroup_participant_counts(&parent)
        .await
        .unwrap();
    assert!(counts.contains(&(garden.id.clone(), 2)), "{counts:?}");
    // Outsiders see nothing.
    assert!(cat.client.community().get_subgroups(&parent).await.is_err());

    // Removing Ben from the community takes him out of every linked group.
    ann.client
        .community()
        .remove_participants(parent.clone(), &[Jid::pn(BEN)])
        .await
        .unwrap();
    for g in [&book, &garden.id, &announce] {
        assert_eq!(
            members(&ann.client.groups().get_metadata(g).await.unwrap()),
            vec![ANN.to_string()],
            "{g}"
        );
    }

    // Unlink the book club, then deactivate: the book club and the garden outlive it.
    let unlinked = ann
        .client
        .community()
        .unlink_subgroups(parent.clone(), std::slice::from_ref(&book), false)
        .await
        .unwrap();
    assert_eq!(unlinked.unlinked_jids, vec![book.clone()]);
    let subs = ann.client.community().get_subgroups(&parent).await.unwrap();
    assert!(!subs.iter().any(|s| s.id == book));
    ann.client
        .community()
        .deactivate(parent.clone())
        .await
        .unwrap();
    assert!(!ann
        .client
        .community()
        .get_participating()
        .await
        .unwrap()
        .contains_key(&parent));
    let garden_now = ann.client.groups().get_metadata(&garden.id).await.unwrap();
    assert_eq!(garden_now.parent_group_jid, None);
    assert!(ann.client.groups().get_metadata(&book).await.is_ok());
}

/// The LID of the account `phone`.
fn lid_of(net: &MockNetwork, phone: &str) -> String {
    net.accounts()
        .into_iter()
        .find(|a| a.phone == phone)
        .map(|a| a.lid)
        .expect("the account")
}

/// Waits for the text message `text` and returns its sender and the sender's other
/// addressing form.
async fn sender_of(c: &mut Contact, text: &str) -> (Jid, Option<Jid>) {
    c.wait(text, |e| match e {
        Event::Messages(b) => b.messages.iter().find_map(|m| {
            (m.message.conversation.as_deref() == Some(text)).then(|| {
                (
                    m.info.source.sender.clone(),
                    m.info.source.sender_alt.clone(),
                )
            })
        }),
        _ => None,
    })
    .await
    .unwrap()
}

/// Waits for the server's ack of the stanza `id` and returns its error code, if any.
async fn nack_of(c: &mut Contact, id: &str) -> Option<String> {
    c.wait("the server ack", |e| match e {
        Event::ServerAck(a) if a.id == id => Some(a.error.clone()),
        _ => None,
    })
    .await
    .unwrap()
}

/// Polls `client.is_lid_migrated()` until it holds (the props that set it are fetched in
/// the background after login), with a deadline.
async fn lid_migrated(c: &Contact) {
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while !c.client.is_lid_migrated().await {
        assert!(tokio::time::Instant::now() < until, "never LID-migrated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_are_addressed_by_lid_or_phone_number_with_the_other_form_beside() {
    const ANN: &str = "6281900000001";
    const BEN: &str = "6281900000002";
    let net = MockNetwork::start().await.unwrap();
    let mut ann = contact(&net, "Ann", ANN).await;
    let mut ben = contact(&net, "Ben", BEN).await;
    let (ann_lid, ben_lid) = (lid_of(&net, ANN), lid_of(&net, BEN));

    // The number check answers the LID; the client keeps the mapping.
    let found = ann
        .client
        .contacts()
        .is_on_whatsapp(&[Jid::pn(BEN)])
        .await
        .unwrap();
    assert!(found[0].is_registered);
    assert_eq!(
        found[0].lid.as_ref().map(|l| l.user.to_string()),
        Some(ben_lid.clone())
    );
    let entry = ann
        .client
        .get_lid_pn_entry(&Jid::pn(BEN))
        .await
        .unwrap()
        .expect("mapping");
    assert_eq!(&*entry.lid, ben_lid.as_str());
    let by_lid = ann
        .client
        .contacts()
        .is_on_whatsapp(&[Jid::lid(&ben_lid)])
        .await
        .unwrap();
    assert!(by_lid[0].is_registered, "{by_lid:?}");

    // Not migrated: 1:1 chats go by phone number, the sender's LID beside it.
    ann.send_text(BEN, "hello by number").await.unwrap();
    let (sender, alt) = sender_of(&mut ben, "hello by number").await;
    assert_eq!(
        (sender.server.to_string(), sender.user.to_string()),
        ("s.whatsapp.net".into(), ANN.into())
    );
    assert_eq!(alt.map(|a| a.user.to_string()), Some(ann_lid.clone()));
    ben.send_text(ANN, "answer by number").await.unwrap();
    assert_eq!(ann.next_text().await.unwrap().from, BEN);
    // Both sides keep their pairwise sessions under the other's LID.
    for (c, peer) in [(&ann, &ben_lid), (&ben, &ann_lid)] {
        let s = c
            .client
            .signal()
            .session_info(&Jid::lid_device(peer, 1))
            .await;
        assert!(s.unwrap().is_some(), "no session under {peer}");
    }

    // The accounts migrate to LID 1:1 chats (props at the next login): the same
    // sessions carry on, the stanza now comes from the sender's LID with its number
    // beside it, and the delivery receipt from the reader's LID.
    net.lid_migration(true);
    assert_eq!(net.drop_connections(None), 2);
    for c in [&mut ann, &mut ben] {
        reconnected(c).await;
        lid_migrated(c).await;
    }
    let sent = ann
        .client
        .send_message(
            Jid::lid(&ben_lid),
            wa::Message {
                conversation: Some("hello by lid".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .message_id;
    let (sender, alt) = sender_of(&mut ben, "hello by lid").await;
    assert_eq!(
        (sender.server.to_string(), sender.user.to_string()),
        ("lid".into(), ann_lid.clone())
    );
    assert_eq!(alt.map(|a| a.user.to_string()), Some(ANN.to_string()));
    let receipt_from = ann
        .wait("the delivery receipt", |e| match e {
            Event::Receipt(r) if r.message_ids.contains(&sent) => Some(r.source.sender.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(
        receipt_from.user.as_str(),
        ben_lid.as_str(),
        "{receipt_from}"
    );
    // A send by phone number is addressed by LID too now; Ben answers the LID he saw.
    ann.send_text(BEN, "number, but migrated").await.unwrap();
    let got = ben.next_text().await.unwrap();
    assert_eq!(
        (got.text.as_str(), got.from.as_str()),
        ("number, but migrated", ann_lid.as_str())
    );
    ben.client
        .send_message(
            sender.to_non_ad(),
            wa::Message {
                conversation: Some("hello back".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let back = ann.next_text().await.unwrap();
    assert_eq!(
        (back.text.as_str(), back.from.as_str()),
        ("hello back", ben_lid.as_str())
    );

    // A group made by migrated accounts is LID-addressed: members by LID with their
    // numbers beside, group messages from the sender's LID.
    let gid = create_group_with(&ann, "Lids", BEN).await.id;
    let meta = ben.client.groups().get_metadata(&gid).await.unwrap();
    assert_eq!(
        format!("{:?}", meta.addressing_mode).to_lowercase(),
        "lid",
        "{meta:?}"
    );
    let ben_entry = meta
        .participants
        .iter()
        .find(|p| p.jid.user.as_str() == ben_lid)
        .expect("Ben by LID");
    assert_eq!(
        ben_entry.phone_number.as_ref().map(|j| j.user.to_string()),
        Some(BEN.to_string())
    );
    ann.send_group_text(&gid.to_string(), "group by lid")
        .await
        .unwrap();
    let (sender, alt) = sender_of(&mut ben, "group by lid").await;
    assert_eq!(sender.user.as_str(), ann_lid.as_str(), "{sender}");
    assert_eq!(alt.map(|a| a.user.to_string()), Some(ANN.to_string()));
    ben.send_group_text(&gid.to_string(), "group answer")
        .await
        .unwrap();
    let got = ann.next_text().await.unwrap();
    assert_eq!(
        (got.text.as_str(), got.from.as_str()),
        ("group answer", ben_lid.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn privacy_tokens_are_granted_attached_and_required() {
    const ANN: &str = "6282000000001";
    const BEN: &str = "6282000000002";
    let net = MockNetwork::start().await.unwrap();
    let mut ann = contact(&net, "Ann", ANN).await;
    let mut ben = contact(&net, "Ben", BEN).await;
    let (ann_lid, ben_lid) = (lid_of(&net, ANN), lid_of(&net, BEN));

    // Ben only takes messages from people he gave a token. Ann has none: 463, and
    // nothing reaches Ben.
    assert!(net.require_tc_token(BEN, true));
    let refused = ann.send_text(BEN, "let me in").await.unwrap();
    let error = nack_of(&mut ann, &refused).await;
    assert_eq!(error.as_deref(), Some("463"));
    let unacked = net.unacked(BEN, 1);
    assert!(unacked.iter().all(|id| *id != refused), "{unacked:?}");

    // Ben writes to Ann: his client grants Ann a token after the send, the server
    // hands it to Ann's device, which keeps it under Ben's LID.
    ben.send_text(ANN, "hi Ann").await.unwrap();
    assert_eq!(ann.next_text().await.unwrap().text, "hi Ann");
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    let held = loop {
        if let Some(t) = ann.client.tc_token().get(&ben_lid).await.unwrap() {
            if !t.token.is_empty() {
                break t;
            }
        }
        assert!(tokio::time::Instant::now() < until, "no token from Ben");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(held.token.len(), 20);

    // Now Ann's message carries the token and gets through.
    let let_in = ann.send_text(BEN, "thanks for the token").await.unwrap();
    let got = ben.next_text().await.unwrap();
    assert_eq!(
        (got.text.as_str(), got.message_id.as_str()),
        ("thanks for the token", let_in.as_str())
    );

    // The explicit grant API answers with the token it made.
    let issued = ben
        .client
        .tc_token()
        .issue_tokens(&[Jid::lid(&ann_lid)])
        .await
        .unwrap();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].jid.user.as_str(), ann_lid.as_str());
    assert_eq!(issued[0].token.len(), 20);
}

/// `c` creates a group named `subject` with the account `member`; the group as the
/// server answered it.
async fn create_group_with(
    c: &Contact,
    subject: &str,
    member: &str,
) -> whatsapp_rust::features::GroupMetadata {
    use whatsapp_rust::features::GroupCreateOptions;
    use whatsapp_rust::wacore::iq::groups::GroupParticipantOptions;
    let options = GroupCreateOptions::builder()
        .subject(subject)
        .participants(vec![GroupParticipantOptions::new(Jid::pn(member))])
        .finish();
    c.client
        .groups()
        .create_group(options)
        .await
        .unwrap()
        .metadata
}

/// Waits until `phone:device` has fetched every app-state collection (its first sync
/// after login), so that a notification does not race that sync: whatsapp-rust skips
/// a `server_sync` arriving while another sync of the collection runs, and does not
/// come back to it.
async fn first_sync_done(net: &MockNetwork, phone: &str, device: u32) {
    until("the first app-state sync", || {
        net.app_state_fetched(phone, device).len() == 5
    })
    .await;
}

/// Waits until the client holds `collection` at the server's version. Should a
/// notification still have been skipped (above), the server announces the collections
/// again after 5 s without progress.
async fn caught_up(net: &MockNetwork, c: &Contact, phone: &str, collection: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut nudge_at = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let want = net
            .app_state_versions(phone)
            .get(collection)
            .copied()
            .unwrap_or(0);
        let have = c.backend.get_version(collection).await.unwrap().version;
        if have >= want {
            return;
        }
        let now = tokio::time::Instant::now();
        assert!(now < deadline, "{collection} stuck at {have} of {want}");
        if now >= nudge_at {
            net.announce_app_state(phone).await;
            nudge_at = now + Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A sync action's value with the given action filled in, stamped now.
fn action(fill: impl FnOnce(&mut wa::SyncActionValue)) -> wa::SyncActionValue {
    let mut v = wa::SyncActionValue {
        timestamp: Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
        ),
        ..Default::default()
    };
    fill(&mut v);
    v
}

fn mute(v: &mut wa::SyncActionValue) {
    v.mute_action = wa::sync_action_value::MuteAction {
        muted: Some(true),
        mute_end_timestamp: Some(-1),
        ..Default::default()
    }
    .into();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_state_patches_sync_between_the_phone_and_its_companions() {
    use whatsapp_rust::schemas;
    const PAT: &str = "15550000301";
    let net = MockNetwork::start().await.unwrap();
    net.add_account(PAT, "Pat");

    // History on the phone before any companion: a push name, and more contacts
    // than one answer holds (20), each a real encrypted, MACed patch.
    let renamed = action(|v| {
        v.push_name_setting = wa::sync_action_value::PushNameSetting {
            name: Some("Pat on the phone".into()),
        }
        .into();
    });
    net.phone_app_state_set(PAT, &schemas::SETTING_PUSH_NAME, &[], &renamed, true)
        .await
        .unwrap();
    for i in 0..25 {
        let jid = format!("1555123{i:04}@s.whatsapp.net");
        let saved = action(|v| {
            v.contact_action = wa::sync_action_value::ContactAction {
                full_name: Some(format!("Friend {i}")),
                ..Default::default()
            }
            .into();
        });
        net.phone_app_state_set(PAT, &schemas::CONTACT, &[jid.as_str()], &saved, true)
            .await
            .unwrap();
    }
    assert_eq!(net.app_state_versions(PAT)["critical_unblock_low"], 25);

    // A new companion syncs all of it (two pages of contacts) and takes the name.
    let mut a = contact(&net, "Pat", PAT).await;
    let name = a
        .wait("the push name from app state", |e| match e {
            Event::SelfPushNameUpdated(u) => Some(u.new_name.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(name, "Pat on the phone");
    let mut friends = std::collections::BTreeSet::new();
    while friends.len() < 25 {
        let (jid, full) = a
            .wait("a contact from app state", |e| match e {
                Event::ContactUpdate(u) => {
                    Some((u.jid.user.to_string(), u.action.full_name.clone()))
                }
                _ => None,
            })
            .await
            .unwrap();
        let i: u32 = jid[7..].parse().unwrap();
        assert_eq!(full, Some(format!("Friend {i}")));
        friends.insert(jid);
    }

    first_sync_done(&net, PAT, 1).await;

    // Live, through the admin API: the phone mutes a chat and the companion hears of
    // it by `server_sync`. Bad requests get JSON errors.
    let chat = "15559990001@s.whatsapp.net";
    let (status, v) = admin(
        &net,
        "POST",
        "/admin/mock-phone/app-state",
        Some(serde_json::json!({"phone": PAT, "op": "set", "action": "mute", "chat": chat})),
    )
    .await;
    assert_eq!(
        (status, v["collection"].as_str(), v["version"].as_u64()),
        (200, Some("regular_high"), Some(1)),
        "{v}"
    );
    for (body, want) in [
        (
            serde_json::json!({"phone": PAT, "op": "set", "action": "mute", "chat": "nope"}),
            400,
        ),
        (
            serde_json::json!({"phone": PAT, "op": "set", "action": "dance"}),
            400,
        ),
        (
            serde_json::json!({"phone": "1", "op": "set", "action": "mute", "chat": chat}),
            404,
        ),
        (serde_json::json!({"phone": PAT, "op": "fly"}), 400),
    ] {
        let (status, v) = admin(&net, "POST", "/admin/mock-phone/app-state", Some(body)).await;
        assert_eq!(status, want, "{v}");
        assert!(v["error"].is_string(), "{v}");
    }
    let (status, v) = admin(
        &net,
        "GET",
        &format!("/admin/mock-phone/app-state/{PAT}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["versions"]["critical_unblock_low"], 25);
    caught_up(&net, &a, PAT, "regular_high").await;
    let muted = a
        .wait("the mute", |e| match e {
            Event::MuteUpdate(u) => Some(u.jid.to_string()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(muted, chat);

    // A second companion; the first one pins a chat, the second one learns of it.
    let mut b = contact(&net, "Pat", PAT).await;
    first_sync_done(&net, PAT, 2).await;
    let pinned: Jid = "15559990002@s.whatsapp.net".parse().unwrap();
    let before = net
        .app_state_versions(PAT)
        .get("regular_low")
        .copied()
        .unwrap_or(0);
    a.client.chat_actions().pin_chat(&pinned).await.unwrap();
    assert_eq!(net.app_state_versions(PAT)["regular_low"], before + 1);
    caught_up(&net, &b, PAT, "regular_low").await;
    let seen = b
        .wait("the pin from the other companion", |e| match e {
            Event::PinUpdate(u) if u.jid == pinned => Some(()),
            _ => None,
        })
        .await;
    assert!(seen.is_ok(), "{seen:?}");

    // Conflict: the phone archives a chat without telling anyone, so the first
    // companion uploads its next pin on an old version. The server answers 409 with
    // the patch it missed; the client applies it and sends its pin again.
    let archived = "15559990003@s.whatsapp.net";
    let archive = action(|v| {
        v.archive_chat_action = wa::sync_action_value::ArchiveChatAction {
            archived: Some(true),
            ..Default::default()
        }
        .into();
    });
    net.phone_app_state_set(PAT, &schemas::ARCHIVE, &[archived], &archive, false)
        .await
        .unwrap();
    let second: Jid = "15559990004@s.whatsapp.net".parse().unwrap();
    a.client.chat_actions().pin_chat(&second).await.unwrap();
    assert_eq!(net.app_state_versions(PAT)["regular_low"], before + 3);
    caught_up(&net, &b, PAT, "regular_low").await;
    let absorbed = a
        .wait("the archive absorbed from the conflict", |e| match e {
            Event::ArchiveUpdate(u) => Some(u.jid.to_string()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(absorbed, archived);
    let seen = b
        .wait("the second pin", |e| match e {
            Event::PinUpdate(u) if u.jid == second => Some(()),
            _ => None,
        })
        .await;
    assert!(seen.is_ok(), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_app_state_key_is_requested_from_the_phone() {
    use whatsapp_rust::schemas;
    const QUINN: &str = "15550000302";
    let net = MockNetwork::start().await.unwrap();
    let mut a = contact(&net, "Quinn", QUINN).await;
    first_sync_done(&net, QUINN, 1).await;

    // The phone moves to a new key without sharing it, and is away for the first
    // request. Its next patch names a key the companion lacks: the companion asks the
    // phone (a Signal peer message to device 0), waits, asks again, and applies the
    // patch once the phone's share arrives.
    let key_hex = net.rotate_app_state_key(QUINN, false).await.unwrap();
    let key_id: Vec<u8> = (0..key_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&key_hex[i..i + 2], 16).unwrap())
        .collect();
    assert!(a.backend.get_sync_key(&key_id).await.unwrap().is_none());
    assert!(net.ignore_key_requests(QUINN, 1));
    let chat = "15559990011@s.whatsapp.net";
    net.phone_app_state_set(QUINN, &schemas::MUTE, &[chat], &action(mute), true)
        .await
        .unwrap();
    caught_up(&net, &a, QUINN, "regular_high").await;
    let muted = a
        .wait("the mute under the new key", |e| match e {
            Event::MuteUpdate(u) => Some(u.jid.to_string()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(muted, chat);
    assert!(
        net.app_state_key_requests(QUINN) >= 2,
        "one request ignored, one answered: {}",
        net.app_state_key_requests(QUINN)
    );
    let key = a
        .backend
        .get_sync_key(&key_id)
        .await
        .unwrap()
        .expect("the key");
    assert_eq!(key.key_data.len(), 32);

    // Shared at once, a rotated key needs no request.
    let asked = net.app_state_key_requests(QUINN);
    net.rotate_app_state_key(QUINN, true).await.unwrap();
    let chat = "15559990012@s.whatsapp.net";
    net.phone_app_state_set(QUINN, &schemas::MUTE, &[chat], &action(mute), true)
        .await
        .unwrap();
    caught_up(&net, &a, QUINN, "regular_high").await;
    let muted = a
        .wait("the mute under the shared key", |e| match e {
            Event::MuteUpdate(u) if u.jid.user == "15559990012" => Some(u.jid.to_string()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(muted, chat);
    assert_eq!(net.app_state_key_requests(QUINN), asked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_nct_salt_from_app_state_lets_a_cstoken_through() {
    use whatsapp_rust::schemas;
    const RAY: &str = "15550000303";
    const SAM: &str = "15550000304";
    let net = MockNetwork::start().await.unwrap();
    let mut ray = contact(&net, "Ray", RAY).await;
    first_sync_done(&net, RAY, 1).await;
    let mut sam = contact(&net, "Sam", SAM).await;

    // Sam takes messages only with a token; Ray holds none and has no salt: 463.
    assert!(net.require_tc_token(SAM, true));
    let refused = ray.send_text(SAM, "no token").await.unwrap();
    assert_eq!(nack_of(&mut ray, &refused).await.as_deref(), Some("463"));

    // Ray's phone syncs an NCT salt; the client stores it, derives a cstoken from
    // it and Sam's LID, and the server lets the message through.
    let salt = action(|v| {
        v.nct_salt_sync_action = wa::sync_action_value::NctSaltSyncAction {
            salt: Some(vec![7u8; 32]),
        }
        .into();
    });
    net.phone_app_state_set(RAY, &schemas::NCT_SALT_SYNC, &[], &salt, true)
        .await
        .unwrap();
    caught_up(&net, &ray, RAY, "regular_high").await;
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let id = ray.send_text(SAM, "salted").await.unwrap();
        match nack_of(&mut ray, &id).await {
            None => break,
            Some(code) => assert_eq!(code, "463"),
        }
        // The salt arrives by a background sync: try again until it has.
        assert!(tokio::time::Instant::now() < until, "never admitted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = sam.next_text().await.unwrap();
    assert_eq!(got.text, "salted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restricted_account_shows_presence_and_picture_only_to_token_holders() {
    const TIA: &str = "15550000305";
    const UMA: &str = "15550000306";
    let net = MockNetwork::start().await.unwrap();
    let mut tia = contact(&net, "Tia", TIA).await;
    let uma = contact(&net, "Uma", UMA).await;
    let uma_jid = Jid::pn(UMA);
    uma.client
        .profile()
        .set_profile_picture(b"\xff\xd8\xff\xe0 uma".to_vec())
        .await
        .unwrap();
    uma.client.presence().set_available().await.unwrap();
    assert!(net.require_tc_token(UMA, true));

    // Tia holds no token from Uma: the picture is "not authorized" (401, which the
    // client reads as no picture) and her presence subscription is not taken.
    let pic = tia
        .client
        .contacts()
        .get_profile_picture(&uma_jid, false)
        .await;
    assert!(pic.as_ref().is_ok_and(|p| p.is_none()), "{pic:?}");
    tia.client
        .presence()
        .subscribe(uma_jid.clone())
        .await
        .unwrap();
    until("Tia's subscription reached the network", || {
        net.presences(TIA).iter().any(|p| p == "subscribe")
    })
    .await;
    assert!(!net.presence_subscribers(UMA).contains(&TIA.to_string()));

    // Uma writes to Tia, which grants Tia a token; with it both work.
    uma.send_text(TIA, "hello Tia").await.unwrap();
    assert_eq!(tia.next_text().await.unwrap().text, "hello Tia");
    let uma_lid = lid_of(&net, UMA);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tia
        .client
        .tc_token()
        .get(&uma_lid)
        .await
        .unwrap()
        .is_none_or(|t| t.token.is_empty())
    {
        assert!(tokio::time::Instant::now() < deadline, "no token from Uma");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pic = tia
        .client
        .contacts()
        .get_profile_picture(&uma_jid, false)
        .await
        .unwrap();
    assert!(pic.is_some(), "the token shows the picture");
    tia.client
        .presence()
        .subscribe(uma_jid.clone())
        .await
        .unwrap();
    let online = tia
        .wait("Uma's presence", |e| match e {
            Event::Presence(p) if p.from.user == UMA => Some(p.unavailable),
            _ => None,
        })
        .await
        .unwrap();
    assert!(!online, "Uma is available");
    assert!(net.presence_subscribers(UMA).contains(&TIA.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undecryptable_message_is_retried_and_arrives() {
    const VIC: &str = "15550000307";
    const WES: &str = "15550000308";
    let net = MockNetwork::start().await.unwrap();
    let vic = contact(&net, "Vic", VIC).await;
    let mut wes = contact(&net, "Wes", WES).await;

    // A first message sets up the session; the second reaches Wes damaged. His client
    // cannot decrypt it and sends Vic a retry receipt (with its keys); Vic's client
    // encrypts it again and Wes reads it, once.
    vic.send_text(WES, "warm up").await.unwrap();
    assert_eq!(wes.next_text().await.unwrap().text, "warm up");
    assert!(net.corrupt_next_message(WES, Some(1), true));
    let id = vic.send_text(WES, "second try").await.unwrap();
    let got = wes.next_text().await.unwrap();
    assert_eq!(
        (got.text.as_str(), got.message_id.as_str()),
        ("second try", id.as_str())
    );
    let stats = net.ack_stats(WES, 1).unwrap();
    assert!(!stats.corrupt_next, "the fault fired");
    assert!(stats.retry_receipts >= 1, "{stats:?}");
    until("the resend acked", || net.unacked(WES, 1).is_empty()).await;

    // In a group: the sender-key message reaches Wes damaged; Vic's client answers
    // his retry receipt with a pairwise copy for his device alone (`participant`).
    let group = net.create_group("Retry", VIC, &[WES]).expect("a group");
    vic.send_group_text(&group, "group warm up").await.unwrap();
    assert_eq!(wes.next_text().await.unwrap().text, "group warm up");
    let before = net.ack_stats(WES, 1).unwrap().retry_receipts;
    assert!(net.corrupt_next_message(WES, Some(1), true));
    let id = vic
        .send_group_text(&group, "group second try")
        .await
        .unwrap();
    let got = wes.next_text().await.unwrap();
    assert_eq!(
        (got.text.as_str(), got.message_id.as_str(), got.is_group),
        ("group second try", id.as_str(), true)
    );
    assert!(net.ack_stats(WES, 1).unwrap().retry_receipts > before);

    // Over the admin API too; an unknown device is a 404.
    let (status, v) = admin(
        &net,
        "POST",
        "/admin/faults/corrupt-next-message",
        Some(serde_json::json!({"phone": WES, "device": 9, "on": true})),
    )
    .await;
    assert_eq!(status, 404, "{v}");
}
