//! A panicking attempt: counted per message, the message quarantined
//! after a few, the worker kept.

use super::MAX_PANICS;
use crate::queue::meta::Timestamp;
use crate::queue::{MessageId, Shared};

/// Clears the panic count of a message whose attempt ended normally.
pub(super) fn forget_panics(shared: &Shared, id: MessageId) {
    let mut panics = shared.panics.lock().unwrap_or_else(|p| p.into_inner());
    if !panics.is_empty() {
        panics.remove(&id);
    }
}

/// Defers a message whose attempt panicked, or quarantines it once it
/// has panicked [`MAX_PANICS`] times in this process.
pub(super) fn contain_panic(shared: &Shared, id: MessageId, payload: &(dyn std::any::Any + Send)) {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without message".to_string());
    let count = {
        let mut panics = shared.panics.lock().unwrap_or_else(|p| p.into_inner());
        let n = panics.entry(id).or_insert(0);
        *n += 1;
        *n
    };
    if count >= MAX_PANICS {
        log::error!("{id}: attempt panicked ({what}), {count} times: quarantining the message");
        // Under its lock, so no operator command is halfway through it.
        let lock = shared.spool.lock_message(&id).ok().flatten();
        if lock.is_some() {
            shared.spool.quarantine(
                id.as_str(),
                &format!("its delivery attempts panicked {count} times: {what}"),
            );
        }
        shared
            .panics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        return;
    }
    let wait = shared.policy.delay(count);
    log::error!(
        "{id}: attempt panicked ({what}), {count} of {MAX_PANICS} times; retrying in {:.1}s",
        wait.as_secs_f64()
    );
    shared.schedule(id, Timestamp::now().plus(wait));
}
