//! The SMTP listener of `mailqueue serve`, driven by Python's smtplib and
//! by raw TCP dialogues over loopback.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{dot_stuff, queued_id, Client, Daemon, Setup};
use common::peers::PyServer;
use common::wait_for;

const LONG: Duration = Duration::from_secs(15);
/// Complete (Date and Message-ID given), so the queue stores it as it is.
const MSG: &[u8] = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\
    Date: Tue, 1 Dec 2026 12:00:00 +0000\r\nMessage-ID: <listener@example.org>\r\n\r\nHello.\r\n";

/// A daemon whose target accepts nothing: what it accepts stays queued.
fn daemon_with(listen: &str) -> Daemon {
    Daemon::start(
        &Setup::default()
            .queue("initial_retry = \"1h\"\nmax_retry_interval = \"1h\"")
            .listen(listen),
    )
}

fn connect(d: &Daemon) -> Client {
    Client::connect(d.addr()).expect("cannot connect to the daemon")
}

#[test]
fn python_smtplib_sends_through_the_daemon_to_the_target() {
    let peer = PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")));
    let script = r#"
import smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10) as s:
    s.ehlo("client.test")
    assert s.has_extn("pipelining") and s.has_extn("8bitmime") and s.has_extn("smtputf8")
    refused = s.sendmail("alice@example.org", ["bob@example.net", "carol@example.net"],
                         b"Subject: from smtplib\r\nDate: Tue, 1 Dec 2026 12:00:00 +0000\r\nMessage-ID: <py@example.org>\r\n\r\nHello from Python.\r\n")
    assert refused == {}, refused
"#;
    let out = Command::new("python3")
        .args(["-c", script, &d.port.to_string()])
        .output()
        .expect("cannot run python3");
    assert!(
        out.status.success(),
        "smtplib failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = peer.wait_messages(1, LONG);
    assert_eq!(got[0].sender(), "alice@example.org");
    assert_eq!(
        got[0].recipients(),
        vec!["bob@example.net", "carol@example.net"]
    );
    assert!(got[0]
        .text()
        .ends_with("Subject: from smtplib\r\nDate: Tue, 1 Dec 2026 12:00:00 +0000\r\nMessage-ID: <py@example.org>\r\n\r\nHello from Python.\r\n"));
}

#[test]
fn ehlo_advertises_the_extensions() {
    let d = daemon_with("max_message_size = 123456");
    let mut c = connect(&d);
    let r = c.cmd("EHLO client.test");
    r.expect(250, "mq.test");
    for ext in [
        "PIPELINING",
        "SIZE 123456",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "DSN",
        "SMTPUTF8",
    ] {
        assert!(r.lines.iter().any(|l| l == ext), "{ext} missing: {r:?}");
    }
    // No certificate configured: no STARTTLS, and the command is refused.
    assert!(!r.lines.iter().any(|l| l == "STARTTLS"), "{r:?}");
    c.cmd("STARTTLS").expect(502, "5.5.1");
}

#[test]
fn pipelined_commands_get_their_replies_in_order() {
    let d = daemon_with("");
    let mut c = connect(&d);
    // One write with the whole envelope (RFC 2920).
    c.send(
        b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n\
          RCPT TO:<bad address>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n",
    );
    c.reply().expect(250, "mq.test");
    c.reply().expect(250, "2.1.0");
    c.reply().expect(250, "2.1.5");
    c.reply().expect(553, "5.1.3");
    c.reply().expect(250, "2.1.5");
    c.reply().expect(354, "");
    // The message, then more commands, all in one write.
    let mut batch = dot_stuff(MSG);
    batch.extend_from_slice(b"NOOP\r\nMAIL FROM:<x@example.org>\r\nRSET\r\nQUIT\r\n");
    c.send(&batch);
    queued_id(&c.reply());
    c.reply().expect(250, "2.0.0");
    c.reply().expect(250, "2.1.0");
    c.reply().expect(250, "2.0.0");
    c.reply().expect(221, "2.0.0");
    assert!(c.closed());
    assert_eq!(d.queued().len(), 1);
}

#[test]
fn commands_out_of_sequence_get_503_5_5_1() {
    let d = daemon_with("");
    let mut c = connect(&d);
    c.cmd("MAIL FROM:<a@example.org>").expect(503, "5.5.1");
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("RCPT TO:<b@example.org>").expect(503, "5.5.1");
    c.cmd("DATA").expect(503, "5.5.1");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
    c.cmd("MAIL FROM:<a@example.org>").expect(503, "5.5.1");
    c.cmd("DATA").expect(554, "5.5.1");
    // The transaction is still usable.
    c.cmd("RCPT TO:<b@example.org>").expect(250, "2.1.5");
    c.cmd("DATA").expect(354, "");
    queued_id(&c.data_raw(&dot_stuff(MSG)));
}

#[test]
fn syntax_errors_get_501_5_5_2() {
    let d = daemon_with("");
    let mut c = connect(&d);
    c.cmd("EHLO").expect(501, "5.5.2");
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:a@example.org").expect(501, "5.5.2");
    c.cmd("MAIL TO:<a@example.org>").expect(501, "5.5.2");
    c.cmd("MAIL FROM:<a@example.org").expect(501, "5.5.2");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
    c.cmd("RCPT TO:b@example.org").expect(501, "5.5.2");
    c.cmd("RCPT TO:<not an address>").expect(553, "5.1.3");
    c.cmd("QUIT now").expect(501, "5.5.2");
    c.cmd("RCPT TO:<b@example.org>").expect(250, "2.1.5");
}

#[test]
fn unknown_commands_get_500_5_5_2() {
    let d = daemon_with("");
    let mut c = connect(&d);
    c.cmd("FROBNICATE now").expect(500, "5.5.2");
    c.cmd("").expect(500, "5.5.2");
    c.cmd("EHLO client.test").expect(250, "");
}

#[test]
fn an_overlong_line_gets_500_5_5_6_and_the_session_goes_on() {
    let d = daemon_with("");
    let mut c = connect(&d);
    let mut line = b"NOOP ".to_vec();
    line.resize(20_000, b'x');
    line.extend_from_slice(b"\r\n");
    c.send(&line);
    c.reply().expect(500, "5.5.6");
    c.cmd("NOOP").expect(250, "2.0.0");
    c.cmd("EHLO client.test").expect(250, "");
}

#[test]
fn size_over_the_limit_at_mail_gets_552_5_3_4() {
    let d = daemon_with("max_message_size = 1000");
    let mut c = connect(&d);
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<a@example.org> SIZE=1001")
        .expect(552, "5.3.4");
    c.cmd("MAIL FROM:<a@example.org> SIZE=1000")
        .expect(250, "2.1.0");
}

#[test]
fn size_over_the_limit_at_end_of_data_gets_552_5_3_4_and_nothing_is_queued() {
    let d = daemon_with("max_message_size = 1000");
    let mut c = connect(&d);
    c.cmd("EHLO client.test").expect(250, "");
    // No SIZE= announced: the limit is found only while reading DATA.
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<b@example.org>").expect(250, "2.1.5");
    c.cmd("DATA").expect(354, "");
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..100 {
        big.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
    }
    c.data_raw(&dot_stuff(&big)).expect(552, "5.3.4");
    assert!(d.queued().is_empty(), "queued: {:?}", d.queued());
    // The rest of the message was read and thrown away: the session is in
    // step and takes the next, small message.
    c.cmd("NOOP").expect(250, "2.0.0");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<b@example.org>").expect(250, "2.1.5");
    c.cmd("DATA").expect(354, "");
    queued_id(&c.data_raw(&dot_stuff(MSG)));
    assert_eq!(d.queued().len(), 1);
}

#[test]
fn too_many_recipients_get_452_4_5_3() {
    let d = daemon_with("max_recipients = 2");
    let mut c = connect(&d);
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<b1@example.org>").expect(250, "2.1.5");
    c.cmd("RCPT TO:<b2@example.org>").expect(250, "2.1.5");
    c.cmd("RCPT TO:<b3@example.org>").expect(452, "4.5.3");
    c.cmd("DATA").expect(354, "");
    queued_id(&c.data_raw(&dot_stuff(MSG)));
    let meta = common::stored_metadata(&d.spool(), d.queued()[0].trim_end_matches(".msg"));
    assert!(meta.contains("b1@example.org") && meta.contains("b2@example.org"));
    assert!(!meta.contains("b3@example.org"), "{meta}");
}

#[test]
fn garbage_bytes_get_errors_and_the_session_still_works() {
    let d = daemon_with("");
    let mut c = connect(&d);
    c.send(b"\xff\xfe\x00\x01\x80binary\x1b[0m\r\n");
    assert_eq!(c.reply().code, 500);
    c.send(b"EHLO \xc3\x28\xa0\xa1\r\n");
    assert!(c.reply().code >= 500);
    c.send(b"MAIL FROM:<\xff@example.org>\r\n");
    assert!(c.reply().code >= 500);
    // A bare NUL line and a line without CR.
    c.send(b"\x00\n");
    assert_eq!(c.reply().code, 500);
    let r = c.mail("a@example.org", &["b@example.org"], MSG);
    queued_id(&r);
}

#[test]
fn a_silent_client_gets_421_4_4_2_after_the_command_timeout() {
    let d = daemon_with("command_timeout = \"1s\"");
    let mut c = connect(&d);
    c.cmd("EHLO client.test").expect(250, "");
    let t = Instant::now();
    let r = c.reply();
    let waited = t.elapsed();
    r.expect(421, "4.4.2");
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "421 after {waited:?}"
    );
    assert!(c.closed());
}

#[test]
fn a_client_silent_in_data_gets_421_after_the_data_timeout() {
    let d = daemon_with("data_timeout = \"1s\"");
    let mut c = connect(&d);
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<b@example.org>").expect(250, "2.1.5");
    c.cmd("DATA").expect(354, "");
    c.send(b"Subject: half a message\r\n");
    c.reply().expect(421, "4.4.2");
    assert!(c.closed());
    assert!(d.queued().is_empty());
}

#[test]
fn data_is_unstuffed_and_8bit_and_utf8_bodies_arrive_byte_for_byte() {
    let peer = PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")));
    // Lines that start with dots, a lone dot inside a line, UTF-8, Latin-1
    // bytes that are not UTF-8, a bare CR and a tab. Only the bare CR
    // changes on the way: it reaches the next hop as a line break, never as
    // it is (a next hop might end a line, or the data, at it).
    // Date and Message-ID given: the queue adds nothing to the header.
    let mut body = b"Subject: =?utf-8?q?caf=C3=A9?=\r\nDate: Tue, 1 Dec 2026 12:00:00 +0000\r\nMessage-ID: <8bit@example.org>\r\n\r\n".to_vec();
    body.extend_from_slice(b".leading dot\r\n..two dots\r\n.\r\n");
    body.extend_from_slice("grüße, 日本語, ☃\r\n".as_bytes());
    body.extend_from_slice(b"latin-1: caf\xe9 \xff\xfe\r\n");
    body.extend_from_slice(b"a bare\rCR and\ttab.\r\n. \r\nend\r\n");
    let mut c = connect(&d);
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<a@example.org> BODY=8BITMIME")
        .expect(250, "2.1.0");
    c.cmd("RCPT TO:<b@example.org>").expect(250, "2.1.5");
    c.cmd("DATA").expect(354, "");
    queued_id(&c.data_raw(&dot_stuff(&body)));
    let got = peer.wait_messages(1, LONG);
    let received = &got[0].body;
    let cr = body.windows(3).position(|w| w == b"e\rC").unwrap() + 1;
    body.insert(cr + 1, b'\n');
    assert!(received.starts_with(b"Received: "), "{}", got[0].text());
    assert!(
        received.ends_with(&body),
        "body changed:\n{:?}\nvs\n{:?}",
        String::from_utf8_lossy(received),
        String::from_utf8_lossy(&body)
    );
    // Only the Received header was added.
    let header_end = received.len() - body.len();
    let added = String::from_utf8_lossy(&received[..header_end]);
    assert_eq!(
        added.matches("\r\n").count(),
        added.lines().count(),
        "{added}"
    );
    assert!(
        added.lines().skip(1).all(|l| l.starts_with('\t')),
        "{added}"
    );
    // BODY=8BITMIME is passed on to the next hop.
    let options = got[0].meta["mail_options"].to_string();
    assert!(options.contains("BODY=8BITMIME"), "{options}");
}

#[test]
fn the_reply_names_the_queue_id_and_a_received_header_is_prepended() {
    let d = daemon_with("");
    let mut c = connect(&d);
    let id = queued_id(&c.mail("a@example.org", &["b@example.org"], MSG));
    let stored = common::stored_message(&d.spool(), &id);
    let text = String::from_utf8_lossy(&stored);
    assert!(
        text.starts_with(
            "Received: from client.test ([127.0.0.1])\r\n\tby mq.test (mailqueue) with ESMTP id "
        ),
        "{text}"
    );
    assert!(text.contains(&format!("id {id}")), "{text}");
    assert!(text.contains("for <b@example.org>"), "{text}");
    assert!(stored.ends_with(MSG), "{text}");
}

#[test]
fn past_max_connections_a_client_gets_421_4_7_0() {
    let d = daemon_with("max_connections = 2");
    let mut a = connect(&d);
    let b = connect(&d);
    let mut third = Client::raw(d.addr()).unwrap();
    third.reply().expect(421, "4.7.0");
    assert!(third.closed());
    // A slot frees up when a session ends.
    a.quit();
    assert!(wait_for(LONG, || {
        Client::connect(d.addr()).is_ok_and(|mut c| {
            let ok = c.cmd("NOOP").code == 250;
            c.quit();
            ok
        })
    }));
    drop(b);
}

#[test]
fn vrfy_gets_252() {
    let d = daemon_with("");
    let mut c = connect(&d);
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("VRFY postmaster").expect(252, "2.5.0");
}

#[test]
fn rset_noop_help_and_quit() {
    let d = daemon_with("");
    let mut c = connect(&d);
    c.cmd("HELO client.test").expect(250, "mq.test");
    c.cmd("NOOP").expect(250, "2.0.0");
    c.cmd("HELP").expect(214, "2.0.0");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<b@example.org>").expect(250, "2.1.5");
    c.cmd("RSET").expect(250, "2.0.0");
    // RSET ended the transaction.
    c.cmd("DATA").expect(503, "5.5.1");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
    c.cmd("QUIT").expect(221, "2.0.0");
    assert!(c.closed());
    assert!(d.queued().is_empty());
}

#[test]
fn relay_from_outside_relay_networks_gets_554_5_7_1() {
    // Loopback is outside 10.0.0.0/8.
    let d = daemon_with("relay_networks = [\"10.0.0.0/8\"]");
    let mut c = connect(&d);
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<b@example.org>").expect(554, "5.7.1");
    c.cmd("DATA").expect(554, "5.5.1");
    assert!(d.queued().is_empty());
}

#[test]
fn a_recipient_named_twice_is_queued_once() {
    let d = daemon_with("");
    let mut c = connect(&d);
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<b@example.org> NOTIFY=SUCCESS")
        .expect(250, "2.1.5");
    c.cmd("RCPT TO:<c@example.org>").expect(250, "2.1.5");
    c.cmd("RCPT TO:<b@example.org>").expect(250, "2.1.5");
    c.cmd("DATA").expect(354, "");
    let id = queued_id(&c.data_raw(&dot_stuff(MSG)));
    let meta = common::stored_metadata(&d.spool(), &id);
    assert_eq!(meta.matches("b@example.org").count(), 1, "{meta}");
    assert!(meta.contains("c@example.org"), "{meta}");
    assert!(meta.contains("SUCCESS"), "{meta}");
}

#[test]
fn dsn_parameters_are_accepted_and_kept() {
    let d = daemon_with("");
    let mut c = connect(&d);
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<a@example.org> RET=HDRS ENVID=QQ+2Bid SIZE=100")
        .expect(250, "2.1.0");
    c.cmd("RCPT TO:<b@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.org")
        .expect(250, "2.1.5");
    c.cmd("RCPT TO:<c@example.org> NOTIFY=BOGUS")
        .expect(501, "5.5.4");
    c.cmd("RCPT TO:<c@example.org> FOO=BAR")
        .expect(555, "5.5.4");
    c.cmd("DATA").expect(354, "");
    let id = queued_id(&c.data_raw(&dot_stuff(MSG)));
    let meta = common::stored_metadata(&d.spool(), &id);
    assert!(meta.contains("QQ+id"), "{meta}");
    assert!(meta.contains("rfc822;b+x@example.org"), "{meta}");
}

#[test]
fn the_connection_ends_after_too_many_errors() {
    let d = daemon_with("");
    let mut c = connect(&d);
    let mut batch = Vec::new();
    for _ in 0..30 {
        batch.extend_from_slice(b"BOGUS\r\n");
    }
    c.send(&batch);
    let mut codes = Vec::new();
    while let Ok(r) = c.try_reply() {
        codes.push(r.code);
    }
    assert_eq!(codes.last(), Some(&421), "{codes:?}");
    assert!(codes.len() < 30, "{codes:?}");
    let _ = c.io.get_mut().flush();
}

#[test]
fn quotas_refuse_new_mail_with_452_4_3_1() {
    let d = Daemon::start(&Setup::default().queue(
        "initial_retry = \"1h\"\nmax_retry_interval = \"1h\"\nmax_messages = 1\nmax_bytes = 100000",
    ));
    let mut c = connect(&d);
    // SIZE= beyond max_bytes is refused at MAIL.
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<a@example.org> SIZE=200000")
        .expect(452, "4.3.1");
    queued_id(&c.mail("a@example.org", &["b@example.org"], MSG));
    // One message queued: max_messages is reached.
    c.cmd("MAIL FROM:<a@example.org>").expect(452, "4.3.1");
    assert_eq!(d.queued().len(), 1);
}

#[test]
fn data_sent_one_byte_at_a_time_is_stored_the_same() {
    let d = daemon_with("");
    let mut c = connect(&d);
    c.io.get_ref().set_nodelay(true).unwrap();
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<b@example.org>").expect(250, "2.1.5");
    c.cmd("DATA").expect(354, "");
    // Every state of the end-of-data scanner meets a read boundary.
    let body = b"Subject: slow\r\nDate: Tue, 1 Dec 2026 12:00:00 +0000\r\nMessage-ID: <slow@example.org>\r\n\r\n.\r\n..\r\n.x\r\nx.\r\n.\rx\r\n\r\n".to_vec();
    for b in dot_stuff(&body) {
        c.send(&[b]);
        std::thread::sleep(Duration::from_millis(1));
    }
    let id = queued_id(&c.reply());
    let stored = common::stored_message(&d.spool(), &id);
    assert!(
        stored.ends_with(&body),
        "{:?}",
        String::from_utf8_lossy(&stored)
    );
}

#[test]
fn the_greeting_starts_with_the_host_name() {
    let d = daemon_with("");
    let mut c = Client::raw(d.addr()).unwrap();
    // RFC 2034: no enhanced status code in the greeting.
    assert_eq!(c.reply().first(), "220 mq.test ESMTP mailqueue");
}

/// After DATA: a message, one of the endings a front MTA may take for
/// the end of data, then a whole second transaction from a forged sender.
fn smuggling_attempt(ending: &[u8]) -> Vec<u8> {
    let mut data = b"From: a@example.org\r\nSubject: real\r\n\r\nhello".to_vec();
    data.extend_from_slice(ending);
    data.extend_from_slice(
        b"MAIL FROM:<ceo@corp.example>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n",
    );
    data.extend_from_slice(b"From: ceo@corp.example\r\nSubject: forged\r\n\r\nx\r\n.\r\n");
    data
}

/// A session at the start of DATA: EHLO, MAIL, RCPT and DATA answered.
fn in_data(d: &Daemon) -> Client {
    let mut c = connect(d);
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<b@example.net>").expect(250, "2.1.5");
    c.cmd("DATA").expect(354, "");
    c
}

const SMUGGLING_ENDINGS: [&[u8]; 5] = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r"];

#[test]
fn smuggled_endings_do_not_end_data_and_the_forged_sender_never_reaches_the_sink() {
    let peer = PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")));
    for ending in SMUGGLING_ENDINGS {
        let mut c = in_data(&d);
        c.send(&smuggling_attempt(ending));
        // One DATA, one reply: the smuggled MAIL, RCPT and DATA were text.
        queued_id(&c.reply());
        c.cmd("QUIT").expect(221, "");
    }
    let got = peer.wait_messages(SMUGGLING_ENDINGS.len(), LONG);
    std::thread::sleep(Duration::from_millis(500));
    let got_all = peer.messages();
    assert_eq!(got_all.len(), SMUGGLING_ENDINGS.len(), "{got_all:?}");
    for m in &got {
        assert_eq!(m.sender(), "a@example.org");
        assert_eq!(m.recipients(), vec!["b@example.net"]);
        // The forged transaction arrived, if at all, as text of the one
        // message, with no line that the next hop could end DATA at.
        let text = m.text();
        assert!(text.contains("MAIL FROM:<ceo@corp.example>"), "{text:?}");
    }
}

#[test]
fn bare_lf_lines_are_taken_as_crlf_by_default() {
    let peer = PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")));
    let mut c = connect(&d);
    c.send(b"EHLO client.test\n");
    c.reply().expect(250, "");
    c.send(b"MAIL FROM:<a@example.org>\nRCPT TO:<b@example.net>\nDATA\n");
    c.reply().expect(250, "2.1.0");
    c.reply().expect(250, "2.1.5");
    c.reply().expect(354, "");
    queued_id(&c.data_raw(b"Subject: lf\nDate: Tue, 1 Dec 2026 12:00:00 +0000\nMessage-ID: <lf@example.org>\n\nline one\n..dotted\n\r\n.\r\n"));
    let got = peer.wait_messages(1, LONG);
    assert!(
        got[0]
            .body
            .ends_with(b"Subject: lf\r\nDate: Tue, 1 Dec 2026 12:00:00 +0000\r\nMessage-ID: <lf@example.org>\r\n\r\nline one\r\n.dotted\r\n\r\n"),
        "{:?}",
        got[0].text()
    );
}

#[test]
fn with_bare_newline_reject_a_bare_lf_in_data_gets_550_5_5_2_and_the_session_ends() {
    let d = daemon_with("bare_newline = \"reject\"");
    let with_bare_lf = [&b"\n.\n"[..], b"\n.\r\n", b"\r\n.\n"];
    for ending in with_bare_lf {
        let mut c = in_data(&d);
        c.send(&smuggling_attempt(ending));
        c.reply().expect(550, "5.5.2");
        assert!(c.closed(), "the session goes on after a bare LF");
    }
    assert!(d.queued().is_empty(), "{:?}", d.queued());
    // Endings without a bare LF: one message each, the would-be end text.
    for ending in [&b"\r.\r\n"[..], b"\r\n.\r"] {
        let mut c = in_data(&d);
        c.send(&smuggling_attempt(ending));
        queued_id(&c.reply());
        c.cmd("QUIT").expect(221, "");
    }
    assert_eq!(d.queued().len(), 2, "{:?}", d.queued());
    let meta = std::fs::read_dir(d.spool().join("queue"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect::<String>();
    // The forged sender is message text only, never an envelope sender.
    assert!(!meta.contains("\"ceo@corp.example\""), "{meta}");
}

#[test]
fn with_bare_newline_reject_a_command_ended_by_a_bare_lf_gets_550_5_5_2() {
    let d = daemon_with("bare_newline = \"reject\"");
    let mut c = connect(&d);
    c.cmd("EHLO client.test").expect(250, "");
    c.send(b"MAIL FROM:<a@example.org>\n");
    c.reply().expect(550, "5.5.2");
    assert!(c.closed());
    // CRLF clients are served as usual.
    let mut c = connect(&d);
    queued_id(&c.mail("a@example.org", &["b@example.org"], MSG));
}
