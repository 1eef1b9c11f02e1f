//! What went wrong in a delivery, of which kind, and whether trying
//! again later can help: one table gives every locally made-up failure
//! its SMTP codes.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::smtp::reply::{EnhancedCode, SmtpReply};

/// Whether a failure may go away by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Severity {
    /// Try again later (SMTP 4xx, network, DNS, TLS, timeouts).
    Temporary,
    /// Give up on the recipient (SMTP 5xx).
    Permanent,
    /// Nothing was tried: the destination is busy (at its connection
    /// limit) or out of tokens (at its rate). Try again soon, or when
    /// the error's [`wait_hint`](DeliveryError::wait_hint) says, without
    /// counting a try.
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
    /// The next hop has no address of the families outgoing connections
    /// may use (`ip_version`, or the family of `source_address`). Only
    /// temporary: the other family's records were not looked up, and a
    /// change of the configuration or of the destination's DNS helps.
    NoUsableAddress,
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
    /// The server's certificate does not pass a check its connection
    /// requires (its DANE TLSA records): temporary, and never retried in
    /// clear.
    TlsAuthentication,
    /// Encryption is required (by the policy, or to send a password)
    /// but the server does not offer it or refuses it.
    EncryptionNeeded,
    /// The recipient domain's MTA-STS policy (RFC 8461, mode `enforce`)
    /// refuses the MX host: it is not among the policy's `mx`, or its TLS
    /// is missing or does not verify. Temporary: the policy or the host
    /// may be fixed.
    MtaSts,
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
    /// The destination is at its connection limit or its rate: nothing
    /// was tried.
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
            NoUsableAddress => (Temporary, 451, (4, 4, 4)),
            Connect => (Temporary, 451, (4, 4, 1)),
            Timeout => (Temporary, 451, (4, 4, 2)),
            Closed => (Temporary, 451, (4, 4, 0)),
            Tls => (Temporary, 451, (4, 7, 5)),
            TlsAuthentication => (Temporary, 451, (4, 7, 5)),
            EncryptionNeeded => (Temporary, 451, (4, 7, 10)),
            MtaSts => (Temporary, 451, (4, 7, 5)),
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
    severity: Severity,
    reply: SmtpReply,
    remote_mta: Option<String>,
    relay: Option<String>,
    /// For a throttled error: how long until the destination may be
    /// used again, when known.
    wait: Option<Duration>,
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
            relay: None,
            wait: None,
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
            relay: None,
            wait: None,
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

    /// The destination is at its rate: nothing was tried, and it may be
    /// used again in `wait`.
    pub fn throttled_for(text: &str, wait: Duration) -> Self {
        let mut e = Self::new(ErrorKind::Throttled, text);
        e.wait = Some(wait);
        e
    }

    /// How long until a throttled destination may be used again, when
    /// the limit knows; `None` for one that is merely busy.
    pub fn wait_hint(&self) -> Option<Duration> {
        self.wait
    }

    /// Names the server that produced this error.
    pub fn at(mut self, remote_mta: impl Into<String>) -> Self {
        self.remote_mta = Some(remote_mta.into());
        self
    }

    /// Names the server, as `host[ip]:port`, that was connected when
    /// this error happened (for the log's `relay=`); a failure to connect
    /// has none.
    pub fn with_relay(mut self, relay: impl Into<String>) -> Self {
        self.relay = Some(relay.into());
        self
    }

    /// The server (`host[ip]:port`) connected when this error happened.
    pub fn relay(&self) -> Option<&str> {
        self.relay.as_deref()
    }

    /// The same failure, temporary whatever its reply says: for a reply
    /// that says nothing about the message (a 5xx greeting).
    pub fn into_temporary(mut self) -> Self {
        self.severity = Severity::Temporary;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether trying again can help.
    pub fn severity(&self) -> Severity {
        self.severity
    }

    /// The reply that explains the failure: the server's own, or one made
    /// up for a local failure (network, DNS, TLS).
    pub fn reply(&self) -> &SmtpReply {
        &self.reply
    }

    /// The server that gave the reply, as `dns; host` for DSNs.
    pub fn remote_mta(&self) -> Option<&str> {
        self.remote_mta.as_deref()
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

#[cfg(test)]
mod tests {
    use super::{DeliveryError, ErrorKind, Severity};
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
            (NoUsableAddress, 451, "4.4.4", Temporary),
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
            assert_eq!(e.severity(), severity, "{kind:?}");
            assert_eq!(e.is_permanent(), severity == Permanent, "{kind:?}");
            assert_eq!(e.to_string(), format!("{code} {status} text"), "{kind:?}");
            assert_eq!(e.remote_mta(), None);
        }
        assert_eq!(DeliveryError::tls("t").kind(), Tls);
        assert_eq!(DeliveryError::throttled("t").kind(), ErrorKind::Throttled);
        assert_eq!(DeliveryError::throttled("t").wait_hint(), None);
        let wait = std::time::Duration::from_secs(60);
        let e = DeliveryError::throttled_for("t", wait);
        assert_eq!(
            (e.severity(), e.wait_hint()),
            (Severity::Throttled, Some(wait))
        );
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
}
