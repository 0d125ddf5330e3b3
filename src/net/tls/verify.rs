//! The one verifier of a relay's certificate: by its key alone (a pin),
//! or by the usual checks against pinned certificates or the system's
//! roots. Either way a refusal names the key the relay showed, the one
//! expected, and what to do ([`Untrusted`]).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use super::pin::{Anchor, Pin, Untrusted};

/// Verifies the relay's certificate, and explains a refusal.
#[derive(Debug)]
pub struct RelayVerifier {
    check: Check,
    /// Signatures of the handshake are checked with these.
    algorithms: WebPkiSupportedAlgorithms,
}

/// What the relay's certificate is checked against.
#[derive(Debug)]
enum Check {
    /// Its key must hash to the pin; names, dates and issuers are not
    /// looked at.
    Key(Pin),
    /// The usual checks (`inner`: pinned certificates or the system's
    /// roots), with the keys of the pinned certificates (empty for the
    /// system's roots) to explain a refusal.
    Chain {
        inner: Arc<WebPkiServerVerifier>,
        pinned: Vec<Pin>,
    },
}

impl RelayVerifier {
    /// Trusts the key that hashes to `pin`, whatever certificate carries
    /// it, checking signatures with `provider`'s algorithms.
    pub fn key(pin: Pin, provider: &CryptoProvider) -> RelayVerifier {
        RelayVerifier {
            check: Check::Key(pin),
            algorithms: provider.signature_verification_algorithms,
        }
    }

    /// Trusts what `inner` trusts: the certificates whose keys are
    /// `pinned` (none: the system's roots).
    pub fn chain(
        inner: Arc<WebPkiServerVerifier>,
        pinned: Vec<Pin>,
        provider: &CryptoProvider,
    ) -> RelayVerifier {
        RelayVerifier {
            check: Check::Chain { inner, pinned },
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for RelayVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (inner, pinned) = match &self.check {
            Check::Key(pin) => {
                let seen = Pin::of(end_entity).map_err(|_| {
                    rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
                })?;
                if seen == *pin {
                    return Ok(ServerCertVerified::assertion());
                }
                return Err(Untrusted::other_key(seen, &[*pin]).into_error());
            }
            Check::Chain { inner, pinned } => (inner, pinned),
        };
        let err = match inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(err) => err,
        };
        let Ok(seen) = Pin::of(end_entity) else {
            return Err(err);
        };
        let anchor = match (pinned.is_empty(), pinned.contains(&seen)) {
            (true, _) => Anchor::System,
            (false, true) => Anchor::PinnedKey,
            (false, false) => Anchor::PinnedCa,
        };
        let names = || super::cert_names(end_entity).unwrap_or_default();
        let dialled = server_name.to_str();
        use rustls::CertificateError as E;
        let untrusted = match (&err, anchor) {
            // Issued by the anchor, but for other names or times.
            (
                rustls::Error::InvalidCertificate(
                    problem @ (E::NotValidForName
                    | E::NotValidForNameContext { .. }
                    | E::Expired
                    | E::ExpiredContext { .. }
                    | E::NotValidYet
                    | E::NotValidYetContext { .. }),
                ),
                _,
            ) => Untrusted::problem(problem, &names(), &dialled, seen, anchor),
            (rustls::Error::InvalidCertificate(problem), Anchor::PinnedKey) => {
                Untrusted::problem(problem, &names(), &dialled, seen, anchor)
            }
            (_, Anchor::PinnedKey) => return Err(err),
            (_, Anchor::System) => Untrusted::not_vouched(seen, &err),
            (_, Anchor::PinnedCa) => Untrusted::other_key(seen, pinned),
        };
        Err(untrusted.into_error())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    /// The words `trusting` gives for `cert` dialled as `name`.
    fn refusal(
        trusting: &[CertificateDer<'static>],
        cert: &CertificateDer<'_>,
        name: &str,
    ) -> String {
        let mut roots = rustls::RootCertStore::empty();
        for c in trusting {
            roots.add(c.clone()).unwrap();
        }
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            super::super::provider(),
        )
        .build()
        .unwrap();
        let keys = trusting.iter().map(|c| Pin::of(c).unwrap()).collect();
        let verifier = RelayVerifier::chain(inner, keys, &super::super::provider());
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let err = verifier
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        super::super::pin::untrusted(&err)
            .unwrap_or_else(|| panic!("not explained: {err:?}"))
            .to_string()
    }

    #[test]
    fn a_pinned_issuer_is_not_taken_for_a_changed_key() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap().der().clone();
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
        let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap().der().clone();
        // Issued by the pinned CA, dialled by another name: the name is
        // what is wrong.
        let words = refusal(std::slice::from_ref(&ca_cert), &leaf, "b.example");
        assert!(
            words.contains("not valid for b.example (it names a.example)"),
            "{words}"
        );
        assert!(
            !words.contains("not the pinned") && !words.contains("--add-name"),
            "{words}"
        );
        // Not issued by the pinned certificate: another key.
        let other = crate::net::tls::self_signed(&["a.example".to_owned()]).unwrap();
        let words = refusal(&[ca_cert], &other.chain[0], "a.example");
        assert!(words.contains("not the pinned"), "{words}");
    }
}
