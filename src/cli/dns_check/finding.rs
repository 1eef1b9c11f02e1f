//! What one check found, and the report they make together: one line per
//! finding, a summary, and the exit code a script reads.

use std::fmt;

use crate::cli::exit;

/// How much a finding matters to a big provider deciding on our mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// As a provider wants it.
    Ok,
    /// Allowed, but likely to cost deliverability or to hide a mistake.
    Warning,
    /// A check that could not be made: DNS did not answer.
    Unknown,
    /// What Gmail or Yahoo refuse or spam-folder mail for.
    Problem,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Unknown => "unknown",
            Level::Problem => "PROBLEM",
        }
    }
}

/// Which check a finding belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The address mail leaves from.
    Outbound,
    /// PTR, forward confirmation, and the EHLO name.
    ReverseDns,
    /// The sender domains' SPF records.
    Spf,
    /// The sender domains' DKIM keys.
    Dkim,
    /// Where bounces to the sender domains go.
    Mx,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Check::Outbound => "outbound",
            Check::ReverseDns => "reverse DNS",
            Check::Spf => "SPF",
            Check::Dkim => "DKIM",
            Check::Mx => "MX",
        })
    }
}

/// One line of the report: what was found about what, and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub check: Check,
    /// What it is about (an address, a domain); empty for the whole check.
    pub subject: String,
    /// What was found, in one line.
    pub text: String,
    /// What to change; empty when nothing needs to.
    pub fix: String,
}

impl Finding {
    pub fn ok(check: Check, subject: impl Into<String>, text: impl Into<String>) -> Finding {
        Finding {
            level: Level::Ok,
            check,
            subject: subject.into(),
            text: text.into(),
            fix: String::new(),
        }
    }

    pub fn warning(
        check: Check,
        subject: impl Into<String>,
        text: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            level: Level::Warning,
            ..Finding::problem(check, subject, text, fix)
        }
    }

    pub fn problem(
        check: Check,
        subject: impl Into<String>,
        text: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            level: Level::Problem,
            check,
            subject: subject.into(),
            text: text.into(),
            fix: fix.into(),
        }
    }

    /// A check DNS did not let us make; `why` says what failed.
    pub fn unknown(check: Check, subject: impl Into<String>, why: impl fmt::Display) -> Finding {
        Finding {
            level: Level::Unknown,
            check,
            subject: subject.into(),
            text: format!("could not check: {why}"),
            fix: "run the check again; if it persists, see whether [delivery] dns_servers \
                  (or /etc/resolv.conf) answer"
                .into(),
        }
    }
}

/// `PROBLEM  SPF example.org: does not permit 192.0.2.1; fix: ...`
impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<8} {}", self.level.label(), self.check)?;
        if !self.subject.is_empty() {
            write!(f, " {}", self.subject)?;
        }
        write!(f, ": {}", self.text)?;
        if !self.fix.is_empty() {
            write!(f, "; fix: {}", self.fix)?;
        }
        Ok(())
    }
}

/// Exit code: some finding is a problem.
pub const EXIT_PROBLEM: u8 = exit::FAILED;
/// Exit code: no problem found, but some check could not be made.
pub const EXIT_UNKNOWN: u8 = exit::TEMPFAIL;

/// The closing line: how many of each level.
pub fn summary(findings: &[Finding]) -> String {
    let count = |level| findings.iter().filter(|f| f.level == level).count();
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "DNS check: {}, {}, {}, {}",
        plural(count(Level::Problem), "problem", "problems"),
        plural(count(Level::Unknown), "check not made", "checks not made"),
        plural(count(Level::Warning), "warning", "warnings"),
        count(Level::Ok).to_string() + " ok",
    )
}

/// 0 when nothing is a problem (warnings allowed), [`EXIT_PROBLEM`] when
/// something is, else [`EXIT_UNKNOWN`] when a check could not be made.
pub fn exit_code(findings: &[Finding]) -> u8 {
    match findings.iter().map(|f| f.level).max() {
        Some(Level::Problem) => EXIT_PROBLEM,
        Some(Level::Unknown) => EXIT_UNKNOWN,
        _ => exit::OK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_outweighs_a_check_not_made_and_warnings_pass() {
        let ok = Finding::ok(Check::Mx, "d.test", "mx.d.test");
        let warn = Finding::warning(Check::Dkim, "", "no keys", "keygen");
        let unknown = Finding::unknown(Check::Spf, "d.test", "timeout");
        let problem = Finding::problem(Check::Spf, "d.test", "no record", "publish one");
        assert_eq!(exit_code(&[ok.clone(), warn.clone()]), 0);
        assert_eq!(exit_code(&[ok.clone(), unknown.clone()]), EXIT_UNKNOWN);
        assert_eq!(exit_code(&[problem.clone(), unknown]), EXIT_PROBLEM);
        assert_eq!(
            problem.to_string(),
            "PROBLEM  SPF d.test: no record; fix: publish one"
        );
        assert_eq!(warn.to_string(), "warning  DKIM: no keys; fix: keygen");
        assert_eq!(
            summary(&[ok, warn, problem]),
            "DNS check: 1 problem, 0 checks not made, 1 warning, 1 ok"
        );
    }
}
