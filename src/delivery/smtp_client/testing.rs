//! Loopback servers and settings for the client's unit tests.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::{ClientSettings, Endpoint, Session};
use crate::address::ReversePath;
use crate::smtp::tls_policy::TlsPolicy;
use crate::smtp::transport::Transport;

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
    let Transport::Tcp(s) = session.io.get_ref() else {
        unreachable!("a TCP endpoint")
    };
    small_buffer(s, libc::SO_SNDBUF);
    session
}

/// A server that answers RCPT with a 550 of `lines` lines of 500 bytes.
pub(super) fn huge_rcpt_reply(lines: usize) -> Endpoint {
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
