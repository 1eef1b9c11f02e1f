//! One transaction: MAIL and RCPT (pipelined with DATA when the server
//! offers PIPELINING), DATA and the body, RSET; what the message needs
//! checked against what the server offers.

use super::{Session, State};
use crate::address::ReversePath;
use crate::delivery::{Body, DamagedBody, DeliveryError, ErrorKind};
use crate::envelope::{BodyType, MailParams, Recipient};
use crate::smtp::deadline::{name_timeout, Deadline, WriteDeadline};
use crate::smtp::params::{MailFrom, MailParam, RcptParam, RcptTo};
use crate::smtp::reply::SmtpReply;
use crate::smtp::transport::write_dot_stuffed;

impl Session {
    /// Checks what the message needs against what the server offers.
    pub fn check_message(
        &self,
        sender: &ReversePath,
        params: &MailParams,
        size: u64,
    ) -> Result<(), DeliveryError> {
        if let Some(limit) = self.ext.size.filter(|l| *l > 0) {
            if size > limit {
                return Err(DeliveryError::new(
                    ErrorKind::TooBig,
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
        DeliveryError::new(
            ErrorKind::NeedsSmtputf8,
            &format!(
                "the message needs SMTPUTF8, which {} does not support",
                self.host
            ),
        )
        .at(self.host.clone())
    }

    /// Whether this server can take mail for `r` (SMTPUTF8 addresses).
    pub fn check_recipient(&self, r: &Recipient) -> Result<(), DeliveryError> {
        if r.address.needs_smtputf8() && !self.ext.smtputf8 {
            return Err(self.no_smtputf8());
        }
        Ok(())
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
        let mail = self.mail_line(sender, params, size);
        let rcpt_lines: Vec<String> = rcpts.iter().map(|r| self.rcpt_line(r)).collect();
        if !self.is_broken() {
            self.state = State::Transaction;
        }
        self.heard = false;
        // Counted once attempted, whatever comes of it: each MAIL is work
        // for the server, which may close sessions after so many.
        self.transactions = self.transactions.saturating_add(1);
        if self.ext.pipelining {
            self.envelope_pipelined(&mail, &rcpt_lines)
        } else {
            let r = self.command(&mail)?;
            if r.reply.code != 250 {
                return Err(self.rejected(r.reply));
            }
            let mut results = Vec::with_capacity(rcpt_lines.len());
            for l in &rcpt_lines {
                let r = self.command(l)?;
                results.push(self.rcpt_result(r.reply));
            }
            Ok(results)
        }
    }

    /// DATA goes in the same batch as the envelope (RFC 2920): one round
    /// trip for the whole of it. The server refuses it if no recipient
    /// was taken.
    fn envelope_pipelined(
        &mut self,
        mail: &str,
        rcpt_lines: &[String],
    ) -> Result<Vec<Result<(), DeliveryError>>, DeliveryError> {
        let mut batch = format!("{mail}\r\n");
        for l in rcpt_lines {
            batch.push_str(l);
            batch.push_str("\r\n");
        }
        batch.push_str("DATA\r\n");
        self.send(&batch)?;
        let mail_reply = self.read_reply(self.settings.command_timeout)?;
        let mut results = Vec::with_capacity(rcpt_lines.len());
        for _ in rcpt_lines {
            let r = self.read_reply(self.settings.command_timeout)?;
            results.push(self.rcpt_result(r.reply));
        }
        let data_reply = self.read_reply(self.settings.command_timeout)?.reply;
        self.state = State::DataPending(data_reply);
        if mail_reply.reply.code != 250 {
            self.end_pipelined_data()?;
            return Err(self.rejected(mail_reply.reply));
        }
        Ok(results)
    }

    fn rcpt_result(&self, reply: SmtpReply) -> Result<(), DeliveryError> {
        if reply.code == 250 || reply.code == 251 {
            Ok(())
        } else {
            Err(self.rejected(reply))
        }
    }

    /// MAIL FROM with the parameters this server understands.
    fn mail_line(&self, sender: &ReversePath, params: &MailParams, size: u64) -> String {
        let mut p = Vec::new();
        if self.ext.size.is_some() {
            p.push(MailParam::Size(size));
        }
        if params.body == BodyType::EightBitMime && self.ext.eight_bit_mime {
            p.push(MailParam::Body(BodyType::EightBitMime));
        }
        if params.smtputf8 && self.ext.smtputf8 {
            p.push(MailParam::SmtpUtf8);
        }
        if self.ext.dsn {
            p.extend(params.ret.map(MailParam::Ret));
            p.extend(params.envid.clone().map(MailParam::EnvId));
        }
        MailFrom {
            sender: sender.clone(),
            params: p,
        }
        .to_string()
    }

    /// RCPT TO, with the DSN parameters when the server understands them.
    fn rcpt_line(&self, r: &Recipient) -> String {
        let mut p = Vec::new();
        if self.ext.dsn {
            p.extend(r.notify.map(RcptParam::Notify));
            p.extend(r.orcpt.clone().map(RcptParam::Orcpt));
        }
        RcptTo {
            address: r.address.clone(),
            params: p,
        }
        .to_string()
    }

    /// Sends DATA and the body; returns the final replies: one for SMTP,
    /// one per accepted recipient for LMTP. An error means no recipient
    /// got the message.
    pub fn data(&mut self, body: &Body, accepted: usize) -> Result<Vec<SmtpReply>, DeliveryError> {
        let r = match std::mem::replace(&mut self.state, State::Transaction) {
            State::DataPending(r) => r,
            before => {
                self.state = before;
                self.command("DATA")?.reply
            }
        };
        if r.code != 354 {
            return Err(self.rejected(r));
        }
        // From here until the final dot the server reads message text: a
        // failure leaves the session in the middle of DATA.
        self.state = State::Broken;
        self.send_body(body)?;
        self.state = State::Transaction;
        let replies = if self.settings.lmtp { accepted } else { 1 };
        let mut out = Vec::with_capacity(replies);
        for _ in 0..replies {
            out.push(self.read_reply(self.settings.data_timeout)?.reply);
        }
        // The transaction is over, whatever the replies said.
        self.state = State::Idle;
        Ok(out)
    }

    /// Writes the body, dot-stuffed, and the final dot, all within
    /// `data_timeout`.
    fn send_body(&mut self, body: &Body) -> Result<(), DeliveryError> {
        let mut reader = body.open().map_err(|e| {
            DeliveryError::new(
                ErrorKind::Local,
                &format!("cannot read the queued message: {e}"),
            )
        })?;
        // write_dot_stuffed writes in large pieces: no buffer here. The
        // whole body has `data_timeout`, not each piece of it.
        let timeout = self.settings.data_timeout;
        let mut out = WriteDeadline::new(self.io.get_mut(), Deadline::after(timeout));
        write_dot_stuffed(&mut reader, &mut out).map_err(|e| {
            let e = name_timeout(e, timeout);
            match DamagedBody::from_io(&e) {
                // Left in the middle of DATA, without the final dot: the
                // server drops what it got when the session is closed.
                Some(damage) => DeliveryError::new(ErrorKind::LocalPermanent, &damage.to_string()),
                None => DeliveryError::network(&format!("sending data to {}", self.relay), &e)
                    .at(self.host.clone()),
            }
        })
    }

    /// Ends a pipelined DATA that the server took although the message is
    /// not sent (no recipient left, or MAIL refused): an empty message
    /// that the server refuses for want of recipients, or that goes
    /// nowhere. Keeps the session in step.
    fn end_pipelined_data(&mut self) -> Result<(), DeliveryError> {
        if let State::DataPending(r) = &self.state {
            let go_ahead = r.code == 354;
            self.state = State::Transaction;
            if go_ahead {
                self.send(".\r\n")?;
                self.read_reply(self.settings.data_timeout)?;
            }
        }
        Ok(())
    }

    /// Clears the transaction so the session can carry another.
    pub fn reset(&mut self) -> Result<(), DeliveryError> {
        self.end_pipelined_data()?;
        let r = self.command("RSET")?;
        if r.reply.code != 250 {
            return Err(self.rejected(r.reply));
        }
        self.state = State::Idle;
        Ok(())
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::testing::{
        open_with_small_send_buffer, sender, server, settings, slow_reader, Reading,
    };
    use super::*;
    use std::io::{Read, Write};

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
        let e = session
            .envelope(&sender(), &MailParams::default(), 10, &[&r])
            .expect_err("no reply to MAIL");
        assert_eq!(e.reply().status().to_string(), "4.4.2", "{e}");
        // Said as a timeout, not as the socket's "Resource temporarily
        // unavailable".
        assert!(e.to_string().contains("no reply within 300ms"), "{e}");
        assert!(session.is_broken());
        assert!(session.reset().is_err());
        // A new envelope on a broken session sends nothing either.
        assert!(session
            .envelope(&sender(), &MailParams::default(), 10, &[&r])
            .is_err());
        assert!(session.is_broken());
        let started = Instant::now();
        session.quit();
        assert!(started.elapsed() < Duration::from_millis(100));
        let seen = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(!seen.contains("RSET") && !seen.contains("QUIT"), "{seen:?}");
        assert_eq!(seen.matches("MAIL").count(), 1, "{seen:?}");
    }

    #[test]
    fn a_body_the_server_reads_slowly_or_not_at_all_ends_at_the_data_timeout() {
        // 4 MB: some 25 s at the trickle's pace.
        let body = Body::from_bytes(vec![b'x'; 4 << 20]);
        let r = Recipient::new("a@example.net".parse().unwrap());
        for reading in [Reading::Trickling, Reading::Stopped] {
            let endpoint = slow_reader(true, reading);
            let mut session = open_with_small_send_buffer(&endpoint);
            session
                .envelope(&sender(), &MailParams::default(), body.len(), &[&r])
                .unwrap();
            let started = Instant::now();
            let e = session.data(&body, 1).expect_err("the body cannot all go");
            let took = started.elapsed();
            assert!(took < Duration::from_secs(3), "{took:?}");
            assert!(!e.is_permanent());
            assert_eq!(e.reply().status().to_string(), "4.4.2", "{e}");
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
        for reading in [Reading::Trickling, Reading::Stopped] {
            let endpoint = slow_reader(false, reading);
            let mut session = open_with_small_send_buffer(&endpoint);
            let started = Instant::now();
            let e = session
                .envelope(&sender(), &MailParams::default(), 10, &refs)
                .expect_err("the envelope cannot all go");
            let took = started.elapsed();
            assert!(took < Duration::from_secs(3), "{took:?}");
            assert_eq!(e.reply().status().to_string(), "4.4.2", "{e}");
            assert!(e.to_string().contains("did not take it within 1s"), "{e}");
        }
    }
}
