//! The SMTP ingest listener: one thread per connection, up to
//! `max_connections`, threads reused from one connection to the next;
//! replies only after the message is durable.
//!
//! This module is the accept loop; `session` is the dialogue with one
//! client, `data` reads a message's DATA and queues it.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use ipnet::IpNet;

use crate::queue::Queue;
use crate::smtp::bare_newline::BareNewline;
use crate::smtp::transport::Stream;
use threads::Reused;

mod data;
mod refusal;
mod session;
mod threads;

use refusal::ConnectionRefusals;
use session::Session;

/// How long a session thread waits for the next connection: under load
/// the next one comes within milliseconds; an idle listener soon holds no
/// spare threads.
const THREAD_KEEP: Duration = Duration::from_secs(5);

/// How the listener behaves.
#[derive(Clone)]
pub struct ServerSettings {
    pub hostname: String,
    pub relay_networks: Vec<IpNet>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub tls: Option<Arc<native_tls::TlsAcceptor>>,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub bare_newline: BareNewline,
}

/// An address the listener cannot listen on.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address as configured.
    pub addr: String,
    /// Why.
    pub source: io::Error,
}

/// Binds every address, or says which one cannot be bound.
pub fn bind(addrs: &[String]) -> Result<Vec<TcpListener>, BindError> {
    addrs
        .iter()
        .map(|a| {
            TcpListener::bind(a.as_str()).map_err(|source| BindError {
                addr: a.clone(),
                source,
            })
        })
        .collect()
}

/// Why the STARTTLS identity cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsAcceptorError {
    /// The certificate file cannot be read.
    #[error("cannot read tls_cert {path}: {source}")]
    ReadCert {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The key file cannot be read.
    #[error("cannot read tls_key {path}: {source}")]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The certificate and key do not make an identity.
    #[error("tls_cert/tls_key: {0} (the key must be PEM PKCS#8)")]
    Identity(#[source] native_tls::Error),
    /// The TLS library refused the identity.
    #[error("cannot set up TLS: {0}")]
    Build(#[source] native_tls::Error),
}

/// Loads the certificate and PKCS#8 key for STARTTLS.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<native_tls::TlsAcceptor, TlsAcceptorError> {
    let c = std::fs::read(cert).map_err(|source| TlsAcceptorError::ReadCert {
        path: cert.to_path_buf(),
        source,
    })?;
    let k = std::fs::read(key).map_err(|source| TlsAcceptorError::ReadKey {
        path: key.to_path_buf(),
        source,
    })?;
    let id = native_tls::Identity::from_pkcs8(&c, &k).map_err(TlsAcceptorError::Identity)?;
    native_tls::TlsAcceptor::new(id).map_err(TlsAcceptorError::Build)
}

/// The settings a listener uses now; each connection takes the ones
/// current when it is accepted and keeps them to its end.
type Current = Arc<RwLock<Arc<ServerSettings>>>;

fn current(settings: &Current) -> Arc<ServerSettings> {
    Arc::clone(&settings.read().unwrap_or_else(|p| p.into_inner()))
}

/// The running listener.
pub struct Server {
    stopping: Arc<AtomicBool>,
    settings: Current,
    addrs: Vec<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
    active: Arc<AtomicUsize>,
}

impl Server {
    /// Starts one accepting thread per listening socket.
    pub fn start(
        listeners: Vec<TcpListener>,
        queue: Arc<Queue>,
        settings: ServerSettings,
    ) -> Server {
        let stopping = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let settings: Current = Arc::new(RwLock::new(Arc::new(settings)));
        let sessions = {
            let (queue, settings) = (Arc::clone(&queue), Arc::clone(&settings));
            Arc::new(Reused::new(
                "mailqueue-smtp",
                THREAD_KEEP,
                move |(stream, guard): (TcpStream, ActiveGuard)| {
                    let _guard = guard;
                    let Ok(peer) = stream.peer_addr() else {
                        return;
                    };
                    let _ = stream.set_nodelay(true);
                    let settings = current(&settings);
                    Session::new(Stream::Tcp(stream).into(), peer, &queue, &settings).run();
                },
            ))
        };
        let mut addrs = Vec::new();
        let mut threads = Vec::new();
        let refusals = Arc::new(ConnectionRefusals::default());
        for listener in listeners {
            if let Ok(a) = listener.local_addr() {
                log::info!("listening for SMTP on {a}");
                addrs.push(a);
            }
            let accepting = Accepting {
                sessions: Arc::clone(&sessions),
                settings: Arc::clone(&settings),
                stopping: Arc::clone(&stopping),
                active: Arc::clone(&active),
                queue: Arc::clone(&queue),
                refusals: Arc::clone(&refusals),
            };
            threads.push(
                thread::Builder::new()
                    .name("mailqueue-listen".into())
                    .spawn(move || accept_loop(listener, &accepting))
                    .expect("cannot start the listener thread"),
            );
        }
        Server {
            stopping,
            settings,
            addrs,
            threads,
            active,
        }
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Replaces the settings (limits, relay networks, TLS identity,
    /// timeouts) for the connections accepted from now on; sessions in
    /// progress keep theirs. The listening addresses stay as they are.
    pub fn set_settings(&self, settings: ServerSettings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }

    /// Connections being served now.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Stops accepting; sessions in progress run on until they end.
    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        for a in &self.addrs {
            // Wakes the blocking accept so it sees the flag.
            let _ = TcpStream::connect_timeout(a, Duration::from_secs(1));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Answers a connection past `max_connections` with 421, counts it among
/// the refusals and logs it (at most one line a second). The write may
/// not block the accept loop for long: the client is not read from.
fn refuse(stream: &mut TcpStream, a: &Accepting) {
    let reply = refusal::too_many_connections();
    // Counted before the client can read the reply and look.
    a.queue.counters().connection_refused();
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(format!("{reply}\r\n").as_bytes());
    a.refusals
        .refused(stream.peer_addr().ok().map(|p| p.ip()), &reply);
}

struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What an accepting thread shares with the others and the sessions.
struct Accepting {
    sessions: Arc<Reused<(TcpStream, ActiveGuard)>>,
    settings: Current,
    stopping: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    /// For the counters of refused connections.
    queue: Arc<Queue>,
    refusals: Arc<ConnectionRefusals>,
}

fn accept_loop(listener: TcpListener, a: &Accepting) {
    let Accepting {
        sessions,
        settings,
        stopping,
        active,
        ..
    } = a;
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                log::warn!("accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let max_connections = current(settings).max_connections;
        if active.fetch_add(1, Ordering::SeqCst) >= max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            refuse(&mut stream, a);
            continue;
        }
        a.refusals.flush();
        let guard = ActiveGuard(Arc::clone(active));
        if let Err(e) = sessions.run((stream, guard)) {
            log::error!("cannot start a connection thread: {e}");
        }
    }
}
