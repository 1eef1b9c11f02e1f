//! Delivery targets: where the queue hands messages on.
//!
//! A target is one trait, [`DeliveryTarget`]: an attempt hands it the
//! message, its pending recipients and its body, and gets back one
//! [`RecipientOutcome`] per recipient, in order. How the target gets
//! there is its own business: the relay and LMTP client runs one SMTP
//! transaction (MAIL, RCPT for each recipient, DATA; a rejected RCPT fails
//! only its recipient, a failed DATA all that were accepted, LMTP answers
//! per recipient), the MX client one transaction per domain, the queue
//! stores a copy. Every failure is a [`DeliveryError`] that says whether
//! trying again later can help.

pub mod dns;
pub mod pool;
pub mod relay;
pub mod remote;
pub mod smtp_client;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use crate::address::ReversePath;
use crate::envelope::{MailParams, Recipient};
use crate::id::MessageId;
use crate::smtp::reply::{EnhancedCode, SmtpReply};

/// Whether a failure may go away by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Try again later (SMTP 4xx, network, DNS, TLS, timeouts).
    Temporary,
    /// Give up on the recipient (SMTP 5xx).
    Permanent,
    /// Nothing was tried: the destination is busy (at its connection
    /// limit). Try again soon, without counting a try.
    Throttled,
}

/// What went wrong in a failed delivery step, whoever noticed it.
///
/// A failure noticed here (a refused connection, a failed TLS handshake)
/// gets its reply code, enhanced status code and severity from its kind,
/// in [`ErrorKind::local_reply`]; a server's own reply is
/// [`ErrorKind::Rejected`] and keeps the codes the server gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A DNS lookup failed, for now (no answer, a server failure).
    Dns,
    /// DNS says the domain does not exist (NXDOMAIN).
    NoSuchDomain,
    /// The destination cannot be looked up at all: a domain that is not
    /// a valid name, a malformed address literal.
    BadDomain,
    /// DNS says for certain that no mail server of the domain has an
    /// address.
    NoMailServer,
    /// The domain says it takes no mail (a null MX, RFC 7505).
    NullMx,
    /// No connection could be made, or it broke (refused, reset).
    Connect,
    /// The server did not answer in time.
    Timeout,
    /// The connection to the server is gone: nothing to send on.
    Closed,
    /// The TLS negotiation failed: a failed handshake, or data sent
    /// ahead of it. Under the `may` policy the MX client tries again in
    /// clear.
    Tls,
    /// Encryption is required (by the policy, or to send a password)
    /// but the server does not offer it or refuses it.
    EncryptionNeeded,
    /// Our credentials were refused, or the server offers no mechanism
    /// we speak.
    Auth,
    /// Our configuration cannot do what is needed (TLS is wanted but no
    /// TLS client is set up).
    Config,
    /// The server's reply is malformed or not the one expected.
    Protocol,
    /// The server's own reply refused the step (its 4xx or 5xx).
    Rejected,
    /// The message is larger than the server takes (its SIZE).
    TooBig,
    /// The message needs SMTPUTF8, which the server does not offer.
    NeedsSmtputf8,
    /// The destination is at its connection limit: nothing was tried.
    Throttled,
    /// Our side, for now: reading the queued message, the disk, an
    /// internal error.
    Local,
    /// Our side, for good: the queued message is damaged, or the queue
    /// refuses it (corrupt metadata, no recipients, full).
    LocalPermanent,
    /// The queue is shutting down.
    ShuttingDown,
}

impl ErrorKind {
    /// The severity, reply code and enhanced status code of a failure of
    /// this kind made up here, without a server's reply. (A
    /// [`Rejected`](ErrorKind::Rejected) error normally carries the
    /// server's reply; made up, it is a plain temporary failure.)
    pub fn local_reply(self) -> (Severity, u16, EnhancedCode) {
        use ErrorKind::*;
        use Severity::{Permanent, Temporary};
        let (severity, code, (class, subject, detail)) = match self {
            Dns => (Temporary, 451, (4, 4, 3)),
            NoSuchDomain => (Permanent, 550, (5, 1, 2)),
            BadDomain => (Permanent, 553, (5, 1, 2)),
            NoMailServer => (Permanent, 550, (5, 4, 4)),
            NullMx => (Permanent, 556, (5, 1, 10)),
            Connect => (Temporary, 451, (4, 4, 1)),
            Timeout => (Temporary, 451, (4, 4, 2)),
            Closed => (Temporary, 451, (4, 4, 0)),
            Tls => (Temporary, 451, (4, 7, 5)),
            EncryptionNeeded => (Temporary, 451, (4, 7, 10)),
            Auth => (Temporary, 451, (4, 7, 8)),
            Config => (Temporary, 451, (4, 7, 0)),
            Protocol => (Temporary, 451, (4, 5, 0)),
            Rejected => (Temporary, 451, (4, 0, 0)),
            TooBig => (Permanent, 552, (5, 3, 4)),
            NeedsSmtputf8 => (Permanent, 553, (5, 6, 7)),
            Throttled => (Severity::Throttled, 451, (4, 4, 5)),
            Local => (Temporary, 451, (4, 3, 0)),
            LocalPermanent => (Permanent, 554, (5, 3, 0)),
            ShuttingDown => (Temporary, 421, (4, 3, 2)),
        };
        (severity, code, EnhancedCode::new(class, subject, detail))
    }
}

/// A failed delivery step, classified where it happened.
///
/// ```
/// use mailqueue::{DeliveryError, ErrorKind, SmtpReply};
/// let e = DeliveryError::from_reply(SmtpReply::parse_line("550 5.1.1 no such user").unwrap());
/// assert!(e.is_permanent());
/// assert_eq!(e.kind(), ErrorKind::Rejected);
/// let e = DeliveryError::new(ErrorKind::Connect, "connection refused");
/// assert!(!e.is_permanent());
/// assert_eq!(e.to_string(), "451 4.4.1 connection refused");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryError {
    kind: ErrorKind,
    /// Whether trying again can help.
    pub severity: Severity,
    /// The reply that explains the failure: the server's own, or one made
    /// up for a local failure (network, DNS, TLS).
    pub reply: SmtpReply,
    /// The server that gave the reply, as `dns; host` for DSNs.
    pub remote_mta: Option<String>,
}

impl DeliveryError {
    /// A failure noticed here, with the codes and severity of its kind
    /// (see [`ErrorKind::local_reply`]).
    pub fn new(kind: ErrorKind, text: &str) -> Self {
        let (severity, code, enhanced) = kind.local_reply();
        DeliveryError {
            kind,
            severity,
            reply: SmtpReply::new(code, Some(enhanced), text),
            remote_mta: None,
        }
    }

    /// Classifies a server's reply: 5xx is permanent, anything else temporary.
    pub fn from_reply(reply: SmtpReply) -> Self {
        let severity = if reply.is_permanent() {
            Severity::Permanent
        } else {
            Severity::Temporary
        };
        DeliveryError {
            kind: ErrorKind::Rejected,
            severity,
            reply,
            remote_mta: None,
        }
    }

    /// A network failure: [`ErrorKind::Timeout`] for a timeout,
    /// [`ErrorKind::Connect`] for anything else.
    pub fn network(what: &str, err: &io::Error) -> Self {
        let kind = match err.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorKind::Timeout,
            _ => ErrorKind::Connect,
        };
        Self::new(kind, &format!("{what}: {err}"))
    }

    /// A failed TLS negotiation ([`ErrorKind::Tls`]).
    pub fn tls(text: &str) -> Self {
        Self::new(ErrorKind::Tls, text)
    }

    /// The destination is at its connection limit; nothing was tried.
    pub fn throttled(text: &str) -> Self {
        Self::new(ErrorKind::Throttled, text)
    }

    /// Names the server that produced this error.
    pub fn at(mut self, remote_mta: impl Into<String>) -> Self {
        self.remote_mta = Some(remote_mta.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True when trying again cannot help.
    pub fn is_permanent(&self) -> bool {
        self.severity == Severity::Permanent
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reply.fmt(f)
    }
}

impl std::error::Error for DeliveryError {}

/// What a target needs to know to start a transaction.
#[derive(Debug, Clone)]
pub struct MessageInfo {
    pub id: MessageId,
    pub sender: ReversePath,
    pub params: MailParams,
    /// Size of the message in bytes, for SIZE=.
    pub size: u64,
}

/// The message content, which can be read as many times as needed
/// (one read per transaction, e.g. one per destination domain).
#[derive(Debug, Clone)]
pub struct Body {
    source: BodySource,
    len: u64,
    checksum: Option<u32>,
}

#[derive(Debug, Clone)]
enum BodySource {
    File(PathBuf),
    Open(Arc<File>),
    Memory(Arc<[u8]>),
}

impl Body {
    /// A body read from the first `len` bytes of a spool file. With a
    /// checksum, a reader that reaches the end of a body whose CRC-32
    /// differs fails with a [`DamagedBody`] error instead of ending.
    pub fn from_file(path: PathBuf, len: u64, checksum: Option<u32>) -> Self {
        Body {
            source: BodySource::File(path),
            len,
            checksum,
        }
    }

    /// A body read from the first `len` bytes of an open spool file, with
    /// positional reads: readers share the file but not a position.
    pub fn from_open_file(file: Arc<File>, len: u64, checksum: Option<u32>) -> Self {
        Body {
            source: BodySource::Open(file),
            len,
            checksum,
        }
    }

    /// A body held in memory.
    pub fn from_bytes(bytes: impl Into<Arc<[u8]>>) -> Self {
        let bytes = bytes.into();
        Body {
            len: bytes.len() as u64,
            source: BodySource::Memory(bytes),
            checksum: None,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A fresh reader positioned at the start.
    pub fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(match &self.source {
            BodySource::File(p) => {
                let file = io::BufReader::with_capacity(64 * 1024, File::open(p)?.take(self.len));
                self.checked(file)
            }
            // Its readers ask for 64 KiB at a time: no buffer needed.
            BodySource::Open(f) => self.checked(Positional {
                file: f,
                at: 0,
                end: self.len,
            }),
            BodySource::Memory(b) => Box::new(&b[..]),
        })
    }

    fn checked<'a>(&self, reader: impl Read + Send + 'a) -> Box<dyn Read + Send + 'a> {
        match self.checksum {
            Some(expected) => Box::new(Checked {
                inner: reader,
                hasher: crc32fast::Hasher::new(),
                expected,
            }),
            None => Box::new(reader),
        }
    }

    /// Reads the whole body into memory.
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(self.len as usize);
        self.open()?.read_to_end(&mut v)?;
        Ok(v)
    }
}

/// The error a body reader fails with when the message on disk is not the
/// one acknowledged (its checksum differs): the sender must learn that it
/// was not delivered, and the recipient must not get the damaged text.
#[derive(Debug, thiserror::Error)]
#[error("the queued message is damaged: its checksum is {found:08x}, {expected:08x} was recorded")]
pub struct DamagedBody {
    pub expected: u32,
    pub found: u32,
}

impl DamagedBody {
    /// The damage behind an I/O error, if that is what it is.
    pub fn from_io(e: &io::Error) -> Option<&DamagedBody> {
        e.get_ref().and_then(|inner| inner.downcast_ref())
    }
}

/// Reads `at..end` of a shared file.
struct Positional<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl Read for Positional<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = buf
            .len()
            .min((self.end - self.at).min(usize::MAX as u64) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the message file is shorter than the message",
            ));
        }
        self.at += n as u64;
        Ok(n)
    }
}

/// Checks the CRC-32 of what passes through when the end is reached.
struct Checked<R> {
    inner: R,
    hasher: crc32fast::Hasher,
    expected: u32,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let found = self.hasher.clone().finalize();
            if found != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    DamagedBody {
                        expected: self.expected,
                        found,
                    },
                ));
            }
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Somewhere messages can be delivered: a smarthost, MX hosts, an LMTP
/// server, or the queue itself.
///
/// One call delivers one message to the recipients still pending and
/// returns one [`RecipientOutcome`] per recipient, in the order given.
/// A target that delivers all or nothing answers every recipient alike
/// with [`RecipientOutcome::all`]; one that learns a result per recipient
/// (LMTP, MX delivery by domain) fills them one by one. An outcome left
/// out is a bug of the target: the queue logs it and retries that
/// recipient later, it never counts it as delivered.
///
/// ```
/// use mailqueue::{Body, DeliveryError, DeliveryTarget, ErrorKind, Handoff, MessageInfo,
///                 Recipient, RecipientOutcome};
///
/// /// Hands every message to some store of the embedder's, all or nothing.
/// struct Archive;
///
/// impl DeliveryTarget for Archive {
///     fn deliver(&self, msg: &MessageInfo, rcpts: &[Recipient], body: &Body)
///         -> Vec<RecipientOutcome>
///     {
///         let stored = body
///             .to_vec()
///             .map(|bytes| println!("{}: {} bytes for {} recipients", msg.id, bytes.len(), rcpts.len()))
///             .map_err(|e| DeliveryError::new(ErrorKind::Local, &format!("archive: {e}")));
///         // Final delivery: a sender who asked for it hears "delivered".
///         RecipientOutcome::all(rcpts.len(), stored.map(|()| Handoff::Delivered))
///     }
/// }
///
/// let info = MessageInfo {
///     id: mailqueue::MessageId::generate(),
///     sender: Some("me@example.org".parse().unwrap()),
///     params: Default::default(),
///     size: 5,
/// };
/// let rcpts = [Recipient::new("you@example.net".parse().unwrap())];
/// let outcomes = Archive.deliver(&info, &rcpts, &Body::from_bytes(&b"Hi.\r\n"[..]));
/// assert_eq!(outcomes.len(), 1);
/// assert_eq!(outcomes[0].result, Ok(Handoff::Delivered));
/// ```
pub trait DeliveryTarget: Send + Sync {
    /// Delivers one message to `rcpts`; returns exactly one outcome per
    /// recipient, in order.
    fn deliver(&self, msg: &MessageInfo, rcpts: &[Recipient], body: &Body)
        -> Vec<RecipientOutcome>;
}

/// What became of one recipient in one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecipientOutcome {
    /// Taken on by the next hop (and how), or why not.
    pub result: Result<Handoff, DeliveryError>,
    /// The server that answered for the recipient, as `host[ip]:port`,
    /// for logs and notices.
    pub relay: Option<String>,
}

impl RecipientOutcome {
    /// An outcome with no relay named.
    pub fn new(result: Result<Handoff, DeliveryError>) -> Self {
        RecipientOutcome {
            result,
            relay: None,
        }
    }

    /// The same outcome for each of `n` recipients: what a target that
    /// delivers all or nothing returns.
    pub fn all(n: usize, result: Result<Handoff, DeliveryError>) -> Vec<Self> {
        vec![Self::new(result); n]
    }

    /// Names the server that answered.
    pub fn via(mut self, relay: Option<String>) -> Self {
        self.relay = relay;
        self
    }
}

/// What the next hop took on with a recipient it accepted; decides the
/// success notice a sender who asked for one (NOTIFY=SUCCESS) gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Handoff {
    /// Final delivery (LMTP into a mailbox): we say "delivered".
    Delivered,
    /// Handed to a hop that does not speak DSN: we are the last that
    /// can report, so we say "relayed".
    #[default]
    Relayed,
    /// Handed to a hop that speaks DSN, with the parameters passed on:
    /// it reports, we say nothing.
    Passed,
}

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
    spec: &crate::config::TargetSpec,
    config: &crate::config::Config,
) -> Result<Arc<dyn DeliveryTarget>, TargetError> {
    use crate::config::{TargetSpec, TlsPolicy};
    use smtp_client::{ClientSettings, Credentials, Endpoint};

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
    let settings = ClientSettings {
        helo_name: config.hostname.clone(),
        lmtp: matches!(spec, TargetSpec::Lmtp { .. } | TargetSpec::LmtpUnix { .. }),
        tls: policy,
        tls_connector: smtp_client::tls_connector(policy, ca)?.map(Arc::new),
        auth,
        connect_timeout: d.connect_timeout,
        command_timeout: d.command_timeout,
        data_timeout: d.data_timeout,
    };
    let endpoint = match spec {
        TargetSpec::Remote => {
            let resolver = dns::Resolver::new(&d.dns_servers, d.dns_timeout)?;
            let remote = remote::RemoteSettings {
                client: Arc::new(settings),
                mx_port: d.mx_port,
                destination_concurrency: destination_limit(
                    d.destination_concurrency,
                    config.queue.workers,
                ),
                connection_cache_time: d.connection_cache_time,
            };
            return Ok(Arc::new(remote::RemoteTarget::new(resolver, remote)));
        }
        TargetSpec::Smtp { host, port }
        | TargetSpec::Smtps { host, port }
        | TargetSpec::Lmtp { host, port } => Endpoint::Tcp {
            host: host.clone(),
            port: *port,
        },
        TargetSpec::LmtpUnix { path } => Endpoint::Unix(path.clone()),
    };
    Ok(Arc::new(relay::RelayTarget::new(
        settings,
        endpoint,
        implicit_tls,
        d.connection_cache_time,
    )))
}

#[cfg(test)]
mod tests {
    use super::{destination_limit, DeliveryError, ErrorKind, Severity};
    use crate::smtp::reply::SmtpReply;

    #[test]
    fn each_kind_makes_up_its_own_codes() {
        use ErrorKind::*;
        use Severity::{Permanent, Temporary};
        let table = [
            (Dns, 451, "4.4.3", Temporary),
            (NoSuchDomain, 550, "5.1.2", Permanent),
            (BadDomain, 553, "5.1.2", Permanent),
            (NoMailServer, 550, "5.4.4", Permanent),
            (NullMx, 556, "5.1.10", Permanent),
            (Connect, 451, "4.4.1", Temporary),
            (Timeout, 451, "4.4.2", Temporary),
            (Closed, 451, "4.4.0", Temporary),
            (Tls, 451, "4.7.5", Temporary),
            (EncryptionNeeded, 451, "4.7.10", Temporary),
            (Auth, 451, "4.7.8", Temporary),
            (Config, 451, "4.7.0", Temporary),
            (Protocol, 451, "4.5.0", Temporary),
            (Rejected, 451, "4.0.0", Temporary),
            (TooBig, 552, "5.3.4", Permanent),
            (NeedsSmtputf8, 553, "5.6.7", Permanent),
            (ErrorKind::Throttled, 451, "4.4.5", Severity::Throttled),
            (Local, 451, "4.3.0", Temporary),
            (LocalPermanent, 554, "5.3.0", Permanent),
            (ShuttingDown, 421, "4.3.2", Temporary),
        ];
        for (kind, code, status, severity) in table {
            let e = DeliveryError::new(kind, "text");
            assert_eq!(e.kind(), kind);
            assert_eq!(e.severity, severity, "{kind:?}");
            assert_eq!(e.is_permanent(), severity == Permanent, "{kind:?}");
            assert_eq!(e.to_string(), format!("{code} {status} text"), "{kind:?}");
            assert_eq!(e.remote_mta, None);
        }
        assert_eq!(DeliveryError::tls("t").kind(), Tls);
        assert_eq!(DeliveryError::throttled("t").kind(), ErrorKind::Throttled);
    }

    #[test]
    fn a_network_error_is_a_timeout_or_a_failed_connection() {
        use std::io;
        let timed_out = io::Error::new(io::ErrorKind::TimedOut, "timed out");
        let e = DeliveryError::network("read from x", &timed_out);
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert_eq!(e.to_string(), "451 4.4.2 read from x: timed out");
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        let e = DeliveryError::network("connect to x", &refused);
        assert_eq!(e.kind(), ErrorKind::Connect);
        assert_eq!(e.to_string(), "451 4.4.1 connect to x: refused");
    }

    #[test]
    fn a_server_reply_is_rejected_with_its_own_codes() {
        let e = DeliveryError::from_reply(SmtpReply::parse_line("550 5.7.1 go away").unwrap());
        assert_eq!(e.kind(), ErrorKind::Rejected);
        assert!(e.is_permanent());
        assert_eq!(e.to_string(), "550 5.7.1 go away");
        let e = DeliveryError::from_reply(SmtpReply::parse_line("452 4.2.2 full").unwrap());
        assert_eq!(e.kind(), ErrorKind::Rejected);
        assert_eq!(e.severity, Severity::Temporary);
    }

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
