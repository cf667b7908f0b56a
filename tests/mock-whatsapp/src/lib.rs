//! A mock WhatsApp network that speaks the real protocol (Noise over WebSocket, binary
//! nodes, QR pairing by a mock phone, prekeys, 1:1 routing with acks, receipts,
//! offline queues and redelivery of messages a device has not acked, media) to the
//! real, unmodified whatsapp-rust 0.7 client, on loopback only. Tests and the server's sandbox mode embed it; `cargo run -p
//! mock-whatsapp` runs it alone.
//!
//! Layout: [`contact`] (simulated contacts: real clients driven from Rust), [`remote`] (a
//! handle on a mock running in another process, through its admin API), [`noise`] (handshake responder, transport ciphers), `conn` (one client
//! connection: pairing, login, post-login queries), `routing` (usync, bundles,
//! messages, receipts), `registry` (accounts, devices, queues), this file (the HTTP
//! front: WebSocket, admin API, media endpoints, and the Rust API).
//!
//! Clients must be built with whatsapp-rust's `danger-skip-cert-chain-verify` feature
//! (the mock cannot sign with WhatsApp's root key) and, for media, with
//! [`MockHttpClient`], because whatsapp-rust hard-codes `https://` media URLs.

#![forbid(unsafe_code)]

mod appstate;
mod communities;
mod conn;
pub mod contact;
mod groups;
mod keys;
mod mex;
mod newsletters;
pub mod noise;
mod paircode;
mod phone;
mod privacy;
mod profile;
mod registry;
pub mod remote;
mod routing;
mod tls;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use registry::{Outbound, PendingRegistration, PendingSign, Registry};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use warp::Filter;
use whatsapp_rust::buffa::Message as _;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::Node;
use whatsapp_rust::waproto::whatsapp as wa;

/// State shared by every connection and the admin API.
#[derive(Clone)]
pub(crate) struct Shared(Arc<Inner>);

pub(crate) struct Inner {
    pub identity: noise::ServerIdentity,
    pub registry: Mutex<Registry>,
    pub next_conn: AtomicU64,
    /// Delay added before every outbound frame (fault injection), in ms.
    pub frame_delay: Arc<AtomicU64>,
    /// While true, media uploads are held open (not answered) until released.
    pub hold_uploads: AtomicBool,
    /// Wakes held uploads when the hold is released.
    pub uploads_released: tokio::sync::Notify,
    /// Serialises the phone's Signal work (its sessions live in the registry and are
    /// taken out while a message is encrypted or decrypted).
    pub phone_crypto: tokio::sync::Mutex<()>,
    /// Uploads received and not answered yet because of the hold.
    pub uploads_held: AtomicU64,
    /// Uploaded media by direct path.
    pub media: Mutex<HashMap<String, Vec<u8>>>,
    /// Direct paths of media expired by [`MockNetwork::expire_media`] (answered 410).
    pub media_expired: Mutex<std::collections::HashSet<String>>,
    pub addr: Mutex<Option<SocketAddr>>,
    /// The TLS front's address once TLS is on: media URLs then name it.
    pub tls_addr: Mutex<Option<SocketAddr>>,
    /// Whether IK hellos of paired devices are accepted (else: XXfallback).
    pub accept_ik: AtomicBool,
    /// Accounts are 1:1-LID-migrated: the `abt` props answer turns on
    /// `lid_one_on_one_migration_enabled`, so clients address 1:1 chats by LID.
    pub lid_migrated: AtomicBool,
    /// Handshakes completed by accepting IK.
    pub ik_accepted: AtomicU64,
    /// IK attempts answered with XXfallback and completed.
    pub xx_fallbacks: AtomicU64,
}

impl std::ops::Deref for Shared {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Shared {
    /// The media host (`IP:PORT`), as media URLs (`https://…`) name it: the TLS front
    /// once TLS is on, so clients fetch media over real TLS; before that the plain port
    /// (which [`MockHttpClient`] reaches by rewriting the scheme).
    pub(crate) fn media_host(&self) -> String {
        let tls = *self.tls_addr.lock().expect("tls addr lock");
        tls.or(*self.addr.lock().expect("addr lock"))
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    pub(crate) fn media_conn_node(&self) -> Node {
        let host = self.media_host();
        NodeBuilder::new("media_conn")
            .attr("auth", "mock-media-auth")
            .attr("ttl", "3600")
            .attr("auth_ttl", "21600")
            .attr("max_buckets", "12")
            .children([NodeBuilder::new("host").attr("hostname", host).build()])
            .build()
    }
}

/// Why a scan failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("QR string is malformed")]
    Malformed,
    #[error("no device is showing this QR code")]
    UnknownRef,
    #[error("a phone number is needed (digits, at least 8)")]
    NeedPhone,
    #[error("a pairing code is 8 letters or digits")]
    BadCode,
    #[error("no device asked for a pairing code for this number")]
    NoCodeRequest,
}

/// A running mock network.
pub struct MockNetwork {
    shared: Shared,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    tls: Option<tls::TlsFront>,
}

/// One account as the admin API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AccountInfo {
    pub phone: String,
    pub lid: String,
    pub push_name: String,
    /// Hex id of the app-state sync key the phone shares with new companions.
    pub app_state_key_id: String,
    pub devices: Vec<DeviceInfo>,
}

/// One companion device as the admin API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeviceInfo {
    pub id: u32,
    pub connected: bool,
    pub offline_queue: usize,
    /// Message stanzas written to this device for the first time.
    pub delivered: u64,
    /// Unacked messages written again at a later login.
    pub redelivered: u64,
    /// Messages the device acknowledged.
    pub acked: u64,
    /// Messages written and not acknowledged yet (redelivered at the next login).
    pub unacked: usize,
    pub prekeys_left: usize,
    /// The phone sent this device the app-state key share (Signal-encrypted).
    pub key_share_sent: bool,
}

/// One device's message acknowledgements (`GET /admin/devices/:phone/:device/acks`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AckStats {
    /// The account's phone number.
    pub phone: String,
    /// The companion device id.
    pub device: u32,
    /// Whether it has a live connection.
    pub connected: bool,
    /// Ids of the messages written to the device and not acknowledged yet, oldest
    /// first; they are redelivered (with `offline="1"`) at its next login.
    pub unacked: Vec<String>,
    /// Stanzas (messages and receipts) queued while it was offline.
    pub offline_queue: usize,
    /// Message stanzas written to a live connection for the first time (live, or out
    /// of the offline queue at login).
    pub delivered: u64,
    /// Unacked messages written again at a later login.
    pub redelivered: u64,
    /// Unacked messages cleared by the device's `<ack class="message">` or receipt.
    pub acked: u64,
    /// Acks that matched an unacked message but were ignored because acks are held.
    pub held_acks: u64,
    /// Whether its acks are being ignored now ([`MockNetwork::hold_acks`]).
    pub acks_held: bool,
    /// Whether the drop-before-ack fault is armed ([`MockNetwork::drop_before_ack`]).
    pub drop_before_ack: bool,
    /// Whether the next message will be damaged ([`MockNetwork::corrupt_next_message`]).
    pub corrupt_next: bool,
    /// Retry receipts the device sent (messages it could not decrypt).
    pub retry_receipts: u64,
}

/// Counts of paired-device handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HandshakeStats {
    /// Completed by accepting the client's IK hello.
    pub ik_accepted: u64,
    /// IK attempts answered with XXfallback and completed.
    pub xx_fallbacks: u64,
}

fn handshake_stats(shared: &Shared) -> HandshakeStats {
    HandshakeStats {
        ik_accepted: shared.ik_accepted.load(Ordering::Relaxed),
        xx_fallbacks: shared.xx_fallbacks.load(Ordering::Relaxed),
    }
}

impl MockNetwork {
    /// Starts on 127.0.0.1 with an OS-chosen port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr`, which must be a loopback address.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the mock network only listens on loopback",
            ));
        }
        let shared = Shared(Arc::new(Inner {
            identity: noise::ServerIdentity::generate(),
            registry: Mutex::new(Registry::default()),
            next_conn: AtomicU64::new(1),
            frame_delay: Arc::new(AtomicU64::new(0)),
            hold_uploads: AtomicBool::new(false),
            uploads_released: tokio::sync::Notify::new(),
            phone_crypto: tokio::sync::Mutex::new(()),
            uploads_held: AtomicU64::new(0),
            media: Mutex::new(HashMap::new()),
            media_expired: Mutex::new(std::collections::HashSet::new()),
            addr: Mutex::new(None),
            tls_addr: Mutex::new(None),
            accept_ik: AtomicBool::new(true),
            lid_migrated: AtomicBool::new(false),
            ik_accepted: AtomicU64::new(0),
            xx_fallbacks: AtomicU64::new(0),
        }));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        *shared.addr.lock().expect("addr lock") = Some(addr);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let routes = routes(shared.clone());
        tokio::spawn(async move {
            warp::serve(routes)
                .incoming(listener)
                .graceful(async move {
                    let _ = rx.await;
                })
                .run()
                .await;
        });
        Ok(Self {
            shared,
            addr,
            shutdown: Some(tx),
            tls: None,
        })
    }

    /// Also serves everything over TLS on a second loopback port, with a self-signed
    /// certificate made now. Contacts started afterwards connect over `wss://`.
    pub async fn enable_tls(&mut self) -> std::io::Result<()> {
        if self.tls.is_none() {
            let front = tls::start(self.addr).await?;
            *self.shared.tls_addr.lock().expect("tls addr lock") = Some(front.addr);
            self.tls = Some(front);
        }
        Ok(())
    }

    /// `wss://127.0.0.1:TLSPORT/ws/chat` once TLS is enabled.
    pub fn wss_url(&self) -> Option<String> {
        self.tls
            .as_ref()
            .map(|t| format!("wss://{}/ws/chat", t.addr))
    }

    /// `https://127.0.0.1:TLSPORT` (the admin API over TLS) once TLS is enabled.
    pub fn https_base_url(&self) -> Option<String> {
        self.tls.as_ref().map(|t| format!("https://{}", t.addr))
    }

    /// The TLS certificate (PEM), for clients that should trust it.
    pub fn tls_cert_pem(&self) -> Option<String> {
        self.tls.as_ref().map(|t| t.cert_pem.clone())
    }

    /// A whatsapp-rust transport connector that trusts exactly this network's TLS
    /// certificate (for `TokioWebSocketTransportFactory::with_connector`).
    pub fn tls_connector(&self) -> Option<whatsapp_rust::transport::Connector> {
        let config = self.tls_client_config()?;
        Some(whatsapp_rust::transport::Connector::Rustls(
            tokio_rustls::TlsConnector::from(Arc::new(config)),
        ))
    }

    /// A rustls client config whose only root is this network's certificate.
    pub fn tls_client_config(&self) -> Option<rustls::ClientConfig> {
        tls::client_config(&self.tls.as_ref()?.cert).ok()
    }

    /// TLS handshakes the TLS front completed.
    pub fn tls_handshakes(&self) -> u64 {
        self.tls
            .as_ref()
            .map(|t| t.handshakes.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// `ws://127.0.0.1:PORT/ws/chat`, for `TokioWebSocketTransportFactory::with_url`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws/chat", self.addr)
    }

    /// `http://127.0.0.1:PORT`, the admin API's base.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An HTTP client for whatsapp-rust that reaches this network's media host.
    pub fn http_client(&self) -> MockHttpClient {
        let client = MockHttpClient::new(self.addr);
        match (&self.tls, self.tls_client_config()) {
            (Some(front), Some(config)) => client.with_tls(front.addr, config),
            _ => client,
        }
    }

    /// The mock phone of `phone` scans `qr`. Without a phone number, a device whose
    /// push name matches an existing account joins that account, and any other gets a
    /// new account with a fresh number. Returns the number that paired.
    pub fn scan_qr(&self, qr: &str, phone: Option<&str>) -> Result<String, ScanError> {
        scan(&self.shared, qr, phone)
    }

    /// Creates (or finds) an account without any device, e.g. a number that is "on
    /// WhatsApp" only through its phone.
    pub fn add_account(&self, phone: &str, push_name: &str) {
        let mut reg = self.shared.registry.lock().expect("registry lock");
        reg.account_mut(phone, Some(push_name));
    }

    /// Every account.
    pub fn accounts(&self) -> Vec<AccountInfo> {
        accounts(&self.shared)
    }

    /// The phone removes a companion device: it is told it is logged out.
    pub fn unlink(&self, phone: &str, device: u32) -> bool {
        unlink(&self.shared, phone, device)
    }

    /// Drops the sockets of `phone`'s devices, or of every device.
    pub fn drop_connections(&self, phone: Option<&str>) -> usize {
        drop_connections(&self.shared, phone)
    }

    /// Replaces the stream of a device (as if another client took over).
    pub fn replace_stream(&self, phone: &str, device: u32) -> bool {
        send_to_device(&self.shared, phone, device, conflict("replaced"))
    }

    /// Refuses logins (failure 503) for `for_`.
    pub fn refuse_logins(&self, for_: std::time::Duration) {
        let mut reg = self.shared.registry.lock().expect("registry lock");
        reg.faults.refuse_logins_until = Some(std::time::Instant::now() + for_);
    }

    /// Creates a group named `subject` of `creator` and `members` (all registered
    /// accounts); returns its JID (`<id>@g.us`).
    pub fn create_group(
        &self,
        subject: &str,
        creator: &str,
        members: &[&str],
    ) -> Result<String, String> {
        let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
        routing::create_group(&self.shared, subject, creator, &members)
    }

    /// The accounts subscribed to `phone`'s presence (each subscribing account once).
    pub fn presence_subscribers(&self, phone: &str) -> Vec<String> {
        let reg = self.shared.registry.lock().expect("registry lock");
        let mut subs: Vec<String> = reg
            .presence_subs
            .get(phone)
            .map(|s| s.iter().map(|(p, _)| p.clone()).collect())
            .unwrap_or_default();
        subs.dedup();
        subs
    }

    /// The presence stanzas `phone`'s devices sent, oldest first (`available`, ...).
    pub fn presences(&self, phone: &str) -> Vec<String> {
        let reg = self.shared.registry.lock().expect("registry lock");
        reg.presence_seen.get(phone).cloned().unwrap_or_default()
    }

    /// Forgets the key bundle `phone`'s device `device` uploaded, as if the server had
    /// lost it: its key digest answers 404 until the device uploads its keys again.
    /// False: no such device.
    pub fn forget_key_bundle(&self, phone: &str, device: u32) -> bool {
        let mut reg = self.shared.registry.lock().expect("registry lock");
        match reg
            .accounts
            .get_mut(phone)
            .and_then(|a| a.devices.get_mut(&device))
        {
            Some(d) => {
                d.keys = registry::DeviceKeys::default();
                true
            }
            None => false,
        }
    }

    /// Sends `phone`'s device `device` the server's "check your key bundle"
    /// notification (`<notification type="encrypt"><digest/>`). False: not connected.
    pub fn request_digest(&self, phone: &str, device: u32) -> bool {
        let Some(conn) = live_conn(&self.shared, phone, device) else {
            return false;
        };
        let id = self.shared.next_conn.fetch_add(1, Ordering::Relaxed);
        conn.tx
            .try_send(Outbound::Node(keys::digest_notification(id)))
            .is_ok()
    }

    /// Makes prekey-bundle fetches fail (so a first message to a device cannot be
    /// encrypted) while `on`.
    pub fn fail_prekey_fetch(&self, on: bool) {
        self.shared
            .registry
            .lock()
            .expect("registry lock")
            .faults
            .fail_prekey_fetch = on;
    }

    /// Makes media uploads fail with HTTP 500 while `on`.
    pub fn fail_uploads(&self, on: bool) {
        self.shared
            .registry
            .lock()
            .expect("registry lock")
            .faults
            .fail_uploads = on;
    }

    /// While `on`, acks (`<ack class="message">` and receipts) from `phone`'s device
    /// `device`, or from every device of the account with `None`, are ignored: the
    /// messages stay unacked and are redelivered at the device's next login. Off for
    /// one device releases it even from an account-wide hold; off with `None`
    /// releases every hold of the account. False (nothing changed) when there is no
    /// such account or device.
    pub fn hold_acks(&self, phone: &str, device: Option<u32>, on: bool) -> bool {
        hold_acks(&self.shared, phone, device, on)
    }

    /// Arms (or with `on` false disarms) a one-shot fault on `phone`'s device
    /// `device`, or on every device of the account with `None`: the next message
    /// stanza delivered to it (live, or in the backlog at its next login) is written
    /// and the socket closed right after it, before the client can ack. The message
    /// stays unacked and is redelivered at the next login. False when there is no
    /// such account or device.
    pub fn drop_before_ack(&self, phone: &str, device: Option<u32>, on: bool) -> bool {
        drop_before_ack(&self.shared, phone, device, on)
    }

    /// One-shot fault: the next message stanza to one device (or each device) of
    /// `phone` arrives with its ciphertext damaged; the device cannot decrypt it,
    /// sends the sender a retry receipt, and the sender encrypts it again. False for
    /// an unknown account or device.
    pub fn corrupt_next_message(&self, phone: &str, device: Option<u32>, on: bool) -> bool {
        corrupt_next_message(&self.shared, phone, device, on)
    }

    /// Ids of the messages written to `phone`'s device `device` and not acknowledged
    /// yet, oldest first (empty for an unknown device).
    pub fn unacked(&self, phone: &str, device: u32) -> Vec<String> {
        ack_stats(&self.shared, phone, device)
            .map(|s| s.unacked)
            .unwrap_or_default()
    }

    /// One device's ack tracking: unacked ids and the delivered, redelivered, acked
    /// and held counters; `None` for an unknown device.
    pub fn ack_stats(&self, phone: &str, device: u32) -> Option<AckStats> {
        ack_stats(&self.shared, phone, device)
    }

    /// The person types `code` (shown by a companion that asked for a pairing code for
    /// `phone`) on that phone. Pairing then completes as after a QR scan; a wrong code
    /// makes the companion's next step fail.
    pub fn enter_pairing_code(&self, phone: &str, code: &str) -> Result<(), ScanError> {
        paircode::enter_code(&self.shared, phone, code)
    }

    /// Whether paired devices reconnecting with IK are accepted (the default) or
    /// answered with XXfallback, as WhatsApp does after rotating its static key.
    /// Whether accounts are 1:1-LID-migrated (off by default): with it on, the props
    /// every client fetches at login enable `lid_one_on_one_migration_enabled`, and
    /// clients address 1:1 chats by LID (the other side then sees the sender's LID
    /// with `sender_pn` beside it). Clients already connected pick it up at their
    /// next login.
    pub fn lid_migration(&self, on: bool) {
        self.shared.lid_migrated.store(on, Ordering::Relaxed);
    }

    /// While `on`, `phone` refuses 1:1 messages that do not carry the privacy token it
    /// granted their sender (a `463` nack, nothing delivered). False for an unknown
    /// account.
    pub fn require_tc_token(&self, phone: &str, on: bool) -> bool {
        require_tc_token(&self.shared, phone, on)
    }

    /// The phone sets an app-state action (any of `wacore::appstate::schemas`): `value`
    /// at the index `args` (the schema's non-literal index parts, in order), one patch
    /// in the schema's collection, encrypted and MACed with the account's current key
    /// as a client builds it. With `notify` the account's devices get a `server_sync`
    /// notification; without, they see the patch at their next sync or as a 409 when
    /// they upload on the old version. Returns the collection's new version.
    pub async fn phone_app_state_set(
        &self,
        phone: &str,
        schema: &whatsapp_rust::wacore::appstate::schemas::Schema,
        args: &[&str],
        value: &wa::SyncActionValue,
        notify: bool,
    ) -> Result<u64, String> {
        let (version, out) = {
            let mut reg = self.shared.registry.lock().expect("registry lock");
            appstate::phone_set(&mut reg, phone, schema, args, value, notify)?
        };
        for d in out {
            d.send().await;
        }
        Ok(version)
    }

    /// The phone moves to a new app-state key (hex id returned); patches it writes
    /// from now on use it. With `share` every companion gets the key at once; without,
    /// a companion meeting such a patch has to request the key from the phone.
    pub async fn rotate_app_state_key(&self, phone: &str, share: bool) -> Result<String, String> {
        let id = phone::rotate_app_state_key(&self.shared, phone, share).await?;
        Ok(id.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The phone leaves the next `n` app-state key requests of `phone`'s companions
    /// unanswered (a phone that is away). False for an unknown account.
    pub fn ignore_key_requests(&self, phone: &str, n: u64) -> bool {
        let mut reg = self.shared.registry.lock().expect("registry lock");
        match reg.accounts.get_mut(phone) {
            Some(a) => {
                a.app_state.ignore_key_requests = n;
                true
            }
            None => false,
        }
    }

    /// The phone's server re-announces every written app-state collection to all of
    /// `phone`'s devices (`server_sync`), as for a device that may have missed one.
    pub async fn announce_app_state(&self, phone: &str) {
        let out = {
            let mut reg = self.shared.registry.lock().expect("registry lock");
            appstate::announce(&mut reg, phone)
        };
        for d in out {
            d.send().await;
        }
    }

    /// The app-state collections `phone:device` has fetched since it paired.
    pub fn app_state_fetched(&self, phone: &str, device: u32) -> Vec<String> {
        let reg = self.shared.registry.lock().expect("registry lock");
        reg.accounts
            .get(phone)
            .and_then(|a| a.devices.get(&device))
            .map(|d| d.app_state_fetched.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// App-state key requests the phone of `phone` has received so far.
    pub fn app_state_key_requests(&self, phone: &str) -> u64 {
        let reg = self.shared.registry.lock().expect("registry lock");
        reg.accounts
            .get(phone)
            .map_or(0, |a| a.app_state.key_requests)
    }

    /// Each app-state collection of `phone` that has been written to, and its version.
    pub fn app_state_versions(&self, phone: &str) -> std::collections::BTreeMap<String, u64> {
        let reg = self.shared.registry.lock().expect("registry lock");
        reg.accounts
            .get(phone)
            .map(|a| appstate::versions(&a.app_state))
            .unwrap_or_default()
    }

    pub fn accept_ik(&self, on: bool) {
        self.shared.accept_ik.store(on, Ordering::Relaxed);
    }

    /// How handshakes of paired devices went so far.
    pub fn handshake_stats(&self) -> HandshakeStats {
        handshake_stats(&self.shared)
    }

    /// While `on`, media uploads are received but not answered (the upload stays in
    /// flight at the client) until the hold is turned off.
    pub fn hold_uploads(&self, on: bool) {
        self.shared.hold_uploads.store(on, Ordering::SeqCst);
        if !on {
            self.shared.uploads_released.notify_waiters();
        }
    }

    /// Expires an uploaded file (by its direct path, `/v/t62/...`), as WhatsApp's CDN
    /// does after a while: downloads answer 410 from then on. False for an unknown path.
    pub fn expire_media(&self, direct_path: &str) -> bool {
        let gone = self
            .shared
            .media
            .lock()
            .expect("media lock")
            .remove(direct_path)
            .is_some();
        if gone {
            self.shared
                .media_expired
                .lock()
                .expect("media lock")
                .insert(direct_path.to_string());
        }
        gone
    }

    /// Uploads currently held open by [`MockNetwork::hold_uploads`].
    pub fn uploads_held(&self) -> u64 {
        self.shared.uploads_held.load(Ordering::SeqCst)
    }

    /// Delays every outbound frame by `ms` (latency: frames are written `ms` after
    /// they are queued, in order, without capping throughput).
    pub fn delay_frames(&self, ms: u64) {
        self.shared.frame_delay.store(ms, Ordering::Relaxed);
    }

    /// Stops serving.
    pub fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for MockNetwork {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn conflict(kind: &str) -> Node {
    NodeBuilder::new("stream:error")
        .children([NodeBuilder::new("conflict")
            .attr("type", kind.to_string())
            .build()])
        .build()
}

/// The connection `phone`'s device `device` is on, if any.
fn live_conn(shared: &Shared, phone: &str, device: u32) -> Option<registry::ConnHandle> {
    let reg = shared.registry.lock().expect("registry lock");
    reg.accounts
        .get(phone)
        .and_then(|a| a.devices.get(&device))
        .and_then(|d| d.conn.clone())
}

fn send_to_device(shared: &Shared, phone: &str, device: u32, node: Node) -> bool {
    let Some(conn) = live_conn(shared, phone, device) else {
        return false;
    };
    conn.tx.try_send(Outbound::Node(node)).is_ok() && conn.tx.try_send(Outbound::Close).is_ok()
}

fn unlink(shared: &Shared, phone: &str, device: u32) -> bool {
    let conn = {
        let mut reg = shared.registry.lock().expect("registry lock");
        let Some(acc) = reg.accounts.get_mut(phone) else {
            return false;
        };
        let Some(d) = acc.devices.remove(&device) else {
            return false;
        };
        d.conn
    };
    if let Some(c) = conn {
        let _ = c.tx.try_send(Outbound::Node(conflict("device_removed")));
        let _ = c.tx.try_send(Outbound::Close);
    }
    true
}

fn drop_connections(shared: &Shared, phone: Option<&str>) -> usize {
    let conns: Vec<_> = {
        let reg = shared.registry.lock().expect("registry lock");
        reg.accounts
            .values()
            .filter(|a| phone.is_none_or(|p| a.phone == p))
            .flat_map(|a| a.devices.values().filter_map(|d| d.conn.clone()))
            .collect()
    };
    for c in &conns {
        let _ = c.tx.try_send(Outbound::Close);
    }
    conns.len()
}

fn hold_acks(shared: &Shared, phone: &str, device: Option<u32>, on: bool) -> bool {
    let mut reg = shared.registry.lock().expect("registry lock");
    let Some(acc) = reg.accounts.get(phone) else {
        return false;
    };
    let others: Vec<u32> = match device {
        Some(d) if !acc.devices.contains_key(&d) => return false,
        Some(d) => acc.devices.keys().copied().filter(|x| *x != d).collect(),
        None => Vec::new(),
    };
    let holds = &mut reg.faults.hold_acks;
    let account_wide = (phone.to_string(), None);
    match (device, on) {
        (d, true) => {
            holds.insert((phone.to_string(), d));
        }
        (None, false) => holds.retain(|(p, _)| p != phone),
        (Some(d), false) => {
            holds.remove(&(phone.to_string(), Some(d)));
            // An account-wide hold now covers only the other devices.
            if holds.remove(&account_wide) {
                for o in others {
                    holds.insert((phone.to_string(), Some(o)));
                }
            }
        }
    }
    true
}

/// Applies `set` to one device of `phone`, or to each: false for an unknown account or
/// device.
fn for_devices(
    shared: &Shared,
    phone: &str,
    device: Option<u32>,
    set: impl Fn(&mut registry::Device),
) -> bool {
    let mut reg = shared.registry.lock().expect("registry lock");
    let Some(acc) = reg.accounts.get_mut(phone) else {
        return false;
    };
    let mut any = false;
    for d in acc
        .devices
        .values_mut()
        .filter(|d| device.is_none_or(|x| x == d.id))
    {
        set(d);
        any = true;
    }
    any || device.is_none()
}

fn drop_before_ack(shared: &Shared, phone: &str, device: Option<u32>, on: bool) -> bool {
    for_devices(shared, phone, device, |d| d.drop_before_ack = on)
}

fn corrupt_next_message(shared: &Shared, phone: &str, device: Option<u32>, on: bool) -> bool {
    for_devices(shared, phone, device, |d| d.corrupt_next = on)
}

fn ack_stats(shared: &Shared, phone: &str, device: u32) -> Option<AckStats> {
    let reg = shared.registry.lock().expect("registry lock");
    let d = reg.accounts.get(phone)?.devices.get(&device)?;
    Some(AckStats {
        phone: phone.to_string(),
        device,
        connected: d.conn.is_some(),
        unacked: d.unacked.iter().map(|u| u.id.clone()).collect(),
        offline_queue: d.offline.len(),
        delivered: d.delivered,
        redelivered: d.redelivered,
        acked: d.acked,
        held_acks: d.held_acks,
        acks_held: reg.faults.acks_held(phone, device),
        drop_before_ack: d.drop_before_ack,
        corrupt_next: d.corrupt_next,
        retry_receipts: d.retry_receipts,
    })
}

fn accounts(shared: &Shared) -> Vec<AccountInfo> {
    let reg = shared.registry.lock().expect("registry lock");
    let mut v: Vec<AccountInfo> = reg
        .accounts
        .values()
        .map(|a| AccountInfo {
            phone: a.phone.clone(),
            lid: a.lid.clone(),
            push_name: a.push_name.clone(),
            app_state_key_id: a
                .app_state_key
                .id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            devices: a
                .devices
                .values()
                .map(|d| DeviceInfo {
                    id: d.id,
                    connected: d.conn.is_some(),
                    offline_queue: d.offline.len(),
                    delivered: d.delivered,
                    redelivered: d.redelivered,
                    acked: d.acked,
                    unacked: d.unacked.len(),
                    prekeys_left: d.keys.prekeys.len(),
                    key_share_sent: d.key_share_sent,
                })
                .collect(),
        })
        .collect();
    v.sort_by(|a, b| a.phone.cmp(&b.phone));
    v
}

/// The mock phone's half of pairing (PROTOCOL.md §2.4).
fn scan(shared: &Shared, qr: &str, phone: Option<&str>) -> Result<String, ScanError> {
    let parts: Vec<&str> = qr.trim().split(',').collect();
    if parts.len() < 4 {
        return Err(ScanError::Malformed);
    }
    let b64 = |s: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| ScanError::Malformed)
    };
    let (qr_ref, identity_pub, adv_secret) = (parts[0], b64(parts[2])?, b64(parts[3])?);
    let mut reg = shared.registry.lock().expect("registry lock");
    let pending = reg
        .pending
        .get(qr_ref)
        .cloned()
        .ok_or(ScanError::UnknownRef)?;
    let phone = match phone {
        Some(p) if p.len() >= 8 && p.chars().all(|c| c.is_ascii_digit()) => p.to_string(),
        Some(_) => return Err(ScanError::NeedPhone),
        None => {
            // The same push name joins its account (another device); a new one (or
            // none) is a new person: a new account with a fresh number.
            let name = pending.push_name.clone().unwrap_or_default();
            let known = reg
                .accounts
                .values()
                .find(|a| !name.is_empty() && a.push_name == name)
                .map(|a| a.phone.clone());
            known.unwrap_or_else(|| reg.fresh_number())
        }
    };
    let node = pair_success(&mut reg, &pending, &phone, &identity_pub, &adv_secret)?;
    drop(reg);
    let _ = pending.conn.tx.try_send(Outbound::Node(node));
    Ok(phone)
}

/// The phone's half of pairing once it knows the companion's identity key and the ADV
/// secret (from the QR code, or derived in the pairing-code flow): signs the device
/// identity, records the pending sign, and returns the `pair-success` to send.
pub(crate) fn pair_success(
    reg: &mut Registry,
    pending: &PendingRegistration,
    phone: &str,
    identity_pub: &[u8],
    adv_secret: &[u8],
) -> Result<Node, ScanError> {
    let phone = phone.to_string();
    // This device's refs are used up.
    reg.pending.retain(|_, p| p.conn.id != pending.conn.id);
    let acc = reg.account_mut(&phone, pending.push_name.as_deref());
    let device_id = acc.next_device;
    acc.next_device += 1;
    let key_index = device_id;
    let details = wa::ADVDeviceIdentity {
        raw_id: Some(acc.raw_id),
        timestamp: Some(conn::now()),
        key_index: Some(key_index),
        account_type: Some(wa::ADVEncryptionType::E2EE),
        device_type: Some(wa::ADVEncryptionType::E2EE),
    }
    .encode_to_vec();
    let mut to_sign = vec![6u8, 0];
    to_sign.extend_from_slice(&details);
    to_sign.extend_from_slice(identity_pub);
    let account_signature = acc
        .account_key
        .calculate_signature(&to_sign, &mut rand::rng())
        .map_err(|_| ScanError::Malformed)?;
    let signed = wa::ADVSignedDeviceIdentity {
        details: Some(details),
        account_signature_key: Some(acc.account_key.public_key.public_key_bytes().to_vec()),
        account_signature: Some(account_signature.to_vec()),
        device_signature: None,
    }
    .encode_to_vec();
    let mut mac = Hmac::<Sha256>::new_from_slice(adv_secret).map_err(|_| ScanError::Malformed)?;
    mac.update(&signed);
    let container = wa::ADVSignedDeviceIdentityHMAC {
        details: Some(signed),
        hmac: Some(mac.finalize().into_bytes().to_vec()),
        account_type: Some(wa::ADVEncryptionType::E2EE),
    }
    .encode_to_vec();
    let lid = acc.lid.clone();
    let push_name = acc.push_name.clone();
    let iq_id = format!("ps{}x{}", pending.conn.id, device_id);
    reg.signing.insert(
        iq_id.clone(),
        PendingSign {
            phone: phone.clone(),
            device_id,
            key_index,
            noise_pub: pending.noise_pub,
            keys: pending.keys.clone(),
        },
    );
    let node = NodeBuilder::new("iq")
        .attr("from", "s.whatsapp.net")
        .attr("type", "set")
        .attr("id", iq_id)
        .attr("xmlns", "md")
        .attr("t", conn::now().to_string())
        .children([NodeBuilder::new("pair-success")
            .children([
                NodeBuilder::new("device-identity").bytes(container).build(),
                NodeBuilder::new("platform").attr("name", "android").build(),
                NodeBuilder::new("device")
                    .attr("jid", format!("{phone}:{device_id}@s.whatsapp.net"))
                    .attr("lid", format!("{lid}:{device_id}@lid"))
                    .build(),
                NodeBuilder::new("biz").attr("name", push_name).build(),
            ])
            .build()])
        .build();
    Ok(node)
}

#[derive(Deserialize)]
struct ScanBody {
    qr: String,
    phone: Option<String>,
}

#[derive(Deserialize)]
struct DeviceRef {
    phone: String,
    device: u32,
}

#[derive(Deserialize)]
struct GroupBody {
    name: String,
    participants: Vec<String>,
    creator: Option<String>,
}

#[derive(Deserialize)]
struct DropBody {
    phone: Option<String>,
}

#[derive(serde::Deserialize)]
struct CodeBody {
    phone: String,
    code: String,
}

#[derive(serde::Deserialize)]
struct IkBody {
    accept: bool,
}

/// Body of a per-account switch (`privacy/require-tctoken`).
#[derive(serde::Deserialize)]
struct PhoneSwitchBody {
    phone: String,
    on: bool,
}

fn require_tc_token(shared: &Shared, phone: &str, on: bool) -> bool {
    let mut reg = shared.registry.lock().expect("registry lock");
    if !reg.accounts.contains_key(phone) {
        return false;
    }
    if on {
        reg.tc_required.insert(phone.to_string());
    } else {
        reg.tc_required.remove(phone);
    }
    true
}

/// Body of a plain switch (`lid-migration`).
#[derive(serde::Deserialize)]
struct OnBody {
    on: bool,
}

/// Body of the per-device fault switches (`hold-acks`, `drop-before-ack`).
#[derive(serde::Deserialize)]
struct DeviceFaultBody {
    phone: String,
    device: Option<u32>,
    on: bool,
}

fn reply(status: u16, body: serde_json::Value) -> warp::reply::Response {
    use warp::Reply as _;
    let code = warp::http::StatusCode::from_u16(status).unwrap_or(warp::http::StatusCode::OK);
    warp::reply::with_status(warp::reply::json(&body), code).into_response()
}

fn routes(
    shared: Shared,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    use warp::Reply as _;
    let with = {
        let s = shared.clone();
        warp::any().map(move || s.clone())
    };
    let ws = warp::path!("ws" / "chat")
        .and(warp::ws())
        .and(with.clone())
        .map(|ws: warp::ws::Ws, s: Shared| {
            ws.max_message_size(64 << 20)
                .on_upgrade(move |socket| conn::serve(s, socket))
                .into_response()
        });
    let scan_qr = warp::path!("admin" / "mock-phone" / "scan-qr")
        .and(warp::post())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::bytes())
        .and(with.clone())
        .map(|ct: Option<String>, body: bytes::Bytes, s: Shared| {
            let text = String::from_utf8_lossy(&body).to_string();
            let (qr, phone) = if ct
                .as_deref()
                .is_some_and(|c| c.starts_with("application/json"))
            {
                match serde_json::from_str::<ScanBody>(&text) {
                    Ok(b) => (b.qr, b.phone),
                    Err(_) => return reply(400, json!({"error": "invalid JSON"})),
                }
            } else {
                (text, None)
            };
            match scan(&s, &qr, phone.as_deref()) {
                Ok(phone) => reply(200, json!({"ok": true, "phone": phone})),
                Err(e) => reply(400, json!({"error": e.to_string()})),
            }
        });
    let list = warp::path!("admin" / "accounts")
        .and(warp::get())
        .and(with.clone())
        .map(|s: Shared| reply(200, json!(accounts(&s))));
    let unlink_r = warp::path!("admin" / "unlink")
        .and(warp::post())
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::json())
        .and(with.clone())
        .map(|b: DeviceRef, s: Shared| {
            reply(200, json!({"unlinked": unlink(&s, &b.phone, b.device)}))
        });
    let drop_r = warp::path!("admin" / "faults" / "drop")
        .and(warp::post())
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::json())
        .and(with.clone())
        .map(|b: DropBody, s: Shared| {
            reply(
                200,
                json!({"dropped": drop_connections(&s, b.phone.as_deref())}),
            )
        });
    let code_r = warp::path!("admin" / "mock-phone" / "enter-code")
        .and(warp::post())
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::json())
        .and(with.clone())
        .map(
            |b: CodeBody, s: Shared| match paircode::enter_code(&s, &b.phone, &b.code) {
                Ok(()) => reply(200, json!({"entered": true})),
                Err(e) => reply(400, json!({"error": e.to_string()})),
            },
        );
    let ik_r = warp::path!("admin" / "faults" / "ik")
        .and(warp::post())
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::json())
        .and(with.clone())
        .map(|b: IkBody, s: Shared| {
            s.accept_ik.store(b.accept, Ordering::Relaxed);
            reply(
                200,
                json!({"accept_ik": b.accept, "handshakes": handshake_stats(&s)}),
            )
        });
    let tc_r = warp::path!("admin" / "privacy" / "require-tctoken")
        .and(warp::post())
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::json())
        .and(with.clone())
        .map(|b: PhoneSwitchBody, s: Shared| {
            if require_tc_token(&s, &b.phone, b.on) {
                reply(200, json!({"phone": b.phone, "require_tctoken": b.on}))
            } else {
                reply(404, json!({"error": "no such account"}))
            }
        });
    let app_state_r = warp::path!("admin" / "mock-phone" / "app-state")
        .and(warp::post())
        .and(warp::body::content_length_limit(16 * 1024))
        .and(warp::body::json())
        .and(with.clone())
        .then(|b: appstate::AdminBody, s: Shared| async move {
            let (status, body) = appstate::admin(&s, b).await;
            reply(status, body)
        });
    let app_state_view_r = warp::path!("admin" / "mock-phone" / "app-state" / String)
        .and(warp::get())
        .and(with.clone())
        .map(
            |phone: String, s: Shared| match appstate::admin_view(&s, &phone) {
                Some(v) => reply(200, v),
                None => reply(404, json!({"error": "no such account"})),
            },
        );
    let lid_r = warp::path!("admin" / "lid-migration")
        .and(warp::post())
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::json())
        .and(with.clone())
        .map(|b: OnBody, s: Shared| {
            s.lid_migrated.store(b.on, Ordering::Relaxed);
            reply(200, json!({"lid_migrated": b.on}))
        });
    // `POST /admin/faults/<name>` with a `DeviceFaultBody`.
    let device_fault = |name: &'static str, apply: fn(&Shared, &str, Option<u32>, bool) -> bool| {
        warp::path("admin")
            .and(warp::path("faults"))
            .and(warp::path(name))
            .and(warp::path::end())
            .and(warp::post())
            .and(warp::body::content_length_limit(4096))
            .and(warp::body::json())
            .and(with.clone())
            .map(move |b: DeviceFaultBody, s: Shared| {
                if apply(&s, &b.phone, b.device, b.on) {
                    reply(
                        200,
                        json!({"phone": b.phone, "device": b.device, name: b.on}),
                    )
                } else {
                    reply(404, json!({"error": "no such account or device"}))
                }
            })
    };
    let hold_r = device_fault("hold-acks", hold_acks);
    let drop_ack_r = device_fault("drop-before-ack", drop_before_ack);
    let corrupt_r = device_fault("corrupt-next-message", corrupt_next_message);
    let acks_r = warp::path!("admin" / "devices" / String / u32 / "acks")
        .and(warp::get())
        .and(with.clone())
        .map(
            |phone: String, device: u32, s: Shared| match ack_stats(&s, &phone, device) {
                Some(st) => reply(200, json!(st)),
                None => reply(404, json!({"error": "no such account or device"})),
            },
        );
    let groups_r = warp::path!("admin" / "groups")
        .and(warp::post())
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::json())
        .and(with.clone())
        .map(|b: GroupBody, s: Shared| {
            let Some(creator) = b
                .creator
                .clone()
                .or_else(|| b.participants.first().cloned())
            else {
                return reply(400, json!({"error": "participants is empty"}));
            };
            match routing::create_group(&s, &b.name, &creator, &b.participants) {
                Ok(jid) => reply(200, json!({"jid": jid})),
                Err(e) => reply(400, json!({"error": e})),
            }
        });
    let upload = warp::path("mms")
        .and(warp::path::param::<String>())
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::post())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::body::content_length_limit(200 << 20))
        .and(warp::body::bytes())
        .and(with.clone())
        .then(
            |kind: String,
             token: String,
             q: HashMap<String, String>,
             body: bytes::Bytes,
             s: Shared| async move {
                if s.hold_uploads.load(Ordering::SeqCst) {
                    s.uploads_held.fetch_add(1, Ordering::SeqCst);
                    loop {
                        let released = s.uploads_released.notified();
                        if !s.hold_uploads.load(Ordering::SeqCst) {
                            break;
                        }
                        released.await;
                    }
                    s.uploads_held.fetch_sub(1, Ordering::SeqCst);
                }
                if q.contains_key("resume") {
                    return reply(404, json!({"resume": "not found"}));
                }
                if s.registry
                    .lock()
                    .expect("registry lock")
                    .faults
                    .fail_uploads
                {
                    return reply(500, json!({"error": "upload failed (injected)"}));
                }
                let path = format!("/v/t62/{kind}/{token}");
                let url = format!("https://{}{path}", s.media_host());
                s.media
                    .lock()
                    .expect("media lock")
                    .insert(path.clone(), body.to_vec());
                reply(200, json!({"url": url, "direct_path": path}))
            },
        );
    let download = warp::path!("v" / "t62" / String / String)
        .and(warp::get())
        .and(with.clone())
        .map(|kind: String, token: String, s: Shared| {
            let path = format!("/v/t62/{kind}/{token}");
            match s.media.lock().expect("media lock").get(&path) {
                Some(b) => {
                    warp::reply::with_header(b.clone(), "content-type", "application/octet-stream")
                        .into_response()
                }
                None if s.media_expired.lock().expect("media lock").contains(&path) => {
                    reply(410, json!({"error": "media expired"}))
                }
                None => reply(404, json!({"error": "no such media"})),
            }
        });
    // Each step boxed: one long `or` chain of concrete filter types takes minutes to
    // type-check; boxed, the types stay flat.
    let mut all = ws.boxed();
    for r in [
        scan_qr.boxed(),
        list.boxed(),
        unlink_r.boxed(),
        drop_r.boxed(),
        ik_r.boxed(),
        lid_r.boxed(),
        app_state_r.boxed(),
        app_state_view_r.boxed(),
        tc_r.boxed(),
        hold_r.boxed(),
        drop_ack_r.boxed(),
        corrupt_r.boxed(),
        acks_r.boxed(),
        code_r.boxed(),
        groups_r.boxed(),
        upload.boxed(),
        download.boxed(),
    ] {
        all = all.or(r).unify().boxed();
    }
    all.recover(|_r: warp::Rejection| async move {
        Ok::<_, std::convert::Infallible>(reply(404, json!({"error": "not found"})))
    })
    .unify()
}

/// The HTTP client of the network's own contacts: whatsapp-rust's ureq client, with
/// `https://` rewritten to `http://` for the plain port; and, once TLS is on, real
/// HTTPS to the TLS front, trusting only the network's certificate.
#[derive(Clone)]
pub struct MockHttpClient {
    host: String,
    inner: Arc<whatsapp_rust::http::UreqHttpClient>,
    tls: Option<(SocketAddr, Arc<rustls::ClientConfig>)>,
}

impl MockHttpClient {
    /// For the mock at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            host: addr.to_string(),
            inner: Arc::new(whatsapp_rust::http::UreqHttpClient::new()),
            tls: None,
        }
    }

    /// The same, speaking TLS to the front at `front` with `config`.
    pub fn with_tls(mut self, front: SocketAddr, config: rustls::ClientConfig) -> Self {
        self.tls = Some((front, Arc::new(config)));
        self
    }
}

#[whatsapp_rust::async_trait]
impl whatsapp_rust::http::HttpClient for MockHttpClient {
    async fn execute(
        &self,
        mut request: whatsapp_rust::http::HttpRequest,
    ) -> anyhow::Result<whatsapp_rust::http::HttpResponse> {
        if let Some((front, config)) = &self.tls {
            if request.url.starts_with(&format!("https://{front}/")) {
                return tls::https(*front, config.clone(), request).await;
            }
        }
        let prefix = format!("https://{}/", self.host);
        if let Some(rest) = request.url.strip_prefix(&prefix) {
            request.url = format!("http://{}/{rest}", self.host);
        }
        self.inner.execute(request).await
    }
}
