//! A delivery target that fails by a per-attempt table and records what it saw.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use mailqueue::delivery::Handoff;
use mailqueue::{
    Address, Body, DeliveryError, DeliveryTarget, ErrorKind, MessageInfo, Recipient,
    RecipientOutcome, ReversePath, SmtpReply,
};

/// What one attempt does. Anything not named succeeds.
#[derive(Default, Clone)]
pub struct Plan {
    pub start: Option<DeliveryError>,
    /// Recipients refused at RCPT, by address.
    pub rcpt: HashMap<String, DeliveryError>,
    pub body: Option<DeliveryError>,
    /// Per-recipient results after the body (used when the target is
    /// partial, like LMTP).
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
    DeliveryError::new(ErrorKind::Local, text)
}

pub fn perm(text: &str) -> DeliveryError {
    DeliveryError::from_reply(SmtpReply::with_code(550, (5, 1, 1), text))
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

/// One attempt in progress: its plan and its entry in `seen`.
struct Attempt<'a> {
    state: &'a Mutex<State>,
    plan: Plan,
    index: usize,
    partial: bool,
    /// Each recipient's result so far, by position.
    results: Vec<Option<Result<Handoff, DeliveryError>>>,
}

impl DeliveryTarget for Scripted {
    /// Plays the plan as an SMTP-like transaction: RCPT for each recipient,
    /// then the body, then the commit; abort when nobody is left.
    fn deliver(
        &self,
        msg: &MessageInfo,
        rcpts: &[Recipient],
        body: &Body,
    ) -> Vec<RecipientOutcome> {
        let mut st = self.state.lock().unwrap();
        let plan = st.plans.pop_front().unwrap_or_else(|| st.fallback.clone());
        st.seen.push(Seen {
            sender: msg.sender.as_ref().map(|a| a.to_string()),
            ..Seen::default()
        });
        let index = st.seen.len() - 1;
        drop(st);
        if let Some(e) = plan.start.clone() {
            return RecipientOutcome::all(rcpts.len(), Err(e));
        }
        let mut attempt = Attempt {
            state: &self.state,
            plan,
            index,
            partial: self.partial,
            results: vec![None; rcpts.len()],
        };
        let accepted = attempt.rcpts(rcpts);
        let ok = if accepted.is_empty() {
            accepted
        } else {
            attempt.body(rcpts, accepted, body)
        };
        if ok.is_empty() {
            attempt.with_seen(|s| s.aborted = true);
        } else {
            attempt.commit(ok, self.handoff);
        }
        attempt
            .results
            .into_iter()
            .map(|r| RecipientOutcome::new(r.expect("every recipient has a result")))
            .collect()
    }
}

impl Attempt<'_> {
    fn with_seen(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.state.lock().unwrap().seen[self.index]);
    }

    /// Offers each recipient; returns the positions of those accepted.
    fn rcpts(&mut self, rcpts: &[Recipient]) -> Vec<usize> {
        let mut accepted = Vec::new();
        for (i, rcpt) in rcpts.iter().enumerate() {
            let addr = rcpt.address.to_string();
            self.with_seen(|s| s.offered.push(addr.clone()));
            if let Some(e) = self.plan.rcpt.get(&addr) {
                self.results[i] = Some(Err(e.clone()));
                continue;
            }
            self.with_seen(|s| s.accepted.push(addr));
            accepted.push(i);
        }
        accepted
    }

    /// Takes the body; returns the positions of the recipients still in
    /// the running.
    fn body(&mut self, rcpts: &[Recipient], accepted: Vec<usize>, body: &Body) -> Vec<usize> {
        let bytes = body.to_vec().unwrap();
        self.with_seen(|s| s.body = bytes);
        if let Some(e) = self.plan.body.clone() {
            for &i in &accepted {
                self.results[i] = Some(Err(e.clone()));
            }
            return Vec::new();
        }
        let mut ok = Vec::new();
        for i in accepted {
            let addr = rcpts[i].address.to_string();
            match self.plan.body_rcpt.get(&addr).filter(|_| self.partial) {
                Some(e) => self.results[i] = Some(Err(e.clone())),
                None => ok.push(i),
            }
        }
        ok
    }

    /// Commits for the recipients at `ok`: all delivered, or all failed.
    fn commit(&mut self, ok: Vec<usize>, handoff: Handoff) {
        if let Some(e) = self.plan.commit.clone() {
            for i in ok {
                self.results[i] = Some(Err(e.clone()));
            }
            return;
        }
        // Recipients that failed after the body were not delivered.
        let failed: Vec<String> = self.plan.body_rcpt.keys().cloned().collect();
        let partial = self.partial;
        self.with_seen(|s| {
            s.accepted.retain(|a| !(partial && failed.contains(a)));
            s.committed = true;
        });
        for i in ok {
            self.results[i] = Some(Ok(handoff));
        }
    }
}

pub fn addr(s: &str) -> Address {
    s.parse().unwrap()
}

pub fn sender(s: &str) -> ReversePath {
    Some(addr(s))
}
