//! `[[route]]`: which recipients go where, in order; the first match
//! wins and recipients no route matches go to `[delivery]`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{duration, rate, target, Config, ConfigError, DeliveryConfig, TargetSpec, TlsPolicy};
use crate::address::{Address, ReversePath};
use crate::delivery::limits::Rate;
use crate::delivery::outbound::IpVersion;
use crate::delivery::routing::{route_matches, DomainPattern, SenderPattern};

/// One `[[route]]` entry. Every key but `domains` and `target` is
/// optional and stands for `[delivery]`'s value when left out, except the
/// credentials: `username` and `password_file` belong to the route that
/// names them, so that a route to another relay never sends it the
/// smarthost's password.
///
/// ```
/// let c = mailqueue::Config::from_toml(r#"
/// [[route]]
/// domains = ["example.net", ".example.net"]
/// target = ["smtp://127.0.0.1:2525", "smtp://127.0.0.1:2526"]
/// "#).unwrap();
/// assert_eq!(c.routes[0].target.0.len(), 2);
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// Recipient domains: `example.net`, `.example.net` (its
    /// subdomains), `*` (every domain).
    pub domains: Vec<DomainPattern>,
    /// Senders: an address, a domain, `.domain`, `<>`; empty for every
    /// sender.
    #[serde(default)]
    pub senders: Vec<SenderPattern>,
    /// The targets, tried in order within an attempt: the next one takes
    /// the recipients the one before could not (no connection, a TLS
    /// failure, a `421`).
    pub target: TargetList,
    /// With `target = "remote"`: a relay that takes the recipients the
    /// MX hosts defer or that cannot be reached.
    #[serde(default, deserialize_with = "target::deserialize_optional")]
    pub fallback: Option<TargetSpec>,
    /// As `[delivery] tls`.
    #[serde(default)]
    pub tls: Option<TlsPolicy>,
    /// As `[delivery] ca_file`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// AUTH user at this route's relays (not inherited).
    #[serde(default)]
    pub username: String,
    /// File holding the AUTH password (not inherited).
    #[serde(default)]
    pub password_file: PathBuf,
    /// As `[delivery] tls_insecure_auth`.
    #[serde(default)]
    pub tls_insecure_auth: Option<bool>,
    /// As `[delivery] connect_timeout`.
    #[serde(default, deserialize_with = "duration::deserialize_some")]
    pub connect_timeout: Option<Duration>,
    /// As `[delivery] command_timeout`.
    #[serde(default, deserialize_with = "duration::deserialize_some")]
    pub command_timeout: Option<Duration>,
    /// As `[delivery] data_timeout`.
    #[serde(default, deserialize_with = "duration::deserialize_some")]
    pub data_timeout: Option<Duration>,
    /// As `[delivery] connection_cache_time`.
    #[serde(default, deserialize_with = "duration::deserialize_some")]
    pub connection_cache_time: Option<Duration>,
    /// Messages per interval to this route's destination (`"55/1m"`):
    /// each relay, or each recipient domain with `remote`; `""` lifts
    /// `[delivery]`'s rate.
    #[serde(default, deserialize_with = "rate::deserialize_some")]
    pub rate: Option<Option<Rate>>,
    /// Most connections at once to each relay of this route, or to each
    /// recipient domain with `remote` (`[delivery]
    /// destination_concurrency`).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// As `[delivery] source_address`.
    #[serde(default)]
    pub source_address: Option<String>,
    /// As `[delivery] ip_version`.
    #[serde(default)]
    pub ip_version: Option<IpVersion>,
    /// As `[delivery] messages_per_connection`.
    #[serde(default)]
    pub messages_per_connection: Option<u32>,
    /// As `[delivery] mta_sts` (for `target = "remote"`).
    #[serde(default)]
    pub mta_sts: Option<bool>,
    /// The name this route's connections give in EHLO (it should match
    /// the PTR of their source address); `hostname` when left out.
    #[serde(default)]
    pub helo_name: Option<String>,
}

/// One target or several, tried in order: `target = "smtp://a:25"` or
/// `target = ["smtp://a:25", "smtp://b:25"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetList(pub Vec<TargetSpec>);

impl<'de> Deserialize<'de> for TargetList {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let texts = match OneOrMany::deserialize(de)? {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(ts) => ts,
        };
        texts
            .iter()
            .map(|t| t.parse().map_err(serde::de::Error::custom))
            .collect::<Result<_, _>>()
            .map(TargetList)
    }
}

impl fmt::Display for TargetList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", then ")?;
            }
            t.fmt(f)?;
        }
        Ok(())
    }
}

impl RouteConfig {
    /// `[delivery]` as this route changes it (its first target as
    /// `target`).
    pub fn delivery(&self, base: &DeliveryConfig) -> DeliveryConfig {
        let mut d = base.clone();
        if let Some(t) = self.target.0.first() {
            d.target = t.clone();
        }
        d.tls = self.tls.unwrap_or(d.tls);
        if let Some(ca) = &self.ca_file {
            d.ca_file.clone_from(ca);
        }
        d.username.clone_from(&self.username);
        d.password_file.clone_from(&self.password_file);
        d.tls_insecure_auth = self.tls_insecure_auth.unwrap_or(d.tls_insecure_auth);
        d.connect_timeout = self.connect_timeout.unwrap_or(d.connect_timeout);
        d.command_timeout = self.command_timeout.unwrap_or(d.command_timeout);
        d.data_timeout = self.data_timeout.unwrap_or(d.data_timeout);
        d.connection_cache_time = self
            .connection_cache_time
            .unwrap_or(d.connection_cache_time);
        if let Some(rate) = self.rate {
            d.rate = rate;
        }
        d.destination_concurrency = self.concurrency.unwrap_or(d.destination_concurrency);
        if let Some(source) = &self.source_address {
            d.source_address.clone_from(source);
        }
        d.ip_version = self.ip_version.unwrap_or(d.ip_version);
        d.messages_per_connection = self
            .messages_per_connection
            .unwrap_or(d.messages_per_connection);
        d.mta_sts = self.mta_sts.unwrap_or(d.mta_sts);
        d
    }

    /// The whole configuration as this route's targets see it: its
    /// `[delivery]` and its EHLO name.
    pub fn config(&self, base: &Config) -> Config {
        let mut c = base.clone();
        c.routes.clear();
        c.delivery = self.delivery(&base.delivery);
        if let Some(helo) = &self.helo_name {
            c.hostname.clone_from(helo);
        }
        c
    }

    /// Whether mail from `sender` to `rcpt` takes this route.
    pub fn matches(&self, sender: &ReversePath, rcpt: &Address) -> bool {
        route_matches(&self.domains, &self.senders, sender, rcpt)
    }

    /// Takes every recipient whatever the sender: the routes after it
    /// are never used.
    fn takes_everything(&self) -> bool {
        self.senders.is_empty() && self.domains.contains(&DomainPattern::Any)
    }

    /// What it matches, for messages: `example.net, .example.net`.
    pub fn describe(&self) -> String {
        let list = |items: Vec<String>| items.join(", ");
        let mut s = list(self.domains.iter().map(|d| d.to_string()).collect());
        if !self.senders.is_empty() {
            s.push_str(" from ");
            s.push_str(&list(self.senders.iter().map(|p| p.to_string()).collect()));
        }
        s
    }
}

impl Config {
    /// The configuration a target named on its own runs with (`mailqueue
    /// requeue --target`): that of the first route that lists it, else
    /// `[delivery]`'s, without `[delivery]`'s credentials unless it is
    /// `[delivery]`'s own target, so that a mistyped URL never hands the
    /// smarthost's password to another server.
    pub fn config_for_target(&self, spec: &TargetSpec) -> Config {
        let listed =
            |r: &&RouteConfig| r.target.0.contains(spec) || r.fallback.as_ref() == Some(spec);
        if let Some(route) = self.routes.iter().find(listed) {
            return route.config(self);
        }
        let mut c = self.clone();
        c.routes.clear();
        if *spec != self.delivery.target {
            c.delivery.username.clear();
            c.delivery.password_file = PathBuf::new();
        }
        c
    }

    /// The route (1-based, as `mailqueue routes` numbers them) mail from
    /// `sender` to `rcpt` takes; `None` for `[delivery]`.
    pub fn route_for(&self, sender: &ReversePath, rcpt: &Address) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.matches(sender, rcpt))
            .map(|i| i + 1)
    }

    /// Each route's values that parse but make no sense, named with the
    /// route.
    pub(super) fn validate_routes(&self) -> Result<(), ConfigError> {
        for (i, r) in self.routes.iter().enumerate() {
            r.validate(self).map_err(|e| route_error(i + 1, r, e))?;
        }
        Ok(())
    }

    /// Routes that can never take mail, for `check` and `serve` to warn
    /// about.
    pub(super) fn route_warnings(&self) -> Vec<String> {
        let Some(all) = self.routes.iter().position(RouteConfig::takes_everything) else {
            return Vec::new();
        };
        (all + 1..self.routes.len())
            .map(|i| {
                format!(
                    "route {} ({}) is never used: route {} ({}) before it takes every recipient",
                    i + 1,
                    self.routes[i].describe(),
                    all + 1,
                    self.routes[all].describe()
                )
            })
            .collect()
    }
}

/// A route's error, named with the route: `route 2 (example.net): ...`.
fn route_error(index: usize, route: &RouteConfig, e: ConfigError) -> ConfigError {
    match e {
        ConfigError::Invalid { key, value, reason } => ConfigError::Route {
            index,
            matches: route.describe(),
            key: key.trim_start_matches("delivery.").to_string(),
            value,
            reason,
        },
        other => other,
    }
}

fn invalid(key: &'static str, value: impl fmt::Display, reason: &'static str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason,
    }
}

impl RouteConfig {
    fn validate(&self, base: &Config) -> Result<(), ConfigError> {
        if self.domains.is_empty() {
            return Err(invalid(
                "domains",
                "[]",
                "matches nothing: name a domain or \"*\"",
            ));
        }
        if self.target.0.is_empty() {
            return Err(invalid("target", "[]", "names no target"));
        }
        self.validate_fallback()?;
        self.validate_own_keys()?;
        self.validate_credentials(base)
    }

    /// A fallback is a relay, behind MX delivery only.
    fn validate_fallback(&self) -> Result<(), ConfigError> {
        let remote = self.target.0.contains(&TargetSpec::Remote);
        match &self.fallback {
            Some(TargetSpec::Remote) => {
                return Err(invalid(
                    "fallback",
                    "\"remote\"",
                    "must be a relay (smtp://, smtps://, lmtp://)",
                ))
            }
            Some(f) if !remote => {
                return Err(invalid(
                    "fallback",
                    format!("{:?}", f.to_string()),
                    "is for target = \"remote\": a relay's backup goes after it in the \
                     target list",
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// The keys only a route has, or whose bounds differ from `[delivery]`'s.
    fn validate_own_keys(&self) -> Result<(), ConfigError> {
        if let Some(helo) = &self.helo_name {
            if helo.is_empty() || Address::parse(&format!("x@{helo}")).is_err() {
                return Err(invalid(
                    "helo_name",
                    format!("{helo:?}"),
                    "must be a domain name",
                ));
            }
        }
        if self.concurrency == Some(0) {
            return Err(invalid("concurrency", 0, "must be at least 1"));
        }
        for (key, d) in [
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
            ("data_timeout", self.data_timeout),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(invalid(key, "\"0s\"", "must be longer than zero"));
            }
        }
        Ok(())
    }

    /// The route's settings merged over `[delivery]`'s, checked as
    /// `[delivery]`'s are.
    fn validate_credentials(&self, base: &Config) -> Result<(), ConfigError> {
        // Credentials are checked against each relay, as `[delivery]`'s
        // are against its target: never to MX hosts, never in clear.
        let relays: Vec<&TargetSpec> = self
            .target
            .0
            .iter()
            .chain(&self.fallback)
            .filter(|t| **t != TargetSpec::Remote)
            .collect();
        let mut d = self.delivery(&base.delivery);
        d.validate_outbound()?;
        if relays.is_empty() {
            return d.validate_auth();
        }
        for t in relays {
            d.target = t.clone();
            d.validate_auth()?;
        }
        Ok(())
    }
}
