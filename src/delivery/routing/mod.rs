//! The routing table: which target each recipient goes to (`[[route]]`),
//! and the order of a route's targets (failover, fallback).
//!
//! A [`Router`] is itself a [`DeliveryTarget`](crate::delivery::DeliveryTarget):
//! at each attempt it splits the message's pending recipients by the
//! first route that matches each, hands every group to its route's
//! target, and puts the outcomes back in order. Each recipient keeps its
//! own state and schedule, so a route changed by a reload applies to
//! mail already queued from its next attempt.

mod chain;
mod pattern;
mod router;

pub use chain::{Chain, Hop, MoveOn};
pub use pattern::{normalize_domain, route_matches, BadPattern, DomainPattern, SenderPattern};
pub use router::{Route, Router};
