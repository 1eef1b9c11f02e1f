//! A fixed next hop: a smarthost over SMTP or SMTPS, or an LMTP server
//! over TCP or a Unix socket.

use std::sync::Arc;

use crate::address::Address;
use crate::delivery::smtp_client::{ClientSettings, Endpoint, Session};
use crate::delivery::{
    Body, Delivery, DeliveryError, DeliveryTarget, Handoff, MessageInfo, PartialDelivery,
    StatusCollector,
};
use crate::envelope::Recipient;

/// Delivers every message to one server.
#[derive(Debug)]
pub struct RelayTarget {
    settings: Arc<ClientSettings>,
    endpoint: Endpoint,
    implicit_tls: bool,
}

impl RelayTarget {
    pub fn new(settings: ClientSettings, endpoint: Endpoint, implicit_tls: bool) -> RelayTarget {
        RelayTarget {
            settings: Arc::new(settings),
            endpoint,
            implicit_tls,
        }
    }
}

impl DeliveryTarget for RelayTarget {
    fn start(&self, msg: &MessageInfo) -> Result<Box<dyn Delivery + '_>, DeliveryError> {
        let session = Session::open(&self.settings, &self.endpoint, self.implicit_tls)?;
        if let Err(e) = session.check_message(&msg.sender, &msg.params, msg.size) {
            session.quit();
            return Err(e);
        }
        Ok(Box::new(HopDelivery {
            session: Some(session),
            info: msg.clone(),
            rcpts: Vec::new(),
            lmtp: self.settings.lmtp,
        }))
    }
}

/// One transaction on one session. Recipients are collected first and
/// sent together, pipelined when the server allows, so every RCPT, DATA
/// and LMTP result is reported per recipient from `body_per_recipient`.
pub struct HopDelivery {
    session: Option<Session>,
    info: MessageInfo,
    rcpts: Vec<Recipient>,
    lmtp: bool,
}

impl HopDelivery {
    /// Wraps an open session (the MX client opens its own).
    pub fn new(session: Session, info: MessageInfo, lmtp: bool) -> HopDelivery {
        HopDelivery {
            session: Some(session),
            info,
            rcpts: Vec::new(),
            lmtp,
        }
    }

    /// Runs the envelope and DATA; reports each recipient's result.
    pub fn transfer(&mut self, body: &Body, status: &mut dyn StatusCollector) {
        let Some(session) = self.session.as_mut() else {
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
            Some(s) if s.ext.dsn => Handoff::Passed,
            _ => Handoff::Relayed,
        }
    }

    /// Gives the session back for reuse, or `None` if it is gone.
    pub fn into_session(mut self) -> Option<Session> {
        self.session.take()
    }
}

impl Delivery for HopDelivery {
    fn add_rcpt(&mut self, rcpt: &Recipient) -> Result<(), DeliveryError> {
        if let Some(s) = &self.session {
            s.check_recipient(rcpt)?;
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
        if let Some(s) = self.session.take() {
            s.quit();
        }
        Ok(())
    }

    fn abort(mut self: Box<Self>) {
        if let Some(s) = self.session.take() {
            s.quit();
        }
    }

    fn relay(&self, _rcpt: &Address) -> Option<String> {
        self.session.as_ref().map(|s| s.relay().to_string())
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
