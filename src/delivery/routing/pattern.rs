//! What a route matches: recipient domains and senders, written as an
//! operator writes them in `[[route]]` (`example.net`, `.example.net`,
//! `*`, `billing@example.org`, `<>`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::address::{Address, ReversePath};
use crate::delivery::dns;

/// A pattern that can match no address, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} {why}")]
pub struct BadPattern {
    /// The pattern as it was written.
    pub text: String,
    /// Why it can never match.
    pub why: &'static str,
}

/// A recipient domain pattern: `example.net` (that domain), `.example.net`
/// (its subdomains, not itself: list both for both, as Postfix's
/// `transport(5)` does), or `*` (every domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainPattern {
    /// Every domain, address literals too.
    Any,
    /// One domain, as an A-label.
    Exact(String),
    /// Every subdomain of a domain (an A-label), not the domain itself.
    Subdomains(String),
}

/// A sender pattern: an address (`billing@example.org`), a domain
/// (`example.org`), subdomains (`.example.org`), or `<>` (the null sender
/// of notices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderPattern {
    /// The null reverse-path `<>`.
    Null,
    /// One address; the domain compared as an A-label, the local part
    /// without regard to case (as Postfix's lookup tables do).
    Address {
        /// The local part, lower-cased.
        local: String,
        /// The domain, as an A-label.
        domain: String,
    },
    /// A sender domain pattern: [`DomainPattern::Exact`] or
    /// [`DomainPattern::Subdomains`].
    Domain(DomainPattern),
}

/// A domain as routes compare it: its A-label, lower-cased; an address
/// literal lower-cased as it is.
pub fn normalize_domain(domain: &str) -> String {
    if domain.starts_with('[') {
        return domain.to_ascii_lowercase();
    }
    dns::to_ascii(domain).unwrap_or_else(|_| domain.to_ascii_lowercase())
}

/// A domain name a pattern may hold, as an A-label.
fn pattern_domain(text: &str, whole: &str) -> Result<String, BadPattern> {
    let bad = |why| BadPattern {
        text: whole.to_string(),
        why,
    };
    if text.contains('*') {
        return Err(bad(
            "cannot match: \"*\" stands alone; write \".example.net\" for the subdomains",
        ));
    }
    if text.contains('@') {
        return Err(bad("cannot match a domain: it is an address"));
    }
    if text.starts_with('[') {
        return Err(bad(
            "cannot match: address literals are matched by \"*\" only",
        ));
    }
    dns::to_ascii(text).map_err(|_| bad("cannot match: it is not a domain name"))
}

impl FromStr for DomainPattern {
    type Err = BadPattern;

    fn from_str(text: &str) -> Result<Self, BadPattern> {
        if text == "*" {
            return Ok(DomainPattern::Any);
        }
        if text.trim() != text || text.is_empty() {
            return Err(BadPattern {
                text: text.to_string(),
                why: "cannot match: empty, or blanks around it",
            });
        }
        match text.strip_prefix('.') {
            Some(parent) => Ok(DomainPattern::Subdomains(pattern_domain(parent, text)?)),
            None => Ok(DomainPattern::Exact(pattern_domain(text, text)?)),
        }
    }
}

impl DomainPattern {
    /// Whether `domain` (normalised by [`normalize_domain`]) matches.
    pub fn matches(&self, domain: &str) -> bool {
        match self {
            DomainPattern::Any => true,
            DomainPattern::Exact(d) => d == domain,
            DomainPattern::Subdomains(d) => domain
                .strip_suffix(d.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl FromStr for SenderPattern {
    type Err = BadPattern;

    fn from_str(text: &str) -> Result<Self, BadPattern> {
        if text == "<>" {
            return Ok(SenderPattern::Null);
        }
        if text == "*" {
            return Err(BadPattern {
                text: text.into(),
                why: "is every sender: leave senders out instead",
            });
        }
        if text.contains('@') {
            let a = Address::parse(text).map_err(|_| BadPattern {
                text: text.into(),
                why: "cannot match: it is not a mail address",
            })?;
            return Ok(SenderPattern::Address {
                local: a.local_part().to_lowercase(),
                domain: normalize_domain(a.domain()),
            });
        }
        text.parse().map(SenderPattern::Domain)
    }
}

impl SenderPattern {
    /// Whether the reverse-path matches.
    pub fn matches(&self, sender: &ReversePath) -> bool {
        match (self, sender) {
            (SenderPattern::Null, None) => true,
            (SenderPattern::Address { local, domain }, Some(a)) => {
                a.local_part().to_lowercase() == *local && normalize_domain(a.domain()) == *domain
            }
            (SenderPattern::Domain(d), Some(a)) => d.matches(&normalize_domain(a.domain())),
            _ => false,
        }
    }
}

/// Whether a route with these patterns takes mail from `sender` to
/// `rcpt`: its domain matches one of `domains`, and `sender` one of
/// `senders` (any sender when there are none).
pub fn route_matches(
    domains: &[DomainPattern],
    senders: &[SenderPattern],
    sender: &ReversePath,
    rcpt: &Address,
) -> bool {
    let sender_ok = senders.is_empty() || senders.iter().any(|s| s.matches(sender));
    // A catch-all needs no look at the domain (IDNA costs on every attempt).
    if !sender_ok || domains.contains(&DomainPattern::Any) {
        return sender_ok;
    }
    let domain = normalize_domain(rcpt.domain());
    domains.iter().any(|d| d.matches(&domain))
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Any => f.write_str("*"),
            DomainPattern::Exact(d) => f.write_str(d),
            DomainPattern::Subdomains(d) => write!(f, ".{d}"),
        }
    }
}

impl fmt::Display for SenderPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SenderPattern::Null => f.write_str("<>"),
            SenderPattern::Address { local, domain } => write!(f, "{local}@{domain}"),
            SenderPattern::Domain(d) => d.fmt(f),
        }
    }
}

impl<'de> Deserialize<'de> for DomainPattern {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        String::deserialize(de)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for SenderPattern {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        String::deserialize(de)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(s: &str) -> ReversePath {
        (s != "<>").then(|| s.parse().unwrap())
    }

    #[test]
    fn domains_match_exactly_by_subdomain_or_all() {
        let exact: DomainPattern = "Example.NET".parse().unwrap();
        let subs: DomainPattern = ".example.net".parse().unwrap();
        assert!(exact.matches("example.net"));
        assert!(!exact.matches("mx.example.net"));
        assert!(subs.matches("mx.example.net"));
        assert!(subs.matches("a.b.example.net"));
        assert!(!subs.matches("example.net"));
        assert!(!subs.matches("badexample.net"));
        assert!(DomainPattern::Any.matches("[127.0.0.1]"));
        // IDN: the pattern and the recipient meet as A-labels.
        let idn: DomainPattern = "bücher.example".parse().unwrap();
        assert!(idn.matches(&normalize_domain("BÜCHER.example")));
    }

    #[test]
    fn patterns_that_cannot_match_are_refused_with_a_reason() {
        for bad in [
            "",
            " example.net",
            "*.example.net",
            "user@example.net",
            "exa mple.net",
            "[127.0.0.1]",
            ".",
        ] {
            let e = bad.parse::<DomainPattern>().expect_err(bad);
            assert!(e.to_string().contains("match"), "{bad}: {e}");
        }
        assert!("*".parse::<SenderPattern>().is_err());
        assert!("a b@example.org".parse::<SenderPattern>().is_err());
    }

    #[test]
    fn senders_match_by_address_domain_or_null() {
        let addr: SenderPattern = "Billing@Example.org".parse().unwrap();
        assert!(addr.matches(&sender("billing@example.org")));
        assert!(!addr.matches(&sender("sales@example.org")));
        assert!(!addr.matches(&sender("<>")));
        let dom: SenderPattern = "example.org".parse().unwrap();
        assert!(dom.matches(&sender("anyone@EXAMPLE.org")));
        assert!(!dom.matches(&sender("anyone@sub.example.org")));
        let null: SenderPattern = "<>".parse().unwrap();
        assert!(null.matches(&sender("<>")));
        assert!(!null.matches(&sender("a@example.org")));
    }
}
