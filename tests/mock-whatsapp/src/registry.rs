//! The network's state: accounts (phone numbers), their companion devices with the
//! Signal keys those devices uploaded, pending QR pairings, live connections and
//! per-device offline queues.
//!
//! One `std::sync::Mutex` guards it all; it is never held across an await.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use tokio::sync::mpsc;
use whatsapp_rust::wacore::libsignal::protocol::KeyPair;
use whatsapp_rust::wacore_binary::Node;

/// Something to send on a connection.
#[derive(Debug)]
pub enum Outbound {
    Node(Node),
    /// Close the socket after what was queued before.
    Close,
}

/// A live connection: a bounded queue into its writer task.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: u64,
    pub tx: mpsc::Sender<Outbound>,
}

/// Keys a device uploads (registration payload and prekey upload).
#[derive(Debug, Clone, Default)]
pub struct DeviceKeys {
    pub registration_id: Vec<u8>,
    pub identity: Vec<u8>,
    pub signed_prekey_id: Vec<u8>,
    pub signed_prekey: Vec<u8>,
    pub signed_prekey_sig: Vec<u8>,
    /// One-time prekeys (id 3 bytes, public 32 bytes), popped as handed out.
    pub prekeys: VecDeque<(Vec<u8>, Vec<u8>)>,
}

/// A companion device of an account.
#[derive(Debug)]
pub struct Device {
    pub id: u32,
    pub noise_pub: [u8; 32],
    pub key_index: u32,
    pub keys: DeviceKeys,
    /// The companion's signed device identity (from pair-device-sign).
    pub device_identity: Option<Vec<u8>>,
    pub conn: Option<ConnHandle>,
    /// Stanzas waiting for the next login.
    pub offline: VecDeque<Node>,
    /// How many message stanzas were delivered to this device.
    pub delivered: u64,
    /// Paired but its first prekey upload has not arrived yet: the mock phone shares
    /// the app-state key as soon as it does.
    pub awaiting_key_share: bool,
    /// The mock phone's app-state key share was encrypted and sent to this device.
    pub key_share_sent: bool,
}

/// A phone-number account with its primary (the mock phone) and companions.
pub struct Account {
    pub phone: String,
    pub lid: String,
    pub push_name: String,
    /// The phone's identity, also the ADV account key.
    pub account_key: KeyPair,
    pub raw_id: u32,
    /// The phone's (device 0) signed prekey, registration id and key signature.
    pub phone_skey: KeyPair,
    pub phone_skey_sig: Vec<u8>,
    pub phone_reg_id: u32,
    pub devices: BTreeMap<u32, Device>,
    pub next_device: u32,
    /// The app-state sync key the phone shares with every new companion.
    pub app_state_key: crate::phone::AppStateKey,
}

/// A device that connected without a session and is waiting for a QR scan.
#[derive(Debug, Clone)]
pub struct PendingRegistration {
    pub conn: ConnHandle,
    pub noise_pub: [u8; 32],
    pub keys: DeviceKeys,
    pub push_name: Option<String>,
}

/// A device that asked for a pairing code (link-code pairing), by pairing ref.
#[derive(Clone)]
pub struct CodePairing {
    pub registration: PendingRegistration,
    /// The number the code is for.
    pub phone: String,
    /// The companion's ephemeral key, wrapped with the code (salt ‖ iv ‖ ciphertext).
    pub wrapped_companion_ephemeral: Vec<u8>,
    /// After the code was entered on the phone: the companion's ephemeral key and the
    /// phone's ephemeral key pair.
    pub keys: Option<([u8; 32], KeyPair)>,
}

/// A pairing sent to a device and waiting for its pair-device-sign.
#[derive(Debug, Clone)]
pub struct PendingSign {
    pub phone: String,
    pub device_id: u32,
    pub key_index: u32,
    pub noise_pub: [u8; 32],
    pub keys: DeviceKeys,
}

/// A group of accounts.
#[derive(Debug, Clone)]
pub struct Group {
    /// The user part of `<id>@g.us`.
    pub id: String,
    pub subject: String,
    /// Phone of the creator (a superadmin).
    pub creator: String,
    /// Unix seconds.
    pub created: u64,
    /// Member phones, creator included.
    pub participants: Vec<String>,
}

/// Faults an operator injected.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Logins refused (failure 503) until this instant.
    pub refuse_logins_until: Option<std::time::Instant>,
    /// Prekey-bundle fetches answer with an error (first messages to a device fail).
    pub fail_prekey_fetch: bool,
    /// Media uploads answer HTTP 500.
    pub fail_uploads: bool,
}

/// Everything.
#[derive(Default)]
pub struct Registry {
    pub accounts: HashMap<String, Account>,
    /// QR ref → registration.
    pub pending: HashMap<String, PendingRegistration>,
    /// Pairing ref → pairing-code flow.
    pub code_pairings: HashMap<String, CodePairing>,
    /// pair-success iq id → pairing.
    pub signing: HashMap<String, PendingSign>,
    pub faults: Faults,
    /// Groups by id (user part of the JID).
    pub groups: HashMap<String, Group>,
    /// Presence stanzas each account's devices sent (`available`, `unavailable`, ...).
    pub presence_seen: HashMap<String, Vec<String>>,
    /// Presence subscriptions: target phone → subscribing devices (phone, device).
    pub presence_subs: HashMap<String, BTreeSet<(String, u32)>>,
    /// Each account's last announced presence: (available, unix seconds).
    pub presence_state: HashMap<String, (bool, u64)>,
    next_lid: u64,
    next_group: u64,
}

impl Registry {
    /// A fresh group id (`120363` + 12 digits, like WhatsApp's).
    pub fn next_group_id(&mut self) -> String {
        self.next_group += 1;
        format!("120363{:012}", 100_000_000 + self.next_group)
    }

    /// The account of `phone`, created with fresh keys if new.
    pub fn account_mut(&mut self, phone: &str, push_name: Option<&str>) -> &mut Account {
        if !self.accounts.contains_key(phone) {
            self.next_lid += 1;
            let lid = format!(
                "{}",
                100_000_000_000_000u64 + self.next_lid * 7919 + phone.len() as u64
            );
            let account_key = KeyPair::generate(&mut rand::rng());
            let phone_skey = KeyPair::generate(&mut rand::rng());
            // The client checks this signature over the 33-byte serialized key.
            let phone_skey_sig = account_key
                .calculate_signature(&phone_skey.public_key.serialize(), &mut rand::rng())
                .map(|s| s.to_vec())
                .unwrap_or_default();
            let account = Account {
                phone: phone.to_string(),
                lid,
                push_name: push_name.unwrap_or(phone).to_string(),
                account_key,
                raw_id: rand::random::<u32>() >> 1,
                phone_skey,
                phone_skey_sig,
                phone_reg_id: (rand::random::<u32>() >> 18) + 1,
                devices: BTreeMap::new(),
                next_device: 1,
                app_state_key: crate::phone::AppStateKey::generate(),
            };
            self.accounts.insert(phone.to_string(), account);
        }
        // Just inserted above if it was missing.
        self.accounts.get_mut(phone).expect("account exists")
    }

    /// The account whose phone or LID user is `user`.
    pub fn find_user(&self, user: &str) -> Option<&Account> {
        self.accounts
            .get(user)
            .or_else(|| self.accounts.values().find(|a| a.lid == user))
    }

    /// Mutable [`Registry::find_user`].
    pub fn find_user_mut(&mut self, user: &str) -> Option<&mut Account> {
        let phone = self.find_user(user)?.phone.clone();
        self.accounts.get_mut(&phone)
    }
}
