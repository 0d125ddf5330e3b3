//! The session key: agreed end to end (X25519, then HKDF-SHA256) when a
//! session opens, so that the relay, which passes both public keys on,
//! never learns it; resumes are proved with HMAC-SHA256 under it.

use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

/// Bytes in a session id.
const ID_LEN: usize = 16;

/// Bytes in an X25519 public key.
const KEY_LEN: usize = 32;

/// Why a key, id or proof from a peer is no good.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not hex of the right length.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The key agreement failed (a low-order or otherwise bad point).
    #[error("key agreement failed")]
    Agreement,
    /// The system's random source failed.
    #[error("no random numbers")]
    Random,
}

/// One side's half of the key agreement, before the other's is known.
pub struct Half {
    private: EphemeralPrivateKey,
    /// The public key to send, in hex.
    pub public: String,
}

impl Half {
    /// A fresh key pair.
    pub fn new() -> Result<Half, KeyError> {
        let rng = SystemRandom::new();
        let private = EphemeralPrivateKey::generate(&X25519, &rng).map_err(|_| KeyError::Random)?;
        let public = private.compute_public_key().map_err(|_| KeyError::Random)?;
        Ok(Half {
            private,
            public: hex::encode(public.as_ref()),
        })
    }

    /// The session key, from the peer's public key `their_key` (hex) and
    /// the session's id.
    pub fn agree(self, their_key: &str, id: &str) -> Result<SessionKey, KeyError> {
        let their_key = decode(their_key, KEY_LEN, "public key")?;
        let id = decode(id, ID_LEN, "session id")?;
        let their_key = UnparsedPublicKey::new(&X25519, their_key);
        agreement::agree_ephemeral(self.private, &their_key, |secret| {
            let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &id);
            let prk = salt.extract(secret);
            let okm = prk
                .expand(&[b"shellrelay resume v1"], hmac::HMAC_SHA256)
                .map_err(|_| KeyError::Agreement)?;
            Ok(SessionKey(hmac::Key::from(okm)))
        })
        .map_err(|_| KeyError::Agreement)?
    }
}

/// A fresh random session id, in hex.
pub fn new_id() -> Result<String, KeyError> {
    let mut id = [0u8; ID_LEN];
    SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| KeyError::Random)?;
    Ok(hex::encode(id))
}

/// Checks that `id` is a session id (hex of the right length).
pub fn check_id(id: &str) -> Result<(), KeyError> {
    decode(id, ID_LEN, "session id").map(drop)
}

/// Which end a proof is from: a proof from one end is no good as the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client side (forwarder or `connect`).
    Client,
    /// The host agent.
    Host,
}

/// The key both ends agreed on; known to them only.
pub struct SessionKey(hmac::Key);

impl SessionKey {
    /// The proof, in hex, that `end` knows the key, for resume step
    /// `attempt` with this position.
    pub fn prove(&self, end: End, attempt: u64, received: u64, fin: bool) -> String {
        hex::encode(hmac::sign(&self.0, &message(end, attempt, received, fin)).as_ref())
    }

    /// Whether `proof` (hex) is `end`'s for this step and position.
    pub fn check(&self, end: End, attempt: u64, received: u64, fin: bool, proof: &str) -> bool {
        let Ok(proof) = hex::decode(proof) else {
            return false;
        };
        hmac::verify(&self.0, &message(end, attempt, received, fin), &proof).is_ok()
    }
}

fn message(end: End, attempt: u64, received: u64, fin: bool) -> [u8; 18] {
    let mut m = [0u8; 18];
    m[0] = match end {
        End::Client => b'c',
        End::Host => b'h',
    };
    m[1..9].copy_from_slice(&attempt.to_be_bytes());
    m[9..17].copy_from_slice(&received.to_be_bytes());
    m[17] = u8::from(fin);
    m
}

fn decode(text: &str, len: usize, what: &'static str) -> Result<Vec<u8>, KeyError> {
    match hex::decode(text) {
        Ok(bytes) if bytes.len() == len => Ok(bytes),
        _ => Err(KeyError::Malformed(what)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_agree_and_proofs_bind_end_step_and_position() {
        let id = new_id().unwrap();
        let (client, host) = (Half::new().unwrap(), Half::new().unwrap());
        let (c_pub, h_pub) = (client.public.clone(), host.public.clone());
        let c = client.agree(&h_pub, &id).unwrap();
        let h = host.agree(&c_pub, &id).unwrap();
        let proof = c.prove(End::Client, 1, 100, false);
        assert!(h.check(End::Client, 1, 100, false, &proof));
        assert!(!h.check(End::Host, 1, 100, false, &proof));
        assert!(!h.check(End::Client, 2, 100, false, &proof));
        assert!(!h.check(End::Client, 1, 101, false, &proof));
        assert!(!h.check(End::Client, 1, 100, true, &proof));
        assert!(!h.check(End::Client, 1, 100, false, "zz"));
        // Someone who saw both public keys, and agreed with one of them,
        // has another key.
        let eve = Half::new().unwrap().agree(&h_pub, &id).unwrap();
        assert!(!h.check(
            End::Client,
            1,
            100,
            false,
            &eve.prove(End::Client, 1, 100, false)
        ));
    }

    #[test]
    fn malformed_keys_and_ids_are_errors() {
        let id = new_id().unwrap();
        assert!(Half::new().unwrap().agree("00", &id).is_err());
        assert!(Half::new().unwrap().agree(&"0".repeat(64), "x").is_err());
        // The all-zero point gives an all-zero secret: refused.
        assert!(Half::new().unwrap().agree(&"0".repeat(64), &id).is_err());
        assert!(check_id(&id).is_ok() && check_id("abc").is_err());
    }
}
