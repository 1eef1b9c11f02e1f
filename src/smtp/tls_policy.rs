//! How hard the SMTP client insists on TLS: `[delivery] tls`.

use serde::Deserialize;

/// How hard the client insists on TLS; `[delivery] tls` in the
/// configuration file (`"none"`, `"may"`, `"encrypt"` or `"verify"`).
///
/// An `smtps://` target always uses TLS from the first byte; there `none`
/// counts as `encrypt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TlsPolicy {
    /// Never use TLS.
    None,
    /// STARTTLS when offered, without checking the certificate.
    May,
    /// STARTTLS required, certificate not checked.
    Encrypt,
    /// STARTTLS required and the certificate must verify for the host name.
    Verify,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Key {
        tls: TlsPolicy,
    }

    fn parse(text: &str) -> Result<TlsPolicy, toml::de::Error> {
        toml::from_str::<Key>(text).map(|k| k.tls)
    }

    #[test]
    fn config_file_names() {
        assert_eq!(parse("tls = \"none\"").unwrap(), TlsPolicy::None);
        assert_eq!(parse("tls = \"may\"").unwrap(), TlsPolicy::May);
        assert_eq!(parse("tls = \"encrypt\"").unwrap(), TlsPolicy::Encrypt);
        assert_eq!(parse("tls = \"verify\"").unwrap(), TlsPolicy::Verify);
        assert!(parse("tls = \"Verify\"").is_err());
        assert!(parse("tls = \"required\"").is_err());
    }
}
