//! `mailqueue check --dns`: what a big provider (Gmail, Yahoo) would
//! object to in this host's DNS before it sends a single message: the
//! outbound address, its reverse DNS, the sender domains' SPF, DKIM keys
//! and MX. Every check looks things up; none sends mail.
//!
//! Each check returns [`Finding`]s; the report prints one line per
//! finding, then a summary, and exits 0 when nothing is a problem, 1 when
//! something is, 75 when DNS did not answer a check and nothing else is a
//! problem.

mod dkim;
mod finding;
mod outbound;
mod reverse;
mod senders;
mod spf;

use std::net::IpAddr;

use mailqueue::delivery::dns::{DnsError, Record, RecordType, Resolver};
use mailqueue::delivery::outbound::IpVersion;
use mailqueue::Config;

pub use finding::{exit_code, summary, Finding, EXIT_UNKNOWN};

/// A DNS lookup: the resolver's in the command, a table in tests.
pub type Lookup<'a> = &'a dyn Fn(&str, RecordType) -> Result<Vec<Record>, DnsError>;

/// What the command line adds to the configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--address`: the addresses mail leaves from, as the world sees
    /// them, instead of `source_address` or the kernel's choice.
    pub addresses: Vec<IpAddr>,
    /// `--domain`: more sender domains.
    pub domains: Vec<String>,
}

/// Runs every check against the configured resolver, prints the report
/// and returns the exit code.
pub fn run(config: &Config, options: &Options) -> u8 {
    let d = &config.delivery;
    let resolver = match Resolver::new(&d.dns_servers, d.dns_timeout) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mailqueue: DNS check: {e}");
            return EXIT_UNKNOWN;
        }
    };
    let lookup = |name: &str, qtype| resolver.lookup(name, qtype);
    let findings = report(config, options, &lookup, &outbound::kernel_address);
    for f in &findings {
        println!("{f}");
    }
    println!("{}", summary(&findings));
    exit_code(&findings)
}

/// The findings, in the order of the report: outbound addresses, their
/// reverse DNS, SPF of each sender domain and of the EHLO names, MX of
/// each sender domain, then DKIM.
fn report(
    config: &Config,
    options: &Options,
    dns: Lookup<'_>,
    kernel: &dyn Fn(IpVersion) -> Option<IpAddr>,
) -> Vec<Finding> {
    let (outbound, mut findings) = outbound::outbound(config, &options.addresses, kernel);
    for o in outbound.iter().filter(|o| !o.hidden()) {
        findings.push(reverse::reverse_dns(o, dns));
    }
    let keys = dkim::configured_keys(config);
    let domains = senders::sender_domains(config, &keys, &options.domains);
    for domain in &domains {
        findings.extend(senders::spf(domain, &outbound, dns));
    }
    findings.extend(senders::helo_spf(&outbound, &domains, dns));
    for domain in &domains {
        findings.push(senders::mx(domain, dns));
    }
    // With the key files readable, each record is compared with its key;
    // else (another user's files) only its presence is checked.
    match config.dkim_signer() {
        Ok(signer) if !signer.is_empty() => {
            findings.extend(signer.keys().map(|key| dkim::matching(key, dns)))
        }
        _ => findings.extend(dkim::dkim(&keys, |key| dkim::published(key, dns))),
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::finding::{Check, Level};
    use super::*;

    #[test]
    fn an_ehlo_name_that_is_a_sender_domain_is_checked_once_as_a_sender() {
        // The default notice sender is MAILER-DAEMON@<hostname>.
        let config = Config::from_toml("hostname = \"mail.d.test\"\n").unwrap();
        let lookup = |name: &str, t: RecordType| -> Result<Vec<Record>, DnsError> {
            Ok(match (name, t) {
                ("mail.d.test", RecordType::Txt) => vec![Record::Txt("v=spf1 a -all".into())],
                ("mail.d.test", RecordType::A) => vec![Record::Ip("192.0.2.1".parse().unwrap())],
                ("1.2.0.192.in-addr.arpa", RecordType::Ptr) => {
                    vec![Record::Name("mail.d.test".into())]
                }
                _ => Vec::new(),
            })
        };
        let options = Options {
            addresses: vec!["192.0.2.1".parse().unwrap()],
            domains: Vec::new(),
        };
        let findings = report(&config, &options, &lookup, &|_| None);
        let spf: Vec<&Finding> = findings.iter().filter(|f| f.check == Check::Spf).collect();
        assert_eq!(spf.len(), 1, "{findings:#?}");
        assert_eq!(spf[0].subject, "mail.d.test (192.0.2.1)");
        assert_eq!(spf[0].level, Level::Ok);
        let levels: Vec<(Check, Level)> = findings.iter().map(|f| (f.check, f.level)).collect();
        assert_eq!(
            levels,
            [
                (Check::Outbound, Level::Ok),
                (Check::ReverseDns, Level::Ok),
                (Check::Spf, Level::Ok),
                (Check::Mx, Level::Ok),
                (Check::Dkim, Level::Warning),
            ]
        );
        assert_eq!(exit_code(&findings), 0);
    }
}
