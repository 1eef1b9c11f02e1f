//! What every message gets checked for and completed with before it is
//! queued, over SMTP and through sendmail alike: a header field RFC 5322
//! allows once, given twice, is refused (554 5.6.0, sendmail exit 65) and
//! nothing is queued; `Date:` and `Message-ID:` are added when missing.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::daemon::{binary, Client, Daemon, Setup};
use common::peers::PyServer;

const LONG: Duration = Duration::from_secs(20);

/// `mailqueue sendmail ARGS` against the daemon's config, `message` on
/// standard input; returns the exit code and standard error.
fn sendmail(d: &Daemon, args: &[&str], message: &[u8]) -> (Option<i32>, String) {
    let mut child = Command::new(binary())
        .args(["--config", d.config_path().to_str().unwrap(), "sendmail"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn incoming_files(d: &Daemon) -> usize {
    std::fs::read_dir(d.spool().join("incoming"))
        .map(|r| r.count())
        .unwrap_or(0)
}

#[test]
fn smtp_refuses_a_repeated_single_field_with_554_5_6_0_and_queues_nothing() {
    let d = Daemon::start(&Setup::default());
    let mut c = Client::connect(d.addr()).unwrap();
    for (name, message) in [
        (
            "Subject",
            &b"From: a@example.org\r\nSubject: one\r\nsubject: two\r\n\r\nx\r\n"[..],
        ),
        (
            "From",
            b"From: a@example.org\r\nTo: b@example.net\r\nFrom: c@example.org\r\n\r\nx\r\n",
        ),
        (
            "Message-ID",
            b"Message-ID: <1@x>\r\nMessage-Id:\r\n <2@x>\r\n\r\nx\r\n",
        ),
    ] {
        let r = c.mail("a@example.org", &["b@example.net"], message);
        r.expect(554, "5.6.0");
        assert!(
            r.text().contains(&format!("{name} appears 2 times")),
            "{}",
            r.text()
        );
    }
    // The session goes on, and a good message still goes through.
    c.mail(
        "a@example.org",
        &["b@example.net"],
        b"From: a@example.org\r\nSubject: fine\r\n\r\nx\r\n",
    )
    .expect(250, "2.0.0");
    c.quit();
    assert_eq!(d.queued().len(), 1, "only the good message is queued");
    assert!(
        d.wait_log("NOQUEUE: reject: END-OF-MESSAGE", LONG),
        "{}",
        d.log()
    );
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("NOQUEUE: reject: END-OF-MESSAGE"))
        .unwrap();
    assert!(line.contains("554 5.6.0"), "{line}");
    assert!(line.contains("Subject appears 2 times"), "{line}");
}

#[test]
fn sendmail_refuses_a_repeated_single_field_with_exit_65_and_writes_nothing() {
    let d = Daemon::start(&Setup::default());
    let (code, err) = sendmail(
        &d,
        &["-i", "b@example.net"],
        b"To: b@example.net\nDate: Mon, 1 Dec 2026 10:00:00 +0000\nDate: Tue, 2 Dec 2026 10:00:00 +0000\n\nx\n",
    );
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("Date appears 2 times"), "{err}");
    assert_eq!(incoming_files(&d), 0);
    // sendmail -bs answers as the listener does.
    let (code, _) = sendmail(&d, &["-bs"], b"HELO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nCc: a@b.example\r\nCc: c@d.example\r\n\r\nx\r\n.\r\nQUIT\r\n");
    assert_eq!(code, Some(0));
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.queued().is_empty(), "{}", d.log());
    assert_eq!(incoming_files(&d), 0);
}

#[test]
fn date_and_message_id_are_added_to_smtp_mail_that_lacks_them() {
    let peer = PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")));
    let mut c = Client::connect(d.addr()).unwrap();
    c.mail(
        "a@example.org",
        &["b@example.net"],
        b"From: a@example.org\r\nSubject: bare\r\n\r\nbody line\r\n",
    )
    .expect(250, "2.0.0");
    c.mail(
        "a@example.org",
        &["b@example.net"],
        b"From: a@example.org\r\nDate: Mon, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <kept@example.org>\r\n\r\nbody line\r\n",
    )
    .expect(250, "2.0.0");
    c.quit();
    let got = peer.wait_messages(2, LONG);
    let bare = got
        .iter()
        .find(|m| m.text().contains("Subject: bare"))
        .unwrap()
        .text();
    let parsed = mailparse::parse_mail(bare.as_bytes()).unwrap();
    let h = &parsed.headers;
    use mailparse::MailHeaderMap;
    let id = h.get_first_value("Message-ID").expect(&bare);
    assert!(id.starts_with('<') && id.ends_with("@mq.test>"), "{id}");
    let date = h.get_first_value("Date").expect(&bare);
    assert!(mailparse::dateparse(&date).is_ok(), "{date}");
    assert_eq!(parsed.get_body().unwrap().trim_end(), "body line");
    // Nothing is added to, or taken from, a complete message.
    let kept = got
        .iter()
        .find(|m| m.text().contains("<kept@example.org>"))
        .unwrap()
        .text();
    assert_eq!(kept.matches("Message-ID:").count(), 1, "{kept}");
    assert_eq!(kept.matches("Date:").count(), 1, "{kept}");
    assert!(kept.ends_with("\r\n\r\nbody line\r\n"), "{kept:?}");
}
