//! DKIM keys as receivers find them: a TXT record at
//! `<selector>._domainkey.<domain>` for each key mail is signed with.
//!
//! [`dkim`] makes the findings from any per-key check: [`matching`]
//! compares the record with the key file; [`published`], for a key whose
//! file cannot be read here, checks that a usable record is there at all.

use mailqueue::delivery::dns::{DnsError, Record, RecordType};
use mailqueue::dkim::{check_published_with, zone_line, Published, SigningKey};
use mailqueue::Config;

use super::finding::{Check, Finding};
use super::Lookup;

/// A signing key, by where its public half is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimKey {
    pub domain: String,
    pub selector: String,
}

impl DkimKey {
    /// `s1._domainkey.example.org`.
    pub fn record_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }
}

/// The keys mail is signed with: one per `[[dkim]]` entry.
pub fn configured_keys(config: &Config) -> Vec<DkimKey> {
    config
        .dkim
        .iter()
        .map(|d| DkimKey {
            domain: d.domain.to_ascii_lowercase(),
            selector: d.selector.clone(),
        })
        .collect()
}

/// Whether the record at the key's name holds this key (as `mailqueue
/// dkim check` says).
pub fn matching(key: &SigningKey, dns: Lookup<'_>) -> Finding {
    let name = key.record_name();
    let subject = format!("{} selector {}", key.domain(), key.selector());
    let publish = format!("publish at {name}: {}", zone_line(key));
    match check_published_with(dns, key) {
        Published::Matching => Finding::ok(
            Check::Dkim,
            subject,
            format!("key record at {name} holds this key"),
        ),
        Published::LookupFailed { why } => Finding::unknown(Check::Dkim, subject, why),
        other => Finding::problem(
            Check::Dkim,
            subject,
            format!("record at {name}: {other}: receivers cannot verify the signatures"),
            publish,
        ),
    }
}

/// One finding per key from `check_key`; a warning when there are no keys,
/// since receivers want DKIM (bulk senders need it with SPF).
pub fn dkim(keys: &[DkimKey], check_key: impl FnMut(&DkimKey) -> Finding) -> Vec<Finding> {
    if keys.is_empty() {
        return vec![Finding::warning(
            Check::Dkim,
            "",
            "no keys configured (see `mailqueue dkim keygen`)",
            "",
        )];
    }
    keys.iter().map(check_key).collect()
}

/// Whether the key's record is published: one TXT record there with a
/// non-empty `p=` (an empty one revokes the key, RFC 6376 §3.6.1).
pub fn published(key: &DkimKey, dns: Lookup<'_>) -> Finding {
    let name = key.record_name();
    let subject = format!("{} selector {}", key.domain, key.selector);
    let publish =
        format!("publish the TXT record `mailqueue dkim keygen` printed for this key at {name}");
    let records: Vec<String> = match dns(&name, RecordType::Txt) {
        Ok(records) => records
            .into_iter()
            .filter_map(|r| match r {
                Record::Txt(t) => Some(t),
                _ => None,
            })
            .filter(|t| tag(t, "p").is_some())
            .collect(),
        Err(DnsError::NxDomain(_)) => Vec::new(),
        Err(e) => return Finding::unknown(Check::Dkim, subject, e),
    };
    match records.as_slice() {
        [] => Finding::problem(
            Check::Dkim,
            subject,
            format!("no key record at {name}: receivers cannot verify the signatures"),
            publish,
        ),
        [one] if tag(one, "p").is_some_and(str::is_empty) => Finding::problem(
            Check::Dkim,
            subject,
            format!("the record at {name} has an empty p=: the key is revoked"),
            publish,
        ),
        [_] => Finding::ok(
            Check::Dkim,
            subject,
            format!("key record published at {name}"),
        ),
        many => Finding::problem(
            Check::Dkim,
            subject,
            format!(
                "{} key records at {name}: receivers may pick the wrong one",
                many.len()
            ),
            "keep one record there",
        ),
    }
}

/// A tag's value in a `tag=value; tag=value` list, without white space.
fn tag<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::dns_check::finding::Level;

    #[test]
    fn no_keys_is_one_warning_and_records_are_looked_up_per_key() {
        let none = dkim(&[], |_| unreachable!());
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].level, Level::Warning);
        assert_eq!(
            none[0].to_string(),
            "warning  DKIM: no keys configured (see `mailqueue dkim keygen`)"
        );
        let key = |s: &str| DkimKey {
            domain: "d.test".into(),
            selector: s.into(),
        };
        let lookup = |name: &str, _t: RecordType| -> Result<Vec<Record>, DnsError> {
            match name {
                "good._domainkey.d.test" => {
                    Ok(vec![Record::Txt("v=DKIM1; k=ed25519; p=MCow".into())])
                }
                "revoked._domainkey.d.test" => Ok(vec![Record::Txt("v=DKIM1; p=".into())]),
                _ => Err(DnsError::NxDomain(name.into())),
            }
        };
        let found = dkim(&[key("good"), key("revoked"), key("gone")], |k| {
            published(k, &lookup)
        });
        let levels: Vec<Level> = found.iter().map(|f| f.level).collect();
        assert_eq!(
            levels,
            [Level::Ok, Level::Problem, Level::Problem],
            "{found:?}"
        );
        assert!(found[1].text.contains("revoked"), "{found:?}");
    }
}
