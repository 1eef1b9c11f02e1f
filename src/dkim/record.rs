//! A key's DNS record (RFC 6376 §3.6.1): written for publishing, read
//! back and compared with the key, for `mailqueue dkim check` (and the
//! DNS self-check of `mailqueue check --dns`).

use std::fmt;

use base64::Engine;

use super::key::SigningKey;
use super::signer::DkimSigner;
use crate::delivery::dns::{DnsError, Record, RecordType, Resolver};

/// Longest string in a TXT record (one length byte).
const MAX_TXT_STRING: usize = 255;

/// The zone file line to publish for `key`: the name with its final dot,
/// and the record as quoted strings of at most 255 bytes.
pub fn zone_line(key: &SigningKey) -> String {
    let record = key.record();
    let strings: Vec<String> = record
        .as_bytes()
        .chunks(MAX_TXT_STRING)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{}. IN TXT {}", key.record_name(), strings.join(" "))
}

/// A key record as read from DNS: its key type and public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// `k=`: `rsa` when absent.
    pub key_type: String,
    /// `p=`, decoded; empty for a revoked key.
    pub public: Vec<u8>,
}

impl KeyRecord {
    /// Reads a record's tag list (the TXT strings joined).
    pub fn parse(text: &str) -> Result<KeyRecord, String> {
        let mut key_type = None;
        let mut public = None;
        for (i, tag) in text.split(';').enumerate() {
            let tag = tag.trim();
            if tag.is_empty() {
                continue;
            }
            let Some((name, value)) = tag.split_once('=') else {
                return Err(format!("{tag:?} is not a tag=value pair"));
            };
            let (name, value) = (name.trim(), value.trim());
            match name {
                "v" if i != 0 => return Err("v= must be the first tag".into()),
                "v" if value != "DKIM1" => return Err(format!("v={value}, not DKIM1")),
                "k" => key_type = Some(value.to_ascii_lowercase()),
                "p" => {
                    let b64: String = value.split_ascii_whitespace().collect();
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(b64.as_bytes())
                        .map_err(|e| format!("p= is not base64: {e}"))?;
                    public = Some(decoded);
                }
                _ => {}
            }
        }
        Ok(KeyRecord {
            key_type: key_type.unwrap_or_else(|| "rsa".into()),
            public: public.ok_or("no p= tag")?,
        })
    }
}

/// What DNS says of a key's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// The record is there and holds this key.
    Matching,
    /// No record at the name.
    Missing,
    /// A record with another key (or a revoked one, `p=` empty).
    Different {
        /// What differs.
        why: String,
    },
    /// A record that is no key record, or several.
    Malformed {
        /// What is wrong.
        why: String,
    },
    /// The lookup failed (no answer, a server failure): unknown.
    LookupFailed {
        /// What the resolver said.
        why: String,
    },
}

impl Published {
    /// Whether the key can be verified by others.
    pub fn is_ok(&self) -> bool {
        *self == Published::Matching
    }
}

impl fmt::Display for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Published::Matching => write!(f, "published and matching"),
            Published::Missing => write!(f, "not published"),
            Published::Different { why } => write!(f, "published with a different key ({why})"),
            Published::Malformed { why } => write!(f, "malformed record ({why})"),
            Published::LookupFailed { why } => write!(f, "lookup failed ({why})"),
        }
    }
}

/// Looks up `key`'s record through `resolver` and compares it with the key.
pub fn check_published(resolver: &Resolver, key: &SigningKey) -> Published {
    check_published_with(&|name, t| resolver.lookup(name, t), key)
}

/// A DNS lookup: the records of a name and type.
pub type Lookup<'a> = &'a dyn Fn(&str, RecordType) -> Result<Vec<Record>, DnsError>;

/// [`check_published`] through any lookup (`check --dns` passes its own).
pub fn check_published_with(lookup: Lookup<'_>, key: &SigningKey) -> Published {
    let records = match lookup(&key.record_name(), RecordType::Txt) {
        Ok(r) => r,
        Err(DnsError::NxDomain(_)) => return Published::Missing,
        Err(e) => return Published::LookupFailed { why: e.to_string() },
    };
    let texts: Vec<&str> = records
        .iter()
        .filter_map(|r| match r {
            Record::Txt(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    compare(key, &texts)
}

/// [`check_published`] for every key of `signer`: each key's record
/// name (`s1._domainkey.example.org`) and what DNS says of it.
pub fn check_all(resolver: &Resolver, signer: &DkimSigner) -> Vec<(String, Published)> {
    signer
        .keys()
        .map(|k| (k.record_name(), check_published(resolver, k)))
        .collect()
}

/// [`check_published`] on the TXT records found.
pub(crate) fn compare(key: &SigningKey, texts: &[&str]) -> Published {
    let text = match texts {
        [] => return Published::Missing,
        [one] => one,
        _ => {
            return Published::Malformed {
                why: format!("{} TXT records; a verifier may take any one", texts.len()),
            }
        }
    };
    let record = match KeyRecord::parse(text) {
        Ok(r) => r,
        Err(why) => return Published::Malformed { why },
    };
    let ours = key.algorithm().key_type();
    if record.key_type != ours {
        return Published::Different {
            why: format!("k={}, the key is {ours}", record.key_type),
        };
    }
    if record.public.is_empty() {
        return Published::Different {
            why: "p= is empty: the key is revoked".into(),
        };
    }
    if record.public != key.public_key() {
        return Published::Different {
            why: "p= holds another public key".into(),
        };
    }
    Published::Matching
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dkim::key::{generate_pem, Algorithm};
    use std::path::Path;

    fn key(alg: Algorithm) -> SigningKey {
        let pem = generate_pem(alg, 2048).unwrap();
        SigningKey::from_pem("example.org", "s1", &pem, Path::new("k")).unwrap()
    }

    #[test]
    fn a_long_record_is_split_into_strings_of_255_bytes() {
        let k = key(Algorithm::RsaSha256);
        let line = zone_line(&k);
        assert!(line.starts_with("s1._domainkey.example.org. IN TXT \"v=DKIM1; k=rsa; p="));
        let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert!(strings.len() >= 2);
        assert!(strings.iter().all(|s| s.len() <= 255));
        assert_eq!(strings.concat(), k.record());
    }

    #[test]
    fn records_are_compared_with_the_key() {
        let k = key(Algorithm::Ed25519Sha256);
        let other = key(Algorithm::Ed25519Sha256);
        assert_eq!(compare(&k, &[&k.record()]), Published::Matching);
        let spaced = k.record().replace("p=", " p = ").replace(';', " ;");
        assert_eq!(compare(&k, &[&spaced]), Published::Matching);
        assert!(matches!(
            compare(&k, &[&other.record()]),
            Published::Different { .. }
        ));
        assert!(matches!(
            compare(&k, &["v=DKIM1; k=rsa; p=MIIB"]),
            Published::Different { .. }
        ));
        assert!(matches!(
            compare(&k, &["v=DKIM1; k=ed25519; p="]),
            Published::Different { .. }
        ));
        assert!(matches!(
            compare(&k, &["v=DKIM1; k=ed25519"]),
            Published::Malformed { .. }
        ));
        assert!(matches!(
            compare(&k, &["v=spf1 -all", "x"]),
            Published::Malformed { .. }
        ));
        assert_eq!(compare(&k, &[]), Published::Missing);
    }
}
