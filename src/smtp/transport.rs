//! The byte stream under an SMTP or LMTP session: TCP, TLS over TCP, or a
//! Unix socket, with one place to set timeouts.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The stream under a [`Transport`].
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    /// The listener's side of STARTTLS.
    Tls(Box<native_tls::TlsStream<TcpStream>>),
    /// The client's side: OpenSSL directly, for the version and the
    /// certificate chain native-tls does not give.
    ClientTls(Box<openssl::ssl::SslStream<TcpStream>>),
    Unix(UnixStream),
}

impl Stream {
    fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(t)),
            Stream::Tls(s) => s.get_ref().set_read_timeout(Some(t)),
            Stream::ClientTls(s) => s.get_ref().set_read_timeout(Some(t)),
            Stream::Unix(s) => s.set_read_timeout(Some(t)),
        }
    }

    fn set_write_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(Some(t)),
            Stream::Tls(s) => s.get_ref().set_write_timeout(Some(t)),
            Stream::ClientTls(s) => s.get_ref().set_write_timeout(Some(t)),
            Stream::Unix(s) => s.set_write_timeout(Some(t)),
        }
    }
}

/// A connected stream and the timeouts set on its socket.
///
/// Every read and write of a session runs against a deadline, so its
/// socket timeout is set again and again, mostly to what it already is
/// (a fresh command timeout each command): about 27 system calls per
/// relayed message. The timeouts last set are kept here, and a new one
/// within [`slack`] of the old is not set: a step may wait up to that
/// much longer than its deadline, never less.
#[derive(Debug)]
pub struct Transport {
    stream: Stream,
    read_timeout: Cell<Option<Duration>>,
    write_timeout: Cell<Option<Duration>>,
}

/// How much longer than asked a socket timeout may be left: 1/64 of it,
/// at most a quarter of a second.
fn slack(t: Duration) -> Duration {
    (t / 64).min(Duration::from_millis(250))
}

/// Sets `t` through `set` unless `current` is at least `t` and at most
/// its slack more; sets a little more than `t`, so that the same
/// timeout asked again a moment later is still covered.
fn set_cached(
    current: &Cell<Option<Duration>>,
    t: Duration,
    set: impl FnOnce(Duration) -> io::Result<()>,
) -> io::Result<()> {
    let slack = slack(t);
    if current.get().is_some_and(|c| c >= t && c - t <= slack) {
        return Ok(());
    }
    let armed = t + slack / 2;
    current.set(None);
    set(armed)?;
    current.set(Some(armed));
    Ok(())
}

impl From<Stream> for Transport {
    fn from(stream: Stream) -> Self {
        Transport {
            stream,
            read_timeout: Cell::new(None),
            write_timeout: Cell::new(None),
        }
    }
}

impl Transport {
    /// The stream.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// The stream, for a TLS handshake on it.
    pub fn into_stream(self) -> Stream {
        self.stream
    }

    /// Sets the read and write timeout of the underlying socket.
    pub fn set_timeout(&self, t: Duration) -> io::Result<()> {
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }

    /// Sets only the read timeout: a read with a deadline need not touch
    /// the write side (each is a system call).
    pub fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        set_cached(&self.read_timeout, t, |t| self.stream.set_read_timeout(t))
    }

    /// Sets only the write timeout.
    pub fn set_write_timeout(&self, t: Duration) -> io::Result<()> {
        set_cached(&self.write_timeout, t, |t| self.stream.set_write_timeout(t))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_) | Stream::ClientTls(_))
    }

    /// Whether an idle connection is still worth a transaction: false when
    /// the peer closed it (EOF, reset) or sent something nobody asked for
    /// (a 421 before an idle timeout hang-up). Looks without waiting.
    pub fn idle_and_open(&self) -> bool {
        use std::os::fd::AsRawFd;
        match &self.stream {
            Stream::Tcp(s) => nothing_waiting(s.as_raw_fd()),
            // Bytes on the socket under TLS are an alert or a close_notify
            // as far as an idle SMTP session goes.
            Stream::Tls(s) => nothing_waiting(s.get_ref().as_raw_fd()),
            Stream::ClientTls(s) => nothing_waiting(s.get_ref().as_raw_fd()),
            Stream::Unix(s) => nothing_waiting(s.as_raw_fd()),
        }
    }
}

/// True when nothing is waiting on the socket `fd` and it is open: a peek
/// that does not block (one system call; switching the socket to
/// non-blocking and back took two more).
fn nothing_waiting(fd: std::os::fd::RawFd) -> bool {
    let mut probe = [0u8; 1];
    // SAFETY: a socket descriptor the caller's stream owns, and a buffer
    // of the length given that outlives the call.
    let n = unsafe {
        libc::recv(
            fd,
            probe.as_mut_ptr().cast(),
            probe.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.stream {
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::ClientTls(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.stream {
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            Stream::ClientTls(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            Stream::ClientTls(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// Shuts a socket down if a blocking step on it is not over within a
/// time limit. A TLS handshake reads and writes through calls of its own,
/// each with only the socket's per-call timeout: a peer that trickles a
/// byte now and then would hold the thread for as long as it likes.
/// Disarmed when dropped.
pub struct Watchdog {
    disarm: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts watching `stream`; `None` when the socket cannot be cloned
    /// or no thread started (the per-call timeouts still hold then).
    pub fn arm(stream: &TcpStream, limit: Duration) -> Option<Watchdog> {
        let socket = stream.try_clone().ok()?;
        let (disarm, disarmed) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("mailqueue-deadline".into())
            .spawn(move || {
                if disarmed.recv_timeout(limit) == Err(crossbeam_channel::RecvTimeoutError::Timeout)
                {
                    let _ = socket.shutdown(Shutdown::Both);
                }
            })
            .ok()?;
        Some(Watchdog {
            disarm: Some(disarm),
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Closing the channel wakes the thread; joining it means no
        // shutdown can come after the step is over.
        drop(self.disarm.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies a message into `out` as SMTP DATA: lines starting with `.` get
/// another `.`, bare LF and bare CR become CRLF, and the terminating `.`
/// line is added.
///
/// A bare CR must not reach the next hop as it is: servers disagree on
/// whether it ends a line, and `<CR>.<CR>` or `<LF>.<CR><LF>` read as the
/// end of DATA by one of them smuggles a second message past the other
/// (SMTP smuggling). As a line break it is harmless, and a dot after it is
/// stuffed like any other.
///
/// Output goes out in writes of about 64 KiB, the terminating line with the
/// last of them: a short message is one write. The buffers are the
/// thread's own and kept between calls: allocating and freeing 130 KiB per
/// message made the allocator hand memory back to the kernel every time.
pub fn write_dot_stuffed(reader: &mut dyn Read, out: &mut dyn Write) -> io::Result<()> {
    thread_local! {
        static BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
            std::cell::RefCell::new((vec![0u8; CHUNK], Vec::with_capacity(2 * CHUNK + 8)));
    }
    BUFFERS.with(|b| match b.try_borrow_mut() {
        Ok(mut b) => {
            let (input, output) = &mut *b;
            stuff(reader, out, input, output)
        }
        // Only if a writer called this again from inside: fresh buffers.
        Err(_) => stuff(
            reader,
            out,
            &mut vec![0u8; CHUNK],
            &mut Vec::with_capacity(2 * CHUNK + 8),
        ),
    })
}

const CHUNK: usize = 64 * 1024;

fn stuff(
    reader: &mut dyn Read,
    out: &mut dyn Write,
    input: &mut [u8],
    output: &mut Vec<u8>,
) -> io::Result<()> {
    output.clear();
    let mut line_start = true;
    // A CR read but not yet written: whether it ends a CRLF or stands
    // alone is known only from the next byte, which may be in the next
    // read.
    let mut held_cr = false;
    loop {
        let n = match reader.read(input) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        stuff_chunk(&input[..n], output, &mut line_start, &mut held_cr);
        if output.len() >= CHUNK {
            out.write_all(output)?;
            output.clear();
        }
    }
    if held_cr || !line_start {
        output.extend_from_slice(b"\r\n");
    }
    output.extend_from_slice(b".\r\n");
    out.write_all(output)?;
    output.clear();
    out.flush()
}

/// Stuffs one read: plain text between line-end bytes is copied a run
/// at a time (found with `memchr2`), so the per-byte work is only at line
/// ends and at dots that start a line.
fn stuff_chunk(mut rest: &[u8], output: &mut Vec<u8>, line_start: &mut bool, held_cr: &mut bool) {
    while !rest.is_empty() {
        if *held_cr {
            *held_cr = false;
            output.extend_from_slice(b"\r\n");
            *line_start = true;
            if rest[0] == b'\n' {
                rest = &rest[1..];
                continue;
            }
        }
        let run = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
        if run > 0 {
            if *line_start && rest[0] == b'.' {
                output.push(b'.');
            }
            output.extend_from_slice(&rest[..run]);
            *line_start = false;
        }
        match rest.get(run) {
            Some(b'\r') => *held_cr = true,
            Some(_) => {
                output.extend_from_slice(b"\r\n");
                *line_start = true;
            }
            None => {}
        }
        rest = &rest[(run + 1).min(rest.len())..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_already_set_is_not_set_again_and_never_shorter_than_asked() {
        let current = Cell::new(None);
        let set = std::cell::RefCell::new(Vec::new());
        let ask = |t: Duration| {
            set_cached(&current, t, |armed| {
                assert!(armed >= t && armed - t <= slack(t), "{armed:?} for {t:?}");
                set.borrow_mut().push(armed);
                Ok(())
            })
            .unwrap();
            let armed = current.get().unwrap();
            assert!(
                armed >= t && armed - t <= slack(t),
                "{armed:?} left for {t:?}"
            );
        };
        let minutes = Duration::from_secs(300);
        ask(minutes);
        // The same command timeout a moment later, a little less or more.
        ask(minutes - Duration::from_millis(3));
        ask(minutes + Duration::from_millis(3));
        assert_eq!(set.borrow().len(), 1);
        // Another timeout, longer or shorter, is set.
        ask(Duration::from_secs(600));
        ask(Duration::from_secs(10));
        ask(Duration::from_secs(9));
        assert_eq!(set.borrow().len(), 4);
        // A failed call leaves nothing cached: the next one is made.
        let failed = set_cached(&current, Duration::from_secs(1), |_| {
            Err(io::Error::other("x"))
        });
        assert!(failed.is_err() && current.get().is_none());
    }

    /// The byte-at-a-time stuffing the run-at-a-time one replaced.
    fn stuffed_bytewise(input: &[u8]) -> Vec<u8> {
        let (mut out, mut line_start, mut held_cr) = (Vec::new(), true, false);
        for &b in input {
            if held_cr {
                held_cr = false;
                out.extend_from_slice(b"\r\n");
                line_start = true;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => held_cr = true,
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    line_start = true;
                }
                _ => {
                    if line_start && b == b'.' {
                        out.push(b'.');
                    }
                    out.push(b);
                    line_start = false;
                }
            }
        }
        if held_cr || !line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    proptest::proptest! {
        /// Whatever the bytes and however they are cut into reads.
        #[test]
        fn runs_stuff_as_bytes_do(
            data in proptest::collection::vec(
                proptest::sample::select(vec![b'\r', b'\n', b'.', b'a', b'b']), 0..200),
            cuts in proptest::collection::vec(1usize..17, 1..8),
        ) {
            let mut out = Vec::new();
            let (mut line_start, mut held_cr) = (true, false);
            let (mut at, mut k) = (0, 0);
            while at < data.len() {
                let end = (at + cuts[k % cuts.len()]).min(data.len());
                stuff_chunk(&data[at..end], &mut out, &mut line_start, &mut held_cr);
                at = end;
                k += 1;
            }
            if held_cr || !line_start {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
            proptest::prop_assert_eq!(out, stuffed_bytewise(&data));
        }
    }

    fn stuffed(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_dot_stuffed(&mut &input[..], &mut out).unwrap();
        out
    }

    /// Each input, stuffed, gives its expected output.
    fn assert_stuffs(cases: &[(&[u8], &[u8])]) {
        for &(input, want) in cases {
            assert_eq!(stuffed(input), want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn dots_are_stuffed_and_lines_end_in_crlf() {
        assert_stuffs(&[
            (b".a\r\nb\r\n..c\r\n", b"..a\r\nb\r\n...c\r\n.\r\n"),
            (b"a\nb", b"a\r\nb\r\n.\r\n"),
            (b"", b".\r\n"),
            (b"x.\r\n.\r\n", b"x.\r\n..\r\n.\r\n"),
            (b"a\r", b"a\r\n.\r\n"),
            // A bare CR becomes a line break, and a dot after it is stuffed.
            (b"a\rb\r\n", b"a\r\nb\r\n.\r\n"),
            (b"a\r.b\r\n", b"a\r\n..b\r\n.\r\n"),
            (b"a\r\r\n", b"a\r\n\r\n.\r\n"),
            (b"\r", b"\r\n.\r\n"),
        ]);
    }

    #[test]
    fn a_message_larger_than_the_buffers_is_stuffed_the_same() {
        // Lines of every length around the 64 KiB chunk edges, some dotted.
        let mut input = Vec::new();
        let mut n = 0usize;
        while input.len() < 300_000 {
            if n % 3 == 0 {
                input.push(b'.');
            }
            input.extend(std::iter::repeat_n(b'x', n % 5000));
            input.extend_from_slice(if n % 2 == 0 { b"\r\n" } else { b"\n" });
            n += 1;
        }
        let mut want = Vec::new();
        for line in input.split_inclusive(|&b| b == b'\n') {
            if line[0] == b'.' {
                want.push(b'.');
            }
            let body = line.strip_suffix(b"\n").unwrap();
            let body = body.strip_suffix(b"\r").unwrap_or(body);
            want.extend_from_slice(body);
            want.extend_from_slice(b"\r\n");
        }
        want.extend_from_slice(b".\r\n");
        // Twice on one thread: the kept buffers start clean.
        assert_eq!(stuffed(&input), want);
        assert_eq!(stuffed(&input), want);
    }

    #[test]
    fn no_smuggling_sequence_with_a_bare_cr_ends_data_early() {
        // None may end DATA early at any reader.
        for evil in [
            &b"x\r.\r\nMAIL FROM:<e@vil>\r\n"[..],
            b"x\n.\rMAIL FROM:<e@vil>\r\n",
            b"x\r\n.\rMAIL FROM:<e@vil>\r\n",
            b"x\r.\rMAIL FROM:<e@vil>\r\n",
        ] {
            let out = stuffed(evil);
            assert_eq!(
                out.iter().filter(|&&b| b == b'\r').count(),
                out.iter().filter(|&&b| b == b'\n').count(),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
            assert!(out.windows(2).all(|w| (w[0] == b'\r') == (w[1] == b'\n')));
            assert_eq!(out, b"x\r\n..\r\nMAIL FROM:<e@vil>\r\n.\r\n");
            assert_eq!(
                out.windows(5).filter(|w| w == b"\r\n.\r\n").count(),
                1,
                "{:?}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    /// Hands out its input in reads of the given sizes, in turn.
    struct Pieces<'a> {
        data: &'a [u8],
        sizes: &'a [usize],
        turn: usize,
    }

    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let want = self.sizes[self.turn % self.sizes.len()];
            self.turn += 1;
            let n = want.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_bare_cr_at_the_end_of_a_read_or_a_chunk_is_still_known_for_what_it_is() {
        // A CR as the last byte of a full 64 KiB read, followed by a dot,
        // by LF, or by text, and CRs at the ends of tiny reads.
        for next in [&b".x\r\n"[..], b"\n.y\r\n", b"z\r\n"] {
            let mut input = vec![b'a'; CHUNK - 1];
            input.push(b'\r');
            input.extend_from_slice(next);
            let mut want = vec![b'a'; CHUNK - 1];
            want.extend_from_slice(b"\r\n");
            match next[0] {
                b'.' => want.extend_from_slice(b"..x\r\n"),
                b'\n' => want.extend_from_slice(b"..y\r\n"),
                _ => want.extend_from_slice(b"z\r\n"),
            }
            want.extend_from_slice(b".\r\n");
            assert_eq!(stuffed(&input), want);
            let mut out = Vec::new();
            let mut r = Pieces {
                data: &input,
                sizes: &[CHUNK, 1, 7],
                turn: 0,
            };
            write_dot_stuffed(&mut r, &mut out).unwrap();
            assert_eq!(out, want);
        }
        let input = b"a\r.b\r\nc\r\r.d\n";
        for sizes in [&[1usize][..], &[2], &[3, 1]] {
            let mut out = Vec::new();
            let mut r = Pieces {
                data: input,
                sizes,
                turn: 0,
            };
            write_dot_stuffed(&mut r, &mut out).unwrap();
            assert_eq!(out, b"a\r\n..b\r\nc\r\n\r\n..d\r\n.\r\n");
        }
    }
}
