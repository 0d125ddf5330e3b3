//! Pinning the relay by its public key, as ssh pins a host key: the
//! SHA-256 of the certificate's SubjectPublicKeyInfo, written
//! `sha256:` and unpadded base64url. With a pin, the certificate's names
//! and dates do not matter; only the key does, and a certificate
//! re-issued with the same key (`certs --add-name`) keeps it.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, OtherError};
use thiserror::Error;

const PREFIX: &str = "sha256:";

/// The SHA-256 of a relay's public key (its certificate's
/// SubjectPublicKeyInfo).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pin([u8; 32]);

impl Pin {
    /// The pin of the key in `cert`.
    pub fn of(cert: &CertificateDer<'_>) -> Result<Pin, PinError> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|_| PinError::NotACertificate)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, parsed.public_key().raw);
        let mut pin = [0u8; 32];
        pin.copy_from_slice(digest.as_ref());
        Ok(Pin(pin))
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0);
        write!(f, "{PREFIX}{text}")
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a pin could not be read or made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PinError {
    /// Not `sha256:` and 43 characters of base64url.
    #[error(
        "a relay pin is sha256: and 43 characters of base64url, as the relay logs it at start"
    )]
    Malformed,
    /// The bytes are not an X.509 certificate.
    #[error("not an X.509 certificate")]
    NotACertificate,
}

impl FromStr for Pin {
    type Err = PinError;

    fn from_str(text: &str) -> Result<Pin, PinError> {
        let b64 = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(PinError::Malformed)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| PinError::Malformed)?;
        let pin = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| PinError::Malformed)?;
        Ok(Pin(pin))
    }
}

impl serde::Serialize for Pin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Pin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Pin, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why the relay's certificate was not trusted, in words that name the
/// key it showed and the one expected, and say what to do. Its `Debug` is
/// its message too: rustls and quinn show a verifier's error with `Debug`.
#[derive(Error)]
#[error("{0}")]
pub struct Untrusted(String);

impl fmt::Debug for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Untrusted {
    /// A key that is not the pinned one (`expected`: the pin, or the keys
    /// of the pinned certificates).
    pub(crate) fn other_key(seen: Pin, expected: &[Pin]) -> Untrusted {
        let expected: Vec<String> = expected.iter().map(Pin::to_string).collect();
        Untrusted(format!(
            "the relay's public key is {seen}, not the pinned {}: if the relay's key was \
             replaced on purpose, pin the new one (the relay logs its pin at start); if not, \
             something between here and the relay is answering in its name",
            expected.join(" or ")
        ))
    }

    /// A certificate that fails a check other than its issuer: a name
    /// this peer did not dial, or its dates (or, for a pinned key, anything
    /// else). `anchor` says what it was checked against, which decides the
    /// way out offered.
    pub(crate) fn problem(
        problem: &CertificateError,
        names: &[String],
        dialled: &str,
        seen: Pin,
        anchor: Anchor,
    ) -> Untrusted {
        let what = match problem {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                let names = names.join(", ");
                match anchor {
                    Anchor::PinnedKey => format!(
                        "is not valid for {dialled} (it names {names}); on the relay, \
                         `shellrelay certs --add-name {dialled}` re-issues it with the same key"
                    ),
                    Anchor::PinnedCa | Anchor::System => format!(
                        "is not valid for {dialled} (it names {names}): dial the relay by one of \
                         those names"
                    ),
                }
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "has expired (or this machine's clock is wrong)".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "is not valid yet (or this machine's clock is wrong)".to_owned()
            }
            // webpki's words, without rustls's `Other(OtherError(..))`.
            CertificateError::Other(OtherError(inner)) => match inner.to_string().as_str() {
                "CaUsedAsEndEntity" => "is a CA's certificate (CA:TRUE), which cannot be a \
                                        server's own"
                    .to_owned(),
                words => format!("was refused ({words})"),
            },
            other => format!("was refused ({other})"),
        };
        match anchor {
            Anchor::PinnedKey => Untrusted(format!(
                "the relay's certificate {what}; its key is the pinned one ({seen}): pass \
                 --relay-pin {seen} instead of --relay-cert to trust that key whatever the \
                 certificate's names and dates"
            )),
            Anchor::PinnedCa | Anchor::System => {
                Untrusted(format!("the relay's certificate {what}"))
            }
        }
    }

    /// A certificate the system's roots do not vouch for.
    pub(crate) fn not_vouched(seen: Pin, problem: &rustls::Error) -> Untrusted {
        Untrusted(format!(
            "the relay's certificate is not trusted by this system ({problem}); its public key \
             is {seen}: if that is the pin the relay logs at start, pass --relay-pin {seen} (or \
             --relay-cert with the relay's certificate)"
        ))
    }

    pub(crate) fn into_error(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

/// What a relay's certificate was checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Anchor {
    /// A pinned certificate, the relay's own (its key is the one seen).
    PinnedKey,
    /// A pinned certificate that issued the relay's.
    PinnedCa,
    /// The system's roots.
    System,
}

/// The words for a TLS failure that a relay's certificate caused, if this
/// crate's verifier refused it.
pub fn untrusted(err: &rustls::Error) -> Option<&Untrusted> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<Untrusted>()
        }
        _ => None,
    }
}

/// The words of an [`Untrusted`] inside a QUIC handshake failure: quinn
/// passes the verifier's error on as text only,
/// `invalid peer certificate: Other(OtherError(<words>))`.
pub fn untrusted_in(reason: &str) -> Option<&str> {
    let (_, rest) = reason.split_once("invalid peer certificate: Other(OtherError(")?;
    rest.strip_suffix("))")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_reads_back_what_it_writes_and_refuses_anything_else() {
        let identity = crate::net::tls::self_signed(&["localhost".to_owned()]).unwrap();
        let pin = Pin::of(&identity.chain[0]).unwrap();
        let text = pin.to_string();
        assert!(
            text.starts_with("sha256:") && text.len() == 7 + 43,
            "{text}"
        );
        assert_eq!(text.parse::<Pin>(), Ok(pin));
        for bad in [
            "",
            "sha256:",
            &text[7..],
            &text[..text.len() - 1],
            &format!("{text}A"),
            "sha1:AAAA",
            &text.replace("sha256:", "sha256:!"),
        ] {
            assert_eq!(bad.parse::<Pin>(), Err(PinError::Malformed), "{bad:?}");
        }
        assert_eq!(
            Pin::of(&CertificateDer::from(vec![1, 2, 3])),
            Err(PinError::NotACertificate)
        );
    }

    #[test]
    fn the_pin_follows_the_key_not_the_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = |name: &str| {
            let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
            params.self_signed(&key).unwrap().der().clone()
        };
        let (a, b) = (cert("a.example"), cert("b.example"));
        assert_ne!(a, b);
        assert_eq!(Pin::of(&a).unwrap(), Pin::of(&b).unwrap());
        let other = crate::net::tls::self_signed(&["a.example".to_owned()]).unwrap();
        assert_ne!(Pin::of(&a).unwrap(), Pin::of(&other.chain[0]).unwrap());
    }

    /// webpki's refusals come wrapped in rustls's `Other(OtherError(..))`:
    /// the line shows webpki's words only, and a CA's certificate used as
    /// the relay's is explained.
    #[test]
    fn a_refusal_from_webpki_is_told_without_rustls_wrapping() {
        #[derive(Debug)]
        struct Words(&'static str);
        impl fmt::Display for Words {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Words {}
        let identity = crate::net::tls::self_signed(&["localhost".to_owned()]).unwrap();
        let seen = Pin::of(&identity.chain[0]).unwrap();
        let told = |words| {
            let problem = CertificateError::Other(OtherError(Arc::new(Words(words))));
            let untrusted = Untrusted::problem(&problem, &[], "127.0.0.1", seen, Anchor::PinnedKey);
            format!("{untrusted:?}")
        };
        let ca = told("CaUsedAsEndEntity");
        assert!(ca.contains("is a CA's certificate"), "{ca}");
        let other = told("UnsupportedCriticalExtension");
        assert!(
            other.contains("was refused (UnsupportedCriticalExtension)"),
            "{other}"
        );
        for line in [ca, other] {
            assert!(!line.contains("OtherError"), "{line}");
            assert!(line.contains(&format!("--relay-pin {seen}")), "{line}");
        }
    }
}
