//! Certificates (self-signed with rcgen, or loaded from PEM
//! files), pins ([`pin`]), the one verifier of a relay's certificate
//! (`verify`), and the rustls configurations both transports build on.

mod certs;
pub mod pin;
mod verify;

pub use certs::{
    add_names, cert_names, create_self_signed, default_names, fingerprint, load_certs,
    load_or_create, self_signed, Identity, CERT_FILE, KEY_FILE,
};

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::pki_types::CertificateDer;

/// How peers verify the relay's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Trust exactly these certificates (a pinned self-signed relay certificate).
    Pinned(Vec<CertificateDer<'static>>),
    /// A pinned certificate file, read when the configuration is built.
    PinnedFile(PathBuf),
    /// The system's root certificates.
    System,
    /// The relay's public key, whatever certificate carries it.
    Key(pin::Pin),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 with `identity`, offering only `alpn`, no early data.
pub(crate) fn server_tls(identity: Identity, alpn: &[u8]) -> anyhow::Result<rustls::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is unavailable")?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .context("certificate and key do not form a usable identity")?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.max_early_data_size = 0;
    Ok(tls)
}

/// TLS 1.3 trusting `trust`, asking for `alpn`. A refusal names the key
/// the relay showed and what to do ([`pin::untrusted`]).
pub(crate) fn client_tls(trust: &Trust, alpn: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let versions = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is unavailable")?;
    let pinned = match trust {
        Trust::Key(pin) => {
            let verifier = verify::RelayVerifier::key(*pin, &provider());
            let mut tls = versions
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            tls.alpn_protocols = vec![alpn.to_vec()];
            return Ok(tls);
        }
        Trust::Pinned(certs) => certs.clone(),
        Trust::PinnedFile(path) => load_certs(path)?,
        Trust::System => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // A malformed system root is skipped, as browsers do.
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                bail!("no system root certificates found; pass --relay-cert or --relay-pin");
            }
            Vec::new()
        }
    };
    if pinned.is_empty() && roots.is_empty() {
        bail!("no certificate to pin: the relay's certificate file holds none");
    }
    let mut keys = Vec::new();
    for c in pinned {
        // A certificate whose key cannot be read still goes to webpki,
        // which will say what is wrong with it.
        keys.extend(pin::Pin::of(&c).ok());
        roots.add(c).context("pinned certificate is not usable")?;
    }
    let inner =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .context("could not build the certificate verifier")?;
    let verifier = verify::RelayVerifier::chain(inner, keys, &provider());
    let mut tls = versions
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}
