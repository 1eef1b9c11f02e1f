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

mod body;
pub mod dane;
pub mod dns;
mod error;
pub mod limits;
pub mod mta_sts;
pub mod outbound;
pub mod pool;
pub mod relay;
pub mod remote;
pub mod routing;
pub mod smtp_client;
pub mod tls_report;

pub use body::{Body, DamagedBody};
pub use error::{DeliveryError, ErrorKind, Severity};

use crate::address::ReversePath;
use crate::envelope::{MailParams, Recipient};
use crate::id::MessageId;
use crate::smtp::reply::SmtpReply;
use tls_report::TlsReport;

/// What a target needs to know to start a transaction.
#[derive(Debug, Clone)]
pub struct MessageInfo {
    /// The queue id, for logs.
    pub id: MessageId,
    /// The reverse-path for MAIL FROM; `None` is `<>`.
    pub sender: ReversePath,
    /// What MAIL FROM carries on (RET, ENVID, SMTPUTF8, BODY).
    pub params: MailParams,
    /// Size of the message in bytes, for SIZE=.
    pub size: u64,
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
    /// The next hop's reply for a recipient it took on (`250 2.0.0 Ok:
    /// queued as X`), for the log; `None` when there is none to tell.
    pub reply: Option<SmtpReply>,
    /// The TLS of the session that answered, for the log; `None` when
    /// no session answered or the target has no sessions.
    pub tls: Option<TlsReport>,
}

impl RecipientOutcome {
    /// An outcome with no relay named.
    pub fn new(result: Result<Handoff, DeliveryError>) -> Self {
        RecipientOutcome {
            result,
            relay: None,
            reply: None,
            tls: None,
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

    /// Names the TLS of the session that answered.
    pub fn over(mut self, tls: Option<TlsReport>) -> Self {
        self.tls = tls;
        self
    }

    /// Adds the next hop's reply to a success.
    pub fn with_reply(mut self, reply: Option<SmtpReply>) -> Self {
        self.reply = reply;
        self
    }
}

/// Outcomes gathered by position from parts of a delivery (domains,
/// routes, hops), one per recipient: a position no part answered is a
/// bug of ours, reported as a temporary failure, never as delivered.
pub(crate) fn fill_outcomes(outcomes: Vec<Option<RecipientOutcome>>) -> Vec<RecipientOutcome> {
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                let e = DeliveryError::new(ErrorKind::Local, "internal error in delivery");
                RecipientOutcome::new(Err(e))
            })
        })
        .collect()
}

/// What the next hop took on with a recipient it accepted; decides the
/// success notice a sender who asked for one (NOTIFY=SUCCESS) gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
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
