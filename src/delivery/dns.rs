//! A small blocking DNS stub resolver for MX delivery: MX, A and AAAA
//! over UDP (TCP when the answer is truncated), against the servers of the
//! configuration or `/etc/resolv.conf`, with a TTL-honouring cache.
//!
//! Queries set the AD bit (RFC 6840 §5.7), so a validating resolver says
//! whether it authenticated each answer with DNSSEC; DANE trusts that only
//! from a resolver on this host ([`Resolver::is_local`]).
//!
//! The wire format is simple-dns's; the sockets are std's.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, QCLASS, QTYPE, RCODE, TYPE};

use crate::delivery::outbound::IpVersion;

/// Record types this resolver asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    Mx,
    A,
    Aaaa,
    /// Text records: MTA-STS (`_mta-sts.`), DKIM keys (`._domainkey.`), SPF.
    Txt,
    /// Reverse DNS: the name of an address (`in-addr.arpa`, `ip6.arpa`).
    Ptr,
    /// DANE: the certificates a TLS server may present (RFC 6698), at
    /// `_25._tcp.<mx host>`.
    Tlsa,
}

/// The type code of TLSA (RFC 6698 §7.1), which simple-dns does not know.
const TLSA: u16 = 52;

impl RecordType {
    fn wire(self) -> TYPE {
        match self {
            RecordType::Mx => TYPE::MX,
            RecordType::A => TYPE::A,
            RecordType::Aaaa => TYPE::AAAA,
            RecordType::Txt => TYPE::TXT,
            RecordType::Ptr => TYPE::PTR,
            RecordType::Tlsa => TYPE::Unknown(TLSA),
        }
    }
}

/// One answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Preference and exchange host (without a trailing dot; empty for
    /// the root, as in a null MX).
    Mx(u16, String),
    Ip(IpAddr),
    /// One TXT record: its strings joined, as RFC 7208 §3.3 and RFC 6376
    /// §3.6.2.2 read them (invalid UTF-8 replaced).
    Txt(String),
    /// A PTR record's target name (without a trailing dot).
    Name(String),
    /// A TLSA record.
    Tlsa(Tlsa),
}

/// One TLSA record (RFC 6698 §2.1) as the wire gives it; whether it can
/// be used is DANE's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// Certificate usage: 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE.
    pub usage: u8,
    /// 0: the whole certificate; 1: its SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0: the data as it is; 1: its SHA-256; 2: its SHA-512.
    pub matching: u8,
    /// The certificate association data.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Reads TLSA RDATA: three octets, then the data. `None` when shorter.
    pub fn from_rdata(rdata: &[u8]) -> Option<Tlsa> {
        match rdata {
            [usage, selector, matching, data @ ..] => Some(Tlsa {
                usage: *usage,
                selector: *selector,
                matching: *matching,
                data: data.to_vec(),
            }),
            _ => None,
        }
    }
}

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist: permanent.
    #[error("{0}: domain not found (NXDOMAIN)")]
    NxDomain(String),
    /// No server gave a usable answer: temporary.
    #[error("{name}: DNS lookup failed: {why}")]
    Failed { name: String, why: String },
    /// The name cannot be put into a query.
    #[error("{0}: not a valid domain name")]
    BadName(String),
}

/// Why a [`Resolver`] cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    /// A configured server is not `ip` or `ip:port`.
    #[error("DNS server {0:?} is not ip or ip:port")]
    BadServer(String),
    /// No servers are configured and `/etc/resolv.conf` cannot be read.
    #[error("cannot read /etc/resolv.conf: {0}")]
    ResolvConf(#[source] std::io::Error),
    /// No servers are configured and `/etc/resolv.conf` names none.
    #[error("no DNS servers: set [delivery] dns_servers or fill /etc/resolv.conf")]
    NoServers,
}

impl DnsError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, DnsError::NxDomain(_) | DnsError::BadName(_))
    }
}

/// What the wire gave for one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub rcode: u16,
    pub truncated: bool,
    pub records: Vec<Record>,
    /// Smallest TTL of the records used, in seconds.
    pub ttl: u32,
    /// The AD bit: the server says it authenticated the answer (DNSSEC).
    pub authenticated: bool,
}

/// A reply that does not belong to the question or cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unusable DNS reply: {0}")]
pub struct WireError(pub String);

/// Builds a recursive query.
pub fn build_query(id: u16, name: &str, qtype: RecordType) -> Result<Vec<u8>, WireError> {
    let mut p = Packet::new_query(id);
    // AD in a query asks a validating resolver to say whether it
    // authenticated the answer (RFC 6840 §5.7), without the DO bit's
    // DNSSEC records in the reply.
    p.set_flags(PacketFlag::RECURSION_DESIRED | PacketFlag::AUTHENTIC_DATA);
    let qname = Name::new(name).map_err(|e| WireError(e.to_string()))?;
    // simple-dns skips empty labels and reads `\DDD` escapes, so some
    // names would be asked as another name, and no reply could ever match
    // the question (`parse_response` compares the text).
    if qname.to_string() != name.strip_suffix('.').unwrap_or(name) {
        return Err(WireError(format!("{name:?} is not a plain domain name")));
    }
    p.questions.push(Question::new(
        qname,
        QTYPE::TYPE(qtype.wire()),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    p.build_bytes_vec().map_err(|e| WireError(e.to_string()))
}

fn same_name(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// Reads a reply, checking that it answers exactly the query `id` asked
/// about `name`/`qtype`. Records are those of the asked type owned by the
/// name or by a CNAME it leads to.
pub fn parse_response(
    bytes: &[u8],
    id: u16,
    name: &str,
    qtype: RecordType,
) -> Result<Response, WireError> {
    let (bytes, asked_tlsa) = tlsa_question_as_null(bytes);
    if asked_tlsa != (qtype == RecordType::Tlsa) {
        return Err(WireError("reply is about another record type".into()));
    }
    let p = Packet::parse(&bytes).map_err(|e| WireError(e.to_string()))?;
    let qtype_seen = if asked_tlsa { TYPE::NULL } else { qtype.wire() };
    check_answers_query(&p, id, name, qtype_seen)?;
    let owners = cname_chain(&p, name);
    let (records, ttl) = records_of(&p, &owners, qtype);
    Ok(Response {
        rcode: p.rcode() as u16,
        truncated: p.has_flags(PacketFlag::TRUNCATION),
        records,
        ttl: if ttl == u32::MAX { 0 } else { ttl },
        authenticated: p.has_flags(PacketFlag::AUTHENTIC_DATA),
    })
}

/// simple-dns refuses a question of a type it does not know, TLSA among
/// them (answers of such types it keeps as opaque data). A reply's first
/// question of type TLSA is given to it as one of type NULL, which this
/// resolver never asks; the flag says it was TLSA.
fn tlsa_question_as_null(bytes: &[u8]) -> (std::borrow::Cow<'_, [u8]>, bool) {
    const HEADER: usize = 12;
    let has_question = bytes.len() > 5 && bytes[4..6] != [0, 0];
    let mut at = HEADER;
    // The question's name: labels up to the root (a pointer cannot come
    // first in a message, so none is followed).
    while has_question && at < bytes.len() && bytes[at] != 0 && bytes[at] < 64 {
        at += 1 + usize::from(bytes[at]);
    }
    let qtype_at = at + 1;
    match bytes.get(at..qtype_at + 2) {
        Some([0, hi, lo]) if has_question && u16::from_be_bytes([*hi, *lo]) == TLSA => {
            let mut patched = bytes.to_vec();
            patched[qtype_at..qtype_at + 2].copy_from_slice(&10u16.to_be_bytes());
            (patched.into(), true)
        }
        _ => (bytes.into(), false),
    }
}

/// Checks that `p` is a response to the query `id`, with one question:
/// `name` and the type asked (`qtype_seen`, as parsed).
fn check_answers_query(
    p: &Packet<'_>,
    id: u16,
    name: &str,
    qtype_seen: TYPE,
) -> Result<(), WireError> {
    if p.id() != id {
        return Err(WireError(format!("id {} instead of {id}", p.id())));
    }
    if !p.has_flags(PacketFlag::RESPONSE) {
        return Err(WireError("not a response".into()));
    }
    let [q] = p.questions.as_slice() else {
        return Err(WireError(format!(
            "{} questions in the reply",
            p.questions.len()
        )));
    };
    if !same_name(&q.qname.to_string(), name) || q.qtype != QTYPE::TYPE(qtype_seen) {
        return Err(WireError(format!(
            "reply is about {} {:?}",
            q.qname, q.qtype
        )));
    }
    Ok(())
}

/// The asked name (lower case, without its final dot) and the names its
/// CNAMEs in the answers lead to, followed a bounded number of steps.
fn cname_chain(p: &Packet<'_>, name: &str) -> Vec<String> {
    let mut owners = vec![name.trim_end_matches('.').to_ascii_lowercase()];
    for _ in 0..8 {
        let mut grew = false;
        for rr in &p.answers {
            if let RData::CNAME(c) = &rr.rdata {
                let owner = rr.name.to_string();
                let target = c.0.to_string().to_ascii_lowercase();
                if owners.iter().any(|o| same_name(o, &owner)) && !owners.contains(&target) {
                    owners.push(target);
                    grew = true;
                }
            }
        }
        if !grew {
            break;
        }
    }
    owners
}

/// The answers of type `qtype` owned by one of `owners`, and their least
/// TTL (`u32::MAX` if there are none).
fn records_of(p: &Packet<'_>, owners: &[String], qtype: RecordType) -> (Vec<Record>, u32) {
    let mut records = Vec::new();
    let mut ttl = u32::MAX;
    for rr in &p.answers {
        if !owners.iter().any(|o| same_name(o, &rr.name.to_string())) {
            continue;
        }
        let record = match (&rr.rdata, qtype) {
            (RData::MX(mx), RecordType::Mx) => Record::Mx(
                mx.preference,
                mx.exchange.to_string().trim_end_matches('.').to_string(),
            ),
            (RData::A(a), RecordType::A) => Record::Ip(IpAddr::V4(Ipv4Addr::from(a.address))),
            (RData::AAAA(a), RecordType::Aaaa) => Record::Ip(IpAddr::V6(Ipv6Addr::from(a.address))),
            (RData::TXT(t), RecordType::Txt) => Record::Txt(txt_text(t)),
            (RData::PTR(n), RecordType::Ptr) => {
                Record::Name(n.0.to_string().trim_end_matches('.').to_string())
            }
            (RData::NULL(TLSA, rdata), RecordType::Tlsa) => {
                match Tlsa::from_rdata(rdata.get_data()) {
                    Some(t) => Record::Tlsa(t),
                    None => continue,
                }
            }
            _ => continue,
        };
        ttl = ttl.min(rr.ttl);
        records.push(record);
    }
    (records, ttl)
}

/// A TXT record's character-strings, concatenated without separators.
fn txt_text(t: &simple_dns::rdata::TXT<'_>) -> String {
    let mut bytes = Vec::new();
    for part in t.iter_raw() {
        bytes.extend_from_slice(part.0);
        if let Some(v) = part.1 {
            bytes.push(b'=');
            bytes.extend_from_slice(v);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The name PTR records of `ip` live at: `4.3.2.1.in-addr.arpa` for
/// 1.2.3.4, nibbles reversed under `ip6.arpa` for IPv6.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name.push_str("ip6.arpa");
            name
        }
    }
}

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

/// Puts a domain into A-label (punycode) form, lower case, without a
/// trailing dot.
pub fn to_ascii(domain: &str) -> Result<String, DnsError> {
    let d = domain.trim_end_matches('.');
    if d.is_empty() {
        return Err(DnsError::BadName(domain.into()));
    }
    let ascii = idna::domain_to_ascii(d).map_err(|_| DnsError::BadName(domain.into()))?;
    // idna lets through empty labels (also from full-width dots), spaces,
    // controls and backslashes: names no query can carry as they are.
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if ascii.len() > 253 || !ascii.split('.').all(label_ok) {
        return Err(DnsError::BadName(domain.into()));
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::rdata::{A, MX};
    use simple_dns::ResourceRecord;

    fn reply(id: u16, qname: &str, qtype: TYPE, answers: Vec<ResourceRecord<'static>>) -> Vec<u8> {
        let mut p = Packet::new_reply(id);
        p.questions.push(Question::new(
            Name::new_unchecked(qname).into_owned(),
            QTYPE::TYPE(qtype),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        p.answers = answers;
        p.build_bytes_vec().unwrap()
    }

    fn mx(owner: &'static str, pref: u16, host: &'static str) -> ResourceRecord<'static> {
        ResourceRecord::new(
            Name::new_unchecked(owner),
            CLASS::IN,
            300,
            RData::MX(MX {
                preference: pref,
                exchange: Name::new_unchecked(host),
            }),
        )
    }

    #[test]
    fn txt_strings_are_joined_and_ptr_names_read() {
        let mut txt = simple_dns::rdata::TXT::new();
        txt.add_string("v=DKIM1; k=ed25519; ").unwrap();
        txt.add_string("p=AAAA").unwrap();
        let owner = "s1._domainkey.d.test";
        let bytes = reply(
            3,
            owner,
            TYPE::TXT,
            vec![ResourceRecord::new(
                Name::new_unchecked(owner),
                CLASS::IN,
                60,
                RData::TXT(txt),
            )],
        );
        let r = parse_response(&bytes, 3, owner, RecordType::Txt).unwrap();
        assert_eq!(
            r.records,
            vec![Record::Txt("v=DKIM1; k=ed25519; p=AAAA".into())]
        );
        let rev = "1.0.0.127.in-addr.arpa";
        let bytes = reply(
            4,
            rev,
            TYPE::PTR,
            vec![ResourceRecord::new(
                Name::new_unchecked(rev),
                CLASS::IN,
                60,
                RData::PTR(simple_dns::rdata::PTR(Name::new_unchecked("mail.d.test"))),
            )],
        );
        let r = parse_response(&bytes, 4, rev, RecordType::Ptr).unwrap();
        assert_eq!(r.records, vec![Record::Name("mail.d.test".into())]);
    }

    #[test]
    fn tlsa_records_and_the_ad_bit_are_read() {
        let owner = "_25._tcp.mx.d.test";
        const RDATA: &[u8] = &[3, 1, 1, 0xab, 0xcd];
        let tlsa = |data: &'static [u8]| {
            ResourceRecord::new(
                Name::new_unchecked(owner),
                CLASS::IN,
                300,
                RData::NULL(TLSA, simple_dns::rdata::NULL::new(data).unwrap()),
            )
        };
        // A record too short to be TLSA is left out, not an error.
        let bytes = reply(
            9,
            owner,
            TYPE::Unknown(TLSA),
            vec![tlsa(RDATA), tlsa(&[2, 0])],
        );
        let plain = bytes.clone();
        let mut authenticated = bytes;
        authenticated[3] |= 0x20; // AD
        let want = vec![Record::Tlsa(Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0xab, 0xcd],
        })];
        let r = parse_response(&authenticated, 9, owner, RecordType::Tlsa).unwrap();
        assert_eq!((r.records.clone(), r.authenticated), (want.clone(), true));
        let r = parse_response(&plain, 9, owner, RecordType::Tlsa).unwrap();
        assert_eq!((r.records, r.authenticated), (want, false));
        // TLSA records are not the answer to another type, nor others to TLSA.
        assert!(parse_response(&plain, 9, owner, RecordType::Txt).is_err());
        let mx_reply = reply(9, owner, TYPE::Unknown(TLSA), vec![mx(owner, 1, "x.test")]);
        let r = parse_response(&mx_reply, 9, owner, RecordType::Tlsa).unwrap();
        assert!(r.records.is_empty());
    }

    #[test]
    fn queries_ask_for_the_ad_bit() {
        let bytes = build_query(5, "_25._tcp.mx.d.test", RecordType::Tlsa).unwrap();
        let (masked, was_tlsa) = tlsa_question_as_null(&bytes);
        assert!(was_tlsa);
        let q = Packet::parse(&masked).unwrap();
        assert!(q.has_flags(PacketFlag::AUTHENTIC_DATA | PacketFlag::RECURSION_DESIRED));
        assert_eq!(q.questions[0].qtype, QTYPE::TYPE(TYPE::NULL));
        assert_eq!(&bytes[bytes.len() - 4..], &[0, 52, 0, 1]);
        let bytes = build_query(5, "mx.d.test", RecordType::A).unwrap();
        assert!(!tlsa_question_as_null(&bytes).1);
    }

    #[test]
    fn only_loopback_servers_count_as_local() {
        let t = Duration::from_secs(1);
        assert!(Resolver::new(&["127.0.0.1:5353".into(), "::1".into()], t)
            .unwrap()
            .is_local());
        assert!(
            !Resolver::new(&["127.0.0.1".into(), "192.0.2.53".into()], t)
                .unwrap()
                .is_local()
        );
    }

    #[test]
    fn reverse_names_of_v4_and_v6_addresses() {
        assert_eq!(
            reverse_name("192.0.2.10".parse().unwrap()),
            "10.2.0.192.in-addr.arpa"
        );
        let v6 = reverse_name("2001:db8::1".parse().unwrap());
        assert!(v6.starts_with("1.0.0.0.0.0.0.0."), "{v6}");
        assert!(v6.ends_with(".8.b.d.0.1.0.0.2.ip6.arpa"), "{v6}");
        assert_eq!(v6.split('.').count(), 34);
    }

    #[test]
    fn answers_are_matched_to_the_question() {
        let bytes = reply(
            7,
            "d.test",
            TYPE::MX,
            vec![
                mx("d.test", 10, "mx.d.test"),
                mx("other.test", 5, "evil.test"),
            ],
        );
        let r = parse_response(&bytes, 7, "d.test.", RecordType::Mx).unwrap();
        assert_eq!(r.records, vec![Record::Mx(10, "mx.d.test".into())]);
        assert_eq!(r.ttl, 300);
        assert!(
            parse_response(&bytes, 8, "d.test", RecordType::Mx).is_err(),
            "wrong id accepted"
        );
        assert!(
            parse_response(&bytes, 7, "e.test", RecordType::Mx).is_err(),
            "wrong name accepted"
        );
        assert!(
            parse_response(&bytes, 7, "d.test", RecordType::A).is_err(),
            "wrong type accepted"
        );
        let query = build_query(7, "d.test", RecordType::Mx).unwrap();
        assert!(
            parse_response(&query, 7, "d.test", RecordType::Mx).is_err(),
            "a query is not a reply"
        );
    }

    #[test]
    fn cnames_are_followed() {
        let cname = ResourceRecord::new(
            Name::new_unchecked("www.d.test"),
            CLASS::IN,
            60,
            RData::CNAME(simple_dns::rdata::CNAME(Name::new_unchecked("host.d.test"))),
        );
        let a = ResourceRecord::new(
            Name::new_unchecked("host.d.test"),
            CLASS::IN,
            30,
            RData::A(A {
                address: 0x7f000001,
            }),
        );
        let bytes = reply(1, "www.d.test", TYPE::A, vec![cname, a]);
        let r = parse_response(&bytes, 1, "www.d.test", RecordType::A).unwrap();
        assert_eq!(r.records, vec![Record::Ip("127.0.0.1".parse().unwrap())]);
        assert_eq!(r.ttl, 30);
    }

    #[test]
    fn truncated_and_garbage_packets_do_not_panic() {
        let bytes = reply(3, "d.test", TYPE::MX, vec![mx("d.test", 10, "mx.d.test")]);
        for cut in 0..bytes.len() {
            let _ = parse_response(&bytes[..cut], 3, "d.test", RecordType::Mx);
        }
        let mut rng = fastrand::Rng::with_seed(42);
        for _ in 0..20_000 {
            let len = rng.usize(0..200);
            let junk: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let _ = parse_response(&junk, 3, "d.test", RecordType::Mx);
            let mut flipped = bytes.clone();
            let i = rng.usize(..flipped.len());
            flipped[i] = rng.u8(..);
            let _ = parse_response(&flipped, 3, "d.test", RecordType::Mx);
        }
    }

    #[test]
    fn names_become_a_labels() {
        assert_eq!(
            to_ascii("Bücher.Example.").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(to_ascii("MX.d.test").unwrap(), "mx.d.test");
        assert!(to_ascii("").is_err());
        assert_eq!(to_ascii("_25._tcp.d.test").unwrap(), "_25._tcp.d.test");
        // Found by fuzzing build_query: names idna accepts but no query
        // can carry are refused here, for good, instead of timing out.
        for bad in [
            ".d.test",
            "a..b",
            "a\\065b.c",
            "a b.c",
            "a\u{1}.c",
            "a\u{ff0e}\u{ff0e}b",
        ] {
            assert!(to_ascii(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn queries_are_only_built_for_names_a_reply_can_match() {
        // Found by fuzzing: an empty label was dropped from the query, so
        // the reply's question never matched the name asked.
        for bad in [".d.test", "a..b", "d\\065.test"] {
            assert!(build_query(1, bad, RecordType::A).is_err(), "{bad:?}");
        }
        for good in ["d.test", "d.test.", "xn--bcher-kva.example"] {
            let mut reply = build_query(1, good, RecordType::A).unwrap();
            reply[2] |= 0x80;
            assert!(
                parse_response(&reply, 1, good, RecordType::A).is_ok(),
                "{good:?}"
            );
        }
    }
}
