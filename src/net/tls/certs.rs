//! The relay's certificate and key: made self-signed with rcgen, or
//! loaded from PEM files, and the fingerprint people compare.

use std::path::Path;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::access::private::{self, Existing};
use x509_parser::extensions::GeneralName;

/// File name of the relay's certificate in the directory `certs` writes.
pub const CERT_FILE: &str = "relay.crt";

/// File name of the relay's private key in the directory `certs` writes.
pub const KEY_FILE: &str = "relay.key";

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Names a relay certificate is made for by default: loopback and this
/// machine's hostname, plus `extra`.
pub fn default_names(extra: &[String]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(host) = hostname::get() {
        if let Some(host) = host.to_str() {
            names.push(host.to_owned());
        }
    }
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// Makes a self-signed certificate for `names`, in memory.
pub fn self_signed(names: &[String]) -> anyhow::Result<Identity> {
    let (identity, _, _) = generate(names)?;
    Ok(identity)
}

/// Makes a self-signed certificate for `names` and writes it as PEM: the
/// certificate world-readable, the key readable by its owner only.
pub fn create_self_signed(cert: &Path, key: &Path, names: &[String]) -> anyhow::Result<Identity> {
    let (identity, cert_pem, key_pem) = generate(names)?;
    for path in [cert, key] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("could not create {}", dir.display()))?;
        }
    }
    std::fs::write(cert, cert_pem)
        .with_context(|| format!("could not write {}", cert.display()))?;
    private::write(key, key_pem.as_bytes(), Existing::Replace)?;
    Ok(identity)
}

fn generate(names: &[String]) -> anyhow::Result<(Identity, String, String)> {
    let certified = rcgen::generate_simple_self_signed(names.to_vec())
        .context("could not generate a self-signed certificate")?;
    let identity = Identity {
        chain: vec![certified.cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
    };
    Ok((
        identity,
        certified.cert.pem(),
        certified.signing_key.serialize_pem(),
    ))
}

/// Reads certificates from a PEM file.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("could not read certificate file {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("could not parse certificate file {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate found in {}", path.display());
    }
    Ok(certs)
}

/// Loads the relay identity, or makes and writes a self-signed one when
/// neither file exists. Returns the identity and whether it was created.
pub fn load_or_create(
    cert: &Path,
    key: &Path,
    names: &[String],
) -> anyhow::Result<(Identity, bool)> {
    match (cert.exists(), key.exists()) {
        (true, true) => {
            let chain = load_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("could not read private key {}", key.display()))?;
            Ok((Identity { chain, key }, false))
        }
        (false, false) => Ok((create_self_signed(cert, key, names)?, true)),
        (true, false) => bail!(
            "certificate {} exists but key {} does not",
            cert.display(),
            key.display()
        ),
        (false, true) => bail!(
            "key {} exists but certificate {} does not",
            key.display(),
            cert.display()
        ),
    }
}

/// The DNS names and IP addresses a certificate is valid for.
pub fn cert_names(cert: &CertificateDer<'_>) -> anyhow::Result<Vec<String>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                GeneralName::IPAddress(ip) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*ip) {
                        names.push(std::net::IpAddr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*ip) {
                        names.push(std::net::IpAddr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(names)
}

/// Re-issues the self-signed certificate at `cert` for its names and
/// `extra`, signed with the key at `key`, which stays as it is: so does
/// the relay's pin. Returns the new identity and all its names.
pub fn add_names(
    cert: &Path,
    key: &Path,
    extra: &[String],
) -> anyhow::Result<(Identity, Vec<String>)> {
    if !cert.exists() {
        bail!(
            "no certificate at {} to add names to (the relay makes one on its first start)",
            cert.display()
        );
    }
    let (old, _) = load_or_create(cert, key, &[])?;
    let key_pem = std::fs::read_to_string(key)
        .with_context(|| format!("could not read private key {}", key.display()))?;
    let key_pair = rcgen::KeyPair::from_pem(&key_pem)
        .with_context(|| format!("could not use the private key in {}", key.display()))?;
    let mut names = cert_names(&old.chain[0])?;
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    let params = rcgen::CertificateParams::new(names.clone())
        .context("a name is neither a DNS name nor an IP address")?;
    let issued = params
        .self_signed(&key_pair)
        .context("could not sign the certificate")?;
    std::fs::write(cert, issued.pem())
        .with_context(|| format!("could not write {}", cert.display()))?;
    let identity = Identity {
        chain: vec![issued.der().clone()],
        key: old.key,
    };
    Ok((identity, names))
}

/// SHA-256 fingerprint of a certificate, as colon-separated hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| hex::encode_upper([*b]))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_paths_are_the_files_certs_writes() {
        let dir = Path::new(crate::ops::defaults::CERT_DIR);
        assert_eq!(Path::new(crate::ops::defaults::CERT), dir.join(CERT_FILE));
        assert_eq!(Path::new(crate::ops::defaults::KEY), dir.join(KEY_FILE));
    }

    #[test]
    fn written_identity_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.crt"), dir.path().join("c.key"));
        let (made, created) = load_or_create(&cert, &key, &default_names(&[])).unwrap();
        assert!(created);
        let (loaded, created) = load_or_create(&cert, &key, &[]).unwrap();
        assert!(!created);
        assert_eq!(made.chain, loaded.chain);
        assert_eq!(made.key.secret_der(), loaded.key.secret_der());
        // 32 upper-case hex bytes, colon-separated, as openssl and
        // browsers show them.
        let fp = fingerprint(&made.chain[0]);
        assert_eq!(fp.split(':').count(), 32, "{fp}");
        assert!(fp
            .bytes()
            .all(|b| b == b':' || b.is_ascii_digit() || (b'A'..=b'F').contains(&b)));
        std::fs::remove_file(&key).unwrap();
        assert!(load_or_create(&cert, &key, &[]).is_err());
    }

    #[test]
    fn adding_names_keeps_the_key_and_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.crt"), dir.path().join("c.key"));
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let made = create_self_signed(&cert, &key, &names).unwrap();
        let key_before = std::fs::read(&key).unwrap();
        let extra = ["relay.example.org".to_owned(), "192.0.2.1".to_owned()];
        let (issued, all) = add_names(&cert, &key, &extra).unwrap();
        assert_eq!(
            all,
            ["127.0.0.1", "192.0.2.1", "localhost", "relay.example.org"]
        );
        let (loaded, _) = load_or_create(&cert, &key, &[]).unwrap();
        assert_eq!(loaded.chain, issued.chain);
        let mut read = cert_names(&loaded.chain[0]).unwrap();
        read.sort();
        assert_eq!(read, all);
        assert_eq!(std::fs::read(&key).unwrap(), key_before, "the key is kept");
        assert_ne!(made.chain, issued.chain);
        let pin = crate::net::tls::pin::Pin::of;
        assert_eq!(pin(&made.chain[0]), pin(&issued.chain[0]));
        let missing = dir.path().join("none.crt");
        assert!(add_names(&missing, &dir.path().join("none.key"), &extra).is_err());
        assert!(!missing.exists(), "nothing is made where nothing was");
    }
}
