//! mailqueue: a durable, synchronous mail queue.
//!
//! Messages are accepted through [`Queue::enqueue`] (or the queue's own
//! [`DeliveryTarget`] implementation), written to disk and fsynced before
//! the call returns, and delivered by a fixed pool of worker threads to a
//! [`DeliveryTarget`]. Each recipient is retried on its own until it is
//! delivered, fails permanently or expires; permanent failures are reported
//! to the sender in an RFC 3464 notice.
//!
//! There is no async runtime: one timer thread, N worker threads, blocking
//! I/O.

pub mod address;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod date;
pub mod delivery;
pub mod envelope;
mod id;
pub mod pickup;
pub mod queue;
pub mod sendmail;
pub mod smtp;
pub mod sys;

pub use address::{Address, AddressError, ReversePath};
pub use config::{Config, ConfigError};
pub use delivery::{Body, DeliveryError, DeliveryTarget, Handoff, MessageInfo, RecipientOutcome};
pub use envelope::{BodyType, Envelope, MailParams, Notify, Recipient, Ret};
pub use id::{BadMessageId, MessageId};
pub use queue::{Queue, QueueError};
pub use smtp::reply::{EnhancedCode, SmtpReply};
