//! The per-message metadata file: envelope, per-recipient state and
//! schedule, as versioned JSON.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::address::{Address, ReversePath};
use crate::envelope::{Envelope, MailParams, Notify, OrigRecipient, Recipient};
use crate::id::MessageId;
use crate::smtp::reply::SmtpReply;

/// The metadata format written by this version.
pub const META_VERSION: u32 = 1;

/// Wall-clock time as milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Now, by the engine's clock: see [`crate::queue::clock`].
    pub fn now() -> Timestamp {
        crate::queue::clock::now()
    }

    pub fn from_system(t: SystemTime) -> Timestamp {
        Timestamp(
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        )
    }

    pub fn to_system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    pub fn unix_seconds(self) -> u64 {
        self.0 / 1000
    }

    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(u64::MAX as u128) as u64),
        )
    }

    /// How long after `earlier` this is; zero if it is not later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where a recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptStatus {
    /// Not yet delivered; will be tried (again).
    Pending,
    Delivered,
    /// Failed for good; never tried again.
    Failed,
}

/// One recipient's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientMeta {
    pub address: Address,
    /// The address before internal rewriting, when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<OrigRecipient>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    pub status: RcptStatus,
    pub tries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<SmtpReply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_mta: Option<String>,
    #[serde(default)]
    pub delay_warned: bool,
    /// Failed because the queue gave up (max_tries, max_lifetime or the
    /// operator), not because the last reply was permanent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
    /// Not tried at the last attempt: its destination was at its rate
    /// or connection limit. Cleared by the next real try. (Absent from
    /// files written before it existed.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled: Option<Throttle>,
}

/// Why a pending recipient waits without being tried, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttle {
    /// When it is tried again.
    pub until: Timestamp,
    /// The limit it waits for: `rate 55/1m to relay.example.com`.
    pub reason: String,
}

impl RecipientMeta {
    /// The address notices name: the one before any rewriting.
    pub fn reported_address(&self) -> &Address {
        self.original.as_ref().unwrap_or(&self.address)
    }

    pub fn notify(&self) -> Notify {
        self.notify.unwrap_or_default()
    }

    /// The recipient as handed to a delivery target.
    pub fn to_recipient(&self) -> Recipient {
        Recipient {
            address: self.address.clone(),
            original: self.original.clone(),
            orcpt: self.orcpt.clone(),
            notify: self.notify,
        }
    }
}

/// Everything the queue knows about a message besides its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    pub version: u32,
    pub id: MessageId,
    /// `null` is the null reverse-path `<>`.
    pub sender: ReversePath,
    pub arrival: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<Timestamp>,
    pub next_attempt: Timestamp,
    /// Size of the message in bytes (the message file also holds the
    /// metadata trailer after it).
    pub size: u64,
    /// CRC-32 (IEEE) of the message, checked whenever it is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<u32>,
    #[serde(flatten)]
    pub params: MailParams,
    #[serde(default)]
    pub hold: bool,
    /// When the current hold began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_since: Option<Timestamp>,
    /// Time spent held before, in milliseconds; it does not count
    /// towards the message's lifetime.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_ms: u64,
    /// This message is a delivery status notification made by the queue.
    #[serde(default)]
    pub is_dsn: bool,
    /// The operator expired the message while an attempt ran: the
    /// attempt's results are recorded first, then every recipient still
    /// pending fails.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expire_requested: bool,
    /// The target the operator pinned the message to (`requeue --target
    /// URL`), used instead of the routes until it is delivered or
    /// requeued again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub recipients: Vec<RecipientMeta>,
}

impl MessageMeta {
    /// Metadata for a message arriving now, due at once.
    pub fn new(id: MessageId, envelope: &Envelope, size: u64) -> MessageMeta {
        let now = Timestamp::now();
        MessageMeta {
            version: META_VERSION,
            id,
            sender: envelope.sender.clone(),
            arrival: now,
            last_attempt: None,
            next_attempt: now,
            size,
            checksum: None,
            params: envelope.params.clone(),
            hold: false,
            held_since: None,
            held_ms: 0,
            is_dsn: false,
            expire_requested: false,
            target: None,
            recipients: envelope
                .recipients
                .iter()
                .map(|r| RecipientMeta {
                    address: r.address.clone(),
                    original: r.original.clone().filter(|o| *o != r.address),
                    orcpt: r.orcpt.clone(),
                    notify: r.notify,
                    status: RcptStatus::Pending,
                    tries: 0,
                    last_error: None,
                    remote_mta: None,
                    delay_warned: false,
                    expired: false,
                    throttled: None,
                })
                .collect(),
        }
    }

    /// How long the message has been queued, not counting time held.
    pub fn age(&self, now: Timestamp) -> std::time::Duration {
        now.since(self.arrival)
            .saturating_sub(std::time::Duration::from_millis(self.held_ms))
    }

    pub fn pending(&self) -> impl Iterator<Item = &RecipientMeta> {
        self.recipients
            .iter()
            .filter(|r| r.status == RcptStatus::Pending)
    }

    pub fn has_pending(&self) -> bool {
        self.pending().next().is_some()
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a metadata file, refusing versions this code does not know
    /// and files whose content contradicts itself.
    pub fn from_json(bytes: &[u8]) -> Result<MessageMeta, MetaError> {
        let meta: MessageMeta = serde_json::from_slice(bytes).map_err(MetaError::json)?;
        if meta.version != META_VERSION {
            return Err(MetaError::Version(meta.version));
        }
        if meta.recipients.is_empty() {
            return Err(MetaError::NoRecipients);
        }
        Ok(meta)
    }
}

/// Why metadata cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// Not JSON, or not the fields of metadata (the parser's message).
    #[error("{0}")]
    Json(String),
    /// Written by a version of this code that this one does not know.
    #[error("unknown metadata version {0}")]
    Version(u32),
    /// Metadata without a single recipient.
    #[error("no recipients")]
    NoRecipients,
}

impl MetaError {
    fn json(e: serde_json::Error) -> Self {
        MetaError::Json(e.to_string())
    }
}

/// What start-up needs of a message to schedule it: a few fields parsed
/// out of its metadata, the rest skipped. Holding 10^5 of these takes a
/// few megabytes where whole metadata took over a hundred; the attempt
/// reads (and checks) the whole metadata later anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub id: MessageId,
    pub next_attempt: Timestamp,
    pub size: u64,
    pub hold: bool,
    /// Some recipient still waits for delivery.
    pub pending: bool,
    /// Some recipient still waiting was tried (the message is deferred).
    pub deferred: bool,
    pub arrival: Timestamp,
    pub held_ms: u64,
}

impl Queued {
    /// Parses the fields start-up needs, with the checks of
    /// [`MessageMeta::from_json`] on them.
    pub fn from_json(bytes: &[u8]) -> Result<Queued, MetaError> {
        // The id borrowed and the recipients folded as they are read: no
        // allocation per message (start-up parses up to millions).
        #[derive(Deserialize)]
        struct View<'a> {
            version: u32,
            id: &'a str,
            next_attempt: Timestamp,
            size: u64,
            #[serde(default)]
            hold: bool,
            arrival: Timestamp,
            #[serde(default)]
            held_ms: u64,
            recipients: Recipients,
        }
        let v: View = serde_json::from_slice(bytes).map_err(MetaError::json)?;
        if v.version != META_VERSION {
            return Err(MetaError::Version(v.version));
        }
        if v.recipients.count == 0 {
            return Err(MetaError::NoRecipients);
        }
        let id =
            v.id.parse()
                .map_err(|e: crate::id::BadMessageId| MetaError::Json(e.to_string()))?;
        Ok(Queued {
            id,
            next_attempt: v.next_attempt,
            size: v.size,
            hold: v.hold,
            pending: v.recipients.pending,
            deferred: v.recipients.deferred,
            arrival: v.arrival,
            held_ms: v.held_ms,
        })
    }
}

/// The recipients as start-up needs them: how many, whether one is
/// pending, whether a pending one was tried.
#[derive(Default)]
struct Recipients {
    count: usize,
    pending: bool,
    deferred: bool,
}

impl<'de> Deserialize<'de> for Recipients {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Status {
            status: RcptStatus,
            tries: u32,
        }
        struct Fold;
        impl<'de> serde::de::Visitor<'de> for Fold {
            type Value = Recipients;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of recipients")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Recipients, A::Error> {
                let mut r = Recipients::default();
                while let Some(s) = seq.next_element::<Status>()? {
                    r.count += 1;
                    if s.status == RcptStatus::Pending {
                        r.pending = true;
                        r.deferred |= s.tries > 0;
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_seq(Fold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_up_view_agrees_with_the_whole_metadata() {
        let env = Envelope::new(
            None,
            vec!["a@b.c".parse().unwrap(), "d@e.f".parse().unwrap()],
        );
        let mut meta = MessageMeta::new(MessageId::generate(), &env, 1234);
        meta.hold = true;
        meta.recipients[0].status = RcptStatus::Delivered;
        let q = Queued::from_json(&meta.to_json()).unwrap();
        assert_eq!(
            (q.id, q.next_attempt, q.size, q.hold, q.pending),
            (meta.id, meta.next_attempt, 1234, true, true)
        );
        assert!(!q.deferred);
        assert_eq!((q.arrival, q.held_ms), (meta.arrival, 0));
        meta.recipients[1].tries = 1;
        meta.held_ms = 70;
        let q = Queued::from_json(&meta.to_json()).unwrap();
        assert!(q.deferred);
        assert_eq!(q.held_ms, 70);
        meta.recipients[1].status = RcptStatus::Failed;
        let q = Queued::from_json(&meta.to_json()).unwrap();
        assert!(!q.pending && !q.deferred);
        let text = String::from_utf8(meta.to_json()).unwrap();
        let newer = text.replace("\"version\":1", "\"version\":2");
        assert!(Queued::from_json(newer.as_bytes()).is_err());
        assert!(Queued::from_json(b"{\"version\":1}").is_err());
    }

    #[test]
    fn metadata_round_trips_and_rejects_bad_versions() {
        let mut env = Envelope::new(None, vec!["a@b.c".parse().unwrap()]);
        env.params.envid = Some("x".into());
        env.recipients[0].notify = Some("SUCCESS".parse().unwrap());
        let meta = MessageMeta::new(MessageId::generate(), &env, 10);
        let json = meta.to_json();
        assert_eq!(MessageMeta::from_json(&json).unwrap(), meta);
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"version\":1"), "{text}");
        assert!(text.contains("\"notify\":\"SUCCESS\""), "{text}");
        let newer = text.replace("\"version\":1", "\"version\":99");
        let e = MessageMeta::from_json(newer.as_bytes()).unwrap_err();
        assert_eq!(e, MetaError::Version(99));
        assert_eq!(e.to_string(), "unknown metadata version 99");
        assert!(MessageMeta::from_json(b"{").is_err());
        assert!(MessageMeta::from_json(&json[..json.len() / 2]).is_err());
    }

    #[test]
    fn a_throttle_round_trips_and_older_files_without_it_still_read() {
        let env = Envelope::new(None, vec!["a@b.c".parse().unwrap()]);
        let mut meta = MessageMeta::new(MessageId::generate(), &env, 10);
        let plain = String::from_utf8(meta.to_json()).unwrap();
        assert!(!plain.contains("throttled"), "{plain}");
        meta.recipients[0].throttled = Some(Throttle {
            until: Timestamp(1_700_000_000_000),
            reason: "rate 1/1h to relay.test:25".into(),
        });
        let json = meta.to_json();
        assert_eq!(MessageMeta::from_json(&json).unwrap(), meta);
        // A file of a version before throttles: the same metadata, none.
        meta.recipients[0].throttled = None;
        assert_eq!(MessageMeta::from_json(plain.as_bytes()).unwrap(), meta);
    }
}
