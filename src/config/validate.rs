//! Validation: the values that parse but make no sense. The checks run
//! in a fixed order (names, queue, timeouts, listen, delivery, bounce), so
//! a file with several mistakes is always told of the same one first.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::{
    Config, ConfigError, DeliveryConfig, ListenConfig, QueueConfig, TargetSpec, TlsPolicy,
};
use crate::address::Address;
use crate::date::format_duration;
use crate::delivery::outbound::IpVersion;

fn invalid(key: &'static str, value: impl fmt::Display, reason: &'static str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason,
    }
}

/// An error for `key` when `value` is zero.
fn nonzero(key: &'static str, value: u64, reason: &'static str) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(key, 0, reason));
    }
    Ok(())
}

impl Config {
    /// Checks the values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_names()?;
        self.queue.validate_numbers()?;
        self.validate_timeouts()?;
        self.queue.validate_retry_interval()?;
        self.listen.validate()?;
        self.delivery.validate_limits()?;
        self.delivery.validate_auth()?;
        self.delivery.validate_outbound()?;
        self.metrics.validate()?;
        self.local.validate()?;
        self.validate_bounce()?;
        self.validate_routes()?;
        self.validate_dkim()
    }

    fn validate_names(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// Every timeout and retry interval must be longer than zero.
    fn validate_timeouts(&self) -> Result<(), ConfigError> {
        let q = &self.queue;
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
        Ok(())
    }

    fn validate_bounce(&self) -> Result<(), ConfigError> {
        if !self.bounce.from.is_empty() && Address::parse(&self.bounce.from).is_err() {
            return Err(invalid(
                "bounce.from",
                format!("{:?}", self.bounce.from),
                "must be a mailbox",
            ));
        }
        Ok(())
    }
}

impl QueueConfig {
    fn validate_numbers(&self) -> Result<(), ConfigError> {
        if !(1..=4096).contains(&self.workers) {
            return Err(invalid(
                "queue.workers",
                self.workers,
                "must be between 1 and 4096",
            ));
        }
        nonzero(
            "queue.max_tries",
            self.max_tries.into(),
            "must be at least 1",
        )?;
        if !(self.retry_scale.is_finite() && self.retry_scale >= 1.0) {
            return Err(invalid(
                "queue.retry_scale",
                self.retry_scale,
                "must be a number of at least 1.0",
            ));
        }
        Ok(())
    }

    fn validate_retry_interval(&self) -> Result<(), ConfigError> {
        if self.max_retry_interval < self.initial_retry {
            return Err(invalid(
                "queue.max_retry_interval",
                format_duration(self.max_retry_interval),
                "must not be shorter than queue.initial_retry",
            ));
        }
        Ok(())
    }
}

impl ListenConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for addr in &self.smtp {
            if addr.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    "listen.smtp",
                    format!("{addr:?}"),
                    "must be ip:port",
                ));
            }
        }
        nonzero(
            "listen.max_message_size",
            self.max_message_size,
            "must be more than zero",
        )?;
        nonzero(
            "listen.max_recipients",
            self.max_recipients as u64,
            "must be at least 1",
        )?;
        nonzero(
            "listen.max_connections",
            self.max_connections as u64,
            "must be at least 1",
        )?;
        if self.tls_cert.as_os_str().is_empty() != self.tls_key.as_os_str().is_empty() {
            return Err(invalid(
                "listen.tls_cert",
                self.tls_cert.display(),
                "tls_cert and tls_key must be set together",
            ));
        }
        Ok(())
    }
}

impl DeliveryConfig {
    fn validate_limits(&self) -> Result<(), ConfigError> {
        nonzero(
            "delivery.destination_concurrency",
            self.destination_concurrency as u64,
            "must be at least 1",
        )?;
        nonzero(
            "delivery.mx_port",
            self.mx_port.into(),
            "must be a port number",
        )?;
        for s in &self.dns_servers {
            if s.parse::<SocketAddr>().is_err() && s.parse::<IpAddr>().is_err() {
                return Err(invalid(
                    "delivery.dns_servers",
                    format!("{s:?}"),
                    "must be ip or ip:port",
                ));
            }
        }
        Ok(())
    }

    /// Credentials: both or neither, for a smarthost, and never where
    /// they would be refused or go to whoever answers.
    pub(super) fn validate_auth(&self) -> Result<(), ConfigError> {
        let user = &self.username;
        if user.is_empty() != self.password_file.as_os_str().is_empty() {
            return Err(invalid(
                "delivery.username",
                format!("{user:?}"),
                "username and password_file must be set together",
            ));
        }
        if user.is_empty() {
            return Ok(());
        }
        if self.target == TargetSpec::Remote {
            return Err(invalid(
                "delivery.username",
                format!("{user:?}"),
                "credentials are for a smarthost: with target = \"remote\" they would be \
                 offered to every MX host that asks",
            ));
        }
        if self.tls == TlsPolicy::None && !self.target.is_local() {
            return Err(invalid(
                "delivery.tls",
                "none",
                "AUTH is never sent in clear but to loopback: the smarthost would refuse \
                 every message; use tls = \"verify\"",
            ));
        }
        if self.tls != TlsPolicy::Verify && !self.tls_insecure_auth {
            return Err(invalid(
                "delivery.tls",
                format!("{:?}", self.tls).to_lowercase(),
                "AUTH needs tls = \"verify\", or the password goes to whoever answers; \
                 set tls_insecure_auth = true to send it anyway",
            ));
        }
        Ok(())
    }
}

impl DeliveryConfig {
    /// `source_address` as an address; `None` when empty (the kernel
    /// chooses).
    pub fn source_ip(&self) -> Result<Option<IpAddr>, ConfigError> {
        let text = self.source_address.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let key = "delivery.source_address";
        let value = || format!("{:?}", self.source_address);
        let ip: IpAddr = text.parse().map_err(|_| {
            invalid(
                key,
                value(),
                "must be an IP address of this host (no port, no name), or empty to let the \
                 kernel choose",
            )
        })?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(invalid(
                key,
                value(),
                "must be a unicast address of this host, or empty to let the kernel choose",
            ));
        }
        Ok(Some(ip))
    }

    /// A source address of the family `ip_version` rules out could reach
    /// no server at all.
    pub(super) fn validate_outbound(&self) -> Result<(), ConfigError> {
        let Some(source) = self.source_ip()? else {
            return Ok(());
        };
        if self.ip_version.allows(&source) {
            return Ok(());
        }
        let reason = match self.ip_version {
            IpVersion::V6 => {
                "delivery.source_address is an IPv4 address, from which no IPv6 server can be \
                 reached: set an IPv6 source_address, or ip_version = \"4\" or \"any\""
            }
            _ => {
                "delivery.source_address is an IPv6 address, from which no IPv4 server can be \
                 reached: set an IPv4 source_address, or ip_version = \"6\" or \"any\""
            }
        };
        Err(invalid(
            "delivery.ip_version",
            format!("\"{}\"", self.ip_version),
            reason,
        ))
    }
}
