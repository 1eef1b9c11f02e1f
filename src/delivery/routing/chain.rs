//! One route's targets in order: failover between relays, and the
//! fallback relay behind MX delivery.

use std::sync::Arc;

use crate::delivery::{
    fill_outcomes, Body, DeliveryError, DeliveryTarget, ErrorKind, MessageInfo, RecipientOutcome,
    Severity,
};
use crate::envelope::Recipient;

/// Which failures of the hop before hand a recipient on to this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveOn {
    /// Failover (`target = [a, b]`): the hop before could not be used at
    /// all (no connection, a failed TLS negotiation, a `421`). A server
    /// that answered a 4xx or 5xx gave its verdict: the recipient stays.
    Unreachable,
    /// Fallback (`fallback = "smtp://..."`, Postfix's
    /// `smtp_fallback_relay`): any temporary failure, a deferral by the
    /// MX hosts included.
    Deferred,
}

impl MoveOn {
    fn applies(self, e: &DeliveryError, relay: Option<&str>) -> bool {
        match e.kind() {
            // Nothing was tried, or the queue is stopping: moving on
            // would defeat a limit or delay the stop.
            ErrorKind::Throttled | ErrorKind::ShuttingDown => return false,
            _ => {}
        }
        match self {
            MoveOn::Deferred => e.severity() == Severity::Temporary,
            MoveOn::Unreachable => {
                let never_connected = relay.is_none() && e.relay().is_none();
                never_connected
                    || matches!(
                        e.kind(),
                        ErrorKind::Tls | ErrorKind::TlsAuthentication | ErrorKind::EncryptionNeeded
                    )
                    || e.reply().code == 421
            }
        }
    }
}

/// One target of a chain.
pub struct Hop {
    /// The target as the configuration names it, for the log.
    pub name: String,
    /// Where it delivers.
    pub target: Arc<dyn DeliveryTarget>,
    /// Which failures of the hop before come to this one (ignored for
    /// the first).
    pub when: MoveOn,
}

/// Targets tried in order within one attempt: each recipient the hop
/// before did not take, for a reason the next hop's [`MoveOn`] names,
/// goes to the next hop; its outcome there is its outcome.
pub struct Chain {
    hops: Vec<Hop>,
}

impl Chain {
    /// A chain of at least one hop.
    pub fn new(hops: Vec<Hop>) -> Chain {
        assert!(!hops.is_empty(), "a chain has a first hop");
        Chain { hops }
    }
}

impl DeliveryTarget for Chain {
    fn deliver(
        &self,
        msg: &MessageInfo,
        rcpts: &[Recipient],
        body: &Body,
    ) -> Vec<RecipientOutcome> {
        let mut outcomes: Vec<Option<RecipientOutcome>> = vec![None; rcpts.len()];
        let mut pending: Vec<usize> = (0..rcpts.len()).collect();
        for (k, hop) in self.hops.iter().enumerate() {
            let subset: Vec<Recipient> = pending.iter().map(|&i| rcpts[i].clone()).collect();
            let results = hop.target.deliver(msg, &subset, body);
            let next = self.hops.get(k + 1);
            let mut moved = Vec::new();
            let mut why = None;
            for (&i, outcome) in pending.iter().zip(results) {
                if let (Some(next), Err(e)) = (next, &outcome.result) {
                    if next.when.applies(e, outcome.relay.as_deref()) {
                        why.get_or_insert_with(|| e.reply().to_string());
                        moved.push(i);
                    }
                }
                outcomes[i] = Some(outcome);
            }
            if let (Some(next), Some(why)) = (next, why) {
                log::info!(
                    "{}: {} recipient(s) not taken by {} ({why}); trying {}",
                    msg.id,
                    moved.len(),
                    hop.name,
                    next.name
                );
            }
            pending = moved;
            if pending.is_empty() {
                break;
            }
        }
        fill_outcomes(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Handoff;
    use crate::id::MessageId;
    use crate::smtp::reply::SmtpReply;
    use std::sync::Mutex;

    /// Answers every recipient with one canned result, and notes whom.
    struct Canned {
        result: Result<Handoff, DeliveryError>,
        relay: Option<&'static str>,
        seen: Mutex<Vec<String>>,
    }

    impl Canned {
        fn new(result: Result<Handoff, DeliveryError>, relay: Option<&'static str>) -> Arc<Self> {
            Arc::new(Canned {
                result,
                relay,
                seen: Mutex::new(Vec::new()),
            })
        }
        fn seen(&self) -> Vec<String> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl DeliveryTarget for Canned {
        fn deliver(&self, _: &MessageInfo, rcpts: &[Recipient], _: &Body) -> Vec<RecipientOutcome> {
            let mut seen = self.seen.lock().unwrap();
            seen.extend(rcpts.iter().map(|r| r.address.to_string()));
            rcpts
                .iter()
                .map(|_| {
                    RecipientOutcome::new(self.result.clone()).via(self.relay.map(str::to_string))
                })
                .collect()
        }
    }

    fn chain(first: Arc<Canned>, second: Arc<Canned>, when: MoveOn) -> Chain {
        let hop = |target: Arc<Canned>, name: &str| Hop {
            name: name.into(),
            target,
            when,
        };
        Chain::new(vec![hop(first, "first"), hop(second, "second")])
    }

    fn send(chain: &Chain) -> Vec<RecipientOutcome> {
        let info = MessageInfo {
            id: MessageId::generate(),
            sender: None,
            params: Default::default(),
            size: 3,
        };
        let rcpts = [Recipient::new("a@example.net".parse().unwrap())];
        chain.deliver(&info, &rcpts, &Body::from_bytes(&b"x\r\n"[..]))
    }

    fn reply(text: &str) -> DeliveryError {
        DeliveryError::from_reply(SmtpReply::parse_line(text).unwrap())
    }

    #[test]
    fn failover_moves_on_when_the_first_cannot_be_used_only() {
        let refused = || Err(DeliveryError::new(ErrorKind::Connect, "refused"));
        let cases = [
            (refused(), None, true),
            (Err(DeliveryError::tls("handshake")), Some("r1"), true),
            (Err(reply("421 4.3.2 going down")), Some("r1"), true),
            (Err(reply("451 4.3.0 try later")), Some("r1"), false),
            (Err(reply("550 5.1.1 no such user")), Some("r1"), false),
            (Err(DeliveryError::throttled("busy")), None, false),
            (Ok(Handoff::Relayed), Some("r1"), false),
        ];
        for (result, relay, moves) in cases {
            let what = format!("{result:?}");
            let first = Canned::new(result, relay);
            let second = Canned::new(Ok(Handoff::Relayed), Some("r2"));
            let outcomes = send(&chain(first.clone(), second.clone(), MoveOn::Unreachable));
            assert_eq!(first.seen().len(), 1);
            assert_eq!(second.seen().len(), usize::from(moves), "{what}");
            let expect = if moves { Some("r2") } else { relay };
            assert_eq!(outcomes[0].relay.as_deref(), expect, "{what}");
        }
    }

    #[test]
    fn fallback_takes_every_temporary_failure_and_no_permanent_one() {
        for (result, moves) in [
            (Err(reply("451 4.3.0 try later")), true),
            (Err(DeliveryError::new(ErrorKind::Connect, "refused")), true),
            (Err(reply("550 5.1.1 no such user")), false),
            (Err(DeliveryError::throttled("busy")), false),
        ] {
            let first = Canned::new(result, Some("mx"));
            let second = Canned::new(Ok(Handoff::Relayed), Some("backup"));
            let outcomes = send(&chain(first, second.clone(), MoveOn::Deferred));
            assert_eq!(second.seen().len(), usize::from(moves));
            assert_eq!(outcomes[0].result.is_ok(), moves);
        }
    }

    #[test]
    fn the_last_hops_failure_is_the_outcome() {
        let first = Canned::new(Err(DeliveryError::new(ErrorKind::Connect, "r1 down")), None);
        let second = Canned::new(Err(DeliveryError::new(ErrorKind::Connect, "r2 down")), None);
        let outcomes = send(&chain(first, second, MoveOn::Unreachable));
        let e = outcomes[0].result.as_ref().unwrap_err();
        assert!(e.to_string().contains("r2 down"), "{e}");
    }
}
