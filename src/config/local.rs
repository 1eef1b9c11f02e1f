//! `[local]`: how the sendmail command completes local names, as
//! nullmailer's `defaultdomain`/`adminaddr` and dma's `MASQUERADE` do.

use serde::Deserialize;

use crate::address::Address;

use super::ConfigError;

/// `[local]`: the domain of local names and where the administrative
/// mailboxes go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct LocalConfig {
    /// The domain added to names without one (`sendmail root`) and to the
    /// default sender (the caller's login name); empty for `hostname`.
    pub domain: String,
    /// Where mail to `root`, `postmaster` and `MAILER-DAEMON` of this
    /// host goes (unqualified, or at `domain`, `hostname` or
    /// `localhost`); empty to leave it as addressed.
    pub admin: String,
}

/// The local parts that name the host's administrator.
const ADMIN_NAMES: [&str; 3] = ["root", "postmaster", "mailer-daemon"];

impl LocalConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.domain.is_empty() && Address::parse(&format!("x@{}", self.domain)).is_err() {
            return Err(ConfigError::Invalid {
                key: "local.domain",
                value: format!("{:?}", self.domain),
                reason: "must be a domain name, or empty for the hostname",
            });
        }
        if !self.admin.is_empty() && Address::parse(&self.admin).is_err() {
            return Err(ConfigError::Invalid {
                key: "local.admin",
                value: format!("{:?}", self.admin),
                reason: "must be an address, or empty",
            });
        }
        Ok(())
    }

    /// The domain of local names: `domain`, or else `hostname`.
    pub fn domain_or<'a>(&'a self, hostname: &'a str) -> &'a str {
        if self.domain.is_empty() {
            hostname
        } else {
            &self.domain
        }
    }

    /// `address` as it is delivered: the administrator's mailboxes of
    /// this host go to `admin` when one is set.
    pub fn rewrite(&self, address: Address, hostname: &str) -> Address {
        if self.admin.is_empty() {
            return address;
        }
        let local = address.local_part().to_ascii_lowercase();
        let domain = address.domain();
        let ours = [self.domain_or(hostname), hostname, "localhost"]
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain));
        if ours && ADMIN_NAMES.contains(&local.as_str()) {
            Address::parse(&self.admin).unwrap_or(address)
        } else {
            address
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LocalConfig;

    fn local(domain: &str, admin: &str) -> LocalConfig {
        LocalConfig {
            domain: domain.into(),
            admin: admin.into(),
        }
    }

    #[test]
    fn the_admin_mailboxes_of_this_host_go_to_admin() {
        let l = local("example.com", "ops@example.org");
        let r = |a: &str| l.rewrite(a.parse().unwrap(), "mx.example.com").to_string();
        assert_eq!(r("root@example.com"), "ops@example.org");
        assert_eq!(r("Postmaster@mx.example.com"), "ops@example.org");
        assert_eq!(r("MAILER-DAEMON@localhost"), "ops@example.org");
        assert_eq!(r("root@elsewhere.example"), "root@elsewhere.example");
        assert_eq!(r("bob@example.com"), "bob@example.com");
        let none = local("", "");
        assert_eq!(
            none.rewrite("root@mx.test".parse().unwrap(), "mx.test")
                .to_string(),
            "root@mx.test"
        );
        assert_eq!(none.domain_or("mx.test"), "mx.test");
        assert_eq!(l.domain_or("mx.test"), "example.com");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(local("not a domain", "").validate().is_err());
        assert!(local("", "not an address").validate().is_err());
        assert!(local("example.com", "ops@example.org").validate().is_ok());
    }
}
