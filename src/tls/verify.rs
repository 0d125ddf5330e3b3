//! The verifier for pinned certificates and the system's roots: the usual
//! checks, and a refusal that names the key the relay showed, the one
//! expected, and what to do.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::pin::{Pin, Untrusted};

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
        let untrusted = match (&err, self.pinned.is_empty()) {
            (_, true) => Untrusted::not_vouched(seen, &err),
            (rustls::Error::InvalidCertificate(problem), false) if self.pinned.contains(&seen) => {
                let names = super::cert_names(end_entity).unwrap_or_default();
                let dialled = server_name.to_str();
                Untrusted::same_key(seen, problem, &names, &dialled)
            }
            (_, false) if self.pinned.contains(&seen) => return Err(err),
            (_, false) => Untrusted::other_key(seen, &self.pinned),
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
