//! Deadlines on a session's stream, shared by both directions: the client
//! reading replies and writing commands, the listener reading commands
//! and DATA.
//!
//! A socket timeout alone bounds each read or write call, so a peer
//! sending (or taking) one byte just within it could hold a thread for
//! hours. Here a whole line, reply or write has a deadline, computed in
//! one place ([`Deadline`]); each call on the socket gets only the time
//! left.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use crate::smtp::transport::Transport;

/// The moment a step must be over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(Instant);

impl Deadline {
    /// The deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Deadline {
        Deadline(Instant::now() + timeout)
    }

    /// The time left, or a `TimedOut` error saying `expired` once the
    /// deadline has passed.
    pub fn left(self, expired: &str) -> io::Result<Duration> {
        let left = self.0.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, expired.to_string()));
        }
        Ok(left)
    }
}

/// What a read past its deadline says, unless told otherwise.
pub const READ_EXPIRED: &str = "reply not complete within the timeout";
/// What a write past its deadline says (before [`name_timeout`]).
const WRITE_EXPIRED: &str = "deadline passed";

/// Reads a session's stream with a deadline: each time the buffer must be
/// refilled from the socket, the read timeout is set to the time left.
pub struct DeadlineReader<'a> {
    io: &'a mut BufReader<Transport>,
    /// May be moved on between reads (DATA gives each line its own).
    pub deadline: Deadline,
    expired: &'static str,
    /// Whether the socket's read timeout was changed.
    pub armed: bool,
}

impl<'a> DeadlineReader<'a> {
    pub fn new(io: &'a mut BufReader<Transport>, deadline: Deadline) -> Self {
        DeadlineReader {
            io,
            deadline,
            expired: READ_EXPIRED,
            armed: false,
        }
    }

    /// The text of the `TimedOut` error once the deadline has passed.
    pub fn expired(mut self, text: &'static str) -> Self {
        self.expired = text;
        self
    }
}

impl Read for DeadlineReader<'_> {
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

impl BufRead for DeadlineReader<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.io.buffer().is_empty() {
            let left = self.deadline.left(self.expired)?;
            self.io.get_ref().set_read_timeout(left)?;
            self.armed = true;
        }
        self.io.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.io.consume(n);
    }
}

/// What to do with a line longer than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlong {
    /// Fail at once with `InvalidData` ("line too long").
    Fail,
    /// Read the rest of the line, drop it, and say [`LineEnd::TooLong`].
    Skip,
}

/// How a line read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnd {
    /// At an LF, which is in the line.
    Lf,
    /// At the end of the stream; the line holds what came before it,
    /// perhaps nothing.
    Eof,
    /// The line was longer than allowed and is dropped ([`Overlong::Skip`]).
    TooLong,
}

/// Reads one line ending in LF, of at most `max` bytes, into `out`.
/// Longer lines are an error or skipped, as `overlong` says, rather than
/// unbounded memory.
pub fn read_line<R: BufRead>(
    r: &mut R,
    out: &mut Vec<u8>,
    max: usize,
    overlong: Overlong,
) -> io::Result<LineEnd> {
    out.clear();
    let mut too_long = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(LineEnd::Eof);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if !too_long {
            if out.len() + take > max {
                if overlong == Overlong::Fail {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
                }
                too_long = true;
                out.clear();
            } else {
                out.extend_from_slice(&buf[..take]);
            }
        }
        r.consume(take);
        if done {
            return Ok(if too_long {
                LineEnd::TooLong
            } else {
                LineEnd::Lf
            });
        }
    }
}

/// Writes to a session's stream with a deadline for the whole of it, as
/// [`DeadlineReader`] does for reads: a per-call socket timeout alone lets
/// a peer that reads a byte now and then hold a thread for ever. Each
/// write call gets only the time left; a blocking write that runs out
/// returns what it wrote, so the next call sees the deadline passed.
pub struct WriteDeadline<'a> {
    io: &'a mut Transport,
    deadline: Deadline,
}

impl<'a> WriteDeadline<'a> {
    pub fn new(io: &'a mut Transport, deadline: Deadline) -> Self {
        WriteDeadline { io, deadline }
    }
}

impl Write for WriteDeadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.deadline.left(WRITE_EXPIRED)?;
        self.io.set_write_timeout(left)?;
        self.io.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.io.flush()
    }
}

/// Writes `bytes` within `timeout`; the error names the timeout.
pub fn write_within(io: &mut Transport, bytes: &[u8], timeout: Duration) -> io::Result<()> {
    let mut w = WriteDeadline::new(io, Deadline::after(timeout));
    w.write_all(bytes)
        .and_then(|_| w.flush())
        .map_err(|e| name_timeout(e, timeout))
}

/// A write that ran out of time says so, instead of "Resource temporarily
/// unavailable" (what a socket write timeout reports).
pub fn name_timeout(e: io::Error, timeout: Duration) -> io::Error {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the server did not take it within {}",
                crate::date::format_duration(timeout)
            ),
        ),
        _ => e,
    }
}

/// A socket read or write timeout shows up as `WouldBlock` on Unix.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_refused_or_skipped() {
        let mut r = io::BufReader::new(&b"0123456789\nab\n"[..]);
        let mut line = Vec::new();
        assert!(read_line(&mut r, &mut line, 5, Overlong::Fail).is_err());
        let mut r = io::BufReader::new(&b"ab\ncd"[..]);
        assert_eq!(
            read_line(&mut r, &mut line, 5, Overlong::Fail).unwrap(),
            LineEnd::Lf
        );
        assert_eq!(line, b"ab\n");
        assert_eq!(
            read_line(&mut r, &mut line, 5, Overlong::Fail).unwrap(),
            LineEnd::Eof
        );
        assert_eq!(line, b"cd");
        assert_eq!(
            read_line(&mut r, &mut line, 5, Overlong::Fail).unwrap(),
            LineEnd::Eof
        );
        assert!(line.is_empty());

        let mut r = io::BufReader::with_capacity(3, &b"0123456789\nab\n"[..]);
        assert_eq!(
            read_line(&mut r, &mut line, 5, Overlong::Skip).unwrap(),
            LineEnd::TooLong
        );
        assert!(line.is_empty());
        assert_eq!(
            read_line(&mut r, &mut line, 5, Overlong::Skip).unwrap(),
            LineEnd::Lf
        );
        assert_eq!(line, b"ab\n");
    }

    #[test]
    fn a_deadline_passed_is_a_timeout_with_its_text() {
        let d = Deadline::after(Duration::ZERO);
        let e = d.left("too late").unwrap_err();
        assert!(is_timeout(&e));
        assert_eq!(e.to_string(), "too late");
        assert!(Deadline::after(Duration::from_secs(60)).left("x").is_ok());
    }
}
