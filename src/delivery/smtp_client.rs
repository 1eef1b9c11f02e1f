//! A blocking SMTP and LMTP client session: greeting, EHLO/LHLO,
//! STARTTLS, AUTH, the envelope (pipelined when offered), DATA and QUIT.
//! Every failure comes back as a classified [`DeliveryError`].

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::address::ReversePath;
use crate::config::TlsPolicy;
use crate::delivery::{Body, DamagedBody, DeliveryError};
use crate::envelope::{BodyType, MailParams, Recipient, Ret};
use crate::smtp::reply::{split_enhanced, SmtpReply};
use crate::smtp::transport::{read_line_limited, write_dot_stuffed, Transport, Watchdog};
use crate::smtp::xtext;

/// Longest reply line accepted (RFC 5321 allows 512; servers send more).
const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one multi-line reply: more is not an answer but a stream.
/// With [`MAX_REPLY_LINE`] this bounds what one reply makes us read.
const MAX_REPLY_LINES: usize = 200;
/// Most bytes of a reply's lines kept as lines (EHLO keywords, a few
/// hundred bytes in practice); the rest is read and dropped.
const MAX_KEPT_LINES: usize = 16 * 1024;
/// Most text of one reply kept: it goes into metadata, log lines and
/// notices, and a hostile server can send a megabyte of it.
const MAX_REPLY_TEXT: usize = 1024;
/// Ends a reply text cut at [`MAX_REPLY_TEXT`].
const CUT_MARK: &str = " [...]";

/// A user name and password for AUTH. Debug output hides the password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <hidden>)", self.username)
    }
}

/// How sessions behave; shared by every session of a target.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Our name in EHLO/LHLO.
    pub helo_name: String,
    /// Speak LMTP (LHLO, one reply per recipient after DATA).
    pub lmtp: bool,
    pub tls: TlsPolicy,
    /// Used for STARTTLS and implicit TLS; built from the policy.
    pub tls_connector: Option<Arc<native_tls::TlsConnector>>,
    pub auth: Option<Credentials>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// What the server said it supports after EHLO/LHLO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    /// SIZE limit; `Some(0)` means SIZE without a limit.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub starttls: bool,
    pub auth: Vec<String>,
}

impl Extensions {
    fn parse(reply_lines: &[String]) -> Extensions {
        let mut ext = Extensions::default();
        // The first line is the greeting part of the EHLO reply.
        for line in reply_lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => ext.pipelining = true,
                "SIZE" => ext.size = Some(words.next().and_then(|w| w.parse().ok()).unwrap_or(0)),
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "DSN" => ext.dsn = true,
                "STARTTLS" => ext.starttls = true,
                "AUTH" => ext.auth = words.map(|w| w.to_ascii_uppercase()).collect(),
                _ => {}
            }
        }
        ext
    }
}

/// A reply together with all its lines' texts.
struct FullReply {
    reply: SmtpReply,
    lines: Vec<String>,
}

/// One connected session.
pub struct Session {
    io: BufReader<Transport>,
    settings: Arc<ClientSettings>,
    /// Host name as configured or found in DNS, for TLS checks and DSNs.
    host: String,
    /// `host[ip]:port` for logs.
    relay: String,
    pub ext: Extensions,
    /// Set by a network error, a timeout or a malformed reply: the
    /// dialogue is out of step (a late reply may still come, a DATA may be
    /// half sent), so the session must not carry another command, not
    /// even RSET or QUIT, whose reply could be mistaken for another's.
    broken: bool,
    /// No transaction is open: the session can carry the next message
    /// without an RSET.
    idle: bool,
    /// The reply to a DATA pipelined behind the envelope, until the body
    /// (or a lone dot, if the message is abandoned) answers it.
    data_reply: Option<SmtpReply>,
    /// The server has answered something (other than 421) since the
    /// current transaction began: a failure after that may be about this
    /// message.
    heard: bool,
}

/// Most time the reply to QUIT is waited for.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads a session's stream with a deadline for the whole of a reply. A
/// socket timeout alone bounds each read, so a server sending one byte
/// just within it could hold a worker for hours; each read here gets only
/// the time left.
struct Deadline<'a> {
    io: &'a mut BufReader<Transport>,
    end: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = {
            let available = self.fill_buf()?;
            let n = available.len().min(buf.len());
            buf[..n].copy_from_slice(&available[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Deadline<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.io.buffer().is_empty() {
            let left = self.end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "reply not complete within the timeout",
                ));
            }
            self.io.get_ref().set_read_timeout(left)?;
        }
        self.io.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.io.consume(n);
    }
}

/// Writes to a session's stream with a deadline for the whole of it, as
/// [`Deadline`] does for reads: a per-call socket timeout alone lets a
/// server that reads a byte now and then hold a worker for ever. Each
/// write call gets only the time left; a blocking write that runs out
/// returns what it wrote, so the next call sees the deadline passed.
struct WriteDeadline<'a> {
    io: &'a mut Transport,
    end: Instant,
}

impl Write for WriteDeadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, DEADLINE_PASSED));
        }
        self.io.set_write_timeout(left)?;
        self.io.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.io.flush()
    }
}

const DEADLINE_PASSED: &str = "deadline passed";

/// Writes `bytes` within `timeout`; the error names the timeout.
fn write_within(io: &mut Transport, bytes: &[u8], timeout: Duration) -> io::Result<()> {
    let mut w = WriteDeadline {
        io,
        end: Instant::now() + timeout,
    };
    w.write_all(bytes)
        .and_then(|_| w.flush())
        .map_err(|e| name_timeout(e, timeout))
}

/// A write that ran out of time says so, instead of "Resource temporarily
/// unavailable" (what a socket write timeout reports).
fn name_timeout(e: io::Error, timeout: Duration) -> io::Error {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the server did not take it within {}",
                crate::config::format_duration(timeout)
            ),
        ),
        _ => e,
    }
}

/// The start of `text`, at most `max` bytes, cut at a character boundary.
fn cut_text(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn protocol_error(what: &str) -> DeliveryError {
    DeliveryError::temporary(451, (4, 5, 0), what)
}

impl Session {
    /// Connects, reads the greeting, says EHLO/LHLO, upgrades to TLS as
    /// the policy says and authenticates when credentials are set.
    pub fn open(
        settings: &Arc<ClientSettings>,
        endpoint: &Endpoint,
        implicit_tls: bool,
    ) -> Result<Session, DeliveryError> {
        let (transport, host, relay) = match endpoint {
            Endpoint::Tcp { host, port } => {
                let addrs: Vec<SocketAddr> = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| {
                        DeliveryError::temporary(
                            451,
                            (4, 4, 3),
                            &format!("cannot resolve {host}: {e}"),
                        )
                    })?
                    .collect();
                let mut last = None;
                let mut found = None;
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, settings.connect_timeout) {
                        Ok(s) => {
                            found = Some((s, addr));
                            break;
                        }
                        Err(e) => last = Some((addr, e)),
                    }
                }
                let (stream, addr) = match (found, last) {
                    (Some(f), _) => f,
                    (None, Some((addr, e))) => {
                        return Err(DeliveryError::network(
                            &format!("connect to {host}[{}]:{port}", addr.ip()),
                            &e,
                        )
                        .at(host))
                    }
                    (None, None) => {
                        return Err(DeliveryError::temporary(
                            451,
                            (4, 4, 3),
                            &format!("{host} has no address"),
                        ))
                    }
                };
                let _ = stream.set_nodelay(true);
                (
                    Transport::Tcp(stream),
                    host.clone(),
                    format!("{host}[{}]:{port}", addr.ip()),
                )
            }
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path).map_err(|e| {
                    DeliveryError::network(&format!("connect to {}", path.display()), &e)
                })?;
                (
                    Transport::Unix(stream),
                    "localhost".to_string(),
                    path.display().to_string(),
                )
            }
        };
        Self::open_on(settings, transport, host, relay, implicit_tls)
    }

    /// Runs the session set-up on an already connected TCP stream (the
    /// MX client connects itself, address by address).
    pub fn open_stream(
        settings: &Arc<ClientSettings>,
        stream: TcpStream,
        host: &str,
        relay: String,
    ) -> Result<Session, DeliveryError> {
        let _ = stream.set_nodelay(true);
        Self::open_on(
            settings,
            Transport::Tcp(stream),
            host.to_string(),
            relay,
            false,
        )
    }

    fn open_on(
        settings: &Arc<ClientSettings>,
        transport: Transport,
        host: String,
        relay: String,
        implicit_tls: bool,
    ) -> Result<Session, DeliveryError> {
        transport
            .set_timeout(settings.command_timeout)
            .map_err(|e| DeliveryError::network("socket", &e))?;
        let transport = if implicit_tls {
            tls_handshake(settings, transport, &host)?
        } else {
            transport
        };
        let mut session = Session {
            io: BufReader::new(transport),
            settings: Arc::clone(settings),
            host,
            relay,
            ext: Extensions::default(),
            broken: false,
            idle: true,
            data_reply: None,
            heard: false,
        };
        let greeting = session.read_reply(settings.command_timeout)?;
        if greeting.reply.code != 220 {
            // A server that will not talk to us (5xx greeting) says nothing
            // about the recipients: try another server or later, as
            // Postfix does (smtp_skip_5xx_greeting), rather than bounce.
            let mut e = session.rejected(greeting.reply);
            e.severity = crate::delivery::Severity::Temporary;
            return Err(e);
        }
        session.hello()?;
        let must_encrypt = matches!(settings.tls, TlsPolicy::Encrypt | TlsPolicy::Verify);
        // A Unix socket never leaves the machine: nothing to encrypt.
        let local = matches!(session.io.get_ref(), Transport::Unix(_));
        if !session.is_tls() && !local {
            if session.ext.starttls && settings.tls != TlsPolicy::None {
                session = session.starttls()?;
            } else if must_encrypt {
                let _ = session.command("QUIT");
                return Err(DeliveryError::temporary(
                    451,
                    (4, 7, 10),
                    &format!(
                        "TLS is required but {} does not offer STARTTLS",
                        session.host
                    ),
                )
                .at(session.host.clone()));
            }
        }
        if let Some(creds) = settings.auth.clone() {
            session.authenticate(&creds)?;
        }
        Ok(session)
    }

    /// `host[ip]:port` of the server.
    pub fn relay(&self) -> &str {
        &self.relay
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn is_tls(&self) -> bool {
        self.io.get_ref().is_tls()
    }

    /// An error from a reply of this server.
    fn rejected(&self, reply: SmtpReply) -> DeliveryError {
        DeliveryError::from_reply(reply).at(self.host.clone())
    }

    fn io_failed(&self, what: &str, e: &io::Error) -> DeliveryError {
        DeliveryError::network(&format!("{what} {}", self.relay), e).at(self.host.clone())
    }

    /// The error for a command on a session that is out of step.
    fn out_of_step(&self) -> DeliveryError {
        protocol_error(&format!("session with {} out of step", self.relay)).at(self.host.clone())
    }

    fn send(&mut self, text: &str) -> Result<(), DeliveryError> {
        self.send_within(text, self.settings.command_timeout)
    }

    /// Writes a command (or a pipelined batch), all of it within `timeout`.
    fn send_within(&mut self, text: &str, timeout: Duration) -> Result<(), DeliveryError> {
        if self.broken {
            return Err(self.out_of_step());
        }
        let result = write_within(self.io.get_mut(), text.as_bytes(), timeout)
            .map_err(|e| DeliveryError::network(&format!("write to {}", self.relay), &e));
        self.broken = result.is_err();
        result
    }

    /// Reads one reply, all of it within `timeout`. Any failure leaves the
    /// session out of step.
    fn read_reply(&mut self, timeout: Duration) -> Result<FullReply, DeliveryError> {
        if self.broken {
            return Err(self.out_of_step());
        }
        let result = self.read_reply_within(Instant::now() + timeout);
        self.broken = result.is_err();
        // A 421 is about the channel, not the transaction: the way many
        // servers end an idle connection is a 421 to the next command.
        self.heard |= result.as_ref().is_ok_and(|r| r.reply.code != 421);
        result
    }

    fn read_reply_within(&mut self, end: Instant) -> Result<FullReply, DeliveryError> {
        let mut lines = Vec::new();
        let mut line = Vec::new();
        let mut code: Option<String> = None;
        let mut enhanced = None;
        // The reply's text, kept up to MAX_REPLY_TEXT; `cut` once more came.
        let mut text = String::new();
        let mut cut = false;
        // Lines read, and bytes of them kept.
        let mut count = 0usize;
        let mut kept = 0usize;
        loop {
            let mut reader = Deadline {
                io: &mut self.io,
                end,
            };
            let n = read_line_limited(&mut reader, &mut line, MAX_REPLY_LINE)
                .map_err(|e| self.io_failed("reading reply from", &e))?;
            if n == 0 {
                let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed");
                return Err(self.io_failed("reading reply from", &eof));
            }
            let raw = String::from_utf8_lossy(&line);
            let raw = raw.trim_end_matches(['\r', '\n']);
            let bytes = raw.as_bytes();
            let ok = bytes.len() >= 3
                && bytes[..3].iter().all(u8::is_ascii_digit)
                && (bytes.len() == 3 || bytes[3] == b' ' || bytes[3] == b'-');
            if !ok || code.as_deref().is_some_and(|c| c != &raw[..3]) {
                return Err(protocol_error(&format!(
                    "malformed reply from {}: {:?}",
                    self.relay,
                    cut_text(raw, 200)
                ))
                .at(self.host.clone()));
            }
            let first = code.is_none();
            let c = code.get_or_insert_with(|| raw[..3].to_string());
            let numeric: u16 = c.parse().unwrap_or(0);
            let line_text = raw.get(4..).unwrap_or("");
            // The enhanced code of the first line; every line's text after it.
            if first {
                enhanced = split_enhanced(numeric, line_text).0;
            }
            let shown = if enhanced.is_some() {
                split_enhanced(numeric, line_text).1
            } else {
                line_text
            };
            if !cut {
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(shown);
                if text.len() > MAX_REPLY_TEXT {
                    text = cut_text(&text, MAX_REPLY_TEXT).to_string();
                    cut = true;
                }
            }
            if kept + line_text.len() <= MAX_KEPT_LINES {
                kept += line_text.len();
                lines.push(line_text.to_string());
            }
            if bytes.len() == 3 || bytes[3] == b' ' {
                break;
            }
            count += 1;
            if count > MAX_REPLY_LINES {
                return Err(
                    protocol_error(&format!("endless reply from {}", self.relay))
                        .at(self.host.clone()),
                );
            }
        }
        let code: u16 = code.and_then(|c| c.parse().ok()).unwrap_or(0);
        if !(200..=599).contains(&code) {
            return Err(
                protocol_error(&format!("reply code {code} from {}", self.relay))
                    .at(self.host.clone()),
            );
        }
        if cut {
            text.push_str(CUT_MARK);
        }
        Ok(FullReply {
            reply: SmtpReply::new(code, enhanced, &text),
            lines,
        })
    }

    fn command(&mut self, line: &str) -> Result<FullReply, DeliveryError> {
        self.send(&format!("{line}\r\n"))?;
        self.read_reply(self.settings.command_timeout)
    }

    fn hello(&mut self) -> Result<(), DeliveryError> {
        let verb = if self.settings.lmtp { "LHLO" } else { "EHLO" };
        let r = self.command(&format!("{verb} {}", self.settings.helo_name))?;
        if r.reply.code == 250 {
            self.ext = Extensions::parse(&r.lines);
            return Ok(());
        }
        if self.settings.lmtp || r.reply.code == 421 {
            return Err(self.rejected(r.reply));
        }
        let r = self.command(&format!("HELO {}", self.settings.helo_name))?;
        if r.reply.code != 250 {
            return Err(self.rejected(r.reply));
        }
        self.ext = Extensions::default();
        Ok(())
    }

    fn starttls(mut self) -> Result<Session, DeliveryError> {
        let r = self.command("STARTTLS")?;
        if r.reply.code != 220 {
            if self.settings.tls == TlsPolicy::May {
                // Offered but refused: go on in clear, as the policy allows.
                return Ok(self);
            }
            // A TLS failure, not a verdict on the recipients: temporary
            // even when the server answers 5xx, so required TLS makes mail
            // wait instead of bouncing.
            let _ = self.command("QUIT");
            return Err(DeliveryError::temporary(
                451,
                (4, 7, 10),
                &format!(
                    "TLS is required but {} refused STARTTLS: {}",
                    self.host, r.reply
                ),
            )
            .at(self.host.clone()));
        }
        if !self.io.buffer().is_empty() {
            // Bytes sent before the handshake would be trusted as if they
            // came over TLS (CVE-2011-0411 style injection). It is a failed
            // TLS negotiation like a botched handshake (4.7.5, which `may`
            // answers by trying again in clear): whether the server's bytes
            // arrive with its 220 or just after is a matter of timing, and
            // the two must not be told apart.
            return Err(DeliveryError::temporary(
                451,
                (4, 7, 5),
                &format!("{} sent data after its STARTTLS reply", self.host),
            )
            .at(self.host.clone()));
        }
        let Session {
            io,
            settings,
            host,
            relay,
            ..
        } = self;
        let transport = tls_handshake(&settings, io.into_inner(), &host)?;
        let mut session = Session {
            io: BufReader::new(transport),
            settings,
            host,
            relay,
            ext: Extensions::default(),
            broken: false,
            idle: true,
            data_reply: None,
            heard: false,
        };
        session.hello()?;
        Ok(session)
    }

    fn authenticate(&mut self, creds: &Credentials) -> Result<(), DeliveryError> {
        if self.ext.auth.is_empty() {
            log::warn!(
                "{}: AUTH is configured but not offered; sending without it",
                self.relay
            );
            return Ok(());
        }
        if !self.is_tls() && !self.is_loopback() {
            return Err(DeliveryError::temporary(
                451,
                (4, 7, 10),
                &format!("refusing to send the password to {} without TLS", self.host),
            ));
        }
        // Authentication failures are our configuration's fault, not the
        // recipient's: keep them temporary so mail waits for a fix.
        let soft = |r: SmtpReply| {
            DeliveryError::temporary(451, (4, 7, 8), &format!("authentication failed: {r}"))
        };
        let r = if self.ext.auth.iter().any(|m| m == "PLAIN") {
            let token = base64(format!("\0{}\0{}", creds.username, creds.password).as_bytes());
            self.command(&format!("AUTH PLAIN {token}"))?
        } else if self.ext.auth.iter().any(|m| m == "LOGIN") {
            let r = self.command("AUTH LOGIN")?;
            if r.reply.code != 334 {
                return Err(soft(r.reply));
            }
            let r = self.command(&base64(creds.username.as_bytes()))?;
            if r.reply.code != 334 {
                return Err(soft(r.reply));
            }
            self.command(&base64(creds.password.as_bytes()))?
        } else {
            return Err(DeliveryError::temporary(
                451,
                (4, 7, 8),
                &format!(
                    "{} offers no AUTH mechanism we speak (PLAIN, LOGIN)",
                    self.host
                ),
            ));
        };
        if r.reply.code != 235 {
            return Err(soft(r.reply));
        }
        Ok(())
    }

    fn is_loopback(&self) -> bool {
        match self.io.get_ref() {
            Transport::Tcp(s) => s.peer_addr().map(|a| a.ip().is_loopback()).unwrap_or(false),
            Transport::Unix(_) => true,
            Transport::Tls(_) => false,
        }
    }

    /// Checks what the message needs against what the server offers.
    pub fn check_message(
        &self,
        sender: &ReversePath,
        params: &MailParams,
        size: u64,
    ) -> Result<(), DeliveryError> {
        if let Some(limit) = self.ext.size.filter(|l| *l > 0) {
            if size > limit {
                return Err(DeliveryError::permanent(
                    552,
                    (5, 3, 4),
                    &format!(
                        "message size {size} exceeds the limit of {} ({limit})",
                        self.host
                    ),
                )
                .at(self.host.clone()));
            }
        }
        let needs_utf8 = params.smtputf8 || sender.as_ref().is_some_and(|s| s.needs_smtputf8());
        if needs_utf8 && !self.ext.smtputf8 {
            return Err(self.no_smtputf8());
        }
        Ok(())
    }

    fn no_smtputf8(&self) -> DeliveryError {
        DeliveryError::permanent(
            553,
            (5, 6, 7),
            &format!(
                "the message needs SMTPUTF8, which {} does not support",
                self.host
            ),
        )
        .at(self.host.clone())
    }

    /// Sends MAIL and the RCPTs; returns one result per recipient, or an
    /// error for all of them when MAIL fails.
    pub fn envelope(
        &mut self,
        sender: &ReversePath,
        params: &MailParams,
        size: u64,
        rcpts: &[&Recipient],
    ) -> Result<Vec<Result<(), DeliveryError>>, DeliveryError> {
        let mut mail = format!(
            "MAIL FROM:<{}>",
            sender.as_ref().map(|a| a.as_str()).unwrap_or("")
        );
        if self.ext.size.is_some() {
            mail.push_str(&format!(" SIZE={size}"));
        }
        if params.body == BodyType::EightBitMime && self.ext.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if params.smtputf8 && self.ext.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if self.ext.dsn {
            match params.ret {
                Some(Ret::Full) => mail.push_str(" RET=FULL"),
                Some(Ret::Hdrs) => mail.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(envid) = &params.envid {
                mail.push_str(&format!(" ENVID={}", xtext::encode(envid)));
            }
        }
        let rcpt_lines: Vec<String> = rcpts.iter().map(|r| self.rcpt_line(r)).collect();

        self.idle = false;
        self.heard = false;
        if self.ext.pipelining {
            // DATA goes in the same batch (RFC 2920): one round trip for
            // the whole envelope. The server refuses it if no recipient
            // was taken.
            let mut batch = format!("{mail}\r\n");
            for l in &rcpt_lines {
                batch.push_str(l);
                batch.push_str("\r\n");
            }
            batch.push_str("DATA\r\n");
            self.send(&batch)?;
            let mail_reply = self.read_reply(self.settings.command_timeout)?;
            let mut results = Vec::with_capacity(rcpts.len());
            for _ in rcpts {
                let r = self.read_reply(self.settings.command_timeout)?;
                results.push(if r.reply.code == 250 || r.reply.code == 251 {
                    Ok(())
                } else {
                    Err(self.rejected(r.reply))
                });
            }
            self.data_reply = Some(self.read_reply(self.settings.command_timeout)?.reply);
            if mail_reply.reply.code != 250 {
                self.end_pipelined_data()?;
                return Err(self.rejected(mail_reply.reply));
            }
            Ok(results)
        } else {
            let r = self.command(&mail)?;
            if r.reply.code != 250 {
                return Err(self.rejected(r.reply));
            }
            let mut results = Vec::with_capacity(rcpts.len());
            for l in &rcpt_lines {
                let r = self.command(l)?;
                results.push(if r.reply.code == 250 || r.reply.code == 251 {
                    Ok(())
                } else {
                    Err(self.rejected(r.reply))
                });
            }
            Ok(results)
        }
    }

    fn rcpt_line(&self, r: &Recipient) -> String {
        let mut line = format!("RCPT TO:<{}>", r.address);
        if self.ext.dsn {
            if let Some(n) = r.notify {
                line.push_str(&format!(" NOTIFY={n}"));
            }
            if let Some(orcpt) = &r.orcpt {
                let (kind, addr) = orcpt.split_once(';').unwrap_or(("rfc822", orcpt));
                line.push_str(&format!(" ORCPT={};{}", kind, xtext::encode(addr)));
            }
        }
        line
    }

    /// Whether this server can take mail for `r` (SMTPUTF8 addresses).
    pub fn check_recipient(&self, r: &Recipient) -> Result<(), DeliveryError> {
        if r.address.needs_smtputf8() && !self.ext.smtputf8 {
            return Err(self.no_smtputf8());
        }
        Ok(())
    }

    /// Sends DATA and the body; returns the final replies: one for SMTP,
    /// one per accepted recipient for LMTP. An error means no recipient
    /// got the message.
    pub fn data(&mut self, body: &Body, accepted: usize) -> Result<Vec<SmtpReply>, DeliveryError> {
        let r = match self.data_reply.take() {
            Some(r) => r,
            None => self.command("DATA")?.reply,
        };
        if r.code != 354 {
            return Err(self.rejected(r));
        }
        // From here until the final dot the server reads message text: a
        // failure leaves the session in the middle of DATA.
        self.broken = true;
        let mut reader = body.open().map_err(|e| {
            DeliveryError::temporary(
                451,
                (4, 3, 0),
                &format!("cannot read the queued message: {e}"),
            )
        })?;
        {
            // write_dot_stuffed writes in large pieces: no buffer here. The
            // whole body has `data_timeout`, not each piece of it.
            let timeout = self.settings.data_timeout;
            let mut out = WriteDeadline {
                io: self.io.get_mut(),
                end: Instant::now() + timeout,
            };
            write_dot_stuffed(&mut reader, &mut out).map_err(|e| {
                let e = name_timeout(e, timeout);
                match DamagedBody::from_io(&e) {
                    // Left in the middle of DATA, without the final dot: the
                    // server drops what it got when the session is closed.
                    Some(damage) => DeliveryError::permanent(554, (5, 3, 0), &damage.to_string()),
                    None => DeliveryError::network(&format!("sending data to {}", self.relay), &e)
                        .at(self.host.clone()),
                }
            })?;
        }
        self.broken = false;
        let replies = if self.settings.lmtp { accepted } else { 1 };
        let mut out = Vec::with_capacity(replies);
        for _ in 0..replies {
            out.push(self.read_reply(self.settings.data_timeout)?.reply);
        }
        // The transaction is over, whatever the replies said.
        self.idle = true;
        Ok(out)
    }

    /// Ends a pipelined DATA that the server took although the message is
    /// not sent (no recipient left, or MAIL refused): an empty message
    /// that the server refuses for want of recipients, or that goes
    /// nowhere. Keeps the session in step.
    fn end_pipelined_data(&mut self) -> Result<(), DeliveryError> {
        if let Some(r) = self.data_reply.take() {
            if r.code == 354 {
                self.send(".\r\n")?;
                self.read_reply(self.settings.data_timeout)?;
            }
        }
        Ok(())
    }

    /// True when no transaction is open, so the next can start at once.
    pub fn is_idle(&self) -> bool {
        self.idle && !self.broken
    }

    /// Clears the transaction so the session can carry another.
    pub fn reset(&mut self) -> Result<(), DeliveryError> {
        self.end_pipelined_data()?;
        let r = self.command("RSET")?;
        if r.reply.code != 250 {
            return Err(self.rejected(r.reply));
        }
        self.idle = true;
        Ok(())
    }

    /// Ends the session politely; errors are of no interest any more. A
    /// session out of step is just closed: a server that stalled would
    /// hold the worker once more for the reply to QUIT.
    pub fn quit(mut self) {
        // In DATA mode a QUIT would be message text: just close.
        if self.broken || self.data_reply.as_ref().is_some_and(|r| r.code == 354) {
            return;
        }
        let wait = self.settings.command_timeout.min(QUIT_TIMEOUT);
        if self.send_within("QUIT\r\n", wait).is_ok() {
            let _ = self.read_reply(wait);
        }
    }

    /// Whether an idle session can carry another transaction: in step,
    /// nothing unread, and the server has not closed it meanwhile (its
    /// idle timeout, a restart). A session found dead is marked broken, so
    /// `quit` just closes it.
    pub fn still_open(&mut self) -> bool {
        let open = self.is_idle()
            && self.data_reply.is_none()
            && self.io.buffer().is_empty()
            && self.io.get_ref().idle_and_open();
        self.broken |= !open;
        open
    }

    /// True when the server answered nothing (or only 421) since the
    /// transaction began: a failure then says nothing about the message (a
    /// connection closed while idle), and the transaction can be tried
    /// again on a new connection at once.
    pub fn nothing_heard(&self) -> bool {
        !self.heard
    }

    /// True when an error left the session unusable (see `broken`).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The error of a final reply, or `None` when it is a success.
    pub fn final_error(&self, reply: &SmtpReply) -> Option<DeliveryError> {
        if reply.code == 250 {
            None
        } else {
            Some(self.rejected(reply.clone()))
        }
    }
}

fn tls_handshake(
    settings: &ClientSettings,
    transport: Transport,
    host: &str,
) -> Result<Transport, DeliveryError> {
    let Transport::Tcp(tcp) = transport else {
        return Ok(transport);
    };
    let connector = settings
        .tls_connector
        .as_ref()
        .ok_or_else(|| DeliveryError::temporary(451, (4, 7, 0), "TLS is not configured"))?;
    let name = host.trim_end_matches('.');
    // The whole handshake within command_timeout, as Postfix's
    // smtp_starttls_timeout: each read and write alone is not enough.
    let _deadline = Watchdog::arm(&tcp, settings.command_timeout);
    match connector.connect(name, tcp) {
        Ok(s) => Ok(Transport::Tls(Box::new(s))),
        // 4.7.5, "cryptographic failure": lets the MX client tell a failed
        // handshake from other errors and, under `may`, retry in clear.
        Err(e) => Err(DeliveryError::temporary(
            451,
            (4, 7, 5),
            &format!("TLS handshake with {name} failed: {e}"),
        )
        .at(host)),
    }
}

/// Builds the TLS client for a policy: `verify` checks the chain (system
/// roots plus `ca_file`) and the host name; `may` and `encrypt` only encrypt.
pub fn tls_connector(
    policy: TlsPolicy,
    ca_file: Option<&std::path::Path>,
) -> Result<Option<native_tls::TlsConnector>, String> {
    if policy == TlsPolicy::None {
        return Ok(None);
    }
    let mut b = native_tls::TlsConnector::builder();
    if policy == TlsPolicy::Verify {
        if let Some(path) = ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
            let cert = native_tls::Certificate::from_pem(&pem)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            b.add_root_certificate(cert);
        }
    } else {
        b.danger_accept_invalid_certs(true);
        b.danger_accept_invalid_hostnames(true);
    }
    b.build()
        .map(Some)
        .map_err(|e| format!("cannot set up TLS: {e}"))
}

/// Standard base64 with padding, for AUTH.
pub(crate) fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn settings(timeout: Duration) -> Arc<ClientSettings> {
        Arc::new(ClientSettings {
            helo_name: "client.test".into(),
            lmtp: false,
            tls: TlsPolicy::None,
            tls_connector: None,
            auth: None,
            connect_timeout: timeout,
            command_timeout: timeout,
            data_timeout: timeout,
        })
    }

    /// A loopback server running `script` on its first connection.
    fn server(script: impl FnOnce(TcpStream) + Send + 'static) -> Endpoint {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((s, _)) = l.accept() {
                script(s);
            }
        });
        Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port,
        }
    }

    #[test]
    fn a_tls_handshake_trickled_byte_by_byte_ends_at_the_command_timeout() {
        // After the client's hello, a server record announced 16 KiB long
        // arrives a byte every 100 ms: each read is within the timeout, the
        // handshake never is. Bounded: the server gives up after 15 s.
        let endpoint = server(|mut s| {
            let mut hello = [0u8; 512];
            let _ = s.read(&mut hello);
            if s.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]).is_err() {
                return;
            }
            let until = Instant::now() + Duration::from_secs(15);
            while Instant::now() < until && s.write_all(&[0]).is_ok() {
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let settings = Arc::new(ClientSettings {
            tls: TlsPolicy::Encrypt,
            tls_connector: tls_connector(TlsPolicy::Encrypt, None)
                .unwrap()
                .map(Arc::new),
            ..(*settings(Duration::from_millis(500))).clone()
        });
        let started = Instant::now();
        let e = Session::open(&settings, &endpoint, true)
            .err()
            .expect("a handshake that never ends cannot open a session");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(e.reply.code, 451, "{e}");
    }

    #[test]
    fn a_reply_trickled_byte_by_byte_ends_at_the_timeout() {
        // Each byte comes well within the timeout; the whole reply never
        // does. Only a deadline for the whole reply ends this.
        let endpoint = server(|mut s| {
            for b in b"220 slow greeting ".iter().chain([b'.'; 200].iter()) {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let e = Session::open(&settings(Duration::from_millis(300)), &endpoint, false)
            .err()
            .expect("a greeting that never ends cannot open a session");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(e.reply.code, 451, "{e}");
    }

    #[test]
    fn a_session_out_of_step_sends_nothing_more() {
        // The server stalls at MAIL; after the timeout the client must not
        // send RSET or QUIT, whose replies could be taken for MAIL's.
        let (tx, rx) = crossbeam_channel::bounded(1);
        let endpoint = server(move |mut s| {
            s.write_all(b"220 ok\r\n").unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if got.ends_with(b"client.test\r\n") {
                    s.write_all(b"250 ok\r\n").unwrap();
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&got).into_owned());
        });
        let mut session =
            Session::open(&settings(Duration::from_millis(300)), &endpoint, false).unwrap();
        let r = Recipient::new("a@example.net".parse().unwrap());
        let sender: ReversePath = Some("s@example.org".parse().unwrap());
        let e = session
            .envelope(&sender, &MailParams::default(), 10, &[&r])
            .expect_err("no reply to MAIL");
        assert_eq!(e.reply.status().to_string(), "4.4.2", "{e}");
        assert!(session.is_broken());
        assert!(session.reset().is_err());
        let started = Instant::now();
        session.quit();
        assert!(started.elapsed() < Duration::from_millis(100));
        let seen = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(!seen.contains("RSET") && !seen.contains("QUIT"), "{seen:?}");
    }

    /// How a test server reads once it has stopped answering.
    #[derive(Clone, Copy, PartialEq)]
    enum Reading {
        /// Never reads again.
        Stopped,
        /// Reads 16 KiB every 100 ms: each write call makes progress well
        /// within the timeout, the whole never gets there.
        Trickling,
    }

    /// A server that takes MAIL and RCPT (PIPELINING when `pipelining`)
    /// and, at DATA (`at_data`) or right after EHLO, reads as `reading`.
    fn slow_reader(at_data: bool, reading: Reading) -> Endpoint {
        server(move |s| {
            small_buffer(&s, libc::SO_RCVBUF);
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"220 ok\r\n").unwrap();
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                let reply: &[u8] = match verb.as_str() {
                    "EHLO" if at_data => b"250 ok\r\n",
                    "EHLO" => b"250-ok\r\n250 PIPELINING\r\n",
                    "DATA" => b"354 go\r\n",
                    _ => b"250 ok\r\n",
                };
                w.write_all(reply).unwrap();
                if verb == "DATA" || (verb == "EHLO" && !at_data) {
                    break;
                }
            }
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                if reading == Reading::Stopped {
                    std::thread::sleep(Duration::from_secs(60));
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
    }

    /// Shrinks a socket buffer to 16 KiB, so that a writer blocks early
    /// and wakes at each small read of the peer, whatever the kernel's
    /// buffer auto-tuning would do.
    fn small_buffer(s: &impl std::os::fd::AsRawFd, which: libc::c_int) {
        let size: libc::c_int = 16 * 1024;
        // SAFETY: a valid socket and a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                which,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt: {}", io::Error::last_os_error());
    }

    fn open_with_small_send_buffer(endpoint: &Endpoint) -> Session {
        let session = Session::open(&settings(Duration::from_secs(1)), endpoint, false).unwrap();
        let Transport::Tcp(s) = session.io.get_ref() else {
            unreachable!("a TCP endpoint")
        };
        small_buffer(s, libc::SO_SNDBUF);
        session
    }

    #[test]
    fn a_body_the_server_reads_slowly_or_not_at_all_ends_at_the_data_timeout() {
        // 4 MB: some 25 s at the trickle's pace.
        let body = Body::from_bytes(vec![b'x'; 4 << 20]);
        let r = Recipient::new("a@example.net".parse().unwrap());
        let sender: ReversePath = Some("s@example.org".parse().unwrap());
        for reading in [Reading::Trickling, Reading::Stopped] {
            let endpoint = slow_reader(true, reading);
            let mut session = open_with_small_send_buffer(&endpoint);
            session
                .envelope(&sender, &MailParams::default(), body.len(), &[&r])
                .unwrap();
            let started = Instant::now();
            let e = session.data(&body, 1).expect_err("the body cannot all go");
            let took = started.elapsed();
            assert!(took < Duration::from_secs(3), "{took:?}");
            assert!(!e.is_permanent());
            assert_eq!(e.reply.status().to_string(), "4.4.2", "{e}");
            assert!(e.to_string().contains("did not take it within 1s"), "{e}");
            assert!(session.is_broken());
        }
    }

    #[test]
    fn a_command_the_server_reads_slowly_or_not_at_all_ends_at_the_command_timeout() {
        // A pipelined envelope of some 1.5 MB: 50 000 recipients.
        let rcpts: Vec<Recipient> = (0..50_000)
            .map(|i| Recipient::new(format!("user{i}@example.net").parse().unwrap()))
            .collect();
        let refs: Vec<&Recipient> = rcpts.iter().collect();
        let sender: ReversePath = Some("s@example.org".parse().unwrap());
        for reading in [Reading::Trickling, Reading::Stopped] {
            let endpoint = slow_reader(false, reading);
            let mut session = open_with_small_send_buffer(&endpoint);
            let started = Instant::now();
            let e = session
                .envelope(&sender, &MailParams::default(), 10, &refs)
                .expect_err("the envelope cannot all go");
            let took = started.elapsed();
            assert!(took < Duration::from_secs(3), "{took:?}");
            assert_eq!(e.reply.status().to_string(), "4.4.2", "{e}");
            assert!(e.to_string().contains("did not take it within 1s"), "{e}");
        }
    }

    /// A server that answers RCPT with a 550 of `lines` lines of 500 bytes.
    fn huge_rcpt_reply(lines: usize) -> Endpoint {
        server(move |s| {
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"220 ok\r\n").unwrap();
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                let reply = if verb == "RCPT" {
                    let filler = "y".repeat(490);
                    let mut reply = String::new();
                    for i in 0..lines - 1 {
                        reply.push_str(&format!("550-5.1.1 {i:04}{filler}\r\n"));
                    }
                    reply.push_str("550 5.1.1 the end\r\n");
                    reply
                } else {
                    "250 ok\r\n".to_string()
                };
                if w.write_all(reply.as_bytes()).is_err() {
                    return;
                }
            }
        })
    }

    #[test]
    fn a_huge_reply_keeps_its_code_and_only_the_start_of_its_text() {
        let r = Recipient::new("a@example.net".parse().unwrap());
        let sender: ReversePath = Some("s@example.org".parse().unwrap());
        // 200 lines, 100 KB: read through, kept short.
        let endpoint = huge_rcpt_reply(200);
        let mut session =
            Session::open(&settings(Duration::from_secs(5)), &endpoint, false).unwrap();
        let results = session
            .envelope(&sender, &MailParams::default(), 10, &[&r])
            .unwrap();
        let e = results[0].clone().expect_err("550 at RCPT");
        assert!(e.is_permanent());
        assert_eq!(e.reply.code, 550);
        assert_eq!(e.reply.status().to_string(), "5.1.1");
        assert!(
            e.reply.text.len() <= MAX_REPLY_TEXT + CUT_MARK.len(),
            "{}",
            e.reply.text.len()
        );
        assert!(e.reply.text.starts_with("0000yyy"), "{}", e.reply.text);
        assert!(e.reply.text.ends_with(CUT_MARK), "{}", e.reply.text);
        // In step: the session goes on.
        assert!(session.reset().is_ok());

        // 3 000 lines: not a reply but a stream; given up on.
        let endpoint = huge_rcpt_reply(3000);
        let mut session =
            Session::open(&settings(Duration::from_secs(5)), &endpoint, false).unwrap();
        let e = session
            .envelope(&sender, &MailParams::default(), 10, &[&r])
            .expect_err("no end to the reply");
        assert!(!e.is_permanent());
        assert!(e.to_string().contains("endless reply"), "{e}");
        assert!(e.to_string().len() < 200);
        assert!(session.is_broken());
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn extensions_are_read_from_the_ehlo_reply() {
        let lines: Vec<String> = [
            "mx.example greets you",
            "PIPELINING",
            "SIZE 1000",
            "8BITMIME",
            "auth plain login",
            "DSN",
            "STARTTLS",
            "SMTPUTF8",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let e = Extensions::parse(&lines);
        assert!(e.pipelining && e.eight_bit_mime && e.dsn && e.starttls && e.smtputf8);
        assert_eq!(e.size, Some(1000));
        assert_eq!(e.auth, vec!["PLAIN", "LOGIN"]);
        assert_eq!(Extensions::parse(&lines[..1]), Extensions::default());
    }
}
