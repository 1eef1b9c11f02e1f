//! A fixed next hop: a smarthost over SMTP or SMTPS, or an LMTP server
//! over TCP or a Unix socket; at most so many transactions at once and
//! per interval to it, when limited.

use std::sync::Arc;
use std::time::Duration;

use crate::delivery::limits::{DestinationLimits, Rate};
use crate::delivery::pool::{Pooled, SessionPool};
use crate::delivery::smtp_client::{ClientSettings, Endpoint, Session};
use crate::delivery::{
    Body, DeliveryError, DeliveryTarget, ErrorKind, Handoff, MessageInfo, RecipientOutcome,
};
use crate::envelope::Recipient;
use crate::smtp::reply::SmtpReply;

/// The pool key of the one next hop.
const HOP: &str = "relay";

/// Delivers every message to one server.
pub struct RelayTarget {
    settings: Arc<ClientSettings>,
    endpoint: Endpoint,
    implicit_tls: bool,
    pool: Arc<SessionPool>,
    limits: DestinationLimits,
    /// The next hop as limits and throttled recipients name it.
    destination: String,
}

impl RelayTarget {
    /// A target that keeps idle sessions for `cache_time` (zero: none),
    /// without limits.
    pub fn new(
        settings: ClientSettings,
        endpoint: Endpoint,
        implicit_tls: bool,
        cache_time: Duration,
    ) -> RelayTarget {
        RelayTarget {
            settings: Arc::new(settings),
            destination: destination_name(&endpoint),
            endpoint,
            implicit_tls,
            pool: SessionPool::new(cache_time),
            limits: DestinationLimits::new(usize::MAX, None),
        }
    }

    /// The same target with at most `concurrency` transactions at once
    /// and at most `rate` (`None`: any number) to the next hop.
    pub fn with_limits(mut self, concurrency: usize, rate: Option<Rate>) -> RelayTarget {
        self.limits = DestinationLimits::new(concurrency, rate);
        self
    }

    /// Connections open to the next hop for deliveries now.
    pub fn active_connections(&self) -> usize {
        self.limits.connections(&self.destination)
    }

    fn open(&self) -> Result<Session, DeliveryError> {
        Session::open(&self.settings, &self.endpoint, self.implicit_tls)
    }
}

impl DeliveryTarget for RelayTarget {
    fn deliver(
        &self,
        msg: &MessageInfo,
        rcpts: &[Recipient],
        body: &Body,
    ) -> Vec<RecipientOutcome> {
        // Held for the whole transaction, idle pooled sessions aside: a
        // session in the pool is not one in use.
        let _permit = match self.limits.admit(&self.destination) {
            Ok(p) => p,
            Err(e) => return RecipientOutcome::all(rcpts.len(), Err(e)),
        };
        let pooled = match self.pool.take(HOP) {
            Some(p) => p,
            None => match self.open() {
                Ok(s) => Pooled::fresh(s),
                Err(e) => return RecipientOutcome::all(rcpts.len(), Err(e)),
            },
        };
        if let Err(e) = pooled
            .session
            .check_message(&msg.sender, &msg.params, msg.size)
        {
            self.pool.put(HOP, pooled);
            return RecipientOutcome::all(rcpts.len(), Err(e));
        }
        let mut hop = HopDelivery::new(pooled, msg.clone(), self.settings.lmtp);
        hop.reopen = Some(Box::new(|| self.open()));
        let outcomes = hop.deliver(rcpts, body);
        // Back to the pool, which quits it if it cannot carry another.
        if let Some(pooled) = hop.into_session() {
            self.pool.put(HOP, pooled);
        }
        outcomes
    }
}

/// `host:port`, or the socket's path.
fn destination_name(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Tcp { host, port } => format!("{host}:{port}"),
        Endpoint::Unix(path) => path.display().to_string(),
    }
}

/// One transaction on one session. Recipients are sent together,
/// pipelined when the server allows, and every RCPT, DATA and LMTP result
/// is reported per recipient.
pub struct HopDelivery<'a> {
    session: Option<Pooled>,
    info: MessageInfo,
    lmtp: bool,
    /// Opens a new session to the same destination, for a reused one
    /// that turns out to be closed.
    pub reopen: Option<Reopen<'a>>,
}

/// How a [`HopDelivery`] gets a fresh session.
pub type Reopen<'a> = Box<dyn Fn() -> Result<Session, DeliveryError> + 'a>;

/// Each recipient's result so far, by its position in the message's
/// recipients; `None` until known. A success keeps the server's final
/// reply for it (DATA's, or the recipient's own in LMTP).
type Slots = Vec<Option<Result<Option<SmtpReply>, DeliveryError>>>;

/// Fails the recipients at `positions` with `e`.
fn fail_all(slots: &mut Slots, positions: &[usize], e: &DeliveryError) {
    for &i in positions {
        slots[i] = Some(Err(e.clone()));
    }
}

impl<'a> HopDelivery<'a> {
    /// Wraps an open session (the MX client opens its own).
    pub fn new(session: Pooled, info: MessageInfo, lmtp: bool) -> HopDelivery<'a> {
        HopDelivery {
            session: Some(session),
            info,
            lmtp,
            reopen: None,
        }
    }

    /// Runs the transaction for `rcpts`; one outcome per recipient, in
    /// order, each naming the server the session ended on.
    pub fn deliver(&mut self, rcpts: &[Recipient], body: &Body) -> Vec<RecipientOutcome> {
        let mut slots: Slots = vec![None; rcpts.len()];
        let mut offered = Vec::with_capacity(rcpts.len());
        for (i, r) in rcpts.iter().enumerate() {
            match self.session.as_ref().map(|p| p.session.check_recipient(r)) {
                Some(Err(e)) => slots[i] = Some(Err(e)),
                _ => offered.push(i),
            }
        }
        if !offered.is_empty() {
            self.transfer(rcpts, offered, body, &mut slots);
        }
        let handoff = self.handoff();
        // After the session it ended on, which may be a new one.
        let relay = self.session_relay();
        let tls = self.session.as_ref().map(|p| p.session.tls_report());
        slots
            .into_iter()
            .map(|slot| {
                let result = slot.unwrap_or_else(|| {
                    Err(DeliveryError::new(
                        ErrorKind::Local,
                        "internal error: no result for the recipient",
                    ))
                });
                let (result, reply) = match result {
                    Ok(reply) => (Ok(handoff), reply),
                    Err(e) => (Err(e), None),
                };
                RecipientOutcome::new(result)
                    .via(relay.clone())
                    .over(tls)
                    .with_reply(reply)
            })
            .collect()
    }

    /// Runs the envelope and DATA for the recipients at `live`; sets each
    /// one's slot.
    fn transfer(
        &mut self,
        rcpts: &[Recipient],
        mut live: Vec<usize>,
        body: &Body,
        slots: &mut Slots,
    ) {
        let Some(results) = self.envelope(rcpts, &mut live, slots) else {
            return;
        };
        let Some(session) = self.session.as_mut().map(|p| &mut p.session) else {
            return;
        };
        let mut accepted = Vec::with_capacity(live.len());
        for (&i, result) in live.iter().zip(results) {
            match result {
                Ok(()) => accepted.push(i),
                Err(e) => slots[i] = Some(Err(e)),
            }
        }
        if accepted.is_empty() {
            let _ = session.reset();
            return;
        }
        match session.data(body, accepted.len()) {
            Err(e) => fail_all(slots, &accepted, &e),
            Ok(replies) if self.lmtp => {
                for (&i, reply) in accepted.iter().zip(replies) {
                    slots[i] = Some(match session.final_error(&reply) {
                        Some(e) => Err(e),
                        None => Ok(Some(reply)),
                    });
                }
            }
            Ok(replies) => {
                let first = replies.into_iter().next();
                let result = match first.as_ref().and_then(|r| session.final_error(r)) {
                    Some(e) => Err(e),
                    None => Ok(first),
                };
                for &i in &accepted {
                    slots[i] = Some(result.clone());
                }
            }
        }
    }

    /// Sends MAIL and the RCPTs of the recipients at `live`; returns the
    /// RCPT results, or `None` when every one of them failed (their slots
    /// set). A reused session that fails before the server said a word
    /// about this message was closed while idle (the server's idle
    /// timeout, a restart): what HTTP clients do with a reused connection,
    /// try once more on a new one at once, without counting a try against
    /// the recipients.
    fn envelope(
        &mut self,
        rcpts: &[Recipient],
        live: &mut Vec<usize>,
        slots: &mut Slots,
    ) -> Option<Vec<Result<(), DeliveryError>>> {
        let mut may_reopen = true;
        loop {
            let Some(pooled) = self.session.as_mut() else {
                let e = DeliveryError::new(ErrorKind::Closed, "session already closed");
                fail_all(slots, live, &e);
                return None;
            };
            let offered: Vec<&Recipient> = live.iter().map(|&i| &rcpts[i]).collect();
            let info = &self.info;
            let e = match pooled
                .session
                .envelope(&info.sender, &info.params, info.size, &offered)
            {
                Ok(r) => return Some(r),
                Err(e) => e,
            };
            let stale = pooled.reused() && pooled.session.nothing_heard() && !e.is_permanent();
            if !(stale && may_reopen && self.reopen.is_some()) {
                fail_all(slots, live, &e);
                return None;
            }
            may_reopen = false;
            log::info!(
                "{}: idle session with {} was closed ({e}); again on a new connection",
                info.id,
                pooled.session.relay()
            );
            if !self.reconnect(rcpts, live, slots) {
                return None;
            }
        }
    }

    /// Replaces the session with a new one; fails the recipients the new
    /// server cannot take. False when nothing is left to send.
    fn reconnect(&mut self, rcpts: &[Recipient], live: &mut Vec<usize>, slots: &mut Slots) -> bool {
        // The old one is out of step: dropping it just closes it.
        self.session = None;
        let Some(reopen) = self.reopen.as_ref() else {
            return false;
        };
        let fresh = match reopen() {
            Ok(s) => s,
            Err(e) => {
                fail_all(slots, live, &e);
                return false;
            }
        };
        // The new server may offer less than the old one did.
        let info = &self.info;
        if let Err(e) = fresh.check_message(&info.sender, &info.params, info.size) {
            fail_all(slots, live, &e);
            self.session = Some(Pooled::fresh(fresh));
            return false;
        }
        live.retain(|&i| match fresh.check_recipient(&rcpts[i]) {
            Ok(()) => true,
            Err(e) => {
                slots[i] = Some(Err(e));
                false
            }
        });
        self.session = Some(Pooled::fresh(fresh));
        !live.is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::smtp_client::testing::{serve_commands, Flow};
    use crate::id::MessageId;
    use crate::smtp::tls_policy::TlsPolicy;
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
            source_address: None,
            ip_version: Default::default(),
            messages_per_connection: 0,
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
    /// `quirks[k]` (the last one for the rest). Records message bodies
    /// and counts QUITs.
    struct Server {
        port: u16,
        connections: Arc<AtomicUsize>,
        bodies: Arc<Mutex<Vec<String>>>,
        quits: Arc<AtomicUsize>,
    }

    impl Server {
        fn start(quirks: Vec<Quirk>) -> Server {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            let connections = Arc::new(AtomicUsize::new(0));
            let bodies = Arc::new(Mutex::new(Vec::new()));
            let quits = Arc::new(AtomicUsize::new(0));
            let (c, b, q) = (
                Arc::clone(&connections),
                Arc::clone(&bodies),
                Arc::clone(&quits),
            );
            std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    let k = c.fetch_add(1, Ordering::SeqCst);
                    let quirk = quirks[k.min(quirks.len() - 1)];
                    let (b, q) = (Arc::clone(&b), Arc::clone(&q));
                    std::thread::spawn(move || serve(s, quirk, &b, &q));
                }
            });
            Server {
                port,
                connections,
                bodies,
                quits,
            }
        }

        fn target(&self) -> RelayTarget {
            self.target_with(settings())
        }

        fn target_with(&self, settings: ClientSettings) -> RelayTarget {
            let endpoint = Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: self.port,
            };
            RelayTarget::new(settings, endpoint, false, Duration::from_secs(60))
        }
    }

    fn serve(s: TcpStream, quirk: Quirk, bodies: &Mutex<Vec<String>>, quits: &AtomicUsize) {
        let mut mails = 0;
        serve_commands(s, b"220 test ESMTP\r\n", |verb, c| match verb {
            "EHLO" => c.say(b"250-test\r\n250 PIPELINING\r\n"),
            "MAIL" => {
                mails += 1;
                match quirk {
                    Quirk::HangUpAtMail(n) if n == mails => Ok(Flow::Stop),
                    Quirk::RefuseMail(n) if n == mails => c.say(b"451 4.3.0 not now\r\n"),
                    Quirk::Say421AtMail(n) if n == mails => {
                        c.say_last(b"421 4.4.2 idle too long\r\n")
                    }
                    _ => c.say(b"250 2.1.0 ok\r\n"),
                }
            }
            "RCPT" | "RSET" | "NOOP" => c.say(b"250 2.1.5 ok\r\n"),
            "DATA" => {
                c.say(b"354 go ahead\r\n")?;
                let body = c.read_body()?;
                bodies.lock().unwrap().push(body);
                if matches!(quirk, Quirk::HangUpAfterFirst) {
                    c.say_last(b"250 2.0.0 queued\r\n")
                } else {
                    c.say(b"250 2.0.0 queued\r\n")
                }
            }
            "QUIT" => {
                quits.fetch_add(1, Ordering::SeqCst);
                c.say_last(b"221 bye\r\n")
            }
            _ => c.say(b"500 what\r\n"),
        });
    }

    /// One message through the target; the errors reported.
    fn send(target: &RelayTarget, text: &str) -> Vec<DeliveryError> {
        let info = MessageInfo {
            id: MessageId::generate(),
            sender: Some("s@example.org".parse().unwrap()),
            params: Default::default(),
            size: text.len() as u64,
        };
        let rcpts = [Recipient::new("r@example.net".parse().unwrap())];
        let outcomes = target.deliver(&info, &rcpts, &Body::from_bytes(text.as_bytes().to_vec()));
        assert_eq!(outcomes.len(), 1);
        outcomes
            .into_iter()
            .filter_map(|o| o.result.err())
            .collect()
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
    fn a_session_that_carried_messages_per_connection_is_closed_with_quit() {
        let server = Server::start(vec![Quirk::None]);
        let target = server.target_with(ClientSettings {
            messages_per_connection: 2,
            ..settings()
        });
        for text in ["1\r\n", "2\r\n", "3\r\n", "4\r\n", "5\r\n"] {
            let errors = send(&target, text);
            assert!(errors.is_empty(), "{errors:?}");
        }
        assert_eq!(server.connections.load(Ordering::SeqCst), 3);
        // The QUIT's reply is awaited before the message's delivery ends;
        // the third session, with one message, waits in the pool.
        assert_eq!(server.quits.load(Ordering::SeqCst), 2);
        assert_eq!(server.bodies.lock().unwrap().len(), 5);
    }

    #[test]
    fn a_transaction_the_server_refuses_counts_towards_messages_per_connection() {
        // The first MAIL is refused: the session has carried two
        // transactions after the next message and is closed.
        let server = Server::start(vec![Quirk::RefuseMail(1), Quirk::None]);
        let target = server.target_with(ClientSettings {
            messages_per_connection: 2,
            ..settings()
        });
        assert_eq!(send(&target, "1\r\n").len(), 1);
        assert!(send(&target, "2\r\n").is_empty());
        assert!(send(&target, "3\r\n").is_empty());
        assert_eq!(server.connections.load(Ordering::SeqCst), 2);
        assert_eq!(server.quits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_server_that_closes_sooner_than_messages_per_connection_is_handled_as_before() {
        // The server hangs up silently at its second MAIL; with our limit
        // above its own the stale session is still replaced at once.
        let server = Server::start(vec![Quirk::HangUpAtMail(2), Quirk::None]);
        let target = server.target_with(ClientSettings {
            messages_per_connection: 5,
            ..settings()
        });
        assert!(send(&target, "one\r\n").is_empty());
        let errors = send(&target, "two\r\n");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(server.connections.load(Ordering::SeqCst), 2);
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
        assert_eq!(errors[0].reply().code, 451, "{}", errors[0]);
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
