//! The TOML configuration file: typed sections, built-in defaults and
//! validation. Unknown keys are errors, so a typo never goes unnoticed.

mod defaults;
mod duration;
mod target;
mod validate;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::queue::options::QueueOptions;

pub use duration::{format_duration, parse_duration, BadDuration};
pub use target::{BadTarget, TargetSpec};

/// A configuration that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {key} = {value}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: &'static str,
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
    /// Used in EHLO, Received headers and as the DSN Reporting-MTA.
    pub hostname: String,
    pub spool: PathBuf,
    pub queue: QueueConfig,
    pub listen: ListenConfig,
    pub delivery: DeliveryConfig,
    pub bounce: BounceConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub workers: usize,
    pub max_tries: u32,
    #[serde(deserialize_with = "duration::deserialize")]
    pub initial_retry: Duration,
    pub retry_scale: f64,
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_retry_interval: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_lifetime: Duration,
    /// Zero turns delay warnings off.
    #[serde(deserialize_with = "duration::deserialize")]
    pub delay_warning: Duration,
    pub max_messages: u64,
    pub max_bytes: u64,
    pub min_free_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    pub smtp: Vec<String>,
    pub relay_networks: Vec<IpNet>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub tls_cert: PathBuf,
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

/// What the listener does with a bare LF in a command or in DATA.
///
/// Either way DATA ends only at `<CR><LF>.<CR><LF>`: a bare LF never
/// takes part in the end of data, so a message cannot carry a second
/// transaction past a front MTA that reads line ends differently (SMTP
/// smuggling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareNewline {
    /// Read a bare LF as CRLF within lines (old mailers send it).
    #[default]
    Normalize,
    /// Refuse the message or command with `550 5.5.2` and end the session.
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    pub target: TargetSpec,
    pub tls: TlsPolicy,
    pub ca_file: PathBuf,
    pub username: String,
    pub password_file: PathBuf,
    /// Lets AUTH go over TLS whose certificate is not checked (`may`,
    /// `encrypt`), so to whoever answers; `check` warns about it.
    pub tls_insecure_auth: bool,
    pub mx_port: u16,
    pub dns_servers: Vec<String>,
    /// How long one DNS query waits for an answer from one server.
    #[serde(deserialize_with = "duration::deserialize")]
    pub dns_timeout: Duration,
    /// Most connections open to one destination domain at once.
    pub destination_concurrency: usize,
    /// How long an idle connection to the next hop is kept for the next
    /// message to the same destination; "0s" turns reuse off.
    #[serde(deserialize_with = "duration::deserialize")]
    pub connection_cache_time: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub command_timeout: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub data_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BounceConfig {
    pub enabled: bool,
    /// Empty means `MAILER-DAEMON@<hostname>`.
    pub from: String,
    /// Where notices go; `None` means the delivery target.
    #[serde(deserialize_with = "target::deserialize_optional")]
    pub target: Option<TargetSpec>,
    /// Largest message returned whole for RET=FULL; larger ones get
    /// their header returned.
    pub max_return_size: u64,
}

/// How hard the client insists on TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
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
        w
    }

    /// The sender named in the From header of notices.
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

    /// The `From:` of notices.
    pub fn bounce_from(&self) -> String {
        self.queue_options().notice_from()
    }
}
