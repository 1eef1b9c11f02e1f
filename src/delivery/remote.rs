//! Direct delivery to the recipients' MX hosts (`target = "remote"`).
//!
//! Recipients are grouped by domain; each domain is its own SMTP
//! transaction with its own per-recipient results, run in parallel with
//! the message's other domains. A destination at its connection limit or
//! its rate is not tried (the recipients wait without using up a try), and an
//! idle connection is kept a few seconds for the next message to the same
//! domain.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::delivery::dane::Dane;
use crate::delivery::dns::{self, DnsError, Record, RecordType, Resolver};
use crate::delivery::limits::{DestinationLimits, Rate};
use crate::delivery::mta_sts::MtaSts;
use crate::delivery::outbound::IpVersion;
use crate::delivery::pool::{Pooled, SessionPool};
use crate::delivery::relay::HopDelivery;
use crate::delivery::smtp_client::{ClientSettings, PeerCheck, Session};
use crate::delivery::{
    fill_outcomes, Body, DeliveryError, DeliveryTarget, ErrorKind, MessageInfo, RecipientOutcome,
};
use crate::envelope::Recipient;
use crate::smtp::tls_policy::TlsPolicy;

/// Most addresses tried for one domain in one attempt (RFC 5321 §4.5.4.1
/// suggests trying at least two; Postfix tries five).
const MAX_ADDRESSES: usize = 5;
/// Most domains of one message delivered at the same time.
const MAX_PARALLEL_DOMAINS: usize = 8;

/// Settings of the MX client.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    pub client: Arc<ClientSettings>,
    pub mx_port: u16,
    pub destination_concurrency: usize,
    /// Most transactions per interval to one domain; `None`: no limit.
    pub rate: Option<Rate>,
    /// Zero turns connection reuse off.
    pub connection_cache_time: Duration,
}

/// Delivers to each recipient domain's mail servers.
pub struct RemoteTarget {
    resolver: Arc<Resolver>,
    settings: RemoteSettings,
    limits: DestinationLimits,
    pool: Arc<SessionPool>,
    /// The client settings without TLS, for the fallback under `may`.
    plain: Arc<ClientSettings>,
    /// MTA-STS policies, when `mta_sts` is on.
    mta_sts: Option<MtaSts>,
    /// TLSA lookups, with `[delivery] dane` and a local resolver.
    dane: Option<Dane>,
}

impl RemoteTarget {
    pub fn new(resolver: Resolver, settings: RemoteSettings) -> RemoteTarget {
        let pool = SessionPool::new(settings.connection_cache_time);
        let plain = Arc::new(ClientSettings {
            tls: TlsPolicy::None,
            ..(*settings.client).clone()
        });
        RemoteTarget {
            resolver: Arc::new(resolver),
            limits: DestinationLimits::new(settings.destination_concurrency, settings.rate),
            settings,
            pool,
            plain,
            mta_sts: None,
            dane: None,
        }
    }

    /// Applies the recipient domains' MTA-STS policies to their MX hosts.
    pub fn with_mta_sts(mut self, mta_sts: MtaSts) -> Self {
        self.mta_sts = Some(mta_sts);
        self
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &RemoteSettings {
        &self.settings
    }

    /// The resolver, to share with MTA-STS.
    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    /// The same target with DANE, if the resolver's AD bit can be
    /// trusted (it is on loopback); without, as it was.
    pub fn with_dane(mut self) -> RemoteTarget {
        self.dane = Dane::new(Arc::clone(&self.resolver), self.settings.mx_port);
        self
    }

    /// Connections currently open to `domain` for deliveries.
    pub fn active_connections(&self, domain: &str) -> usize {
        self.limits.connections(domain)
    }
}

impl DeliveryTarget for RemoteTarget {
    fn deliver(
        &self,
        msg: &MessageInfo,
        rcpts: &[Recipient],
        body: &Body,
    ) -> Vec<RecipientOutcome> {
        let mut outcomes: Vec<Option<RecipientOutcome>> = vec![None; rcpts.len()];
        // Positions of the recipients by A-label domain (or address literal).
        let mut domains: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, r) in rcpts.iter().enumerate() {
            match domain_key(r) {
                Ok(key) => domains.entry(key).or_default().push(i),
                Err(e) => outcomes[i] = Some(RecipientOutcome::new(Err(e))),
            }
        }
        let domains: Vec<(String, Vec<usize>)> = domains.into_iter().collect();
        for (positions, results) in self.deliver_domains(msg, rcpts, &domains, body) {
            for (&i, outcome) in positions.iter().zip(results) {
                outcomes[i] = Some(outcome);
            }
        }
        fill_outcomes(outcomes)
    }
}

/// The key recipients are grouped by: the A-label domain, or the address
/// literal as it is.
fn domain_key(rcpt: &Recipient) -> Result<String, DeliveryError> {
    let domain = rcpt.address.domain();
    if domain.starts_with('[') {
        return Ok(domain.to_string());
    }
    dns::to_ascii(domain).map_err(|e| DeliveryError::new(ErrorKind::BadDomain, &e.to_string()))
}

fn internal_error() -> DeliveryError {
    DeliveryError::new(ErrorKind::Local, "internal error in delivery")
}

impl RemoteTarget {
    /// Delivers to each domain, up to [`MAX_PARALLEL_DOMAINS`] at a time;
    /// returns each domain's recipient positions with their outcomes, in
    /// the same order.
    fn deliver_domains<'d>(
        &self,
        info: &MessageInfo,
        rcpts: &[Recipient],
        domains: &'d [(String, Vec<usize>)],
        body: &Body,
    ) -> Vec<(&'d [usize], Vec<RecipientOutcome>)> {
        let subset = |positions: &[usize]| -> Vec<Recipient> {
            positions.iter().map(|&i| rcpts[i].clone()).collect()
        };
        if let [(domain, positions)] = domains {
            let outcomes = self.deliver_domain(info, domain, &subset(positions), body);
            return vec![(positions.as_slice(), outcomes)];
        }
        let mut results = Vec::with_capacity(domains.len());
        for chunk in domains.chunks(MAX_PARALLEL_DOMAINS) {
            thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|(domain, positions)| {
                        let domain_rcpts = subset(positions);
                        s.spawn(move || self.deliver_domain(info, domain, &domain_rcpts, body))
                    })
                    .collect();
                for (h, (_, positions)) in handles.into_iter().zip(chunk) {
                    let outcomes = h.join().unwrap_or_else(|_| {
                        RecipientOutcome::all(positions.len(), Err(internal_error()))
                    });
                    results.push((positions.as_slice(), outcomes));
                }
            });
        }
        results
    }

    /// One domain's transaction; one outcome per recipient, in order.
    fn deliver_domain(
        &self,
        info: &MessageInfo,
        domain: &str,
        rcpts: &[Recipient],
        body: &Body,
    ) -> Vec<RecipientOutcome> {
        // Held for the whole transaction: the connection place, and the
        // token the transaction used.
        let _permit = match self.limits.admit(domain) {
            Ok(p) => p,
            Err(e) => return RecipientOutcome::all(rcpts.len(), Err(e)),
        };
        let pooled = match self.pool.take(domain) {
            Some(s) => s,
            None => match self.connect(domain) {
                Ok(s) => Pooled::fresh(s),
                Err(e) => return RecipientOutcome::all(rcpts.len(), Err(e)),
            },
        };
        if let Err(e) = pooled
            .session
            .check_message(&info.sender, &info.params, info.size)
        {
            let relay = Some(pooled.session.relay().to_string());
            self.pool.put(domain, pooled);
            return RecipientOutcome::all(rcpts.len(), Err(e))
                .into_iter()
                .map(|o| o.via(relay.clone()))
                .collect();
        }
        let mut hop = HopDelivery::new(pooled, info.clone(), false);
        hop.reopen = Some(Box::new(|| self.connect(domain)));
        let outcomes = hop.deliver(rcpts, body);
        if let Some(pooled) = hop.into_session() {
            self.pool.put(domain, pooled);
        }
        outcomes
    }

    /// Finds the domain's servers and connects to the first that greets.
    fn connect(&self, domain: &str) -> Result<Session, DeliveryError> {
        let targets = self.addresses(domain)?;
        let sts = self.mta_sts.as_ref().map(|s| s.policy_for(domain));
        let mut last: Option<DeliveryError> = None;
        for (host, ip) in targets {
            // DANE, when the host has usable TLSA records, settles its TLS
            // (before MTA-STS would).
            let check: Option<Arc<dyn PeerCheck>> = match &self.dane {
                Some(dane) => match dane.usable_records(domain, &host) {
                    Ok(c) => c.map(|c| c as Arc<dyn PeerCheck>),
                    Err(e) => {
                        log::info!("{domain}: {host}: {e}");
                        last = Some(e);
                        continue;
                    }
                },
                None => None,
            };
            let addr = SocketAddr::new(ip, self.settings.mx_port);
            let opened = match check {
                Some(dane) => self.open_at(domain, &host, addr, &self.settings.client, Some(dane)),
                None => {
                    let open = |client: &Arc<ClientSettings>| {
                        self.open_at(domain, &host, addr, client, None)
                    };
                    match &sts {
                        Some(policy) => policy.open(&host, &self.settings.client, open),
                        None => open(&self.settings.client),
                    }
                }
            };
            match opened {
                Ok(s) => return Ok(s),
                // Refused, a refusing greeting, a failed EHLO or TLS:
                // try the next.
                Err(e) => {
                    log::debug!("{domain}: {host}[{ip}]: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            DeliveryError::new(
                ErrorKind::Connect,
                &format!("{domain}: no server reachable"),
            )
        }))
    }

    /// Connects to one address of an MX host (from the source address,
    /// if set) and runs the session set-up with `client`'s settings and
    /// the certificate check the host needs (DANE), if any.
    fn open_at(
        &self,
        domain: &str,
        host: &str,
        addr: SocketAddr,
        client: &Arc<ClientSettings>,
        check: Option<Arc<dyn PeerCheck>>,
    ) -> Result<Session, DeliveryError> {
        let relay = format!("{host}[{}]:{}", addr.ip(), addr.port());
        let connect = || {
            client
                .outbound()
                .connect(addr, client.connect_timeout, &relay)
                .map_err(|e| e.at(host))
        };
        let required = check.is_some();
        match Session::open_stream(client, connect()?, host, relay.clone(), check) {
            // Many MX hosts offer STARTTLS with a broken TLS setup; under
            // `may` the mail goes in clear rather than not at all, as
            // Postfix does; never where DANE requires TLS.
            Err(e) if client.tls == TlsPolicy::May && !required && e.kind() == ErrorKind::Tls => {
                log::info!("{domain}: {relay}: {e}; trying again without TLS");
                Session::open_stream(&self.plain, connect()?, host, relay, None)
            }
            other => other,
        }
    }

    /// Up to five (host, address) pairs in the order to try them, of the
    /// families outgoing connections use.
    fn addresses(&self, domain: &str) -> Result<Vec<(String, IpAddr)>, DeliveryError> {
        let outbound = self.settings.client.outbound();
        if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip: IpAddr = lit
                .strip_prefix("IPv6:")
                .unwrap_or(lit)
                .parse()
                .map_err(|_| {
                    DeliveryError::new(
                        ErrorKind::BadDomain,
                        &format!("bad address literal {domain}"),
                    )
                })?;
            if !outbound.allows(&ip) {
                return Err(outbound.literal_ruled_out(domain));
            }
            return Ok(vec![(domain.to_string(), ip)]);
        }
        let hosts = self.mx_hosts(domain)?;
        let mut out = Vec::new();
        let mut definitive = true;
        let mut last_err = None;
        // Hosts found without an address of the families used: with the
        // other family not looked up, that says nothing for certain.
        let mut other_family = Vec::new();
        for host in hosts {
            match self.resolver.addresses(&host, outbound.families()) {
                Ok(ips) if ips.is_empty() && outbound.families() != IpVersion::Any => {
                    other_family.push(host)
                }
                Ok(ips) => out.extend(ips.into_iter().map(|ip| (host.clone(), ip))),
                Err(e) => {
                    definitive &= e.is_permanent();
                    last_err = Some(e);
                }
            }
            if out.len() >= MAX_ADDRESSES {
                break;
            }
        }
        out.truncate(MAX_ADDRESSES);
        if out.is_empty() && !other_family.is_empty() {
            return Err(outbound.no_address(&other_family));
        }
        if out.is_empty() {
            let why = last_err
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no address records".into());
            let text = format!("{domain}: no address for any mail server: {why}");
            return Err(if definitive {
                DeliveryError::new(ErrorKind::NoMailServer, &text)
            } else {
                DeliveryError::new(ErrorKind::Dns, &text)
            });
        }
        Ok(out)
    }

    /// MX hosts by preference, equal preferences shuffled; the domain
    /// itself when it has no MX records (implicit MX).
    fn mx_hosts(&self, domain: &str) -> Result<Vec<String>, DeliveryError> {
        let records = match self.resolver.lookup(domain, RecordType::Mx) {
            Ok(r) => r,
            Err(DnsError::NxDomain(_)) => {
                return Err(DeliveryError::new(
                    ErrorKind::NoSuchDomain,
                    &format!("{domain}: domain not found"),
                ))
            }
            Err(e) if e.is_permanent() => {
                return Err(DeliveryError::new(ErrorKind::BadDomain, &e.to_string()))
            }
            Err(e) => return Err(DeliveryError::new(ErrorKind::Dns, &e.to_string())),
        };
        let mut mx: Vec<(u16, String)> = records
            .into_iter()
            .filter_map(|r| match r {
                Record::Mx(p, h) => Some((p, h)),
                _ => None,
            })
            .collect();
        if mx.is_empty() {
            return Ok(vec![domain.to_string()]);
        }
        // RFC 7505: a lone MX "." says the domain takes no mail.
        if mx.iter().all(|(_, h)| h.is_empty()) {
            return Err(DeliveryError::new(
                ErrorKind::NullMx,
                &format!("{domain}: domain does not accept mail (null MX)"),
            ));
        }
        mx.retain(|(_, h)| !h.is_empty());
        fastrand::shuffle(&mut mx);
        mx.sort_by_key(|(p, _)| *p);
        Ok(mx.into_iter().map(|(_, h)| h).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::delivery::smtp_client::testing::serve_commands;
    use crate::delivery::smtp_client::tls_connector;

    /// An MX host on 127.0.0.1 that offers STARTTLS and then answers the
    /// TLS handshake with garbage; a client that comes back speaks in
    /// clear. Returns its port and a count of its connections.
    fn broken_tls_server() -> (u16, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                serve_commands(s, b"220 mx.test ESMTP\r\n", |verb, c| match verb {
                    "EHLO" => c.say(b"250-mx.test\r\n250 STARTTLS\r\n"),
                    "STAR" => {
                        c.say(b"220 2.0.0 go ahead\r\n")?;
                        // Read the client's hello, answer nonsense.
                        let mut hello = [0u8; 512];
                        let _ = c.reader().read(&mut hello);
                        c.say_last(b"this is not TLS\r\n")
                    }
                    "QUIT" => c.say_last(b"221 2.0.0 bye\r\n"),
                    _ => c.say(b"250 ok\r\n"),
                });
            }
        });
        (port, connections)
    }

    fn target(policy: TlsPolicy, mx_port: u16) -> RemoteTarget {
        let timeout = Duration::from_secs(5);
        let client = ClientSettings {
            helo_name: "client.test".into(),
            lmtp: false,
            tls: policy,
            tls_connector: tls_connector(policy, None).unwrap().map(Arc::new),
            auth: None,
            connect_timeout: timeout,
            command_timeout: timeout,
            data_timeout: timeout,
            source_address: None,
            ip_version: Default::default(),
            messages_per_connection: 0,
        };
        // An address literal needs no DNS: the resolver is never asked.
        let resolver = Resolver::new(&["127.0.0.1:9".into()], timeout).unwrap();
        RemoteTarget::new(
            resolver,
            RemoteSettings {
                client: Arc::new(client),
                mx_port,
                destination_concurrency: 1,
                rate: None,
                connection_cache_time: Duration::ZERO,
            },
        )
    }

    #[test]
    fn an_address_literal_of_a_family_ruled_out_is_a_temporary_error_that_says_why() {
        let base = target(TlsPolicy::None, 9);
        let only = |ip_version, source: Option<&str>| {
            let client = ClientSettings {
                ip_version,
                source_address: source.map(|s| s.parse().unwrap()),
                ..(*base.settings.client).clone()
            };
            let resolver = Resolver::new(&["127.0.0.1:9".into()], Duration::from_secs(1)).unwrap();
            RemoteTarget::new(
                resolver,
                RemoteSettings {
                    client: Arc::new(client),
                    ..base.settings.clone()
                },
            )
        };
        let e = only(IpVersion::V4, None)
            .connect("[IPv6:::1]")
            .err()
            .expect("an IPv6 literal under ip_version = 4");
        assert_eq!(e.kind(), ErrorKind::NoUsableAddress, "{e}");
        assert!(!e.is_permanent());
        assert_eq!(
            e.reply().text,
            "[IPv6:::1] is not an IPv4 address (ip_version = 4)"
        );
        let e = only(IpVersion::Any, Some("::1"))
            .connect("[127.0.0.1]")
            .err()
            .expect("an IPv4 literal from an IPv6 source address");
        assert_eq!(
            e.reply().text,
            "[127.0.0.1] is not an IPv6 address (source_address = ::1)"
        );
    }

    #[test]
    fn a_failed_tls_handshake_is_told_by_its_kind_and_may_goes_on_in_clear() {
        let (port, connections) = broken_tls_server();

        // Under `encrypt` the failed handshake is the error, with the
        // codes of its kind.
        let e = target(TlsPolicy::Encrypt, port)
            .connect("[127.0.0.1]")
            .err()
            .expect("a session without TLS under encrypt");
        assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
        assert_eq!(e.reply().code, 451, "{e}");
        assert_eq!(e.reply().status().to_string(), "4.7.5", "{e}");
        assert!(e.reply().text.contains("TLS handshake with"), "{e}");
        assert_eq!(connections.load(Ordering::SeqCst), 1);

        // Under `may` the kind sends the client back, in clear.
        let session = target(TlsPolicy::May, port)
            .connect("[127.0.0.1]")
            .expect("under may a broken TLS setup falls back to clear");
        assert!(!session.is_tls());
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }
}
