//! A delivery target that fails by a per-attempt table and records what it saw.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use mailqueue::delivery::Handoff;
use mailqueue::{
    Address, Body, Delivery, DeliveryError, DeliveryTarget, MessageInfo, PartialDelivery,
    Recipient, ReversePath, StatusCollector,
};

/// What one attempt does. Anything not named succeeds.
#[derive(Default, Clone)]
pub struct Plan {
    pub start: Option<DeliveryError>,
    /// add_rcpt errors by recipient address.
    pub rcpt: HashMap<String, DeliveryError>,
    pub body: Option<DeliveryError>,
    /// Per-recipient body results (used when the target is partial).
    pub body_rcpt: HashMap<String, DeliveryError>,
    pub commit: Option<DeliveryError>,
}

impl Plan {
    pub fn ok() -> Plan {
        Plan::default()
    }
    pub fn start(e: DeliveryError) -> Plan {
        Plan {
            start: Some(e),
            ..Plan::default()
        }
    }
    pub fn body(e: DeliveryError) -> Plan {
        Plan {
            body: Some(e),
            ..Plan::default()
        }
    }
    pub fn commit(e: DeliveryError) -> Plan {
        Plan {
            commit: Some(e),
            ..Plan::default()
        }
    }
    pub fn rcpt(mut self, addr: &str, e: DeliveryError) -> Plan {
        self.rcpt.insert(addr.into(), e);
        self
    }
    pub fn body_rcpt(mut self, addr: &str, e: DeliveryError) -> Plan {
        self.body_rcpt.insert(addr.into(), e);
        self
    }
}

/// What the target saw in one attempt.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub sender: Option<String>,
    pub offered: Vec<String>,
    pub accepted: Vec<String>,
    pub body: Vec<u8>,
    pub committed: bool,
    pub aborted: bool,
}

#[derive(Default)]
struct State {
    plans: VecDeque<Plan>,
    /// Used once `plans` runs out.
    fallback: Plan,
    seen: Vec<Seen>,
}

#[derive(Clone, Default)]
pub struct Scripted {
    state: Arc<Mutex<State>>,
    pub partial: bool,
    /// What the target says it took on with accepted recipients.
    pub handoff: Handoff,
}

pub fn temp(text: &str) -> DeliveryError {
    DeliveryError::temporary(451, (4, 3, 0), text)
}

pub fn perm(text: &str) -> DeliveryError {
    DeliveryError::permanent(550, (5, 1, 1), text)
}

impl Scripted {
    pub fn new(plans: Vec<Plan>) -> Scripted {
        let s = Scripted::default();
        s.state.lock().unwrap().plans = plans.into();
        s
    }

    pub fn partial(plans: Vec<Plan>) -> Scripted {
        Scripted {
            partial: true,
            ..Scripted::new(plans)
        }
    }

    /// Says every accepted recipient was handed off as `handoff`.
    pub fn with_handoff(mut self, handoff: Handoff) -> Scripted {
        self.handoff = handoff;
        self
    }

    /// What every attempt after the table does.
    pub fn with_fallback(self, plan: Plan) -> Scripted {
        self.state.lock().unwrap().fallback = plan;
        self
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn attempts(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }

    /// Every recipient that was committed, over all attempts.
    pub fn delivered(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .seen()
            .into_iter()
            .filter(|s| s.committed)
            .flat_map(|s| s.accepted)
            .collect();
        v.sort();
        v
    }

    pub fn arc(&self) -> Arc<dyn DeliveryTarget> {
        Arc::new(self.clone())
    }
}

struct Attempt {
    state: Arc<Mutex<State>>,
    plan: Plan,
    index: usize,
    partial: bool,
    handoff: Handoff,
    accepted_results: HashMap<String, DeliveryError>,
}

impl DeliveryTarget for Scripted {
    fn start(&self, msg: &MessageInfo) -> Result<Box<dyn Delivery + '_>, DeliveryError> {
        let mut st = self.state.lock().unwrap();
        let plan = st.plans.pop_front().unwrap_or_else(|| st.fallback.clone());
        st.seen.push(Seen {
            sender: msg.sender.as_ref().map(|a| a.to_string()),
            ..Seen::default()
        });
        let index = st.seen.len() - 1;
        drop(st);
        if let Some(e) = plan.start.clone() {
            return Err(e);
        }
        Ok(Box::new(Attempt {
            state: Arc::clone(&self.state),
            plan,
            index,
            partial: self.partial,
            handoff: self.handoff,
            accepted_results: HashMap::new(),
        }))
    }
}

impl Attempt {
    fn with_seen(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.state.lock().unwrap().seen[self.index]);
    }
}

impl Delivery for Attempt {
    fn add_rcpt(&mut self, rcpt: &Recipient) -> Result<(), DeliveryError> {
        let addr = rcpt.address.to_string();
        self.with_seen(|s| s.offered.push(addr.clone()));
        if let Some(e) = self.plan.rcpt.get(&addr) {
            return Err(e.clone());
        }
        self.with_seen(|s| s.accepted.push(addr));
        Ok(())
    }

    fn body(&mut self, body: &Body) -> Result<(), DeliveryError> {
        let bytes = body.to_vec().unwrap();
        self.with_seen(|s| s.body = bytes);
        match &self.plan.body {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn as_partial(&mut self) -> Option<&mut dyn PartialDelivery> {
        if self.partial {
            Some(self)
        } else {
            None
        }
    }

    fn commit(self: Box<Self>) -> Result<(), DeliveryError> {
        if let Some(e) = &self.plan.commit {
            return Err(e.clone());
        }
        // Recipients that failed in the body were not delivered.
        let failed = self.accepted_results.clone();
        self.with_seen(|s| {
            s.accepted.retain(|a| !failed.contains_key(a));
            s.committed = true;
        });
        Ok(())
    }

    fn abort(self: Box<Self>) {
        self.with_seen(|s| s.aborted = true);
    }

    fn handoff(&self, _rcpt: &Address) -> Handoff {
        self.handoff
    }
}

impl PartialDelivery for Attempt {
    fn body_per_recipient(&mut self, body: &Body, status: &mut dyn StatusCollector) {
        let accepted = self.state.lock().unwrap().seen[self.index].accepted.clone();
        if let Err(e) = self.body(body) {
            for a in &accepted {
                status.set_status(&a.parse::<Address>().unwrap(), Err(e.clone()));
            }
            return;
        }
        for a in accepted {
            if let Some(e) = self.plan.body_rcpt.get(&a) {
                self.accepted_results.insert(a.clone(), e.clone());
                status.set_status(&a.parse::<Address>().unwrap(), Err(e.clone()));
            }
        }
    }
}

pub fn addr(s: &str) -> Address {
    s.parse().unwrap()
}

pub fn sender(s: &str) -> ReversePath {
    Some(addr(s))
}
