//! Hostile clients: idle connections, very slow senders, NUL bytes,
//! binary garbage, huge headers, thousands of recipients and pipelining
//! floods. Limits and timeouts keep the listener serving everyone else,
//! and nothing crashes the daemon.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::daemon::{queued_id, run_mailqueue, Client, Daemon, Setup};

fn daemon(listen: &str) -> Daemon {
    Daemon::start(
        &Setup::default()
            .queue("initial_retry = \"1h\"\nmax_retry_interval = \"1h\"")
            .listen(listen),
    )
}

/// A full, ordinary transaction still works.
fn still_serves(d: &Daemon) {
    let mut c = Client::connect(d.addr()).expect("the listener stopped serving");
    queued_id(&c.mail(
        "s@example.org",
        &["r@example.org"],
        b"Subject: ok\r\n\r\nok\r\n",
    ));
    c.quit();
}

fn message_file(d: &Daemon, id: &str) -> Vec<u8> {
    common::stored_message(&d.spool(), id)
}

#[test]
fn idle_connections_cannot_lock_others_out_for_long() {
    let d = daemon("max_connections = 4\ncommand_timeout = \"1s\"");
    let idle: Vec<Client> = (0..4).map(|_| Client::connect(d.addr()).unwrap()).collect();
    let mut refused = Client::raw(d.addr()).unwrap();
    refused.reply().expect(421, "4.7.0");
    // The idle ones are dropped at the command timeout; then there is room.
    std::thread::sleep(Duration::from_millis(1500));
    still_serves(&d);
    drop(idle);
}

#[test]
fn a_very_slow_sender_does_not_hold_up_other_clients() {
    let d = daemon("data_timeout = \"5s\"");
    let addr = d.addr();
    let slow = std::thread::spawn(move || {
        let mut c = Client::connect(addr).unwrap();
        c.cmd("EHLO slow.test").expect(250, "");
        c.cmd("MAIL FROM:<s@example.org>").expect(250, "");
        c.cmd("RCPT TO:<r@example.org>").expect(250, "");
        c.cmd("DATA").expect(354, "");
        for b in b"Subject: slow\r\n\r\ndrip drip drip\r\n.\r\n" {
            c.send(&[*b]);
            std::thread::sleep(Duration::from_millis(40));
        }
        queued_id(&c.reply())
    });
    // While it drips, others are served without waiting for it.
    for _ in 0..5 {
        still_serves(&d);
    }
    assert!(
        !slow.is_finished(),
        "the others were served only after the slow client"
    );
    let id = slow.join().unwrap();
    assert!(message_file(&d, &id).ends_with(b"drip drip drip\r\n"));
}

#[test]
fn nul_bytes_are_errors_in_commands_and_data_in_bodies() {
    let d = daemon("");
    let mut c = Client::connect(d.addr()).unwrap();
    c.cmd("EHLO x.test").expect(250, "");
    c.send(b"MAIL\0 FROM:<s@example.org>\r\n");
    assert_eq!(c.reply().code / 100, 5);
    c.cmd("MAIL FROM:<s@example.org>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<r@example.org>").expect(250, "2.1.5");
    c.cmd("DATA").expect(354, "");
    let id = queued_id(&c.data_raw(b"Subject: nul\r\n\r\na\0b\0\0c\r\n.\r\n"));
    assert!(
        message_file(&d, &id).ends_with(b"a\0b\0\0c\r\n"),
        "the body must be kept byte for byte"
    );
}

#[test]
fn binary_garbage_ends_the_session_but_not_the_daemon() {
    let d = daemon("");
    let mut rng = fastrand::Rng::with_seed(99);
    let mut bytes_sent = 0;
    for round in 0..5 {
        let mut s = TcpStream::connect(d.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let junk: Vec<u8> = (0..(64 * 1024 * (round + 1))).map(|_| rng.u8(..)).collect();
        bytes_sent += junk.len();
        // The server may hang up before it has read it all.
        let _ = s.write_all(&junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("220 "), "{text}");
        assert!(
            text.lines()
                .skip(1)
                .all(|l| l.starts_with('5') || l.starts_with("421")),
            "{text}"
        );
    }
    still_serves(&d);
    eprintln!("{bytes_sent} bytes of garbage sent over 5 sessions; the daemon still serves");
}

#[test]
fn a_huge_header_block_is_taken_whole_under_the_size_limit() {
    let d = daemon("max_message_size = 8000000");
    let mut header = String::new();
    let mut n = 0;
    while header.len() < 3_000_000 {
        header.push_str(&format!("X-Filler-{n}: {}\r\n", "h".repeat(200)));
        n += 1;
    }
    // Date and Message-ID given: the queue adds nothing to it.
    let message = format!(
        "{header}Subject: big header\r\nDate: Tue, 1 Dec 2026 12:00:00 +0000\r\n\
         Message-ID: <big@example.org>\r\n\r\nbody\r\n"
    );
    let mut c = Client::connect(d.addr()).unwrap();
    let id = queued_id(&c.mail("s@example.org", &["r@example.org"], message.as_bytes()));
    let stored = message_file(&d, &id);
    assert!(
        stored.ends_with(message.as_bytes()),
        "the header must arrive whole ({n} fields)"
    );
}

#[test]
fn thousands_of_recipients_stop_at_the_limit() {
    let d = daemon("max_recipients = 1000");
    let mut c = Client::connect(d.addr()).unwrap();
    c.cmd("EHLO x.test").expect(250, "");
    let mut batch = String::from("MAIL FROM:<s@example.org>\r\n");
    for i in 0..3000 {
        batch.push_str(&format!("RCPT TO:<r{i}@example.org>\r\n"));
    }
    // A reader thread keeps the server's replies flowing while we write.
    let reader = c.io.get_ref().try_clone().unwrap();
    let counter = std::thread::spawn(move || {
        let mut r = BufReader::new(reader);
        let (mut ok, mut full) = (0, 0);
        let mut line = String::new();
        for _ in 0..3001 {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line.starts_with("250") {
                ok += 1;
            } else if line.starts_with("452 4.5.3") {
                full += 1;
            }
        }
        (ok, full)
    });
    c.send(batch.as_bytes());
    let (ok, full) = counter.join().unwrap();
    assert_eq!(
        (ok, full),
        (1001, 2000),
        "MAIL plus 1000 recipients accepted, the rest refused"
    );
    c.cmd("DATA").expect(354, "");
    let id = queued_id(&c.data_raw(b"Subject: many\r\n\r\nhi\r\n.\r\n"));
    let (status, out, _) =
        run_mailqueue(&["--config", d.config_path().to_str().unwrap(), "show", &id]);
    assert!(status.success());
    assert_eq!(out.lines().filter(|l| l.starts_with("  <r")).count(), 1000);
}

#[test]
fn a_pipelining_flood_gets_every_reply_in_order() {
    let d = daemon("");
    let mut c = Client::connect(d.addr()).unwrap();
    c.cmd("EHLO x.test").expect(250, "");
    const N: usize = 20_000;
    let reader = c.io.get_ref().try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let counter = std::thread::spawn(move || {
        let mut r = BufReader::new(reader);
        let mut line = String::new();
        let mut n = 0;
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return (n, line);
            }
            if line.starts_with("221") {
                return (n, line);
            }
            assert!(line.starts_with("250 2.0.0"), "reply {n}: {line}");
            n += 1;
        }
    });
    let flood = "NOOP\r\n".repeat(N) + "QUIT\r\n";
    c.send(flood.as_bytes());
    let (n, last) = counter.join().unwrap();
    assert_eq!(n, N);
    assert!(last.starts_with("221"), "{last}");
    still_serves(&d);
}

/// Sends `bytes` one every 250 ms until the server hangs up or 6 s pass;
/// returns what the server said.
fn trickle(c: &mut Client, bytes: &[u8]) -> String {
    let started = std::time::Instant::now();
    for b in bytes {
        if c.io.get_mut().write_all(&[*b]).is_err() || started.elapsed() > Duration::from_secs(6) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        if c.io.get_ref().peek(&mut [0u8; 1]).is_ok_and(|n| n > 0) {
            break;
        }
    }
    let mut said = String::new();
    let _ = c.io.read_line(&mut said);
    said
}

#[test]
fn a_trickled_command_line_is_cut_off_at_the_command_timeout() {
    let d = daemon("command_timeout = \"1s\"");
    let mut c = Client::connect(d.addr()).unwrap();
    let said = trickle(
        &mut c,
        b"EHLO a-long-name-sent-one-byte-at-a-time.example.org\r\n",
    );
    assert!(said.starts_with("421 4.4.2"), "{said:?}");
    still_serves(&d);
}

#[test]
fn a_trickled_data_line_is_cut_off_at_the_data_timeout() {
    let d = daemon("data_timeout = \"1s\"");
    let mut c = Client::connect(d.addr()).unwrap();
    c.cmd("EHLO x.test").expect(250, "");
    c.cmd("MAIL FROM:<s@example.org>").expect(250, "");
    c.cmd("RCPT TO:<r@example.org>").expect(250, "");
    c.cmd("DATA").expect(354, "");
    let said = trickle(
        &mut c,
        b"Subject: a header line that never seems to end\r\n\r\n.\r\n",
    );
    assert!(said.starts_with("421 4.4.2"), "{said:?}");
    assert!(d.queued().is_empty());
    still_serves(&d);
}
