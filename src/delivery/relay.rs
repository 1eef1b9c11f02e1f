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
        hop.reopen = Some(Box::new(move || {
            Session::open(&self.settings, &self.endpoint, self.implicit_tls)
        }));
        Ok(Box::new(hop))
    }
}

/// One transaction on one session. Recipients are collected first and
/// sent together, pipelined when the server allows, so every RCPT, DATA
/// and LMTP result is reported per recipient from `body_per_recipient`.
pub struct HopDelivery<'a> {
    session: Option<Pooled>,
    info: MessageInfo,
    rcpts: Vec<Recipient>,
    lmtp: bool,
    /// Where the session goes back after commit or abort; `None`: quit.
    home: Option<Arc<SessionPool>>,
    /// Opens a new session to the same destination, for a reused one
    /// that turns out to be closed.
    pub reopen: Option<Reopen<'a>>,
}

/// How a [`HopDelivery`] gets a fresh session.
pub type Reopen<'a> = Box<dyn Fn() -> Result<Session, DeliveryError> + 'a>;

impl<'a> HopDelivery<'a> {
    /// Wraps an open session (the MX client opens its own).
    pub fn new(session: Pooled, info: MessageInfo, lmtp: bool) -> HopDelivery<'a> {
        HopDelivery {
            session: Some(session),
            info,
            rcpts: Vec::new(),
            lmtp,
            home: None,
            reopen: None,
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
        let mut rcpts: Vec<&Recipient> = self.rcpts.iter().collect();
        let mut may_reopen = true;
        let results = loop {
            let Some(pooled) = self.session.as_mut() else {
                let e = DeliveryError::temporary(451, (4, 4, 0), "session already closed");
                for r in &rcpts {
                    status.set_status(&r.address, Err(e.clone()));
                }
                return;
            };
            let e = match pooled.session.envelope(
                &self.info.sender,
                &self.info.params,
                self.info.size,
                &rcpts,
            ) {
                Ok(r) => break r,
                Err(e) => e,
            };
            // A reused session that fails before the server said a word
            // about this message was closed while idle (the server's idle
            // timeout, a restart): what HTTP clients do with a reused
            // connection, try once more on a new one at once, without
            // counting a try against the recipients.
            let stale = pooled.reused() && pooled.session.nothing_heard() && !e.is_permanent();
            let reopen = self.reopen.as_ref().filter(|_| stale && may_reopen);
            let Some(reopen) = reopen else {
                for r in &rcpts {
                    status.set_status(&r.address, Err(e.clone()));
                }
                return;
            };
            may_reopen = false;
            log::info!(
                "{}: idle session with {} was closed ({e}); again on a new connection",
                self.info.id,
                pooled.session.relay()
            );
            // The old one is out of step: dropping it just closes it.
            self.session = None;
            let fresh = match reopen() {
                Ok(s) => s,
                Err(e) => {
                    for r in &rcpts {
                        status.set_status(&r.address, Err(e.clone()));
                    }
                    return;
                }
            };
            // The new server may offer less than the old one did.
            if let Err(e) =
                fresh.check_message(&self.info.sender, &self.info.params, self.info.size)
            {
                for r in &rcpts {
                    status.set_status(&r.address, Err(e.clone()));
                }
                self.session = Some(Pooled::fresh(fresh));
                return;
            }
            rcpts.retain(|r| match fresh.check_recipient(r) {
                Ok(()) => true,
                Err(e) => {
                    status.set_status(&r.address, Err(e));
                    false
                }
            });
            self.session = Some(Pooled::fresh(fresh));
            if rcpts.is_empty() {
                return;
            }
        };
        let Some(session) = self.session.as_mut().map(|p| &mut p.session) else {
            return;
        };
        let mut accepted: Vec<&Address> = Vec::new();
        for (r, result) in rcpts.iter().zip(results) {
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

    /// `host[ip]:port` of the session's server, if there is a session.
    pub fn session_relay(&self) -> Option<String> {
        self.session.as_ref().map(|p| p.session.relay().to_string())
    }

    /// Gives the session back for reuse, or `None` if it is gone.
    pub fn into_session(mut self) -> Option<Pooled> {
        self.session.take()
    }
}

impl Delivery for HopDelivery<'_> {
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
        self.session_relay()
    }

    fn handoff(&self, _rcpt: &Address) -> Handoff {
        self.handoff()
    }
}

impl PartialDelivery for HopDelivery<'_> {
    fn body_per_recipient(&mut self, body: &Body, status: &mut dyn StatusCollector) {
        self.transfer(body, status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsPolicy;
    use crate::id::MessageId;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    fn settings() -> ClientSettings {
        let t = Duration::from_secs(5);
        ClientSettings {
            helo_name: "client.test".into(),
            lmtp: false,
            tls: TlsPolicy::None,
            tls_connector: None,
            auth: None,
            connect_timeout: t,
            command_timeout: t,
            data_timeout: t,
        }
    }

    /// What a test server does to a connection.
    #[derive(Clone, Copy)]
    enum Quirk {
        None,
        /// Hangs up, without a word, on reading the n-th MAIL.
        HangUpAtMail(usize),
        /// Says 421 and hangs up on reading the n-th MAIL.
        Say421AtMail(usize),
        /// Answers the n-th MAIL with 451.
        RefuseMail(usize),
        /// Hangs up once it has answered the first message's dot.
        HangUpAfterFirst,
    }

    /// A small SMTP server (PIPELINING) on loopback: connection k gets
    /// `quirks[k]` (the last one for the rest). Records message bodies.
    struct Server {
        port: u16,
        connections: Arc<AtomicUsize>,
        bodies: Arc<Mutex<Vec<String>>>,
    }

    impl Server {
        fn start(quirks: Vec<Quirk>) -> Server {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            let connections = Arc::new(AtomicUsize::new(0));
            let bodies = Arc::new(Mutex::new(Vec::new()));
            let (c, b) = (Arc::clone(&connections), Arc::clone(&bodies));
            std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    let k = c.fetch_add(1, Ordering::SeqCst);
                    let quirk = quirks[k.min(quirks.len() - 1)];
                    let b = Arc::clone(&b);
                    std::thread::spawn(move || serve(s, quirk, &b));
                }
            });
            Server {
                port,
                connections,
                bodies,
            }
        }

        fn target(&self) -> RelayTarget {
            let endpoint = Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: self.port,
            };
            RelayTarget::new(settings(), endpoint, false, Duration::from_secs(60))
        }
    }

    fn serve(s: TcpStream, quirk: Quirk, bodies: &Mutex<Vec<String>>) {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let _ = w.write_all(b"220 test ESMTP\r\n");
        let mut mails = 0;
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" => b"250-test\r\n250 PIPELINING\r\n",
                "MAIL" => {
                    mails += 1;
                    if matches!(quirk, Quirk::HangUpAtMail(n) if n == mails) {
                        return;
                    }
                    if matches!(quirk, Quirk::RefuseMail(n) if n == mails) {
                        let _ = w.write_all(b"451 4.3.0 not now\r\n");
                        continue;
                    }
                    if matches!(quirk, Quirk::Say421AtMail(n) if n == mails) {
                        let _ = w.write_all(b"421 4.4.2 idle too long\r\n");
                        return;
                    }
                    b"250 2.1.0 ok\r\n"
                }
                "RCPT" | "RSET" | "NOOP" => b"250 2.1.5 ok\r\n",
                "DATA" => {
                    let _ = w.write_all(b"354 go ahead\r\n");
                    let mut body = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == ".\r\n" {
                            break;
                        }
                        body.push_str(&line);
                    }
                    bodies.lock().unwrap().push(body);
                    let _ = w.write_all(b"250 2.0.0 queued\r\n");
                    if matches!(quirk, Quirk::HangUpAfterFirst) {
                        return;
                    }
                    continue;
                }
                "QUIT" => {
                    let _ = w.write_all(b"221 bye\r\n");
                    return;
                }
                _ => b"500 what\r\n",
            };
            let _ = w.write_all(reply);
        }
    }

    #[derive(Default)]
    struct Results(Vec<(Address, Result<(), DeliveryError>)>);

    impl StatusCollector for Results {
        fn set_status(&mut self, rcpt: &Address, result: Result<(), DeliveryError>) {
            self.0.push((rcpt.clone(), result));
        }
    }

    /// One message through the target; the errors reported.
    fn send(target: &RelayTarget, text: &str) -> Vec<DeliveryError> {
        let info = MessageInfo {
            id: MessageId::generate(),
            sender: Some("s@example.org".parse().unwrap()),
            params: Default::default(),
            size: text.len() as u64,
        };
        let mut d = match target.start(&info) {
            Ok(d) => d,
            Err(e) => return vec![e],
        };
        d.add_rcpt(&Recipient::new("r@example.net".parse().unwrap()))
            .unwrap();
        let mut results = Results::default();
        d.as_partial()
            .unwrap()
            .body_per_recipient(&Body::from_bytes(text.as_bytes().to_vec()), &mut results);
        d.commit().unwrap();
        results.0.into_iter().filter_map(|(_, r)| r.err()).collect()
    }

    #[test]
    fn a_reused_session_closed_before_any_reply_is_tried_again_on_a_new_one() {
        // The server takes one message, then hangs up at the next MAIL:
        // the check before reuse cannot see it coming.
        let server = Server::start(vec![Quirk::HangUpAtMail(2), Quirk::None]);
        let target = server.target();
        assert!(send(&target, "one\r\n").is_empty());
        let errors = send(&target, "two\r\n");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(server.connections.load(Ordering::SeqCst), 2);
        assert_eq!(*server.bodies.lock().unwrap(), ["one\r\n", "two\r\n"]);
    }

    #[test]
    fn a_reused_session_answered_with_421_is_tried_again_on_a_new_one() {
        let server = Server::start(vec![Quirk::Say421AtMail(2), Quirk::None]);
        let target = server.target();
        assert!(send(&target, "one\r\n").is_empty());
        let errors = send(&target, "two\r\n");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(server.connections.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_reused_session_that_refuses_the_message_is_not_tried_again() {
        // A real answer about the message (a 451 to MAIL) is the
        // server's word, on a reused session as on a new one.
        let server = Server::start(vec![Quirk::RefuseMail(2)]);
        let target = server.target();
        assert!(send(&target, "one\r\n").is_empty());
        let errors = send(&target, "two\r\n");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].reply.code, 451, "{}", errors[0]);
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_fresh_session_that_fails_is_not_tried_again() {
        // Nothing was reused: the failure is the hop's, reported as it is.
        let server = Server::start(vec![Quirk::HangUpAtMail(1)]);
        let target = server.target();
        let errors = send(&target, "one\r\n");
        assert_eq!(errors.len(), 1);
        assert!(!errors[0].is_permanent(), "{}", errors[0]);
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_idle_session_the_server_closed_is_not_handed_out() {
        let server = Server::start(vec![Quirk::HangUpAfterFirst]);
        let endpoint = Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: server.port,
        };
        let pool = SessionPool::new(Duration::from_secs(60));
        let settings = Arc::new(settings());
        let mut p = Pooled::fresh(Session::open(&settings, &endpoint, false).unwrap());
        let rcpt = Recipient::new("r@example.net".parse().unwrap());
        let sender = Some("s@example.org".parse().unwrap());
        p.session
            .envelope(&sender, &Default::default(), 5, &[&rcpt])
            .unwrap();
        p.session.data(&Body::from_bytes(&b"x\r\n"[..]), 1).unwrap();
        pool.put("k", p);
        let closed = std::time::Instant::now();
        // The hang-up reaches our socket at once on loopback; allow for a
        // busy machine.
        while server.bodies.lock().unwrap().is_empty() {
            assert!(closed.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(pool.take("k").is_none());
    }
}
