//! The network's state: accounts (phone numbers), their companion devices with the
//! Signal keys those devices uploaded, pending QR pairings, live connections,
//! per-device offline queues and the message stanzas each device has not acked yet.
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

/// A message stanza written to a device's live connection and not acknowledged yet
/// (by an `<ack class="message">` or a `<receipt>` from that device). It is
/// redelivered at the device's next login until it is.
#[derive(Debug, Clone)]
pub struct Unacked {
    /// The stanza's `id`.
    pub id: String,
    /// Its `from`: the sending device, the group, or the account's phone.
    pub from: String,
    /// Its `participant` (the sending member of a group), if any.
    pub participant: Option<String>,
    /// The stanza as first written (no `offline` attribute).
    pub node: Node,
}

/// What identifies a message stanza for acks: `id`, `from`, `participant`.
type MessageKey = (String, String, Option<String>);

fn key_of(node: &Node) -> MessageKey {
    let get = |k: &str| node.attrs.get(k).map(|v| v.to_string());
    (
        get("id").unwrap_or_default(),
        get("from").unwrap_or_default(),
        get("participant"),
    )
}

impl Unacked {
    /// The entry for a message stanza, keyed by its `id`, `from` and `participant`.
    pub fn of(node: Node) -> Self {
        let (id, from, participant) = key_of(&node);
        Self {
            id,
            from,
            participant,
            node,
        }
    }

    fn has_key(&self, key: &MessageKey) -> bool {
        self.id == key.0 && self.from == key.1 && self.participant == key.2
    }
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
    /// The connection in `conn` is logging in: it is still being sent the unacked and
    /// queued stanzas, so new ones join the offline queue behind them (order kept).
    pub draining: bool,
    /// Stanzas waiting for the next login. Never holds a message that is in `unacked`.
    pub offline: VecDeque<Node>,
    /// Message stanzas written to a live connection and not acked yet, oldest first.
    pub unacked: Vec<Unacked>,
    /// Message stanzas written to a live connection for the first time (live, or out
    /// of the offline queue at login).
    pub delivered: u64,
    /// Unacked message stanzas written again at a later login.
    pub redelivered: u64,
    /// Unacked entries cleared by the device's ack or receipt.
    pub acked: u64,
    /// Acks that matched an unacked entry but were ignored (acks held).
    pub held_acks: u64,
    /// One-shot fault: close the socket right after the next message stanza.
    pub drop_before_ack: bool,
    /// One-shot fault: the next message stanza reaches the device with its ciphertext
    /// damaged, so it cannot decrypt it and asks the sender to retry.
    pub corrupt_next: bool,
    /// Retry receipts (`type="retry"`) the device sent.
    pub retry_receipts: u64,
    /// Paired but its first prekey upload has not arrived yet: the mock phone shares
    /// the app-state key as soon as it does.
    pub awaiting_key_share: bool,
    /// The mock phone's app-state key share was encrypted and sent to this device.
    pub key_share_sent: bool,
    /// App-state collections this device has fetched since it paired.
    pub app_state_fetched: BTreeSet<String>,
}

impl Device {
    /// A companion that just finished pairing (not connected yet).
    pub fn new(
        id: u32,
        noise_pub: [u8; 32],
        key_index: u32,
        keys: DeviceKeys,
        device_identity: Option<Vec<u8>>,
    ) -> Self {
        Self {
            id,
            noise_pub,
            key_index,
            keys,
            device_identity,
            conn: None,
            draining: false,
            offline: VecDeque::new(),
            unacked: Vec::new(),
            delivered: 0,
            redelivered: 0,
            acked: 0,
            held_acks: 0,
            drop_before_ack: false,
            corrupt_next: false,
            retry_receipts: 0,
            awaiting_key_share: true,
            key_share_sent: false,
            app_state_fetched: BTreeSet::new(),
        }
    }

    /// The live connection new stanzas may be written to now (none while offline or
    /// while a login is still draining).
    pub fn live(&self) -> Option<ConnHandle> {
        self.conn.clone().filter(|_| !self.draining)
    }

    /// Records a message stanza being written to the live connection. A stanza with
    /// the key of an entry already waiting (the sender sent the same id again)
    /// replaces that entry in place, so nothing is redelivered twice.
    pub fn track(&mut self, node: Node) {
        let entry = Unacked::of(node);
        let key = (
            entry.id.clone(),
            entry.from.clone(),
            entry.participant.clone(),
        );
        match self.unacked.iter_mut().find(|u| u.has_key(&key)) {
            Some(u) => *u = entry,
            None => self.unacked.push(entry),
        }
    }

    /// Queues a stanza for the next login. A message whose key is already waiting
    /// (unacked, or queued) replaces that copy instead of being queued twice.
    pub fn queue(&mut self, node: Node) {
        if node.tag == "message" {
            let key = key_of(&node);
            if let Some(u) = self.unacked.iter_mut().find(|u| u.has_key(&key)) {
                *u = Unacked::of(node);
                return;
            }
            if let Some(q) = self
                .offline
                .iter_mut()
                .find(|q| q.tag == "message" && key_of(q) == key)
            {
                *q = node;
                return;
            }
        }
        self.offline.push_back(node);
    }
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
    /// Keys the phone rotated away from (still needed for older patches).
    pub old_app_state_keys: Vec<crate::phone::AppStateKey>,
    /// The app-state collections and the phone's key-request switches.
    pub app_state: crate::appstate::Store,
    /// The NCT salt the phone synced to its companions (`nct_salt_sync`), with which
    /// they derive `cstoken`s: HMAC-SHA256(salt, recipient LID).
    pub nct_salt: Option<Vec<u8>>,
    /// The phone's Signal sessions with its companions, by device.
    pub phone_sessions: HashMap<u32, whatsapp_rust::wacore::libsignal::protocol::SessionRecord>,
    /// The profile "about" text and when it was set (unix seconds).
    pub about: Option<(String, u64)>,
    /// People this account blocked (their LID user → when): their 1:1 messages are
    /// acked to them but not delivered.
    pub blocked: BTreeMap<String, u64>,
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
    /// Member phones that are admins (the creator is the superadmin).
    pub admins: BTreeSet<String>,
    /// Only admins may change the subject and description.
    pub locked: bool,
    /// Only admins may send.
    pub announce: bool,
    /// (id, text) of the description.
    pub description: Option<(String, String)>,
    /// The invite-link code, made on first request.
    pub invite: Option<String>,
    /// Set when this group is a community (a parent group).
    pub community: Option<CommunitySettings>,
    /// The community (its group id) this group is linked to.
    pub linked_parent: Option<String>,
    /// The community's announcement group: every community member is in it.
    pub default_sub: bool,
    /// The community's general chat.
    pub general_chat: bool,
    /// Members are named by LID (`addressing_mode="lid"`), their numbers beside.
    pub lid_addressed: bool,
}

/// How a community is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommunitySettings {
    /// Joining needs an admin's approval.
    pub closed: bool,
    /// Members who are not admins may create subgroups.
    pub member_subgroups: bool,
}

impl Group {
    /// A group of `participants`, every other field empty (set them with `..`).
    pub fn new(participants: Vec<String>) -> Self {
        Self {
            id: String::new(),
            subject: String::new(),
            creator: String::new(),
            created: 0,
            participants,
            admins: BTreeSet::new(),
            locked: false,
            announce: false,
            description: None,
            invite: None,
            community: None,
            linked_parent: None,
            default_sub: false,
            general_chat: false,
            lid_addressed: false,
        }
    }
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
    /// Acks ignored: (phone, Some(device)) for one device, (phone, None) for every
    /// device of the account.
    pub hold_acks: BTreeSet<(String, Option<u32>)>,
}

impl Faults {
    /// Whether acks from `phone`'s device `device` are being ignored.
    pub fn acks_held(&self, phone: &str, device: u32) -> bool {
        self.hold_acks.contains(&(phone.to_string(), None))
            || self.hold_acks.contains(&(phone.to_string(), Some(device)))
    }
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
    /// Profile pictures: `<phone>@s.whatsapp.net` or `<id>@g.us` → current picture.
    pub pictures: HashMap<String, crate::profile::Picture>,
    /// Pictures set so far (their ids are derived from it).
    pub next_picture: u64,
    /// Privacy tokens: (granter phone, holder phone) → the latest grant.
    pub tc_tokens: HashMap<(String, String), crate::privacy::Grant>,
    /// Accounts that refuse 1:1 messages without the privacy token they granted.
    pub tc_required: BTreeSet<String>,
    /// Newsletters (channels) by id (user part of the JID).
    pub newsletters: HashMap<String, crate::newsletters::Channel>,
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
    /// A number no account has yet (`1555` and seven digits), for a phone that pairs
    /// a device without saying its number.
    pub fn fresh_number(&self) -> String {
        (1u32..)
            .map(|n| format!("1555{n:07}"))
            .find(|p| !self.accounts.contains_key(p))
            .unwrap_or_default()
    }

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
                old_app_state_keys: Vec::new(),
                app_state: Default::default(),
                nct_salt: None,
                phone_sessions: HashMap::new(),
                about: None,
                blocked: BTreeMap::new(),
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
