//! Certificates made in the test with rcgen (ECDSA P-256 keys in PKCS#8
//! PEM, which both native-tls and Python's ssl module load).

use std::fs;
use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A certificate and key on disk, and the CA that signed it (the
/// certificate itself when self-signed).
pub struct TestCert {
    pub dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TestCert {
    fn write(cert_pem: &str, key_pem: &str, ca_pem: &str) -> TestCert {
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| dir.path().join(n);
        let (cert, key, ca) = (path("cert.pem"), path("key.pem"), path("ca.pem"));
        fs::write(&cert, cert_pem).unwrap();
        fs::write(&key, key_pem).unwrap();
        fs::write(&ca, ca_pem).unwrap();
        TestCert { dir, cert, key, ca }
    }

    pub fn cert_arg(&self) -> &str {
        self.cert.to_str().unwrap()
    }

    pub fn key_arg(&self) -> &str {
        self.key.to_str().unwrap()
    }
}

/// A self-signed certificate for `names` (IP addresses become IP SANs).
pub fn self_signed(names: &[&str]) -> TestCert {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    TestCert::write(&cert.pem(), &key.serialize_pem(), &cert.pem())
}

/// A certificate for `names` signed by a fresh test CA; `ca` is the CA's
/// certificate, to be trusted with `ca_file`.
pub fn ca_signed(names: &[&str]) -> TestCert {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mailqueue test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "mailqueue test server");
    let cert = params.signed_by(&key, &issuer).unwrap();
    TestCert::write(&cert.pem(), &key.serialize_pem(), &ca_cert.pem())
}

/// A TLS client that accepts any certificate (the tests check the
/// daemon's STARTTLS, not its certificate).
pub fn trusting_connector() -> native_tls::TlsConnector {
    native_tls::TlsConnector::builder()
        .danger_accept_invalid_certs(true)
        .danger_accept_invalid_hostnames(true)
        .build()
        .unwrap()
}
