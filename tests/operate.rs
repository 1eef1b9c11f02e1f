//! Operating the queue with the real binary: the sendmail command (and
//! its links), the management commands with the daemon running and
//! stopped, and the quotas.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{
    binary, queued_id, run_mailqueue, spawn_serve, wait_child, Client, Daemon, Setup,
};
use common::peers::SmtpSink;
use common::wait_for;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(15);
const MSG: &[u8] = b"Subject: operate\r\n\r\nbody\r\n";

/// Runs `program args` with `stdin`; returns (exit code, stderr).
fn run_with_input(
    program: &Path,
    args: &[&str],
    env: &[(&str, &Path)],
    stdin: &[u8],
) -> (i32, String) {
    let mut cmd = Command::new(program);
    cmd.args(args).env_remove("MAILQUEUE_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let status = wait_child(&mut child, LONG).expect("sendmail did not exit");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code().unwrap_or(-1), err)
}

fn sendmail(config: &Path, args: &[&str], stdin: &[u8]) -> (i32, String) {
    let mut all = vec!["--config", config.to_str().unwrap(), "sendmail"];
    all.extend_from_slice(args);
    run_with_input(Path::new(binary()), &all, &[], stdin)
}

fn mq(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let (status, out, err) = run_mailqueue(&all);
    (status.code().unwrap_or(-1), out, err)
}

/// `list --json`, one value per message.
fn list_json(config: &Path) -> Vec<Value> {
    let (code, out, err) = mq(config, &["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn by_id<'a>(list: &'a [Value], id: &str) -> Option<&'a Value> {
    list.iter().find(|m| m["queue_id"] == id)
}

fn tries(config: &Path, id: &str) -> u64 {
    by_id(&list_json(config), id).unwrap()["recipients"][0]["tries"]
        .as_u64()
        .unwrap()
}

fn submit(d: &Daemon, to: &str) -> String {
    let mut c = Client::connect(d.addr()).unwrap();
    let r = c.mail("sender@example.org", &[to], MSG);
    c.quit();
    queued_id(&r)
}

/// Stops a daemon and waits for it to exit cleanly.
fn stop(d: &mut Daemon) {
    d.terminate();
    let status = d.wait_exit(LONG).expect("daemon did not stop");
    assert!(status.success());
}

/// Starts a second daemon process on `d`'s config and spool.
fn restart(d: &Daemon) -> std::process::Child {
    let child = spawn_serve(&d.config_path(), d.dir.path(), "info");
    let spool = d.spool();
    assert!(
        wait_for(LONG, || spool.join("control.sock").exists()),
        "daemon did not come back"
    );
    child
}

#[test]
fn sendmail_without_a_daemon_waits_then_is_delivered_with_headers_completed() {
    let sink = SmtpSink::start(&[]);
    let mut d = Daemon::start(&Setup::to(&sink.url("smtp")));
    stop(&mut d);
    let message = b"To: a@example.org\nCc: Bee <b@example.org>\nBcc: c@example.org\nSubject: via sendmail\n\nline one\n.\nafter the dot\n";
    let (code, err) = sendmail(
        &d.config_path(),
        &["-t", "-i", "-f", "sender@example.org", "-F", "Send Er"],
        message,
    );
    assert_eq!(code, 0, "{err}");
    let waiting = common::files_in(&d.spool().join("incoming"));
    assert_eq!(waiting.len(), 1, "{waiting:?}");

    let mut child = restart(&d);
    let msgs = {
        assert!(wait_for(LONG, || sink.count() == 1), "not delivered");
        sink.messages()
    };
    let m = &msgs[0];
    for rcpt in ["<a@example.org>", "<b@example.org>", "<c@example.org>"] {
        assert!(
            m.contains(&format!("X-Rcpt-Args: {rcpt}")),
            "{rcpt} missing:\n{m}"
        );
    }
    assert!(m.contains("X-Mail-Args: <sender@example.org>"), "{m}");
    assert!(!m.contains("Bcc:"), "Bcc must be removed:\n{m}");
    assert!(m.contains("From: \"Send Er\" <sender@example.org>"), "{m}");
    assert!(
        m.contains("\nDate: ") && m.contains("\nMessage-ID: <"),
        "{m}"
    );
    assert!(
        m.contains("after the dot"),
        "-i must not stop at a lone dot:\n{m}"
    );
    assert!(common::files_in(&d.spool().join("incoming")).is_empty());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn sendmail_through_a_link_is_picked_up_at_once_by_a_running_daemon() {
    let sink = SmtpSink::start(&[]);
    let d = Daemon::start(&Setup::to(&sink.url("smtp")));
    let links = tempfile::tempdir().unwrap();
    let link = links.path().join("sendmail");
    std::os::unix::fs::symlink(binary(), &link).unwrap();
    let started = Instant::now();
    let (code, err) = run_with_input(
        &link,
        &["-oi", "-fsender@example.org", "rcpt@example.org"],
        &[("MAILQUEUE_CONFIG", &d.config_path())],
        b"Subject: link\n\nhello\n",
    );
    assert_eq!(code, 0, "{err}");
    // The daemon also looks every 5 s; well before that means it was told.
    assert!(
        wait_for(Duration::from_secs(4), || sink.count() == 1),
        "not picked up promptly"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(sink.messages()[0].contains("X-Rcpt-Args: <rcpt@example.org>"));

    // And a link named mailq lists the queue.
    let mailq = links.path().join("mailq");
    std::os::unix::fs::symlink(binary(), &mailq).unwrap();
    let (code, err) = run_with_input(&mailq, &[], &[("MAILQUEUE_CONFIG", &d.config_path())], b"");
    assert_eq!(code, 0, "{err}");
}

#[test]
fn sendmail_reports_usage_and_data_errors_with_sysexits() {
    let d = Daemon::start(&Setup::default());
    let cfg = d.config_path();
    assert_eq!(
        sendmail(&cfg, &["-i"], b"Subject: x\n\nno recipients\n").0,
        64
    );
    assert_eq!(
        sendmail(&cfg, &["-t", "-i"], b"Subject: x\n\nno To either\n").0,
        64
    );
    assert_eq!(
        sendmail(
            &cfg,
            &["-i", "-f", "not an address", "a@example.org"],
            b"x\n"
        )
        .0,
        65
    );
    assert_eq!(sendmail(&cfg, &["-Z"], b"").0, 64);
    assert!(d.queued().is_empty());
}

#[test]
fn management_commands_work_with_the_daemon_running_and_stopped() {
    // Nothing listens at the target: mail stays, deferred for an hour.
    let setup = Setup::default().queue("initial_retry = \"1h\"\nmax_retry_interval = \"1h\"");
    let mut d = Daemon::start(&setup);
    let cfg = d.config_path();
    let (m1, m2, m3) = (
        submit(&d, "one@example.org"),
        submit(&d, "two@example.org"),
        submit(&d, "three@example.org"),
    );
    assert!(wait_for(LONG, || list_json(&cfg)
        .iter()
        .all(|m| m["queue_name"] == "deferred")));

    // list --json: Postfix's field names and types, plus ours.
    let list = list_json(&cfg);
    assert_eq!(list.len(), 3);
    let m = by_id(&list, &m1).unwrap();
    assert!(m["arrival_time"].is_u64() && m["message_size"].is_u64() && m["next_attempt"].is_u64());
    assert_eq!(m["sender"], "sender@example.org");
    let r = &m["recipients"][0];
    assert_eq!(r["address"], "one@example.org");
    assert_eq!(r["status"], "pending");
    assert_eq!(r["tries"], 1);
    assert!(
        r["delay_reason"].as_str().unwrap().starts_with("451 4.4.1"),
        "{r}"
    );
    assert!(m["next_attempt"].as_u64().unwrap() >= m["arrival_time"].as_u64().unwrap() + 3500);

    let (code, out, _) = mq(&cfg, &["list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&m1) && out.contains("two@example.org") && out.contains("3 Requests"),
        "{out}"
    );
    let (code, out, _) = mq(&cfg, &["show", &m1]);
    assert_eq!(code, 0);
    assert!(
        out.contains("<one@example.org> pending tries=1") && out.contains("Subject: operate"),
        "{out}"
    );
    assert!(
        out.contains("expires:") && out.contains("next attempt:"),
        "{out}"
    );

    // Hold survives a flush...
    assert_eq!(mq(&cfg, &["hold", &m1]).0, 0);
    assert_eq!(by_id(&list_json(&cfg), &m1).unwrap()["queue_name"], "hold");
    assert_eq!(mq(&cfg, &["flush"]).0, 0);
    assert!(
        wait_for(LONG, || tries(&cfg, &m2) == 2),
        "flush did not retry the others"
    );
    assert_eq!(tries(&cfg, &m1), 1, "a held message was attempted");
    assert!(mq(&cfg, &["list"]).1.contains(&format!("{m1}!")));

    // ...and delete, with an unknown id refused.
    assert_eq!(mq(&cfg, &["delete", &m2]).0, 0);
    assert!(by_id(&list_json(&cfg), &m2).is_none());
    let (code, _, err) = mq(&cfg, &["delete", &m2]);
    assert_ne!(code, 0);
    assert!(err.contains("no message"), "{err}");
    let (code, _, err) = mq(&cfg, &["show", "../../etc/passwd"]);
    assert_eq!(code, 64, "{err}");

    // Stopped: the same commands work on the spool directly.
    stop(&mut d);
    assert!(!d.spool().join("control.sock").exists());
    let list = list_json(&cfg);
    assert_eq!(list.len(), 2);
    assert_eq!(by_id(&list, &m1).unwrap()["queue_name"], "hold");
    assert_eq!(mq(&cfg, &["hold", &m3]).0, 0);
    assert_eq!(mq(&cfg, &["release", &m1]).0, 0);
    assert_eq!(
        by_id(&list_json(&cfg), &m1).unwrap()["queue_name"],
        "deferred"
    );
    assert_eq!(mq(&cfg, &["expire", &m1]).0, 0);
    let list = list_json(&cfg);
    assert!(by_id(&list, &m1).is_none());
    let notice = list
        .iter()
        .find(|m| m["sender"] == "")
        .expect("expire must queue a notice");
    assert_eq!(notice["recipients"][0]["address"], "sender@example.org");
    assert!(mq(&cfg, &["show", notice["queue_id"].as_str().unwrap()])
        .1
        .contains("Undelivered Mail"));
    assert_ne!(mq(&cfg, &["release", &m2]).0, 0);

    // Hold survives a restart: m3 stays untried.
    let before = tries(&cfg, &m3);
    let mut child = restart(&d);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(tries(&cfg, &m3), before);
    assert_eq!(by_id(&list_json(&cfg), &m3).unwrap()["queue_name"], "hold");
    assert_eq!(mq(&cfg, &["release", &m3]).0, 0);
    assert!(
        wait_for(LONG, || tries(&cfg, &m3) == before + 1),
        "released message not attempted"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn delete_during_a_running_attempt_is_not_undone_by_its_result() {
    // The sink waits 4 s before answering DATA: the attempt stalls there.
    let sink = SmtpSink::start(&["-w", "4"]);
    let d = Daemon::start(&Setup::to(&sink.url("smtp")));
    let cfg = d.config_path();
    let id = submit(&d, "slow@example.org");
    std::thread::sleep(Duration::from_millis(800));
    let (code, _, err) = mq(&cfg, &["delete", &id]);
    assert_eq!(code, 0, "{err}");
    // The delete did not wait for the attempt: its result is not logged yet.
    assert!(
        !d.log().contains("status=sent"),
        "delete waited for the attempt"
    );
    assert!(list_json(&cfg).is_empty());
    assert!(
        d.wait_log("removed during the attempt", LONG),
        "{}",
        d.log()
    );
    assert!(
        list_json(&cfg).is_empty(),
        "the attempt brought the message back"
    );
    assert!(d.queued().is_empty());
}

#[test]
fn quotas_refuse_new_mail_but_never_a_notice() {
    let setup = Setup::default()
        .queue("max_messages = 2\ninitial_retry = \"1h\"\nmax_retry_interval = \"1h\"");
    let d = Daemon::start(&setup);
    let cfg = d.config_path();
    let m1 = submit(&d, "one@example.org");
    submit(&d, "two@example.org");

    let mut c = Client::connect(d.addr()).unwrap();
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<sender@example.org>").expect(452, "4.3.1");
    c.quit();
    let (code, err) = sendmail(
        &cfg,
        &["-i", "-f", "sender@example.org", "x@example.org"],
        b"Subject: q\n\nfull\n",
    );
    assert_eq!(code, 75, "{err}");
    assert_eq!(list_json(&cfg).len(), 2);

    // Expiring a message makes a notice even though the queue is full.
    assert_eq!(mq(&cfg, &["expire", &m1]).0, 0);
    let list = list_json(&cfg);
    assert!(
        list.iter().any(|m| m["sender"] == ""),
        "notice refused: {list:?}"
    );
}

#[test]
fn stats_count_attempts_and_their_lag_while_the_daemon_runs() {
    let sink = SmtpSink::start(&[]);
    let mut d = Daemon::start(&Setup::to(&sink.url("smtp")));
    let config = d.config_path();
    for n in 0..20 {
        submit(&d, &format!("rcpt{n}@example.net"));
    }
    assert!(wait_for(LONG, || sink.count() >= 20 && d.queued().is_empty()));

    // A worker counts a message out just after removing its files: ask
    // until the counters have caught up with the spool.
    let stats = || {
        let (code, out, err) = mq(&config, &["stats", "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(out.trim()).unwrap()
    };
    assert!(wait_for(LONG, || stats()["messages"] == 0));
    let s = stats();
    assert_eq!(s["messages"], 0, "{s}");
    assert_eq!(s["bytes"], 0, "{s}");
    assert!(s["attempts"].as_u64().unwrap() >= 20, "{s}");
    let (p50, p99, max) = (
        s["lag_p50_us"].as_u64().unwrap(),
        s["lag_p99_us"].as_u64().unwrap(),
        s["lag_max_us"].as_u64().unwrap(),
    );
    assert!(p50 <= p99 && p99 <= max && max > 0, "{s}");
    // Due at once, with workers idle: started well within a second.
    assert!(p50 < 1_000_000, "{s}");
    // The attempts of the last minute are the same ones, so are those
    // of the last 15 minutes.
    for window in ["lag_1m", "lag_15m"] {
        let w = &s[window];
        assert_eq!(w["attempts"], s["attempts"], "{window}: {s}");
        assert_eq!(w["max_us"], s["lag_max_us"], "{window}: {s}");
        assert!(
            w["p50_us"].as_u64().unwrap() <= w["p99_us"].as_u64().unwrap(),
            "{s}"
        );
    }

    let (code, out, _) = mq(&config, &["stats"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("attempts: ") && out.contains("lag p99: "),
        "{out}"
    );
    assert!(out.contains("lag last 1m: p50 "), "{out}");
    assert!(out.contains("lag last 15m: p50 "), "{out}");

    // Stopped: the queue read from the spool, the live counters missing.
    stop(&mut d);
    let (code, out, err) = mq(&config, &["stats"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("daemon: not running"), "{out}");
    assert!(out.contains("messages: 0"), "{out}");
}

#[test]
fn expire_during_a_slow_final_dot_reply_bounces_nothing_that_was_delivered() {
    // The sink waits 3 s before its 250 to the final dot: the attempt is
    // in flight, the message already sent, when the operator expires it.
    let sink = common::faulty::FaultySink::start(&["--reply-delay", "3:3"]);
    let d = Daemon::start(&Setup::to(&sink.url()));
    let cfg = d.config_path();
    let id = submit(&d, "slow@example.org");
    std::thread::sleep(Duration::from_millis(1000));
    let (code, _, err) = mq(&cfg, &["expire", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(d.wait_log("status=sent", LONG), "{}", d.log());
    assert!(
        wait_for(LONG, || d.queued().is_empty()),
        "the message stayed queued:\n{}",
        d.log()
    );
    // A notice would reach the same sink (3 s later, by its delay).
    std::thread::sleep(Duration::from_secs(5));
    let notices: Vec<Value> = sink
        .deliveries()
        .into_iter()
        .filter(|m| m["sender"].as_str().unwrap_or("").is_empty())
        .collect();
    assert!(
        notices.is_empty(),
        "the sender was told a delivered message failed: {notices:?}\n{}",
        d.log()
    );
    assert!(
        !d.log().contains("non-delivery notification"),
        "{}",
        d.log()
    );
    assert_eq!(sink.count(), 1);
}

/// An address of about 200 bytes, the `n`th.
fn long_address(n: usize) -> String {
    let label = |c: char| std::iter::repeat_n(c, 60).collect::<String>();
    format!("u{n}@{}.{}.{}.example", label('a'), label('b'), label('c'))
}

#[test]
fn what_sendmail_reports_queued_pickup_takes() {
    let peer = common::peers::PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")).listen("max_message_size = 100000"));
    let cfg = d.config_path();
    // 400 recipients of 200 bytes: an envelope line over 64 KiB, within
    // max_recipients (1000).
    let rcpts: Vec<String> = (0..400).map(long_address).collect();
    let mut args = vec!["-i", "-f", "a@example.org"];
    args.extend(rcpts.iter().map(String::as_str));
    let (code, err) = sendmail(&cfg, &args, b"Subject: many\n\nhello\n");
    assert_eq!(code, 0, "{err}");
    let got = peer.wait_messages(1, LONG);
    assert_eq!(got[0].recipients().len(), 400, "{}", d.log());
    // A full name that takes a message of nearly max_message_size past
    // what pickup takes is refused by sendmail itself, not quarantined.
    let name = "N".repeat(6000);
    let body = format!("Subject: big\n\n{}\n", "x".repeat(98_000));
    let (code, err) = sendmail(
        &cfg,
        &["-i", "-f", "a@example.org", "-F", &name, "b@example.org"],
        body.as_bytes(),
    );
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("-F"), "{err}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        common::files_in(&d.spool().join("corrupt")).is_empty(),
        "{}",
        d.log()
    );
}

#[test]
fn a_recipient_repeated_in_a_direct_submission_is_queued_once() {
    let peer = common::peers::PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")).listen("max_recipients = 2"));
    let envelope = format!(
        "{{\"sender\":\"a@example.org\",\"recipients\":[{}]}}\n",
        vec!["\"v@example.net\""; 50].join(",")
    );
    let file = d
        .spool()
        .join("incoming")
        .join("0000000000000000000000-1.mail");
    std::fs::write(&file, format!("{envelope}Subject: dup\r\n\r\nx\r\n")).unwrap();
    let (code, _, err) = mq(&d.config_path(), &["flush"]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = sendmail(
        &d.config_path(),
        &["-i", "-f", "a@example.org", "w@example.net"],
        b"Subject: wake\n\nx\n",
    );
    assert_eq!(code, 0, "{err}");
    let got = peer.wait_messages(2, LONG);
    let dup = got
        .iter()
        .find(|m| m.text().contains("Subject: dup"))
        .unwrap();
    assert_eq!(dup.recipients(), vec!["v@example.net"]);
}

/// `mailqueue --config CONFIG args` with `stdin`; (exit code, stdout, stderr).
fn mq_in(config: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("MAILQUEUE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn selection_shape_and_bulk_commands_through_the_daemon() {
    let setup = Setup::default().queue("initial_retry = \"1h\"\nmax_retry_interval = \"1h\"");
    let mut d = Daemon::start(&setup);
    let cfg = d.config_path();
    let net1 = submit(&d, "one@example.net");
    let net2 = submit(&d, "two@Example.NET");
    let com = submit(&d, "three@example.com");
    assert!(wait_for(LONG, || list_json(&cfg)
        .iter()
        .all(|m| m["queue_name"] == "deferred")));
    let ids_of = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["list", "--json"];
        all.extend_from_slice(args);
        let (code, out, err) = mq(&cfg, &all);
        assert_eq!(code, 0, "{err}");
        let mut ids: Vec<String> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["queue_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        ids.sort();
        ids
    };
    let mut nets = vec![net1.clone(), net2.clone()];
    nets.sort();
    assert_eq!(ids_of(&["--domain", "example.net"]), nets);
    assert_eq!(ids_of(&["--domain", "example.com"]), vec![com.clone()]);
    assert_eq!(ids_of(&["--deferred", "--sender", "@example.org"]).len(), 3);
    assert_eq!(ids_of(&["--sender", "sender@example.org"]).len(), 3);
    assert!(ids_of(&["--sender", "other@example.org"]).is_empty());
    assert!(ids_of(&["--older-than", "1h"]).is_empty());
    assert!(ids_of(&["--held"]).is_empty());
    let (code, _, err) = mq(&cfg, &["list", "--older-than", "soon"]);
    assert_eq!(code, 64, "{err}");

    // qshape: recipient domains by age, largest first, a total row.
    let (code, out, err) = mq(&cfg, &["shape"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0]
            .split_whitespace()
            .eq(["T", "5", "10", "20", "40", "80", "160", "320", "640", "1280", "1280+"]),
        "{out}"
    );
    assert!(
        lines[1]
            .split_whitespace()
            .eq(["TOTAL", "3", "3", "0", "0", "0", "0", "0", "0", "0", "0", "0"]),
        "{out}"
    );
    assert!(
        lines[2]
            .trim_start()
            .starts_with("example.net      2      2"),
        "{out}"
    );
    assert!(
        lines[3]
            .trim_start()
            .starts_with("example.com      1      1"),
        "{out}"
    );
    let (code, out, _) = mq(&cfg, &["shape", "--by-sender", "--json"]);
    assert_eq!(code, 0);
    let shape: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(shape["by"], "sender");
    assert_eq!(shape["rows"][1]["domain"], "example.org");
    assert_eq!(shape["rows"][1]["counts"][0], 3);

    // show --body: the whole message, as queued.
    let (code, out, _) = mq(&cfg, &["show", "--body", &com]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Subject: operate\r\n") && out.ends_with("\r\nbody\r\n"),
        "{out:?}"
    );

    // flush --domain (postqueue -s): only those are retried.
    let (code, out, err) = mq(&cfg, &["flush", "--domain", "example.net"]);
    assert_eq!((code, out.as_str()), (0, "Flushed: 2 messages\n"), "{err}");
    assert!(wait_for(LONG, || tries(&cfg, &net1) == 2 && tries(&cfg, &net2) == 2));
    assert_eq!(tries(&cfg, &com), 1);

    // Bulk commands print what they did; ids on standard input.
    let (code, out, err) = mq(&cfg, &["hold", "ALL", "--domain", "example.com"]);
    assert_eq!((code, out.as_str()), (0, "Held: 1 message\n"), "{err}");
    assert_eq!(ids_of(&["--held"]), vec![com.clone()]);
    let (code, out, err) = mq(&cfg, &["release", "ALL"]);
    assert_eq!((code, out.as_str()), (0, "Released: 3 messages\n"), "{err}");
    let (code, out, err) = mq_in(&cfg, &["expire", "-"], &format!("{net1}\n\n{net2}\n"));
    assert_eq!((code, out.as_str()), (0, "Expired: 2 messages\n"), "{err}");
    assert_eq!(ids_of(&["--sender", "<>"]).len(), 2, "two notices");
    let (code, _, err) = mq(&cfg, &["delete"]);
    assert_eq!(code, 64, "delete with no selection: {err}");
    let (code, _, err) = mq(&cfg, &["delete", "ALL", &com]);
    assert_eq!(code, 64, "{err}");
    let (code, out, err) = mq(&cfg, &["delete", "ALL"]);
    assert_eq!((code, out.as_str()), (0, "Deleted: 3 messages\n"), "{err}");
    assert!(list_json(&cfg).is_empty());

    // What sendmail left in incoming/ while no daemon ran is listed, and
    // once picked up it is a message `show` shows.
    stop(&mut d);
    let (code, err) = sendmail(
        &cfg,
        &["-i", "-f", "late@example.org", "x@example.net"],
        b"Subject: late\n\nhi\n",
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = mq(&cfg, &["list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("1 file in incoming/") && out.contains("(incoming)"),
        "{out}"
    );
    let listed = list_json(&cfg);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["queue_name"], "incoming");
    let mut child = restart(&d);
    assert!(wait_for(LONG, || ids_of(&["--sender", "late@example.org"])
        .len()
        == 1));
    let id = ids_of(&["--sender", "late@example.org"]).remove(0);
    let (code, out, err) = mq(&cfg, &["show", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Subject: late") && out.contains("<x@example.net>"),
        "{out}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `sendmail ARGS` with `stdin`; returns the exit code and standard
/// output.
fn sendmail_out(config: &Path, args: &[&str], stdin: &[u8]) -> (i32, String) {
    let mut child = Command::new(common::daemon::binary())
        .args(["--config", config.to_str().unwrap(), "sendmail"])
        .args(args)
        .env_remove("MAILQUEUE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn sendmail_bs_speaks_smtp_on_standard_input_and_queues_each_message() {
    let sink = SmtpSink::start(&[]);
    let d = Daemon::start(&Setup::to(&sink.url("smtp")));
    let session = b"EHLO app.test\r\n\
        MAIL FROM:<app@example.org>\r\n\
        RCPT TO:<a@example.org>\r\n\
        RCPT TO:<b@example.org>\r\n\
        DATA\r\n\
        Subject: via -bs\r\n\r\n..a stuffed dot\r\nbody\r\n.\r\n\
        MAIL FROM:<app@example.org>\r\n\
        DATA\r\n\
        RCPT TO:<c@example.org>\r\n\
        DATA\r\n\
        Subject: second\r\n\r\nx\r\n.\r\n\
        QUIT\r\n";
    let (code, out) = sendmail_out(&d.config_path(), &["-bs"], session);
    assert_eq!(code, 0, "{out}");
    let replies: Vec<&str> = out.lines().map(|l| &l[..3]).collect();
    assert!(out.starts_with("220 "), "{out}");
    assert!(out.contains("\r\n250-PIPELINING\r\n"), "{out}");
    assert_eq!(out.matches("250 2.0.0 Ok: queued as ").count(), 2, "{out}");
    assert!(out.contains("554 5.5.1"), "DATA before RCPT: {out}");
    assert_eq!(replies.last(), Some(&"221"), "{out}");
    assert!(wait_for(LONG, || sink.count() == 2), "not delivered");
    let msgs = sink.messages();
    let first = msgs
        .iter()
        .find(|m| m.contains("Subject: via -bs"))
        .unwrap();
    assert!(first.contains("X-Rcpt-Args: <a@example.org>"), "{first}");
    assert!(first.contains("X-Rcpt-Args: <b@example.org>"), "{first}");
    assert!(first.contains("\n.a stuffed dot"), "{first}");
    assert!(
        first.contains("\nMessage-ID: <"),
        "headers completed: {first}"
    );
    assert!(
        first.contains("Received: by "),
        "picked up as a local submission: {first}"
    );
}

#[test]
fn sendmail_dsn_options_reach_the_queue() {
    // Nothing listens at the target: the message stays to be looked at.
    let setup = Setup::default().queue("initial_retry = \"1h\"\nmax_retry_interval = \"1h\"");
    let d = Daemon::start(&setup);
    let cfg = d.config_path();
    let (code, err) = sendmail(
        &cfg,
        &[
            "-i",
            "-N",
            "success,failure",
            "-R",
            "hdrs",
            "-V",
            "env-1",
            "a@example.org",
        ],
        b"Subject: dsn\n\nx\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(wait_for(LONG, || list_json(&cfg).len() == 1));
    let id = list_json(&cfg)[0]["queue_id"].as_str().unwrap().to_string();
    let (code, out, err) = mq(&cfg, &["show", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("RET=Some(Hdrs) ENVID=env-1"), "{out}");
    assert!(out.contains("notify=SUCCESS,FAILURE"), "{out}");
    // Bad values are usage errors, not silently dropped.
    assert_eq!(
        sendmail(&cfg, &["-N", "sometimes", "a@example.org"], b"x\n").0,
        64
    );
    assert_eq!(
        sendmail(&cfg, &["-R", "most", "a@example.org"], b"x\n").0,
        64
    );
}

#[test]
fn sendmail_help_bi_and_newaliases_succeed_without_queueing() {
    let d = Daemon::start(&Setup::default());
    let cfg = d.config_path();
    let (code, out) = sendmail_out(&cfg, &["--help"], b"");
    assert_eq!(code, 0);
    assert!(out.starts_with("usage: sendmail"), "{out}");
    assert!(out.contains("-bs"), "{out}");
    assert_eq!(sendmail_out(&cfg, &["-h"], b"").0, 0);
    assert_eq!(sendmail(&cfg, &["-bi"], b"").0, 0);
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("newaliases");
    std::os::unix::fs::symlink(common::daemon::binary(), &link).unwrap();
    let status = Command::new(&link)
        .env_remove("MAILQUEUE_CONFIG")
        .status()
        .unwrap();
    assert!(status.success());
    assert!(d.queued().is_empty());
}

#[test]
fn local_names_get_the_local_domain_and_the_admin_mailboxes_go_to_admin() {
    let setup = Setup::default().set(
        "local",
        "domain = \"example.com\"\nadmin = \"ops@example.org\"",
    );
    let mut d = Daemon::start(&setup);
    stop(&mut d);
    let (code, err) = sendmail(
        &d.config_path(),
        &["-i", "root", "bob", "postmaster@mq.test"],
        b"Subject: x\n\ny\n",
    );
    assert_eq!(code, 0, "{err}");
    let incoming = d.spool().join("incoming");
    let files = common::files_in(&incoming);
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(incoming.join(&files[0])).unwrap();
    let envelope: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let rcpts: Vec<&str> = envelope["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(rcpts, ["bob@example.com", "ops@example.org"], "{envelope}");
    // The caller (root here) sends as its login name at the local domain.
    let sender = envelope["sender"].as_str().unwrap();
    assert!(sender.ends_with("@example.com"), "{envelope}");
}
