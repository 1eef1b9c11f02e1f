//! `mailqueue serve`: wires the queue, the delivery target and the SMTP
//! listener together, reloads the configuration on SIGHUP, and shuts them
//! down in order on SIGTERM/SIGINT.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use mailqueue::config::{BadTarget, Config, TargetSpec};
use mailqueue::ingest::incoming::IncomingLimits;
use mailqueue::ingest::listener::{self as server, Server, ServerSettings};
use mailqueue::ingest::pickup::Pickup;
use mailqueue::queue::BuildTarget;
use mailqueue::{build_delivery, build_target};
use mailqueue::{DeliveryTarget, Queue};

use super::control::ControlServer;
use super::sendmail;

/// How long running attempts may take to finish after a stop signal.
const GRACE: Duration = Duration::from_secs(30);
/// How often `incoming/` is checked without being told.
const PICKUP_INTERVAL: Duration = Duration::from_secs(5);

/// The delivery target and the target for notices.
pub type Targets = (Arc<dyn DeliveryTarget>, Arc<dyn DeliveryTarget>);

/// Builds the delivery and notice targets a configuration names.
pub fn targets(config: &Config) -> Result<Targets, String> {
    let target = build_delivery(config).map_err(|e| e.to_string())?;
    let bounce = match &config.bounce.target {
        Some(spec) => build_target(spec, config).map_err(|e| e.to_string())?,
        None => Arc::clone(&target),
    };
    Ok((target, bounce))
}

/// How the daemon builds a target the operator pins messages to
/// (`requeue --target URL`): with the settings of the route that names
/// it, or `[delivery]`'s.
pub fn target_builder(config: &Config) -> Arc<BuildTarget> {
    let config = config.clone();
    Arc::new(move |url: &str| {
        let spec: TargetSpec = url.parse().map_err(|e: BadTarget| e.to_string())?;
        build_target(&spec, &config.config_for_target(&spec)).map_err(|e| e.to_string())
    })
}

/// The listener settings of a configuration, loading the TLS identity.
pub fn server_settings(config: &Config) -> Result<ServerSettings, String> {
    let l = &config.listen;
    let tls = if l.tls_cert.as_os_str().is_empty() {
        None
    } else {
        Some(Arc::new(
            server::tls_acceptor(&l.tls_cert, &l.tls_key).map_err(|e| e.to_string())?,
        ))
    };
    Ok(ServerSettings {
        hostname: config.hostname.clone(),
        relay_networks: l.relay_networks.clone(),
        max_message_size: l.max_message_size,
        max_recipients: l.max_recipients,
        max_connections: l.max_connections,
        tls,
        command_timeout: l.command_timeout,
        data_timeout: l.data_timeout,
        bare_newline: l.bare_newline,
    })
}

/// Opens the queue with the configuration's options and signing keys;
/// its workers start on queued mail at once. The spool is read in the
/// background: the daemon greets and queues new mail within moments of
/// its start, whatever the size of the queue.
fn open_queue(
    config: &Config,
    target: Arc<dyn DeliveryTarget>,
    bounce: Arc<dyn DeliveryTarget>,
) -> Result<Arc<Queue>, String> {
    let mut options = config.queue_options();
    options.dkim = config.dkim_signer().map_err(|e| e.to_string())?;
    options.background_load = true;
    let queue =
        Queue::open_with_bounce_target(options, target, bounce).map_err(|e| e.to_string())?;
    queue.set_target_builder(target_builder(config));
    Ok(Arc::new(queue))
}

/// Runs the daemon until SIGTERM or SIGINT; on SIGHUP, `reload` reads
/// the configuration again.
pub fn serve(config: Config, reload: impl Fn() -> Result<Config, String>) -> Result<(), String> {
    for w in config.warnings() {
        log::warn!("config: {w}");
    }
    let (target, bounce) = targets(&config)?;
    let settings = server_settings(&config)?;
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    // Bind first: a daemon that cannot listen must fail before it opens
    // the spool, or its workers would start on queued mail and be cut off
    // mid-attempt when it exits.
    let listeners = server::bind(&config.listen.smtp).map_err(|e| e.to_string())?;
    let metrics = super::metrics::bind(&config)?;
    let queue = open_queue(&config, target, bounce)?;
    let (pickup_tx, pickup_rx) = crossbeam_channel::bounded(1);
    let mut control = ControlServer::start(Arc::clone(&queue), pickup_tx).map_err(|e| {
        format!(
            "cannot open the control socket in {}: {e}",
            config.spool.display()
        )
    })?;
    let (stop_pickup, pickup_stopped) = crossbeam_channel::bounded::<()>(0);
    let limits = Arc::new(Mutex::new(sendmail::limits(&config)));
    let picker = start_pickup(
        Arc::clone(&queue),
        Arc::clone(&limits),
        pickup_rx,
        pickup_stopped,
    )?;
    let mut server = Server::start(listeners, Arc::clone(&queue), settings);
    let _metrics = metrics.map(|m| m.serve(Arc::clone(&queue)));
    log::info!(
        "mailqueue {} running: spool {}, target {}, {} workers",
        env!("CARGO_PKG_VERSION"),
        config.spool.display(),
        config.delivery.target,
        config.queue.workers
    );

    let live = Live {
        queue: &queue,
        server: &server,
        pickup_limits: &limits,
    };
    let signal = run_until_stopped(&mut signals, config, reload, &live);
    log::info!("signal {signal}: no longer accepting mail; finishing running attempts");
    server.stop();
    control.stop();
    drop(stop_pickup);
    let _ = picker.join();
    finish(queue);
    Ok(())
}

/// Waits for signals: each SIGHUP reloads the configuration into the
/// running daemon; returns the signal that stops it.
fn run_until_stopped(
    signals: &mut Signals,
    config: Config,
    reload: impl Fn() -> Result<Config, String>,
    live: &Live,
) -> i32 {
    let mut running = config;
    loop {
        match signals.forever().next().unwrap_or(SIGTERM) {
            SIGHUP => {
                if let Some(config) = reconfigure(&running, reload(), live) {
                    running = config;
                }
            }
            other => return other,
        }
    }
}

/// Sets the most detailed level logged, unless `RUST_LOG` chose it.
pub fn apply_log_level(level: mailqueue::config::LogLevel) {
    if !std::env::var("RUST_LOG").is_ok_and(|v| !v.is_empty()) {
        log::set_max_level(level.filter());
    }
}

/// What a reload changes in the running daemon.
struct Live<'a> {
    queue: &'a Queue,
    server: &'a Server,
    pickup_limits: &'a Mutex<IncomingLimits>,
}

/// A setting, as log lines name it, and its value for comparing.
type Key = (&'static str, fn(&Config) -> String);

macro_rules! key {
    ($name:literal, $($field:ident).+) => {
        ($name, |c: &Config| format!("{:?}", c.$($field).+))
    };
}

/// The settings a reload cannot apply: the running daemon keeps them
/// until it is restarted.
static RESTART: &[Key] = &[
    key!("hostname", hostname),
    key!("spool", spool),
    key!("[listen] smtp", listen.smtp),
    key!("[queue] workers", queue.workers),
    key!("[log] format", log.format),
    key!("[metrics] listen", metrics.listen),
];

/// Keeps the running values of the [`RESTART`] settings in a reloaded
/// configuration.
fn keep_restart_settings(running: &Config, new: &mut Config) {
    new.hostname.clone_from(&running.hostname);
    new.spool.clone_from(&running.spool);
    new.listen.smtp.clone_from(&running.listen.smtp);
    new.queue.workers = running.queue.workers;
    new.log.format = running.log.format;
    new.metrics.listen.clone_from(&running.metrics.listen);
}

/// The settings a reload applies. The retry policy and the notice
/// settings apply from each message's next attempt: nothing is
/// rescheduled at the reload (see [`Queue::set_retry`]).
static RELOADED: &[Key] = &[
    key!("[queue] max_tries", queue.max_tries),
    key!("[queue] initial_retry", queue.initial_retry),
    key!("[queue] retry_scale", queue.retry_scale),
    key!("[queue] max_retry_interval", queue.max_retry_interval),
    key!("[queue] max_lifetime", queue.max_lifetime),
    key!("[queue] delay_warning", queue.delay_warning),
    key!("[bounce] enabled", bounce.enabled),
    key!("[bounce] from", bounce.from),
    key!("[bounce] max_return_size", bounce.max_return_size),
    key!("[queue] max_messages", queue.max_messages),
    key!("[queue] max_bytes", queue.max_bytes),
    key!("[queue] min_free_bytes", queue.min_free_bytes),
    key!("[listen] relay_networks", listen.relay_networks),
    key!("[listen] max_message_size", listen.max_message_size),
    key!("[listen] max_recipients", listen.max_recipients),
    key!("[listen] max_connections", listen.max_connections),
    key!("[listen] tls_cert", listen.tls_cert),
    key!("[listen] tls_key", listen.tls_key),
    key!("[listen] command_timeout", listen.command_timeout),
    key!("[listen] data_timeout", listen.data_timeout),
    key!("[listen] bare_newline", listen.bare_newline),
    key!("[delivery] target", delivery.target),
    key!("[delivery] tls", delivery.tls),
    key!("[delivery] ca_file", delivery.ca_file),
    key!("[delivery] username", delivery.username),
    key!("[delivery] password_file", delivery.password_file),
    key!("[delivery] tls_insecure_auth", delivery.tls_insecure_auth),
    key!("[delivery] mx_port", delivery.mx_port),
    key!("[delivery] dns_servers", delivery.dns_servers),
    key!("[delivery] dns_timeout", delivery.dns_timeout),
    // The MX client is built again with the rest of [delivery].
    key!("[delivery] dane", delivery.dane),
    key!(
        "[delivery] destination_concurrency",
        delivery.destination_concurrency
    ),
    key!("[delivery] rate", delivery.rate),
    key!(
        "[delivery] connection_cache_time",
        delivery.connection_cache_time
    ),
    key!("[delivery] connect_timeout", delivery.connect_timeout),
    key!("[delivery] command_timeout", delivery.command_timeout),
    key!("[delivery] data_timeout", delivery.data_timeout),
    key!("[delivery] source_address", delivery.source_address),
    key!("[delivery] ip_version", delivery.ip_version),
    key!(
        "[delivery] messages_per_connection",
        delivery.messages_per_connection
    ),
    key!("[delivery] mta_sts", delivery.mta_sts),
    key!("[delivery] mta_sts_port", delivery.mta_sts_port),
    key!("[[route]]", routes),
    key!("[[dkim]]", dkim),
    key!("[bounce] target", bounce.target),
    key!("[log] level", log.level),
];

/// The names of the settings in `keys` that differ between `a` and `b`.
fn changed(keys: &[Key], a: &Config, b: &Config) -> Vec<&'static str> {
    keys.iter()
        .filter(|(_, value)| value(a) != value(b))
        .map(|(name, _)| *name)
        .collect()
}

/// Applies a reloaded configuration to the running daemon. Returns it as
/// it now runs (with the running values of what needs a restart), or
/// `None` when it cannot be used: then nothing changes.
fn reconfigure(running: &Config, loaded: Result<Config, String>, live: &Live) -> Option<Config> {
    log::info!("reload: reading the configuration again (SIGHUP)");
    let mut new = match loaded {
        Ok(c) => c,
        Err(e) => {
            log::error!("reload: {e}; the running configuration stays in place");
            return None;
        }
    };
    for name in changed(RESTART, running, &new) {
        log::warn!("reload: {name} changed; restart to apply");
    }
    keep_restart_settings(running, &mut new);
    // Everything that reads a file (password, certificates) is built
    // before anything is replaced: all of the new configuration or none.
    let built = targets(&new).and_then(|t| {
        let dkim = new.dkim_signer().map_err(|e| e.to_string())?;
        Ok((t, server_settings(&new)?, dkim))
    });
    let ((target, bounce), settings, dkim) = match built {
        Ok(b) => b,
        Err(e) => {
            log::error!("reload: {e}; the running configuration stays in place");
            return None;
        }
    };
    for w in new.warnings() {
        log::warn!("config: {w}");
    }
    live.queue.set_targets(target, bounce);
    live.queue.set_target_builder(target_builder(&new));
    apply_queue_options(live.queue, &new);
    // Keys sign the mail queued from now on; queued mail keeps the
    // signature it has.
    live.queue.set_dkim(dkim);
    live.server.set_settings(settings);
    apply_log_level(new.log.level);
    *live.pickup_limits.lock().unwrap_or_else(|p| p.into_inner()) = sendmail::limits(&new);
    let changed = changed(RELOADED, running, &new);
    if changed.is_empty() {
        log::info!(
            "reload: done; no setting changed (certificate, password and DKIM key files read again)"
        );
    } else {
        log::info!("reload: done; changed: {}", changed.join(", "));
    }
    Some(new)
}

/// Puts a reloaded configuration's quotas, retry policy and notice
/// settings in force in the running queue.
fn apply_queue_options(queue: &Queue, config: &Config) {
    let options = config.queue_options();
    queue.set_limits(options.limits);
    queue.set_retry(options.retry);
    queue.set_notices(options.notices, options.delay_warning);
}

/// The pickup thread: a pass at start, when told (a wake-up on `wake`),
/// and every [`PICKUP_INTERVAL`], until `stop` is dropped.
fn start_pickup(
    queue: Arc<Queue>,
    limits: Arc<Mutex<IncomingLimits>>,
    wake: Receiver<()>,
    stop: Receiver<()>,
) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("mailqueue-pickup".into())
        .spawn(move || {
            let limits = move || *limits.lock().unwrap_or_else(|p| p.into_inner());
            let mut pickup = Pickup::new(limits());
            loop {
                pickup.set_limits(limits());
                // A bug hit by one submission must not end pickup for
                // all the others (and, silently, for good).
                let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    pickup.run(&queue);
                }));
                if pass.is_err() {
                    log::error!("pickup pass panicked; the next pass starts afresh");
                    pickup = Pickup::new(limits());
                }
                crossbeam_channel::select! {
                    recv(wake) -> _ => {}
                    recv(stop) -> _ => return,
                    default(PICKUP_INTERVAL) => {}
                }
            }
        })
        .map_err(|e| format!("cannot start the pickup thread: {e}"))
}

/// Lets running attempts finish, for [`GRACE`] at most.
fn finish(queue: Arc<Queue>) {
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        queue.shutdown();
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(GRACE) {
        Ok(()) => log::info!("stopped"),
        // The metadata on disk is consistent (every rewrite is atomic):
        // attempts cut short now are simply tried again after a restart.
        Err(_) => log::warn!(
            "attempts still running after {}s; exiting anyway",
            GRACE.as_secs()
        ),
    }
}
