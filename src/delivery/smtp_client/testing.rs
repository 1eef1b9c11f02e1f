//! Loopback servers and settings for the client's unit tests.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::{ClientSettings, Endpoint, Session};
use crate::address::ReversePath;
use crate::smtp::tls_policy::TlsPolicy;
use crate::smtp::transport::Stream;

pub(super) fn settings(timeout: Duration) -> Arc<ClientSettings> {
    Arc::new(ClientSettings {
        helo_name: "client.test".into(),
        lmtp: false,
        tls: TlsPolicy::None,
        tls_connector: None,
        auth: None,
        connect_timeout: timeout,
        command_timeout: timeout,
        data_timeout: timeout,
        source_address: None,
        ip_version: Default::default(),
        messages_per_connection: 0,
    })
}

pub(super) fn sender() -> ReversePath {
    Some("s@example.org".parse().unwrap())
}

/// A loopback server running `script` on its first connection.
pub(super) fn server(script: impl FnOnce(TcpStream) + Send + 'static) -> Endpoint {
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

/// How a test server reads once it has stopped answering.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Reading {
    /// Never reads again.
    Stopped,
    /// Reads 16 KiB every 100 ms: each write call makes progress well
    /// within the timeout, the whole never gets there.
    Trickling,
}

/// A server that takes MAIL and RCPT (PIPELINING when `pipelining`)
/// and, at DATA (`at_data`) or right after EHLO, reads as `reading`.
pub(super) fn slow_reader(at_data: bool, reading: Reading) -> Endpoint {
    server(move |s| {
        small_buffer(&s, libc::SO_RCVBUF);
        let conn = serve_commands(s, b"220 ok\r\n", |verb, c| match verb {
            "EHLO" if at_data => c.say(b"250 ok\r\n"),
            "EHLO" => c.say_last(b"250-ok\r\n250 PIPELINING\r\n"),
            "DATA" => c.say_last(b"354 go\r\n"),
            _ => c.say(b"250 ok\r\n"),
        });
        let Some(mut conn) = conn else { return };
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if reading == Reading::Stopped {
                std::thread::sleep(Duration::from_secs(60));
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
            match conn.reader().read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
}

/// Shrinks a socket buffer to 16 KiB, so that a writer blocks early
/// and wakes at each small read of the peer, whatever the kernel's
/// buffer auto-tuning would do.
pub(super) fn small_buffer(s: &impl std::os::fd::AsRawFd, which: libc::c_int) {
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

pub(super) fn open_with_small_send_buffer(endpoint: &Endpoint) -> Session {
    let session = Session::open(&settings(Duration::from_secs(1)), endpoint, false).unwrap();
    let Stream::Tcp(s) = session.io.get_ref().stream() else {
        unreachable!("a TCP endpoint")
    };
    small_buffer(s, libc::SO_SNDBUF);
    session
}

/// A server that answers RCPT with a 550 of `lines` lines of 500 bytes.
pub(super) fn huge_rcpt_reply(lines: usize) -> Endpoint {
    server(move |s| {
        serve_commands(s, b"220 ok\r\n", |verb, c| {
            if verb == "RCPT" {
                let filler = "y".repeat(490);
                let mut reply = String::new();
                for i in 0..lines - 1 {
                    reply.push_str(&format!("550-5.1.1 {i:04}{filler}\r\n"));
                }
                reply.push_str("550 5.1.1 the end\r\n");
                c.say(reply.as_bytes())
            } else {
                c.say(b"250 ok\r\n")
            }
        });
    })
}

/// One connection of a loopback server, seen from the server's side.
pub(crate) struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// Whether a loopback server reads the next command.
pub(crate) enum Flow {
    Go,
    /// Stop reading commands: [`serve_commands`] hands the connection
    /// back (dropping it hangs up).
    Stop,
}

impl Conn {
    /// Writes a reply (or anything else) to the client, then goes on.
    pub(crate) fn say(&mut self, bytes: &[u8]) -> io::Result<Flow> {
        self.writer.write_all(bytes)?;
        Ok(Flow::Go)
    }

    /// Writes a last reply to the client, then stops.
    pub(crate) fn say_last(&mut self, bytes: &[u8]) -> io::Result<Flow> {
        self.writer.write_all(bytes)?;
        Ok(Flow::Stop)
    }

    /// What the client sends after the command, such as a message body.
    pub(crate) fn reader(&mut self) -> &mut BufReader<TcpStream> {
        &mut self.reader
    }

    /// The lines of a message body up to its lone dot (not included);
    /// an error if the client hangs up first.
    pub(crate) fn read_body(&mut self) -> io::Result<String> {
        let mut body = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if line == ".\r\n" {
                return Ok(body);
            }
            body.push_str(&line);
        }
    }
}

/// Serves one connection of a loopback server: writes `greeting`, then
/// reads commands one line at a time and calls `answer` with the verb
/// (the first four characters, in upper case) of each. `answer` writes
/// its reply through the [`Conn`] and says whether to go on; an error (a
/// failed write, a body cut short) hangs up.
///
/// Returns the connection when `answer` says [`Flow::Stop`], `None` when
/// the client hung up or a write failed.
pub(crate) fn serve_commands(
    s: TcpStream,
    greeting: &[u8],
    mut answer: impl FnMut(&str, &mut Conn) -> io::Result<Flow>,
) -> Option<Conn> {
    let writer = s.try_clone().unwrap();
    let mut conn = Conn {
        reader: BufReader::new(s),
        writer,
    };
    conn.say(greeting).ok()?;
    let mut line = String::new();
    loop {
        line.clear();
        if conn.reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        match answer(&verb, &mut conn) {
            Ok(Flow::Go) => {}
            Ok(Flow::Stop) => return Some(conn),
            Err(_) => return None,
        }
    }
}
