//! A small blocking DNS stub resolver for MX delivery: MX, A and AAAA
//! over UDP (TCP when the answer is truncated), against the servers of the
//! configuration or `/etc/resolv.conf`, with a TTL-honouring cache.
//!
//! Queries set the AD bit (RFC 6840 §5.7), so a validating resolver says
//! whether it authenticated each answer with DNSSEC; DANE trusts that only
//! from a resolver on this host ([`Resolver::is_local`]).
//!
//! The wire format is simple-dns's; the sockets are std's.

use std::net::IpAddr;

use simple_dns::TYPE;

mod resolver;
mod wire;

pub use resolver::{Answer, Resolver};
pub use wire::{build_query, parse_response, Response, WireError};

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
    use super::wire::tlsa_question_as_null;
    use super::*;
    use simple_dns::rdata::{RData, A, MX};
    use simple_dns::{Name, Packet, PacketFlag, Question, ResourceRecord, CLASS, QCLASS, QTYPE};
    use std::time::Duration;

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
