//! An SPF record's text as terms (RFC 7208 §4.6.1, §5, §6): mechanisms
//! with their qualifiers, and the `redirect` modifier. Domain-specs are
//! kept as written: their macros are expanded when evaluated.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// What a matching mechanism makes the result (RFC 7208 §4.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier {
    /// `+` (or none).
    Pass,
    /// `-`.
    Fail,
    /// `~`.
    SoftFail,
    /// `?`.
    Neutral,
}

/// One mechanism (RFC 7208 §5). Prefix lengths are those of `/n` and
/// `//n`, full length when absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    All,
    Include(String),
    A {
        domain: Option<String>,
        v4: u8,
        v6: u8,
    },
    Mx {
        domain: Option<String>,
        v4: u8,
        v6: u8,
    },
    Ptr(Option<String>),
    Ip4(Ipv4Addr, u8),
    Ip6(Ipv6Addr, u8),
    Exists(String),
}

/// A mechanism with its qualifier, and the term as written, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub qualifier: Qualifier,
    pub mechanism: Mechanism,
    pub text: String,
}

/// A parsed `v=spf1` record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpfRecord {
    pub directives: Vec<Directive>,
    /// `redirect=` domain-spec.
    pub redirect: Option<String>,
}

/// Why a record's text is not valid SPF: a permerror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Syntax(pub String);

impl fmt::Display for Syntax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a TXT record is an SPF record: `v=spf1` alone or followed by
/// a space (RFC 7208 §4.5), in any case.
pub fn is_spf(txt: &str) -> bool {
    let b = txt.as_bytes();
    b.len() >= 6 && b[..6].eq_ignore_ascii_case(b"v=spf1") && (b.len() == 6 || b[6] == b' ')
}

/// Parses a record [`is_spf`] accepted.
pub fn parse(txt: &str) -> Result<SpfRecord, Syntax> {
    let mut record = SpfRecord::default();
    let mut exp_seen = false;
    for term in txt.split(' ').skip(1).filter(|t| !t.is_empty()) {
        if let Some((name, value)) = modifier(term) {
            match name.to_ascii_lowercase().as_str() {
                "redirect" if record.redirect.is_some() => {
                    return Err(Syntax("two redirect= modifiers".into()))
                }
                "redirect" => record.redirect = Some(domain_spec(term, value)?.to_string()),
                "exp" if exp_seen => return Err(Syntax("two exp= modifiers".into())),
                "exp" => exp_seen = true,
                // Unknown modifiers are ignored (RFC 7208 §6).
                _ => {}
            }
            continue;
        }
        record.directives.push(directive(term)?);
    }
    Ok(record)
}

/// `name=value` when the term is a modifier: a name (ALPHA then ALPHA,
/// DIGIT, `-`, `_`, `.`) directly followed by `=`.
fn modifier(term: &str) -> Option<(&str, &str)> {
    let (name, value) = term.split_once('=')?;
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    (first_ok && rest_ok).then_some((name, value))
}

fn directive(term: &str) -> Result<Directive, Syntax> {
    let (qualifier, rest) = match term.as_bytes()[0] {
        b'+' => (Qualifier::Pass, &term[1..]),
        b'-' => (Qualifier::Fail, &term[1..]),
        b'~' => (Qualifier::SoftFail, &term[1..]),
        b'?' => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    let split = rest.find([':', '/']).unwrap_or(rest.len());
    let (name, arg) = rest.split_at(split);
    let bad = |why: &str| Syntax(format!("\"{term}\": {why}"));
    let colon_arg = || arg.strip_prefix(':').filter(|a| !a.is_empty());
    let mechanism = match name.to_ascii_lowercase().as_str() {
        "all" if arg.is_empty() => Mechanism::All,
        "include" => Mechanism::Include(
            domain_spec(term, colon_arg().ok_or_else(|| bad("names no domain"))?)?.into(),
        ),
        "exists" => Mechanism::Exists(
            domain_spec(term, colon_arg().ok_or_else(|| bad("names no domain"))?)?.into(),
        ),
        "a" | "mx" => {
            let (domain, v4, v6) = domain_and_prefixes(term, arg)?;
            if name.eq_ignore_ascii_case("a") {
                Mechanism::A { domain, v4, v6 }
            } else {
                Mechanism::Mx { domain, v4, v6 }
            }
        }
        "ptr" if arg.is_empty() => Mechanism::Ptr(None),
        "ptr" => Mechanism::Ptr(Some(
            domain_spec(term, colon_arg().ok_or_else(|| bad("names no domain"))?)?.into(),
        )),
        "ip4" => {
            let (addr, len) = address_and_prefix(colon_arg().ok_or_else(|| bad("no address"))?);
            let addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
            Mechanism::Ip4(addr, prefix(term, len, 32)?)
        }
        "ip6" => {
            let (addr, len) = address_and_prefix(colon_arg().ok_or_else(|| bad("no address"))?);
            let addr = addr.parse().map_err(|_| bad("not an IPv6 address"))?;
            Mechanism::Ip6(addr, prefix(term, len, 128)?)
        }
        _ => return Err(bad("unknown mechanism")),
    };
    Ok(Directive {
        qualifier,
        mechanism,
        text: term.to_string(),
    })
}

fn address_and_prefix(arg: &str) -> (&str, Option<&str>) {
    match arg.split_once('/') {
        Some((a, len)) => (a, Some(len)),
        None => (arg, None),
    }
}

fn prefix(term: &str, len: Option<&str>, max: u8) -> Result<u8, Syntax> {
    let Some(len) = len else { return Ok(max) };
    // No leading zeros, no sign (RFC 7208 §5.6: 1*DIGIT without them).
    let ok = !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) && !len.starts_with('0')
        || len == "0";
    match len.parse::<u8>() {
        Ok(n) if ok && n <= max => Ok(n),
        _ => Err(Syntax(format!(
            "\"{term}\": prefix length /{len} is not 0 to {max}"
        ))),
    }
}

/// `[:domain][/v4][//v6]` of `a` and `mx`.
fn domain_and_prefixes(term: &str, arg: &str) -> Result<(Option<String>, u8, u8), Syntax> {
    let (domain, lens) = match arg.strip_prefix(':') {
        Some(rest) => match rest.find('/') {
            Some(i) => (Some(&rest[..i]), &rest[i..]),
            None => (Some(rest), ""),
        },
        None => (None, arg),
    };
    let domain = match domain {
        Some(d) => Some(domain_spec(term, d)?.to_string()),
        None => None,
    };
    let (v4, v6) = match lens.split_once("//") {
        Some((v4, v6)) => (v4, Some(v6)),
        None => (lens, None),
    };
    let v4 = match v4.strip_prefix('/') {
        Some(len) => prefix(term, Some(len), 32)?,
        None if v4.is_empty() => 32,
        None => return Err(Syntax(format!("\"{term}\": cannot read {v4:?}"))),
    };
    let v6 = prefix(term, v6, 128)?;
    Ok((domain, v4, v6))
}

/// A domain-spec as written; only emptiness is checked here, the rest
/// after macro expansion.
fn domain_spec<'a>(term: &str, spec: &'a str) -> Result<&'a str, Syntax> {
    if spec.is_empty() {
        return Err(Syntax(format!("\"{term}\": empty domain")));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanisms_and_modifiers_are_read() {
        let r = parse("v=spf1 ip4:192.0.2.0/24 -ip6:2001:db8::/32 a mx:m.test/24//64 ~include:_spf.test ?exists:%{i}.x.test ptr redirect=r.test exp=e.test foo=bar -all").unwrap();
        let m: Vec<_> = r.directives.iter().map(|d| d.mechanism.clone()).collect();
        assert_eq!(
            m,
            vec![
                Mechanism::Ip4("192.0.2.0".parse().unwrap(), 24),
                Mechanism::Ip6("2001:db8::".parse().unwrap(), 32),
                Mechanism::A {
                    domain: None,
                    v4: 32,
                    v6: 128
                },
                Mechanism::Mx {
                    domain: Some("m.test".into()),
                    v4: 24,
                    v6: 64
                },
                Mechanism::Include("_spf.test".into()),
                Mechanism::Exists("%{i}.x.test".into()),
                Mechanism::Ptr(None),
                Mechanism::All,
            ]
        );
        let q: Vec<_> = r.directives.iter().map(|d| d.qualifier).collect();
        assert_eq!(q[1], Qualifier::Fail);
        assert_eq!(q[4], Qualifier::SoftFail);
        assert_eq!(q[5], Qualifier::Neutral);
        assert_eq!(q[0], Qualifier::Pass);
        assert_eq!(r.redirect.as_deref(), Some("r.test"));
        assert_eq!(
            parse("v=spf1 a//64").unwrap().directives[0].mechanism,
            Mechanism::A {
                domain: None,
                v4: 32,
                v6: 64
            }
        );
    }

    #[test]
    fn bad_records_are_refused() {
        for bad in [
            "v=spf1 ip4:192.0.2.0/33",
            "v=spf1 ip4:2001:db8::1",
            "v=spf1 ip6:192.0.2.1",
            "v=spf1 include",
            "v=spf1 include:",
            "v=spf1 frobnicate",
            "v=spf1 all:x",
            "v=spf1 a/024",
            "v=spf1 redirect=a.test redirect=b.test",
            "v=spf1 exp=a.test exp=b.test",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_v_spf1_records_are_spf() {
        assert!(is_spf("v=spf1"));
        assert!(is_spf("V=SPF1 -all"));
        assert!(!is_spf("v=spf10 -all"));
        assert!(!is_spf("v=DKIM1; p=x"));
        assert!(!is_spf(" v=spf1"));
    }
}
