//! Reverse DNS of an outbound address as receivers check it: a PTR
//! record, whose name resolves back to the address (forward-confirmed),
//! and which is the name given in EHLO.

use std::net::IpAddr;

use mailqueue::delivery::dns::{reverse_name, DnsError, Record, RecordType};

use super::finding::{Check, Finding};
use super::outbound::Outbound;
use super::Lookup;

/// One finding for the address and its EHLO name.
pub fn reverse_dns(o: &Outbound, dns: Lookup<'_>) -> Finding {
    let subject = o.ip.to_string();
    let helo = o.helo.trim_end_matches('.');
    let names = match ptr_names(o.ip, dns) {
        Ok(names) => names,
        Err(e) => return Finding::unknown(Check::ReverseDns, subject, e),
    };
    if names.is_empty() {
        return no_ptr(o, subject, helo);
    }
    let mut confirmed = Vec::new();
    let mut unconfirmed = Vec::new();
    for name in &names {
        match forward(name, o.ip, dns) {
            Ok(addrs) if addrs.contains(&o.ip) => confirmed.push(name.as_str()),
            Ok(addrs) => unconfirmed.push((name.as_str(), addrs)),
            Err(e) => return Finding::unknown(Check::ReverseDns, subject, e),
        }
    }
    if confirmed.is_empty() {
        let (name, addrs) = &unconfirmed[0];
        return not_confirmed(o.ip, subject, name, addrs);
    }
    confirmed_ptr(o.ip, subject, helo, &confirmed)
}

/// The names the PTR record of `ip` gives; an address without one has none.
fn ptr_names(ip: IpAddr, dns: Lookup<'_>) -> Result<Vec<String>, DnsError> {
    match dns(&reverse_name(ip), RecordType::Ptr) {
        Ok(records) => Ok(records
            .into_iter()
            .filter_map(|r| match r {
                Record::Name(n) => Some(n),
                _ => None,
            })
            .collect()),
        Err(DnsError::NxDomain(_)) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The finding for an address with no PTR record at all.
fn no_ptr(o: &Outbound, subject: String, helo: &str) -> Finding {
    let set_ptr = format!(
        "ask whoever runs {} (the hosting provider, often in its control panel) to set its \
         PTR record to {helo}, and publish {helo} {} {}",
        o.ip,
        family_record(o.ip),
        o.ip
    );
    Finding::problem(
        Check::ReverseDns,
        subject,
        format!(
            "no PTR record at {}: Gmail and Yahoo refuse mail from addresses without one",
            reverse_name(o.ip)
        ),
        set_ptr,
    )
}

/// The finding for a PTR whose name does not resolve back to the address.
fn not_confirmed(ip: IpAddr, subject: String, name: &str, addrs: &[IpAddr]) -> Finding {
    let has = if addrs.is_empty() {
        format!("has no {} record", family_record(ip))
    } else {
        let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
        format!("resolves to {} only", list.join(", "))
    };
    Finding::problem(
        Check::ReverseDns,
        subject,
        format!(
            "PTR {name} is not confirmed: {name} {has}, so receivers treat the address as \
             having no reverse DNS"
        ),
        format!(
            "publish {name} {} {} (or have the PTR set to a name that has it)",
            family_record(ip),
            ip
        ),
    )
}

/// The finding once some PTR name resolves back: whether one of them is
/// also the EHLO name, which receivers compare.
fn confirmed_ptr(ip: IpAddr, subject: String, helo: &str, confirmed: &[&str]) -> Finding {
    if let Some(name) = confirmed.iter().find(|n| n.eq_ignore_ascii_case(helo)) {
        return Finding::ok(
            Check::ReverseDns,
            subject,
            format!("PTR {name} resolves back to the address and is the EHLO name"),
        );
    }
    let name = confirmed[0];
    Finding::problem(
        Check::ReverseDns,
        subject,
        format!(
            "PTR {name} resolves back to the address but the EHLO name is {helo}: receivers \
             compare them"
        ),
        format!(
            "give EHLO {name} (top-level hostname, or the route's helo_name), or have the PTR \
             set to {helo} (with {helo} {} {})",
            family_record(ip),
            ip
        ),
    )
}

/// The addresses of `name` of `ip`'s family; a name that does not exist
/// has none.
fn forward(name: &str, ip: IpAddr, dns: Lookup<'_>) -> Result<Vec<IpAddr>, DnsError> {
    let qtype = match ip {
        IpAddr::V4(_) => RecordType::A,
        IpAddr::V6(_) => RecordType::Aaaa,
    };
    match dns(name, qtype) {
        Ok(records) => Ok(records
            .into_iter()
            .filter_map(|r| match r {
                Record::Ip(ip) => Some(ip),
                _ => None,
            })
            .collect()),
        Err(DnsError::NxDomain(_) | DnsError::BadName(_)) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// `A` for IPv4, `AAAA` for IPv6.
fn family_record(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "A",
        IpAddr::V6(_) => "AAAA",
    }
}
