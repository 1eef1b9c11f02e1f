//! The client's TLS, on OpenSSL directly: native-tls names neither the
//! protocol version negotiated nor whether the certificate verified, and
//! gives no chain for DANE.
//!
//! One connector serves every policy. It never stops a handshake over the
//! certificate: OpenSSL still checks the chain and the host name and keeps
//! the result, which the log reports under every policy; `verify` then
//! refuses an unverified session, and a [`PeerCheck`] (DANE) decides in
//! PKIX's place.

use std::fmt;
use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use openssl::ssl::{SslConnector, SslMethod, SslRef, SslStream, SslVerifyMode};
use openssl::x509::{X509VerifyResult, X509};

use crate::delivery::tls_report::{TlsReport, Verification};
use crate::delivery::{DeliveryError, ErrorKind};
use crate::smtp::tls_policy::TlsPolicy;

/// The TLS client of a target: its trust roots, and whether a session
/// must have a verified certificate.
pub struct TlsClient {
    connector: SslConnector,
    require_verified: bool,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("require_verified", &self.require_verified)
            .finish_non_exhaustive()
    }
}

/// A check of the server's certificate that one connection needs beyond
/// the target's policy: the MX host's DANE TLSA records, say. With one,
/// TLS is required whatever the policy, a failed handshake is never
/// retried in clear, and the check, not PKIX, decides whether the
/// certificate will do.
pub trait PeerCheck: Send + Sync + fmt::Debug {
    /// What requires TLS here, for errors: `DANE (TLSA _25._tcp.mx.example.net)`.
    fn requirement(&self) -> String;

    /// Checks the server of a completed handshake (`host` without its
    /// final dot): how it was verified, or why it will not do.
    fn check(&self, ssl: &SslRef, host: &str) -> Result<Verification, String>;
}

/// Why the TLS client cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsConnectorError {
    /// The `ca_file` cannot be read.
    #[error("cannot read ca_file {path}: {source}")]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The `ca_file` holds no usable certificate.
    #[error("ca_file {path}: {why}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The TLS library refused the settings.
    #[error("cannot set up TLS: {0}")]
    Build(#[source] openssl::error::ErrorStack),
}

/// Builds the TLS client for a policy: the system roots plus `ca_file`,
/// and under `verify` only sessions whose certificate chains to them and
/// names the host are used; `may` and `encrypt` only encrypt. `None` for
/// `none`.
pub fn tls_connector(
    policy: TlsPolicy,
    ca_file: Option<&Path>,
) -> Result<Option<TlsClient>, TlsConnectorError> {
    if policy == TlsPolicy::None {
        return Ok(None);
    }
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(TlsConnectorError::Build)?;
    // The verdict is read after the handshake (see the module comment).
    b.set_verify(SslVerifyMode::NONE);
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            b.cert_store_mut()
                .add_cert(cert)
                .map_err(TlsConnectorError::Build)?;
        }
    }
    Ok(Some(TlsClient {
        connector: b.build(),
        require_verified: policy == TlsPolicy::Verify,
    }))
}

/// The certificates of a PEM file: at least one.
/// A connector that refuses, during the handshake, a certificate that
/// does not chain to the system roots plus `ca_file` or does not name the
/// host: for HTTPS (MTA-STS policies), where nothing is reported.
pub fn verifying_connector(ca_file: Option<&Path>) -> Result<SslConnector, TlsConnectorError> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(TlsConnectorError::Build)?;
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            b.cert_store_mut()
                .add_cert(cert)
                .map_err(TlsConnectorError::Build)?;
        }
    }
    Ok(b.build())
}

fn read_ca_file(path: &Path) -> Result<Vec<X509>, TlsConnectorError> {
    let pem = std::fs::read(path).map_err(|source| TlsConnectorError::ReadCa {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |why: String| TlsConnectorError::BadCa {
        path: path.to_path_buf(),
        why,
    };
    let certs = X509::stack_from_pem(&pem).map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The name to give OpenSSL for SNI and the name check: no final dot, and
/// an address literal's address (which gets no SNI).
fn tls_name(host: &str) -> &str {
    let name = host.trim_end_matches('.');
    match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(lit) => lit.strip_prefix("IPv6:").unwrap_or(lit),
        None => name,
    }
}

/// What a TLS session's certificate amounted to under PKIX.
fn pkix(ssl: &SslRef) -> Result<(), X509VerifyResult> {
    match ssl.verify_result() {
        r if r == X509VerifyResult::OK && ssl.peer_certificate().is_some() => Ok(()),
        r => Err(r),
    }
}

impl TlsClient {
    /// Runs the handshake on `tcp` with `host`, then checks the
    /// certificate as `check` (when given) or the policy asks.
    pub(super) fn handshake(
        &self,
        tcp: TcpStream,
        host: &str,
        check: Option<&dyn PeerCheck>,
    ) -> Result<(SslStream<TcpStream>, TlsReport), DeliveryError> {
        let name = tls_name(host);
        let failed = |why: &dyn fmt::Display| {
            // Its kind lets the MX client tell a failed handshake from
            // other errors and, under `may`, retry in clear.
            DeliveryError::tls(&format!("TLS handshake with {name} failed: {why}")).at(host)
        };
        let config = self.connector.configure().map_err(|e| failed(&e))?;
        let mut stream = config.connect(name, tcp).map_err(|e| failed(&e))?;
        let verification = match check {
            Some(check) => match check.check(stream.ssl(), name) {
                Ok(v) => v,
                Err(why) => {
                    close(&mut stream);
                    return Err(DeliveryError::new(
                        ErrorKind::TlsAuthentication,
                        &format!("{}: {why}", check.requirement()),
                    )
                    .at(host));
                }
            },
            None => match pkix(stream.ssl()) {
                Ok(()) => Verification::Verified,
                Err(r) if self.require_verified => {
                    close(&mut stream);
                    return Err(failed(&format_args!(
                        "certificate verify failed: {}",
                        r.error_string()
                    )));
                }
                Err(_) => Verification::Unverified,
            },
        };
        let report = TlsReport::Tls {
            version: stream.ssl().version_str(),
            verification,
        };
        Ok((stream, report))
    }
}

/// Ends a session whose certificate will not do: a close_notify, so the
/// server does not log a broken connection.
fn close(stream: &mut SslStream<TcpStream>) {
    let _ = stream.shutdown();
    let _ = stream.get_mut().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_for_sni_and_the_name_check() {
        assert_eq!(tls_name("mx.example.net."), "mx.example.net");
        assert_eq!(tls_name("[192.0.2.1]"), "192.0.2.1");
        assert_eq!(tls_name("[IPv6:2001:db8::1]"), "2001:db8::1");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = tls_connector(TlsPolicy::Verify, Some(&path)).unwrap_err();
        assert!(matches!(e, TlsConnectorError::BadCa { .. }), "{e}");
        let e = tls_connector(TlsPolicy::Verify, Some(&dir.path().join("none"))).unwrap_err();
        assert!(matches!(e, TlsConnectorError::ReadCa { .. }), "{e}");
        assert!(tls_connector(TlsPolicy::None, None).unwrap().is_none());
    }
}
