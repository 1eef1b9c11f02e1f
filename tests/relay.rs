//! The daemon's SMTP and LMTP client against real servers on loopback:
//! aiosmtpd with fault injection by recipient address, and Postfix's
//! smtp-sink.

mod common;

use std::time::Duration;

use common::daemon::{dot_stuff, queued_id, run_mailqueue, spawn_serve, Client, Daemon, Setup};
use common::peers::{PyServer, Reaper, Received, SmtpSink};
use common::wait_for;

const LONG: Duration = Duration::from_secs(20);
const MSG: &[u8] =
    b"From: a@example.org\r\nTo: b@example.net\r\nSubject: relay test\r\n\r\nHello.\r\n";

/// Queues one message through the daemon's listener; returns the id.
fn submit(d: &Daemon, from: &str, to: &[&str]) -> String {
    let mut c = Client::connect(d.addr()).expect("cannot connect to the daemon");
    let id = queued_id(&c.mail(from, to, MSG));
    c.quit();
    id
}

/// Waits until smtp-sink has `n` messages and the daemon has heard the
/// 250 for each (its queue is empty), so every dump is complete.
#[track_caller]
fn wait_sink(d: &Daemon, sink: &SmtpSink, n: usize) -> Vec<String> {
    assert!(
        wait_for(LONG, || sink.count() >= n && d.queued().is_empty()),
        "{} of {n} arrived\n{}",
        sink.count(),
        d.log()
    );
    sink.messages()
}

/// The notices (null sender) a peer received.
fn bounces(got: &[Received]) -> Vec<Received> {
    got.iter()
        .filter(|m| m.sender().is_empty())
        .cloned()
        .collect()
}

/// Waits for a notice at the peer and returns it.
#[track_caller]
fn wait_bounce(peer: &PyServer) -> Received {
    assert!(
        wait_for(LONG, || !bounces(&peer.messages()).is_empty()),
        "no notice arrived; events: {:?}",
        peer.events()
    );
    bounces(&peer.messages()).remove(0)
}

/// Checks a notice is an RFC 3464 report to `to` naming `rcpt` and `code`.
#[track_caller]
fn assert_report(notice: &Received, to: &str, rcpt: &str, code: &str) {
    let text = notice.text();
    assert_eq!(notice.recipients(), vec![to.to_string()]);
    assert!(
        text.contains("multipart/report; report-type=delivery-status"),
        "{text}"
    );
    assert!(text.contains("Action: failed"), "{text}");
    assert!(
        text.contains(&format!("Final-Recipient: rfc822;{rcpt}"))
            || text.contains(&format!("Final-Recipient: rfc822; {rcpt}")),
        "{text}"
    );
    assert!(text.contains(&format!("Status: {code}")), "{text}");
}

#[test]
fn a_4xx_at_rcpt_is_retried_until_it_succeeds() {
    let peer = PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")));
    submit(&d, "a@example.org", &["flaky-rcpt@example.net"]);
    let got = peer.wait_messages(1, LONG);
    assert_eq!(got[0].recipients(), vec!["flaky-rcpt@example.net"]);
    assert_eq!(peer.rcpt_tries("flaky-rcpt@example.net"), 2);
    assert!(d.wait_log("tries=2", LONG), "{}", d.log());
    let log = d.log();
    assert!(
        log.contains("to=<flaky-rcpt@example.net>") && log.contains("status=deferred (450 4.2.1"),
        "{log}"
    );
    assert!(bounces(&got).is_empty());
    assert!(wait_for(LONG, || d.queued().is_empty()));
}

#[test]
fn a_recipient_that_keeps_failing_with_4xx_bounces_after_max_tries() {
    let peer = PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")).queue("max_tries = 3"));
    submit(&d, "a@example.org", &["tempfail-rcpt@example.net"]);
    let notice = wait_bounce(&peer);
    assert_eq!(peer.rcpt_tries("tempfail-rcpt@example.net"), 3);
    assert_report(
        &notice,
        "a@example.org",
        "tempfail-rcpt@example.net",
        "4.2.1",
    );
    assert!(
        notice.text().contains("Mailbox busy (test)"),
        "{}",
        notice.text()
    );
    assert!(d.log().contains("tries=3"), "{}", d.log());
}

#[test]
fn a_5xx_at_rcpt_bounces_through_the_same_target_and_others_are_delivered() {
    let peer = PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")));
    submit(
        &d,
        "a@example.org",
        &["ok@example.net", "permfail-rcpt@example.net"],
    );
    let notice = wait_bounce(&peer);
    assert_report(
        &notice,
        "a@example.org",
        "permfail-rcpt@example.net",
        "5.1.1",
    );
    assert!(
        notice.text().contains("No such user (test)"),
        "{}",
        notice.text()
    );
    let got = peer.messages();
    let delivered: Vec<_> = got.iter().filter(|m| !m.sender().is_empty()).collect();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].recipients(), vec!["ok@example.net"]);
    assert!(wait_for(LONG, || d.queued().is_empty()));
    // Permanent means never again.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(peer.rcpt_tries("permfail-rcpt@example.net"), 1);
    assert!(d.log().contains("status=bounced (550 5.1.1"), "{}", d.log());
}

#[test]
fn a_4xx_after_data_is_retried_for_every_recipient() {
    let peer = PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")).queue("max_tries = 2"));
    submit(
        &d,
        "a@example.org",
        &["tempfail-data@example.net", "x@example.net"],
    );
    let notice = wait_bounce(&peer);
    // Both recipients shared the failed DATA: both were tried twice and both
    // are in the notice.
    assert_eq!(peer.rcpt_tries("tempfail-data@example.net"), 2);
    assert_eq!(peer.rcpt_tries("x@example.net"), 2);
    let text = notice.text();
    assert!(
        text.contains("tempfail-data@example.net") && text.contains("x@example.net"),
        "{text}"
    );
    assert!(text.contains("Status: 4.3.0"), "{text}");
}

#[test]
fn a_5xx_after_data_bounces_at_once() {
    let peer = PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")));
    submit(&d, "a@example.org", &["permfail-data@example.net"]);
    let notice = wait_bounce(&peer);
    assert_report(
        &notice,
        "a@example.org",
        "permfail-data@example.net",
        "5.6.0",
    );
    // The notice carries the original's header.
    assert!(
        notice.text().contains("Subject: relay test"),
        "{}",
        notice.text()
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(peer.rcpt_tries("permfail-data@example.net"), 1);
}

#[test]
fn no_notice_is_sent_for_mail_from_the_null_sender() {
    let peer = PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")));
    submit(&d, "", &["permfail-rcpt@example.net", "ok@example.net"]);
    peer.wait_messages(1, LONG);
    assert!(d.wait_log("status=bounced", LONG));
    assert!(wait_for(LONG, || d.queued().is_empty()));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(peer.messages().len(), 1, "{:?}", peer.events());
}

#[test]
fn lmtp_reports_each_recipient_after_data() {
    let peer = PyServer::start(&["--lmtp"]);
    let d = Daemon::start(&Setup::to(&peer.url("lmtp")).queue("max_tries = 3"));
    submit(
        &d,
        "a@example.org",
        &[
            "ok@example.net",
            "tempfail-data@example.net",
            "permfail-data@example.net",
        ],
    );
    // The permanent failure is reported at once, through LMTP too.
    let notice = wait_bounce(&peer);
    assert_report(
        &notice,
        "a@example.org",
        "permfail-data@example.net",
        "5.2.2",
    );
    assert!(
        notice.text().contains("Over quota for good"),
        "{}",
        notice.text()
    );
    // The temporary one is retried alone until max_tries, then reported.
    assert!(
        wait_for(LONG, || bounces(&peer.messages()).len() == 2),
        "{:?}",
        peer.events()
    );
    let second = bounces(&peer.messages()).remove(1);
    assert_report(
        &second,
        "a@example.org",
        "tempfail-data@example.net",
        "4.2.2",
    );
    assert_eq!(peer.rcpt_tries("tempfail-data@example.net"), 3);
    assert_eq!(peer.rcpt_tries("ok@example.net"), 1, "delivered twice");
    assert_eq!(peer.rcpt_tries("permfail-data@example.net"), 1);
    let delivered: Vec<_> = peer
        .messages()
        .into_iter()
        .filter(|m| !m.sender().is_empty())
        .collect();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].recipients(), vec!["ok@example.net"]);
    // LHLO, not EHLO.
    assert!(peer
        .events()
        .iter()
        .all(|e| e["step"] != "ehlo" || e["name"] == "mq.test"));
}

#[test]
fn lmtp_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("lmtp.sock");
    let peer = PyServer::start(&["--lmtp", "--unix", socket.to_str().unwrap()]);
    let d = Daemon::start(&Setup::to(&format!("lmtp+unix://{}", socket.display())));
    submit(&d, "a@example.org", &["ok@example.net"]);
    let got = peer.wait_messages(1, LONG);
    assert_eq!(got[0].recipients(), vec!["ok@example.net"]);
    assert!(d.wait_log("status=sent", LONG));
}

#[test]
fn a_message_over_the_servers_size_limit_bounces_with_5_3_4() {
    let peer = PyServer::start(&["--size", "2000"]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")));
    let mut c = Client::connect(d.addr()).unwrap();
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    big.resize(5000, b'x');
    big.extend_from_slice(b"\r\n");
    queued_id(&c.mail("a@example.org", &["b@example.net"], &big));
    let notice = wait_bounce(&peer);
    assert_report(&notice, "a@example.org", "b@example.net", "5.3.4");
    // Refused before MAIL: the server never saw the big message's envelope.
    assert_eq!(peer.rcpt_tries("b@example.net"), 0);
}

#[test]
fn a_message_that_needs_smtputf8_fails_with_5_6_7_where_it_is_not_offered() {
    let peer = PyServer::start(&["--no-smtputf8"]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")));
    let mut c = Client::connect(d.addr()).unwrap();
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<a@example.org> SMTPUTF8")
        .expect(250, "2.1.0");
    c.cmd("RCPT TO:<jürgen@example.net>").expect(250, "2.1.5");
    c.cmd("DATA").expect(354, "");
    queued_id(&c.data_raw(&dot_stuff(MSG)));
    assert!(d.wait_log("status=bounced", LONG), "{}", d.log());
    assert!(d.log().contains("5.6.7"), "{}", d.log());
    assert_eq!(peer.rcpt_tries("jürgen@example.net"), 0);
}

#[test]
fn smtp_sink_receives_the_message_and_the_log_line_has_the_operator_shape() {
    let sink = SmtpSink::start(&[]);
    let d = Daemon::start(&Setup::to(&sink.url("smtp")));
    let id = submit(&d, "a@example.org", &["b@example.net"]);
    let dump = &wait_sink(&d, &sink, 1)[0];
    assert!(dump.contains("X-Mail-Args: <a@example.org>"), "{dump}");
    assert!(dump.contains("X-Rcpt-Args: <b@example.net>"), "{dump}");
    assert!(dump.contains(&format!("with ESMTP id {id}")), "{dump}");
    // The queue added Date and Message-ID to the header, which ends as
    // the message's did.
    assert!(dump.contains("Subject: relay test\n"), "{dump}");
    assert!(dump.contains("\nMessage-ID: <"), "{dump}");
    assert!(dump.contains("\n\nHello.\n"), "{dump}");
    let expected = format!(
        "{id}: to=<b@example.net>, relay=127.0.0.1[127.0.0.1]:{}, tries=1, delay=",
        sink.port
    );
    assert!(d.wait_log(&expected, LONG), "{}", d.log());
    let line = d
        .log()
        .lines()
        .find(|l| l.contains(&expected))
        .unwrap()
        .to_string();
    assert!(line.ends_with("status=sent (250 2.0.0 Ok)"), "{line}");
}

#[test]
fn dsn_parameters_are_passed_to_a_next_hop_that_offers_dsn() {
    // smtp-sink announces DSN and records the MAIL and RCPT arguments.
    let sink = SmtpSink::start(&[]);
    let d = Daemon::start(&Setup::to(&sink.url("smtp")));
    let mut c = Client::connect(d.addr()).unwrap();
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<a@example.org> RET=HDRS ENVID=abc+2Bdef")
        .expect(250, "2.1.0");
    c.cmd("RCPT TO:<b@example.net> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;orig+2Bb@example.net")
        .expect(250, "2.1.5");
    c.cmd("DATA").expect(354, "");
    queued_id(&c.data_raw(&dot_stuff(MSG)));
    let dump = &wait_sink(&d, &sink, 1)[0];
    let mail = dump
        .lines()
        .find(|l| l.starts_with("X-Mail-Args:"))
        .unwrap();
    let rcpt = dump
        .lines()
        .find(|l| l.starts_with("X-Rcpt-Args:"))
        .unwrap();
    assert!(
        mail.contains("RET=HDRS") && mail.contains("ENVID=abc+2Bdef"),
        "{mail}"
    );
    assert!(rcpt.contains("NOTIFY=SUCCESS,DELAY"), "{rcpt}");
    assert!(rcpt.contains("ORCPT=rfc822;orig+2Bb@example.net"), "{rcpt}");
}

#[test]
fn several_messages_are_delivered_to_smtp_sink() {
    let sink = SmtpSink::start(&[]);
    let d = Daemon::start(&Setup::to(&sink.url("smtp")));
    let mut c = Client::connect(d.addr()).unwrap();
    for i in 0..20 {
        let rcpt = format!("r{i}@example.net");
        queued_id(&c.mail("a@example.org", &[&rcpt], MSG));
        c.cmd("RSET").expect(250, "2.0.0");
    }
    let dumps = wait_sink(&d, &sink, 20);
    assert_eq!(dumps.len(), 20);
    for i in 0..20 {
        let needle = format!("X-Rcpt-Args: <r{i}@example.net>");
        assert_eq!(
            dumps.iter().filter(|m| m.contains(&needle)).count(),
            1,
            "{needle}"
        );
    }
    assert!(wait_for(LONG, || d.queued().is_empty()));
}

#[test]
fn a_refused_connection_is_a_temporary_failure() {
    // Setup::default() delivers to a port nobody listens on.
    let d = Daemon::start(&Setup::default());
    submit(&d, "a@example.org", &["b@example.net"]);
    assert!(d.wait_log("tries=2", LONG), "{}", d.log());
    let log = d.log();
    assert!(
        log.contains("status=deferred (451 4.4.1 connect to 127.0.0.1[127.0.0.1]:"),
        "{log}"
    );
    assert!(!log.contains("status=bounced"), "{log}");
}

#[test]
fn a_server_slower_than_command_timeout_is_a_temporary_failure() {
    // smtp-sink waits 5 s before answering DATA; the client waits 1 s.
    let sink = SmtpSink::start(&["-w", "5"]);
    let d = Daemon::start(&Setup::to(&sink.url("smtp")).delivery("command_timeout = \"1s\""));
    let started = std::time::Instant::now();
    submit(&d, "a@example.org", &["b@example.net"]);
    assert!(d.wait_log("status=deferred", LONG), "{}", d.log());
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(
        d.log().contains("status=deferred (451 4.4.2"),
        "{}",
        d.log()
    );
}

#[test]
fn a_server_that_hangs_up_or_says_421_is_a_temporary_failure() {
    // -q: disconnect without a reply after RCPT; -Q: 421 and disconnect.
    for option in ["-q", "-Q"] {
        let sink = SmtpSink::start(&[option, "RCPT"]);
        let d = Daemon::start(&Setup::to(&sink.url("smtp")));
        submit(&d, "a@example.org", &["b@example.net"]);
        assert!(d.wait_log("tries=2", LONG), "{option}: {}", d.log());
        let log = d.log();
        assert!(log.contains("status=deferred (4"), "{option}: {log}");
        assert!(!log.contains("status=bounced"), "{option}: {log}");
        assert_eq!(sink.count(), 0);
    }
}

#[test]
fn lmtp_expects_replies_only_for_the_recipients_it_accepted() {
    let peer = PyServer::start(&["--lmtp"]);
    let d = Daemon::start(
        &Setup::to(&peer.url("lmtp"))
            .queue("max_tries = 1")
            .delivery("command_timeout = \"2s\"\ndata_timeout = \"2s\""),
    );
    submit(
        &d,
        "a@example.org",
        &[
            "permfail-rcpt@example.net",
            "ok@example.net",
            "tempfail-data@example.net",
        ],
    );
    // Two recipients got past RCPT, so two replies follow the dot; waiting
    // for a third would time out and defer the delivered one.
    let got = peer.wait_messages(1, LONG);
    assert_eq!(got[0].recipients(), vec!["ok@example.net"]);
    // One log line per recipient, written one after the other.
    assert!(
        wait_for(LONG, || ["to=<ok@", "452 4.2.2", "550 5.1.1"]
            .iter()
            .all(|n| d.log().contains(n))),
        "{}",
        d.log()
    );
    let log = d.log();
    let ok = log
        .lines()
        .find(|l| l.contains("to=<ok@example.net>"))
        .unwrap();
    assert!(ok.contains("status=sent (250 "), "{ok}");
    assert!(
        log.contains("to=<tempfail-data@example.net>") && log.contains("452 4.2.2"),
        "{log}"
    );
    assert!(log.contains("550 5.1.1"), "{log}");
}

#[test]
fn a_utf8_address_goes_to_a_server_that_offers_smtputf8() {
    let peer = PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")));
    let mut c = Client::connect(d.addr()).unwrap();
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<andré@example.org> SMTPUTF8")
        .expect(250, "2.1.0");
    c.cmd("RCPT TO:<jürgen@example.net>").expect(250, "2.1.5");
    c.cmd("DATA").expect(354, "");
    let id = queued_id(&c.data_raw(&dot_stuff(MSG)));
    let got = peer.wait_messages(1, LONG);
    assert_eq!(got[0].sender(), "andré@example.org");
    assert_eq!(got[0].recipients(), vec!["jürgen@example.net"]);
    let options = got[0].meta["mail_options"].to_string();
    assert!(options.contains("SMTPUTF8"), "{options}");
    assert!(
        got[0].text().contains(&format!("with UTF8SMTP id {id}")),
        "{}",
        got[0].text()
    );
}

#[test]
fn a_big_message_with_dots_and_8bit_bytes_arrives_unchanged() {
    let peer = PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")));
    // About 3 MB of CRLF lines of every length below the 1000 octets of
    // RFC 5321 (dot and CRLF included), many starting with dots, so
    // dot-stuffing meets every buffer boundary.
    // Date and Message-ID given: the queue adds nothing to it.
    let mut body =
        b"Subject: big\r\nDate: Tue, 1 Dec 2026 12:00:00 +0000\r\nMessage-ID: <big@example.org>\r\n\r\n"
            .to_vec();
    let mut n: u32 = 1;
    while body.len() < 3_000_000 {
        n = n.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let len = (n >> 8) as usize % 996;
        if n % 3 == 0 {
            body.push(b'.');
        }
        body.extend((0..len).map(|i| match (i as u32 + n) % 256 {
            b if b == u32::from(b'\r') || b == u32::from(b'\n') => b'x',
            b => b as u8,
        }));
        body.extend_from_slice(b"\r\n");
    }
    let mut c = Client::connect(d.addr()).unwrap();
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd(&format!(
        "MAIL FROM:<a@example.org> BODY=8BITMIME SIZE={}",
        body.len()
    ))
    .expect(250, "2.1.0");
    c.cmd("RCPT TO:<b@example.net>").expect(250, "2.1.5");
    c.cmd("DATA").expect(354, "");
    queued_id(&c.data_raw(&dot_stuff(&body)));
    let got = peer.wait_messages(1, LONG);
    assert_eq!(
        got[0].sender(),
        "a@example.org",
        "not delivered: {}",
        d.log()
    );
    assert!(got[0].body.ends_with(&body), "the body changed on the way");
    assert_eq!(
        got[0].body.len() - body.len(),
        got[0].text().find("Subject: big").unwrap()
    );
}

/// What the client had sent past MAIL before the reply, per MAIL.
fn pending_at_mail(peer: &PyServer) -> Vec<String> {
    peer.events()
        .iter()
        .filter(|e| e["step"] == "mail")
        .map(|e| e["pending"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn the_envelope_is_pipelined_only_when_the_server_offers_it() {
    let peer = PyServer::start(&["--pipelining"]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")));
    submit(&d, "a@example.org", &["b@example.net", "c@example.net"]);
    peer.wait_messages(1, LONG);
    let pending = pending_at_mail(&peer);
    assert!(
        pending[0].contains("RCPT TO:<b@example.net>")
            && pending[0].contains("RCPT TO:<c@example.net>")
            && pending[0].contains("DATA"),
        "{pending:?}"
    );
    // Every recipient refused: the pipelined DATA is refused as well, no
    // body goes out, and the session stays in step for the next message.
    submit(&d, "a@example.org", &["permfail-rcpt-1@example.net"]);
    assert!(d.wait_log("status=bounced", LONG), "{}", d.log());
    submit(&d, "a@example.org", &["d@example.net"]);
    let got = peer.wait_messages(3, LONG);
    let to_d = got
        .iter()
        .filter(|m| m.recipients() == vec!["d@example.net".to_string()])
        .count();
    assert_eq!(to_d, 1, "{:?}", peer.events());
    assert!(!got.iter().any(|m| m
        .recipients()
        .contains(&"permfail-rcpt-1@example.net".to_string())));
    assert!(!d.log().contains("out of step"), "{}", d.log());

    let peer = PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")));
    submit(&d, "a@example.org", &["b@example.net", "c@example.net"]);
    peer.wait_messages(1, LONG);
    assert_eq!(pending_at_mail(&peer), vec![String::new()]);
}

#[test]
fn lmtp_to_smtp_sink() {
    let sink = SmtpSink::start(&["-L"]);
    let d = Daemon::start(&Setup::to(&sink.url("lmtp")));
    submit(&d, "a@example.org", &["b@example.net", "c@example.net"]);
    let dump = &wait_sink(&d, &sink, 1)[0];
    assert!(dump.contains("X-Client-Proto: LMTP"), "{dump}");
    assert!(dump.contains("X-Rcpt-Args: <b@example.net>"), "{dump}");
    assert!(dump.contains("X-Rcpt-Args: <c@example.net>"), "{dump}");
    let log = d.log();
    assert_eq!(log.matches("status=sent").count(), 2, "{log}");
}

#[test]
fn a_5xx_greeting_defers_instead_of_bouncing() {
    let sink = SmtpSink::start(&["-f", "CONNECT"]);
    let d = Daemon::start(&Setup::to(&sink.url("smtp")).queue("max_tries = 100"));
    let id = submit(&d, "s@example.org", &["r@example.org"]);
    assert!(d.wait_log(
        &format!("{id}: to=<r@example.org>"),
        Duration::from_secs(15)
    ));
    let log = d.log();
    assert!(log.contains("status=deferred (500 5.3.0"), "{log}");
    assert!(!log.contains("status=bounced"), "{log}");
}

#[test]
fn a_message_damaged_in_the_spool_is_never_sent_and_the_sender_is_told() {
    let peer = PyServer::start(&[]);
    // First nothing listens at the target: the message waits in the spool.
    let mut first = Daemon::start(
        &Setup::default().queue("initial_retry = \"1h\"\nmax_retry_interval = \"1h\""),
    );
    let id = submit(&first, "a@example.org", &["b@example.net"]);
    assert!(first.wait_log("status=deferred", LONG), "{}", first.log());
    first.terminate();
    assert!(first.wait_exit(LONG).is_some());

    // One byte of the message body flips on the disk.
    let path = first.spool().join("queue").join(format!("{id}.msg"));
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(6).position(|w| w == b"Hello.").unwrap();
    bytes[at] = b'J';
    std::fs::write(&path, bytes).unwrap();

    // Then the target is up; the message is due at once.
    let (status, _, err) =
        run_mailqueue(&["--config", first.config_path().to_str().unwrap(), "flush"]);
    assert!(status.success(), "{err}");
    let port = common::daemon::free_port();
    let config = first.dir.path().join("second.toml");
    std::fs::write(
        &config,
        Setup::to(&peer.url("smtp")).toml(&first.spool(), port),
    )
    .unwrap();
    let _second = Reaper(spawn_serve(&config, first.dir.path(), "info"));

    let notice = wait_bounce(&peer);
    assert_report(&notice, "a@example.org", "b@example.net", "5.3.0");
    assert!(notice.text().contains("damaged"), "{}", notice.text());
    // The damaged text reached nobody: the only message is the notice.
    assert_eq!(peer.messages().len(), 1, "{:?}", peer.events());
    assert!(!notice.text().contains("Jello."), "{}", notice.text());
}

/// Queues `n` messages over `clients` connections at once, so several
/// deliveries run together and leave several sessions in the pool.
fn submit_many(d: &Daemon, clients: usize, n: usize, tag: &str) {
    std::thread::scope(|s| {
        for c in 0..clients {
            s.spawn(move || {
                let mut client = Client::connect(d.addr()).unwrap();
                for i in (c..n).step_by(clients) {
                    let rcpt = format!("{tag}{i}@example.net");
                    queued_id(&client.mail("a@example.org", &[&rcpt], MSG));
                    client.cmd("RSET").expect(250, "2.0.0");
                }
                client.quit();
            });
        }
    });
}

#[test]
fn after_the_next_hop_restarts_no_message_waits_on_a_dead_pooled_session() {
    // Sessions kept from the first batch are closed by the restart; the
    // second batch must not spend a retry interval (15 minutes here) on
    // any of them.
    let mut sink = SmtpSink::start(&[]);
    let d = Daemon::start(
        &Setup::to(&sink.url("smtp"))
            .queue("workers = 8\ninitial_retry = \"15m\"\nmax_retry_interval = \"15m\"")
            .delivery("connection_cache_time = \"60s\""),
    );
    submit_many(&d, 8, 80, "first");
    wait_sink(&d, &sink, 80);
    sink.restart();
    submit_many(&d, 8, 80, "second");
    let dumps = wait_sink(&d, &sink, 160);
    assert_eq!(dumps.len(), 160);
    let log = d.log();
    assert!(!log.contains("status=deferred"), "{log}");
    assert_eq!(log.matches("status=sent").count(), 160, "{log}");
}

/// A next hop on a thread: answers RCPT for `hostile@` addresses with a
/// 550 of `lines` lines of 2 500 bytes, takes other mail and keeps it.
fn hostile_next_hop(lines: usize) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = std::sync::Arc::clone(&got);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let kept = std::sync::Arc::clone(&kept);
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let _ = w.write_all(b"220 hostile.test ESMTP\r\n");
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let text = String::from_utf8_lossy(&line).to_ascii_uppercase();
                    let reply = if text.starts_with("RCPT") && text.contains("<HOSTILE@") {
                        let filler = "z".repeat(2490);
                        let mut reply = String::new();
                        for i in 0..lines - 1 {
                            reply.push_str(&format!("550-5.1.1 {i:04}{filler}\r\n"));
                        }
                        reply.push_str("550 5.1.1 no such user\r\n");
                        reply
                    } else if text.starts_with("DATA") {
                        let _ = w.write_all(b"354 go ahead\r\n");
                        let mut body = Vec::new();
                        loop {
                            line.clear();
                            if r.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == b".\r\n" {
                                break;
                            }
                            body.extend_from_slice(&line);
                        }
                        kept.lock().unwrap().push(body);
                        "250 2.0.0 kept\r\n".to_string()
                    } else if text.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n");
                        return;
                    } else {
                        "250 ok\r\n".to_string()
                    };
                    if w.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, got)
}

#[test]
fn a_500_kb_reply_leaves_a_bounded_error_and_a_well_formed_bounce() {
    let (port, got) = hostile_next_hop(200);
    let d = Daemon::start(&Setup::to(&format!("smtp://127.0.0.1:{port}")));
    let id = submit(&d, "a@example.org", &["hostile@example.net"]);
    assert!(
        wait_for(LONG, || !got.lock().unwrap().is_empty()),
        "no notice arrived\n{}",
        d.log()
    );
    let bounce = got.lock().unwrap()[0].clone();
    assert!(
        bounce.len() < 16 * 1024,
        "a notice of {} bytes",
        bounce.len()
    );
    for line in bounce.split(|&b| b == b'\n') {
        assert!(line.len() <= 999, "a line of {} bytes", line.len());
    }
    let dsn = common::dsn::parse(&bounce);
    let diag = &dsn.recipients[0]["Diagnostic-Code"];
    assert!(diag.starts_with("smtp; 550 5.1.1 0000zzz"), "{diag}");
    assert!(diag.ends_with("[...]"), "{diag}");
    assert!(diag.len() < 1200, "{}", diag.len());
    assert_eq!(dsn.recipients[0]["Status"], "5.1.1");
    // The log line (and so the stored error) is as short.
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("{id}: to=<hostile@example.net>")))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("status=bounced (550 5.1.1 0000zzz"), "{line}");
    assert!(line.len() < 1400, "a log line of {} bytes", line.len());
}

#[test]
fn a_next_hop_that_reads_the_message_slowly_is_cut_off_at_data_timeout() {
    use std::io::{BufRead, BufReader, Read, Write};
    // Takes the envelope, then reads 16 KiB of the message every 100 ms:
    // each write makes progress, the whole would take some 25 s.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::with_capacity(16 * 1024, s);
                let _ = w.write_all(b"220 slow.test ESMTP\r\n");
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line.to_ascii_uppercase().starts_with("DATA") {
                        break;
                    }
                    if w.write_all(b"250 ok\r\n").is_err() {
                        return;
                    }
                }
                let _ = w.write_all(b"354 go ahead\r\n");
                let _ = tx.send(std::time::Instant::now());
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    std::thread::sleep(Duration::from_millis(100));
                    match r.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    let d = Daemon::start(
        &Setup::to(&format!("smtp://127.0.0.1:{port}"))
            .queue("initial_retry = \"1h\"\nmax_retry_interval = \"1h\"")
            .delivery("data_timeout = \"1s\""),
    );
    let mut message = MSG.to_vec();
    for _ in 0..50_000 {
        message.extend_from_slice(
            b"0123456789012345678901234567890123456789012345678901234567890123456789012345678\r\n",
        );
    }
    let mut c = Client::connect(d.addr()).unwrap();
    let id = queued_id(&c.mail("a@example.org", &["b@example.net"], &message));
    c.quit();
    let data_began = rx.recv_timeout(LONG).expect("DATA never came");
    let expected = format!("{id}: to=<b@example.net>, relay=127.0.0.1[127.0.0.1]:{port}, tries=1");
    assert!(d.wait_log(&expected, LONG), "{}", d.log());
    let took = data_began.elapsed();
    let log = d.log();
    let line = log.lines().find(|l| l.contains(&expected)).unwrap();
    assert!(
        line.ends_with(&format!(
            "status=deferred (451 4.4.2 sending data to 127.0.0.1[127.0.0.1]:{port}: \
             the server did not take it within 1s)"
        )),
        "{line}"
    );
    // The log line comes after the attempt; allow for a busy machine.
    assert!(took < Duration::from_secs(4), "{took:?}");
}
