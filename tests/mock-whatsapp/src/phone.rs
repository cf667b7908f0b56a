//! The mock phone's own end-to-end side: right after a new companion uploads its
//! prekeys, the phone (device 0 of the account) sends it the account's app-state sync
//! key in a real Signal message (X3DH from the companion's bundle, then one ratchet
//! step), as a phone does. The client accepts the share only from its own account and
//! then skips its 10-second key-share grace (PROTOCOL.md §3, step 7a).
//!
//! The phone keeps its Signal session with each companion (in the registry), so it can
//! also read what a companion sends it: app-state key requests, which it answers with
//! the keys asked for (`peer_message`), and it can share a rotated key later.

use crate::Shared;
use whatsapp_rust::buffa::Message as _;
use whatsapp_rust::wacore::libsignal::protocol::{
    message_decrypt, message_encrypt, process_prekey_bundle, CiphertextMessage, DeviceId,
    Direction, GenericSignedPreKey, IdentityChange, IdentityKey, IdentityKeyPair, IdentityKeyStore,
    PreKeyBundle, PreKeyId, PreKeyRecord, PreKeySignalMessage, PreKeyStore, ProtocolAddress,
    PublicKey, SessionRecord, SessionStore, SignalMessage, SignalProtocolError, SignedPreKeyId,
    SignedPreKeyRecord, SignedPreKeyStore, Timestamp, UsePQRatchet,
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

fn u32_be(b: &[u8]) -> Option<u32> {
    match b.len() {
        3 => Some(u32::from_be_bytes([0, b[0], b[1], b[2]])),
        4 => Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        _ => None,
    }
}

fn pub_key(b: &[u8]) -> Result<PublicKey, String> {
    PublicKey::from_djb_public_key_bytes(b).map_err(|e| e.to_string())
}

/// What the phone needs to talk to one companion, copied out of the registry so no
/// lock is held while encrypting or decrypting.
struct PeerInputs {
    identity: PhoneIdentity,
    signed_prekey: SignedPreKeyRecord,
    session: OneSession,
}

fn peer_inputs(shared: &Shared, phone: &str, device: u32) -> Result<PeerInputs, String> {
    let reg = shared.registry.lock().expect("registry lock");
    let acc = reg.accounts.get(phone).ok_or("no such account")?;
    let d = acc.devices.get(&device).ok_or("no such device")?;
    let peer = if d.keys.identity.is_empty() {
        None
    } else {
        Some(IdentityKey::new(pub_key(&d.keys.identity)?))
    };
    Ok(PeerInputs {
        identity: PhoneIdentity {
            pair: IdentityKeyPair::from(acc.account_key.clone()),
            registration_id: acc.phone_reg_id,
            peer,
        },
        // The phone's bundle names its signed prekey id 1 (`routing::prekey_bundles`).
        signed_prekey: SignedPreKeyRecord::new(
            1.into(),
            Timestamp::from_epoch_millis(0),
            &acc.phone_skey,
            &acc.phone_skey_sig,
        ),
        session: OneSession(acc.phone_sessions.get(&device).cloned()),
    })
}

/// The companion's bundle as the server hands it out (one one-time prekey consumed).
fn bundle_of(shared: &Shared, phone: &str, device: u32) -> Result<PreKeyBundle, String> {
    let mut reg = shared.registry.lock().expect("registry lock");
    let acc = reg.accounts.get_mut(phone).ok_or("no such account")?;
    let d = acc.devices.get_mut(&device).ok_or("no such device")?;
    let k = &mut d.keys;
    let one_time = match k.prekeys.pop_front() {
        Some((id, value)) => Some((u32_be(&id).ok_or("bad prekey id")?.into(), pub_key(&value)?)),
        None => None,
    };
    PreKeyBundle::new(
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
    .map_err(|e| e.to_string())
}

fn address(phone: &str, device: u32) -> ProtocolAddress {
    ProtocolAddress::new(&format!("{phone}:{device}"), DeviceId::from(device))
}

fn store_session(shared: &Shared, phone: &str, device: u32, session: OneSession) {
    let mut reg = shared.registry.lock().expect("registry lock");
    if let (Some(acc), Some(record)) = (reg.accounts.get_mut(phone), session.0) {
        acc.phone_sessions.insert(device, record);
    }
}

/// A protocol message sharing `keys` with a companion.
fn key_share(keys: &[AppStateKey], raw_id: u32, key_index: u32) -> wa::Message {
    use wa::message::{
        protocol_message::Type, AppStateSyncKey, AppStateSyncKeyData, AppStateSyncKeyFingerprint,
        AppStateSyncKeyId, AppStateSyncKeyShare, ProtocolMessage,
    };
    let keys = keys
        .iter()
        .map(|k| AppStateSyncKey {
            key_id: AppStateSyncKeyId {
                key_id: Some(k.id.clone()),
            }
            .into(),
            key_data: AppStateSyncKeyData {
                key_data: Some(k.data.to_vec()),
                fingerprint: AppStateSyncKeyFingerprint {
                    raw_id: Some(raw_id),
                    current_index: Some(key_index),
                    device_indexes: vec![0, key_index],
                }
                .into(),
                timestamp: Some(k.timestamp),
            }
            .into(),
        })
        .collect();
    wa::Message {
        protocol_message: ProtocolMessage {
            r#type: Some(Type::APP_STATE_SYNC_KEY_SHARE),
            app_state_sync_key_share: AppStateSyncKeyShare { keys }.into(),
            ..Default::default()
        }
        .into(),
        ..Default::default()
    }
}

/// Encrypts `msg` for `phone:device` on the phone's session with it — opened from the
/// device's prekey bundle (X3DH) when there is none — and delivers it from the phone
/// (`<phone>@s.whatsapp.net`, `category="peer"`), queued if the device is offline.
async fn send_to_companion(
    shared: &Shared,
    phone: &str,
    device: u32,
    msg: &wa::Message,
) -> Result<(), String> {
    let _crypto = shared.phone_crypto.lock().await;
    let mut i = peer_inputs(shared, phone, device)?;
    let address = address(phone, device);
    if i.session.0.is_none() {
        let bundle = bundle_of(shared, phone, device)?;
        // A Send generator: this future runs on a spawned task.
        let mut rng = rand::make_rng::<rand::rngs::StdRng>();
        process_prekey_bundle(
            &address,
            &mut i.session,
            &mut i.identity,
            &bundle,
            &mut rng,
            UsePQRatchet::No,
        )
        .await
        .map_err(|e| format!("x3dh: {e}"))?;
    }
    let mut plain = msg.encode_to_vec();
    // Padding as clients write it: n bytes of value n, n in 1..=16.
    let pad = (rand::random::<u8>() & 0x0f) + 1;
    plain.resize(plain.len() + pad as usize, pad);
    let cipher = message_encrypt(&plain, &address, &mut i.session, &mut i.identity)
        .await
        .map_err(|e| format!("encrypt: {e}"))?;
    store_session(shared, phone, device, i.session);
    let enc_type = match &cipher {
        CiphertextMessage::PreKeySignalMessage(_) => "pkmsg",
        _ => "msg",
    };
    let stanza = NodeBuilder::new("message")
        .attr("from", format!("{phone}@s.whatsapp.net"))
        .attr("id", format!("3EB0{:016X}", rand::random::<u64>()))
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
        crate::routing::deliver(&mut reg, phone, device, stanza)
    };
    if let Some(d) = out {
        d.send().await;
    }
    Ok(())
}

/// Shares the account's current app-state key with a newly paired `phone:device`.
/// Errors are reported, never panicked on.
pub(crate) async fn share_app_state_key(
    shared: &Shared,
    phone: &str,
    device: u32,
) -> Result<(), String> {
    let msg = {
        let mut reg = shared.registry.lock().expect("registry lock");
        let acc = reg.accounts.get_mut(phone).ok_or("no such account")?;
        // A new pairing: whatever session the phone had with that device id is gone.
        acc.phone_sessions.remove(&device);
        let key_index = acc.devices.get(&device).ok_or("no such device")?.key_index;
        key_share(
            std::slice::from_ref(&acc.app_state_key),
            acc.raw_id,
            key_index,
        )
    };
    send_to_companion(shared, phone, device, &msg).await?;
    let mut reg = shared.registry.lock().expect("registry lock");
    if let Some(d) = reg
        .accounts
        .get_mut(phone)
        .and_then(|a| a.devices.get_mut(&device))
    {
        d.key_share_sent = true;
    }
    Ok(())
}

/// The phone's new app-state key: the old one is kept for older patches; with `share`
/// every companion gets the new key at once, without, they have to ask for it when a
/// patch needs it. Returns the new key's id.
pub(crate) async fn rotate_app_state_key(
    shared: &Shared,
    phone: &str,
    share: bool,
) -> Result<Vec<u8>, String> {
    let (key, devices) = {
        let mut reg = shared.registry.lock().expect("registry lock");
        let acc = reg.accounts.get_mut(phone).ok_or("no such account")?;
        let new = AppStateKey::generate();
        let old = std::mem::replace(&mut acc.app_state_key, new.clone());
        acc.old_app_state_keys.push(old);
        let devices: Vec<(u32, u32)> = acc.devices.values().map(|d| (d.id, d.key_index)).collect();
        (new, (acc.raw_id, devices))
    };
    if share {
        let (raw_id, devices) = devices;
        for (device, key_index) in devices {
            let msg = key_share(std::slice::from_ref(&key), raw_id, key_index);
            send_to_companion(shared, phone, device, &msg).await?;
        }
    }
    Ok(key.id)
}

/// A companion's message to the phone (device 0), `category="peer"`: decrypted on the
/// phone's session with that device (or opened from the phone's signed prekey), and
/// answered when it is an app-state key request: the keys asked for that the phone
/// knows, in a key share. Other peer messages are read and dropped.
pub(crate) async fn peer_message(
    shared: Shared,
    phone: String,
    device: u32,
    enc_type: String,
    body: Vec<u8>,
) -> Result<(), String> {
    let msg = {
        let _crypto = shared.phone_crypto.lock().await;
        let mut i = peer_inputs(&shared, &phone, device)?;
        let cipher = match enc_type.as_str() {
            "pkmsg" => CiphertextMessage::PreKeySignalMessage(
                PreKeySignalMessage::try_from(body.as_slice()).map_err(|e| e.to_string())?,
            ),
            "msg" => CiphertextMessage::SignalMessage(
                SignalMessage::try_from(body.as_slice()).map_err(|e| e.to_string())?,
            ),
            other => return Err(format!("unexpected enc type {other}")),
        };
        let mut prekeys = NoPreKeys;
        let signed = OneSignedPreKey(i.signed_prekey.clone());
        let mut rng = rand::make_rng::<rand::rngs::StdRng>();
        let plain = message_decrypt(
            &cipher,
            &address(&phone, device),
            &mut i.session,
            &mut i.identity,
            &mut prekeys,
            &signed,
            &mut rng,
            UsePQRatchet::No,
        )
        .await
        .map_err(|e| format!("decrypt: {e}"))?
        .plaintext;
        store_session(&shared, &phone, device, i.session);
        let unpadded = match plain.last() {
            Some(&n) if (1..=16).contains(&n) && plain.len() >= n as usize => {
                &plain[..plain.len() - n as usize]
            }
            _ => &plain[..],
        };
        wa::Message::decode_from_slice(unpadded).map_err(|e| e.to_string())?
    };
    let Some(req) = msg
        .protocol_message
        .as_option()
        .and_then(|p| p.app_state_sync_key_request.as_option())
    else {
        return Ok(());
    };
    let wanted: Vec<Vec<u8>> = req
        .key_ids
        .iter()
        .filter_map(|k| k.key_id.clone())
        .collect();
    let answer = {
        let mut reg = shared.registry.lock().expect("registry lock");
        let acc = reg.accounts.get_mut(&phone).ok_or("no such account")?;
        acc.app_state.key_requests += 1;
        if acc.app_state.ignore_key_requests > 0 {
            acc.app_state.ignore_key_requests -= 1;
            None
        } else {
            let keys: Vec<AppStateKey> = crate::appstate::known_keys(acc)
                .into_iter()
                .filter(|k| wanted.contains(&k.id))
                .collect();
            let key_index = acc.devices.get(&device).map_or(0, |d| d.key_index);
            (!keys.is_empty()).then(|| key_share(&keys, acc.raw_id, key_index))
        }
    };
    match answer {
        Some(share) => send_to_companion(&shared, &phone, device, &share).await,
        None => Ok(()),
    }
}

/// The phone hands out no one-time prekeys (its bundle has none).
struct NoPreKeys;

#[async_trait::async_trait]
impl PreKeyStore for NoPreKeys {
    async fn get_pre_key(&self, _id: PreKeyId) -> SignalResult<PreKeyRecord> {
        Err(SignalProtocolError::InvalidPreKeyId)
    }

    async fn save_pre_key(&mut self, _id: PreKeyId, _record: &PreKeyRecord) -> SignalResult<()> {
        Ok(())
    }

    async fn remove_pre_key(&mut self, _id: PreKeyId) -> SignalResult<()> {
        Ok(())
    }
}

/// The phone's one signed prekey.
struct OneSignedPreKey(SignedPreKeyRecord);

#[async_trait::async_trait]
impl SignedPreKeyStore for OneSignedPreKey {
    async fn get_signed_pre_key(&self, id: SignedPreKeyId) -> SignalResult<SignedPreKeyRecord> {
        if u32::from(id) == 1 {
            Ok(self.0.clone())
        } else {
            Err(SignalProtocolError::InvalidSignedPreKeyId)
        }
    }

    async fn save_signed_pre_key(
        &mut self,
        _id: SignedPreKeyId,
        _record: &SignedPreKeyRecord,
    ) -> SignalResult<()> {
        Ok(())
    }
}
