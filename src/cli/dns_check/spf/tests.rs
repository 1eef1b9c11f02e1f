use std::collections::HashMap;
use std::net::IpAddr;

use mailqueue::delivery::dns::{DnsError, Record, RecordType};

use super::{check_host, Query, SpfResult, Verdict};

/// A zone as a table: names with no entry at all do not exist; a name
/// with entries of other types answers no records.
#[derive(Default)]
struct Zone(HashMap<(String, RecordType), Result<Vec<Record>, DnsError>>);

impl Zone {
    fn txt(mut self, name: &str, text: &str) -> Zone {
        self.add(name, RecordType::Txt, Record::Txt(text.into()));
        self
    }
    fn ip(mut self, name: &str, ip: &str) -> Zone {
        let ip: IpAddr = ip.parse().unwrap();
        let t = if ip.is_ipv4() {
            RecordType::A
        } else {
            RecordType::Aaaa
        };
        self.add(name, t, Record::Ip(ip));
        self
    }
    fn mx(mut self, name: &str, host: &str) -> Zone {
        self.add(name, RecordType::Mx, Record::Mx(10, host.into()));
        self
    }
    fn ptr(mut self, name: &str, target: &str) -> Zone {
        self.add(name, RecordType::Ptr, Record::Name(target.into()));
        self
    }
    fn failing(mut self, name: &str, t: RecordType) -> Zone {
        self.0.insert(
            (name.into(), t),
            Err(DnsError::Failed {
                name: name.into(),
                why: "timed out".into(),
            }),
        );
        self
    }
    fn add(&mut self, name: &str, t: RecordType, r: Record) {
        if let Ok(v) = self.0.entry((name.into(), t)).or_insert(Ok(Vec::new())) {
            v.push(r);
        }
    }
    fn lookup(&self, name: &str, t: RecordType) -> Result<Vec<Record>, DnsError> {
        if let Some(r) = self.0.get(&(name.to_string(), t)) {
            return r.clone();
        }
        if self.0.keys().any(|(n, _)| n == name) {
            Ok(Vec::new())
        } else {
            Err(DnsError::NxDomain(name.into()))
        }
    }
    fn check(&self, ip: &str, domain: &str) -> Verdict {
        let q = Query {
            ip: ip.parse().unwrap(),
            local: "postmaster",
            sender_domain: domain,
            helo: "mail.d.test",
        };
        check_host(&q, domain, &|n, t| self.lookup(n, t))
    }
    fn result(&self, ip: &str, domain: &str) -> SpfResult {
        self.check(ip, domain).result
    }
}

#[test]
fn addresses_and_all_with_each_qualifier() {
    for (all, want) in [
        ("-all", SpfResult::Fail),
        ("~all", SpfResult::SoftFail),
        ("?all", SpfResult::Neutral),
        ("+all", SpfResult::Pass),
    ] {
        let z = Zone::default().txt(
            "d.test",
            &format!("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 {all}"),
        );
        assert_eq!(z.result("192.0.2.77", "d.test"), SpfResult::Pass);
        assert_eq!(z.result("2001:db8::5", "d.test"), SpfResult::Pass);
        let v = z.check("198.51.100.1", "d.test");
        assert_eq!(v.result, want, "{all}");
        assert!(v.why.contains(all), "{v:?}");
    }
    let z = Zone::default().txt("d.test", "v=spf1 ip4:192.0.2.1");
    assert_eq!(z.result("192.0.2.2", "d.test"), SpfResult::Neutral);
    // ip4 never matches an IPv6 client, nor ip6 an IPv4 one.
    let z = Zone::default().txt("d.test", "v=spf1 ip4:0.0.0.0/0 ip6:::/0 -all");
    assert_eq!(z.result("192.0.2.2", "d.test"), SpfResult::Pass);
    assert_eq!(z.result("2001:db8::1", "d.test"), SpfResult::Pass);
    let z = Zone::default().txt("d.test", "v=spf1 ip4:0.0.0.0/0 -all");
    assert_eq!(z.result("2001:db8::1", "d.test"), SpfResult::Fail);
}

#[test]
fn no_record_several_records_and_other_txt_records() {
    let z = Zone::default().txt("d.test", "google-site-verification=abc");
    assert_eq!(z.result("192.0.2.1", "d.test"), SpfResult::None);
    assert_eq!(z.result("192.0.2.1", "nowhere.test"), SpfResult::None);
    let z = Zone::default()
        .txt("d.test", "v=spf1 ip4:192.0.2.1 -all")
        .txt("d.test", "v=spf1 -all");
    let v = z.check("192.0.2.1", "d.test");
    assert_eq!(v.result, SpfResult::PermError);
    assert!(v.why.contains("2 v=spf1 records"), "{v:?}");
    let z = Zone::default().txt("d.test", "v=spf1 ip4:192.0.2.300 -all");
    assert_eq!(z.result("192.0.2.1", "d.test"), SpfResult::PermError);
}

#[test]
fn include_chains_permit_what_their_ends_permit() {
    let z = Zone::default()
        .txt("d.test", "v=spf1 include:_a.d.test -all")
        .txt("_a.d.test", "v=spf1 include:_b.d.test ~all")
        .txt("_b.d.test", "v=spf1 ip4:192.0.2.0/24 -all");
    let v = z.check("192.0.2.9", "d.test");
    assert_eq!(v.result, SpfResult::Pass);
    assert!(v.why.contains("_b.d.test"), "{v:?}");
    assert_eq!(v.dns_terms, 2);
    // A fail inside an include is only "no match": the outer -all decides.
    let v = z.check("198.51.100.1", "d.test");
    assert_eq!(v.result, SpfResult::Fail);
    assert!(v.why.contains("\"-all\" in d.test"), "{v:?}");
    // An include of a domain without a record is an error, not a no.
    let z = Zone::default().txt("d.test", "v=spf1 include:gone.test -all");
    let v = z.check("192.0.2.1", "d.test");
    assert_eq!(v.result, SpfResult::PermError);
    assert!(v.why.contains("include:gone.test"), "{v:?}");
    // A DNS failure inside is a temperror for the whole.
    let z = Zone::default()
        .txt("d.test", "v=spf1 include:slow.test -all")
        .failing("slow.test", RecordType::Txt);
    assert_eq!(z.result("192.0.2.1", "d.test"), SpfResult::TempError);
}

#[test]
fn redirect_applies_only_when_nothing_matched() {
    let z = Zone::default()
        .txt("d.test", "v=spf1 redirect=_spf.d.test")
        .txt("_spf.d.test", "v=spf1 ip4:192.0.2.0/24 -all");
    assert_eq!(z.result("192.0.2.1", "d.test"), SpfResult::Pass);
    assert_eq!(z.result("198.51.100.1", "d.test"), SpfResult::Fail);
    let z = Zone::default()
        .txt("d.test", "v=spf1 ?all redirect=_spf.d.test")
        .txt("_spf.d.test", "v=spf1 ip4:192.0.2.0/24 -all");
    assert_eq!(z.result("192.0.2.1", "d.test"), SpfResult::Neutral);
    let z = Zone::default().txt("d.test", "v=spf1 redirect=gone.test");
    assert_eq!(z.result("192.0.2.1", "d.test"), SpfResult::PermError);
}

#[test]
fn a_and_mx_with_prefixes_and_other_domains() {
    let z = Zone::default()
        .txt("d.test", "v=spf1 a mx:other.test/24 a:v6.test//64 -all")
        .ip("d.test", "192.0.2.10")
        .mx("other.test", "mx1.other.test")
        .ip("mx1.other.test", "198.51.100.5")
        .ip("v6.test", "2001:db8:1:2::1");
    assert_eq!(z.result("192.0.2.10", "d.test"), SpfResult::Pass);
    assert_eq!(z.result("192.0.2.11", "d.test"), SpfResult::Fail);
    assert_eq!(z.result("198.51.100.200", "d.test"), SpfResult::Pass);
    assert_eq!(z.result("2001:db8:1:2::99", "d.test"), SpfResult::Pass);
    assert_eq!(z.result("2001:db8:1:3::1", "d.test"), SpfResult::Fail);
}

#[test]
fn ptr_and_exists_with_macros() {
    let z = Zone::default()
        .txt("d.test", "v=spf1 ptr -all")
        .ptr("1.2.0.192.in-addr.arpa", "mail.d.test")
        .ip("mail.d.test", "192.0.2.1")
        .ptr("2.2.0.192.in-addr.arpa", "liar.d.test")
        .ip("liar.d.test", "192.0.2.99");
    assert_eq!(z.result("192.0.2.1", "d.test"), SpfResult::Pass);
    // The name does not resolve back: not validated, no match.
    assert_eq!(z.result("192.0.2.2", "d.test"), SpfResult::Fail);
    let z = Zone::default()
        .txt("d.test", "v=spf1 exists:%{ir}.%{v}._spf.%{d} -all")
        .ip("1.2.0.192.in-addr._spf.d.test", "127.0.0.2");
    assert_eq!(z.result("192.0.2.1", "d.test"), SpfResult::Pass);
    assert_eq!(z.result("192.0.2.3", "d.test"), SpfResult::Fail);
}

#[test]
fn more_than_ten_dns_terms_is_a_permerror() {
    // A chain of includes, the address permitted at its eleventh step.
    let mut z = Zone::default();
    for i in 0..11 {
        z = z.txt(
            &format!("s{i}.test"),
            &format!("v=spf1 include:s{}.test -all", i + 1),
        );
    }
    z = z.txt("s11.test", "v=spf1 ip4:192.0.2.1 -all");
    let v = z.check("192.0.2.1", "s0.test");
    assert_eq!(v.result, SpfResult::PermError);
    assert!(v.why.contains("more than 10 DNS lookups"), "{v:?}");
    // Ten are allowed.
    assert_eq!(z.result("192.0.2.1", "s1.test"), SpfResult::Pass);
    // An include loop ends there too.
    let z = Zone::default().txt("loop.test", "v=spf1 include:loop.test -all");
    assert_eq!(z.result("192.0.2.1", "loop.test"), SpfResult::PermError);
    // ip4 and all cost nothing.
    let many = "ip4:198.51.100.1 ".repeat(30);
    let z = Zone::default().txt("d.test", &format!("v=spf1 {many}ip4:192.0.2.1 -all"));
    assert_eq!(z.result("192.0.2.1", "d.test"), SpfResult::Pass);
}

#[test]
fn lookups_that_find_nothing_are_limited_to_two() {
    let z = Zone::default().txt("d.test", "v=spf1 a:n1.test a:n2.test ip4:192.0.2.1 -all");
    assert_eq!(z.result("192.0.2.1", "d.test"), SpfResult::Pass);
    let z = Zone::default().txt(
        "d.test",
        "v=spf1 a:n1.test a:n2.test mx:n3.test ip4:192.0.2.1 -all",
    );
    let v = z.check("192.0.2.1", "d.test");
    assert_eq!(v.result, SpfResult::PermError);
    assert!(v.why.contains("n3.test"), "{v:?}");
}

#[test]
fn dns_failures_are_temperrors() {
    let z = Zone::default().failing("d.test", RecordType::Txt);
    assert_eq!(z.result("192.0.2.1", "d.test"), SpfResult::TempError);
    let z = Zone::default()
        .txt("d.test", "v=spf1 a:slow.test -all")
        .failing("slow.test", RecordType::A);
    assert_eq!(z.result("192.0.2.1", "d.test"), SpfResult::TempError);
}

#[test]
fn an_mx_with_more_than_ten_hosts_is_a_permerror() {
    let mut z = Zone::default().txt("d.test", "v=spf1 mx -all");
    for i in 0..11 {
        z = z.mx("d.test", &format!("mx{i}.d.test"));
    }
    assert_eq!(z.result("192.0.2.1", "d.test"), SpfResult::PermError);
}
