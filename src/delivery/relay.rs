//! A fixed next hop: a smarthost over SMTP or SMTPS, or an LMTP server
//! over TCP or a Unix socket.

use std::sync::Arc;
use std::time::Duration;

use crate::address::Address;
use crate::delivery::pool::{Pooled, SessionPool};
use crate::delivery::smtp_client::{ClientSettings, Endpoint, Session};
use crate::delivery::{
    Body, Delivery, DeliveryError, DeliveryTarget, Handoff, MessageInfo, PartialDelivery,
    StatusCollector,
};
use crate::envelope::Recipient;

/// The pool key of the one next hop.
const HOP: &str = "relay";

/// Delivers every message to one server.
pub struct RelayTarget {
    settings: Arc<ClientSettings>,
    endpoint: Endpoint,
    implicit_tls: bool,
    pool: Arc<SessionPool>,
}

impl RelayTarget {
    /// A target that keeps idle sessions for `cache_time` (zero: none).
    pub fn new(
        settings: ClientSettings,
        endpoint: Endpoint,
        implicit_tls: bool,
        cache_time: Duration,
    ) -> RelayTarget {
        RelayTarget {
            settings: Arc::new(settings),
            endpoint,
            implicit_tls,
            pool: SessionPool::new(cache_time),
        }
    }
}

impl DeliveryTarget for RelayTarget {
    fn start(&self, msg: &MessageInfo) -> Result<Box<dyn Delivery + '_>, DeliveryError> {
        let pooled = match self.pool.take(HOP) {
            Some(p) => p,
            None => Pooled::fresh(Session::open(
                &self.settings,
                &self.endpoint,
                self.implicit_tls,
            )?),
        };
        if let Err(e) = pooled
            .session
            .check_message(&msg.sender, &msg.params, msg.size)
        {
            self.pool.put(HOP, pooled);
            return Err(e);
        }
        let mut hop = HopDelivery::new(pooled, msg.clone(), self.settings.lmtp);
        hop.home = Some(Arc::clone(&self.pool));
        Ok(Box::new(hop))
    }
}

/// One transaction on one session. Recipients are collected first and
/// sent together, pipelined when the server allows, so every RCPT, DATA
/// and LMTP result is reported per recipient from `body_per_recipient`.
pub struct HopDelivery {
    session: Option<Pooled>,
    info: MessageInfo,
    rcpts: Vec<Recipient>,
    lmtp: bool,
    /// Where the session goes back after commit or abort; `None`: quit.
    home: Option<Arc<SessionPool>>,
}

impl HopDelivery {
    /// Wraps an open session (the MX client opens its own).
    pub fn new(session: Pooled, info: MessageInfo, lmtp: bool) -> HopDelivery {
        HopDelivery {
            session: Some(session),
            info,
            rcpts: Vec::new(),
            lmtp,
            home: None,
        }
    }

    /// Ends the transaction: the session goes back to its pool, or quits.
    fn release(&mut self) {
        if let Some(p) = self.session.take() {
            match &self.home {
                Some(pool) => pool.put(HOP, p),
                None => p.session.quit(),
            }
        }
    }

    /// Runs the envelope and DATA; reports each recipient's result.
    pub fn transfer(&mut self, body: &Body, status: &mut dyn StatusCollector) {
        let Some(session) = self.session.as_mut().map(|p| &mut p.session) else {
            let e = DeliveryError::temporary(451, (4, 4, 0), "session already closed");
            for r in &self.rcpts {
                status.set_status(&r.address, Err(e.clone()));
            }
            return;
        };
        let refs: Vec<&Recipient> = self.rcpts.iter().collect();
        let results =
            match session.envelope(&self.info.sender, &self.info.params, self.info.size, &refs) {
                Ok(r) => r,
                Err(e) => {
                    for r in &self.rcpts {
                        status.set_status(&r.address, Err(e.clone()));
                    }
                    return;
                }
            };
        let mut accepted: Vec<&Address> = Vec::new();
        for (r, result) in self.rcpts.iter().zip(results) {
            match result {
                Ok(()) => accepted.push(&r.address),
                Err(e) => status.set_status(&r.address, Err(e)),
            }
        }
        if accepted.is_empty() {
            let _ = session.reset();
            return;
        }
        match session.data(body, accepted.len()) {
            Err(e) => {
                for a in accepted {
                    status.set_status(a, Err(e.clone()));
                }
            }
            Ok(replies) if self.lmtp => {
                for (a, reply) in accepted.into_iter().zip(replies) {
                    if let Some(e) = session.final_error(&reply) {
                        status.set_status(a, Err(e));
                    }
                }
            }
            Ok(replies) => {
                if let Some(e) = replies.first().and_then(|r| session.final_error(r)) {
                    for a in accepted {
                        status.set_status(a, Err(e.clone()));
                    }
                }
            }
        }
    }

    /// What the server took on: final delivery for LMTP, DSN duty for a
    /// server that offers DSN (the parameters went with the envelope).
    pub fn handoff(&self) -> Handoff {
        match &self.session {
            _ if self.lmtp => Handoff::Delivered,
            Some(p) if p.session.ext.dsn => Handoff::Passed,
            _ => Handoff::Relayed,
        }
    }

    /// Gives the session back for reuse, or `None` if it is gone.
    pub fn into_session(mut self) -> Option<Pooled> {
        self.session.take()
    }
}

impl Delivery for HopDelivery {
    fn add_rcpt(&mut self, rcpt: &Recipient) -> Result<(), DeliveryError> {
        if let Some(p) = &self.session {
            p.session.check_recipient(rcpt)?;
        }
        self.rcpts.push(rcpt.clone());
        Ok(())
    }

    fn body(&mut self, body: &Body) -> Result<(), DeliveryError> {
        // Used only by callers that ignore per-recipient results: succeed
        // only when every recipient did.
        let mut first: Option<DeliveryError> = None;
        struct First<'a>(&'a mut Option<DeliveryError>);
        impl StatusCollector for First<'_> {
            fn set_status(&mut self, _: &Address, result: Result<(), DeliveryError>) {
                if let Err(e) = result {
                    self.0.get_or_insert(e);
                }
            }
        }
        self.transfer(body, &mut First(&mut first));
        first.map_or(Ok(()), Err)
    }

    fn as_partial(&mut self) -> Option<&mut dyn PartialDelivery> {
        Some(self)
    }

    fn commit(mut self: Box<Self>) -> Result<(), DeliveryError> {
        // The server took responsibility at the reply to the final dot.
        self.release();
        Ok(())
    }

    fn abort(mut self: Box<Self>) {
        self.release();
    }

    fn relay(&self, _rcpt: &Address) -> Option<String> {
        self.session.as_ref().map(|p| p.session.relay().to_string())
    }

    fn handoff(&self, _rcpt: &Address) -> Handoff {
        self.handoff()
    }
}

impl PartialDelivery for HopDelivery {
    fn body_per_recipient(&mut self, body: &Body, status: &mut dyn StatusCollector) {
        self.transfer(body, status);
    }
}
