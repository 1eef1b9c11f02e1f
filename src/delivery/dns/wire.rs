//! DNS messages on the wire: queries built and answers parsed (with
//! simple-dns), checked against the question they answer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, QCLASS, QTYPE, TYPE};

use super::{Record, RecordType, Tlsa, TLSA};

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
pub(super) fn tlsa_question_as_null(bytes: &[u8]) -> (std::borrow::Cow<'_, [u8]>, bool) {
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
