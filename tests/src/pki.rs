//! A certificate authority made for a test (rcgen), the certificates it
//! signs, written where `tend` reads them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use tonic::transport::Identity;

/// A test CA and what it signs.
#[allow(missing_debug_implementations)]
pub struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: String,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name
            .push(DnType::CommonName, "Tend test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = ca.self_signed(&key).unwrap().pem();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), &ca_pem).unwrap();
        Self {
            dir,
            issuer: Issuer::new(ca, key),
            ca_pem,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A leaf for `names`, as (certificate PEM, key PEM, SHA-256 of its DER).
    pub fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let fingerprint = hex::encode(Sha256::digest(cert.der()));
        (cert.pem(), key.serialize_pem(), fingerprint)
    }

    /// Writes a new server certificate and key in place; its fingerprint.
    pub fn write_server(&self) -> String {
        let (cert, key, fingerprint) = self.leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        // As a rotation would: the key first, then the certificate.
        write_atomically(&self.path("tls.key"), &key);
        write_atomically(&self.path("tls.crt"), &cert);
        fingerprint
    }

    pub fn client(&self, name: &str) -> Identity {
        let (cert, key, _) = self.leaf(&[name], ExtendedKeyUsagePurpose::ClientAuth);
        Identity::from_pem(cert, key)
    }
}

fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(tmp, path).unwrap();
}
