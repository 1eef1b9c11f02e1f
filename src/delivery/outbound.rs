//! How outgoing TCP connections are made, for relay targets and MX hosts
//! alike: which address families they may use (`ip_version`), the local
//! address they start from (`source_address`), and the connect itself
//! within the connect timeout.

use std::fmt;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::delivery::{DeliveryError, ErrorKind};

/// Which address families outgoing connections use; `[delivery]
/// ip_version` in the configuration file (`"any"`, `"4"` or `"6"`; the
/// numbers are also taken without quotes).
///
/// On a host whose IPv6 (or IPv4) route is broken, or whose IPv6 address
/// has no reverse DNS that receivers would accept, `"4"` (or `"6"`) keeps
/// every connection on the family that works; MX delivery then does not
/// even look up the other family's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IpVersion {
    /// Both: IPv6 addresses first, as RFC 6724 orders them.
    #[default]
    Any,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

impl IpVersion {
    /// The family of one address.
    pub fn of(ip: &IpAddr) -> IpVersion {
        match ip {
            IpAddr::V4(_) => IpVersion::V4,
            IpAddr::V6(_) => IpVersion::V6,
        }
    }

    /// Whether a connection to `ip` may be made.
    pub fn allows(self, ip: &IpAddr) -> bool {
        self == IpVersion::Any || self == IpVersion::of(ip)
    }

    /// `IPv4`, `IPv6`, or `IP` for any: for messages.
    pub fn family_name(self) -> &'static str {
        match self {
            IpVersion::Any => "IP",
            IpVersion::V4 => "IPv4",
            IpVersion::V6 => "IPv6",
        }
    }
}

/// As the configuration file writes it: `any`, `4` or `6`.
impl fmt::Display for IpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpVersion::Any => "any",
            IpVersion::V4 => "4",
            IpVersion::V6 => "6",
        })
    }
}

impl<'de> Deserialize<'de> for IpVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IpVersionVisitor)
    }
}

/// Takes `"any"`, `"4"`, `"6"` and the bare numbers 4 and 6: a version is
/// a number, and `ip_version = 4` is what many would write.
struct IpVersionVisitor;

const EXPECTED: &str = "\"any\", \"4\" or \"6\"";

impl Visitor<'_> for IpVersionVisitor {
    type Value = IpVersion;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<IpVersion, E> {
        match v {
            "any" => Ok(IpVersion::Any),
            "4" => Ok(IpVersion::V4),
            "6" => Ok(IpVersion::V6),
            _ => Err(E::invalid_value(de::Unexpected::Str(v), &EXPECTED)),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<IpVersion, E> {
        match v {
            4 => Ok(IpVersion::V4),
            6 => Ok(IpVersion::V6),
            _ => Err(E::invalid_value(de::Unexpected::Signed(v), &EXPECTED)),
        }
    }
}

/// Where outgoing connections come from and which families they use: the
/// `ip_version` narrowed by the family of the `source_address`, since a
/// socket bound to an IPv4 address cannot reach an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outbound {
    /// The `ip_version` configured.
    pub ip_version: IpVersion,
    /// The `source_address`; `None` lets the kernel choose.
    pub source: Option<IpAddr>,
}

impl Outbound {
    /// The families connections may use.
    pub fn families(&self) -> IpVersion {
        match self.source {
            Some(ip) => IpVersion::of(&ip),
            None => self.ip_version,
        }
    }

    /// Whether a connection to `ip` may be made.
    pub fn allows(&self, ip: &IpAddr) -> bool {
        self.families().allows(ip)
    }

    /// The setting that rules out the other family, for messages:
    /// `ip_version = 4` or `source_address = 192.0.2.1`.
    fn restriction(&self) -> String {
        match (self.ip_version, self.source) {
            (IpVersion::Any, Some(ip)) => format!("source_address = {ip}"),
            (v, _) => format!("ip_version = {v}"),
        }
    }

    /// The temporary failure when `hosts` have no address of the
    /// families allowed: "mx.example.net has no IPv4 address (ip_version
    /// = 4)". Temporary: the other family's addresses may work once the
    /// configuration (or the destination's DNS) changes.
    pub fn no_address(&self, hosts: &[String]) -> DeliveryError {
        let verb = if hosts.len() == 1 { "has" } else { "have" };
        let text = format!(
            "{} {verb} no {} address ({})",
            hosts.join(", "),
            self.families().family_name(),
            self.restriction()
        );
        DeliveryError::new(ErrorKind::NoUsableAddress, &text)
    }

    /// The temporary failure for an address literal of the family ruled
    /// out: "[IPv6:::1] is not an IPv4 address (ip_version = 4)".
    pub fn literal_ruled_out(&self, literal: &str) -> DeliveryError {
        let text = format!(
            "{literal} is not an {} address ({})",
            self.families().family_name(),
            self.restriction()
        );
        DeliveryError::new(ErrorKind::NoUsableAddress, &text)
    }

    /// Connects to `addr` from the source address, if one is set, within
    /// `timeout`. `relay` names the server in errors (`host[ip]:port`).
    /// The caller has left out addresses of the other family.
    pub fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        relay: &str,
    ) -> Result<TcpStream, DeliveryError> {
        let Some(source) = self.source else {
            return TcpStream::connect_timeout(&addr, timeout)
                .map_err(|e| DeliveryError::network(&format!("connect to {relay}"), &e));
        };
        let socket = bound_socket(source, addr)?;
        socket.connect_timeout(&addr.into(), timeout).map_err(|e| {
            DeliveryError::network(&format!("connect to {relay} from {source}"), &e)
        })?;
        Ok(socket.into())
    }
}

/// A TCP socket for a connection to `to`, bound to `source` (port chosen
/// by the kernel). A source address this host does not have is our
/// configuration's fault, not the destination's: a temporary local error
/// that names the key.
fn bound_socket(source: IpAddr, to: SocketAddr) -> Result<socket2::Socket, DeliveryError> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let failed = |e: std::io::Error| {
        DeliveryError::new(
            ErrorKind::Local,
            &format!("cannot use source_address {source} to connect to {to}: {e}"),
        )
    };
    let socket =
        Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP)).map_err(failed)?;
    socket
        .bind(&SockAddr::from(SocketAddr::new(source, 0)))
        .map_err(failed)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Key {
        ip_version: IpVersion,
    }

    fn parse(text: &str) -> Result<IpVersion, toml::de::Error> {
        toml::from_str::<Key>(text).map(|k| k.ip_version)
    }

    #[test]
    fn config_file_names() {
        assert_eq!(IpVersion::default(), IpVersion::Any);
        assert_eq!(parse("ip_version = \"any\"").unwrap(), IpVersion::Any);
        assert_eq!(parse("ip_version = \"4\"").unwrap(), IpVersion::V4);
        assert_eq!(parse("ip_version = \"6\"").unwrap(), IpVersion::V6);
        assert_eq!(parse("ip_version = 4").unwrap(), IpVersion::V4);
        assert_eq!(parse("ip_version = 6").unwrap(), IpVersion::V6);
        for bad in ["\"5\"", "5", "\"ipv4\"", "\"Any\"", "true"] {
            assert!(parse(&format!("ip_version = {bad}")).is_err(), "{bad}");
        }
        for v in [IpVersion::Any, IpVersion::V4, IpVersion::V6] {
            assert_eq!(parse(&format!("ip_version = \"{v}\"")).unwrap(), v);
        }
    }

    #[test]
    fn the_source_address_narrows_the_families() {
        let v4: IpAddr = "127.0.0.2".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        let any = Outbound {
            ip_version: IpVersion::Any,
            source: None,
        };
        assert!(any.allows(&v4) && any.allows(&v6));
        let from_v4 = Outbound {
            source: Some(v4),
            ..any
        };
        assert!(from_v4.allows(&v4) && !from_v4.allows(&v6));
        let only_v6 = Outbound {
            ip_version: IpVersion::V6,
            ..any
        };
        assert!(!only_v6.allows(&v4) && only_v6.allows(&v6));
    }

    #[test]
    fn the_error_says_which_setting_left_nothing() {
        let v4 = Outbound {
            ip_version: IpVersion::V4,
            source: None,
        };
        let e = v4.no_address(&["mx.example.net".into()]);
        assert!(!e.is_permanent());
        assert_eq!(
            e.reply().text,
            "mx.example.net has no IPv4 address (ip_version = 4)"
        );
        let from = Outbound {
            ip_version: IpVersion::Any,
            source: Some("2001:db8::1".parse().unwrap()),
        };
        let e = from.no_address(&["a.test".into(), "b.test".into()]);
        assert_eq!(
            e.reply().text,
            "a.test, b.test have no IPv6 address (source_address = 2001:db8::1)"
        );
    }

    #[test]
    fn a_source_address_this_host_lacks_is_a_local_temporary_error() {
        // 192.0.2.0/24 is TEST-NET-1: no host has it.
        let out = Outbound {
            ip_version: IpVersion::Any,
            source: Some("192.0.2.1".parse().unwrap()),
        };
        let e = out
            .connect(
                "127.0.0.1:9".parse().unwrap(),
                Duration::from_secs(1),
                "x[127.0.0.1]:9",
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Local, "{e}");
        assert!(!e.is_permanent());
        assert!(e.reply().text.contains("source_address 192.0.2.1"), "{e}");
    }
}
