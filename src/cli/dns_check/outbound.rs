//! Where mail leaves from when it goes straight to the recipients' MX
//! hosts: the address receivers see, and the name it gives in EHLO.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use mailqueue::config::RouteConfig;
use mailqueue::delivery::outbound::IpVersion;
use mailqueue::delivery::routing::SenderPattern;
use mailqueue::{Config, TargetSpec};

use super::finding::{Check, Finding};

/// How an outbound address was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `--address`: the operator says so (behind NAT, say).
    CommandLine,
    /// `source_address` of `[delivery]` or of a route.
    SourceAddress,
    /// The kernel's choice for a connection to the internet.
    Kernel,
}

/// One address mail leaves from directly, with its EHLO name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub ip: IpAddr,
    pub origin: Origin,
    pub helo: String,
    /// The parts of the configuration that send from it: `[delivery]`,
    /// `route 2 (example.net)`.
    pub used_by: Vec<String>,
    /// The senders whose mail leaves from it; `None` for every sender.
    pub senders: Option<Vec<SenderPattern>>,
}

impl Outbound {
    /// Whether it is an address receivers cannot see: the public one is
    /// another (NAT) unless the operator named it.
    pub fn hidden(&self) -> bool {
        self.origin != Origin::CommandLine && !is_public(self.ip)
    }
}

/// A part of the configuration that sends to MX hosts itself.
struct DirectPath {
    label: String,
    source: Option<IpAddr>,
    ip_version: IpVersion,
    helo: String,
    senders: Vec<SenderPattern>,
}

/// `[delivery]` and the routes whose targets include `remote` (a relay
/// is seen by receivers with the relay's own address, so it is not ours
/// to check).
fn direct_paths(config: &Config) -> Vec<DirectPath> {
    let mut paths = Vec::new();
    if config.delivery.target == TargetSpec::Remote {
        paths.push(DirectPath {
            label: "[delivery]".into(),
            // Loading the configuration refused an invalid address already.
            source: config.delivery.source_ip().ok().flatten(),
            ip_version: config.delivery.ip_version,
            helo: config.hostname.clone(),
            senders: Vec::new(),
        });
    }
    for (i, route) in config.routes.iter().enumerate() {
        if route.target.0.contains(&TargetSpec::Remote) {
            paths.push(route_path(i + 1, route, config));
        }
    }
    paths
}

fn route_path(number: usize, route: &RouteConfig, config: &Config) -> DirectPath {
    let seen = route.config(config);
    DirectPath {
        label: format!("route {number} ({})", route.describe()),
        source: seen.delivery.source_ip().ok().flatten(),
        ip_version: seen.delivery.ip_version,
        helo: seen.hostname,
        senders: route.senders.clone(),
    }
}

/// The addresses mail leaves from directly, one per address and EHLO
/// name, and what was found about them. `given` (from `--address`)
/// replaces every other address; `kernel` says which local address the
/// kernel would use for a family.
pub fn outbound(
    config: &Config,
    given: &[IpAddr],
    kernel: &dyn Fn(IpVersion) -> Option<IpAddr>,
) -> (Vec<Outbound>, Vec<Finding>) {
    let mut found: Vec<Outbound> = Vec::new();
    let mut findings = Vec::new();
    let mut paths = direct_paths(config);
    if paths.is_empty() && !given.is_empty() {
        // The operator asks about an address all the same (a relay's,
        // or this host's before it sends directly): as `[delivery]` would.
        paths.push(DirectPath {
            label: "--address".into(),
            source: None,
            ip_version: IpVersion::Any,
            helo: config.hostname.clone(),
            senders: Vec::new(),
        });
    }
    if paths.is_empty() {
        findings.push(relays_only(config));
    }
    for path in paths {
        let (ips, origin) = if !given.is_empty() {
            (given.to_vec(), Origin::CommandLine)
        } else if let Some(ip) = path.source {
            (vec![ip], Origin::SourceAddress)
        } else {
            let ips = kernel_addresses(&path, kernel);
            if ips.is_empty() {
                findings.push(Finding::warning(
                    Check::Outbound,
                    &path.label,
                    format!(
                        "cannot tell which address mail leaves from: this host has no {} route \
                         to the internet",
                        path.ip_version.family_name()
                    ),
                    "pass the public address with --address IP",
                ));
            }
            (ips, Origin::Kernel)
        };
        for ip in ips {
            merge(&mut found, ip, origin, &path);
        }
    }
    for o in &found {
        findings.push(describe(o));
    }
    (found, findings)
}

/// The finding when no mail goes to MX hosts directly: the relays'
/// addresses are what receivers see.
fn relays_only(config: &Config) -> Finding {
    let targets = std::iter::once(config.delivery.target.to_string())
        .chain(config.routes.iter().map(|r| r.target.to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    Finding::ok(
        Check::Outbound,
        "",
        format!(
            "no mail goes straight to MX hosts (targets: {targets}): receivers see the \
             relays' addresses, whose reverse DNS is the relays' business; \
             the sender domains' SPF must permit the relays"
        ),
    )
}

/// The addresses the kernel would send from for a path without a
/// `source_address`, in each family the path may use.
fn kernel_addresses(
    path: &DirectPath,
    kernel: &dyn Fn(IpVersion) -> Option<IpAddr>,
) -> Vec<IpAddr> {
    let families: &[IpVersion] = match path.ip_version {
        IpVersion::V6 => &[IpVersion::V6],
        IpVersion::V4 => &[IpVersion::V4],
        _ => &[IpVersion::V6, IpVersion::V4],
    };
    families.iter().filter_map(|f| kernel(*f)).collect()
}

/// Adds an address, or the path to the same address and EHLO name met
/// before.
fn merge(found: &mut Vec<Outbound>, ip: IpAddr, origin: Origin, path: &DirectPath) {
    let senders = (!path.senders.is_empty()).then(|| path.senders.clone());
    if let Some(o) = found.iter_mut().find(|o| o.ip == ip && o.helo == path.helo) {
        o.used_by.push(path.label.clone());
        o.senders = match (o.senders.take(), senders) {
            (Some(mut a), Some(b)) => {
                a.extend(b);
                Some(a)
            }
            _ => None,
        };
        return;
    }
    found.push(Outbound {
        ip,
        origin,
        helo: path.helo.clone(),
        used_by: vec![path.label.clone()],
        senders,
    });
}

fn describe(o: &Outbound) -> Finding {
    let how = match o.origin {
        Origin::CommandLine => "given with --address",
        Origin::SourceAddress => "its source_address",
        Origin::Kernel => "the kernel's choice",
    };
    let text = format!("mail leaves from {} ({how}) with EHLO {}", o.ip, o.helo);
    let subject = o.used_by.join(", ");
    if o.hidden() {
        return Finding::warning(
            Check::Outbound,
            subject,
            format!(
                "{text}: a private address, so receivers see another one (NAT); \
                 its DNS is not checked"
            ),
            "pass the public address with --address IP",
        );
    }
    Finding::ok(Check::Outbound, subject, text)
}

/// Whether receivers on the internet can see connections come from `ip`.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let shared = v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64;
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || shared)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_unique_local()
                    || v6.is_unicast_link_local())
            }
        },
    }
}

/// The local address the kernel picks for a connection to the internet:
/// a UDP socket is connected (which sends nothing) to a public address.
pub fn kernel_address(family: IpVersion) -> Option<IpAddr> {
    // Google's public resolvers: any routed address would do, since no
    // packet is sent; these are routed everywhere there is a route.
    let (bind, to): (SocketAddr, SocketAddr) = match family {
        IpVersion::V6 => (
            (Ipv6Addr::UNSPECIFIED, 0).into(),
            (
                Ipv6Addr::new(0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8888),
                53,
            )
                .into(),
        ),
        _ => (
            (Ipv4Addr::UNSPECIFIED, 0).into(),
            (Ipv4Addr::new(8, 8, 8, 8), 53).into(),
        ),
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(to).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(&format!("hostname = \"mail.d.test\"\n{text}")).unwrap()
    }

    #[test]
    fn source_addresses_routes_and_the_kernel_choice() {
        let c = config(
            r#"
[delivery]
ip_version = "4"
[[route]]
domains = ["example.net"]
target = "remote"
source_address = "192.0.2.7"
helo_name = "out.d.test"
senders = ["d.test"]
[[route]]
domains = ["relay.test"]
target = "smtp://127.0.0.1:25"
"#,
        );
        let kernel = |f: IpVersion| match f {
            IpVersion::V4 => Some("198.51.100.1".parse().unwrap()),
            _ => None,
        };
        let (out, findings) = outbound(&c, &[], &kernel);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].ip.to_string(), "198.51.100.1");
        assert_eq!(out[0].origin, Origin::Kernel);
        assert_eq!(out[0].helo, "mail.d.test");
        assert_eq!(out[0].senders, None);
        assert_eq!(out[1].ip.to_string(), "192.0.2.7");
        assert_eq!(out[1].helo, "out.d.test");
        assert_eq!(out[1].used_by, vec!["route 1 (example.net from d.test)"]);
        assert!(out[1].senders.is_some());
        assert_eq!(findings.len(), 2, "{findings:?}");

        // --address replaces them all; paths with the same EHLO name merge.
        let given = ["203.0.113.5".parse().unwrap()];
        let c = config(
            "[[route]]\ndomains = [\"example.net\"]\ntarget = \"remote\"\nsource_address = \"192.0.2.7\"\n",
        );
        let (out, _) = outbound(&c, &given, &kernel);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].used_by.len(), 2);
        assert_eq!(out[0].origin, Origin::CommandLine);
    }

    #[test]
    fn private_addresses_warn_unless_given_and_relays_are_not_ours() {
        let c = config("");
        let (out, findings) = outbound(&c, &[], &|_| Some("10.1.2.3".parse().unwrap()));
        assert!(out.iter().all(Outbound::hidden));
        assert!(
            findings.iter().all(|f| f.fix.contains("--address")),
            "{findings:?}"
        );
        let (out, _) = outbound(&c, &["127.0.0.2".parse().unwrap()], &|_| None);
        assert!(!out[0].hidden());
        let (_, findings) = outbound(&c, &[], &|_| None);
        assert!(findings[0].text.contains("no IP route"), "{findings:?}");

        let relay = config("[delivery]\ntarget = \"smtp://127.0.0.1:25\"\n");
        let (out, findings) = outbound(&relay, &[], &|_| None);
        assert!(out.is_empty());
        assert!(
            findings[0].text.contains("no mail goes straight"),
            "{findings:?}"
        );
    }

    #[test]
    fn public_and_private_addresses() {
        for private in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "127.0.0.1",
            "100.64.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["192.0.2.1", "8.8.8.8", "100.128.0.1", "2001:db8::1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
