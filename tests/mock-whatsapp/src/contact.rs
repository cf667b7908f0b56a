//! Simulated contacts: real whatsapp-rust clients paired to mock accounts, driven from
//! Rust, so tests can "be the other person" — send to an instance, read what it sent.

use crate::MockNetwork;
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

/// How long contact helpers wait for anything.
pub const CONTACT_DEADLINE: Duration = Duration::from_secs(40);

/// A real client on the mock network.
pub struct Contact {
    /// The account's phone number.
    pub phone: String,
    /// The whatsapp-rust client.
    pub client: Arc<Client>,
    /// Its storage (reuse it to "restart the process").
    pub backend: Arc<dyn Backend>,
    _handle: BotHandle,
    events: mpsc::Receiver<Arc<Event>>,
    /// Events received but not yet asked for: waits never drop events.
    backlog: Vec<Arc<Event>>,
}

/// Where a contact connects: the socket URL, the TLS connector when it is `wss://`
/// (trusting only the network's certificate), and the client for its media host.
pub struct Endpoint {
    pub ws_url: String,
    pub connector: Option<whatsapp_rust::transport::Connector>,
    pub http: crate::MockHttpClient,
}

/// A text a contact received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedText {
    /// Sender's user part (phone digits, or LID user).
    pub from: String,
    pub text: String,
    pub message_id: String,
    /// The chat: the sender for 1:1 messages, the group JID for group messages.
    pub chat: String,
    pub is_group: bool,
}

/// A message a contact received, as [`Contact::next_message`] shows it.
pub struct ReceivedMessage<'a> {
    pub id: String,
    /// The sender's JID, without device.
    pub sender: String,
    /// The chat's JID, without device.
    pub chat: String,
    /// The decrypted message, as sent (wrappers included).
    pub message: &'a wa::Message,
}

impl Contact {
    /// Starts a client on `net` with `backend` (fresh in-memory storage when `None`).
    /// It is not paired yet unless the backend holds a session.
    pub async fn start(
        net: &MockNetwork,
        phone: &str,
        push_name: &str,
        backend: Option<Arc<dyn Backend>>,
    ) -> Result<Self, String> {
        Self::start_at(net.endpoint(), phone, push_name, backend).await
    }

    /// Starts a client that connects to `endpoint` (a network in this process or
    /// another one, see [`crate::remote`]).
    pub async fn start_at(
        endpoint: Endpoint,
        phone: &str,
        push_name: &str,
        backend: Option<Arc<dyn Backend>>,
    ) -> Result<Self, String> {
        let backend = backend.unwrap_or_else(|| Arc::new(InMemoryBackend::new()));
        let (tx, rx) = mpsc::channel(4096);
        let mut transport = TokioWebSocketTransportFactory::new().with_url(endpoint.ws_url);
        if let Some(connector) = endpoint.connector {
            transport = transport.with_connector(connector);
        }
        let bot = Bot::builder()
            .with_backend_arc(backend.clone())
            .with_transport_factory(transport)
            .with_http_client(endpoint.http)
            .with_version((2, 3000, 0))
            .with_push_name(push_name)
            .skip_history_sync()
            .on_event(move |ev, _c| {
                let tx = tx.clone();
                async move {
                    // A full buffer means nobody reads this contact's events: dropping is fine.
                    let _ = tx.try_send(ev);
                }
            })
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let client = bot.client();
        client.set_force_active_delivery_receipts(true);
        Ok(Self {
            phone: phone.to_string(),
            client,
            backend,
            _handle: bot.spawn(),
            events: rx,
            backlog: Vec::new(),
        })
    }

    /// A fresh client at `endpoint` and the first QR code it shows, for a phone to scan.
    pub async fn start_for_qr(
        endpoint: Endpoint,
        phone: &str,
        push_name: &str,
    ) -> Result<(Self, String), String> {
        let mut c = Self::start_at(endpoint, phone, push_name, None).await?;
        let qr = c
            .wait("a QR code", |e| match e {
                Event::PairingQrCode(q) => Some(q.code.clone()),
                _ => None,
            })
            .await?;
        Ok((c, qr))
    }

    /// Waits for the first event `pick` accepts (from the backlog first).
    pub async fn wait<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> Result<T, String> {
        if let Some(i) = self.backlog.iter().position(|e| pick(e).is_some()) {
            let ev = self.backlog.remove(i);
            if let Some(v) = pick(&ev) {
                return Ok(v);
            }
        }
        let until = tokio::time::Instant::now() + CONTACT_DEADLINE;
        loop {
            let ev = tokio::time::timeout_at(until, self.events.recv())
                .await
                .map_err(|_| format!("timed out waiting for {what}"))?
                .ok_or_else(|| format!("event stream ended waiting for {what}"))?;
            if let Some(v) = pick(&ev) {
                return Ok(v);
            }
            self.backlog.push(ev);
        }
    }

    /// Waits for `Connected`.
    pub async fn connected(&mut self) -> Result<(), String> {
        self.wait("Connected", |e| {
            matches!(e, Event::Connected(_)).then_some(())
        })
        .await
    }

    /// Waits for the next text message.
    pub async fn next_text(&mut self) -> Result<ReceivedText, String> {
        self.wait("a text message", |e| match e {
            Event::Messages(batch) => batch.messages.iter().find_map(|m| {
                let text = m.message.conversation.clone().or_else(|| {
                    m.message
                        .extended_text_message
                        .as_option()
                        .and_then(|x| x.text.clone())
                })?;
                Some(ReceivedText {
                    from: m.info.source.sender.user.to_string(),
                    text,
                    message_id: m.info.id.to_string(),
                    chat: m.info.source.chat.to_string(),
                    is_group: m.info.source.is_group,
                })
            }),
            _ => None,
        })
        .await
    }

    /// Waits for the next message of any kind whose `pick` answer is `Some`, and
    /// returns that answer (messages `pick` refuses stay in the backlog).
    pub async fn next_message<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ReceivedMessage) -> Option<T>,
    ) -> Result<T, String> {
        self.wait(what, |e| match e {
            Event::Messages(batch) => batch.messages.iter().find_map(|m| {
                pick(&ReceivedMessage {
                    id: m.info.id.to_string(),
                    sender: m.info.source.sender.to_non_ad().to_string(),
                    chat: m.info.source.chat.to_non_ad().to_string(),
                    message: &m.message,
                })
            }),
            _ => None,
        })
        .await
    }

    /// Sends a text to a phone number; returns the message id.
    pub async fn send_text(&self, to_phone: &str, text: &str) -> Result<String, String> {
        let msg = wa::Message {
            conversation: Some(text.to_string()),
            ..Default::default()
        };
        self.client
            .send_message(Jid::pn(to_phone), msg)
            .await
            .map(|r| r.message_id)
            .map_err(|e| e.to_string())
    }
}

impl Contact {
    /// Sends a text to a group (`<id>@g.us`); returns the message id.
    pub async fn send_group_text(&self, group_jid: &str, text: &str) -> Result<String, String> {
        let jid: Jid = group_jid.parse().map_err(|_| "not a JID".to_string())?;
        let msg = wa::Message {
            conversation: Some(text.to_string()),
            ..Default::default()
        };
        self.client
            .send_message(jid, msg)
            .await
            .map(|r| r.message_id)
            .map_err(|e| e.to_string())
    }
}

impl MockNetwork {
    /// Where contacts connect: over TLS when the network serves it, else plain.
    pub fn endpoint(&self) -> Endpoint {
        match (self.wss_url(), self.tls_connector()) {
            (Some(ws_url), Some(connector)) => Endpoint {
                ws_url,
                connector: Some(connector),
                http: self.http_client(),
            },
            _ => Endpoint {
                ws_url: self.ws_url(),
                connector: None,
                http: self.http_client(),
            },
        }
    }

    /// A new simulated contact: a client paired by QR to the account `phone`, connected.
    pub async fn add_contact(&self, phone: &str, push_name: &str) -> Result<Contact, String> {
        let (mut c, qr) = Contact::start_for_qr(self.endpoint(), phone, push_name).await?;
        self.scan_qr(&qr, Some(phone)).map_err(|e| e.to_string())?;
        c.connected().await?;
        Ok(c)
    }
}
