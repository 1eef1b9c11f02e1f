//! `mailqueue sts DOMAIN`: the MTA-STS policy in force for a recipient
//! domain, as MX delivery would apply it: the spool's cached policy while
//! it has not expired, else the one published now (fetched, not stored:
//! the daemon stores what it uses).

use std::time::{Duration, UNIX_EPOCH};

use mailqueue::config::{build_mta_sts, Config};
use mailqueue::date::rfc5322;
use mailqueue::delivery::mta_sts::{Found, Source};

use super::exit;

/// Prints the policy; exit 1 (with the reason) when there is none.
pub fn run(config: &Config, domain: &str) -> u8 {
    let sts = match build_mta_sts(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mailqueue: {e}");
            return exit::CONFIG;
        }
    };
    match sts.current(domain) {
        Ok(found) => {
            print!("{}", describe(domain, &found));
            if !config.delivery.mta_sts {
                println!("note: [delivery] mta_sts = false: the daemon does not apply it");
            }
            exit::OK
        }
        Err(why) => {
            eprintln!("mailqueue: {domain}: no MTA-STS policy: {why}");
            exit::FAILED
        }
    }
}

/// One line per field.
fn describe(domain: &str, found: &Found) -> String {
    let c = &found.policy;
    let p = &c.policy;
    let date = |secs: u64| rfc5322(UNIX_EPOCH + Duration::from_secs(secs));
    let source = match found.source {
        Source::Cache => "cached in the spool",
        Source::Fetched => "fetched now (the daemon stores it at its next delivery)",
    };
    let mut out = format!("domain   {domain}\n");
    out.push_str(&format!("id       {}\n", c.id));
    out.push_str(&format!("source   {source}\n"));
    out.push_str(&format!("mode     {}\n", p.mode));
    let mx = if p.mx.is_empty() {
        "(none)".to_string()
    } else {
        p.mx_list()
    };
    out.push_str(&format!("mx       {mx}\n"));
    out.push_str(&format!("max_age  {} seconds\n", p.max_age.as_secs()));
    out.push_str(&format!("fetched  {}\n", date(c.fetched)));
    out.push_str(&format!("expires  {}\n", date(c.expires())));
    if let Some(id) = found.published_id.as_ref().filter(|id| **id != c.id) {
        out.push_str(&format!(
            "note: the TXT record now names policy {id}: it is fetched at the next delivery\n"
        ));
    }
    out
}
