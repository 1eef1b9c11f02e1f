//! The built-in targets a configuration names: a smarthost or LMTP
//! server (`relay`), or the recipients' MX hosts (`remote`).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::{Config, RouteConfig, TargetSpec, TlsPolicy};

use crate::delivery::routing::{Chain, Hop, MoveOn, Route, Router};
use crate::delivery::smtp_client::{ClientSettings, Credentials, Endpoint};
use crate::delivery::{dns, mta_sts, relay, remote, smtp_client, DeliveryTarget};

/// Why the delivery target a configuration names cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The smarthost password cannot be read, or is not kept secret.
    #[error(transparent)]
    PasswordFile(#[from] PasswordFileError),
    /// The TLS client cannot be set up.
    #[error(transparent)]
    Tls(#[from] smtp_client::TlsConnectorError),
    /// The DNS resolver of the MX client cannot be set up.
    #[error(transparent)]
    Dns(#[from] dns::ResolverError),
    /// A value the configuration check refuses (in a configuration
    /// built in code, which was never checked).
    #[error(transparent)]
    Invalid(#[from] super::ConfigError),
}

/// Why the smarthost password cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    /// The file cannot be read.
    #[error("cannot read password_file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file belongs to a user other than the daemon's.
    #[error(
        "password_file {path} belongs to user id {owner}: it must belong to the daemon's user \
         (id {daemon}, the spool's owner)"
    )]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner's user id.
        owner: u32,
        /// The daemon's user id.
        daemon: u32,
    },
    /// Group or others may read the file.
    #[error(
        "password_file {path} is readable by group or others (mode {mode:04o}): \
         chmod 600 it (owned by the daemon's user)"
    )]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Reads the smarthost password. Like ssh with its keys, refuses a file
/// that other users may read: the password would not be a secret.
fn read_password_file(
    path: &std::path::Path,
    spool: &std::path::Path,
) -> Result<String, PasswordFileError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let read_error = |source| PasswordFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    let mode = meta.mode();
    // Another user owning it could read or change it at will; and a file
    // of root's, mode 0600, the daemon's user could not read. The daemon's
    // user is the spool's owner (so `check` run as root judges the file
    // as the daemon will), or whoever runs this when there is no spool yet.
    let daemon = std::fs::metadata(spool)
        .map(|m| m.uid())
        .unwrap_or_else(|_| crate::sys::effective_uid());
    if meta.uid() != daemon {
        return Err(PasswordFileError::Owner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            daemon,
        });
    }
    if mode & 0o077 != 0 {
        return Err(PasswordFileError::Mode {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_error)?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

/// Most connections one MX destination may hold at once: the configured
/// `destination_concurrency`, but never more than four fifths of the
/// workers (at least one). Each connection holds a worker for as long as
/// it lasts, so a destination that hangs (up to the timeouts) at a limit
/// above the worker count would take every worker and stop the mail for
/// all other destinations; the fifth left over keeps it going. (Postfix
/// caps a destination at 20 of its 100 delivery processes by default.)
pub fn destination_limit(configured: usize, workers: usize) -> usize {
    configured.min((workers * 4 / 5).max(1))
}

/// Builds the target a configuration names.
pub fn build_target(
    spec: &TargetSpec,
    config: &Config,
) -> Result<Arc<dyn DeliveryTarget>, TargetError> {
    let d = &config.delivery;
    let mut settings = client_settings(spec, config)?;
    let endpoint = match spec {
        TargetSpec::Remote => {
            if d.dane && settings.tls_connector.is_none() {
                // tls = "none" still leaves DANE hosts to TLS.
                let ca = Some(d.ca_file.as_path()).filter(|p| !p.as_os_str().is_empty());
                settings.tls_connector =
                    smtp_client::tls_connector(TlsPolicy::May, ca)?.map(Arc::new);
            }
            let resolver = dns::Resolver::new(&d.dns_servers, d.dns_timeout)?;
            let remote = remote::RemoteSettings {
                client: Arc::new(settings),
                mx_port: d.mx_port,
                destination_concurrency: destination_limit(
                    d.destination_concurrency,
                    config.queue.workers,
                ),
                rate: d.rate,
                connection_cache_time: d.connection_cache_time,
            };
            let target = remote::RemoteTarget::new(resolver, remote);
            let target = if d.dane { target.with_dane() } else { target };
            if !d.mta_sts {
                return Ok(Arc::new(target));
            }
            let sts = mta_sts_with(
                config,
                Arc::clone(target.resolver()),
                &target.settings().client,
            )?;
            return Ok(Arc::new(target.with_mta_sts(sts)));
        }
        TargetSpec::Smtp { host, port }
        | TargetSpec::Smtps { host, port }
        | TargetSpec::Lmtp { host, port } => Endpoint::Tcp {
            host: host.clone(),
            port: *port,
        },
        TargetSpec::LmtpUnix { path } => Endpoint::Unix(path.clone()),
    };
    let relay = relay::RelayTarget::new(
        settings,
        endpoint,
        matches!(spec, TargetSpec::Smtps { .. }),
        d.connection_cache_time,
    );
    Ok(Arc::new(relay.with_limits(
        relay_limit(d.destination_concurrency),
        d.rate,
    )))
}

/// The MTA-STS state MX delivery under `config` has (its `[delivery]`),
/// for `mailqueue sts`: the spool's cache and the policy fetcher.
pub fn build_mta_sts(config: &Config) -> Result<mta_sts::MtaSts, TargetError> {
    let d = &config.delivery;
    let resolver = Arc::new(dns::Resolver::new(&d.dns_servers, d.dns_timeout)?);
    let client = client_settings(&TargetSpec::Remote, config)?;
    mta_sts_with(config, resolver, &client)
}

/// MTA-STS for an MX client with this resolver and these settings,
/// caching in the spool and trusting `ca_file` beside the system's roots.
fn mta_sts_with(
    config: &Config,
    resolver: Arc<dns::Resolver>,
    client: &ClientSettings,
) -> Result<mta_sts::MtaSts, TargetError> {
    let d = &config.delivery;
    let settings = mta_sts::MtaStsSettings {
        cache_dir: crate::queue::spool::layout::mta_sts(&config.spool),
        https_port: d.mta_sts_port,
        ca_file: Some(d.ca_file.clone()).filter(|p| !p.as_os_str().is_empty()),
    };
    Ok(mta_sts::MtaSts::new(resolver, client, settings)?)
}

/// The daemon's delivery target: the `[[route]]` table over
/// `[delivery]`'s target, or that target alone when there are no routes.
///
/// ```
/// let c = mailqueue::Config::from_toml(r#"
/// [delivery]
/// target = "smtp://127.0.0.1:2525"
/// [[route]]
/// domains = ["example.net"]
/// target = ["lmtp+unix:///run/dovecot/lmtp", "smtp://127.0.0.1:2526"]
/// "#).unwrap();
/// let target = mailqueue::build_delivery(&c).unwrap();
/// # drop(target);
/// ```
pub fn build_delivery(config: &Config) -> Result<Arc<dyn DeliveryTarget>, TargetError> {
    let default = build_target(&config.delivery.target, config)?;
    if config.routes.is_empty() {
        return Ok(default);
    }
    let routes = config
        .routes
        .iter()
        .map(|r| {
            Ok(Route {
                domains: r.domains.clone(),
                senders: r.senders.clone(),
                target: build_route(r, config)?,
            })
        })
        .collect::<Result<_, TargetError>>()?;
    Ok(Arc::new(Router::new(routes, default)))
}

/// One route's targets: each tried when the one before cannot be used,
/// then its fallback for what is still deferred.
fn build_route(
    route: &RouteConfig,
    config: &Config,
) -> Result<Arc<dyn DeliveryTarget>, TargetError> {
    let config = route.config(config);
    let hop = |spec: &TargetSpec, when| -> Result<Hop, TargetError> {
        Ok(Hop {
            name: spec.to_string(),
            target: build_target(spec, &config)?,
            when,
        })
    };
    let mut hops = route
        .target
        .0
        .iter()
        .map(|t| hop(t, MoveOn::Unreachable))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(f) = &route.fallback {
        hops.push(hop(f, MoveOn::Deferred)?);
    }
    if hops.len() == 1 {
        return Ok(hops.remove(0).target);
    }
    Ok(Arc::new(Chain::new(hops)))
}

/// Most connections to a relay target at once: `destination_concurrency`
/// as configured. Not cut to four fifths of the workers as for MX
/// domains: a relay target is the one destination of the mail it takes,
/// so the fifth held back would only sit idle (or spin on the throttled
/// messages); a limit above the workers never bites, so the default
/// (20) leaves a daemon of up to 20 workers as it was.
fn relay_limit(configured: usize) -> usize {
    configured.max(1)
}

/// The client settings of the target `spec`: protocol, TLS (required by
/// SMTPS), credentials (for a smarthost only), timeouts and where
/// connections come from.
fn client_settings(spec: &TargetSpec, config: &Config) -> Result<ClientSettings, TargetError> {
    let d = &config.delivery;
    let ca = Some(d.ca_file.as_path()).filter(|p| !p.as_os_str().is_empty());
    let implicit_tls = matches!(spec, TargetSpec::Smtps { .. });
    // SMTPS needs TLS whatever the STARTTLS policy says.
    let policy = if implicit_tls && d.tls == TlsPolicy::None {
        TlsPolicy::Encrypt
    } else {
        d.tls
    };
    // Credentials are the smarthost's: never offered to MX hosts (a
    // notice target of "remote" beside a smarthost, say).
    let auth = if d.username.is_empty() || *spec == TargetSpec::Remote {
        None
    } else {
        Some(Credentials {
            username: d.username.clone(),
            password: read_password_file(&d.password_file, &config.spool)?,
        })
    };
    Ok(ClientSettings {
        helo_name: config.hostname.clone(),
        lmtp: matches!(spec, TargetSpec::Lmtp { .. } | TargetSpec::LmtpUnix { .. }),
        tls: policy,
        tls_connector: smtp_client::tls_connector(policy, ca)?.map(Arc::new),
        auth,
        connect_timeout: d.connect_timeout,
        command_timeout: d.command_timeout,
        data_timeout: d.data_timeout,
        source_address: d.source_ip()?,
        ip_version: d.ip_version,
        messages_per_connection: d.messages_per_connection,
    })
}

#[cfg(test)]
mod tests {
    use super::destination_limit;

    #[test]
    fn one_destination_gets_at_most_four_fifths_of_the_workers() {
        assert_eq!(destination_limit(20, 16), 12);
        assert_eq!(destination_limit(20, 100), 20);
        assert_eq!(destination_limit(5, 16), 5);
        assert_eq!(destination_limit(20, 4), 3);
        assert_eq!(destination_limit(20, 2), 1);
        assert_eq!(destination_limit(20, 1), 1);
    }
}
