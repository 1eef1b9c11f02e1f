//! delivery::dns: parse_response never panics, accepts only replies to
//! the query it is given (id, question) and only records of the asked
//! type; a query that build_query makes is not taken for a reply, and
//! the same packet marked as a response is; every name to_ascii lets
//! through can be asked.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use mailqueue::delivery::dns::{build_query, parse_response, to_ascii, Record, RecordType};

const NAMES: [&str; 4] = ["d.test", "www.d.test.", "xn--bcher-kva.example", "a"];
const TYPES: [RecordType; 3] = [RecordType::Mx, RecordType::A, RecordType::Aaaa];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, packet)) = data.split_first() else {
        return;
    };
    let qtype = TYPES[usize::from(sel % 3)];
    let name = NAMES[usize::from(sel / 3) % NAMES.len()];
    // The packet's own id, so that the fuzzer gets past the id check.
    let id = match packet {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    };

    if let Ok(r) = parse_response(packet, id, name, qtype) {
        // 12 bits: with EDNS the OPT record extends the header's 4.
        assert!(r.rcode <= 0xFFF, "rcode {}", r.rcode);
        for record in &r.records {
            match (record, qtype) {
                (Record::Mx(_, host), RecordType::Mx) => assert!(!host.ends_with('.'), "{host:?}"),
                (Record::Ip(IpAddr::V4(_)), RecordType::A) => {}
                (Record::Ip(IpAddr::V6(_)), RecordType::Aaaa) => {}
                _ => panic!("{record:?} in a reply to {qtype:?}"),
            }
        }
        if r.records.is_empty() {
            assert_eq!(r.ttl, 0);
        }
        assert!(parse_response(packet, id.wrapping_add(1), name, qtype).is_err());
        let other = TYPES[usize::from(sel % 3 + 1) % 3];
        assert!(parse_response(packet, id, name, other).is_err());
    }

    // The rest as a name to ask about.
    if sel & 0x80 == 0 {
        return;
    }
    let Ok(qname) = std::str::from_utf8(packet) else {
        return;
    };
    if build_query(id, qname, qtype).is_ok() {
        check_query(id, qname, qtype);
    }
    // Every name the resolver asks about is one a query can carry.
    if let Ok(ascii) = to_ascii(qname) {
        assert!(ascii.is_ascii() && !ascii.ends_with('.'), "{ascii:?}");
        check_query(id, &ascii, qtype);
    }
});

fn check_query(id: u16, qname: &str, qtype: RecordType) {
    let query = build_query(id, qname, qtype).unwrap_or_else(|e| panic!("{qname:?}: {e}"));
    assert!(query.len() >= 12 + 4 + 1);
    assert_eq!(query[..2], id.to_be_bytes());
    assert!(
        parse_response(&query, id, qname, qtype).is_err(),
        "{qname:?}"
    );
    let mut reply = query.clone();
    reply[2] |= 0x80;
    let r = parse_response(&reply, id, qname, qtype).unwrap_or_else(|e| panic!("{qname:?}: {e}"));
    assert!(r.records.is_empty() && r.rcode == 0 && !r.truncated);
}
