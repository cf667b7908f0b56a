//! Pairing by code (link-code pairing), the phone's side. The companion asks for a code
//! (`companion_hello`, its ephemeral key wrapped with the code); the person types the code
//! on the phone ([`crate::MockNetwork::enter_pairing_code`]): the phone unwraps that key,
//! answers with its own wrapped ephemeral key and identity (`primary_hello`
//! notification); the companion sends its key bundle encrypted to the shared secret
//! (`companion_finish`); the phone decrypts it, derives the ADV secret both sides now
//! share and completes pairing exactly as after a QR scan.
//!
//! A wrong code is not detectable when typed (the phone only gets a wrong key out of it);
//! the companion's bundle then fails to decrypt and `companion_finish` is refused.

use crate::conn::{attr, child_bytes, iq_error, iq_result, SERVER};
use crate::registry::{CodePairing, Outbound};
use crate::{ScanError, Shared};
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use whatsapp_rust::wacore::crypto::hkdf_sha256_into;
use whatsapp_rust::wacore::libsignal::protocol::{KeyPair, PublicKey};
use whatsapp_rust::wacore::pair_code::PairCodeUtils;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::Node;

/// `<iq xmlns="md"><link_code_companion_reg …>`: both stages. Returns the reply and,
/// once pairing completes, the `pair-success` to send right after it.
pub(crate) fn handle(
    shared: &Shared,
    conn_id: u64,
    id: &str,
    reg_node: &Node,
) -> (Node, Option<Node>) {
    match attr(reg_node, "stage").as_deref() {
        Some("companion_hello") => (companion_hello(shared, conn_id, id, reg_node), None),
        Some("companion_finish") => companion_finish(shared, id, reg_node),
        _ => (iq_error(id, "400", "bad-request"), None),
    }
}

fn companion_hello(shared: &Shared, conn_id: u64, id: &str, n: &Node) -> Node {
    let phone = attr(n, "jid")
        .and_then(|j| j.split('@').next().map(str::to_string))
        .filter(|p| p.len() >= 8 && p.chars().all(|c| c.is_ascii_digit()));
    let wrapped = Some(child_bytes(
        n,
        "link_code_pairing_wrapped_companion_ephemeral_pub",
    ))
    .filter(|w| w.len() == 80);
    let (Some(phone), Some(wrapped)) = (phone, wrapped) else {
        return iq_error(id, "400", "bad-request");
    };
    let mut reg = shared.registry.lock().expect("registry lock");
    // The connection must be an unpaired device that registered (it holds QR refs).
    let Some(registration) = reg.pending.values().find(|p| p.conn.id == conn_id).cloned() else {
        return iq_error(id, "401", "not-authorized");
    };
    // A new code replaces this device's earlier one.
    reg.code_pairings
        .retain(|_, c| c.registration.conn.id != conn_id);
    let pairing_ref = format!("2@code{conn_id}x{:016x}", rand::random::<u64>());
    reg.code_pairings.insert(
        pairing_ref.clone(),
        CodePairing {
            registration,
            phone,
            wrapped_companion_ephemeral: wrapped,
            keys: None,
        },
    );
    iq_result(
        id,
        vec![NodeBuilder::new("link_code_companion_reg")
            .children([NodeBuilder::new("link_code_pairing_ref")
                .bytes(pairing_ref.into_bytes())
                .build()])
            .build()],
    )
}

/// The person types `code` on the phone of `phone`.
pub(crate) fn enter_code(shared: &Shared, phone: &str, code: &str) -> Result<(), ScanError> {
    let code: String = code.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    if code.len() != 8 {
        return Err(ScanError::BadCode);
    }
    let mut reg = shared.registry.lock().expect("registry lock");
    if !reg
        .code_pairings
        .values()
        .any(|c| c.phone == phone && c.keys.is_none())
    {
        return Err(ScanError::NoCodeRequest);
    }
    let identity_pub = reg
        .account_mut(phone, None)
        .account_key
        .public_key
        .public_key_bytes()
        .to_vec();
    let Some((pairing_ref, pairing)) = reg
        .code_pairings
        .iter_mut()
        .find(|(_, c)| c.phone == phone && c.keys.is_none())
    else {
        return Err(ScanError::NoCodeRequest);
    };
    let companion_eph =
        PairCodeUtils::decrypt_primary_ephemeral_pub(&pairing.wrapped_companion_ephemeral, &code)
            .map_err(|_| ScanError::BadCode)?;
    let ephemeral = KeyPair::generate(&mut rand::rng());
    let eph_pub: [u8; 32] = ephemeral
        .public_key
        .public_key_bytes()
        .try_into()
        .map_err(|_| ScanError::Malformed)?;
    let wrapped = PairCodeUtils::encrypt_ephemeral_pub(&eph_pub, &code);
    pairing.keys = Some((companion_eph, ephemeral));
    let notification = NodeBuilder::new("notification")
        .attr("from", SERVER)
        .attr("type", "link_code_companion_reg")
        .attr("id", format!("{:X}", rand::random::<u64>()))
        .attr("t", crate::conn::now().to_string())
        .children([NodeBuilder::new("link_code_companion_reg")
            .attr("stage", "primary_hello")
            .children([
                NodeBuilder::new("link_code_pairing_ref")
                    .bytes(pairing_ref.clone().into_bytes())
                    .build(),
                NodeBuilder::new("link_code_pairing_wrapped_primary_ephemeral_pub")
                    .bytes(wrapped.to_vec())
                    .build(),
                NodeBuilder::new("primary_identity_pub")
                    .bytes(identity_pub)
                    .build(),
            ])
            .build()])
        .build();
    let _ = pairing
        .registration
        .conn
        .tx
        .try_send(Outbound::Node(notification));
    Ok(())
}

/// Decrypts the companion's key bundle; returns (companion identity, ADV secret).
fn open_bundle(
    wrapped: &[u8],
    companion_eph: &[u8; 32],
    ephemeral: &KeyPair,
    account_key: &KeyPair,
) -> Option<([u8; 32], [u8; 32])> {
    if wrapped.len() != 32 + 12 + 96 + 16 {
        return None;
    }
    let (salt, rest) = wrapped.split_at(32);
    let (iv, ciphertext) = rest.split_at(12);
    let eph_shared = ephemeral
        .private_key
        .calculate_agreement(&PublicKey::from_djb_public_key_bytes(companion_eph).ok()?)
        .ok()?;
    let mut key = [0u8; 32];
    hkdf_sha256_into(
        &eph_shared,
        Some(salt),
        b"link_code_pairing_key_bundle_encryption_key",
        &mut key,
    )
    .ok()?;
    let bundle = Aes256Gcm::new_from_slice(&key)
        .ok()?
        .decrypt(Nonce::from_slice(iv), ciphertext)
        .ok()?;
    let companion_identity: [u8; 32] = bundle.get(..32)?.try_into().ok()?;
    if bundle.get(32..64)? != account_key.public_key.public_key_bytes() {
        return None;
    }
    let identity_shared = account_key
        .private_key
        .calculate_agreement(&PublicKey::from_djb_public_key_bytes(&companion_identity).ok()?)
        .ok()?;
    let mut secret = Vec::with_capacity(96);
    secret.extend_from_slice(&eph_shared);
    secret.extend_from_slice(&identity_shared);
    secret.extend_from_slice(bundle.get(64..96)?);
    let mut adv_secret = [0u8; 32];
    hkdf_sha256_into(&secret, None, b"adv_secret", &mut adv_secret).ok()?;
    Some((companion_identity, adv_secret))
}

fn companion_finish(shared: &Shared, id: &str, n: &Node) -> (Node, Option<Node>) {
    let pairing_ref =
        String::from_utf8(child_bytes(n, "link_code_pairing_ref")).unwrap_or_default();
    let wrapped = child_bytes(n, "link_code_pairing_wrapped_key_bundle");
    let claimed_identity = child_bytes(n, "companion_identity_public");
    let mut reg = shared.registry.lock().expect("registry lock");
    let Some(pairing) = reg.code_pairings.get(&pairing_ref).cloned() else {
        return (iq_error(id, "404", "item-not-found"), None);
    };
    let Some((companion_eph, ephemeral)) = &pairing.keys else {
        return (iq_error(id, "400", "bad-request"), None);
    };
    let account_key = reg.account_mut(&pairing.phone, None).account_key.clone();
    let Some((identity, adv_secret)) =
        open_bundle(&wrapped, companion_eph, ephemeral, &account_key)
            .filter(|(i, _)| claimed_identity == i.as_slice())
    else {
        // Wrong code (or a forged bundle): this attempt is over.
        reg.code_pairings.remove(&pairing_ref);
        return (iq_error(id, "401", "not-authorized"), None);
    };
    reg.code_pairings.remove(&pairing_ref);
    match crate::pair_success(
        &mut reg,
        &pairing.registration,
        &pairing.phone,
        &identity,
        &adv_secret,
    ) {
        Ok(node) => (iq_result(id, vec![]), Some(node)),
        Err(_) => (iq_error(id, "500", "internal-server-error"), None),
    }
}
