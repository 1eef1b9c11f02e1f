//! The resolver: servers, UDP with TCP fallback, and the TTL cache.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use simple_dns::RCODE;

use super::wire::{build_query, parse_response, Response};
use super::{to_ascii, DnsError, Record, RecordType, ResolverError};
use crate::delivery::outbound::IpVersion;

/// What a cached lookup gave.
#[derive(Clone)]
struct Cached {
    expires: Instant,
    result: Result<Answer, DnsError>,
}

/// The records of one lookup, and whether the server authenticated them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The records of the type asked; empty when the name has none.
    pub records: Vec<Record>,
    /// The server set the AD bit: it validated the answer with DNSSEC
    /// (or the authenticated denial of the records). Worth something only
    /// from a resolver on this host ([`Resolver::is_local`]).
    pub authenticated: bool,
}

/// Most names kept in the cache; past it the cache starts over.
const CACHE_LIMIT: usize = 10_000;
/// How long "no such name" and "no such record" are remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(60);
/// Longest any answer is remembered, whatever its TTL.
const MAX_TTL: Duration = Duration::from_secs(3600);

/// The resolver. Shared by all workers.
pub struct Resolver {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    cache: Mutex<HashMap<(String, RecordType), Cached>>,
}

impl Resolver {
    /// A resolver asking `servers` (as `ip` or `ip:port`), or the ones in
    /// `/etc/resolv.conf` when the list is empty.
    pub fn new(servers: &[String], timeout: Duration) -> Result<Resolver, ResolverError> {
        let mut addrs = Vec::new();
        for s in servers {
            let addr = s
                .parse::<SocketAddr>()
                .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| ResolverError::BadServer(s.clone()))?;
            addrs.push(addr);
        }
        if addrs.is_empty() {
            let text = std::fs::read("/etc/resolv.conf").map_err(ResolverError::ResolvConf)?;
            let (conf, errors) = resolv_conf::Config::parse_with_errors(&text);
            for e in errors {
                log::warn!("/etc/resolv.conf: {e}");
            }
            addrs = conf
                .nameservers
                .into_iter()
                .map(|ip| SocketAddr::new(ip.into(), 53))
                .collect();
        }
        if addrs.is_empty() {
            return Err(ResolverError::NoServers);
        }
        Ok(Resolver {
            servers: addrs,
            timeout,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Whether every server is on this host (loopback): only then is the
    /// AD bit of its answers worth trusting, since the path to a remote
    /// resolver is not protected (RFC 6698 §4.1; maddy's rule too).
    pub fn is_local(&self) -> bool {
        self.servers.iter().all(|s| s.ip().is_loopback())
    }

    /// Records of one type for a name; an empty list when the name exists
    /// without such records.
    pub fn lookup(&self, name: &str, qtype: RecordType) -> Result<Vec<Record>, DnsError> {
        self.lookup_answer(name, qtype).map(|a| a.records)
    }

    /// Records of one type for a name, with the AD bit of the answer.
    pub fn lookup_answer(&self, name: &str, qtype: RecordType) -> Result<Answer, DnsError> {
        let name = to_ascii(name)?;
        let key = (name.clone(), qtype);
        let now = Instant::now();
        if let Some(c) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            if c.expires > now {
                return c.result.clone();
            }
        }
        let result = self.query_servers(&name, qtype);
        let keep = match &result {
            Ok((answer, ttl)) if !answer.records.is_empty() => {
                Some(Duration::from_secs(u64::from(*ttl)).min(MAX_TTL))
            }
            Ok(_) | Err(DnsError::NxDomain(_)) => Some(NEGATIVE_TTL),
            Err(_) => None,
        };
        let result = result.map(|(a, _)| a);
        if let Some(keep) = keep.filter(|k| !k.is_zero()) {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(
                key,
                Cached {
                    expires: now + keep,
                    result: result.clone(),
                },
            );
        }
        result
    }

    /// The addresses of a host of the families asked for, IPv6 first.
    /// A family not asked for is not looked up at all: its answer (or its
    /// server's failure to give one) would only cost time.
    pub fn addresses(&self, host: &str, families: IpVersion) -> Result<Vec<IpAddr>, DnsError> {
        let ips = |r: Vec<Record>| -> Vec<IpAddr> {
            r.into_iter()
                .filter_map(|r| match r {
                    Record::Ip(ip) => Some(ip),
                    _ => None,
                })
                .collect()
        };
        let v6 = || self.lookup(host, RecordType::Aaaa).map(ips);
        let v4 = || self.lookup(host, RecordType::A).map(ips);
        match families {
            IpVersion::V4 => v4(),
            IpVersion::V6 => v6(),
            _ => match (v6(), v4()) {
                (Ok(mut a), Ok(b)) => {
                    a.extend(b);
                    Ok(a)
                }
                (Ok(a), Err(_)) | (Err(_), Ok(a)) => Ok(a),
                (Err(e), Err(_)) => Err(e),
            },
        }
    }

    fn query_servers(&self, name: &str, qtype: RecordType) -> Result<(Answer, u32), DnsError> {
        let mut why = String::new();
        // Two rounds over the servers: a lost UDP packet is common.
        for _round in 0..2 {
            for server in &self.servers {
                match self.query_one(*server, name, qtype) {
                    Ok(r) if r.rcode == RCODE::NoError as u16 => {
                        let answer = Answer {
                            records: r.records,
                            authenticated: r.authenticated,
                        };
                        return Ok((answer, r.ttl));
                    }
                    Ok(r) if r.rcode == RCODE::NameError as u16 => {
                        return Err(DnsError::NxDomain(name.into()))
                    }
                    Ok(r) => why = format!("{server} answered rcode {}", r.rcode),
                    Err(e) => why = format!("{server}: {e}"),
                }
            }
        }
        Err(DnsError::Failed {
            name: name.into(),
            why,
        })
    }

    fn query_one(&self, server: SocketAddr, name: &str, qtype: RecordType) -> io::Result<Response> {
        let id = fastrand::u16(..);
        let query = build_query(id, name, qtype)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let bind: SocketAddr = if server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind)?;
        socket.connect(server)?;
        socket.send(&query)?;
        let deadline = Instant::now() + self.timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no reply"));
            }
            socket.set_read_timeout(Some(left))?;
            let n = match socket.recv(&mut buf) {
                Ok(n) => n,
                // A UDP read timeout shows up as WouldBlock.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no reply"))
                }
                Err(e) => return Err(e),
            };
            // Replies for another query (or forged ones) are ignored, not
            // trusted: keep waiting for ours until the deadline.
            match parse_response(&buf[..n], id, name, qtype) {
                Ok(r) if r.truncated => return self.query_tcp(server, name, qtype),
                Ok(r) => return Ok(r),
                Err(e) => log::debug!("{server}: ignoring reply: {e}"),
            }
        }
    }

    fn query_tcp(&self, server: SocketAddr, name: &str, qtype: RecordType) -> io::Result<Response> {
        let id = fastrand::u16(..);
        let query = build_query(id, name, qtype)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut s = TcpStream::connect_timeout(&server, self.timeout)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        s.write_all(&framed)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut reply)?;
        parse_response(&reply, id, name, qtype)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}
