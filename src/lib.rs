#![warn(missing_docs, unreachable_pub)]
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
//!
//! Embedded (with `default-features = false`: no command line, no clap,
//! env_logger or signal-hook), relaying through a smarthost:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use mailqueue::{build_target, Config, Envelope, Queue, QueueOptions};
//!
//! let target = build_target(&"smtp://127.0.0.1:25".parse()?, &Config::default())?;
//! let queue = Queue::open(QueueOptions::new("/var/spool/myapp-mail"), target)?;
//! let envelope = Envelope::new(Some("app@example.org".parse()?), vec!["user@example.net".parse()?]);
//! let id = queue.enqueue(&envelope, b"Subject: hello\r\n\r\nHi.\r\n")?; // on disk, fsynced
//! println!("queued as {id}");
//! queue.close(); // running attempts finish; the rest waits on disk
//! # Ok(())
//! # }
//! ```
//!
//! Your own target implements [`DeliveryTarget`], one method.

// The embedding API: the items below, re-exported at the root.
mod address;
mod envelope;
mod header;
mod id;
mod logline;

// The daemon's parts, for the `mailqueue` binary, the tests, benches and
// fuzz targets. Not part of the embedding API: hidden from the docs and
// free to change in any release.
#[doc(hidden)]
pub mod config;
#[doc(hidden)]
pub mod date;
#[doc(hidden)]
pub mod delivery;
pub mod dkim;
#[doc(hidden)]
pub mod ingest;
#[doc(hidden)]
pub mod queue;
#[doc(hidden)]
pub mod smtp;
#[doc(hidden)]
pub mod sys;

pub use address::{Address, AddressError, ReversePath};
pub use config::{build_delivery, build_target, Config, ConfigError, TargetSpec, TlsPolicy};
pub use delivery::{
    Body, DeliveryError, DeliveryTarget, ErrorKind, Handoff, MessageInfo, RecipientOutcome,
    Severity,
};
pub use envelope::{
    BadNotify, BodyType, Envelope, MailParams, Notify, OrigRecipient, Recipient, Ret,
};
pub use id::{BadMessageId, MessageId};
pub use queue::retry::RetryPolicy;
pub use queue::{NoticeOptions, Queue, QueueError, QueueLimits, QueueOptions};
pub use smtp::reply::{EnhancedCode, SmtpReply};
