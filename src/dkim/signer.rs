//! Signing a message: the key for its `From:` domain, the body hash, the
//! header fields in `h=` order, and the signature field to put on top.

use std::io::{self, Read};
use std::sync::Arc;

use base64::Engine;
use openssl::sha::Sha256;

use super::canon::{header_field, RelaxedBody};
use super::key::SigningKey;
use super::signature::{unsigned_field, Tags};
use crate::header::Header;

/// The keys a queue signs with; empty (the default) signs nothing.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use mailqueue::dkim::{DkimSigner, SigningKey};
/// use mailqueue::QueueOptions;
///
/// let key = SigningKey::from_file("example.org", "s1", "/etc/myapp/dkim.pem".as_ref())?;
/// let mut options = QueueOptions::new("/var/spool/myapp-mail");
/// options.dkim = DkimSigner::new(vec![key]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DkimSigner {
    keys: Vec<Arc<SigningKey>>,
}

/// Why a message could not be signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The message could not be read back.
    #[error("reading the message: {0}")]
    Read(#[from] io::Error),
    /// OpenSSL refused to sign.
    #[error("signing with {selector}._domainkey.{domain}: {source}")]
    Openssl {
        /// The key's domain.
        domain: String,
        /// The key's selector.
        selector: String,
        /// What OpenSSL said.
        source: openssl::error::ErrorStack,
    },
}

impl DkimSigner {
    /// Signs with these keys: each message with the key of its `From:`
    /// domain, or of the closest parent domain that has one.
    pub fn new(keys: Vec<SigningKey>) -> DkimSigner {
        DkimSigner {
            keys: keys.into_iter().map(Arc::new).collect(),
        }
    }

    /// Whether there is no key (nothing is signed).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys.
    pub fn keys(&self) -> impl Iterator<Item = &SigningKey> {
        self.keys.iter().map(|k| &**k)
    }

    /// The key for mail from `domain`: its own, else its closest parent
    /// domain's.
    pub fn key_for(&self, domain: &str) -> Option<&SigningKey> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let domain = crate::delivery::dns::to_ascii(&domain).unwrap_or(domain);
        self.keys()
            .filter(|k| {
                domain == k.domain()
                    || domain
                        .strip_suffix(k.domain())
                        .is_some_and(|rest| rest.ends_with('.'))
            })
            .max_by_key(|k| k.domain().len())
    }

    /// The `DKIM-Signature:` field (with its line end) for the message
    /// whose header fields are `bytes` (parsed as `header`) and whose
    /// body `body` reads; `None` when no key is for its `From:` domain.
    pub(crate) fn sign(
        &self,
        bytes: &[u8],
        header: &Header,
        body: &mut dyn Read,
        now: u64,
    ) -> Result<Option<String>, SignError> {
        let Some(domain) = from_domain(bytes, header) else {
            return Ok(None);
        };
        let Some(key) = self.key_for(&domain) else {
            return Ok(None);
        };
        let body_hash = body_hash(body)?;
        let names = signed_names(key, bytes, header);
        let mut data = Vec::with_capacity(1024);
        // RFC 6376 §5.4.2: the n-th naming of a field signs its n-th
        // instance from the bottom; one named past its count signs
        // nothing, and so forbids adding it.
        let mut used: Vec<(&str, usize)> = Vec::new();
        for name in &names {
            let n = match used.iter_mut().find(|(u, _)| u == name) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    used.push((name, 1));
                    1
                }
            };
            if let Some(f) = header.named(bytes, name).rev().nth(n - 1) {
                header_field(f.name(bytes), f.value(bytes), &mut data);
            }
        }
        let mut field = unsigned_field(&Tags {
            algorithm: key.algorithm().tag(),
            domain: key.domain(),
            selector: key.selector(),
            timestamp: now,
            headers: &names,
            body_hash: &body_hash,
        });
        let text = field.text().as_bytes();
        let colon = text.iter().position(|&b| b == b':').unwrap_or(0);
        header_field(&text[..colon], &text[colon + 1..], &mut data);
        // The signature field itself is hashed without its line end.
        data.truncate(data.len() - 2);
        let signature = key.sign(&data).map_err(|source| SignError::Openssl {
            domain: key.domain().to_string(),
            selector: key.selector().to_string(),
            source,
        })?;
        field.split_word(&base64::engine::general_purpose::STANDARD.encode(signature));
        Ok(Some(field.finish()))
    }
}

/// The `h=` list: each of the key's fields as often as the message has
/// it, `From` once more.
fn signed_names(key: &SigningKey, bytes: &[u8], header: &Header) -> Vec<String> {
    let mut names = Vec::new();
    for name in key.headers() {
        let count = header.named(bytes, name).count() + usize::from(name == "from");
        names.extend(std::iter::repeat_n(name.clone(), count));
    }
    names
}

/// The SHA-256 of the relaxed body, base64.
fn body_hash(body: &mut dyn Read) -> io::Result<String> {
    let mut sha = Sha256::new();
    let mut canon = RelaxedBody::new(|b: &[u8]| sha.update(b));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => canon.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    canon.finish();
    Ok(base64::engine::general_purpose::STANDARD.encode(sha.finish()))
}

/// The domain of the first address of the (first) `From:` field.
fn from_domain(bytes: &[u8], header: &Header) -> Option<String> {
    let from = header.named(bytes, "from").next()?;
    let value = from.unfolded(bytes);
    let list = mailparse::addrparse(&value).ok()?;
    let first = list.iter().find_map(|a| match a {
        mailparse::MailAddr::Single(s) => Some(s.addr.clone()),
        mailparse::MailAddr::Group(g) => g.addrs.first().map(|s| s.addr.clone()),
    })?;
    let (_, domain) = first.rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('>');
    (!domain.is_empty()).then(|| domain.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dkim::key::{generate_pem, Algorithm};
    use crate::header;
    use std::path::Path;

    fn key(domain: &str) -> SigningKey {
        let pem = generate_pem(Algorithm::Ed25519Sha256, 0).unwrap();
        SigningKey::from_pem(domain, "s1", &pem, Path::new("k")).unwrap()
    }

    #[test]
    fn the_closest_domain_with_a_key_signs() {
        let s = DkimSigner::new(vec![key("example.org"), key("mail.example.org")]);
        assert_eq!(s.key_for("example.org").unwrap().domain(), "example.org");
        assert_eq!(
            s.key_for("a.mail.Example.org").unwrap().domain(),
            "mail.example.org"
        );
        assert_eq!(s.key_for("b.example.org").unwrap().domain(), "example.org");
        assert!(s.key_for("notexample.org").is_none());
        assert!(s.key_for("example.net").is_none());
    }

    #[test]
    fn from_is_oversigned_and_absent_fields_are_left_out() {
        let s = DkimSigner::new(vec![key("example.org")]);
        let m = b"From: \"A, B\" <a@example.org>\r\nSubject: x\r\nTo: c@d\r\n\r\nhi\r\n";
        let h = header::parse(m, true).unwrap();
        let field = s
            .sign(&m[..h.end], &h, &mut &m[h.body..], 1)
            .unwrap()
            .unwrap();
        let unfolded = field.replace("\r\n\t", " ");
        assert!(unfolded.contains("h=from:from:to:subject;"), "{unfolded}");
        assert!(unfolded.contains("a=ed25519-sha256;"));
        assert!(field.lines().all(|l| l.len() <= 78));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever the header holds, signing ends with a field or with
        /// none, never a panic, and the field's lines fit in 78 columns.
        #[test]
        fn any_header_is_signed_or_left_without_a_panic(
            fields in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["From", "from", "To", "Subject", "X-A", "Cc"]),
                    "[ a-z@.<>\t\r\n\\\",:;=()\x7f-\u{ff}]{0,40}",
                ),
                0..6,
            ),
        ) {
            let s = DkimSigner::new(vec![key("example.org")]);
            let mut m = Vec::new();
            for (name, value) in &fields {
                m.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
            m.extend_from_slice(b"From: a@example.org\r\n");
            let h = header::parse(&m, true).unwrap();
            let field = s.sign(&m[..h.end], &h, &mut &b"body"[..], 1).unwrap();
            if let Some(f) = field {
                proptest::prop_assert!(f.split("\r\n").all(|l| l.len() <= 78), "{}", f);
            }
        }
    }

    #[test]
    fn mail_from_a_domain_without_a_key_is_not_signed() {
        let s = DkimSigner::new(vec![key("example.org")]);
        let m = b"From: a@example.net\r\n\r\nhi\r\n";
        let h = header::parse(m, true).unwrap();
        assert!(s.sign(m, &h, &mut &b""[..], 1).unwrap().is_none());
    }
}
