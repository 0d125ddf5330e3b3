//! Tokens from a peer: `Verifier::verify` on the input as lossy UTF-8 with a
//! fixed secret, for both roles. An input whose first byte is odd instead
//! overwrites part of a real token, to explore near-valid tokens.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shellrelay::access::token::{mint, Claims, Role, Secret, Verifier, DEFAULT_AUDIENCE, MAX_EXP};

/// A fixed "now" keeps runs reproducible.
const NOW: u64 = 1_700_000_000;

struct Fixture {
    verifier: Verifier,
    claims: Claims,
    token: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let secret = Secret::new(b"fuzzing-secret-0123456789abcdef".to_vec()).expect("secret");
        let claims = Claims {
            sub: "lab1".into(),
            role: Role::Host,
            aud: DEFAULT_AUDIENCE.into(),
            exp: MAX_EXP,
            nbf: 0,
            iat: 0,
            jti: Some("fuzz".into()),
            hosts: Vec::new(),
        };
        let token = mint(&secret, &claims).expect("mint");
        let verifier = Verifier::new(&secret, DEFAULT_AUDIENCE);
        assert_eq!(verifier.verify(&token, Role::Host, NOW), Ok(claims.clone()));
        Fixture {
            verifier,
            claims,
            token,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let token = match data.split_first() {
        Some((&mode, rest)) if mode & 1 == 1 && rest.len() >= 2 => {
            // Overwrite the real token from an offset with the rest.
            let mut raw = f.token.clone().into_bytes();
            let at = u16::from_le_bytes([rest[0], rest[1]]) as usize % (raw.len() + 1);
            for (i, &b) in rest[2..].iter().enumerate() {
                match raw.get_mut(at + i) {
                    Some(slot) => *slot = b,
                    None => raw.push(b),
                }
            }
            String::from_utf8_lossy(&raw).into_owned()
        }
        _ => String::from_utf8_lossy(data).into_owned(),
    };
    for role in [Role::Host, Role::Client] {
        match f.verifier.verify(&token, role, NOW) {
            // Nothing but the real token (or a change no decoder can see,
            // such as a base64 padding bit) carries a valid signature.
            Ok(claims) => assert_eq!(claims, f.claims, "accepted a forged token: {token:?}"),
            // The relay logs this and sends it to the peer.
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
