//! The signature headers of a delivery: SUDEVWA's `X-SUDEVWA-Signature` over the body,
//! and Standard Webhooks' `webhook-signature` over `id.timestamp.body`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The headers of one attempt. With a secret: `X-SUDEVWA-Signature` (SUDEVWA's, over the
/// body) and `webhook-signature` (Standard Webhooks: over `id.timestamp.body`, so a
/// receiver can refuse a replay with an old timestamp). Without one (a webhook stored
/// before secrets were always generated) no signature header is sent at all, rather
/// than one made with an empty key.
pub fn delivery_headers(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("content-type", "application/json".to_string()),
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", timestamp.to_string()),
    ];
    if !secret.is_empty() {
        h.push(("x-sudevwa-signature", signature(secret, body)));
        h.push((
            "webhook-signature",
            standard_signature(secret, id, timestamp, body),
        ));
    }
    h
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed with the secret's bytes: a
/// Standard Webhooks verifier takes the key as [`standard_secret`].
pub fn standard_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine;
    // HMAC accepts keys of any length.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// The webhook secret as Standard Webhooks libraries take it: `whsec_` and the base64
/// of the secret's bytes.
pub fn standard_secret(secret: &str) -> String {
    use base64::Engine;
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(secret.as_bytes())
    )
}

/// Lowercase hex HMAC-SHA256 of `body` with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}
