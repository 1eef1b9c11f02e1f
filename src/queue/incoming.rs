//! A message on its way into the queue: written piece by piece by the
//! listener, pickup or an embedder, then committed; and the queue as a
//! delivery target, which stores a copy the same way.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;

use super::spool::MessageWriter;
use super::{stats, MessageId, Queue, QueueError, Shared};
use crate::delivery::{
    Body, DeliveryError, DeliveryTarget, Handoff, MessageInfo, RecipientOutcome,
};
use crate::envelope::{Envelope, Recipient};

/// A message being written into the queue; see [`Queue::begin`].
pub struct IncomingMessage<'a> {
    pub(super) shared: &'a Shared,
    pub(super) writer: MessageWriter,
}

impl IncomingMessage<'_> {
    /// The id the message will have once committed.
    pub fn id(&self) -> MessageId {
        self.writer.id()
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.writer.size()
    }

    /// Names where the message came from (`client=[ip]`, `uid=N`), for
    /// the line that logs its queueing.
    pub(crate) fn set_origin(&mut self, origin: String) {
        self.writer.set_origin(origin);
    }

    /// Copies everything from `reader` into the message.
    pub(crate) fn copy_from(&mut self, reader: &mut dyn Read) -> Result<u64, QueueError> {
        self.writer.copy_from(reader)
    }

    /// Makes the message durable and schedules it; returns its id.
    /// Counted as received over SMTP (the listener's way in).
    pub fn commit(self, envelope: &Envelope) -> Result<MessageId, QueueError> {
        self.commit_as(envelope, stats::Way::Smtp)
    }

    /// [`IncomingMessage::commit`] for a local submission (pickup),
    /// counted as received locally.
    pub(crate) fn commit_local(self, envelope: &Envelope) -> Result<MessageId, QueueError> {
        self.commit_as(envelope, stats::Way::Local)
    }

    pub(super) fn commit_as(
        self,
        envelope: &Envelope,
        way: stats::Way,
    ) -> Result<MessageId, QueueError> {
        let id = self.shared.store(self.writer, envelope, false)?;
        self.shared.stats.received(way);
        Ok(id)
    }
}

impl Write for IncomingMessage<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// The queue is itself a delivery target: delivering to it queues the
/// message for every recipient, all or nothing, and returns once it is
/// durable. The queue sends its own notices for what it accepted.
impl DeliveryTarget for Queue {
    fn deliver(
        &self,
        msg: &MessageInfo,
        rcpts: &[Recipient],
        body: &Body,
    ) -> Vec<RecipientOutcome> {
        if rcpts.is_empty() {
            return Vec::new();
        }
        let result = self.store_copy(msg, rcpts, body).map(|_| Handoff::Passed);
        RecipientOutcome::all(rcpts.len(), result)
    }
}

impl Queue {
    /// Writes `body` into the queue for `rcpts`; an unfinished message
    /// leaves no file behind.
    fn store_copy(
        &self,
        msg: &MessageInfo,
        rcpts: &[Recipient],
        body: &Body,
    ) -> Result<MessageId, DeliveryError> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(DeliveryError::new(
                crate::ErrorKind::ShuttingDown,
                "queue is shutting down",
            ));
        }
        let mut incoming = self.begin().map_err(|e| local_error(&e))?;
        let mut reader = body.open().map_err(|e| {
            DeliveryError::new(crate::ErrorKind::Local, &format!("reading body: {e}"))
        })?;
        incoming
            .writer
            .copy_from(&mut reader)
            .map_err(|e| local_error(&e))?;
        let envelope = Envelope {
            sender: msg.sender.clone(),
            recipients: rcpts.to_vec(),
            params: msg.params.clone(),
        };
        incoming
            .commit_as(&envelope, stats::Way::Local)
            .map_err(|e| local_error(&e))
    }
}

fn local_error(e: &QueueError) -> DeliveryError {
    if e.is_temporary() {
        DeliveryError::new(crate::ErrorKind::Local, &format!("queue: {e}"))
    } else {
        DeliveryError::new(crate::ErrorKind::LocalPermanent, &format!("queue: {e}"))
    }
}
