//! Token keys: HS256 shared secrets and Ed25519 (EdDSA) or P-256 (ES256)
//! key pairs, chosen by the token's `kid`, so keys rotate without downtime
//! and an issuer need not share a signing secret with the relay.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rand::RngCore;

use crate::access::private::{self, Existing};
use crate::protocol::id;

/// Shortest shared secret accepted; HS256 with less is guessable offline.
pub const MIN_SECRET_LEN: usize = 16;

/// The shared HS256 secret. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

impl Secret {
    /// A secret from bytes; refuses one shorter than [`MIN_SECRET_LEN`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> anyhow::Result<Secret> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_LEN {
            bail!(
                "secret is {} bytes long; at least {MIN_SECRET_LEN} are needed",
                bytes.len()
            );
        }
        Ok(Secret(bytes))
    }

    /// Reads a secret file, without its trailing newline. The file must not
    /// be readable by other users (as ssh insists for private keys).
    pub fn from_file(path: &Path) -> anyhow::Result<Secret> {
        private::ensure_private(path, "secret file")?;
        let text = std::fs::read(path)
            .with_context(|| format!("could not read secret file {}", path.display()))?;
        let trimmed = text.trim_ascii_end();
        Secret::new(trimmed.to_vec()).with_context(|| format!("in {}", path.display()))
    }

    /// A fresh random 32-byte secret, hex-encoded so it can live in a file.
    pub fn generate() -> Secret {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        Secret(hex::encode(raw).into_bytes())
    }

    /// The secret's bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// The kinds of key a token can be signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyKind {
    /// A shared secret (HS256): whoever verifies can also sign.
    Hs256,
    /// An Ed25519 key pair (EdDSA): the relay holds only the public key.
    Ed25519,
    /// A P-256 key pair (ES256): the relay holds only the public key.
    Es256,
}

/// A key that checks signatures, with the one algorithm it accepts.
#[derive(Clone)]
pub struct VerifyKey {
    pub(crate) algorithm: Algorithm,
    pub(crate) key: DecodingKey,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyKey({:?})", self.algorithm)
    }
}

impl VerifyKey {
    /// An HS256 key.
    pub fn secret(secret: &Secret) -> VerifyKey {
        VerifyKey {
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret.expose()),
        }
    }

    /// Reads an Ed25519 or P-256 public key in PEM (as `keygen` writes to
    /// `.pub`). Anything else is refused: a file taken for a shared secret
    /// by mistake would let whoever holds the public key sign tokens.
    pub fn public_key_file(path: &Path) -> anyhow::Result<VerifyKey> {
        let text = std::fs::read(path)
            .with_context(|| format!("could not read public key {}", path.display()))?;
        if String::from_utf8_lossy(&text).contains("PRIVATE KEY") {
            bail!(
                "{} holds a private key; give the relay the public key (keygen writes it beside the private key as .pub)",
                path.display()
            );
        }
        if let Ok(key) = DecodingKey::from_ed_pem(&text) {
            return Ok(VerifyKey {
                algorithm: Algorithm::EdDSA,
                key,
            });
        }
        if let Ok(key) = DecodingKey::from_ec_pem(&text) {
            return Ok(VerifyKey {
                algorithm: Algorithm::ES256,
                key,
            });
        }
        bail!(
            "{} is not an Ed25519 or P-256 public key in PEM (-----BEGIN PUBLIC KEY-----); \
             a shared secret goes to --token-secret",
            path.display()
        )
    }

    /// Reads a shared secret file (HS256), which must not be readable by
    /// other users and must not be a key in PEM.
    pub fn secret_file(path: &Path) -> anyhow::Result<VerifyKey> {
        let secret = Secret::from_file(path)?;
        if secret.expose().windows(11).any(|w| w == b"-----BEGIN ") {
            bail!(
                "{} holds a key in PEM, not a shared secret; a public key goes to --token-key",
                path.display()
            );
        }
        Ok(VerifyKey::secret(&secret))
    }
}

/// A key that signs tokens.
#[derive(Clone)]
pub struct SigningKey {
    pub(crate) algorithm: Algorithm,
    pub(crate) key: EncodingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({:?})", self.algorithm)
    }
}

impl SigningKey {
    /// An HS256 key.
    pub fn secret(secret: &Secret) -> SigningKey {
        SigningKey {
            algorithm: Algorithm::HS256,
            key: EncodingKey::from_secret(secret.expose()),
        }
    }

    /// Reads a PEM private key (PKCS#8, Ed25519 or P-256, as `keygen`
    /// writes), which must not be readable by other users.
    pub fn private_key_file(path: &Path) -> anyhow::Result<SigningKey> {
        private::ensure_private(path, "key file")?;
        let text = std::fs::read(path)
            .with_context(|| format!("could not read key {}", path.display()))?;
        if let Ok(key) = EncodingKey::from_ed_pem(&text) {
            return Ok(SigningKey {
                algorithm: Algorithm::EdDSA,
                key,
            });
        }
        if let Ok(key) = EncodingKey::from_ec_pem(&text) {
            return Ok(SigningKey {
                algorithm: Algorithm::ES256,
                key,
            });
        }
        bail!(
            "{} is not an Ed25519 or P-256 private key in PEM (PKCS#8); \
             a shared secret goes to --secret-file",
            path.display()
        )
    }
}

/// The relay's verification keys: one per `kid`, and optionally one for
/// tokens that carry no `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    default: Option<VerifyKey>,
    by_kid: HashMap<String, VerifyKey>,
}

impl KeySet {
    /// A set with only a key for tokens without `kid`.
    pub fn single(key: VerifyKey) -> KeySet {
        KeySet {
            default: Some(key),
            by_kid: HashMap::new(),
        }
    }

    /// Sets the key for tokens without `kid`.
    pub fn set_default(&mut self, key: VerifyKey) {
        self.default = Some(key);
    }

    /// Adds the key for `kid`; refuses an invalid or repeated id.
    pub fn insert(&mut self, kid: &str, key: VerifyKey) -> anyhow::Result<()> {
        let kid = id::kid(kid).map_err(|err| anyhow::anyhow!("{kid:?} is {err}"))?;
        if self.by_kid.insert(kid.to_owned(), key).is_some() {
            bail!("key id {kid} is given twice");
        }
        Ok(())
    }

    /// Whether the set holds no key at all.
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.by_kid.is_empty()
    }

    /// The key for a token's `kid` (or for no `kid`).
    pub fn get(&self, kid: Option<&str>) -> Option<&VerifyKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None => self.default.as_ref(),
        }
    }

    /// Key ids, sorted, for logs.
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.by_kid.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }
}

/// Parses `KID=PATH` as given to `relay --key`.
pub fn parse_kid_path(s: &str) -> Result<(String, PathBuf), String> {
    let (kid, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KID=PATH"))?;
    let kid = id::kid(kid).map_err(|err| format!("{kid:?} is {err}"))?;
    if path.is_empty() {
        return Err(format!("no path after {kid}="));
    }
    Ok((kid.to_owned(), PathBuf::from(path)))
}

/// Writes a new key of `kind` to `out` (mode 0600), and for key pairs the
/// public key to `out` with `.pub` appended. Refuses to overwrite. Returns
/// the files written.
pub fn generate(kind: KeyKind, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let public = {
        let mut p = out.as_os_str().to_owned();
        p.push(".pub");
        PathBuf::from(p)
    };
    let (private_text, public_text) = match kind {
        KeyKind::Hs256 => {
            let mut text = Secret::generate().expose().to_vec();
            text.push(b'\n');
            (text, None)
        }
        KeyKind::Ed25519 | KeyKind::Es256 => {
            let alg = if kind == KeyKind::Ed25519 {
                &rcgen::PKCS_ED25519
            } else {
                &rcgen::PKCS_ECDSA_P256_SHA256
            };
            let pair = rcgen::KeyPair::generate_for(alg).context("could not generate a key")?;
            let pair = match kind {
                KeyKind::Ed25519 => pkcs8_v1(&pair)?,
                _ => pair,
            };
            (
                pair.serialize_pem().into_bytes(),
                Some(pair.public_key_pem()),
            )
        }
    };
    for p in std::iter::once(out).chain(public_text.as_ref().map(|_| public.as_path())) {
        if p.exists() {
            bail!("{} exists already; not replacing it", p.display());
        }
    }
    private::write(out, &private_text, Existing::Refuse)?;
    let mut written = vec![out.to_owned()];
    if let Some(text) = public_text {
        std::fs::write(&public, text)
            .with_context(|| format!("could not write {}", public.display()))?;
        written.push(public);
    }
    Ok(written)
}

/// The DER of an Ed25519 key in PKCS#8 v2 as ring writes it, after the
/// outer SEQUENCE's tag and length: version 1, the algorithm, then the
/// 32-byte seed; the public key follows, which v1 leaves out.
const ED25519_PKCS8_V2_BODY: [u8; 14] = [
    0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The same key in PKCS#8 v1 (RFC 8410 section 7): version 0, the seed only.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// An Ed25519 key pair re-encoded as PKCS#8 v1, which every tool reads
/// (OpenSSL 3 and Python's cryptography refuse ring's v2 with "extra
/// data").
fn pkcs8_v1(pair: &rcgen::KeyPair) -> anyhow::Result<rcgen::KeyPair> {
    let v2 = pair.serialize_der();
    let seed = v2
        .strip_prefix(&[0x30][..])
        .and_then(|rest| rest.get(1..))
        .and_then(|rest| rest.strip_prefix(&ED25519_PKCS8_V2_BODY[..]))
        .and_then(|rest| rest.get(..32))
        .context("unexpected Ed25519 key encoding")?;
    let v1 = [&ED25519_PKCS8_V1_PREFIX[..], seed].concat();
    rcgen::KeyPair::try_from(v1.as_slice()).context("could not re-encode the Ed25519 key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_pairs_sign_and_verify_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, alg) in [
            (KeyKind::Ed25519, Algorithm::EdDSA),
            (KeyKind::Es256, Algorithm::ES256),
            (KeyKind::Hs256, Algorithm::HS256),
        ] {
            let out = dir.path().join(format!("{kind:?}"));
            let files = generate(kind, &out).unwrap();
            assert!(generate(kind, &out).is_err(), "must not overwrite");
            if kind == KeyKind::Hs256 {
                assert_eq!(VerifyKey::secret_file(&out).unwrap().algorithm, alg);
                let err = VerifyKey::public_key_file(&out).unwrap_err().to_string();
                assert!(err.contains("--token-secret"), "{err}");
                assert!(SigningKey::private_key_file(&out).is_err());
                continue;
            }
            let signing = SigningKey::private_key_file(&out).unwrap();
            assert_eq!(signing.algorithm, alg);
            let public = files.last().unwrap();
            let verify = VerifyKey::public_key_file(public).unwrap();
            assert_eq!(verify.algorithm, alg);
            let err = VerifyKey::public_key_file(&out).unwrap_err().to_string();
            assert!(err.contains("holds a private key"), "{err}");
            // A public key, however it is written, is never a shared secret.
            std::fs::set_permissions(public, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = VerifyKey::secret_file(public).unwrap_err().to_string();
            assert!(err.contains("not a shared secret"), "{err}");
            let text = std::fs::read_to_string(public).unwrap();
            let odd = dir.path().join(format!("{kind:?}.odd"));
            std::fs::write(&odd, format!("# issuer key\n{text}")).unwrap();
            std::fs::set_permissions(&odd, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(VerifyKey::secret_file(&odd).is_err());
        }
    }

    #[test]
    fn kid_paths_parse_with_clear_errors() {
        assert_eq!(
            parse_kid_path("2026-11=/etc/k").unwrap(),
            ("2026-11".into(), PathBuf::from("/etc/k"))
        );
        assert!(parse_kid_path("nokid").unwrap_err().contains("KID=PATH"));
        assert!(parse_kid_path("a b=/k").is_err());
        assert!(parse_kid_path("a=").is_err());
    }
}
