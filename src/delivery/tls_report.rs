//! What an outbound session's TLS amounted to, for the delivery log line
//! (`tls=TLSv1.3 verified`) and the metrics: the protocol version
//! negotiated and how far the server's certificate was checked.

use std::fmt;

/// How the server's certificate was found to be, whatever the policy
/// made of it (under `may` an unverified certificate is still used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Verification {
    /// It does not chain to a trusted root, or does not name the host.
    Unverified,
    /// It chains to a trusted root (system or `ca_file`) and names the
    /// host (PKIX).
    Verified,
    /// It matches the host's DANE TLSA records (RFC 7672), which stand
    /// in for PKIX.
    Dane,
}

impl Verification {
    /// As the log line and the metrics label write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verification::Unverified => "unverified",
            Verification::Verified => "verified",
            Verification::Dane => "dane-verified",
        }
    }
}

/// The TLS of one outbound session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsReport {
    /// Clear text (TLS not offered, not wanted, or a Unix socket).
    None,
    /// TLS, with the version OpenSSL names (`TLSv1.3`) and how the
    /// certificate checked out.
    Tls {
        /// `TLSv1`, `TLSv1.1`, `TLSv1.2`, `TLSv1.3`.
        version: &'static str,
        verification: Verification,
    },
}

impl TlsReport {
    /// The version as a metrics label: `none` for clear text.
    pub fn version(&self) -> &'static str {
        match self {
            TlsReport::None => "none",
            TlsReport::Tls { version, .. } => version,
        }
    }

    /// The verification as a metrics label: `none` for clear text.
    pub fn verification(&self) -> &'static str {
        match self {
            TlsReport::None => "none",
            TlsReport::Tls { verification, .. } => verification.as_str(),
        }
    }
}

/// `none`, or the version and the verification: `TLSv1.3 verified`.
impl fmt::Display for TlsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsReport::None => f.write_str("none"),
            TlsReport::Tls {
                version,
                verification,
            } => write!(f, "{version} {}", verification.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_as_the_log_writes_them() {
        assert_eq!(TlsReport::None.to_string(), "none");
        let r = TlsReport::Tls {
            version: "TLSv1.3",
            verification: Verification::Verified,
        };
        assert_eq!(r.to_string(), "TLSv1.3 verified");
        assert_eq!((r.version(), r.verification()), ("TLSv1.3", "verified"));
        let r = TlsReport::Tls {
            version: "TLSv1.2",
            verification: Verification::Unverified,
        };
        assert_eq!(r.to_string(), "TLSv1.2 unverified");
        let r = TlsReport::Tls {
            version: "TLSv1.3",
            verification: Verification::Dane,
        };
        assert_eq!(r.to_string(), "TLSv1.3 dane-verified");
    }
}
