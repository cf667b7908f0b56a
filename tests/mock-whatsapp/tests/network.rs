//! The real whatsapp-rust client against the mock network: QR pairing by the mock
//! phone, login, text both ways with receipts, restart from the persisted store,
//! number checks, logout and unlink, dropped sockets. Every wait has a deadline.

use mock_whatsapp::MockNetwork;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use whatsapp_rust::bot::{Bot, BotHandle};
use whatsapp_rust::transport::TokioWebSocketTransportFactory;
use whatsapp_rust::wacore::store::traits::Backend;
use whatsapp_rust::wacore::store::InMemoryBackend;
use whatsapp_rust::wacore::types::events::Event;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::{Client, Jid};

const DEADLINE: Duration = Duration::from_secs(40);

struct TestClient {
    client: Arc<Client>,
    _handle: BotHandle,
    events: mpsc::Receiver<Arc<Event>>,
    /// Events already received but not yet asked for (waits never drop events).
    backlog: Vec<Arc<Event>>,
    backend: Arc<dyn Backend>,
}

async fn client(net: &MockNetwork, name: &str, backend: Option<Arc<dyn Backend>>) -> TestClient {
    let backend = backend.unwrap_or_else(|| Arc::new(InMemoryBackend::new()));
    let (tx, rx) = mpsc::channel(4096);
    let bot = Bot::builder()
        .with_backend_arc(backend.clone())
        .with_transport_factory(TokioWebSocketTransportFactory::new().with_url(net.ws_url()))
        .with_http_client(net.http_client())
        .with_version((2, 3000, 0))
        .with_push_name(name)
        .skip_history_sync()
        .on_event(move |ev, _c| {
            let tx = tx.clone();
            async move {
                let _ = tx.try_send(ev);
            }
        })
        .build()
        .await
        .expect("bot builds");
    let client = bot.client();
    client.set_force_active_delivery_receipts(true);
    let handle = bot.spawn();
    TestClient {
        client,
        _handle: handle,
        events: rx,
        backlog: Vec::new(),
        backend,
    }
}

impl TestClient {
    /// Waits for the first event `pick` accepts.
    async fn wait<T>(&mut self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        if let Some(i) = self.backlog.iter().position(|e| pick(e).is_some()) {
            let ev = self.backlog.remove(i);
            if let Some(v) = pick(&ev) {
                return v;
            }
        }
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let ev = tokio::time::timeout_at(until, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap_or_else(|| panic!("event stream ended waiting for {what}"));
            if let Some(v) = pick(&ev) {
                return v;
            }
            self.backlog.push(ev);
        }
    }

    async fn qr(&mut self) -> String {
        self.wait("a QR code", |e| match e {
            Event::PairingQrCode(q) => Some(q.code.clone()),
            _ => None,
        })
        .await
    }

    async fn connected(&mut self) {
        self.wait("Connected", |e| matches!(e, Event::Connected(_)).then_some(())).await
    }

    async fn text(&mut self) -> (String, String) {
        self.wait("a text message", |e| match e {
            Event::Messages(batch) => batch.messages.iter().find_map(|m| {
                m.message
                    .conversation
                    .clone()
                    .map(|t| (m.info.source.sender.user.to_string(), t))
            }),
            _ => None,
        })
        .await
    }
}

async fn paired(net: &MockNetwork, name: &str, phone: &str) -> TestClient {
    let mut c = client(net, name, None).await;
    let qr = c.qr().await;
    net.scan_qr(&qr, Some(phone)).expect("scan");
    c.connected().await;
    c
}

fn text(s: &str) -> wa::Message {
    wa::Message {
        conversation: Some(s.to_string()),
        ..Default::default()
    }
}

#[tokio::test]
async fn two_clients_pair_and_exchange_text_with_receipts() {
    let net = MockNetwork::start().await.unwrap();
    let mut a = paired(&net, "Alice", "15550000001").await;
    let mut b = paired(&net, "Bob", "15550000002").await;
    let accounts = net.accounts();
    assert_eq!(accounts.len(), 2);
    assert!(accounts.iter().all(|a| a.devices.len() == 1 && a.devices[0].connected));

    let sent = a.client.send_message(Jid::pn("15550000002"), text("hello bob")).await.expect("send");
    assert_eq!(b.text().await, ("15550000001".to_string(), "hello bob".to_string()));
    let id = sent.message_id.clone();
    a.wait("delivery receipt", |e| match e {
        Event::Receipt(r) if r.message_ids.iter().any(|m| *m == id) => Some(()),
        _ => None,
    })
    .await;

    b.client.send_message(Jid::pn("15550000001"), text("hi alice")).await.expect("reply");
    assert_eq!(a.text().await, ("15550000002".to_string(), "hi alice".to_string()));
}

#[tokio::test]
async fn number_check_says_yes_and_no() {
    let net = MockNetwork::start().await.unwrap();
    let a = paired(&net, "Alice", "15550000011").await;
    net.add_account("15550000012", "Phone only");
    let res = a
        .client
        .contacts()
        .is_on_whatsapp(&[Jid::pn("15550000012"), Jid::pn("15559999999")])
        .await
        .expect("usync");
    let reg = |u: &str| res.iter().find(|r| r.jid.user.as_str() == u).map(|r| r.is_registered);
    assert_eq!(reg("15550000012"), Some(true));
    assert_eq!(reg("15559999999"), Some(false));
}

#[tokio::test]
async fn offline_device_gets_queued_messages_and_restart_needs_no_qr() {
    let net = MockNetwork::start().await.unwrap();
    let _ = tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_default()).with_test_writer().try_init();
    let a = paired(&net, "Alice", "15550000021").await;
    let b = paired(&net, "Bob", "15550000022").await;
    // Bob goes away; his store stays.
    let backend = b.backend.clone();
    b.client.disconnect().await;
    drop(b);
    a.client.send_message(Jid::pn("15550000022"), text("while you were out")).await.expect("send");
    let until = tokio::time::Instant::now() + DEADLINE;
    while net.accounts().iter().find(|x| x.phone == "15550000022").unwrap().devices[0].offline_queue == 0 {
        assert!(tokio::time::Instant::now() < until, "message never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A new process state on the same store: no QR, straight to Connected.
    let mut b2 = client(&net, "Bob", Some(backend)).await;
    let first = b2
        .wait("Connected or a QR", |e| match e {
            Event::Connected(_) => Some(true),
            Event::PairingQrCode(_) => Some(false),
            _ => None,
        })
        .await;
    assert!(first, "a paired store must not ask for a QR");
    assert_eq!(b2.text().await.1, "while you were out");
}

#[tokio::test]
async fn logout_and_unlink_end_logged_out() {
    let net = MockNetwork::start().await.unwrap();
    let mut a = paired(&net, "Alice", "15550000031").await;
    a.client.logout().await;
    a.wait("LoggedOut", |e| matches!(e, Event::LoggedOut(_)).then_some(())).await;
    assert!(net.accounts()[0].devices.is_empty(), "logout removed the companion");

    let mut b = paired(&net, "Bob", "15550000032").await;
    assert!(net.unlink("15550000032", 1));
    b.wait("LoggedOut after unlink", |e| matches!(e, Event::LoggedOut(_)).then_some(())).await;
}

#[tokio::test]
async fn dropped_socket_reconnects_by_itself() {
    let net = MockNetwork::start().await.unwrap();
    let mut a = paired(&net, "Alice", "15550000041").await;
    assert_eq!(net.drop_connections(None), 1);
    a.wait("Disconnected", |e| matches!(e, Event::Disconnected(_)).then_some(())).await;
    a.connected().await;
}
