//! A blocking SMTP and LMTP client session: greeting, EHLO/LHLO,
//! STARTTLS, AUTH, the envelope (pipelined when offered), DATA and QUIT.
//! Every failure comes back as a classified [`DeliveryError`].
//!
//! The pieces, each at one seam of the protocol:
//! - `connect`: TCP, Unix socket and implicit TLS, the TLS connector and
//!   handshake;
//! - `reply`: reading one (multi-line) reply within a deadline;
//! - `session`: set-up (greeting, EHLO/LHLO, STARTTLS, AUTH), the
//!   session's `State` and its end;
//! - `transaction`: MAIL, RCPT and DATA, pipelined when offered.

use std::fmt;
use std::io::{self, BufReader};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::delivery::outbound::{IpVersion, Outbound};
use crate::delivery::tls_report::TlsReport;
use crate::delivery::{DeliveryError, ErrorKind};
use crate::smtp::reply::SmtpReply;
use crate::smtp::tls_policy::TlsPolicy;
use crate::smtp::transport::Transport;

mod connect;
mod reply;
mod session;
mod tls;
mod transaction;

pub use session::Extensions;
pub use tls::{tls_connector, verifying_connector, PeerCheck, TlsClient, TlsConnectorError};

/// A user name and password for AUTH. Debug output hides the password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <hidden>)", self.username)
    }
}

/// How sessions behave; shared by every session of a target.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Our name in EHLO/LHLO.
    pub helo_name: String,
    /// Speak LMTP (LHLO, one reply per recipient after DATA).
    pub lmtp: bool,
    pub tls: TlsPolicy,
    /// Used for STARTTLS and implicit TLS; built from the policy.
    pub tls_connector: Option<Arc<TlsClient>>,
    pub auth: Option<Credentials>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// Local address TCP connections are bound to; `None` lets the
    /// kernel choose. Addresses of the other family are not tried.
    pub source_address: Option<IpAddr>,
    /// Address families TCP connections use.
    pub ip_version: IpVersion,
    /// Most transactions one session carries before it is closed instead
    /// of kept for the next message; 0 for no limit.
    pub messages_per_connection: u32,
}

impl ClientSettings {
    /// Where TCP connections come from and which families they use.
    pub fn outbound(&self) -> Outbound {
        Outbound {
            ip_version: self.ip_version,
            source: self.source_address,
        }
    }
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// Where a session stands in its dialogue with the server.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// No transaction is open: the session can carry the next message
    /// without an RSET.
    Idle,
    /// MAIL was sent and the transaction is not over.
    Transaction,
    /// A transaction whose DATA went pipelined behind the envelope: the
    /// reply to it, until the body (or a lone dot, if the message is
    /// abandoned) answers it.
    DataPending(SmtpReply),
    /// A network error, a timeout or a malformed reply (or a body being
    /// sent, until its final dot): the dialogue is out of step (a late
    /// reply may still come, a DATA may be half sent), so the session
    /// must not carry another command, not even RSET or QUIT, whose reply
    /// could be mistaken for another's.
    Broken,
}

/// One connected session.
pub struct Session {
    io: BufReader<Transport>,
    settings: Arc<ClientSettings>,
    /// Host name as configured or found in DNS, for TLS checks and DSNs.
    host: String,
    /// `host[ip]:port` for logs.
    relay: String,
    pub ext: Extensions,
    state: State,
    /// The server has answered something (other than 421) since the
    /// current transaction began: a failure after that may be about this
    /// message.
    heard: bool,
    /// Transactions begun on this session (MAIL sent), for
    /// `messages_per_connection`.
    transactions: u32,
    /// What the session's TLS amounts to, for the log and the metrics.
    tls: TlsReport,
    /// The certificate check this connection needs (DANE), which also
    /// makes TLS required.
    check: Option<Arc<dyn PeerCheck>>,
}

fn protocol_error(what: &str) -> DeliveryError {
    DeliveryError::new(ErrorKind::Protocol, what)
}

impl Session {
    /// A session on a connected (and, if need be, encrypted) stream,
    /// before the greeting is read.
    fn on(
        (transport, tls): (Transport, TlsReport),
        settings: Arc<ClientSettings>,
        host: String,
        relay: String,
        check: Option<Arc<dyn PeerCheck>>,
    ) -> Self {
        Session {
            tls,
            check,
            io: BufReader::new(transport),
            settings,
            host,
            relay,
            ext: Extensions::default(),
            state: State::Idle,
            heard: false,
            transactions: 0,
        }
    }

    /// `host[ip]:port` of the server.
    pub fn relay(&self) -> &str {
        &self.relay
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn is_tls(&self) -> bool {
        self.io.get_ref().is_tls()
    }

    /// The TLS version and certificate verification of the session.
    pub fn tls_report(&self) -> TlsReport {
        self.tls
    }

    /// True when no transaction is open, so the next can start at once.
    pub fn is_idle(&self) -> bool {
        self.state == State::Idle
    }

    /// True when an error left the session unusable (see [`State::Broken`]).
    pub fn is_broken(&self) -> bool {
        self.state == State::Broken
    }

    /// True when the session has carried as many transactions as
    /// `messages_per_connection` allows: it must be closed, not kept for
    /// the next message.
    pub fn worn_out(&self) -> bool {
        let limit = self.settings.messages_per_connection;
        limit != 0 && self.transactions >= limit
    }

    /// True when the server answered nothing (or only 421) since the
    /// transaction began: a failure then says nothing about the message (a
    /// connection closed while idle), and the transaction can be tried
    /// again on a new connection at once.
    pub fn nothing_heard(&self) -> bool {
        !self.heard
    }

    /// An error from a reply of this server.
    fn rejected(&self, reply: SmtpReply) -> DeliveryError {
        DeliveryError::from_reply(reply).at(self.host.clone())
    }

    fn io_failed(&self, what: &str, e: &io::Error) -> DeliveryError {
        DeliveryError::network(&format!("{what} {}", self.relay), e).at(self.host.clone())
    }

    /// The error for a command on a session that is out of step.
    fn out_of_step(&self) -> DeliveryError {
        protocol_error(&format!("session with {} out of step", self.relay)).at(self.host.clone())
    }
}

#[cfg(test)]
pub(crate) mod testing;
