//! The SMTP ingest listener: one thread per connection, up to
//! `max_connections`, threads reused from one connection to the next;
//! replies only after the message is durable.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::address::ReversePath;
use crate::config::BareNewline;
use crate::date::rfc5322;
use crate::envelope::{BodyType, Envelope, MailParams, Notify, Recipient, Ret};
use crate::queue::{is_no_space, IncomingMessage, Queue, QueueError};
use crate::smtp::command::{self, Command};
use crate::smtp::reply::SmtpReply;
use crate::smtp::threads::Reused;
use crate::smtp::transport::{Transport, Watchdog};
use crate::smtp::xtext;

/// Longest command line accepted; RFC 5321 asks for at least 512.
const MAX_COMMAND_LINE: usize = 4096;
/// Bad commands tolerated before the connection is dropped.
const MAX_ERRORS: usize = 20;
/// How long a session thread waits for the next connection: under load
/// the next one comes within milliseconds; an idle listener soon holds no
/// spare threads.
const THREAD_KEEP: Duration = Duration::from_secs(5);

/// How the listener behaves.
#[derive(Clone)]
pub struct ServerSettings {
    pub hostname: String,
    pub relay_networks: Vec<IpNet>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub tls: Option<Arc<native_tls::TlsAcceptor>>,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub bare_newline: BareNewline,
}

/// Binds every address, or says which one cannot be bound.
pub fn bind(addrs: &[String]) -> Result<Vec<TcpListener>, String> {
    addrs
        .iter()
        .map(|a| TcpListener::bind(a.as_str()).map_err(|e| format!("cannot listen on {a}: {e}")))
        .collect()
}

/// Loads the certificate and PKCS#8 key for STARTTLS.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<native_tls::TlsAcceptor, String> {
    let c =
        std::fs::read(cert).map_err(|e| format!("cannot read tls_cert {}: {e}", cert.display()))?;
    let k =
        std::fs::read(key).map_err(|e| format!("cannot read tls_key {}: {e}", key.display()))?;
    let id = native_tls::Identity::from_pkcs8(&c, &k)
        .map_err(|e| format!("tls_cert/tls_key: {e} (the key must be PEM PKCS#8)"))?;
    native_tls::TlsAcceptor::new(id).map_err(|e| format!("cannot set up TLS: {e}"))
}

/// The running listener.
pub struct Server {
    stopping: Arc<AtomicBool>,
    addrs: Vec<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
    active: Arc<AtomicUsize>,
}

impl Server {
    /// Starts one accepting thread per listening socket.
    pub fn start(
        listeners: Vec<TcpListener>,
        queue: Arc<Queue>,
        settings: ServerSettings,
    ) -> Server {
        let stopping = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let settings = Arc::new(settings);
        let sessions = {
            let (queue, settings) = (Arc::clone(&queue), Arc::clone(&settings));
            Arc::new(Reused::new(
                "mailqueue-smtp",
                THREAD_KEEP,
                move |(stream, guard): (TcpStream, ActiveGuard)| {
                    let _guard = guard;
                    let Ok(peer) = stream.peer_addr() else {
                        return;
                    };
                    let _ = stream.set_nodelay(true);
                    Session::new(Transport::Tcp(stream), peer, &queue, &settings).run();
                },
            ))
        };
        let mut addrs = Vec::new();
        let mut threads = Vec::new();
        for listener in listeners {
            if let Ok(a) = listener.local_addr() {
                log::info!("listening for SMTP on {a}");
                addrs.push(a);
            }
            let (stopping, active, sessions, max) = (
                Arc::clone(&stopping),
                Arc::clone(&active),
                Arc::clone(&sessions),
                settings.max_connections,
            );
            threads.push(
                thread::Builder::new()
                    .name("mailqueue-listen".into())
                    .spawn(move || accept_loop(listener, &sessions, max, &stopping, &active))
                    .expect("cannot start the listener thread"),
            );
        }
        Server {
            stopping,
            addrs,
            threads,
            active,
        }
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Connections being served now.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Stops accepting; sessions in progress run on until they end.
    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        for a in &self.addrs {
            // Wakes the blocking accept so it sees the flag.
            let _ = TcpStream::connect_timeout(a, Duration::from_secs(1));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: TcpListener,
    sessions: &Reused<(TcpStream, ActiveGuard)>,
    max_connections: usize,
    stopping: &AtomicBool,
    active: &Arc<AtomicUsize>,
) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                log::warn!("accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
            let _ = stream.write_all(b"421 4.7.0 Too many connections, try again later\r\n");
            continue;
        }
        let guard = ActiveGuard(Arc::clone(active));
        if let Err(e) = sessions.run((stream, guard)) {
            log::error!("cannot start a connection thread: {e}");
        }
    }
}

/// The queue is over `max_messages`, `max_bytes` or `min_free_bytes`.
fn quota_reply() -> SmtpReply {
    reply(452, (4, 3, 1), "Error: insufficient system storage")
}

/// The message could not be written: a full disk is the same to the
/// client as a full queue (try again later); anything else is a local error.
fn write_error_reply(disk_full: bool) -> SmtpReply {
    if disk_full {
        quota_reply()
    } else {
        reply(451, (4, 3, 0), "Error: queue file write error")
    }
}

/// `bare_newline = "reject"` and a line ended by LF alone.
fn bare_newline_reply() -> SmtpReply {
    reply(
        550,
        (5, 5, 2),
        "Error: bare <LF> received; lines must end in <CR><LF>",
    )
}

/// A socket read timeout shows up as `WouldBlock` on Unix.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A transaction being built.
struct Transaction {
    sender: ReversePath,
    params: MailParams,
    rcpts: Vec<Recipient>,
}

/// What reading a command line gave.
enum Line {
    Text(String),
    TooLong,
    /// Ended by a bare LF, with `bare_newline = "reject"`.
    BareNewline,
    Eof,
}

struct Session<'a> {
    io: BufReader<Transport>,
    out: Vec<u8>,
    peer: SocketAddr,
    queue: &'a Queue,
    s: &'a ServerSettings,
    helo: Option<String>,
    esmtp: bool,
    txn: Option<Transaction>,
    errors: usize,
    relay_allowed: bool,
}

fn reply(code: u16, enhanced: (u8, u16, u16), text: &str) -> SmtpReply {
    SmtpReply::with_code(code, enhanced, text)
}

impl<'a> Session<'a> {
    fn new(
        transport: Transport,
        peer: SocketAddr,
        queue: &'a Queue,
        s: &'a ServerSettings,
    ) -> Self {
        let ip = match peer.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        Session {
            io: BufReader::with_capacity(64 * 1024, transport),
            out: Vec::with_capacity(1024),
            peer,
            queue,
            s,
            helo: None,
            esmtp: false,
            txn: None,
            errors: 0,
            relay_allowed: s.relay_networks.iter().any(|n| n.contains(&ip)),
        }
    }

    fn send(&mut self, r: &SmtpReply) {
        self.out.extend_from_slice(format!("{r}\r\n").as_bytes());
    }

    /// Writes queued replies. While pipelined commands are still
    /// buffered, replies wait so they go out in one packet (RFC 2920).
    fn flush(&mut self, force: bool) -> io::Result<()> {
        if self.out.is_empty() || (!force && !self.io.buffer().is_empty()) {
            return Ok(());
        }
        let t = self.io.get_mut();
        t.write_all(&self.out)?;
        t.flush()?;
        self.out.clear();
        Ok(())
    }

    fn run(mut self) {
        let _ = self.io.get_ref().set_timeout(self.s.command_timeout);
        // No enhanced code in the greeting (RFC 2034 section 3): clients
        // read the host name as its first word.
        let greeting = SmtpReply::new(220, None, &format!("{} ESMTP mailqueue", self.s.hostname));
        self.send(&greeting);
        loop {
            if self.flush(false).is_err() {
                return;
            }
            let line = match self.read_line() {
                Ok(l) => l,
                Err(e) => {
                    if is_timeout(&e) {
                        self.send(&self.timeout_reply());
                        let _ = self.flush(true);
                    }
                    return;
                }
            };
            let line = match line {
                Line::Eof => return,
                Line::TooLong => {
                    self.send(&reply(500, (5, 5, 6), "Error: line too long"));
                    if self.count_error() {
                        return;
                    }
                    continue;
                }
                Line::BareNewline => {
                    log::info!("{}: bare <LF> in a command: session ended", self.peer);
                    self.send(&bare_newline_reply());
                    let _ = self.flush(true);
                    return;
                }
                Line::Text(t) => t,
            };
            match command::parse(&line) {
                Err(r) => {
                    self.send(&r);
                    if self.count_error() {
                        return;
                    }
                }
                Ok(Command::StartTls) => match self.starttls() {
                    Some(next) => self = next,
                    None => return,
                },
                Ok(c) => {
                    if !self.handle(c) {
                        let _ = self.flush(true);
                        return;
                    }
                }
            }
        }
    }

    fn timeout_reply(&self) -> SmtpReply {
        reply(
            421,
            (4, 4, 2),
            &format!("{} Error: timeout exceeded", self.s.hostname),
        )
    }

    /// Counts a bad command; true when the client has had too many.
    fn count_error(&mut self) -> bool {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.send(&reply(421, (4, 7, 0), "Error: too many errors"));
            let _ = self.flush(true);
            return true;
        }
        false
    }

    fn read_line(&mut self) -> io::Result<Line> {
        let mut line = Vec::new();
        let mut too_long = false;
        // The whole line must come within the command timeout: a client
        // trickling a byte now and then cannot hold its slot for ever.
        let deadline = Instant::now() + self.s.command_timeout;
        let mut armed = false;
        loop {
            if self.io.buffer().is_empty() {
                arm(&self.io, deadline)?;
                armed = true;
            }
            let buf = self.io.fill_buf()?;
            if buf.is_empty() {
                return Ok(Line::Eof);
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if !too_long {
                if line.len() + take > MAX_COMMAND_LINE {
                    too_long = true;
                    line.clear();
                } else {
                    line.extend_from_slice(&buf[..take]);
                }
            }
            self.io.consume(take);
            if done {
                break;
            }
        }
        if armed {
            // The replies that follow get the full timeout to go out.
            self.io.get_ref().set_timeout(self.s.command_timeout)?;
        }
        if too_long {
            return Ok(Line::TooLong);
        }
        // A line ends at LF; "reject" wants the CR before it too.
        line.pop();
        if line.last() != Some(&b'\r') && self.s.bare_newline == BareNewline::Reject {
            return Ok(Line::BareNewline);
        }
        while line.last() == Some(&b'\r') {
            line.pop();
        }
        // Commands are ASCII; anything else cannot be one, but may be a
        // UTF-8 address under SMTPUTF8.
        Ok(Line::Text(
            String::from_utf8(line).unwrap_or_else(|_| "\u{FFFD}".into()),
        ))
    }

    /// Handles one command; false ends the session.
    fn handle(&mut self, c: Command) -> bool {
        match c {
            Command::Ehlo(name) => {
                self.helo = Some(name);
                self.esmtp = true;
                self.txn = None;
                let mut lines = vec![
                    self.s.hostname.clone(),
                    "PIPELINING".into(),
                    format!("SIZE {}", self.s.max_message_size),
                    "8BITMIME".into(),
                    "ENHANCEDSTATUSCODES".into(),
                    "DSN".into(),
                    "SMTPUTF8".into(),
                ];
                if self.s.tls.is_some() && !self.io.get_ref().is_tls() {
                    lines.push("STARTTLS".into());
                }
                let last = lines.len() - 1;
                for (i, l) in lines.iter().enumerate() {
                    let sep = if i == last { ' ' } else { '-' };
                    self.out
                        .extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
                }
            }
            Command::Helo(name) => {
                self.helo = Some(name);
                self.esmtp = false;
                self.txn = None;
                let r = SmtpReply::new(250, None, &self.s.hostname);
                self.send(&r);
            }
            Command::Mail(sender, params) => {
                let r = self.mail(sender, params);
                self.send(&r);
            }
            Command::Rcpt(rcpt, params) => {
                let r = self.rcpt(rcpt, params);
                self.send(&r);
            }
            Command::Data => return self.data(),
            Command::Rset => {
                self.txn = None;
                self.send(&reply(250, (2, 0, 0), "Ok"));
            }
            Command::Noop => self.send(&reply(250, (2, 0, 0), "Ok")),
            Command::Quit => {
                self.send(&reply(221, (2, 0, 0), "Bye"));
                return false;
            }
            Command::Vrfy => self.send(&reply(
                252,
                (2, 5, 0),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Help => self.send(&reply(214, (2, 0, 0), "See RFC 5321")),
            Command::StartTls => unreachable!("handled in run"),
        }
        true
    }

    /// Upgrades the connection; `None` when the session is over.
    fn starttls(mut self) -> Option<Self> {
        let Some(acceptor) = self.s.tls.clone().filter(|_| !self.io.get_ref().is_tls()) else {
            self.send(&reply(502, (5, 5, 1), "Error: command not implemented"));
            return Some(self);
        };
        self.send(&reply(220, (2, 0, 0), "Ready to start TLS"));
        self.flush(true).ok()?;
        // Anything pipelined after STARTTLS came in clear: drop it.
        let Session {
            io,
            out,
            peer,
            queue,
            s,
            errors,
            relay_allowed,
            ..
        } = self;
        let Transport::Tcp(tcp) = io.into_inner() else {
            return None;
        };
        // The whole handshake within the command timeout: a client
        // trickling its hello a byte at a time must not hold the thread.
        let deadline = Watchdog::arm(&tcp, s.command_timeout);
        let accepted = acceptor.accept(tcp);
        drop(deadline);
        match accepted {
            Ok(tls) => {
                let transport = Transport::Tls(Box::new(tls));
                let _ = transport.set_timeout(s.command_timeout);
                Some(Session {
                    io: BufReader::with_capacity(64 * 1024, transport),
                    out,
                    peer,
                    queue,
                    s,
                    helo: None,
                    esmtp: false,
                    txn: None,
                    errors,
                    relay_allowed,
                })
            }
            Err(e) => {
                log::info!("{peer}: TLS handshake failed: {e}");
                None
            }
        }
    }

    fn mail(&mut self, sender: ReversePath, params: Vec<(String, Option<String>)>) -> SmtpReply {
        if self.helo.is_none() {
            return reply(503, (5, 5, 1), "Error: send HELO/EHLO first");
        }
        if self.txn.is_some() {
            return reply(503, (5, 5, 1), "Error: nested MAIL command");
        }
        let mut p = MailParams::default();
        let mut announced: u64 = 0;
        for (key, value) in params {
            let bad = || reply(501, (5, 5, 4), &format!("Bad {key} parameter"));
            match (key.as_str(), value.as_deref()) {
                ("SIZE", Some(v)) => match v.parse::<u64>() {
                    Ok(n) if n > self.s.max_message_size => {
                        return reply(552, (5, 3, 4), "Message size exceeds fixed limit")
                    }
                    Ok(n) => announced = n,
                    Err(_) => return bad(),
                },
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => p.body = BodyType::SevenBit,
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                    p.body = BodyType::EightBitMime
                }
                ("SMTPUTF8", None) => p.smtputf8 = true,
                ("RET", Some(v)) if v.eq_ignore_ascii_case("FULL") => p.ret = Some(Ret::Full),
                ("RET", Some(v)) if v.eq_ignore_ascii_case("HDRS") => p.ret = Some(Ret::Hdrs),
                ("ENVID", Some(v)) => match xtext::decode(v).filter(|d| d.len() <= 100) {
                    Some(d) => p.envid = Some(d),
                    None => return bad(),
                },
                ("AUTH", Some(_)) => {}
                ("SIZE" | "BODY" | "SMTPUTF8" | "RET" | "ENVID" | "AUTH", _) => return bad(),
                _ => return reply(555, (5, 5, 4), &format!("Unsupported parameter {key}")),
            }
        }
        if sender.as_ref().is_some_and(|s| s.needs_smtputf8()) && !p.smtputf8 {
            return reply(553, (5, 6, 7), "Non-ASCII sender address needs SMTPUTF8");
        }
        // Refuse early, before the client sends a body we could not keep.
        if let Err(QueueError::Quota(why)) = self.queue.check_quota(announced) {
            log::warn!("{}: refusing mail: {why}", self.peer);
            return quota_reply();
        }
        self.txn = Some(Transaction {
            sender,
            params: p,
            rcpts: Vec::new(),
        });
        reply(250, (2, 1, 0), "Ok")
    }

    fn rcpt(
        &mut self,
        address: crate::address::Address,
        params: Vec<(String, Option<String>)>,
    ) -> SmtpReply {
        let Some(txn) = self.txn.as_mut() else {
            return reply(503, (5, 5, 1), "Error: need MAIL command");
        };
        if !self.relay_allowed {
            return reply(554, (5, 7, 1), &format!("<{address}>: Relay access denied"));
        }
        if txn.rcpts.len() >= self.s.max_recipients {
            return reply(452, (4, 5, 3), "Error: too many recipients");
        }
        if address.needs_smtputf8() && !txn.params.smtputf8 {
            return reply(553, (5, 6, 7), "Non-ASCII recipient address needs SMTPUTF8");
        }
        let mut rcpt = Recipient::new(address);
        for (key, value) in params {
            match (key.as_str(), value.as_deref()) {
                ("NOTIFY", Some(v)) => match v.parse::<Notify>() {
                    Ok(n) => rcpt.notify = Some(n),
                    Err(_) => return reply(501, (5, 5, 4), "Bad NOTIFY parameter"),
                },
                ("ORCPT", Some(v)) => {
                    let decoded = v
                        .split_once(';')
                        .filter(|(kind, _)| {
                            !kind.is_empty()
                                && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        })
                        .and_then(|(kind, addr)| xtext::decode(addr).map(|a| format!("{kind};{a}")))
                        .filter(|o| o.len() <= 500);
                    match decoded {
                        Some(o) => rcpt.orcpt = Some(o),
                        None => return reply(501, (5, 5, 4), "Bad ORCPT parameter"),
                    }
                }
                ("NOTIFY" | "ORCPT", None) => {
                    return reply(501, (5, 5, 4), &format!("Bad {key} parameter"))
                }
                _ => return reply(555, (5, 5, 4), &format!("Unsupported parameter {key}")),
            }
        }
        txn.rcpts.push(rcpt);
        reply(250, (2, 1, 5), "Ok")
    }

    /// DATA: reads the message to its final dot, then answers. False
    /// when the connection is gone.
    fn data(&mut self) -> bool {
        let Some(txn) = self.txn.take() else {
            self.send(&reply(503, (5, 5, 1), "Error: need RCPT command"));
            return true;
        };
        if txn.rcpts.is_empty() {
            self.txn = Some(txn);
            self.send(&reply(554, (5, 5, 1), "Error: no valid recipients"));
            return true;
        }
        let mut disk_full = false;
        let mut incoming = match self.queue.begin() {
            Ok(i) => Some(i),
            Err(e) => {
                log::error!("cannot accept a message: {e}");
                self.send(&write_error_reply(e.is_no_space()));
                return true;
            }
        };
        self.send(&reply(354, (2, 0, 0), "End data with <CR><LF>.<CR><LF>"));
        if self.flush(true).is_err() {
            return false;
        }
        let _ = self.io.get_ref().set_timeout(self.s.data_timeout);
        if let Some(inc) = incoming.as_mut() {
            let header = self.received_header(inc.id().as_str(), &txn);
            if let Err(e) = inc.write_all(header.as_bytes()) {
                log::error!("cannot write a message: {e}");
                disk_full = is_no_space(&e);
                incoming = None;
            }
        }
        let result = read_data(
            &mut self.io,
            &mut incoming,
            &mut disk_full,
            self.s.max_message_size,
            self.s.data_timeout,
            self.s.bare_newline,
        );
        let _ = self.io.get_ref().set_timeout(self.s.command_timeout);
        let r = match result {
            Err(e) if is_timeout(&e) => {
                // A client silent in DATA is told why it is dropped, as
                // one silent between commands is (RFC 5321 4.5.3.2); the
                // partial message is gone before it hears.
                drop(incoming.take());
                log::info!("{}: timeout during DATA", self.peer);
                self.send(&self.timeout_reply());
                let _ = self.flush(true);
                return false;
            }
            Err(e) => {
                log::info!("{}: connection lost during DATA: {e}", self.peer);
                return false;
            }
            Ok(DataEnd::TooBig) => reply(552, (5, 3, 4), "Error: message file too big"),
            Ok(DataEnd::BareNewline) => {
                // The rest of the message is not read: ending the session is
                // the only way to be sure none of it is taken as commands.
                log::info!(
                    "{}: bare <LF> in DATA: message refused, session ended",
                    self.peer
                );
                self.send(&bare_newline_reply());
                let _ = self.flush(true);
                return false;
            }
            Ok(DataEnd::Complete) => match incoming {
                None => write_error_reply(disk_full),
                Some(inc) => self.commit(inc, txn),
            },
        };
        self.send(&r);
        true
    }

    fn commit(&self, inc: IncomingMessage<'_>, txn: Transaction) -> SmtpReply {
        let envelope = Envelope {
            sender: txn.sender,
            recipients: txn.rcpts,
            params: txn.params,
        };
        match inc.commit(&envelope) {
            Ok(id) => reply(250, (2, 0, 0), &format!("Ok: queued as {id}")),
            Err(QueueError::Closed) => reply(421, (4, 3, 2), "Error: shutting down"),
            Err(QueueError::Quota(why)) => {
                log::warn!("{}: refusing mail: {why}", self.peer);
                quota_reply()
            }
            Err(e) => {
                log::error!("cannot queue a message: {e}");
                write_error_reply(e.is_no_space())
            }
        }
    }

    fn received_header(&self, id: &str, txn: &Transaction) -> String {
        let tls = self.io.get_ref().is_tls();
        let proto = match (txn.params.smtputf8, self.esmtp, tls) {
            (true, _, false) => "UTF8SMTP",
            (true, _, true) => "UTF8SMTPS",
            (false, true, false) => "ESMTP",
            (false, true, true) => "ESMTPS",
            (false, false, false) => "SMTP",
            (false, false, true) => "SMTPS",
        };
        let helo: String = self
            .helo
            .as_deref()
            .unwrap_or("unknown")
            .chars()
            .filter(|c| !c.is_control())
            .take(255)
            .collect();
        let mut h = format!(
            "Received: from {helo} ([{}])\r\n\tby {} (mailqueue) with {proto} id {id}",
            self.peer.ip(),
            self.s.hostname
        );
        if let [only] = txn.rcpts.as_slice() {
            h.push_str(&format!("\r\n\tfor <{}>", only.address));
        }
        h.push_str(&format!("; {}\r\n", rfc5322(std::time::SystemTime::now())));
        h
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum DataEnd {
    Complete,
    TooBig,
    /// A bare LF, with `bare_newline = "reject"`.
    BareNewline,
}

/// Sets the read timeout to what is left until `deadline`, or fails with
/// `TimedOut` once it has passed.
fn arm(io: &BufReader<Transport>, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
    }
    io.get_ref().set_timeout(left)
}

/// Reads DATA up to `<CR><LF>.<CR><LF>`, undoing dot-stuffing, into
/// `sink` (dropped on a write error). Past `limit` bytes the rest is read
/// and thrown away. Each line must arrive within `line_timeout`, so a
/// client trickling its message cannot hold the connection for ever.
///
/// Only that exact sequence ends the data: a `.` line next to a bare LF
/// or a bare CR is text. A front MTA that ends DATA elsewhere would
/// otherwise let a client hide a second transaction, with a sender of its
/// choosing, inside a message (SMTP smuggling). A bare LF is stored as
/// CRLF (`Normalize`) or refused (`Reject`); a bare CR is kept as text and
/// never ends a line.
fn read_data(
    io: &mut BufReader<Transport>,
    sink: &mut Option<IncomingMessage<'_>>,
    disk_full: &mut bool,
    limit: u64,
    line_timeout: Duration,
    bare_newline: BareNewline,
) -> io::Result<DataEnd> {
    let mut st = DataState::LineStart;
    let mut size: u64 = 0;
    let mut too_big = false;
    let mut out = Vec::with_capacity(64 * 1024);
    let mut line_deadline = Instant::now() + line_timeout;
    loop {
        if io.buffer().is_empty() {
            arm(io, line_deadline)?;
        }
        let buf = io.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        if buf.contains(&b'\n') {
            line_deadline = Instant::now() + line_timeout;
        }
        out.clear();
        let reject = bare_newline == BareNewline::Reject;
        let (used, end) = unstuff(buf, &mut st, &mut out, reject);
        io.consume(used);
        if end == Some(DataEnd::BareNewline) {
            return Ok(DataEnd::BareNewline);
        }
        size += out.len() as u64;
        if size > limit {
            too_big = true;
        }
        if !too_big {
            if let Some(s) = sink.as_mut() {
                if let Err(e) = s.write_all(&out) {
                    log::error!("cannot write a message: {e}");
                    *disk_full = is_no_space(&e);
                    *sink = None;
                }
            }
        }
        if end == Some(DataEnd::Complete) {
            return Ok(if too_big {
                DataEnd::TooBig
            } else {
                DataEnd::Complete
            });
        }
    }
}

/// Where the DATA reader stands between two bytes.
#[derive(Clone, Copy, PartialEq, Debug)]
enum DataState {
    /// After CRLF (or at the start): a `.` here may begin the end.
    LineStart,
    /// After a bare LF: a line begins, but never the end of data.
    BareLineStart,
    /// Inside a line.
    Text,
    /// After a CR inside a line.
    Cr,
    /// After a `.` at a line start.
    Dot,
    /// After `.` CR at a line start.
    DotCr,
}

/// Decodes DATA bytes from `input` into `out` (dot-unstuffed, bare LF as
/// CRLF) until the end of data or of `input`. Returns the bytes used and,
/// when it stopped early, why: `Complete` after the final dot line (the
/// rest of `input` is the next command), `BareNewline` at a bare LF when
/// `stop_at_bare` is set.
fn unstuff(
    input: &[u8],
    st: &mut DataState,
    out: &mut Vec<u8>,
    stop_at_bare: bool,
) -> (usize, Option<DataEnd>) {
    use DataState::*;
    let mut i = 0;
    while i < input.len() {
        if *st == Text {
            // The common case: copy up to the next line-end byte at once.
            let rest = &input[i..];
            let n = rest
                .iter()
                .position(|&b| b == b'\r' || b == b'\n')
                .unwrap_or(rest.len());
            out.extend_from_slice(&rest[..n]);
            i += n;
            if i == input.len() {
                break;
            }
        }
        let b = input[i];
        i += 1;
        *st = match (*st, b) {
            (DotCr, b'\n') => return (i, Some(DataEnd::Complete)),
            (Cr, b'\n') => {
                out.extend_from_slice(b"\r\n");
                LineStart
            }
            (_, b'\n') => {
                // A bare LF: a line end for the content, never part of the
                // end of data. A lone dot before it was stuffing.
                if stop_at_bare {
                    return (i, Some(DataEnd::BareNewline));
                }
                out.extend_from_slice(b"\r\n");
                BareLineStart
            }
            (LineStart, b'.') => Dot,
            (BareLineStart, b'.') => Text,
            (Dot, b'\r') => DotCr,
            (Cr | DotCr, b'\r') => {
                // The CR before this one was bare: it stays as text.
                out.push(b'\r');
                Cr
            }
            (_, b'\r') => Cr,
            (Cr | DotCr, _) => {
                out.push(b'\r');
                out.push(b);
                Text
            }
            (_, _) => {
                out.push(b);
                Text
            }
        };
    }
    (i, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `data` in pieces of `step` bytes; returns what was stored,
    /// where the data ended (bytes used) and how.
    fn decode(data: &[u8], step: usize, reject: bool) -> (Vec<u8>, usize, Option<DataEnd>) {
        let mut st = DataState::LineStart;
        let mut out = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let piece = &data[at..(at + step).min(data.len())];
            let (used, end) = unstuff(piece, &mut st, &mut out, reject);
            at += used;
            if end.is_some() {
                return (out, at, end);
            }
        }
        (out, at, None)
    }

    const SMUGGLED: &[u8] =
        b"MAIL FROM:<ceo@corp.example>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n";

    #[test]
    fn only_crlf_dot_crlf_ends_data_whatever_the_piece_size() {
        for ending in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r.\n",
            b"\n.\r",
        ] {
            let mut data = b"Subject: x\r\n\r\nhello".to_vec();
            data.extend_from_slice(ending);
            data.extend_from_slice(SMUGGLED);
            data.extend_from_slice(b"x\r\n.\r\n");
            for step in [1, 2, 3, 7, data.len()] {
                let (out, used, end) = decode(&data, step, false);
                assert_eq!(end, Some(DataEnd::Complete), "{ending:?} step {step}");
                assert_eq!(used, data.len(), "{ending:?} step {step}");
                // The would-be commands are text of the one message.
                let text = String::from_utf8_lossy(&out);
                assert!(text.contains("MAIL FROM:<ceo@corp.example>"), "{text:?}");
            }
        }
    }

    #[test]
    fn a_bare_lf_is_stored_as_crlf_and_its_dot_is_stuffing() {
        let (out, _, end) = decode(b"a\nb\r\n..c\n.d\n.\r\n.\r\n", 1, false);
        assert_eq!(end, Some(DataEnd::Complete));
        assert_eq!(out, b"a\r\nb\r\n.c\r\nd\r\n\r\n");
    }

    #[test]
    fn a_bare_cr_stays_text_and_never_ends_a_line() {
        let (out, _, end) = decode(b"a\rb\r\r\n.\rx\r\n.\r\n", 2, false);
        assert_eq!(end, Some(DataEnd::Complete));
        assert_eq!(out, b"a\rb\r\r\n\rx\r\n");
    }

    #[test]
    fn the_end_leaves_the_next_command_unread() {
        let data = b"hi\r\n.\r\nQUIT\r\n";
        let (out, used, end) = decode(data, data.len(), false);
        assert_eq!(
            (out.as_slice(), end),
            (&b"hi\r\n"[..], Some(DataEnd::Complete))
        );
        assert_eq!(&data[used..], b"QUIT\r\n");
    }

    #[test]
    fn reject_stops_at_the_first_bare_lf() {
        let (_, used, end) = decode(b"ok\r\nbad\nmore\r\n.\r\n", 1, true);
        assert_eq!((used, end), (8, Some(DataEnd::BareNewline)));
        let (out, _, end) = decode(b"ok\r\n\rfine\r\n.\r\n", 1, true);
        assert_eq!(
            (out.as_slice(), end),
            (&b"ok\r\n\rfine\r\n"[..], Some(DataEnd::Complete))
        );
    }

    proptest::proptest! {
        /// Data ends exactly after the first CR LF . CR LF (counting the
        /// CR LF that ended DATA), however the bytes arrive.
        #[test]
        fn data_ends_only_at_crlf_dot_crlf(
            data in proptest::collection::vec(
                proptest::sample::select(vec![b'\r', b'\n', b'.', b'a']), 0..64),
            step in 1usize..9,
        ) {
            let mut framed = b"\r\n".to_vec();
            framed.extend_from_slice(&data);
            let want = framed
                .windows(5)
                .position(|w| w == b"\r\n.\r\n")
                .map(|p| p + 5 - 2);
            let (out, used, end) = decode(&data, step, false);
            match want {
                Some(at) => {
                    proptest::prop_assert_eq!(end, Some(DataEnd::Complete));
                    proptest::prop_assert_eq!(used, at);
                }
                None => proptest::prop_assert_eq!(end, None),
            }
            let (whole, _, _) = decode(&data, data.len().max(1), false);
            proptest::prop_assert_eq!(&out, &whole);
            // Stored text never holds a bare LF.
            for (i, &b) in out.iter().enumerate() {
                if b == b'\n' {
                    proptest::prop_assert!(i > 0 && out[i - 1] == b'\r');
                }
            }
        }
    }
}
