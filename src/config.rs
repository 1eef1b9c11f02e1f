//! The TOML configuration file: typed sections, built-in defaults and
//! validation. Unknown keys are errors, so a typo never goes unnoticed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::address::Address;

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
    #[serde(deserialize_with = "duration")]
    pub initial_retry: Duration,
    pub retry_scale: f64,
    #[serde(deserialize_with = "duration")]
    pub max_retry_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub max_lifetime: Duration,
    /// Zero turns delay warnings off.
    #[serde(deserialize_with = "duration")]
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
    #[serde(deserialize_with = "duration")]
    pub command_timeout: Duration,
    /// How long a client may stay silent while sending DATA.
    #[serde(deserialize_with = "duration")]
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
    #[serde(deserialize_with = "duration")]
    pub dns_timeout: Duration,
    /// Most connections open to one destination domain at once.
    pub destination_concurrency: usize,
    /// How long an idle connection to the next hop is kept for the next
    /// message to the same destination; "0s" turns reuse off.
    #[serde(deserialize_with = "duration")]
    pub connection_cache_time: Duration,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub command_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub data_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BounceConfig {
    pub enabled: bool,
    /// Empty means `MAILER-DAEMON@<hostname>`.
    pub from: String,
    /// Where notices go; `None` means the delivery target.
    #[serde(deserialize_with = "optional_target")]
    pub target: Option<TargetSpec>,
    /// Largest message returned whole for RET=FULL; larger ones get
    /// their header returned.
    pub max_return_size: u64,
}

/// Where messages are delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// The recipients' MX hosts.
    Remote,
    Smtp {
        host: String,
        port: u16,
    },
    /// SMTP over TLS from the first byte.
    Smtps {
        host: String,
        port: u16,
    },
    Lmtp {
        host: String,
        port: u16,
    },
    LmtpUnix {
        path: PathBuf,
    },
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

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: system_hostname(),
            spool: PathBuf::from("/var/spool/mailqueue"),
            queue: QueueConfig::default(),
            listen: ListenConfig::default(),
            delivery: DeliveryConfig::default(),
            bounce: BounceConfig::default(),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            workers: 16,
            max_tries: 20,
            initial_retry: Duration::from_secs(15 * 60),
            retry_scale: 1.25,
            max_retry_interval: Duration::from_secs(8 * 3600),
            max_lifetime: Duration::from_secs(5 * 86400),
            delay_warning: Duration::from_secs(4 * 3600),
            max_messages: 100_000,
            max_bytes: 10 * 1024 * 1024 * 1024,
            min_free_bytes: 100 * 1024 * 1024,
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            smtp: vec!["127.0.0.1:2525".into()],
            relay_networks: vec![
                "127.0.0.0/8".parse().expect("literal network"),
                "::1/128".parse().expect("literal network"),
            ],
            max_message_size: 32 * 1024 * 1024,
            max_recipients: 1000,
            max_connections: 64,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            command_timeout: Duration::from_secs(5 * 60),
            data_timeout: Duration::from_secs(5 * 60),
            bare_newline: BareNewline::Normalize,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            target: TargetSpec::Remote,
            tls: TlsPolicy::May,
            ca_file: PathBuf::new(),
            username: String::new(),
            password_file: PathBuf::new(),
            tls_insecure_auth: false,
            mx_port: 25,
            dns_servers: Vec::new(),
            dns_timeout: Duration::from_secs(5),
            destination_concurrency: 20,
            connection_cache_time: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(5 * 60),
            data_timeout: Duration::from_secs(10 * 60),
        }
    }
}

impl Default for BounceConfig {
    fn default() -> Self {
        BounceConfig {
            enabled: true,
            from: String::new(),
            target: None,
            max_return_size: 50_000,
        }
    }
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

    /// Checks the values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(
            key: &'static str,
            value: impl fmt::Display,
            reason: &'static str,
        ) -> ConfigError {
            ConfigError::Invalid {
                key,
                value: value.to_string(),
                reason,
            }
        }
        let q = &self.queue;
        if self.hostname.is_empty() || Address::parse(&format!("x@{}", self.hostname)).is_err() {
            return Err(invalid(
                "hostname",
                format!("{:?}", self.hostname),
                "must be a domain name",
            ));
        }
        if self.spool.as_os_str().is_empty() {
            return Err(invalid("spool", "\"\"", "must name a directory"));
        }
        if !(1..=4096).contains(&q.workers) {
            return Err(invalid(
                "queue.workers",
                q.workers,
                "must be between 1 and 4096",
            ));
        }
        if q.max_tries == 0 {
            return Err(invalid(
                "queue.max_tries",
                q.max_tries,
                "must be at least 1",
            ));
        }
        if !(q.retry_scale.is_finite() && q.retry_scale >= 1.0) {
            return Err(invalid(
                "queue.retry_scale",
                q.retry_scale,
                "must be a number of at least 1.0",
            ));
        }
        for (key, d) in [
            ("queue.initial_retry", q.initial_retry),
            ("queue.max_retry_interval", q.max_retry_interval),
            ("queue.max_lifetime", q.max_lifetime),
            ("listen.command_timeout", self.listen.command_timeout),
            ("listen.data_timeout", self.listen.data_timeout),
            ("delivery.dns_timeout", self.delivery.dns_timeout),
            ("delivery.connect_timeout", self.delivery.connect_timeout),
            ("delivery.command_timeout", self.delivery.command_timeout),
            ("delivery.data_timeout", self.delivery.data_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "\"0s\"", "must be longer than zero"));
            }
        }
        if q.max_retry_interval < q.initial_retry {
            return Err(invalid(
                "queue.max_retry_interval",
                format_duration(q.max_retry_interval),
                "must not be shorter than queue.initial_retry",
            ));
        }
        let l = &self.listen;
        for addr in &l.smtp {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    "listen.smtp",
                    format!("{addr:?}"),
                    "must be ip:port",
                ));
            }
        }
        if l.max_message_size == 0 {
            return Err(invalid(
                "listen.max_message_size",
                0,
                "must be more than zero",
            ));
        }
        if l.max_recipients == 0 {
            return Err(invalid("listen.max_recipients", 0, "must be at least 1"));
        }
        if l.max_connections == 0 {
            return Err(invalid("listen.max_connections", 0, "must be at least 1"));
        }
        if l.tls_cert.as_os_str().is_empty() != l.tls_key.as_os_str().is_empty() {
            return Err(invalid(
                "listen.tls_cert",
                l.tls_cert.display(),
                "tls_cert and tls_key must be set together",
            ));
        }
        let d = &self.delivery;
        if d.destination_concurrency == 0 {
            return Err(invalid(
                "delivery.destination_concurrency",
                0,
                "must be at least 1",
            ));
        }
        if d.mx_port == 0 {
            return Err(invalid("delivery.mx_port", 0, "must be a port number"));
        }
        for s in &d.dns_servers {
            if s.parse::<std::net::SocketAddr>().is_err() && s.parse::<std::net::IpAddr>().is_err()
            {
                return Err(invalid(
                    "delivery.dns_servers",
                    format!("{s:?}"),
                    "must be ip or ip:port",
                ));
            }
        }
        if d.username.is_empty() != d.password_file.as_os_str().is_empty() {
            return Err(invalid(
                "delivery.username",
                format!("{:?}", d.username),
                "username and password_file must be set together",
            ));
        }
        if !d.username.is_empty() && d.target == TargetSpec::Remote {
            return Err(invalid(
                "delivery.username",
                format!("{:?}", d.username),
                "credentials are for a smarthost: with target = \"remote\" they would be \
                 offered to every MX host that asks",
            ));
        }
        if !d.username.is_empty() && d.tls == TlsPolicy::None && !d.target.is_local() {
            return Err(invalid(
                "delivery.tls",
                "none",
                "AUTH is never sent in clear but to loopback: the smarthost would refuse \
                 every message; use tls = \"verify\"",
            ));
        }
        if !d.username.is_empty() && d.tls != TlsPolicy::Verify && !d.tls_insecure_auth {
            return Err(invalid(
                "delivery.tls",
                format!("{:?}", d.tls).to_lowercase(),
                "AUTH needs tls = \"verify\", or the password goes to whoever answers; \
                 set tls_insecure_auth = true to send it anyway",
            ));
        }
        if !self.bounce.from.is_empty() && Address::parse(&self.bounce.from).is_err() {
            return Err(invalid(
                "bounce.from",
                format!("{:?}", self.bounce.from),
                "must be a mailbox",
            ));
        }
        Ok(())
    }

    /// The sender named in the From header of notices.
    pub fn bounce_from(&self) -> String {
        if self.bounce.from.is_empty() {
            format!("MAILER-DAEMON@{}", self.hostname)
        } else {
            self.bounce.from.clone()
        }
    }
}

/// The machine's host name, or `localhost` when it cannot be read.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Parses a duration such as `90s`, `15m`, `8h`, `5d` or `250ms`.
///
/// ```
/// use mailqueue::config::parse_duration;
/// assert_eq!(parse_duration("1.5h").unwrap().as_secs(), 5400);
/// assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
/// assert!(parse_duration("soon").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let err = || {
        format!("invalid duration {text:?}: expected a number followed by ms, s, m, h or d, like \"90s\" or \"5d\"")
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(err)?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| err())?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(err()),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 100.0 * 365.0 * 86400.0 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way the config file writes it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn optional_target<'de, D: Deserializer<'de>>(de: D) -> Result<Option<TargetSpec>, D::Error> {
    let text = String::deserialize(de)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

impl TargetSpec {
    /// True for a next hop on this machine: a loopback address,
    /// `localhost`, or a Unix socket.
    pub fn is_local(&self) -> bool {
        match self {
            TargetSpec::Remote => false,
            TargetSpec::LmtpUnix { .. } => true,
            TargetSpec::Smtp { host, .. }
            | TargetSpec::Smtps { host, .. }
            | TargetSpec::Lmtp { host, .. } => {
                host.eq_ignore_ascii_case("localhost")
                    || host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }
}

impl<'de> Deserialize<'de> for TargetSpec {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        String::deserialize(de)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl FromStr for TargetSpec {
    type Err = String;

    /// ```
    /// use mailqueue::config::TargetSpec;
    /// let t: TargetSpec = "smtp://[::1]:2526".parse().unwrap();
    /// assert_eq!(t, TargetSpec::Smtp { host: "::1".into(), port: 2526 });
    /// assert!("ftp://x".parse::<TargetSpec>().is_err());
    /// ```
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| {
            format!(
                "invalid target {text:?}: {why}; expected \"remote\", \"smtp://host:port\", \
                 \"smtps://host:port\", \"lmtp://host:port\" or \"lmtp+unix:///path\""
            )
        };
        if text == "remote" {
            return Ok(TargetSpec::Remote);
        }
        let (scheme, rest) = text.split_once("://").ok_or_else(|| err("no scheme"))?;
        if scheme == "lmtp+unix" {
            if !rest.starts_with('/') {
                return Err(err("the socket path must be absolute"));
            }
            return Ok(TargetSpec::LmtpUnix { path: rest.into() });
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| err("expected host:port"))?;
        match scheme {
            "smtp" => Ok(TargetSpec::Smtp { host, port }),
            "smtps" => Ok(TargetSpec::Smtps { host, port }),
            "lmtp" => Ok(TargetSpec::Lmtp { host, port }),
            _ => Err(err("unknown scheme")),
        }
    }
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hp = |f: &mut fmt::Formatter<'_>, s: &str, h: &str, p: u16| {
            if h.contains(':') {
                write!(f, "{s}://[{h}]:{p}")
            } else {
                write!(f, "{s}://{h}:{p}")
            }
        };
        match self {
            TargetSpec::Remote => f.write_str("remote"),
            TargetSpec::Smtp { host, port } => hp(f, "smtp", host, *port),
            TargetSpec::Smtps { host, port } => hp(f, "smtps", host, *port),
            TargetSpec::Lmtp { host, port } => hp(f, "lmtp", host, *port),
            TargetSpec::LmtpUnix { path } => write!(f, "lmtp+unix://{}", path.display()),
        }
    }
}

/// Splits `host:port` or `[v6]:port`.
fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':')?;
        if h.contains(':') {
            return None;
        }
        (h, p)
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(toml: &str) -> String {
        Config::from_toml(toml).unwrap_err().to_string()
    }

    #[test]
    fn built_in_defaults_match_the_design() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.queue.workers, 16);
        assert_eq!(c.queue.max_tries, 20);
        assert_eq!(c.queue.initial_retry, Duration::from_secs(900));
        assert_eq!(c.queue.retry_scale, 1.25);
        assert_eq!(c.queue.max_retry_interval, Duration::from_secs(8 * 3600));
        assert_eq!(c.queue.max_lifetime, Duration::from_secs(5 * 86400));
        assert_eq!(c.queue.delay_warning, Duration::from_secs(4 * 3600));
        assert_eq!(c.queue.max_messages, 100_000);
        assert_eq!(c.queue.max_bytes, 10_737_418_240);
        assert_eq!(c.queue.min_free_bytes, 104_857_600);
        assert_eq!(c.listen.smtp, vec!["127.0.0.1:2525".to_string()]);
        assert_eq!(c.listen.relay_networks.len(), 2);
        assert_eq!(c.listen.max_message_size, 33_554_432);
        assert_eq!(c.listen.max_recipients, 1000);
        assert_eq!(c.listen.max_connections, 64);
        assert_eq!(c.delivery.target, TargetSpec::Remote);
        assert_eq!(c.delivery.tls, TlsPolicy::May);
        assert_eq!(c.delivery.mx_port, 25);
        assert_eq!(c.delivery.connect_timeout, Duration::from_secs(30));
        assert_eq!(c.delivery.command_timeout, Duration::from_secs(300));
        assert_eq!(c.delivery.data_timeout, Duration::from_secs(600));
        assert!(c.bounce.enabled);
        assert_eq!(c.bounce_from(), format!("MAILER-DAEMON@{}", c.hostname));
        assert_eq!(c.bounce.target, None);
        assert_eq!(c.spool, PathBuf::from("/var/spool/mailqueue"));
    }

    #[test]
    fn every_key_of_the_design_parses() {
        let c = Config::from_toml(
            r#"
hostname = "mx.example.org"
spool = "/tmp/spool"
[queue]
workers = 3
max_tries = 5
initial_retry = "1m"
retry_scale = 2.0
max_retry_interval = "2h"
max_lifetime = "1d"
delay_warning = "0s"
max_messages = 10
max_bytes = 1000
min_free_bytes = 0
[listen]
smtp = []
relay_networks = ["10.0.0.0/8"]
max_message_size = 1000
max_recipients = 5
max_connections = 2
tls_cert = "/c.pem"
tls_key = "/k.pem"
[delivery]
target = "lmtp+unix:///run/lmtp.sock"
tls = "verify"
ca_file = "/ca.pem"
username = "u"
password_file = "/p"
mx_port = 2525
dns_servers = ["127.0.0.1:53"]
connect_timeout = "5s"
command_timeout = "1m"
data_timeout = "2m"
[bounce]
enabled = false
from = "postmaster@example.org"
target = "smtp://127.0.0.1:25"
"#,
        )
        .unwrap();
        assert_eq!(c.hostname, "mx.example.org");
        assert_eq!(c.queue.delay_warning, Duration::ZERO);
        assert_eq!(
            c.delivery.target,
            TargetSpec::LmtpUnix {
                path: "/run/lmtp.sock".into()
            }
        );
        assert_eq!(c.delivery.tls, TlsPolicy::Verify);
        assert_eq!(c.bounce_from(), "postmaster@example.org");
        assert_eq!(
            c.bounce.target,
            Some(TargetSpec::Smtp {
                host: "127.0.0.1".into(),
                port: 25
            })
        );
    }

    #[test]
    fn bad_values_name_the_key_and_the_value() {
        let e = err_of("[queue]\nworkers = 0\n");
        assert!(e.contains("queue.workers") && e.contains('0'), "{e}");
        let e = err_of("[queue]\nretry_scale = 0.5\n");
        assert!(e.contains("queue.retry_scale") && e.contains("0.5"), "{e}");
        let e = err_of("[queue]\ninitial_retry = \"soon\"\n");
        assert!(e.contains("initial_retry") && e.contains("soon"), "{e}");
        let e = err_of("[queue]\nworkerz = 4\n");
        assert!(e.contains("workerz"), "{e}");
        let e = err_of("bogus = 1\n");
        assert!(e.contains("bogus"), "{e}");
        let e = err_of("[delivery]\ntarget = \"ftp://x:1\"\n");
        assert!(e.contains("ftp://x:1"), "{e}");
        let e = err_of("[delivery]\ntls = \"maybe\"\n");
        assert!(e.contains("maybe"), "{e}");
        let e = err_of("[listen]\nsmtp = [\"localhost\"]\n");
        assert!(e.contains("listen.smtp") && e.contains("localhost"), "{e}");
        let e = err_of("[listen]\nrelay_networks = [\"10.0.0.0/33\"]\n");
        assert!(e.contains("10.0.0.0/33"), "{e}");
        let e = err_of("[queue]\ninitial_retry = \"0s\"\n");
        assert!(e.contains("queue.initial_retry"), "{e}");
        let e = err_of("[bounce]\nfrom = \"not an address\"\n");
        assert!(e.contains("bounce.from"), "{e}");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("5d").unwrap(), Duration::from_secs(432_000));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for bad in ["", "s", "10", "10 s", "10x", "-1s", "1e3s", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn targets_round_trip() {
        for t in [
            "remote",
            "smtp://mail.example.org:25",
            "smtps://[::1]:465",
            "lmtp://127.0.0.1:24",
            "lmtp+unix:///run/l.sock",
        ] {
            assert_eq!(t.parse::<TargetSpec>().unwrap().to_string(), t);
        }
        for bad in [
            "smtp://host",
            "smtp://:25",
            "smtp://h:0",
            "lmtp+unix://rel",
            "smtp://a:b:25",
        ] {
            assert!(bad.parse::<TargetSpec>().is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod shipped_file {
    use super::*;

    /// conf/mailqueue.toml documents the defaults: it must parse and agree.
    #[test]
    fn the_example_file_parses_and_states_the_defaults() {
        let text = include_str!("../conf/mailqueue.toml");
        let c = Config::from_toml(text).unwrap();
        let d = Config::default();
        assert_eq!(c.queue.workers, d.queue.workers);
        assert_eq!(c.queue.initial_retry, d.queue.initial_retry);
        assert_eq!(c.queue.max_lifetime, d.queue.max_lifetime);
        assert_eq!(c.queue.max_bytes, d.queue.max_bytes);
        assert_eq!(c.listen.smtp, d.listen.smtp);
        assert_eq!(c.listen.relay_networks, d.listen.relay_networks);
        assert_eq!(c.listen.command_timeout, d.listen.command_timeout);
        assert_eq!(c.delivery.target, d.delivery.target);
        assert_eq!(c.delivery.data_timeout, d.delivery.data_timeout);
        assert_eq!(c.bounce.target, d.bounce.target);
    }
}
