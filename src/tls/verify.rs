//! The verifier for pinned certificates and the system's roots: the usual
//! checks, and a refusal that names the key the relay showed, the one
//! expected, and what to do.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::pin::{Anchor, Pin, Untrusted};

/// Verifies the relay with the usual checks (`inner`: pinned certificates
/// or the system's roots), and explains a refusal with the key the relay
/// showed and what to do.
#[derive(Debug)]
pub struct ExplainingVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    /// The keys of the pinned certificates; empty for the system's roots.
    pinned: Vec<Pin>,
}

impl ExplainingVerifier {
    /// Wraps `inner`, which trusts the certificates whose keys are `pinned`
    /// (none: the system's roots).
    pub fn new(inner: Arc<dyn ServerCertVerifier>, pinned: Vec<Pin>) -> ExplainingVerifier {
        ExplainingVerifier { inner, pinned }
    }
}

impl ServerCertVerifier for ExplainingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let err = match (self.inner).verify_server_cert(
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
        let anchor = match (self.pinned.is_empty(), self.pinned.contains(&seen)) {
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
            (_, Anchor::PinnedCa) => Untrusted::other_key(seen, &self.pinned),
        };
        Err(untrusted.into_error())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
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
        let verifier = ExplainingVerifier::new(inner, keys);
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let err = verifier
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        crate::pin::untrusted(&err)
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
        let other = crate::tls::self_signed(&["a.example".to_owned()]).unwrap();
        let words = refusal(&[ca_cert], &other.chain[0], "a.example");
        assert!(words.contains("not the pinned"), "{words}");
    }
}
