//! `[[dkim]]`: the keys mail is signed with when it is queued, one entry
//! per signing domain. The key files are read by [`Config::dkim_signer`]
//! (at start, at each reload, and by `check`), not when the file is
//! parsed, so that a file naming a key this user cannot read still parses
//! for the commands that do not sign.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, ConfigError};
use crate::dkim::key::{check_domain, check_headers, check_selector};
use crate::dkim::{Algorithm, DkimSigner, SigningKey, RECOMMENDED_RSA_BITS};

/// One `[[dkim]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DkimConfig {
    /// Signs mail whose `From:` domain is this one or below it (`d=`).
    pub domain: String,
    /// The selector (`s=`): the record is `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// The private key, PEM: PKCS#8 RSA or Ed25519, or PKCS#1 RSA.
    pub key_file: PathBuf,
    /// The header fields to sign; absent: [`crate::dkim::DEFAULT_HEADERS`].
    #[serde(default)]
    pub headers: Option<Vec<String>>,
}

impl DkimConfig {
    /// `dkim 2 (example.org, selector s1)`, for messages.
    fn describe(&self, index: usize) -> String {
        format!(
            "[[dkim]] {index} ({}, selector {})",
            self.domain, self.selector
        )
    }

    fn error(&self, index: usize, reason: impl std::fmt::Display) -> ConfigError {
        ConfigError::Dkim {
            entry: self.describe(index),
            reason: reason.to_string(),
        }
    }

    /// Reads and checks the key.
    fn load(&self, index: usize) -> Result<SigningKey, ConfigError> {
        let key = SigningKey::from_file(&self.domain, &self.selector, &self.key_file)
            .map_err(|e| self.error(index, e))?;
        match &self.headers {
            Some(h) => key.with_headers(h).map_err(|e| self.error(index, e)),
            None => Ok(key),
        }
    }
}

impl Config {
    /// Checks the `[[dkim]]` values that need no file: domain, selector,
    /// header names, one entry per domain.
    pub(super) fn validate_dkim(&self) -> Result<(), ConfigError> {
        let mut domains: Vec<String> = Vec::new();
        for (i, d) in self.dkim.iter().enumerate() {
            let index = i + 1;
            let domain = check_domain(&d.domain).map_err(|e| d.error(index, e))?;
            check_selector(&d.selector).map_err(|e| d.error(index, e))?;
            if let Some(h) = &d.headers {
                check_headers(h).map_err(|e| d.error(index, e))?;
            }
            if d.key_file.as_os_str().is_empty() {
                return Err(d.error(index, "key_file must name the private key's PEM file"));
            }
            if domains.contains(&domain) {
                return Err(d.error(
                    index,
                    "a second entry for the same domain: a message is signed once, \
                     with one key per domain",
                ));
            }
            domains.push(domain);
        }
        Ok(())
    }

    /// The signer of the `[[dkim]]` keys, each read from its file; an
    /// error names the entry whose key cannot be used.
    pub fn dkim_signer(&self) -> Result<DkimSigner, ConfigError> {
        let keys = self
            .dkim
            .iter()
            .enumerate()
            .map(|(i, d)| d.load(i + 1))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DkimSigner::new(keys))
    }

    /// What `check` and `serve` warn about the keys: a file others may
    /// read (the key is no secret then), a short RSA key.
    pub(super) fn dkim_warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for (i, d) in self.dkim.iter().enumerate() {
            if let Ok(meta) = std::fs::metadata(&d.key_file) {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o004 != 0 {
                    w.push(format!(
                        "{}: key_file {} is readable by others (mode {mode:04o}): \
                         chmod 600 it (or 640, for the daemon's group)",
                        d.describe(i + 1),
                        d.key_file.display()
                    ));
                }
            }
            if let Ok(key) = d.load(i + 1) {
                if key.algorithm() == Algorithm::RsaSha256 && key.bits() < RECOMMENDED_RSA_BITS {
                    w.push(format!(
                        "{}: an RSA key of {} bits; {RECOMMENDED_RSA_BITS} is the usual \
                         minimum (Gmail and others may treat shorter ones as unsigned)",
                        d.describe(i + 1),
                        key.bits()
                    ));
                }
            }
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(tables: &str) -> Result<Config, ConfigError> {
        Config::from_toml(tables)
    }

    #[test]
    fn the_commented_example_parses_with_the_default_headers() {
        let text = include_str!("../../conf/mailqueue.toml");
        let example: String = text
            .lines()
            .skip_while(|l| *l != "#[[dkim]]")
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| !l.is_empty() && !l.starts_with(' '))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&example).unwrap_or_else(|e| panic!("{example}\n{e}"));
        assert_eq!(c.dkim.len(), 1);
        let d = &c.dkim[0];
        assert_eq!(
            (d.domain.as_str(), d.selector.as_str()),
            ("example.org", "s1")
        );
        let listed: Vec<&str> = d
            .headers
            .as_ref()
            .unwrap()
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(listed, crate::dkim::DEFAULT_HEADERS);
    }

    #[test]
    fn bad_entries_are_named() {
        let entry = |extra: &str| {
            format!(
                "[[dkim]]\ndomain = \"example.org\"\nselector = \"s1\"\nkey_file = \"/k.pem\"\n{extra}"
            )
        };
        let e = parse(&entry("headers = [\"subject\"]")).unwrap_err();
        assert!(
            e.to_string()
                .contains("[[dkim]] 1 (example.org, selector s1)")
                && e.to_string().contains("must include from"),
            "{e}"
        );
        let twice = format!("{}\n{}", entry(""), entry(""));
        let e = parse(&twice).unwrap_err();
        assert!(e.to_string().contains("[[dkim]] 2"), "{e}");
        let e = parse(&entry("").replace("s1", "bad selector")).unwrap_err();
        assert!(e.to_string().contains("selector"), "{e}");
        let e = parse(&entry("").replace("/k.pem", "")).unwrap_err();
        assert!(e.to_string().contains("key_file"), "{e}");
        let e = parse(&entry("algorithm = \"rsa\"")).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn a_key_that_cannot_be_read_names_its_entry() {
        let c = parse("[[dkim]]\ndomain = \"example.org\"\nselector = \"s1\"\nkey_file = \"/nonexistent/k.pem\"\n")
            .unwrap();
        let e = c.dkim_signer().unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config: [[dkim]] 1 (example.org, selector s1): cannot read key_file"),
            "{e}"
        );
    }
}
