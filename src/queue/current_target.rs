//! The queue's targets, replaceable while it runs (a reload's new
//! `[delivery]` or routes).

use std::sync::{Arc, RwLock};

use crate::delivery::{Body, DeliveryTarget, MessageInfo, RecipientOutcome};
use crate::envelope::Recipient;

/// A delivery target that can be replaced while the queue runs. Each
/// attempt takes the one current when it starts and keeps it to its end;
/// the next attempt takes the new one.
pub(crate) struct CurrentTarget(RwLock<Arc<dyn DeliveryTarget>>);

impl CurrentTarget {
    pub(super) fn new(target: Arc<dyn DeliveryTarget>) -> Arc<CurrentTarget> {
        Arc::new(CurrentTarget(RwLock::new(target)))
    }

    pub(super) fn get(&self) -> Arc<dyn DeliveryTarget> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub(super) fn set(&self, target: Arc<dyn DeliveryTarget>) {
        // The old one is dropped once the last attempt using it ends.
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = target;
    }
}

impl DeliveryTarget for CurrentTarget {
    fn deliver(
        &self,
        msg: &MessageInfo,
        rcpts: &[Recipient],
        body: &Body,
    ) -> Vec<RecipientOutcome> {
        // The lock is held only to clone the Arc, not for the attempt.
        self.get().deliver(msg, rcpts, body)
    }
}
