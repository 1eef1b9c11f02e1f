//! Setting a session up and ending it: the greeting, EHLO/LHLO (with HELO
//! as the fallback), STARTTLS, AUTH, QUIT, and whether an idle session is
//! still worth a transaction.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use super::connect::tls_handshake;
use super::tls::PeerCheck;
use super::{ClientSettings, Credentials, Session, State};
use crate::delivery::tls_report::TlsReport;
use crate::delivery::{DeliveryError, ErrorKind};
use crate::smtp::reply::SmtpReply;
use crate::smtp::tls_policy::TlsPolicy;
use crate::smtp::transport::{Stream, Transport};

/// Most time the reply to QUIT is waited for.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Standard base64 with padding, for AUTH.
fn base64(input: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(input)
}

impl Session {
    pub(super) fn open_on(
        settings: &Arc<ClientSettings>,
        transport: Transport,
        host: String,
        relay: String,
        implicit_tls: bool,
        check: Option<Arc<dyn PeerCheck>>,
    ) -> Result<Session, DeliveryError> {
        // Connected: whatever fails from here on, this server was there.
        let named = relay.clone();
        let session = Self::set_up(settings, transport, host, relay, implicit_tls, check)
            .map_err(|e| e.with_relay(named))?;
        crate::queue::stats::count_outbound_session(session.tls);
        Ok(session)
    }

    fn set_up(
        settings: &Arc<ClientSettings>,
        transport: Transport,
        host: String,
        relay: String,
        implicit_tls: bool,
        check: Option<Arc<dyn PeerCheck>>,
    ) -> Result<Session, DeliveryError> {
        transport
            .set_timeout(settings.command_timeout)
            .map_err(|e| DeliveryError::network("socket", &e))?;
        let transport = if implicit_tls {
            tls_handshake(settings, transport, &host, check.as_deref())?
        } else {
            (transport, TlsReport::None)
        };
        let mut session = Session::on(transport, Arc::clone(settings), host, relay, check);
        let greeting = session.read_reply(settings.command_timeout)?;
        if greeting.reply.code != 220 {
            // A server that will not talk to us (5xx greeting) says nothing
            // about the recipients: try another server or later, as
            // Postfix does (smtp_skip_5xx_greeting), rather than bounce.
            return Err(session.rejected(greeting.reply).into_temporary());
        }
        session.hello()?;
        session = session.encrypt()?;
        if let Some(creds) = settings.auth.clone() {
            session.authenticate(&creds)?;
        }
        Ok(session)
    }

    /// Upgrades to TLS with STARTTLS as the policy says.
    fn encrypt(mut self) -> Result<Session, DeliveryError> {
        let must_encrypt = matches!(self.settings.tls, TlsPolicy::Encrypt | TlsPolicy::Verify)
            || self.check.is_some();
        // A Unix socket never leaves the machine: nothing to encrypt.
        let local = matches!(self.io.get_ref().stream(), Stream::Unix(_));
        if self.is_tls() || local {
            return Ok(self);
        }
        if self.ext.starttls && (self.settings.tls != TlsPolicy::None || self.check.is_some()) {
            return self.starttls();
        }
        if must_encrypt {
            let _ = self.command("QUIT");
            return Err(DeliveryError::new(
                ErrorKind::EncryptionNeeded,
                &format!(
                    "TLS is required{} but {} does not offer STARTTLS",
                    self.required_by(),
                    self.host
                ),
            )
            .at(self.host.clone()));
        }
        Ok(self)
    }

    /// ` by DANE (...)` when a certificate check requires TLS; empty
    /// when only the policy does.
    fn required_by(&self) -> String {
        self.check
            .as_ref()
            .map(|c| format!(" by {}", c.requirement()))
            .unwrap_or_default()
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
            if self.settings.tls == TlsPolicy::May && self.check.is_none() {
                // Offered but refused: go on in clear, as the policy allows.
                return Ok(self);
            }
            // A TLS failure, not a verdict on the recipients: temporary
            // even when the server answers 5xx, so required TLS makes mail
            // wait instead of bouncing.
            let _ = self.command("QUIT");
            return Err(DeliveryError::new(
                ErrorKind::EncryptionNeeded,
                &format!(
                    "TLS is required{} but {} refused STARTTLS: {}",
                    self.required_by(),
                    self.host,
                    r.reply
                ),
            )
            .at(self.host.clone()));
        }
        if !self.io.buffer().is_empty() {
            // Bytes sent before the handshake would be trusted as if they
            // came over TLS (CVE-2011-0411 style injection). It is a failed
            // TLS negotiation like a botched handshake (which `may`
            // answers by trying again in clear): whether the server's bytes
            // arrive with its 220 or just after is a matter of timing, and
            // the two must not be told apart.
            return Err(DeliveryError::tls(&format!(
                "{} sent data after its STARTTLS reply",
                self.host
            ))
            .at(self.host.clone()));
        }
        let Session {
            io,
            settings,
            host,
            relay,
            check,
            ..
        } = self;
        let transport = tls_handshake(&settings, io.into_inner(), &host, check.as_deref())?;
        let mut session = Session::on(transport, settings, host, relay, check);
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
            return Err(DeliveryError::new(
                ErrorKind::EncryptionNeeded,
                &format!("refusing to send the password to {} without TLS", self.host),
            ));
        }
        // Authentication failures are our configuration's fault, not the
        // recipient's: keep them temporary so mail waits for a fix.
        let soft = |r: SmtpReply| {
            DeliveryError::new(ErrorKind::Auth, &format!("authentication failed: {r}"))
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
            return Err(DeliveryError::new(
                ErrorKind::Auth,
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
        match self.io.get_ref().stream() {
            Stream::Tcp(s) => s.peer_addr().map(|a| a.ip().is_loopback()).unwrap_or(false),
            Stream::Unix(_) => true,
            Stream::Tls(_) | Stream::ClientTls(_) => false,
        }
    }

    /// Ends the session politely; errors are of no interest any more. A
    /// session out of step is just closed: a server that stalled would
    /// hold the worker once more for the reply to QUIT.
    pub fn quit(mut self) {
        // In DATA mode a QUIT would be message text: just close.
        match &self.state {
            State::Broken => return,
            State::DataPending(r) if r.code == 354 => return,
            _ => {}
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
        let open =
            self.is_idle() && self.io.buffer().is_empty() && self.io.get_ref().idle_and_open();
        if !open {
            self.state = State::Broken;
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
