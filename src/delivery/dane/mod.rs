//! DANE for MX delivery (RFC 7672): an MX host whose TLSA records are
//! authenticated by DNSSEC, and usable, must offer STARTTLS and present a
//! certificate the records name; a mismatch or a missing STARTTLS is a
//! temporary failure naming DANE, never a fallback to clear text.
//!
//! The only DNSSEC this queue does is to believe the AD bit of a
//! validating resolver on this host (`[delivery] dane = true` with
//! `dns_servers` or resolv.conf on loopback): the path to a remote one is
//! not protected, so there DANE is not used (and `check` says so).
//!
//! DANE comes before MTA-STS (RFC 8461 §2): [`Dane::usable_records`]
//! answering `Some` for an MX host settles its TLS requirement.

mod matching;
mod records;

use std::sync::Arc;

use openssl::ssl::SslRef;
use openssl::x509::X509;

use crate::delivery::dns::{Answer, DnsError, Record, RecordType, Resolver};
use crate::delivery::smtp_client::PeerCheck;
use crate::delivery::tls_report::Verification;
use crate::delivery::{DeliveryError, ErrorKind};

pub use matching::{check, DaneMatch};
pub use records::{Matching, Selector, UsableTlsa, Usage};

/// Looks up which MX hosts DANE applies to.
pub struct Dane {
    resolver: Arc<Resolver>,
    /// The port MX hosts are reached on: the `_25` of `_25._tcp.<mx>`.
    port: u16,
}

impl Dane {
    /// DANE over `resolver`, when its answers' AD bit can be trusted (all
    /// its servers on loopback); `None`, with a warning, when not.
    pub fn new(resolver: Arc<Resolver>, port: u16) -> Option<Dane> {
        if !resolver.is_local() {
            log::debug!("{NOT_LOCAL}");
            return None;
        }
        Some(Dane { resolver, port })
    }

    /// The usable TLSA records of `host`, an MX host of `domain`, as the
    /// check its connection needs: `Some` when DANE applies, which also
    /// settles the question for MTA-STS. `None` when DANE does not apply:
    /// the domain's MX answer or the TLSA answer was not authenticated
    /// (RFC 7672 §2.2), there are no TLSA records, or none is usable
    /// (§3.1: opportunistic TLS then). An error when the TLSA lookup of an
    /// authenticated MX host fails: that host cannot be used for now
    /// (§2.2), though the next may.
    pub fn usable_records(
        &self,
        domain: &str,
        host: &str,
    ) -> Result<Option<Arc<DaneCheck>>, DeliveryError> {
        // An address literal has no MX answer to authenticate.
        if domain.starts_with('[') {
            return Ok(None);
        }
        // Already in the cache: it is how the MX hosts were found.
        let mx_secure = matches!(
            self.resolver.lookup_answer(domain, RecordType::Mx),
            Ok(a) if a.authenticated
        );
        if !mx_secure {
            return Ok(None);
        }
        let name = format!("_{}._tcp.{}", self.port, host.trim_end_matches('.'));
        let answer = match self.resolver.lookup_answer(&name, RecordType::Tlsa) {
            Ok(a) => a,
            Err(DnsError::NxDomain(_)) => return Ok(None),
            Err(e) => {
                return Err(DeliveryError::new(
                    ErrorKind::Dns,
                    &format!("DANE: TLSA lookup of {name} failed, so {host} cannot be used: {e}"),
                ))
            }
        };
        Ok(dane_check(domain, name, &answer))
    }
}

/// The check an authenticated TLSA answer calls for at `name`; `None`
/// when the answer is not authenticated or has no usable record.
fn dane_check(domain: &str, name: String, answer: &Answer) -> Option<Arc<DaneCheck>> {
    let published = answer
        .records
        .iter()
        .filter(|r| matches!(r, Record::Tlsa(_)))
        .count();
    if !answer.authenticated {
        if published > 0 {
            log::debug!("{domain}: {name}: TLSA records not authenticated (no AD): ignored");
        }
        return None;
    }
    let usable: Vec<UsableTlsa> = answer
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Tlsa(t) => UsableTlsa::from_record(t),
            _ => None,
        })
        .collect();
    if usable.is_empty() {
        if published > 0 {
            log::info!("{domain}: {name}: none of {published} TLSA records is usable; no DANE");
        }
        return None;
    }
    log::debug!(
        "{domain}: {name}: DANE with {} usable TLSA records",
        usable.len()
    );
    Some(Arc::new(DaneCheck {
        name,
        records: usable,
    }))
}

/// Why DANE is off with a non-local resolver: the log at start and
/// `check` say it.
pub const NOT_LOCAL: &str = "[delivery] dane = true, but the DNS servers (dns_servers, or \
     /etc/resolv.conf) are not all on loopback: their AD bit cannot be trusted, so DANE is \
     not used; run a validating resolver (unbound) on 127.0.0.1 and name it in dns_servers";

/// The usable TLSA records of one MX host: the check its TLS session
/// must pass.
#[derive(Debug)]
pub struct DaneCheck {
    /// `_25._tcp.<mx host>`.
    name: String,
    records: Vec<UsableTlsa>,
}

impl DaneCheck {
    /// The records, as DANE uses them.
    pub fn records(&self) -> &[UsableTlsa] {
        &self.records
    }
}

impl PeerCheck for DaneCheck {
    fn requirement(&self) -> String {
        format!("DANE (TLSA {})", self.name)
    }

    fn check(&self, ssl: &SslRef, host: &str) -> Result<Verification, String> {
        // The client's view of the chain: the server's certificate first.
        let chain: Vec<X509> = match ssl.peer_cert_chain() {
            Some(c) if !c.is_empty() => c.iter().map(|c| c.to_owned()).collect(),
            _ => ssl.peer_certificate().into_iter().collect(),
        };
        check(&self.records, &chain, host).map(|_| Verification::Dane)
    }
}
