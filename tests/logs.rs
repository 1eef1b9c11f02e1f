//! The daemon's log lines, as an operator greps them: refusals in
//! Postfix's `NOQUEUE: reject:` shape, where a queued message came from,
//! the next hop's reply for every outcome, removals, and the journald
//! format.

mod common;

use std::time::Duration;

use common::daemon::{dot_stuff, queued_id, Client, Daemon, Setup};

const LONG: Duration = Duration::from_secs(15);
const MSG: &[u8] = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nHello.\r\n";

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

/// The log's lines that contain `needle`, from `needle` on.
fn lines_with(d: &Daemon, needle: &str) -> Vec<String> {
    d.log()
        .lines()
        .filter_map(|l| l.find(needle).map(|at| l[at..].to_string()))
        .collect()
}

/// Waits for a line containing `needle`; returns it from `needle` on.
#[track_caller]
fn wait_line(d: &Daemon, needle: &str) -> String {
    assert!(d.wait_log(needle, LONG), "no {needle:?} in:\n{}", d.log());
    lines_with(d, needle).remove(0)
}

#[test]
fn a_relay_refusal_is_logged_in_postfix_shape() {
    let d = daemon_with("relay_networks = [\"10.0.0.0/8\"]");
    let mut c = connect(&d);
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<x@example.net>").expect(554, "5.7.1");
    let line = wait_line(&d, "NOQUEUE: reject: RCPT");
    assert_eq!(
        line,
        "NOQUEUE: reject: RCPT from [127.0.0.1]: 554 5.7.1 <x@example.net>: Relay access \
         denied; from=<a@example.org> to=<x@example.net> proto=ESMTP helo=<client.test>"
    );
    c.cmd("DATA").expect(554, "5.5.1");
    let line = wait_line(&d, "NOQUEUE: reject: DATA");
    assert_eq!(
        line,
        "NOQUEUE: reject: DATA from [127.0.0.1]: 554 5.5.1 Error: no valid recipients; \
         from=<a@example.org> proto=ESMTP helo=<client.test>"
    );
}

#[test]
fn refusals_at_mail_rcpt_and_end_of_message_are_logged() {
    let d = daemon_with("max_message_size = 1000\nmax_recipients = 1");
    let mut c = connect(&d);
    c.cmd("HELO client.test").expect(250, "");
    c.cmd("MAIL FROM:<a@example.org> SIZE=5000")
        .expect(552, "5.3.4");
    c.cmd("MAIL FROM:<not an address>").expect(553, "5.1.7");
    c.cmd("MAIL FROM:<a@example.org> BODY=9BIT")
        .expect(501, "5.5.4");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<b@example.org> FOO=1").expect(555, "5.5.4");
    c.cmd("RCPT TO:<b@example.org>").expect(250, "2.1.5");
    c.cmd("RCPT TO:<c@example.org>").expect(452, "4.5.3");
    c.cmd("DATA").expect(354, "");
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(2000));
    c.data_raw(&dot_stuff(big.as_bytes())).expect(552, "5.3.4");
    assert!(
        d.wait_log("NOQUEUE: reject: END-OF-MESSAGE", LONG),
        "{}",
        d.log()
    );
    let lines = lines_with(&d, "NOQUEUE: reject: ");
    let expected = [
        "MAIL from [127.0.0.1]: 552 5.3.4 Message size exceeds fixed limit; \
         from=<a@example.org> proto=SMTP helo=<client.test>",
        "MAIL from [127.0.0.1]: 553 5.1.7 ",
        "MAIL from [127.0.0.1]: 501 5.5.4 Bad BODY parameter; from=<a@example.org> proto=SMTP",
        "RCPT from [127.0.0.1]: 555 5.5.4 Unsupported parameter FOO; from=<a@example.org> \
         to=<b@example.org> proto=SMTP helo=<client.test>",
        "RCPT from [127.0.0.1]: 452 4.5.3 Error: too many recipients; from=<a@example.org> \
         to=<c@example.org> proto=SMTP helo=<client.test>",
        "END-OF-MESSAGE from [127.0.0.1]: 552 5.3.4 Error: message file too big; \
         from=<a@example.org> to=<b@example.org> proto=SMTP helo=<client.test>",
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (line, want) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(&format!("NOQUEUE: reject: {want}")),
            "{line}\nwanted {want}"
        );
    }
    assert!(
        lines[1].ends_with("from=<not an address> proto=SMTP helo=<client.test>"),
        "{}",
        lines[1]
    );
    assert!(d.queued().is_empty());
}

#[test]
fn what_a_client_writes_cannot_forge_or_flood_log_lines() {
    let d = daemon_with("relay_networks = [\"10.0.0.0/8\"]");
    let mut c = connect(&d);
    let helo = format!("EHLO x\u{1b}[31m{}", "h".repeat(600));
    c.cmd(&helo).expect(250, "");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
    for i in 0..30 {
        c.cmd(&format!("RCPT TO:<x{i}@example.net>"))
            .expect(554, "5.7.1");
    }
    c.cmd("NOOP").expect(250, "");
    assert!(
        d.wait_log("the next ones are not logged", LONG),
        "{}",
        d.log()
    );
    let lines = lines_with(&d, "NOQUEUE: reject: RCPT");
    assert_eq!(lines.len(), 20, "{lines:#?}");
    assert!(lines[0].contains("helo=<x\\x1b[31mhhh"), "{}", lines[0]);
    assert!(lines[0].ends_with("hhh...>"), "{}", lines[0]);
    assert!(lines[0].len() < 600, "{}", lines[0]);
    assert!(!d.log().contains('\u{1b}'));
}

#[test]
fn a_message_accepted_is_not_logged_as_a_refusal() {
    let d = daemon_with("");
    let mut c = connect(&d);
    let id = queued_id(&c.mail("a@example.org", &["b@example.org"], MSG));
    assert!(d.wait_log(&id, LONG));
    assert!(!d.log().contains("NOQUEUE"), "{}", d.log());
}

#[test]
fn a_message_queued_over_smtp_is_logged_with_its_client_and_message_id() {
    let d = daemon_with("");
    let mut c = connect(&d);
    let msg = b"From: a@example.org\r\nMessage-ID:\r\n <app.1402.\x1b7@example.org>\r\n\
                Subject: hi\r\n\r\nMessage-ID: <not-this@example.org>\r\n";
    let id = queued_id(&c.mail("a@example.org", &["b@example.org", "c@example.org"], msg));
    let line = wait_line(&d, &format!("{id}: from="));
    assert!(
        line.starts_with(&format!(
            "{id}: from=<a@example.org>, size={}, nrcpt=2, client=[127.0.0.1], \
             message-id=<app.1402.\\x1b7@example.org>",
            common::stored_message(&d.spool(), &id).len()
        )),
        "{line}"
    );
    // Without a Message-ID, the one the queue added (for SMTP mail too)
    // is the one logged.
    let id = queued_id(&c.mail("a@example.org", &["b@example.org"], MSG));
    let line = wait_line(&d, &format!("{id}: from="));
    assert!(
        line.contains("nrcpt=1, client=[127.0.0.1], message-id=<"),
        "{line}"
    );
    assert!(line.ends_with("@mq.test>"), "{line}");
}

#[test]
fn a_local_submission_is_logged_with_its_uid_and_message_id() {
    let d = daemon_with("");
    let mut child = std::process::Command::new(common::daemon::binary())
        .args(["--config", d.config_path().to_str().unwrap(), "sendmail"])
        .args(["-i", "-f", "app@example.org", "b@example.org"])
        .env_remove("MAILQUEUE_CONFIG")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        b"Message-Id: <cron.42@host.example>\nSubject: s\n\nbody\n",
    )
    .unwrap();
    assert!(common::daemon::wait_child(&mut child, LONG)
        .unwrap()
        .success());
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    let uid = String::from_utf8(uid.stdout).unwrap();
    let line = wait_line(&d, ": from=<app@example.org>");
    assert!(
        line.ends_with(&format!(
            "nrcpt=1, uid={}, message-id=<cron.42@host.example>",
            uid.trim()
        )),
        "{line}"
    );
}

/// `mailqueue --config <the daemon's> args...`; panics unless it succeeds.
fn mq(d: &Daemon, args: &[&str]) {
    let config = d.config_path();
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let (status, out, err) = common::daemon::run_mailqueue(&all);
    assert!(status.success(), "{args:?}: {out}{err}");
}

#[test]
fn a_sent_line_carries_the_next_hops_reply_and_the_message_is_then_removed() {
    let sink = common::peers::SmtpSink::start(&[]);
    let d = Daemon::start(&Setup::to(&sink.url("smtp")));
    let mut c = connect(&d);
    let id = queued_id(&c.mail("a@example.org", &["b@example.net"], MSG));
    let line = wait_line(&d, &format!("{id}: to=<b@example.net>"));
    let relay = format!("relay=127.0.0.1[127.0.0.1]:{}", sink.port);
    assert!(
        line.contains(&format!(", {relay}, tries=1, delay=")),
        "{line}"
    );
    // smtp-sink's reply to the final dot.
    assert!(line.ends_with(", status=sent (250 2.0.0 Ok)"), "{line}");
    assert!(d.wait_log(&format!("{id}: removed"), LONG), "{}", d.log());
}

#[test]
fn relay_is_none_without_a_server_and_host_ip_port_once_one_answered() {
    // Nothing listens on the default target.
    let d = daemon_with("");
    let mut c = connect(&d);
    let id = queued_id(&c.mail("a@example.org", &["b@example.net"], MSG));
    let line = wait_line(&d, &format!("{id}: to=<b@example.net>"));
    assert!(line.contains(", relay=none, tries=1,"), "{line}");
    assert!(
        line.contains("status=deferred (451 4.4.1 connect to 127.0.0.1[127.0.0.1]:"),
        "{line}"
    );

    // A server that refuses in its greeting answered: it is named in full.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in server.incoming().flatten() {
            let mut s = s;
            let _ = std::io::Write::write_all(&mut s, b"554 5.3.2 not now\r\n");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let d = Daemon::start(
        &Setup::to(&format!("smtp://127.0.0.1:{port}"))
            .queue("initial_retry = \"1h\"\nmax_retry_interval = \"1h\""),
    );
    let mut c = connect(&d);
    let id = queued_id(&c.mail("a@example.org", &["b@example.net"], MSG));
    let line = wait_line(&d, &format!("{id}: to=<b@example.net>"));
    assert!(
        line.contains(&format!(", relay=127.0.0.1[127.0.0.1]:{port}, tries=1,")),
        "{line}"
    );
    assert!(
        line.contains("status=deferred (554 5.3.2 not now)"),
        "{line}"
    );
}

#[test]
fn expire_logs_a_line_per_recipient_and_removed_and_delete_logs_removed() {
    let d = daemon_with("");
    let mut c = connect(&d);
    let id = queued_id(&c.mail("a@example.org", &["b@example.net", "c@example.net"], MSG));
    wait_line(
        &d,
        &format!("{id}: to=<c@example.net>, relay=none, tries=1"),
    );
    mq(&d, &["expire", &id]);
    for rcpt in ["b@example.net", "c@example.net"] {
        let line = wait_line(
            &d,
            &format!("{id}: to=<{rcpt}>, relay=none, tries=1, delay="),
        );
        let lines = lines_with(&d, &format!("{id}: to=<{rcpt}>"));
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines[0].contains("status=deferred"), "{line}");
        assert!(
            lines[1].ends_with("status=bounced (expired by the operator)"),
            "{lines:#?}"
        );
    }
    assert!(d.wait_log(&format!("{id}: removed"), LONG), "{}", d.log());

    let id = queued_id(&c.mail("a@example.org", &["b@example.net"], MSG));
    wait_line(&d, &format!("{id}: to=<b@example.net>"));
    mq(&d, &["delete", &id]);
    assert!(d.wait_log(&format!("{id}: removed"), LONG), "{}", d.log());
    assert!(
        d.wait_log(&format!("{id}: deleted by the operator"), LONG),
        "{}",
        d.log()
    );
}

#[test]
fn the_journald_format_has_priorities_and_no_timestamp_of_ours() {
    let d = Daemon::start(
        &Setup::default()
            .set("log", "format = \"journald\"")
            .queue("initial_retry = \"1h\"\nmax_retry_interval = \"1h\"")
            .listen("relay_networks = [\"10.0.0.0/8\"]"),
    );
    let mut c = connect(&d);
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<x@example.net>").expect(554, "5.7.1");
    assert!(
        d.wait_log("<6>NOQUEUE: reject: RCPT from [127.0.0.1]: 554 5.7.1", LONG),
        "{}",
        d.log()
    );
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.starts_with("<6>listening for SMTP on 127.0.0.1:")),
        "{log}"
    );
    for line in log.lines() {
        assert!(
            ["<3>", "<4>", "<6>"].iter().any(|p| line.starts_with(p)),
            "a line without its priority: {line}\n{log}"
        );
        assert!(!line.contains("INFO") && !line.contains("Z "), "{line}");
    }
}
