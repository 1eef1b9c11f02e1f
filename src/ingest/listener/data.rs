//! DATA: reading the message to its final dot (undoing dot-stuffing,
//! guarding against SMTP smuggling), the Received header, and the commit
//! to the queue.

use std::io::{self, BufRead, BufReader, Write};
use std::time::Duration;

use super::refusal::Stage;
use super::session::{
    bare_newline_reply, quota_reply, reply, write_error_reply, Session, Transaction, EXPIRED,
};
use crate::envelope::Envelope;
use crate::ingest::cleanup;
use crate::queue::{is_no_space, IncomingMessage, QueueError};
use crate::smtp::bare_newline::BareNewline;
use crate::smtp::deadline::{is_timeout, Deadline, DeadlineReader};
use crate::smtp::reply::SmtpReply;
use crate::smtp::transport::Transport;

impl Session<'_> {
    /// DATA: reads the message to its final dot, then answers. False
    /// when the connection is gone.
    pub(super) fn data(&mut self) -> bool {
        let Some(mut txn) = self.data_transaction() else {
            return true;
        };
        txn.rcpts = cleanup::unique_by_address(std::mem::take(&mut txn.rcpts));
        // For the refusal lines: the sender and the first recipient.
        let from = txn
            .sender
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let to = txn.rcpts[0].address.to_string();
        let mut disk_full = false;
        let mut incoming = match self.queue.begin() {
            Ok(mut i) => {
                i.set_origin(format!("client=[{}]", self.client_ip()));
                Some(i)
            }
            Err(e) => {
                log::error!("cannot accept a message: {e}");
                let r = write_error_reply(e.is_no_space());
                self.log_refusal(Stage::Data, &r, Some(&from), Some(&to));
                self.send(&r);
                return true;
            }
        };
        self.send(&reply(354, (2, 0, 0), "End data with <CR><LF>.<CR><LF>"));
        if self.flush(true).is_err() {
            return false;
        }
        let result = self.receive(&mut incoming, &mut disk_full, &txn);
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
                self.refuse_bare_newline(&from, &to);
                return false;
            }
            Ok(DataEnd::Complete) => match incoming {
                None => write_error_reply(disk_full),
                Some(inc) => self.commit(inc, txn),
            },
        };
        self.log_refusal(Stage::EndOfMessage, &r, Some(&from), Some(&to));
        self.send(&r);
        true
    }

    /// The transaction DATA ends; `None` once a DATA out of order (no
    /// MAIL, or no recipient accepted) is refused.
    fn data_transaction(&mut self) -> Option<Transaction> {
        let Some(txn) = self.txn.take() else {
            let r = reply(503, (5, 5, 1), "Error: need RCPT command");
            self.log_refusal(Stage::Data, &r, None, None);
            self.send(&r);
            return None;
        };
        if txn.rcpts.is_empty() {
            self.txn = Some(txn);
            let r = reply(554, (5, 5, 1), "Error: no valid recipients");
            self.log_refusal(Stage::Data, &r, None, None);
            self.send(&r);
            return None;
        }
        Some(txn)
    }

    /// Refuses a message with a bare LF (`bare_newline = "reject"`). The
    /// rest of the message is not read: ending the session is the only way
    /// to be sure none of it is taken as commands.
    fn refuse_bare_newline(&mut self, from: &str, to: &str) {
        log::info!(
            "{}: bare <LF> in DATA: message refused, session ended",
            self.peer
        );
        let r = bare_newline_reply();
        self.log_refusal(Stage::EndOfMessage, &r, Some(from), Some(to));
        self.send(&r);
        let _ = self.flush(true);
    }

    /// Writes the Received header and the message into `incoming`, read
    /// with the data timeout for each line.
    fn receive(
        &mut self,
        incoming: &mut Option<IncomingMessage<'_>>,
        disk_full: &mut bool,
        txn: &Transaction,
    ) -> io::Result<DataEnd> {
        let _ = self.io.get_ref().set_timeout(self.s.data_timeout);
        if let Some(inc) = incoming.as_mut() {
            let header = self.received_header(inc.id().as_str(), txn);
            if let Err(e) = inc.write_all(header.as_bytes()) {
                log::error!("cannot write a message: {e}");
                *disk_full = is_no_space(&e);
                *incoming = None;
            }
        }
        let result = read_data(
            &mut self.io,
            incoming,
            disk_full,
            self.s.max_message_size,
            self.s.data_timeout,
            self.s.bare_newline,
        );
        let _ = self.io.get_ref().set_timeout(self.s.command_timeout);
        result
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
            // The message itself is at fault: sending it again as it is
            // fails again (RFC 3463 5.6.0, other media error).
            Err(QueueError::BadMessage(why)) => reply(554, (5, 6, 0), &format!("Error: {why}")),
            Err(e) => {
                log::error!("cannot queue a message: {e}");
                write_error_reply(e.is_no_space())
            }
        }
    }

    fn received_header(&self, id: &str, txn: &Transaction) -> String {
        let tls = self.io.get_ref().is_tls();
        let protocol = match (txn.params.smtputf8, self.esmtp, tls) {
            (true, _, false) => "UTF8SMTP",
            (true, _, true) => "UTF8SMTPS",
            (false, true, false) => "ESMTP",
            (false, true, true) => "ESMTPS",
            (false, false, false) => "SMTP",
            (false, false, true) => "SMTPS",
        };
        let origin = cleanup::Origin::Smtp {
            helo: self.helo.as_deref(),
            ip: self.peer.ip(),
            protocol,
            id,
            only_recipient: match txn.rcpts.as_slice() {
                [only] => Some(&only.address),
                _ => None,
            },
        };
        cleanup::received(&self.s.hostname, &origin, std::time::SystemTime::now())
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum DataEnd {
    Complete,
    TooBig,
    /// A bare LF, with `bare_newline = "reject"`.
    BareNewline,
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
    let mut r = DeadlineReader::new(io, Deadline::after(line_timeout)).expired(EXPIRED);
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let line_ended = memchr::memchr(b'\n', buf).is_some();
        out.clear();
        let reject = bare_newline == BareNewline::Reject;
        let (used, end) = unstuff(buf, &mut st, &mut out, reject);
        r.consume(used);
        if line_ended {
            r.deadline = Deadline::after(line_timeout);
        }
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
            i += copy_text(&input[i..], out);
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

/// Copies `rest` up to its first CR or LF (or its end) to `out`; returns
/// the bytes copied.
#[inline]
fn copy_text(rest: &[u8], out: &mut Vec<u8>) -> usize {
    let n = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
    out.extend_from_slice(&rest[..n]);
    n
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
