//! Splits an attempt's recipients by route.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread;

use super::pattern::{route_matches, DomainPattern, SenderPattern};
use crate::address::{Address, ReversePath};
use crate::delivery::{fill_outcomes, Body, DeliveryTarget, MessageInfo, RecipientOutcome};
use crate::envelope::Recipient;

/// One `[[route]]`: what it matches and where it delivers.
pub struct Route {
    /// Recipient domains it takes.
    pub domains: Vec<DomainPattern>,
    /// Senders it takes; empty for every sender.
    pub senders: Vec<SenderPattern>,
    /// Its target (a [`Chain`](super::Chain) when it has several).
    pub target: Arc<dyn DeliveryTarget>,
}

/// Routes in order, the first match winning, and the target of
/// recipients no route matches (`[delivery]`).
pub struct Router {
    routes: Vec<Route>,
    default: Arc<dyn DeliveryTarget>,
}

impl Router {
    /// A routing table over `default`.
    pub fn new(routes: Vec<Route>, default: Arc<dyn DeliveryTarget>) -> Router {
        Router { routes, default }
    }

    /// The index of the route mail from `sender` to `rcpt` takes; `None`
    /// for the default.
    pub fn pick(&self, sender: &ReversePath, rcpt: &Address) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| route_matches(&r.domains, &r.senders, sender, rcpt))
    }

    fn target(&self, route: Option<usize>) -> &dyn DeliveryTarget {
        match route {
            Some(i) => &*self.routes[i].target,
            None => &*self.default,
        }
    }
}

impl DeliveryTarget for Router {
    fn deliver(
        &self,
        msg: &MessageInfo,
        rcpts: &[Recipient],
        body: &Body,
    ) -> Vec<RecipientOutcome> {
        // Positions of the recipients by route (`None` sorts first).
        let mut groups: BTreeMap<Option<usize>, Vec<usize>> = BTreeMap::new();
        for (i, r) in rcpts.iter().enumerate() {
            groups
                .entry(self.pick(&msg.sender, &r.address))
                .or_default()
                .push(i);
        }
        if groups.len() == 1 {
            let (route, _) = groups.pop_first().expect("one group");
            return self.target(route).deliver(msg, rcpts, body);
        }
        let mut outcomes: Vec<Option<RecipientOutcome>> = vec![None; rcpts.len()];
        // The routes of one message go at the same time, as the domains
        // of MX delivery do: one slow relay does not hold up the others.
        thread::scope(|s| {
            let running: Vec<_> = groups
                .iter()
                .map(|(&route, positions)| {
                    let subset: Vec<Recipient> =
                        positions.iter().map(|&i| rcpts[i].clone()).collect();
                    let target = self.target(route);
                    s.spawn(move || target.deliver(msg, &subset, body))
                })
                .collect();
            for (handle, positions) in running.into_iter().zip(groups.values()) {
                let results = handle.join().unwrap_or_default();
                for (&i, outcome) in positions.iter().zip(results) {
                    outcomes[i] = Some(outcome);
                }
            }
        });
        fill_outcomes(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Handoff;
    use crate::id::MessageId;
    use std::sync::Mutex;

    /// Notes whom it was given, and takes them all.
    #[derive(Default)]
    struct Sink(Mutex<Vec<String>>);

    impl DeliveryTarget for Sink {
        fn deliver(&self, _: &MessageInfo, rcpts: &[Recipient], _: &Body) -> Vec<RecipientOutcome> {
            let mut seen = self.0.lock().unwrap();
            seen.extend(rcpts.iter().map(|r| r.address.to_string()));
            RecipientOutcome::all(rcpts.len(), Ok(Handoff::Relayed))
        }
    }

    fn route(domains: &[&str], senders: &[&str], target: Arc<Sink>) -> Route {
        Route {
            domains: domains.iter().map(|d| d.parse().unwrap()).collect(),
            senders: senders.iter().map(|s| s.parse().unwrap()).collect(),
            target,
        }
    }

    #[test]
    fn each_recipient_goes_to_the_first_route_that_matches_it() {
        let (net, billing, default) = (
            Arc::new(Sink::default()),
            Arc::new(Sink::default()),
            Arc::new(Sink::default()),
        );
        let router = Router::new(
            vec![
                route(&["example.net", ".example.net"], &[], net.clone()),
                route(&["*"], &["billing@example.org"], billing.clone()),
            ],
            default.clone(),
        );
        let info = |sender: &str| MessageInfo {
            id: MessageId::generate(),
            sender: Some(sender.parse().unwrap()),
            params: Default::default(),
            size: 3,
        };
        let rcpts: Vec<Recipient> = ["a@example.net", "b@mx.example.net", "c@example.com"]
            .iter()
            .map(|a| Recipient::new(a.parse().unwrap()))
            .collect();
        let body = Body::from_bytes(&b"x\r\n"[..]);
        let outcomes = router.deliver(&info("me@example.org"), &rcpts, &body);
        assert_eq!(outcomes.len(), 3);
        assert!(outcomes.iter().all(|o| o.result.is_ok()));
        assert_eq!(
            *net.0.lock().unwrap(),
            ["a@example.net", "b@mx.example.net"]
        );
        assert_eq!(*default.0.lock().unwrap(), ["c@example.com"]);
        router.deliver(&info("billing@example.org"), &rcpts, &body);
        assert_eq!(*billing.0.lock().unwrap(), ["c@example.com"]);
    }
}
