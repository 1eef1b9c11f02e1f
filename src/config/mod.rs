//! The TOML configuration file: typed sections, built-in defaults and
//! validation. Unknown keys are errors, so a typo never goes unnoticed.

mod build;
mod defaults;
mod dkim;
mod duration;
mod local;
mod logs;
mod rate;
mod route;
mod target;
mod validate;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::queue::options::QueueOptions;

pub use crate::date::format_duration;
pub use crate::smtp::bare_newline::BareNewline;
pub use crate::smtp::tls_policy::TlsPolicy;
pub use build::{
    build_delivery, build_mta_sts, build_target, destination_limit, PasswordFileError, TargetError,
};
pub use dkim::DkimConfig;
pub use duration::{parse_duration, BadDuration};
pub use local::LocalConfig;
pub use logs::{LogConfig, LogFormat, LogLevel};
pub use route::{RouteConfig, TargetList};
pub use target::{BadTarget, TargetSpec};

/// A configuration that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file named.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file is not TOML, has an unknown key or a value of the wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file, or `<string>` for [`Config::from_toml`].
        path: PathBuf,
        /// What the TOML parser said, and where.
        message: String,
    },
    /// A value that parses but makes no sense (a zero timeout, say).
    #[error("config: {key} = {value}: {reason}")]
    Invalid {
        /// The key, with its section: `queue.workers`.
        key: &'static str,
        /// The value as the file wrote it.
        value: String,
        /// What the value must be.
        reason: &'static str,
    },
    /// A `[[route]]` value that parses but makes no sense.
    #[error("config: route {index} ({matches}): {key} = {value}: {reason}")]
    Route {
        /// The route's place in the file, from 1.
        index: usize,
        /// What the route matches, to tell it by.
        matches: String,
        /// The key within the route: `username`.
        key: String,
        /// The value as the file wrote it (or as `[delivery]` gave it).
        value: String,
        /// What the value must be.
        reason: &'static str,
    },
    /// A `[[dkim]]` entry whose values or key cannot be used.
    #[error("config: {entry}: {reason}")]
    Dkim {
        /// The entry: its place in the file, domain and selector.
        entry: String,
        /// What is wrong.
        reason: String,
    },
}

/// The whole configuration. `Config::default()` is the built-in one.
///
/// ```
/// use mailqueue::Config;
/// let c = Config::from_toml("[queue]\nworkers = 4\ninitial_retry = \"90s\"\n").unwrap();
/// assert_eq!(c.queue.workers, 4);
/// assert_eq!(c.queue.initial_retry.as_secs(), 90);
/// assert!(Config::from_toml("[queue]\nworkerz = 4\n").is_err());
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Our name in EHLO, Received headers and as the Reporting-MTA of
    /// notices. Default: the system host name.
    pub hostname: String,
    /// The spool directory, where messages are kept.
    pub spool: PathBuf,
    /// `[queue]`: workers, retries and quotas.
    pub queue: QueueConfig,
    /// `[listen]`: the SMTP listener.
    pub listen: ListenConfig,
    /// `[delivery]`: where mail goes and how.
    pub delivery: DeliveryConfig,
    /// `[bounce]`: delivery status notifications to senders.
    pub bounce: BounceConfig,
    /// `[metrics]`: the Prometheus metrics endpoint.
    pub metrics: MetricsConfig,
    /// `[log]`: the shape of the daemon's log lines.
    pub log: LogConfig,
    /// `[local]`: the domain of local names, the administrator's address.
    pub local: LocalConfig,
    /// `[[route]]`: where recipients go, in order; no match uses
    /// `[delivery]`.
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// `[[dkim]]`: the keys mail is signed with, by `From:` domain.
    pub dkim: Vec<DkimConfig>,
}

/// `[metrics]`: the daemon's metrics endpoint, in the Prometheus text
/// format, at `http://<listen>/metrics`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct MetricsConfig {
    /// `ip:port` to serve metrics on; empty (the default) turns it off.
    pub listen: String,
}

impl MetricsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "metrics.listen",
                value: format!("{:?}", self.listen),
                reason: "must be ip:port, or empty for no metrics endpoint",
            });
        }
        Ok(())
    }
}

/// `[queue]`: delivery threads, retries, lifetimes and quotas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct QueueConfig {
    /// Delivery threads; also the most attempts running at once (1–4096).
    pub workers: usize,
    /// A recipient is given up after this many tries (also for mail
    /// already queued); at least 1.
    pub max_tries: u32,
    /// Wait after the first failed try; then
    /// `initial_retry × retry_scale^(n−1)`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub initial_retry: Duration,
    /// Growth factor of the wait between tries; at least 1.0.
    pub retry_scale: f64,
    /// Longest wait between two tries; not shorter than `initial_retry`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_retry_interval: Duration,
    /// Mail older than this is given up (RFC 5321 suggests 4–5 days).
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_lifetime: Duration,
    /// The sender is told once when a recipient is still pending after
    /// this; zero turns delay warnings off.
    #[serde(deserialize_with = "duration::deserialize")]
    pub delay_warning: Duration,
    /// Messages queued past which new mail is refused (`452 4.3.1`);
    /// notices are never refused.
    pub max_messages: u64,
    /// Bytes of message text queued past which new mail is refused.
    pub max_bytes: u64,
    /// Bytes that must stay free on the spool's file system, or new mail
    /// is refused; zero skips the check.
    pub min_free_bytes: u64,
}

/// `[listen]`: the SMTP listener and its limits on clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ListenConfig {
    /// Listening addresses as `ip:port`; empty turns the listener off.
    pub smtp: Vec<String>,
    /// Clients allowed to relay; everyone else gets `554 5.7.1` at RCPT.
    pub relay_networks: Vec<IpNet>,
    /// Largest message accepted, in bytes (advertised as SIZE).
    pub max_message_size: u64,
    /// Most recipients in one transaction.
    pub max_recipients: usize,
    /// Most simultaneous clients; more get `421 4.7.0`.
    pub max_connections: usize,
    /// Certificate chain (PEM) offered with STARTTLS; empty for no
    /// STARTTLS. Set with `tls_key` or neither.
    pub tls_cert: PathBuf,
    /// PKCS#8 private key (PEM) of `tls_cert`; empty for no STARTTLS.
    pub tls_key: PathBuf,
    /// How long a client may stay silent between commands.
    #[serde(deserialize_with = "duration::deserialize")]
    pub command_timeout: Duration,
    /// How long a client may stay silent while sending DATA.
    #[serde(deserialize_with = "duration::deserialize")]
    pub data_timeout: Duration,
    /// What a line ended by a bare LF (no CR before it) gets.
    pub bare_newline: BareNewline,
}

/// `[delivery]`: the next hop, TLS, credentials and timeouts of
/// outgoing connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct DeliveryConfig {
    /// Where messages go: the recipients' MX hosts or one next hop.
    pub target: TargetSpec,
    /// How hard outgoing connections insist on TLS.
    pub tls: TlsPolicy,
    /// Extra trust roots (PEM) besides the system's: what `tls =
    /// "verify"` checks against, and under the other policies what the
    /// log's `tls=... verified` is judged by; empty for none.
    pub ca_file: PathBuf,
    /// AUTH PLAIN/LOGIN user at a smarthost (never with `target =
    /// "remote"`); empty for no AUTH. Set with `password_file` or neither.
    pub username: String,
    /// File holding only the AUTH password; it must belong to the
    /// daemon's user and not be readable by group or others.
    pub password_file: PathBuf,
    /// Lets AUTH go over TLS whose certificate is not checked (`may`,
    /// `encrypt`), so to whoever answers; `check` warns about it.
    pub tls_insecure_auth: bool,
    /// Port used on MX hosts.
    pub mx_port: u16,
    /// DNS servers as `ip` or `ip:port`; empty reads `/etc/resolv.conf`.
    pub dns_servers: Vec<String>,
    /// How long one DNS query waits for an answer from one server.
    #[serde(deserialize_with = "duration::deserialize")]
    pub dns_timeout: Duration,
    /// DANE for MX delivery (RFC 7672): an MX host with DNSSEC-signed,
    /// usable TLSA records gets TLS with a certificate they name, or no
    /// mail. Only with DNS servers on loopback (a validating resolver),
    /// whose AD bit can be trusted; `check` warns otherwise.
    pub dane: bool,
    /// Most connections open to one destination at once: to each
    /// recipient domain with `target = "remote"` (never more than four
    /// fifths of the workers), to the next hop with a relay target.
    ///
    /// One key for both kinds of target, not a second one for relays: a
    /// target is one kind or the other, so the two would never both
    /// apply, and "destination" already means the domain for the MX
    /// client and the host for a relay (as in Postfix, whose
    /// `default_destination_concurrency_limit` covers a relayhost too).
    /// A `[[route]]`'s `concurrency` overlays this key for its target.
    pub destination_concurrency: usize,
    /// Most messages per interval to one destination (the next hop, or
    /// each recipient domain with `target = "remote"`), as `"55/1m"`: a
    /// burst of up to the count, refilled evenly. `None` (absent or
    /// `""`): no limit.
    #[serde(deserialize_with = "rate::deserialize")]
    pub rate: Option<crate::delivery::limits::Rate>,
    /// How long an idle connection to the next hop is kept for the next
    /// message to the same destination; "0s" turns reuse off.
    #[serde(deserialize_with = "duration::deserialize")]
    pub connection_cache_time: Duration,
    /// How long opening a connection to the next hop may take.
    #[serde(deserialize_with = "duration::deserialize")]
    pub connect_timeout: Duration,
    /// Most time for sending one command (or a pipelined envelope) and
    /// reading its whole reply.
    #[serde(deserialize_with = "duration::deserialize")]
    pub command_timeout: Duration,
    /// Most time for sending the whole message text, and again for the
    /// reply to the final dot.
    #[serde(deserialize_with = "duration::deserialize")]
    pub data_timeout: Duration,
    /// Local IP address outgoing connections (to the next hop or to MX
    /// hosts) are bound to, for a host with several addresses whose mail
    /// must come from one (its SPF record, its reverse DNS); empty (the
    /// default) lets the kernel choose. Addresses of the other family are
    /// not tried.
    pub source_address: String,
    /// Address families outgoing connections use: `"any"` (the default;
    /// IPv6 addresses first), `"4"` or `"6"`. With `target = "remote"`
    /// the other family's DNS records are not even looked up.
    pub ip_version: crate::delivery::outbound::IpVersion,
    /// Most messages one connection carries (with connection reuse)
    /// before it is closed with QUIT and the next message opens a new
    /// one; 0 for no limit. The default, 100, lets a steady stream renew
    /// its connection now and then (a server's load balancer gets to
    /// spread it, a server that limits messages per connection is not
    /// reached unawares) at the cost of one new TCP and TLS handshake per
    /// hundred messages. Postfix sets no count (0) but closes a reused
    /// connection after 300 s, a limit this queue does not have; maddy
    /// closes after 10 messages, which redoes the handshake ten times as
    /// often.
    pub messages_per_connection: u32,
    /// Apply the recipient domains' MTA-STS policies (RFC 8461) to MX
    /// delivery: under `enforce`, mail goes only to the MX hosts a policy
    /// names, over TLS verified for their names. Policies are kept in
    /// `<spool>/mta-sts/`. Only for `target = "remote"` (and remote
    /// routes); a relay target is unaffected.
    pub mta_sts: bool,
    /// The HTTPS port policies are fetched from: 443. For tests only,
    /// which serve policies on a port of their own.
    pub mta_sts_port: u16,
}

/// `[bounce]`: delivery status notifications (RFC 3464) to senders.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct BounceConfig {
    /// Send notices at all; off, failures are only logged.
    pub enabled: bool,
    /// From address of notices; empty means `MAILER-DAEMON@<hostname>`.
    pub from: String,
    /// Where notices go; `None` (`""` in the file) means the delivery
    /// target.
    #[serde(deserialize_with = "target::deserialize_optional")]
    pub target: Option<TargetSpec>,
    /// Largest message, in bytes, returned whole for RET=FULL; larger
    /// ones get their header returned.
    pub max_return_size: u64,
}

impl Config {
    /// Parses and validates a configuration from TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::parse(text, Path::new("<string>"))
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// What `check` and `serve` warn about: allowed, but risky.
    pub fn warnings(&self) -> Vec<String> {
        let d = &self.delivery;
        let mut w = Vec::new();
        if !d.username.is_empty() && d.tls != TlsPolicy::Verify && d.tls_insecure_auth {
            w.push(format!(
                "delivery.tls_insecure_auth = true: the password for {:?} is sent without \
                 checking the server's certificate (tls = \"verify\" checks it)",
                d.username
            ));
        }
        if d.dane {
            let resolver = crate::delivery::dns::Resolver::new(&d.dns_servers, d.dns_timeout);
            if resolver.is_ok_and(|r| !r.is_local()) {
                w.push(crate::delivery::dane::NOT_LOCAL.to_string());
            }
        }
        w.extend(self.route_warnings());
        w.extend(self.dkim_warnings());
        w
    }

    /// What the queue needs of this configuration.
    pub fn queue_options(&self) -> QueueOptions {
        let (q, b) = (&self.queue, &self.bounce);
        let mut o = QueueOptions::new(self.spool.clone());
        o.hostname = self.hostname.clone();
        o.workers = q.workers;
        o.retry.initial = q.initial_retry;
        o.retry.scale = q.retry_scale;
        o.retry.max_interval = q.max_retry_interval;
        o.retry.max_tries = q.max_tries;
        o.retry.max_lifetime = q.max_lifetime;
        o.delay_warning = q.delay_warning;
        o.limits.max_messages = q.max_messages;
        o.limits.max_bytes = q.max_bytes;
        o.limits.min_free_bytes = q.min_free_bytes;
        o.notices.enabled = b.enabled;
        o.notices.from = b.from.clone();
        o.notices.max_return_size = b.max_return_size;
        o
    }

    /// The `From:` of notices: `bounce.from`, or `MAILER-DAEMON@` the
    /// hostname.
    pub fn bounce_from(&self) -> String {
        self.queue_options().notice_from()
    }
}
