//! The built-in configuration: what `Config::default()` and every key
//! missing from the file stand for.

use std::path::PathBuf;

use crate::queue::options::{NoticeOptions, QueueOptions};
use std::time::Duration;

use super::{
    BareNewline, BounceConfig, Config, DeliveryConfig, ListenConfig, QueueConfig, TargetSpec,
    TlsPolicy,
};

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: crate::sys::hostname(),
            spool: PathBuf::from("/var/spool/mailqueue"),
            queue: QueueConfig::default(),
            listen: ListenConfig::default(),
            delivery: DeliveryConfig::default(),
            bounce: BounceConfig::default(),
            metrics: Default::default(),
            log: super::LogConfig::default(),
            local: super::LocalConfig::default(),
            routes: Vec::new(),
            dkim: Vec::new(),
        }
    }
}

// The queue's own defaults, so that a queue embedded without a file and
// the daemon with an empty one behave alike.
impl Default for QueueConfig {
    fn default() -> Self {
        let o = QueueOptions::new("");
        QueueConfig {
            workers: o.workers,
            max_tries: o.retry.max_tries,
            initial_retry: o.retry.initial,
            retry_scale: o.retry.scale,
            max_retry_interval: o.retry.max_interval,
            max_lifetime: o.retry.max_lifetime,
            delay_warning: o.delay_warning,
            max_messages: o.limits.max_messages,
            max_bytes: o.limits.max_bytes,
            min_free_bytes: o.limits.min_free_bytes,
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
            dane: false,
            destination_concurrency: 20,
            rate: None,
            connection_cache_time: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(5 * 60),
            data_timeout: Duration::from_secs(10 * 60),
            source_address: String::new(),
            ip_version: Default::default(),
            messages_per_connection: 100,
            // On: it changes nothing for domains without a policy, and
            // the domains with one asked for it (maddy and Stalwart apply
            // it by default too). A policy only defers mail that would
            // otherwise go to a host the domain does not name, or without
            // verified TLS: the attack MTA-STS exists to stop.
            mta_sts: true,
            mta_sts_port: 443,
        }
    }
}

impl Default for BounceConfig {
    fn default() -> Self {
        let n = NoticeOptions::default();
        BounceConfig {
            enabled: n.enabled,
            from: n.from,
            target: None,
            max_return_size: n.max_return_size,
        }
    }
}
