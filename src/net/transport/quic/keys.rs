//! QUIC specifics of the transport: the relay's endpoint keys, derived
//! from its private key so that they survive restarts.

use std::sync::Arc;

use crate::net::tls::Identity;

/// The relay's endpoint configuration, with a stateless-reset key derived
/// from its private key: a relay restarted with the same key (after a
/// crash too) answers packets of its predecessor's connections with a
/// stateless reset its peers accept, so they reconnect at once instead of
/// waiting out their idle timeout. Whoever holds the private key could
/// forge resets, but could impersonate the relay outright anyway.
///
/// The connection ids it hands out are keyed the same way, so that the
/// restarted relay recognises them as its own and answers them.
pub fn endpoint_config(identity: &Identity) -> quinn::EndpointConfig {
    use ring::hmac;
    let secret = hmac::Key::new(hmac::HMAC_SHA256, identity.key.secret_der());
    let derive =
        |label: &[u8]| hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&secret, label).as_ref());
    let mut config =
        quinn::EndpointConfig::new(Arc::new(derive(b"shellrelay stateless reset key v1")));
    let cids = SignedCids {
        key: derive(b"shellrelay connection id key v1"),
    };
    config.cid_generator(move || Box::new(cids.clone()));
    // A restarted relay may owe a reset to every peer at once; quinn's
    // default (one per 20 ms) would leave most of them to their idle
    // timeout. A reset is always smaller than the packet that caused it.
    config.min_reset_interval(std::time::Duration::from_micros(100));
    config
}

/// Connection ids of 8 random bytes and an 8-byte HMAC tag: a restarted
/// relay recognises its predecessor's ids (and so answers them with a
/// stateless reset), the 2^64 random part never repeats an id (and with it
/// a reset token), and packets with made-up ids are dropped unanswered.
#[derive(Clone)]
struct SignedCids {
    key: ring::hmac::Key,
}

impl SignedCids {
    const RANDOM: usize = 8;
    const TAG: usize = 8;

    fn tag(&self, random: &[u8]) -> [u8; Self::TAG] {
        let mut tag = [0u8; Self::TAG];
        tag.copy_from_slice(&ring::hmac::sign(&self.key, random).as_ref()[..Self::TAG]);
        tag
    }
}

impl quinn_proto::ConnectionIdGenerator for SignedCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut id = [0u8; Self::RANDOM + Self::TAG];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut id[..Self::RANDOM]);
        let tag = self.tag(&id[..Self::RANDOM]);
        id[Self::RANDOM..].copy_from_slice(&tag);
        quinn::ConnectionId::new(&id)
    }

    fn validate(&self, cid: &quinn::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        let valid = cid.len() == Self::RANDOM + Self::TAG
            && self.tag(&cid[..Self::RANDOM])[..] == cid[Self::RANDOM..];
        valid.then_some(()).ok_or(quinn_proto::InvalidCid)
    }

    fn cid_len(&self) -> usize {
        Self::RANDOM + Self::TAG
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_carry_a_tag_only_the_same_key_accepts() {
        use quinn_proto::ConnectionIdGenerator;
        let key = |k: &[u8]| SignedCids {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k),
        };
        let mut ours = key(b"one");
        let (a, b) = (ours.generate_cid(), ours.generate_cid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(ours.validate(&a).is_ok());
        assert!(
            key(b"one").validate(&b).is_ok(),
            "a restart with the same key"
        );
        assert!(key(b"two").validate(&a).is_err(), "another key");
        let mut forged = a.to_vec();
        forged[0] ^= 1;
        assert!(ours.validate(&quinn::ConnectionId::new(&forged)).is_err());
        assert!(ours.validate(&quinn::ConnectionId::new(&[0u8; 8])).is_err());
    }
}
