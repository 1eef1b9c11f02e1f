//! Mailbox addresses as they appear in SMTP paths (RFC 5321 §4.1.2), with
//! the UTF-8 extension of RFC 6531.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a mailbox was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// No `@`, or nothing after it.
    #[error("address {0:?} has no @domain")]
    NoDomain(String),
    /// The part before the `@` is not a dot-atom or a quoted string.
    #[error("address {0:?} has an invalid local part")]
    BadLocalPart(String),
    /// The part after the `@` is not a host name or an address literal.
    #[error("address {0:?} has an invalid domain")]
    BadDomain(String),
    /// Longer than RFC 5321 allows (64 octets before the `@`, 255 after).
    #[error("address {0:?} is too long")]
    TooLong(String),
}

/// A validated mailbox `local-part@domain`, without angle brackets.
///
/// ```
/// use mailqueue::Address;
/// let a: Address = "user@example.org".parse().unwrap();
/// assert_eq!(a.domain(), "example.org");
/// assert_eq!(a.local_part(), "user");
/// assert!("no-domain".parse::<Address>().is_err());
/// assert!("a@[127.0.0.1]".parse::<Address>().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address {
    text: String,
    at: usize,
}

/// The envelope sender: `None` is the null reverse-path `<>` used by
/// bounces, which must never be answered with another bounce.
pub type ReversePath = Option<Address>;

const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_PATH: usize = 254;

impl Address {
    /// Parses and validates a mailbox.
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        if text.len() > MAX_PATH {
            return Err(AddressError::TooLong(text.into()));
        }
        let at = text
            .rfind('@')
            .ok_or_else(|| AddressError::NoDomain(text.into()))?;
        let (local, domain) = (&text[..at], &text[at + 1..]);
        if local.is_empty() || local.len() > MAX_LOCAL || !valid_local_part(local) {
            return Err(AddressError::BadLocalPart(text.into()));
        }
        if domain.is_empty() || domain.len() > MAX_DOMAIN || !valid_domain(domain) {
            return Err(AddressError::BadDomain(text.into()));
        }
        Ok(Address {
            text: text.to_string(),
            at,
        })
    }

    /// The whole address, `local@domain`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// What comes before the last `@`.
    pub fn local_part(&self) -> &str {
        &self.text[..self.at]
    }

    /// What comes after the last `@`.
    pub fn domain(&self) -> &str {
        &self.text[self.at + 1..]
    }

    /// True when delivering to this address needs SMTPUTF8.
    pub fn needs_smtputf8(&self) -> bool {
        !self.text.is_ascii()
    }
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        // UTF-8 as RFC 6531 allows, but not C1 controls (U+0085 is a line
        // break to some readers) nor white space, as in the domain and the
        // quoted form: addresses go into command lines, headers and logs.
        || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
}

fn valid_local_part(local: &str) -> bool {
    if let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        let mut escaped = false;
        for c in inner.chars() {
            if escaped {
                if !(' '..='~').contains(&c) {
                    return false;
                }
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' || (c.is_ascii() && !(' '..='~').contains(&c)) || c.is_control() {
                return false;
            }
        }
        return !escaped;
    }
    local
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

fn valid_domain(domain: &str) -> bool {
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return match lit.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => lit.parse::<std::net::Ipv4Addr>().is_ok(),
        };
    }
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || c == '-'
                    || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
            })
    })
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::parse(s)
    }
}

impl TryFrom<String> for Address {
    type Error = AddressError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Address::parse(&s)
    }
}

impl From<Address> for String {
    fn from(a: Address) -> String {
        a.text
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_unusual_mailboxes() {
        for ok in [
            "a@b",
            "first.last@example.org",
            "x+tag@sub.example.org",
            "\"quoted local\"@example.org",
            "\"a\\\"b\"@example.org",
            "user@[IPv6:::1]",
            "user@[192.0.2.1]",
            "δοκιμή@παράδειγμα.δοκιμή",
            "user@example.org.",
        ] {
            assert!(Address::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_malformed_mailboxes() {
        for bad in [
            "",
            "@",
            "a@",
            "@b",
            "plain",
            ".a@b",
            "a.@b",
            "a..b@c",
            "a b@c",
            "a@-b.c",
            "a@b..c",
            "a@[300.1.1.1]",
            "\"unterminated@b",
            "a@b c",
            "a\r\n@b",
            // Found by fuzzing: a C1 control in an unquoted local part.
            "o'brien!use\u{85}@x-y.exr",
            "a\u{2028}b@c",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}@example.org", "a".repeat(65));
        assert!(matches!(
            Address::parse(&long),
            Err(AddressError::BadLocalPart(_))
        ));
    }

    #[test]
    fn smtputf8_need_is_detected() {
        assert!(!Address::parse("a@b").unwrap().needs_smtputf8());
        assert!(Address::parse("ü@b").unwrap().needs_smtputf8());
    }
}
