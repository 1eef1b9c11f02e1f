//! Where messages go: the `target` keys, `remote` or a URL-like next hop.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// Text that is not a target, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid target {text:?}: {why}; expected \"remote\", \"smtp://host:port\", \
     \"smtps://host:port\", \"lmtp://host:port\" or \"lmtp+unix:///path\""
)]
pub struct BadTarget {
    /// The text as it was written.
    pub text: String,
    /// What is wrong with it: `"unknown scheme"`, say.
    pub why: &'static str,
}

/// Where messages are delivered: `[delivery] target` and `[bounce]
/// target`, written `"remote"`, `"smtp://host:port"`, `"smtps://host:port"`,
/// `"lmtp://host:port"` or `"lmtp+unix:///path"`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TargetSpec {
    /// `remote`: the recipients' MX hosts, found in the DNS.
    Remote,
    /// `smtp://host:port`: one SMTP next hop (a smarthost), STARTTLS as
    /// `[delivery] tls` says.
    Smtp {
        /// Host name or IP address (an IPv6 one without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// `smtps://host:port`: SMTP over TLS from the first byte.
    Smtps {
        /// Host name or IP address (an IPv6 one without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// `lmtp://host:port`: an LMTP server over TCP, which answers for
    /// each recipient.
    Lmtp {
        /// Host name or IP address (an IPv6 one without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// `lmtp+unix:///path`: an LMTP server on a Unix socket.
    LmtpUnix {
        /// Absolute path of the socket.
        path: PathBuf,
    },
}

pub(super) fn deserialize_optional<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Option<TargetSpec>, D::Error> {
    let text = String::deserialize(de)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

impl TargetSpec {
    /// True for a next hop on this machine: a loopback address,
    /// `localhost`, or a Unix socket.
    pub fn is_local(&self) -> bool {
        match self {
            TargetSpec::Remote => false,
            TargetSpec::LmtpUnix { .. } => true,
            TargetSpec::Smtp { host, .. }
            | TargetSpec::Smtps { host, .. }
            | TargetSpec::Lmtp { host, .. } => {
                host.eq_ignore_ascii_case("localhost")
                    || host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }
}

impl<'de> Deserialize<'de> for TargetSpec {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        String::deserialize(de)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl FromStr for TargetSpec {
    type Err = BadTarget;

    /// ```
    /// use mailqueue::TargetSpec;
    /// let t: TargetSpec = "smtp://[::1]:2526".parse().unwrap();
    /// assert_eq!(t, TargetSpec::Smtp { host: "::1".into(), port: 2526 });
    /// assert!("ftp://x".parse::<TargetSpec>().is_err());
    /// ```
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why: &'static str| BadTarget {
            text: text.to_string(),
            why,
        };
        if text == "remote" {
            return Ok(TargetSpec::Remote);
        }
        let (scheme, rest) = text.split_once("://").ok_or_else(|| err("no scheme"))?;
        if scheme == "lmtp+unix" {
            if !rest.starts_with('/') {
                return Err(err("the socket path must be absolute"));
            }
            return Ok(TargetSpec::LmtpUnix { path: rest.into() });
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| err("expected host:port"))?;
        match scheme {
            "smtp" => Ok(TargetSpec::Smtp { host, port }),
            "smtps" => Ok(TargetSpec::Smtps { host, port }),
            "lmtp" => Ok(TargetSpec::Lmtp { host, port }),
            _ => Err(err("unknown scheme")),
        }
    }
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hp = |f: &mut fmt::Formatter<'_>, s: &str, h: &str, p: u16| {
            if h.contains(':') {
                write!(f, "{s}://[{h}]:{p}")
            } else {
                write!(f, "{s}://{h}:{p}")
            }
        };
        match self {
            TargetSpec::Remote => f.write_str("remote"),
            TargetSpec::Smtp { host, port } => hp(f, "smtp", host, *port),
            TargetSpec::Smtps { host, port } => hp(f, "smtps", host, *port),
            TargetSpec::Lmtp { host, port } => hp(f, "lmtp", host, *port),
            TargetSpec::LmtpUnix { path } => write!(f, "lmtp+unix://{}", path.display()),
        }
    }
}

/// Splits `host:port` or `[v6]:port`.
fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':')?;
        if h.contains(':') {
            return None;
        }
        (h, p)
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some((host.to_string(), port))
}
