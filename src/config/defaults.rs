//! The built-in configuration: what `Config::default()` and every key
//! missing from the file stand for.

use std::path::PathBuf;
use std::time::Duration;

use super::{
    BareNewline, BounceConfig, Config, DeliveryConfig, ListenConfig, QueueConfig, TargetSpec,
    TlsPolicy,
};

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

/// The machine's host name, or `localhost` when it cannot be read.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
