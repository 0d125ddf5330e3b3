//! JWT access tokens: claims, minting, and the relay's verification with a
//! typed reason for every refusal.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use jsonwebtoken::{Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::access::keys::{KeySet, Secret, SigningKey, VerifyKey};
use crate::ops::clock::{fmt_unix, unix_now, MAX_EXP};
use crate::protocol::id::{self, glob_match, valid_host_id, valid_host_pattern};
use crate::protocol::{Printable, Role};

/// The claims of a Shellrelay token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Host id.
    pub sub: String,
    /// Host or client.
    pub role: Role,
    /// The relay's audience.
    pub aud: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Not valid before, Unix seconds.
    pub nbf: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Optional token id, which the relay's revocation list can name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Client tokens only: the hosts the token reaches, as host ids or
    /// patterns (`lab-*`, `db?`). Empty: the one host named by `sub`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

impl Claims {
    /// Claims for `role` on host `sub`, valid from `now` for `ttl` (at most
    /// until [`MAX_EXP`]).
    pub fn new(role: Role, sub: &str, audience: &str, ttl: Duration) -> Claims {
        let now = unix_now();
        Claims {
            sub: sub.to_owned(),
            role,
            aud: audience.to_owned(),
            exp: now.saturating_add(ttl.as_secs()).min(MAX_EXP),
            nbf: now,
            iat: now,
            jti: None,
            hosts: Vec::new(),
        }
    }

    /// Whether this token reaches host `id`.
    pub fn covers(&self, id: &str) -> bool {
        if self.hosts.is_empty() {
            self.sub == id
        } else {
            self.hosts.iter().any(|p| glob_match(p, id))
        }
    }

    /// The host a client reaches when it names none: the token's only host,
    /// or `None` when the token covers several.
    pub fn only_host(&self) -> Option<&str> {
        match self.hosts.as_slice() {
            [] => Some(&self.sub),
            [one] if valid_host_id(one) => Some(one),
            _ => None,
        }
    }
}

/// Where a peer's token comes from. A file is re-read on every connect, so a
/// rotated token takes effect without a restart.
#[derive(Clone)]
pub enum TokenSource {
    /// A token given directly.
    Literal(String),
    /// A file holding the token.
    File(PathBuf),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Literal(_) => f.write_str("TokenSource::Literal(<redacted>)"),
            TokenSource::File(p) => write!(f, "TokenSource::File({})", p.display()),
        }
    }
}

impl TokenSource {
    /// The token, read afresh.
    pub fn load(&self) -> anyhow::Result<String> {
        let token = match self {
            TokenSource::Literal(t) => t.trim().to_owned(),
            TokenSource::File(path) => std::fs::read_to_string(path)
                .with_context(|| format!("could not read token file {}", path.display()))?
                .trim()
                .to_owned(),
        };
        if token.is_empty() {
            bail!("token is empty");
        }
        Ok(token)
    }
}

/// Signs claims into a JWT (HS256, no `kid`).
pub fn mint(secret: &Secret, claims: &Claims) -> anyhow::Result<String> {
    mint_with(&SigningKey::secret(secret), None, claims)
}

/// Signs claims with `key`, naming `kid` in the header when given.
pub fn mint_with(key: &SigningKey, kid: Option<&str>, claims: &Claims) -> anyhow::Result<String> {
    let mut header = Header::new(key.algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key.key).context("could not sign token")
}

/// The claims of `token`, read without checking its signature (the relay
/// checks that): what a peer needs to know of its own token, such as the
/// host id a fleet of relays is chosen by.
pub fn peek_claims(token: &str) -> anyhow::Result<Claims> {
    use base64::Engine;
    let payload = token
        .trim()
        .split('.')
        .nth(1)
        .context("the token is not a JWT")?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .context("the token is not a JWT")?;
    serde_json::from_slice(&json).context("the token is not a shellrelay token")
}

/// Why the relay refused a token. Messages are what the peer is told.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// Not a JWT, or claims missing or of the wrong type.
    #[error("token is malformed")]
    Malformed,
    /// Signed with another key or algorithm.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired at {}", fmt_unix(*.0))]
    Expired(u64),
    /// `nbf` is still ahead.
    #[error("token is not valid before {}", fmt_unix(*.0))]
    NotYetValid(u64),
    /// `aud` names another relay.
    #[error("token audience {found:?} does not match this relay ({expected:?})")]
    WrongAudience {
        /// The token's `aud`.
        found: String,
        /// The relay's audience.
        expected: String,
    },
    /// `exp` or `nbf` beyond [`MAX_EXP`].
    #[error("token times are out of range")]
    OutOfRange,
    /// `sub` is not a valid host id, or `hosts` holds an invalid pattern.
    #[error("token names an invalid host id (host ids are 1 to 64 letters, digits, '.', '_' or '-', starting with a letter, digit or '_')")]
    BadHostId,
    /// The header's `kid` names no key of this relay (or there is no `kid`
    /// and the relay has no key for tokens without one).
    #[error("{}", match .0 { Some(kid) => format!("token key id {kid:?} is not known to this relay"), None => "token has no key id (kid) and this relay needs one".to_owned() })]
    UnknownKey(Option<String>),
    /// A host token used as a client token or the other way round.
    #[error("{found} token used as a {wanted} token")]
    WrongRole {
        /// The token's role.
        found: Role,
        /// The role asked for.
        wanted: Role,
    },
}

impl TokenError {
    /// Whether the token was checked against one of the relay's keys and
    /// found well signed, and refused for what it says: its claims can be
    /// named (as who was refused) without trusting a forger.
    pub fn well_signed(&self) -> bool {
        // Every variant named, so that a new one must be placed.
        match self {
            TokenError::Malformed | TokenError::BadSignature | TokenError::UnknownKey(_) => false,
            TokenError::Expired(_)
            | TokenError::NotYetValid(_)
            | TokenError::WrongAudience { .. }
            | TokenError::OutOfRange
            | TokenError::BadHostId
            | TokenError::WrongRole { .. } => true,
        }
    }
}

/// Checks tokens for one relay.
#[derive(Clone)]
pub struct Verifier {
    keys: KeySet,
    audience: String,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for HS256 tokens without `kid` signed with `secret` for
    /// `audience`.
    pub fn new(secret: &Secret, audience: &str) -> Verifier {
        Verifier::with_keys(KeySet::single(VerifyKey::secret(secret)), audience)
    }

    /// A verifier that picks each token's key from `keys` by its `kid`.
    pub fn with_keys(keys: KeySet, audience: &str) -> Verifier {
        Verifier {
            keys,
            audience: audience.to_owned(),
        }
    }

    /// Verifies `token` for `role` at Unix time `now`.
    pub fn verify(&self, token: &str, role: Role, now: u64) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let kid = header.kid.as_deref();
        let key = self.keys.get(kid).ok_or_else(|| {
            // Peer-controlled: keep what is echoed short and printable.
            TokenError::UnknownKey(kid.map(|k| Printable::new(k, id::MAX_KID_LEN).to_string()))
        })?;
        // Each key accepts exactly its own algorithm.
        let mut validation = Validation::new(key.algorithm);
        // Time and audience are checked below, with exact reasons and no leeway:
        // the relay enforces expiry on live connections to the second, so
        // admitting a token it would close at once helps nobody.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    TokenError::BadSignature
                }
                _ => TokenError::Malformed,
            }
        })?;
        let claims = data.claims;
        if claims.exp > MAX_EXP || claims.nbf > MAX_EXP {
            return Err(TokenError::OutOfRange);
        }
        if !valid_host_id(&claims.sub)
            || !claims.hosts.iter().all(|p| valid_host_pattern(p))
            || (claims.role == Role::Host && !claims.hosts.is_empty())
        {
            return Err(TokenError::BadHostId);
        }
        if claims.aud != self.audience {
            return Err(TokenError::WrongAudience {
                found: claims.aud,
                expected: self.audience.clone(),
            });
        }
        if claims.role != role {
            return Err(TokenError::WrongRole {
                found: claims.role,
                wanted: role,
            });
        }
        if now >= claims.exp {
            return Err(TokenError::Expired(claims.exp));
        }
        if now < claims.nbf {
            return Err(TokenError::NotYetValid(claims.nbf));
        }
        Ok(claims)
    }
}

/// A random token id: 16 bytes, hex.
pub fn random_id() -> String {
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey};

    fn secret() -> Secret {
        Secret::new(b"0123456789abcdef0123".to_vec()).unwrap()
    }

    #[test]
    fn accepts_a_good_token_and_names_every_refusal() {
        let s = secret();
        let v = Verifier::new(&s, "shellrelay");
        let now = unix_now();
        let good = Claims::new(Role::Host, "lab1", "shellrelay", Duration::from_secs(60));
        let tok = mint(&s, &good).unwrap();
        assert_eq!(v.verify(&tok, Role::Host, now).unwrap(), good);

        assert_eq!(
            v.verify(&tok, Role::Client, now),
            Err(TokenError::WrongRole {
                found: Role::Host,
                wanted: Role::Client
            })
        );
        let other = Secret::new(b"another secret, longer".to_vec()).unwrap();
        assert_eq!(
            v.verify(&mint(&other, &good).unwrap(), Role::Host, now),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            v.verify("garbage", Role::Host, now),
            Err(TokenError::Malformed)
        );
        assert_eq!(v.verify("", Role::Host, now), Err(TokenError::Malformed));

        let mut c = good.clone();
        c.exp = now - 10;
        let err = v
            .verify(&mint(&s, &c).unwrap(), Role::Host, now)
            .unwrap_err();
        assert_eq!(err, TokenError::Expired(now - 10));
        assert!(err.to_string().starts_with("token expired at 20"), "{err}");

        let mut c = good.clone();
        c.nbf = now + 100;
        assert_eq!(
            v.verify(&mint(&s, &c).unwrap(), Role::Host, now),
            Err(TokenError::NotYetValid(now + 100))
        );

        let mut c = good.clone();
        c.aud = "elsewhere".into();
        assert!(matches!(
            v.verify(&mint(&s, &c).unwrap(), Role::Host, now),
            Err(TokenError::WrongAudience { .. })
        ));
    }

    #[test]
    fn far_future_times_and_odd_host_ids_are_refused_not_panicked_on() {
        let s = secret();
        let v = Verifier::new(&s, "shellrelay");
        let mut c = Claims::new(Role::Host, "lab1", "shellrelay", Duration::from_secs(60));
        c.exp = u64::MAX;
        assert_eq!(
            v.verify(&mint(&s, &c).unwrap(), Role::Host, unix_now()),
            Err(TokenError::OutOfRange)
        );
        assert_eq!(
            fmt_unix(u64::MAX),
            format!("{} seconds after 1970", u64::MAX)
        );
        assert!(fmt_unix(MAX_EXP).starts_with("9999-12-31T23:59:59"));
        let c = Claims::new(
            Role::Host,
            "lab1",
            "shellrelay",
            Duration::from_secs(u64::MAX),
        );
        assert_eq!(c.exp, MAX_EXP);
        for bad in ["", "a b", "lab\nforged", "ünï", &"x".repeat(65)] {
            let c = Claims::new(Role::Host, bad, "shellrelay", Duration::from_secs(60));
            assert_eq!(
                v.verify(&mint(&s, &c).unwrap(), Role::Host, unix_now()),
                Err(TokenError::BadHostId),
                "{bad:?}"
            );
        }
        assert!(valid_host_id("lab-1.example_2"));
    }

    #[test]
    fn only_hs256_is_accepted() {
        let s = secret();
        let v = Verifier::new(&s, "shellrelay");
        let claims = Claims::new(Role::Host, "lab1", "shellrelay", Duration::from_secs(60));
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(s.expose()),
        )
        .unwrap();
        assert!(v.verify(&hs384, Role::Host, unix_now()).is_err());
        // An unsigned token: header {"alg":"none"}, the same claims, no signature.
        let good = mint(&s, &claims).unwrap();
        let body = good.split('.').nth(1).unwrap();
        let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{body}.");
        assert!(v.verify(&unsigned, Role::Host, unix_now()).is_err());
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let s = secret();
        assert!(!format!("{s:?}").contains("0123"));
        let t = TokenSource::Literal("eyJsecret".into());
        assert!(!format!("{t:?}").contains("eyJ"));
        assert!(Secret::new(b"short".to_vec()).is_err());
    }
}
