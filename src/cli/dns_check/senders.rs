//! The sender domains: which ones this host sends for, whether their SPF
//! records permit the outbound addresses, and whether bounces to their
//! senders can come back (MX).

use std::net::IpAddr;

use mailqueue::delivery::dns::{to_ascii, DnsError, Record, RecordType};
use mailqueue::delivery::routing::SenderPattern;
use mailqueue::{Address, Config};

use super::dkim::DkimKey;
use super::finding::{Check, Finding};
use super::outbound::Outbound;
use super::spf::{check_host, spf_records, Query, SpfResult};
use super::Lookup;

/// A domain mail is sent from, and why it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderDomain {
    /// As an A-label, lower case.
    pub name: String,
    /// Where it comes from: `[bounce] from`, `--domain`.
    pub sources: Vec<String>,
    /// The domain of the notices' From (sent with the null sender, which
    /// routes for `<>` take).
    pub bounce: bool,
}

/// The domains of the `[[dkim]]` keys, of `[bounce] from`, of the routes'
/// `senders` (addresses and domains, not `.subdomains`) and of `extra`
/// (`--domain`), each once.
pub fn sender_domains(config: &Config, dkim: &[DkimKey], extra: &[String]) -> Vec<SenderDomain> {
    let mut domains: Vec<SenderDomain> = Vec::new();
    let mut add = |name: &str, source: String, bounce: bool| {
        let Ok(name) = to_ascii(name) else { return };
        match domains.iter_mut().find(|d| d.name == name) {
            Some(d) => {
                if !d.sources.contains(&source) {
                    d.sources.push(source);
                }
                d.bounce |= bounce;
            }
            None => domains.push(SenderDomain {
                name,
                sources: vec![source],
                bounce,
            }),
        }
    };
    for key in dkim {
        add(
            &key.domain,
            format!("[[dkim]] selector {}", key.selector),
            false,
        );
    }
    let from = config.bounce_from();
    let bounce_domain = Address::parse(&from)
        .map(|a| a.domain().to_string())
        .unwrap_or_else(|_| from.rsplit('@').next().unwrap_or_default().to_string());
    add(&bounce_domain, "[bounce] from".into(), true);
    for (i, route) in config.routes.iter().enumerate() {
        for pattern in &route.senders {
            let domain = match pattern {
                SenderPattern::Address { domain, .. } => domain.clone(),
                SenderPattern::Domain(d) => match d.to_string() {
                    sub if sub.starts_with('.') || sub == "*" => continue,
                    exact => exact,
                },
                SenderPattern::Null => continue,
            };
            add(&domain, format!("senders of route {}", i + 1), false);
        }
    }
    for d in extra {
        add(d, "--domain".into(), false);
    }
    domains
}

/// Whether mail from `domain` can leave from `o`.
fn sends_from(o: &Outbound, domain: &SenderDomain) -> bool {
    let Some(patterns) = &o.senders else {
        return true;
    };
    patterns.iter().any(|p| match p {
        SenderPattern::Null => domain.bounce,
        SenderPattern::Address { domain: d, .. } => *d == domain.name,
        SenderPattern::Domain(d) => d.matches(&domain.name),
    })
}

/// SPF of one domain: for each outbound address its mail may leave from
/// (hidden ones aside), whether the record permits it; with none, whether
/// there is a record at all.
pub fn spf(domain: &SenderDomain, outbound: &[Outbound], dns: Lookup<'_>) -> Vec<Finding> {
    let mut findings = Vec::new();
    for o in outbound
        .iter()
        .filter(|o| !o.hidden() && sends_from(o, domain))
    {
        findings.push(spf_for(domain, o, dns));
    }
    if findings.is_empty() {
        findings.push(spf_published(domain, dns));
    }
    findings
}

fn spf_for(domain: &SenderDomain, o: &Outbound, dns: Lookup<'_>) -> Finding {
    spf_finding(&domain.name, o, Identity::MailFrom, dns)
}

/// Which SPF identity a domain is checked as (RFC 7208 §2.3, §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity {
    /// The MAIL FROM domain of ordinary mail.
    MailFrom,
    /// The EHLO name: what receivers judge notices by, sent from `<>`.
    Helo,
}

/// SPF of the EHLO name of each outbound address (hidden ones aside)
/// that is not a sender domain already: notices go out with the null
/// sender, and receivers then check the EHLO name's record instead.
pub fn helo_spf(outbound: &[Outbound], domains: &[SenderDomain], dns: Lookup<'_>) -> Vec<Finding> {
    outbound
        .iter()
        .filter(|o| !o.hidden())
        .filter(|o| {
            let helo = to_ascii(&o.helo).unwrap_or_default();
            !domains.iter().any(|d| d.name == helo)
        })
        .map(|o| spf_finding(&o.helo, o, Identity::Helo, dns))
        .collect()
}

fn spf_finding(d: &str, o: &Outbound, identity: Identity, dns: Lookup<'_>) -> Finding {
    let subject = format!("{d} ({})", o.ip);
    let query = Query {
        ip: o.ip,
        local: "postmaster",
        sender_domain: d,
        helo: &o.helo,
    };
    let v = check_host(&query, d, dns);
    let mail = match identity {
        Identity::MailFrom => "the mail",
        Identity::Helo => "notices (sent from <>, judged by the EHLO name)",
    };
    let add = format!(
        "add {} to {d}'s SPF record, before its \"all\"",
        mechanism_for(o.ip)
    );
    match v.result {
        SpfResult::Pass => Finding::ok(Check::Spf, subject, format!("permits it ({})", v.why)),
        SpfResult::Fail => Finding::problem(
            Check::Spf,
            subject,
            format!("does not permit it ({}): receivers refuse {mail}", v.why),
            add,
        ),
        SpfResult::SoftFail => Finding::warning(
            Check::Spf,
            subject,
            format!("softfail ({}): receivers mark {mail} as suspect", v.why),
            add,
        ),
        SpfResult::Neutral => Finding::warning(
            Check::Spf,
            subject,
            format!(
                "neutral ({}): the record does not vouch for the address",
                v.why
            ),
            add,
        ),
        SpfResult::None => no_spf(d, o.ip, identity, subject, &v.why),
        SpfResult::PermError => Finding::problem(
            Check::Spf,
            subject,
            format!(
                "the record is broken: {}; receivers treat it as no SPF at all",
                v.why
            ),
            format!(
                "keep one v=spf1 record at {d} with at most 10 include/a/mx/ptr/exists/redirect \
                 lookups in all (replace includes by the ip4:/ip6: ranges they stand for)"
            ),
        ),
        SpfResult::TempError => Finding::unknown(Check::Spf, subject, v.why),
    }
}

/// The finding for a domain that publishes no SPF record: a warning for
/// an EHLO name (only notices are judged by it), a problem for a sender.
fn no_spf(d: &str, ip: IpAddr, identity: Identity, subject: String, why: &str) -> Finding {
    if identity == Identity::Helo {
        return Finding::warning(
            Check::Spf,
            subject,
            format!("{why}: receivers judge notices (sent from <>) by it"),
            // `a`: the EHLO name's own address, which the reverse DNS
            // check wants to be this one.
            format!("publish {d}. TXT \"v=spf1 a -all\""),
        );
    }
    Finding::problem(
        Check::Spf,
        subject,
        format!("{why}: Gmail and Yahoo want SPF (or DKIM) for every sender"),
        format!("publish {d}. TXT \"v=spf1 {} -all\"", mechanism_for(ip)),
    )
}

/// With no address to evaluate against: whether a record is there.
fn spf_published(domain: &SenderDomain, dns: Lookup<'_>) -> Finding {
    let d = &domain.name;
    match spf_records(d, dns) {
        Ok(records) => match records.len() {
            0 => Finding::problem(
                Check::Spf,
                d,
                "no v=spf1 record: Gmail and Yahoo want SPF (or DKIM) for every sender",
                format!("publish {d}. TXT \"v=spf1 ip4:<the relay's address> -all\""),
            ),
            1 => Finding::ok(
                Check::Spf,
                d,
                "a v=spf1 record is published (no outbound address of this host to test it \
                 with: pass --address IP for one)",
            ),
            n => Finding::problem(
                Check::Spf,
                d,
                format!("{n} v=spf1 records: receivers treat that as an error"),
                "merge them into one record",
            ),
        },
        Err(e) => Finding::unknown(Check::Spf, d, e),
    }
}

/// `ip4:192.0.2.1` or `ip6:2001:db8::1`.
fn mechanism_for(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip4:{v4}"),
        IpAddr::V6(v6) => format!("ip6:{v6}"),
    }
}

/// Where bounces to the domain's senders go: its MX hosts, else its
/// address records.
pub fn mx(domain: &SenderDomain, dns: Lookup<'_>) -> Finding {
    let d = &domain.name;
    let publish = format!("publish an MX record for {d} naming a host that takes its mail");
    let hosts = match dns(d, RecordType::Mx) {
        Ok(records) => records
            .into_iter()
            .filter_map(|r| match r {
                Record::Mx(_, host) => Some(host),
                _ => None,
            })
            .collect::<Vec<_>>(),
        Err(DnsError::NxDomain(_)) => {
            return Finding::warning(
                Check::Mx,
                d,
                "the domain does not exist: bounces to its senders cannot come back, and \
                 receivers distrust mail from it",
                format!("register {d} or send from a domain that exists"),
            )
        }
        Err(e) => return Finding::unknown(Check::Mx, d, e),
    };
    if hosts.iter().any(|h| !h.is_empty()) {
        let list: Vec<&str> = hosts
            .iter()
            .map(String::as_str)
            .filter(|h| !h.is_empty())
            .collect();
        return Finding::ok(
            Check::Mx,
            d,
            format!("bounces come back to {}", list.join(", ")),
        );
    }
    if !hosts.is_empty() {
        return Finding::warning(
            Check::Mx,
            d,
            "null MX (\"0 .\"): the domain takes no mail, so bounces to its senders are lost",
            publish,
        );
    }
    implicit_mx(d, publish, dns)
}

/// The finding for a domain with no MX record: its address records, if
/// any, take bounces in its place.
fn implicit_mx(d: &str, publish: String, dns: Lookup<'_>) -> Finding {
    let mut has_address = false;
    for qtype in [RecordType::A, RecordType::Aaaa] {
        match dns(d, qtype) {
            Ok(records) => has_address |= !records.is_empty(),
            Err(DnsError::NxDomain(_)) => {}
            Err(e) => return Finding::unknown(Check::Mx, d, e),
        }
    }
    if has_address {
        Finding::ok(
            Check::Mx,
            d,
            "no MX record; bounces go to its address record (implicit MX)",
        )
    } else {
        Finding::warning(
            Check::Mx,
            d,
            "no MX and no address record: bounces to its senders cannot come back",
            publish,
        )
    }
}
