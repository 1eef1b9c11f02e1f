//! SPF evaluation (RFC 7208 §4): whether a domain's record permits an
//! address, as a receiving server would decide it. A pure function over
//! a lookup closure, so that it runs against DNS in the self-check and
//! against a table in the tests.

mod macros;
mod record;

use std::net::IpAddr;

use mailqueue::delivery::dns::{reverse_name, DnsError, Record, RecordType};

use self::macros::{expand, MacroValues};
use self::record::{is_spf, parse, Mechanism, Qualifier};
use super::Lookup;

/// The results of RFC 7208 §2.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfResult {
    /// No SPF record.
    None,
    /// The record says nothing about the address (`?all`, or no match).
    Neutral,
    Pass,
    Fail,
    /// `~all`: probably not permitted.
    SoftFail,
    /// DNS failed: a receiver defers.
    TempError,
    /// The record cannot be evaluated: receivers treat it as broken.
    PermError,
}

impl From<Qualifier> for SpfResult {
    fn from(q: Qualifier) -> SpfResult {
        match q {
            Qualifier::Pass => SpfResult::Pass,
            Qualifier::Fail => SpfResult::Fail,
            Qualifier::SoftFail => SpfResult::SoftFail,
            Qualifier::Neutral => SpfResult::Neutral,
        }
    }
}

/// A result, why (the term that decided, and where), and how many
/// DNS-querying terms it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub result: SpfResult,
    pub why: String,
    pub dns_terms: u32,
}

/// Who asks: the client address, the MAIL FROM identity and the EHLO
/// name (these two only for macros).
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub ip: IpAddr,
    pub local: &'a str,
    pub sender_domain: &'a str,
    pub helo: &'a str,
}

/// DNS-querying terms (include, a, mx, ptr, exists, redirect) one
/// evaluation may use (RFC 7208 §4.6.4).
pub const MAX_DNS_TERMS: u32 = 10;
/// Lookups answering no records one evaluation may make (§4.6.4).
pub const MAX_VOID_LOOKUPS: u32 = 2;
/// MX and PTR names one term may look at (§4.6.4).
const MAX_NAMES: usize = 10;

/// Evaluates `domain`'s SPF record for `query.ip` (`check_host()`).
pub fn check_host(query: &Query<'_>, domain: &str, dns: Lookup<'_>) -> Verdict {
    let mut eval = Eval {
        query,
        dns,
        terms: 0,
        voids: 0,
        included: None,
    };
    let (result, why) = eval.check(domain);
    Verdict {
        result,
        why,
        dns_terms: eval.terms,
    }
}

/// The SPF records among a domain's TXT records: what receivers find.
pub fn spf_records(domain: &str, dns: Lookup<'_>) -> Result<Vec<String>, DnsError> {
    match dns(domain, RecordType::Txt) {
        Ok(records) => Ok(records
            .into_iter()
            .filter_map(|r| match r {
                Record::Txt(t) if is_spf(&t) => Some(t),
                _ => None,
            })
            .collect()),
        Err(DnsError::NxDomain(_) | DnsError::BadName(_)) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// An evaluation ended early, with this result and why.
type Stop = (SpfResult, String);

struct Eval<'q, 'd> {
    query: &'q Query<'q>,
    dns: Lookup<'d>,
    terms: u32,
    voids: u32,
    /// What decided inside the include that just matched.
    included: Option<String>,
}

impl Eval<'_, '_> {
    fn check(&mut self, domain: &str) -> (SpfResult, String) {
        match self.check_record(domain) {
            Ok(done) | Err(done) => done,
        }
    }

    fn check_record(&mut self, domain: &str) -> Result<(SpfResult, String), Stop> {
        let text = match spf_records(domain, self.dns) {
            Ok(records) => match records.as_slice() {
                [] => {
                    return Ok((SpfResult::None, format!("no v=spf1 record at {domain}")));
                }
                [one] => one.clone(),
                many => {
                    return Err((
                        SpfResult::PermError,
                        format!(
                            "{} v=spf1 records at {domain}: there must be one",
                            many.len()
                        ),
                    ))
                }
            },
            Err(e) => return Err((SpfResult::TempError, e.to_string())),
        };
        let record = parse(&text).map_err(|e| (SpfResult::PermError, format!("{domain}: {e}")))?;
        for d in &record.directives {
            self.included = None;
            if self.matches(&d.mechanism, domain)? {
                let here = format!("\"{}\" in {domain}", d.text);
                let why = match self.included.take() {
                    Some(inner) => format!("{inner}, via {here}"),
                    None => here,
                };
                return Ok((d.qualifier.into(), why));
            }
        }
        if let Some(spec) = &record.redirect {
            self.count_term()?;
            let target = self.expand(spec, domain)?;
            let (result, why) = self.check(&target);
            if result == SpfResult::None {
                return Err((
                    SpfResult::PermError,
                    format!("redirect={target} in {domain}: {why}"),
                ));
            }
            return Ok((result, why));
        }
        Ok((
            SpfResult::Neutral,
            format!("no term of {domain} matched (neutral by default)"),
        ))
    }

    fn matches(&mut self, mechanism: &Mechanism, domain: &str) -> Result<bool, Stop> {
        let ip = self.query.ip;
        match mechanism {
            Mechanism::All => Ok(true),
            Mechanism::Ip4(net, len) => Ok(in_prefix(ip, IpAddr::V4(*net), *len, 0)),
            Mechanism::Ip6(net, len) => Ok(in_prefix(ip, IpAddr::V6(*net), 0, *len)),
            Mechanism::Include(spec) => self.matches_include(spec, domain),
            Mechanism::A {
                domain: spec,
                v4,
                v6,
            } => {
                self.count_term()?;
                let target = self.target(spec.as_deref(), domain)?;
                let addrs = self.addresses(&target, true)?;
                Ok(addrs.iter().any(|a| in_prefix(ip, *a, *v4, *v6)))
            }
            Mechanism::Mx {
                domain: spec,
                v4,
                v6,
            } => self.matches_mx(spec.as_deref(), *v4, *v6, domain),
            Mechanism::Ptr(spec) => {
                self.count_term()?;
                let target = self.target(spec.as_deref(), domain)?;
                Ok(self.validated_names().iter().any(|name| {
                    name.eq_ignore_ascii_case(&target)
                        || name
                            .to_ascii_lowercase()
                            .ends_with(&format!(".{}", target.to_ascii_lowercase()))
                }))
            }
            Mechanism::Exists(spec) => {
                self.count_term()?;
                let target = self.expand(spec, domain)?;
                Ok(!self.records(&target, RecordType::A, true)?.is_empty())
            }
        }
    }

    /// `include:`, which matches only when the included record passes;
    /// the included domain's errors end the whole check.
    fn matches_include(&mut self, spec: &str, domain: &str) -> Result<bool, Stop> {
        self.count_term()?;
        let target = self.expand(spec, domain)?;
        match self.check(&target) {
            (SpfResult::Pass, why) => {
                self.included = Some(why);
                Ok(true)
            }
            (SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral, _) => Ok(false),
            (SpfResult::TempError, why) => Err((SpfResult::TempError, why)),
            (SpfResult::PermError, why) => Err((SpfResult::PermError, why)),
            (SpfResult::None, why) => Err((
                SpfResult::PermError,
                format!("include:{target} in {domain}: {why}"),
            )),
        }
    }

    /// `mx`, which looks up at most `MAX_NAMES` hosts of the target's MX.
    fn matches_mx(
        &mut self,
        spec: Option<&str>,
        v4: u8,
        v6: u8,
        domain: &str,
    ) -> Result<bool, Stop> {
        self.count_term()?;
        let target = self.target(spec, domain)?;
        let hosts: Vec<String> = self
            .records(&target, RecordType::Mx, true)?
            .into_iter()
            .filter_map(|r| match r {
                Record::Mx(_, host) if !host.is_empty() => Some(host),
                _ => None,
            })
            .collect();
        if hosts.len() > MAX_NAMES {
            return Err((
                SpfResult::PermError,
                format!(
                    "mx of {target} has {} hosts: at most {MAX_NAMES} may be looked at",
                    hosts.len()
                ),
            ));
        }
        for host in hosts {
            let addrs = self.addresses(&host, false)?;
            if addrs.iter().any(|a| in_prefix(self.query.ip, *a, v4, v6)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn count_term(&mut self) -> Result<(), Stop> {
        self.terms += 1;
        if self.terms > MAX_DNS_TERMS {
            return Err((
                SpfResult::PermError,
                format!(
                    "more than {MAX_DNS_TERMS} DNS lookups (include, a, mx, ptr, exists, redirect), \
                     which RFC 7208 §4.6.4 makes an error"
                ),
            ));
        }
        Ok(())
    }

    fn expand(&self, spec: &str, domain: &str) -> Result<String, Stop> {
        let values = MacroValues {
            local: self.query.local,
            sender_domain: self.query.sender_domain,
            helo: self.query.helo,
            ip: self.query.ip,
            domain,
        };
        expand(spec, &values).map_err(|e| (SpfResult::PermError, format!("in {domain}: {e}")))
    }

    /// A mechanism's domain: its own, expanded, or the current one.
    fn target(&self, spec: Option<&str>, domain: &str) -> Result<String, Stop> {
        match spec {
            Some(spec) => self.expand(spec, domain),
            None => Ok(domain.to_string()),
        }
    }

    /// Records of a mechanism's lookup. No records (or no name) counts
    /// against the void lookup limit when `void_counts`; a failed lookup
    /// is a temperror.
    fn records(
        &mut self,
        name: &str,
        qtype: RecordType,
        void_counts: bool,
    ) -> Result<Vec<Record>, Stop> {
        let records = match (self.dns)(name, qtype) {
            Ok(r) => r,
            Err(DnsError::NxDomain(_)) => Vec::new(),
            Err(e @ DnsError::BadName(_)) => return Err((SpfResult::PermError, e.to_string())),
            Err(e) => return Err((SpfResult::TempError, e.to_string())),
        };
        if records.is_empty() && void_counts {
            self.voids += 1;
            if self.voids > MAX_VOID_LOOKUPS {
                return Err((
                    SpfResult::PermError,
                    format!(
                        "more than {MAX_VOID_LOOKUPS} lookups found nothing (the last: {name}), \
                         which RFC 7208 §4.6.4 makes an error"
                    ),
                ));
            }
        }
        Ok(records)
    }

    /// The addresses of `name` of the client's family.
    fn addresses(&mut self, name: &str, void_counts: bool) -> Result<Vec<IpAddr>, Stop> {
        let qtype = match self.query.ip {
            IpAddr::V4(_) => RecordType::A,
            IpAddr::V6(_) => RecordType::Aaaa,
        };
        Ok(self
            .records(name, qtype, void_counts)?
            .into_iter()
            .filter_map(|r| match r {
                Record::Ip(ip) => Some(ip),
                _ => None,
            })
            .collect())
    }

    /// The client's PTR names that resolve back to it (§5.5); lookups
    /// that fail only make the names fewer.
    fn validated_names(&mut self) -> Vec<String> {
        let ip = self.query.ip;
        let names = match (self.dns)(&reverse_name(ip), RecordType::Ptr) {
            Ok(r) => r,
            Err(_) => return Vec::new(),
        };
        let mut valid = Vec::new();
        for name in names.into_iter().take(MAX_NAMES) {
            let Record::Name(name) = name else { continue };
            if self.addresses(&name, false).is_ok_and(|a| a.contains(&ip)) {
                valid.push(name);
            }
        }
        valid
    }
}

/// Whether `ip` is in `net/len` (`v4` for IPv4, `v6` for IPv6); never
/// across families.
fn in_prefix(ip: IpAddr, net: IpAddr, v4: u8, v6: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(v4)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(v6)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
