//! The key-bundle digest (`encrypt` iq with `<digest/>`): what the server holds of a
//! device's Signal keys — registration id, identity, signed prekey with its signature,
//! the ids of the one-time prekeys not handed out yet — and a SHA-1 over the public
//! keys, which the client compares with its own store. A device the server holds no
//! bundle for gets `404`, and the client uploads its keys again: the recovery path, driven
//! in tests by [`crate::MockNetwork::forget_key_bundle`] and a server `<notification
//! type="encrypt"><digest/></notification>` ([`crate::MockNetwork::request_digest`]).
//!
//! Client side (whatsapp-rust 0.7): `wacore/src/iq/prekeys.rs` (`DigestKeyBundleSpec::
//! parse_response`), `whatsapp-rust/src/prekeys.rs` (`validate_digest_key`: 404 →
//! re-upload), `whatsapp-rust/src/handlers/notification/device.rs` (the notification).

use crate::conn::{iq_error, iq_result};
use crate::Shared;
use whatsapp_rust::wacore::prekeys::compute_key_bundle_digest;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::Node;

/// Answers `<digest/>` for the device `me`.
pub(crate) fn digest(shared: &Shared, me: Option<&(String, u32)>, id: &str) -> Node {
    let Some((phone, device)) = me else {
        return iq_error(id, "401", "not-authorized");
    };
    let reg = shared.registry.lock().expect("registry lock");
    let Some(keys) = reg
        .accounts
        .get(phone)
        .and_then(|a| a.devices.get(device))
        .map(|d| &d.keys)
        .filter(|k| !k.identity.is_empty())
    else {
        return iq_error(id, "404", "item-not-found");
    };
    // The hash covers the public keys as uploaded (32 bytes each, no type prefix).
    let prekeys: Vec<&[u8]> = keys.prekeys.iter().map(|(_, k)| k.as_slice()).collect();
    let hash = compute_key_bundle_digest(
        &keys.identity,
        &keys.signed_prekey,
        &keys.signed_prekey_sig,
        &prekeys,
    );
    let bytes = |tag: &'static str, b: &[u8]| NodeBuilder::new(tag).bytes(b.to_vec()).build();
    let digest = NodeBuilder::new("digest")
        .children([
            bytes("registration", &keys.registration_id),
            bytes("type", &[5]),
            bytes("identity", &keys.identity),
            NodeBuilder::new("skey")
                .children([
                    bytes("id", &keys.signed_prekey_id),
                    bytes("value", &keys.signed_prekey),
                    bytes("signature", &keys.signed_prekey_sig),
                ])
                .build(),
            NodeBuilder::new("list")
                .children(keys.prekeys.iter().map(|(pid, _)| bytes("id", pid)))
                .build(),
            bytes("hash", &hash),
        ])
        .build();
    iq_result(id, vec![digest])
}

/// The server's nudge to check the bundle.
pub(crate) fn digest_notification(id: u64) -> Node {
    NodeBuilder::new("notification")
        .attr("from", crate::conn::SERVER)
        .attr("type", "encrypt")
        .attr("id", format!("digest-{id}"))
        .attr("t", crate::conn::now().to_string())
        .children([NodeBuilder::new("digest").build()])
        .build()
}
