//! A DKIM signing key: the private key read from PEM (PKCS#8 RSA or
//! Ed25519 as `openssl genpkey` writes it, or PKCS#1 `BEGIN RSA PRIVATE
//! KEY`), with the domain and selector it signs for and the header
//! fields it signs; and new keys for `mailqueue dkim keygen`.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use openssl::hash::{hash, MessageDigest};
use openssl::pkey::{Id, PKey, Private};
use openssl::sign::Signer;

/// The header fields signed when a key names none: those a reader sees
/// and a forger would change. `From` is signed once more than it appears
/// (oversigned), so that no `From:` can be added without breaking the
/// signature.
pub const DEFAULT_HEADERS: [&str; 12] = [
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
];

/// Smallest RSA key taken (RFC 8301 §3.2); 2048 bits is the default of
/// `keygen` and what `check` asks for.
pub const MIN_RSA_BITS: u32 = 1024;

/// RSA keys shorter than this get a warning from `check`.
pub const RECOMMENDED_RSA_BITS: u32 = 2048;

/// The signing algorithm, by the key's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSA with SHA-256 (RFC 6376).
    RsaSha256,
    /// Ed25519 over SHA-256 (RFC 8463).
    Ed25519Sha256,
}

impl Algorithm {
    /// The signature's `a=` tag.
    pub fn tag(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa-sha256",
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// The key record's `k=` tag.
    pub fn key_type(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa",
            Algorithm::Ed25519Sha256 => "ed25519",
        }
    }
}

/// Why a signing key cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file cannot be read.
    #[error("cannot read key_file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no private key in PEM.
    #[error("key_file {path}: not a PEM private key (PKCS#8, or PKCS#1 RSA): {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What OpenSSL said.
        reason: String,
    },
    /// A key of a type DKIM does not sign with.
    #[error("key_file {path}: a key of type {kind}; DKIM signs with RSA or Ed25519")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The key's type as OpenSSL names it.
        kind: String,
    },
    /// An RSA key too short to be taken.
    #[error("key_file {path}: an RSA key of {bits} bits; at least {MIN_RSA_BITS} (2048 is usual)")]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its size.
        bits: u32,
    },
    /// A domain, selector or header list that cannot be signed with.
    #[error("{what} {value:?}: {reason}")]
    Invalid {
        /// `domain`, `selector` or `headers`.
        what: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        reason: &'static str,
    },
    /// OpenSSL failed to make or write a key.
    #[error("openssl: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
}

/// A private key with the domain (`d=`) and selector (`s=`) it signs
/// for, and the header fields it signs.
pub struct SigningKey {
    domain: String,
    selector: String,
    algorithm: Algorithm,
    key: PKey<Private>,
    headers: Vec<String>,
    /// The public key as the DNS record's `p=` carries it, decoded.
    public: Vec<u8>,
}

impl SigningKey {
    /// Reads the key from a PEM file.
    pub fn from_file(domain: &str, selector: &str, path: &Path) -> Result<SigningKey, KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(domain, selector, &pem, path)
    }

    /// The key from PEM text; `path` names it in errors.
    pub fn from_pem(
        domain: &str,
        selector: &str,
        pem: &[u8],
        path: &Path,
    ) -> Result<SigningKey, KeyError> {
        let domain = check_domain(domain)?;
        let selector = check_selector(selector)?;
        let key = PKey::private_key_from_pem(pem).map_err(|e| KeyError::Parse {
            path: path.to_path_buf(),
            reason: first_reason(&e),
        })?;
        let (algorithm, public) = match key.id() {
            Id::RSA => {
                let bits = key.bits();
                if bits < MIN_RSA_BITS {
                    return Err(KeyError::TooShort {
                        path: path.to_path_buf(),
                        bits,
                    });
                }
                (Algorithm::RsaSha256, key.public_key_to_der()?)
            }
            Id::ED25519 => (Algorithm::Ed25519Sha256, key.raw_public_key()?),
            other => {
                return Err(KeyError::Unsupported {
                    path: path.to_path_buf(),
                    kind: format!("{other:?}"),
                })
            }
        };
        Ok(SigningKey {
            domain,
            selector,
            algorithm,
            key,
            headers: DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect(),
            public,
        })
    }

    /// Signs these header fields instead of [`DEFAULT_HEADERS`]; `from`
    /// must be among them (RFC 6376 §5.4).
    pub fn with_headers(mut self, headers: &[String]) -> Result<SigningKey, KeyError> {
        self.headers = check_headers(headers)?;
        Ok(self)
    }

    /// The signing domain, in A-label form, lower case.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The selector.
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// The algorithm the key's type signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The RSA key's size in bits (256 for Ed25519).
    pub fn bits(&self) -> u32 {
        self.key.bits()
    }

    /// The header fields signed, lower case, each once.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// The public key as the `p=` tag of its DNS record carries it.
    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.public)
    }

    /// The public key, decoded, as `p=` carries it: SubjectPublicKeyInfo
    /// DER for RSA, the 32 raw bytes for Ed25519.
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// The name its record is published under: `s1._domainkey.example.org`.
    pub fn record_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// The TXT record to publish: `v=DKIM1; k=rsa; p=...`.
    pub fn record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm.key_type(),
            self.public_key_base64()
        )
    }

    /// The signature of `data` (the canonical header fields and the
    /// signature field itself): RSASSA-PKCS1-v1_5 with SHA-256, or
    /// Ed25519 over the SHA-256 digest of `data` (RFC 8463 §3).
    pub(crate) fn sign(&self, data: &[u8]) -> Result<Vec<u8>, openssl::error::ErrorStack> {
        match self.algorithm {
            Algorithm::RsaSha256 => {
                let mut s = Signer::new(MessageDigest::sha256(), &self.key)?;
                s.update(data)?;
                s.sign_to_vec()
            }
            Algorithm::Ed25519Sha256 => {
                let digest = hash(MessageDigest::sha256(), data)?;
                let mut s = Signer::new_without_digest(&self.key)?;
                s.sign_oneshot_to_vec(&digest)
            }
        }
    }

    /// What identifies the key in a comparison: a reloaded configuration
    /// with the same keys changes nothing.
    fn identity(&self) -> (&str, &str, &[u8], &[String]) {
        (&self.domain, &self.selector, &self.public, &self.headers)
    }
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}

impl fmt::Debug for SigningKey {
    /// Never the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// A new private key as PKCS#8 PEM: RSA of `bits` bits, or Ed25519.
pub fn generate_pem(algorithm: Algorithm, bits: u32) -> Result<Vec<u8>, KeyError> {
    let key = match algorithm {
        Algorithm::RsaSha256 => {
            if !(MIN_RSA_BITS..=8192).contains(&bits) {
                return Err(KeyError::Invalid {
                    what: "bits",
                    value: bits.to_string(),
                    reason: "an RSA key has 1024 to 8192 bits (2048 is usual)",
                });
            }
            PKey::from_rsa(openssl::rsa::Rsa::generate(bits)?)?
        }
        Algorithm::Ed25519Sha256 => PKey::generate_ed25519()?,
    };
    Ok(key.private_key_to_pem_pkcs8()?)
}

/// The domain in A-label form, lower case, without a final dot.
pub(crate) fn check_domain(domain: &str) -> Result<String, KeyError> {
    crate::delivery::dns::to_ascii(domain).map_err(|_| KeyError::Invalid {
        what: "domain",
        value: domain.into(),
        reason: "must be a domain name",
    })
}

/// A selector: one or more DNS labels of letters, digits and hyphens.
pub(crate) fn check_selector(selector: &str) -> Result<String, KeyError> {
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if selector.split('.').all(label_ok) {
        Ok(selector.to_ascii_lowercase())
    } else {
        Err(KeyError::Invalid {
            what: "selector",
            value: selector.into(),
            reason: "must be DNS labels of letters, digits and hyphens (s1, 2026-01)",
        })
    }
}

/// The header list, lower case, each name once; `from` must be there.
pub(crate) fn check_headers(headers: &[String]) -> Result<Vec<String>, KeyError> {
    let mut out: Vec<String> = Vec::new();
    for h in headers {
        let name = h.trim().to_ascii_lowercase();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(KeyError::Invalid {
                what: "headers",
                value: h.clone(),
                reason: "must be header field names",
            });
        }
        if name == "dkim-signature" {
            return Err(KeyError::Invalid {
                what: "headers",
                value: h.clone(),
                reason: "a signature does not sign DKIM-Signature fields",
            });
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    if !out.iter().any(|h| h == "from") {
        return Err(KeyError::Invalid {
            what: "headers",
            value: headers.join(", "),
            reason: "must include from (RFC 6376 section 5.4)",
        });
    }
    Ok(out)
}

/// The first line of an OpenSSL error stack, the one that says what.
fn first_reason(e: &openssl::error::ErrorStack) -> String {
    e.errors()
        .first()
        .and_then(|e| e.reason().map(str::to_string))
        .unwrap_or_else(|| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pem: &[u8]) -> Result<SigningKey, KeyError> {
        SigningKey::from_pem("Example.ORG", "s1", pem, Path::new("k.pem"))
    }

    #[test]
    fn generated_keys_load_with_their_algorithm() {
        let rsa = load(&generate_pem(Algorithm::RsaSha256, 2048).unwrap()).unwrap();
        assert_eq!(rsa.algorithm(), Algorithm::RsaSha256);
        assert_eq!(rsa.bits(), 2048);
        assert_eq!(rsa.domain(), "example.org");
        assert!(rsa.record().starts_with("v=DKIM1; k=rsa; p=MIIBIjAN"));
        let ed = load(&generate_pem(Algorithm::Ed25519Sha256, 0).unwrap()).unwrap();
        assert_eq!(ed.algorithm(), Algorithm::Ed25519Sha256);
        assert_eq!(ed.public_key().len(), 32);
        assert_eq!(ed.record_name(), "s1._domainkey.example.org");
    }

    #[test]
    fn a_pkcs1_rsa_key_loads() {
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let pem = rsa.private_key_to_pem().unwrap();
        assert!(pem.starts_with(b"-----BEGIN RSA PRIVATE KEY-----"));
        assert_eq!(load(&pem).unwrap().algorithm(), Algorithm::RsaSha256);
    }

    #[test]
    fn bad_keys_are_named() {
        assert!(matches!(load(b"garbage"), Err(KeyError::Parse { .. })));
        let ec = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap();
        let pem = PKey::from_ec_key(ec)
            .unwrap()
            .private_key_to_pem_pkcs8()
            .unwrap();
        assert!(matches!(load(&pem), Err(KeyError::Unsupported { .. })));
        let short = PKey::from_rsa(openssl::rsa::Rsa::generate(512).unwrap()).unwrap();
        let pem = short.private_key_to_pem_pkcs8().unwrap();
        assert!(matches!(
            load(&pem),
            Err(KeyError::TooShort { bits: 512, .. })
        ));
    }

    #[test]
    fn headers_must_name_from_and_selectors_must_be_labels() {
        let pem = generate_pem(Algorithm::Ed25519Sha256, 0).unwrap();
        let k = load(&pem).unwrap();
        assert!(k.with_headers(&["Subject".into()]).is_err());
        let k = load(&pem).unwrap();
        let k = k
            .with_headers(&["Subject".into(), "FROM".into(), "subject".into()])
            .unwrap();
        assert_eq!(k.headers(), ["subject", "from"]);
        assert!(SigningKey::from_pem("example.org", "a b", &pem, Path::new("k")).is_err());
    }
}
