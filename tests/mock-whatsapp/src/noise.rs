//! The responder side of WhatsApp's Noise handshake, and the transport ciphers after it.
//!
//! XX for new and unpaired devices. A paired device reconnecting tries IK (its hello
//! carries its encrypted static key and its login payload): the server accepts it and
//! the handshake ends after the server hello, unless IK is switched off (a fault) or
//! the client's hello does not decrypt under this server's static key (say, the mock
//! restarted with a new identity). Then it answers with an XX-shaped server hello
//! under the XXfallback pattern; the client pivots and finishes as in XX
//! (PROTOCOL.md §1.5).
//! Directions: the server decrypts with the first key of `finish()` and encrypts with
//! the second, each with its own counter from 0 (PROTOCOL.md §1.2).

use whatsapp_rust::buffa::Message as _;
use whatsapp_rust::wacore::handshake::NoiseHandshake;
use whatsapp_rust::wacore::libsignal::protocol::KeyPair;
use whatsapp_rust::wacore::noise::NoiseCipher;
use whatsapp_rust::wacore_binary::consts::{
    NOISE_PATTERN_IK, NOISE_PATTERN_XX, NOISE_PATTERN_XXFALLBACK, WA_CONN_HEADER,
};
use whatsapp_rust::waproto::whatsapp as wa;

/// The server's long-term Noise identity and the certificate chain it presents.
pub struct ServerIdentity {
    pub static_key: KeyPair,
    pub cert_chain: Vec<u8>,
}

impl ServerIdentity {
    /// A fresh identity with a zero-signed chain: clients built with
    /// `danger-skip-cert-chain-verify` accept it, production clients never do.
    pub fn generate() -> Self {
        let static_key = KeyPair::generate(&mut rand::rng());
        let cert_chain = cert_chain(static_key.public_key.public_key_bytes());
        Self {
            static_key,
            cert_chain,
        }
    }
}

fn cert_chain(leaf_key: &[u8]) -> Vec<u8> {
    use wa::cert_chain::{noise_certificate::Details, NoiseCertificate};
    let cert = |serial: u32, issuer: u32, key: Vec<u8>| NoiseCertificate {
        details: Some(
            Details {
                serial: Some(serial),
                issuer_serial: Some(issuer),
                key: Some(key),
                // Valid from 2023 to 2030 (the client checks the window before IK).
                not_before: Some(1_700_000_000),
                not_after: Some(1_899_000_000),
            }
            .encode_to_vec(),
        ),
        signature: Some(vec![0u8; 64]),
    };
    wa::CertChain {
        intermediate: cert(7, 0, vec![0x5a; 32]).into(),
        leaf: cert(8, 7, leaf_key.to_vec()).into(),
    }
    .encode_to_vec()
}

/// Established transport ciphers of one connection.
pub struct Transport {
    read: NoiseCipher,
    write: NoiseCipher,
}

impl Transport {
    /// Splits into the reader's and the writer's halves, each with its counter.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        (
            ReadHalf {
                cipher: self.read,
                counter: 0,
            },
            WriteHalf {
                cipher: self.write,
                counter: 0,
            },
        )
    }
}

/// Decrypts inbound frames.
pub struct ReadHalf {
    cipher: NoiseCipher,
    counter: u32,
}

impl ReadHalf {
    /// Decrypts one inbound frame. The counter advances even on failure, as on the
    /// client, so one bad frame cannot shift every later one.
    pub fn decrypt(&mut self, frame: &[u8]) -> Result<Vec<u8>, String> {
        let mut buf = frame.to_vec();
        let ctr = self.counter;
        self.counter = self.counter.wrapping_add(1);
        self.cipher
            .decrypt_in_place_with_counter(ctr, &mut buf)
            .map_err(|e| format!("decrypt: {e}"))?;
        Ok(buf)
    }
}

/// Encrypts outbound frames.
pub struct WriteHalf {
    cipher: NoiseCipher,
    counter: u32,
}

impl WriteHalf {
    /// Encrypts one outbound frame.
    pub fn encrypt(&mut self, plain: &[u8]) -> Result<Vec<u8>, String> {
        let ctr = self.counter;
        self.counter = self.counter.wrapping_add(1);
        self.cipher
            .encrypt_with_counter(ctr, plain)
            .map_err(|e| format!("encrypt: {e}"))
    }
}

/// A handshake in progress after the client hello.
pub struct Responder {
    noise: NoiseHandshake,
    ephemeral: KeyPair,
    /// Whether the client attempted IK (and is being answered with XXfallback).
    pub fallback: bool,
}

/// What the server does after the client hello.
pub enum Hello {
    /// XX or XXfallback: send this server hello, then read the client finish.
    Continue(Responder, Vec<u8>),
    /// IK accepted: send this server hello; the handshake is complete.
    Done(Box<Established>, Vec<u8>),
}

/// A finished handshake: the client's static key, its payload and the ciphers.
pub struct Established {
    pub client_static: [u8; 32],
    pub payload: wa::ClientPayload,
    pub transport: Transport,
}

/// The IK responder: the hello already carries the client's static key and payload.
fn ik_accept(
    identity: &ServerIdentity,
    client_eph: &[u8; 32],
    enc_static: &[u8],
    enc_payload: &[u8],
) -> Result<(Established, Vec<u8>), String> {
    let server_priv = identity.static_key.private_key.serialize();
    let mut noise =
        NoiseHandshake::new(NOISE_PATTERN_IK, &WA_CONN_HEADER).map_err(|e| e.to_string())?;
    // Pre-message: the client already knows our static key.
    noise.authenticate(identity.static_key.public_key.public_key_bytes());
    noise.authenticate(client_eph);
    noise
        .mix_shared_secret(server_priv, client_eph)
        .map_err(|e| e.to_string())?;
    let client_static: [u8; 32] = noise
        .decrypt(enc_static)
        .map_err(|e| format!("ik static: {e}"))?
        .try_into()
        .map_err(|_| "bad static length")?;
    noise
        .mix_shared_secret(server_priv, &client_static)
        .map_err(|e| e.to_string())?;
    let payload = noise
        .decrypt(enc_payload)
        .map_err(|e| format!("ik payload: {e}"))?;
    let payload = wa::ClientPayload::decode_from_slice(&payload)
        .map_err(|e| format!("client payload: {e}"))?;
    let ephemeral = KeyPair::generate(&mut rand::rng());
    let eph_pub = ephemeral.public_key.public_key_bytes().to_vec();
    noise.authenticate(&eph_pub);
    // ee, then se (our ephemeral with the client's static).
    noise
        .mix_shared_secret(ephemeral.private_key.serialize(), client_eph)
        .map_err(|e| e.to_string())?;
    noise
        .mix_shared_secret(ephemeral.private_key.serialize(), &client_static)
        .map_err(|e| e.to_string())?;
    let enc_cert = noise
        .encrypt(&identity.cert_chain)
        .map_err(|e| e.to_string())?;
    let (k1, k2) = noise.finish().map_err(|e| e.to_string())?;
    let reply = wa::HandshakeMessage {
        server_hello: wa::handshake_message::ServerHello {
            ephemeral: Some(eph_pub),
            // No static: that is how the client learns IK was accepted.
            r#static: None,
            payload: Some(enc_cert),
            ..Default::default()
        }
        .into(),
        ..Default::default()
    };
    Ok((
        Established {
            client_static,
            payload,
            transport: Transport {
                read: k1,
                write: k2,
            },
        },
        reply.encode_to_vec(),
    ))
}

impl Responder {
    /// Processes the client hello (raw HandshakeMessage bytes). An IK attempt is
    /// accepted when `accept_ik` is set and it decrypts under our static key;
    /// otherwise it is answered with XXfallback.
    pub fn hello(
        identity: &ServerIdentity,
        client_hello: &[u8],
        accept_ik: bool,
    ) -> Result<Hello, String> {
        let msg = wa::HandshakeMessage::decode_from_slice(client_hello)
            .map_err(|e| format!("hello: {e}"))?;
        let hello = msg.client_hello.into_option().ok_or("no client hello")?;
        let client_eph: [u8; 32] = hello
            .ephemeral
            .ok_or("no ephemeral")?
            .try_into()
            .map_err(|_| "bad ephemeral length")?;
        if let (true, Some(st), Some(pl)) = (accept_ik, &hello.r#static, &hello.payload) {
            match ik_accept(identity, &client_eph, st, pl) {
                Ok((done, reply)) => return Ok(Hello::Done(Box::new(done), reply)),
                Err(e) => tracing::debug!(error = %e, "IK refused, answering XXfallback"),
            }
        }
        let fallback = hello.r#static.is_some();
        let pattern = if fallback {
            NOISE_PATTERN_XXFALLBACK
        } else {
            NOISE_PATTERN_XX
        };
        let mut noise = NoiseHandshake::new(pattern, &WA_CONN_HEADER).map_err(|e| e.to_string())?;
        noise.authenticate(&client_eph);
        let ephemeral = KeyPair::generate(&mut rand::rng());
        let eph_pub = ephemeral.public_key.public_key_bytes().to_vec();
        noise.authenticate(&eph_pub);
        noise
            .mix_shared_secret(ephemeral.private_key.serialize(), &client_eph)
            .map_err(|e| e.to_string())?;
        let enc_static = noise
            .encrypt(identity.static_key.public_key.public_key_bytes())
            .map_err(|e| e.to_string())?;
        noise
            .mix_shared_secret(identity.static_key.private_key.serialize(), &client_eph)
            .map_err(|e| e.to_string())?;
        let enc_cert = noise
            .encrypt(&identity.cert_chain)
            .map_err(|e| e.to_string())?;
        let reply = wa::HandshakeMessage {
            server_hello: wa::handshake_message::ServerHello {
                ephemeral: Some(eph_pub),
                r#static: Some(enc_static),
                payload: Some(enc_cert),
                ..Default::default()
            }
            .into(),
            ..Default::default()
        };
        Ok(Hello::Continue(
            Self {
                noise,
                ephemeral,
                fallback,
            },
            reply.encode_to_vec(),
        ))
    }

    /// Processes the client finish; returns the client's static key, its ClientPayload
    /// and the transport ciphers.
    pub fn finish(mut self, client_finish: &[u8]) -> Result<Established, String> {
        let msg = wa::HandshakeMessage::decode_from_slice(client_finish)
            .map_err(|e| format!("finish: {e}"))?;
        let fin = msg.client_finish.into_option().ok_or("no client finish")?;
        let client_static = self
            .noise
            .decrypt(&fin.r#static.ok_or("no static")?)
            .map_err(|e| format!("static: {e}"))?;
        let client_static: [u8; 32] = client_static.try_into().map_err(|_| "bad static length")?;
        self.noise
            .mix_shared_secret(self.ephemeral.private_key.serialize(), &client_static)
            .map_err(|e| e.to_string())?;
        let payload = self
            .noise
            .decrypt(&fin.payload.ok_or("no payload")?)
            .map_err(|e| format!("payload: {e}"))?;
        let payload = wa::ClientPayload::decode_from_slice(&payload)
            .map_err(|e| format!("client payload: {e}"))?;
        let (k1, k2) = self.noise.finish().map_err(|e| e.to_string())?;
        Ok(Established {
            client_static,
            payload,
            transport: Transport {
                read: k1,
                write: k2,
            },
        })
    }
}
