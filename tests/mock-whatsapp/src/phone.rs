//! The mock phone's own end-to-end side: right after a new companion uploads its
//! prekeys, the phone (device 0 of the account) sends it the account's app-state sync
//! key in a real Signal message (X3DH from the companion's bundle, then one ratchet
//! step), as a phone does. The client accepts the share only from its own account and
//! then skips its 10-second key-share grace (PROTOCOL.md §3, step 7a).
//!
//! Each share opens a fresh session: the phone never talks to that device again, so
//! its Signal state lives only for the duration of one encryption.

use crate::Shared;
use whatsapp_rust::buffa::Message as _;
use whatsapp_rust::wacore::libsignal::protocol::{
    message_encrypt, process_prekey_bundle, CiphertextMessage, DeviceId, Direction, IdentityChange,
    IdentityKey, IdentityKeyPair, IdentityKeyStore, KeyPair, PreKeyBundle, ProtocolAddress,
    PublicKey, SessionRecord, SessionStore, SignalProtocolError, UsePQRatchet,
};
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::waproto::whatsapp as wa;

type SignalResult<T> = Result<T, SignalProtocolError>;

/// The one session the phone opens for a share.
#[derive(Default)]
struct OneSession(Option<SessionRecord>);

#[async_trait::async_trait]
impl SessionStore for OneSession {
    async fn load_session(
        &self,
        _address: &ProtocolAddress,
    ) -> SignalResult<Option<SessionRecord>> {
        Ok(self.0.clone())
    }

    async fn has_session(&self, _address: &ProtocolAddress) -> SignalResult<bool> {
        Ok(self.0.is_some())
    }

    async fn store_session(
        &mut self,
        _address: &ProtocolAddress,
        record: SessionRecord,
    ) -> SignalResult<()> {
        self.0 = Some(record);
        Ok(())
    }
}

/// The phone's identity (the account key) and the companion's, trusted on first use.
struct PhoneIdentity {
    pair: IdentityKeyPair,
    registration_id: u32,
    peer: Option<IdentityKey>,
}

#[async_trait::async_trait]
impl IdentityKeyStore for PhoneIdentity {
    async fn get_identity_key_pair(&self) -> SignalResult<IdentityKeyPair> {
        Ok(self.pair.clone())
    }

    async fn get_local_registration_id(&self) -> SignalResult<u32> {
        Ok(self.registration_id)
    }

    async fn save_identity(
        &mut self,
        _address: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> SignalResult<IdentityChange> {
        let changed = self.peer.as_ref().is_some_and(|p| p != identity);
        self.peer = Some(*identity);
        Ok(IdentityChange::from_changed(changed))
    }

    async fn is_trusted_identity(
        &self,
        _address: &ProtocolAddress,
        identity: &IdentityKey,
        _direction: Direction,
    ) -> SignalResult<bool> {
        Ok(self.peer.as_ref().is_none_or(|p| p == identity))
    }

    async fn get_identity(&self, _address: &ProtocolAddress) -> SignalResult<Option<IdentityKey>> {
        Ok(self.peer)
    }
}

/// An account's app-state sync key, shared with every companion.
#[derive(Debug, Clone)]
pub struct AppStateKey {
    pub id: Vec<u8>,
    pub data: [u8; 32],
    /// Unix milliseconds of creation.
    pub timestamp: i64,
}

impl AppStateKey {
    pub fn generate() -> Self {
        let mut id = vec![0u8; 6];
        id.iter_mut().for_each(|b| *b = rand::random());
        Self {
            id,
            data: rand::random(),
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or_default(),
        }
    }
}

/// Everything the phone needs, copied out of the registry so no lock is held while
/// encrypting.
struct ShareInputs {
    account_key: KeyPair,
    registration_id: u32,
    raw_id: u32,
    key_index: u32,
    key: AppStateKey,
    bundle: PreKeyBundle,
}

fn u32_be(b: &[u8]) -> Option<u32> {
    match b.len() {
        3 => Some(u32::from_be_bytes([0, b[0], b[1], b[2]])),
        4 => Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        _ => None,
    }
}

fn inputs(shared: &Shared, phone: &str, device: u32) -> Result<ShareInputs, String> {
    let mut reg = shared.registry.lock().expect("registry lock");
    let acc = reg.accounts.get_mut(phone).ok_or("no such account")?;
    let account_key = acc.account_key.clone();
    let registration_id = acc.phone_reg_id;
    let raw_id = acc.raw_id;
    let key = acc.app_state_key.clone();
    let d = acc.devices.get_mut(&device).ok_or("no such device")?;
    let k = &mut d.keys;
    let pub_key = |b: &[u8]| PublicKey::from_djb_public_key_bytes(b).map_err(|e| e.to_string());
    let one_time = match k.prekeys.pop_front() {
        Some((id, value)) => Some((u32_be(&id).ok_or("bad prekey id")?.into(), pub_key(&value)?)),
        None => None,
    };
    let bundle = PreKeyBundle::new(
        u32_be(&k.registration_id).ok_or("bad registration id")?,
        DeviceId::from(device),
        one_time,
        u32_be(&k.signed_prekey_id)
            .ok_or("bad signed prekey id")?
            .into(),
        pub_key(&k.signed_prekey)?,
        k.signed_prekey_sig.clone(),
        IdentityKey::new(pub_key(&k.identity)?),
    )
    .map_err(|e| e.to_string())?;
    Ok(ShareInputs {
        account_key,
        registration_id,
        raw_id,
        key_index: d.key_index,
        key,
        bundle,
    })
}

/// The padded plaintext: a protocol message carrying the key.
fn plaintext(i: &ShareInputs) -> Vec<u8> {
    use wa::message::{
        protocol_message::Type, AppStateSyncKey, AppStateSyncKeyData, AppStateSyncKeyFingerprint,
        AppStateSyncKeyId, AppStateSyncKeyShare, ProtocolMessage,
    };
    let key = AppStateSyncKey {
        key_id: AppStateSyncKeyId {
            key_id: Some(i.key.id.clone()),
            ..Default::default()
        }
        .into(),
        key_data: AppStateSyncKeyData {
            key_data: Some(i.key.data.to_vec()),
            fingerprint: AppStateSyncKeyFingerprint {
                raw_id: Some(i.raw_id),
                current_index: Some(i.key_index),
                device_indexes: vec![0, i.key_index],
                ..Default::default()
            }
            .into(),
            timestamp: Some(i.key.timestamp),
            ..Default::default()
        }
        .into(),
        ..Default::default()
    };
    let msg = wa::Message {
        protocol_message: ProtocolMessage {
            r#type: Some(Type::APP_STATE_SYNC_KEY_SHARE),
            app_state_sync_key_share: AppStateSyncKeyShare {
                keys: vec![key],
                ..Default::default()
            }
            .into(),
            ..Default::default()
        }
        .into(),
        ..Default::default()
    };
    let mut plain = msg.encode_to_vec();
    // Padding as clients write it: n bytes of value n, n in 1..=16.
    let pad = (rand::random::<u8>() & 0x0f) + 1;
    plain.resize(plain.len() + pad as usize, pad);
    plain
}

/// Encrypts the account's app-state key for `phone:device` and delivers it (queued if
/// the device went offline meanwhile). Errors are reported, never panicked on.
pub(crate) async fn share_app_state_key(
    shared: &Shared,
    phone: &str,
    device: u32,
) -> Result<(), String> {
    let i = inputs(shared, phone, device)?;
    let address = ProtocolAddress::new(&format!("{phone}:{device}"), DeviceId::from(device));
    let mut sessions = OneSession::default();
    let mut identity = PhoneIdentity {
        pair: IdentityKeyPair::from(i.account_key.clone()),
        registration_id: i.registration_id,
        peer: None,
    };
    // A Send generator: this future runs on a spawned task.
    let mut rng = rand::make_rng::<rand::rngs::StdRng>();
    process_prekey_bundle(
        &address,
        &mut sessions,
        &mut identity,
        &i.bundle,
        &mut rng,
        UsePQRatchet::No,
    )
    .await
    .map_err(|e| format!("x3dh: {e}"))?;
    let cipher = message_encrypt(&plaintext(&i), &address, &mut sessions, &mut identity)
        .await
        .map_err(|e| format!("encrypt: {e}"))?;
    let enc_type = match &cipher {
        CiphertextMessage::PreKeySignalMessage(_) => "pkmsg",
        _ => "msg",
    };
    let id = format!("3EB0{:016X}", rand::random::<u64>());
    let stanza = NodeBuilder::new("message")
        .attr("from", format!("{phone}@s.whatsapp.net"))
        .attr("id", id)
        .attr("type", "protocol")
        .attr("category", "peer")
        .attr("t", crate::conn::now().to_string())
        .children([NodeBuilder::new("enc")
            .attr("v", "2")
            .attr("type", enc_type)
            .bytes(cipher.serialize().to_vec())
            .build()])
        .build();
    let out = {
        let mut reg = shared.registry.lock().expect("registry lock");
        if let Some(d) = reg
            .accounts
            .get_mut(phone)
            .and_then(|a| a.devices.get_mut(&device))
        {
            d.key_share_sent = true;
        }
        crate::routing::deliver(&mut reg, phone, device, stanza)
    };
    if let Some(d) = out {
        d.send().await;
    }
    Ok(())
}
