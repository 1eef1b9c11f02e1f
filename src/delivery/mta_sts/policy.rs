//! The two texts a domain publishes for MTA-STS (RFC 8461 §3): the
//! `_mta-sts` TXT record that announces a policy and names its version
//! (`v=STSv1; id=...`), and the policy itself (`version`, `mode`,
//! `max_age`, `mx`), with the matching of MX host names against its
//! patterns.

use std::fmt;
use std::time::Duration;

/// Longest `max_age` a policy may give: one year (RFC 8461 §3.2).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// What a policy asks of senders whose MX host or TLS fails it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to matching MX hosts over verified TLS.
    Enforce,
    /// Deliver as usual, but report (here: log) what would have failed.
    Testing,
    /// The domain has withdrawn its policy: deliver as usual.
    None,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        })
    }
}

/// One `mx` line: a host name, or `*.` and a domain (any one label in
/// place of the star), lower case without a final dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxPattern {
    wildcard: bool,
    domain: String,
}

impl MxPattern {
    fn parse(text: &str) -> Result<MxPattern, PolicyError> {
        let bad = || PolicyError::BadMx(text.to_string());
        let (wildcard, rest) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let domain = rest.strip_suffix('.').unwrap_or(rest).to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if domain.len() > 253 || !domain.split('.').all(label_ok) {
            return Err(bad());
        }
        Ok(MxPattern { wildcard, domain })
    }

    /// Whether the MX host `host` matches: exactly, or for `*.domain`
    /// with exactly one label before `domain` (RFC 8461 §4.1).
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        if !self.wildcard {
            return host.eq_ignore_ascii_case(&self.domain);
        }
        match host.split_once('.') {
            Some((first, rest)) => !first.is_empty() && rest.eq_ignore_ascii_case(&self.domain),
            None => false,
        }
    }
}

impl fmt::Display for MxPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.domain)
    }
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// What to do with an MX host or a TLS session that fails it.
    pub mode: Mode,
    /// The MX hosts mail may go to.
    pub mx: Vec<MxPattern>,
    /// How long the policy may be used after it was fetched.
    pub max_age: Duration,
}

/// Why a policy text is not a valid policy: the domain then counts as
/// having none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A line is not `key: value`.
    #[error("line {0:?} is not \"key: value\"")]
    BadLine(String),
    /// A field that must appear once appears again.
    #[error("{0} is given twice")]
    Twice(&'static str),
    /// A required field is absent.
    #[error("no {0} field")]
    Missing(&'static str),
    /// `version` is not `STSv1`.
    #[error("version {0:?} is not STSv1")]
    Version(String),
    /// `mode` is not enforce, testing or none.
    #[error("mode {0:?} is not enforce, testing or none")]
    Mode(String),
    /// `max_age` is not a number of seconds up to a year.
    #[error("max_age {0:?} is not a number of seconds up to 31557600")]
    MaxAge(String),
    /// An `mx` value is not a host name or `*.` and a domain.
    #[error("mx {0:?} is not a host name or *.domain")]
    BadMx(String),
    /// `enforce` or `testing` without any `mx`.
    #[error("mode {0} names no mx")]
    NoMx(Mode),
}

impl Policy {
    /// Parses a policy as served (RFC 8461 §3.2): one `key: value` per
    /// line (CRLF or LF), unknown keys ignored as the RFC requires.
    /// Strict otherwise: `version`, `mode` and `max_age` once each, an
    /// exact version, a known mode, `max_age` within a year, and at least
    /// one `mx` unless the mode is `none`.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let (mut version, mut mode, mut max_age) = (None, None, None);
        let mut mx = Vec::new();
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once(':')
                .ok_or_else(|| PolicyError::BadLine(line.to_string()))?;
            let value = value.trim_matches([' ', '\t']);
            let once = |slot: &mut Option<String>, name| match slot {
                Some(_) => Err(PolicyError::Twice(name)),
                None => {
                    *slot = Some(value.to_string());
                    Ok(())
                }
            };
            match key {
                "version" => once(&mut version, "version")?,
                "mode" => once(&mut mode, "mode")?,
                "max_age" => once(&mut max_age, "max_age")?,
                "mx" => mx.push(MxPattern::parse(value)?),
                k if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                }
                _ => return Err(PolicyError::BadLine(line.to_string())),
            }
        }
        let version = version.ok_or(PolicyError::Missing("version"))?;
        if version != "STSv1" {
            return Err(PolicyError::Version(version));
        }
        let mode = match mode.ok_or(PolicyError::Missing("mode"))?.as_str() {
            "enforce" => Mode::Enforce,
            "testing" => Mode::Testing,
            "none" => Mode::None,
            other => return Err(PolicyError::Mode(other.to_string())),
        };
        let max_age = max_age.ok_or(PolicyError::Missing("max_age"))?;
        let seconds = Some(&max_age)
            .filter(|s| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&s| s <= MAX_AGE_LIMIT)
            .ok_or(PolicyError::MaxAge(max_age.clone()))?;
        if mx.is_empty() && mode != Mode::None {
            return Err(PolicyError::NoMx(mode));
        }
        Ok(Policy {
            mode,
            mx,
            max_age: Duration::from_secs(seconds),
        })
    }

    /// Whether mail may go to the MX host `host` under this policy.
    pub fn allows(&self, host: &str) -> bool {
        self.mx.iter().any(|p| p.matches(host))
    }

    /// The patterns, comma-separated, for messages.
    pub fn mx_list(&self) -> String {
        let names: Vec<String> = self.mx.iter().map(|p| p.to_string()).collect();
        names.join(", ")
    }
}

/// Why the `_mta-sts` TXT records announce no usable policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxtError {
    /// More than one record starts with `v=STSv1` (RFC 8461 §3.1: then
    /// there is no policy).
    #[error("{0} TXT records start with v=STSv1")]
    Several(usize),
    /// The record is not `v=STSv1; id=...` with fields `key=value`.
    #[error("TXT record {0:?} is malformed")]
    Malformed(String),
}

/// The policy id of the `_mta-sts` TXT records of a domain: `Ok(None)`
/// when none of them is an MTA-STS record.
pub fn policy_id(records: &[String]) -> Result<Option<String>, TxtError> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.starts_with("v=STSv1;") || r.trim_end_matches([' ', '\t']) == "v=STSv1")
        .collect();
    let record = match sts.as_slice() {
        [] => return Ok(None),
        [one] => one,
        many => return Err(TxtError::Several(many.len())),
    };
    let malformed = || TxtError::Malformed(record.to_string());
    let mut id = None;
    for field in record.split(';').skip(1) {
        let field = field.trim_matches([' ', '\t']);
        if field.is_empty() {
            continue;
        }
        let (key, value) = field.split_once('=').ok_or_else(malformed)?;
        if key == "id" && id.is_none() {
            id = Some(value.to_string());
        }
    }
    let id = id.ok_or_else(malformed)?;
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(malformed());
    }
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\n\
                        mx: *.example.net\r\nmax_age: 604800\r\n";

    #[test]
    fn a_policy_as_the_rfc_shows_it() {
        let p = Policy::parse(GOOD).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, Duration::from_secs(604_800));
        assert_eq!(p.mx_list(), "mx1.example.com, *.example.net");
        // LF alone, extra spaces and unknown keys are taken.
        let p = Policy::parse(
            "version: STSv1\nmode:testing\nfuture_key: x\nmax_age:  86400  \nmx: MX.Example.org.\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Testing);
        assert!(p.allows("mx.example.org"));
        let p = Policy::parse("version: STSv1\nmode: none\nmax_age: 0\n").unwrap();
        assert_eq!(p.mode, Mode::None);
    }

    #[test]
    fn a_bad_policy_says_what_is_wrong() {
        let cases = [
            (
                "version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n",
                "version \"STSv2\"",
            ),
            ("mode: enforce\nmx: a.b\nmax_age: 1\n", "no version"),
            (
                "version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n",
                "mode \"strict\"",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 31557601\n",
                "max_age",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -1\n",
                "max_age",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 99999999999\n",
                "max_age",
            ),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "names no mx"),
            (
                "version: STSv1\nmode: enforce\nmx: a.*.b\nmax_age: 1\n",
                "mx \"a.*.b\"",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a b\nmax_age: 1\n",
                "mx \"a b\"",
            ),
            (
                "version: STSv1\nmode: enforce\nmode: none\nmx: a.b\nmax_age: 1\n",
                "mode is given twice",
            ),
            ("<html>not a policy</html>\n", "is not \"key: value\""),
        ];
        for (text, why) in cases {
            let e = Policy::parse(text).unwrap_err();
            assert!(e.to_string().contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_wildcard_stands_for_one_label() {
        let p = Policy::parse(
            "version: STSv1\nmode: enforce\nmx: *.mail.test\nmx: mx.other.test\nmax_age: 60\n",
        )
        .unwrap();
        assert!(p.allows("a.mail.test"));
        assert!(p.allows("A.MAIL.TEST."));
        assert!(!p.allows("mail.test"));
        assert!(!p.allows("a.b.mail.test"));
        assert!(!p.allows("amail.test"));
        assert!(p.allows("mx.other.test"));
        assert!(!p.allows("mx2.other.test"));
    }

    #[test]
    fn the_txt_record_names_the_policy_id() {
        let id = |rs: &[&str]| policy_id(&rs.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            id(&["v=STSv1; id=20160831085700Z;"]),
            Ok(Some("20160831085700Z".into()))
        );
        assert_eq!(
            id(&["v=spf1 -all", "v=STSv1;id=abc"]),
            Ok(Some("abc".into()))
        );
        assert_eq!(id(&["v=spf1 -all"]), Ok(None));
        assert_eq!(id(&[]), Ok(None));
        assert_eq!(
            id(&["v=STSv1; id=a", "v=STSv1; id=b"]),
            Err(TxtError::Several(2))
        );
        for bad in [
            "v=STSv1;",
            "v=STSv1; id=",
            "v=STSv1; id=a-b",
            "v=STSv1; id=a; junk",
            &format!("v=STSv1; id={}", "a".repeat(33)),
        ] {
            assert!(matches!(id(&[bad]), Err(TxtError::Malformed(_))), "{bad}");
        }
        // An extension field is fine.
        assert_eq!(id(&["v=STSv1; ext=1; id=x1"]), Ok(Some("x1".into())));
    }
}
