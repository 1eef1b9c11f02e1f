//! The quotas new mail is checked against: messages and bytes queued
//! (as the spool counts them) and free space on the spool's disk.

use super::{QueueError, Shared};

impl Shared {
    /// Refuses new mail past `max_messages`, `max_bytes` (counting
    /// `incoming` more bytes) or below `min_free_bytes` of free disk.
    pub(crate) fn check_quota(&self, incoming: u64) -> Result<(), QueueError> {
        let q = *self.limits.read().unwrap_or_else(|p| p.into_inner());
        let (messages, bytes) = self.spool.usage();
        // Messages still to load count too; their bytes are not known yet.
        let messages = messages + self.load.remaining();
        if messages >= q.max_messages {
            return Err(QueueError::Quota(format!(
                "{messages} messages queued, the limit is {}",
                q.max_messages
            )));
        }
        if bytes.saturating_add(incoming) > q.max_bytes {
            return Err(QueueError::Quota(format!(
                "{bytes} bytes queued, the limit is {}",
                q.max_bytes
            )));
        }
        if q.min_free_bytes > 0 {
            if let Ok(free) = fs2::available_space(self.spool.root()) {
                if free < q.min_free_bytes.saturating_add(incoming) {
                    return Err(QueueError::Quota(format!(
                        "{free} bytes free on the spool's disk, {} must stay free",
                        q.min_free_bytes
                    )));
                }
            }
        }
        Ok(())
    }
}
