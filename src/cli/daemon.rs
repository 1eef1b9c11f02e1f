//! `mailqueue serve`: wires the queue, the delivery target and the SMTP
//! listener together, and shuts them down in order on SIGTERM/SIGINT.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use mailqueue::build_target;
use mailqueue::config::Config;
use mailqueue::ingest::incoming::IncomingLimits;
use mailqueue::ingest::listener::{self as server, Server, ServerSettings};
use mailqueue::ingest::pickup::Pickup;
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
    let target = build_target(&config.delivery.target, config).map_err(|e| e.to_string())?;
    let bounce = match &config.bounce.target {
        Some(spec) => build_target(spec, config).map_err(|e| e.to_string())?,
        None => Arc::clone(&target),
    };
    Ok((target, bounce))
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

/// Runs the daemon until SIGTERM or SIGINT.
pub fn serve(config: Config) -> Result<(), String> {
    for w in config.warnings() {
        log::warn!("config: {w}");
    }
    let (target, bounce) = targets(&config)?;
    let settings = server_settings(&config)?;
    let mut signals = Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    // Bind first: a daemon that cannot listen must fail before it opens
    // the spool, or its workers would start on queued mail and be cut off
    // mid-attempt when it exits.
    let listeners = server::bind(&config.listen.smtp).map_err(|e| e.to_string())?;
    let metrics = super::metrics::bind(&config)?;
    let queue = Arc::new(
        Queue::open_with_bounce_target(config.queue_options(), target, bounce)
            .map_err(|e| e.to_string())?,
    );
    let (pickup_tx, pickup_rx) = crossbeam_channel::bounded(1);
    let mut control = ControlServer::start(Arc::clone(&queue), pickup_tx).map_err(|e| {
        format!(
            "cannot open the control socket in {}: {e}",
            config.spool.display()
        )
    })?;
    let (stop_pickup, pickup_stopped) = crossbeam_channel::bounded::<()>(0);
    let limits = sendmail::limits(&config);
    let picker = start_pickup(Arc::clone(&queue), limits, pickup_rx, pickup_stopped)?;
    let mut server = Server::start(listeners, Arc::clone(&queue), settings);
    let _metrics = metrics.map(|m| m.serve(Arc::clone(&queue)));
    log::info!(
        "mailqueue {} running: spool {}, target {}, {} workers",
        env!("CARGO_PKG_VERSION"),
        config.spool.display(),
        config.delivery.target,
        config.queue.workers
    );

    let signal = signals.forever().next().unwrap_or(SIGTERM);
    log::info!("signal {signal}: no longer accepting mail; finishing running attempts");
    server.stop();
    control.stop();
    drop(stop_pickup);
    let _ = picker.join();
    finish(queue);
    Ok(())
}

/// The pickup thread: a pass at start, when told (a wake-up on `wake`),
/// and every [`PICKUP_INTERVAL`], until `stop` is dropped.
fn start_pickup(
    queue: Arc<Queue>,
    limits: IncomingLimits,
    wake: Receiver<()>,
    stop: Receiver<()>,
) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("mailqueue-pickup".into())
        .spawn(move || {
            let mut pickup = Pickup::new(limits);
            loop {
                // A bug hit by one submission must not end pickup for
                // all the others (and, silently, for good).
                let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    pickup.run(&queue);
                }));
                if pass.is_err() {
                    log::error!("pickup pass panicked; the next pass starts afresh");
                    pickup = Pickup::new(limits);
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
