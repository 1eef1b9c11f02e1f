//! The queue engine against a scripted delivery target.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::scripted::{addr, perm, sender, temp, Plan, Scripted};
use common::{files_in, test_config, wait_for};
use mailqueue::queue::meta::RcptStatus;
use mailqueue::{
    Body, Config, DeliveryTarget, Envelope, Handoff, MessageInfo, Queue, Recipient,
    RecipientOutcome,
};

const LONG: Duration = Duration::from_secs(10);
/// Complete (Date and Message-ID given), so the queue stores it as it is.
const MSG: &[u8] = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: test message\r\n\
    Date: Tue, 1 Dec 2026 12:00:00 +0000\r\nMessage-ID: <engine@example.org>\r\n\r\nHello.\r\n";

fn envelope(rcpts: &[&str]) -> Envelope {
    Envelope::new(
        sender("a@example.org"),
        rcpts.iter().map(|r| addr(r)).collect(),
    )
}

fn spool_empty(config: &Config) -> bool {
    files_in(&config.spool.join("queue")).is_empty()
}

/// Opens a queue whose notices go to a separate recording target.
fn open(config: &Config, target: &Scripted, bounces: &Scripted) -> Queue {
    Queue::open_with_bounce_target(config.queue_options(), target.arc(), bounces.arc()).unwrap()
}

#[test]
fn two_recipients_are_delivered_in_one_commit_and_the_spool_empties() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let target = Scripted::new(vec![]);
    let queue = Queue::open(config.queue_options(), target.arc()).unwrap();
    queue
        .enqueue(&envelope(&["b@x.org", "c@y.org"]), MSG)
        .unwrap();
    assert!(wait_for(LONG, || spool_empty(&config)));
    let seen = target.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].committed);
    assert_eq!(seen[0].accepted, vec!["b@x.org", "c@y.org"]);
    assert_eq!(seen[0].sender.as_deref(), Some("a@example.org"));
    assert_eq!(seen[0].body, MSG);
    queue.close();
    assert!(files_in(&config.spool.join("tmp")).is_empty());
}

#[test]
fn permanent_body_failure_aborts_and_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let (target, bounces) = (
        Scripted::new(vec![Plan::body(perm("rejected"))]),
        Scripted::new(vec![]),
    );
    let queue = open(&config, &target, &bounces);
    queue
        .enqueue(&envelope(&["b@x.org", "c@x.org"]), MSG)
        .unwrap();
    assert!(wait_for(LONG, || spool_empty(&config) && bounces.attempts() == 1));
    std::thread::sleep(Duration::from_millis(300));
    let seen = target.seen();
    assert_eq!(seen.len(), 1, "retried after a permanent failure");
    assert!(seen[0].aborted && !seen[0].committed);
    queue.close();
}

#[test]
fn permanent_per_recipient_body_failure_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let target = Scripted::partial(vec![Plan::ok().body_rcpt("b@x.org", perm("no such user"))]);
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &target, &bounces);
    queue
        .enqueue(&envelope(&["b@x.org", "c@x.org"]), MSG)
        .unwrap();
    assert!(wait_for(LONG, || spool_empty(&config) && bounces.attempts() == 1));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(target.attempts(), 1);
    assert_eq!(target.delivered(), vec!["c@x.org"]);
    queue.close();
}

#[test]
fn temporary_body_failure_is_retried_with_both_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let target = Scripted::new(vec![Plan::body(temp("try later"))]);
    let queue = Queue::open(config.queue_options(), target.arc()).unwrap();
    queue
        .enqueue(&envelope(&["b@x.org", "c@x.org"]), MSG)
        .unwrap();
    assert!(wait_for(LONG, || spool_empty(&config)));
    let seen = target.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].aborted);
    assert_eq!(seen[1].accepted, vec!["b@x.org", "c@x.org"]);
    assert!(seen[1].committed);
    queue.close();
}

#[test]
fn partial_temporary_failure_retries_only_that_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let target = Scripted::partial(vec![Plan::ok().body_rcpt("b@x.org", temp("mailbox busy"))]);
    let queue = Queue::open(config.queue_options(), target.arc()).unwrap();
    queue
        .enqueue(&envelope(&["b@x.org", "c@x.org"]), MSG)
        .unwrap();
    assert!(wait_for(LONG, || spool_empty(&config)));
    let seen = target.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].offered, vec!["b@x.org", "c@x.org"]);
    assert_eq!(seen[1].offered, vec!["b@x.org"]);
    assert_eq!(target.delivered(), vec!["b@x.org", "c@x.org"]);
    queue.close();
}

#[test]
fn permanent_temporary_and_ok_recipients_each_get_their_own_fate() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let first = Plan::ok()
        .body_rcpt("p@x.org", perm("gone"))
        .body_rcpt("t@x.org", temp("busy"));
    let again = Plan::ok().body_rcpt("t@x.org", temp("still busy"));
    let target = Scripted::partial(vec![first, again.clone(), again]);
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &target, &bounces);
    queue
        .enqueue(&envelope(&["p@x.org", "t@x.org", "o@x.org"]), MSG)
        .unwrap();
    assert!(wait_for(LONG, || spool_empty(&config)));
    let seen = target.seen();
    assert_eq!(seen.len(), 4);
    for later in &seen[1..] {
        assert_eq!(
            later.offered,
            vec!["t@x.org"],
            "permanent or delivered recipient retried"
        );
    }
    assert_eq!(target.delivered(), vec!["o@x.org", "t@x.org"]);
    assert_eq!(bounces.attempts(), 1);
    queue.close();
}

#[test]
fn rcpt_rejects_fail_only_their_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let first = Plan::ok()
        .rcpt("p@x.org", perm("unknown user"))
        .rcpt("t@x.org", temp("greylisted"));
    let target = Scripted::new(vec![first]);
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &target, &bounces);
    queue
        .enqueue(&envelope(&["p@x.org", "t@x.org", "o@x.org"]), MSG)
        .unwrap();
    assert!(wait_for(LONG, || spool_empty(&config)));
    let seen = target.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].accepted, vec!["o@x.org"]);
    assert!(seen[0].committed);
    assert_eq!(seen[1].offered, vec!["t@x.org"]);
    assert_eq!(target.delivered(), vec!["o@x.org", "t@x.org"]);
    queue.close();
}

#[test]
fn a_pending_retry_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.queue.initial_retry = Duration::from_millis(700);
    let first = Scripted::new(vec![]).with_fallback(Plan::start(temp("down")));
    let queue = Queue::open(config.queue_options(), first.arc()).unwrap();
    let id = queue.enqueue(&envelope(&["b@x.org"]), MSG).unwrap();
    assert!(wait_for(LONG, || first.attempts() == 1));
    // Let the worker write the result, then stop before the retry is due.
    assert!(wait_for(LONG, || queue
        .list()
        .unwrap()
        .first()
        .is_some_and(|m| m.recipients[0].tries == 1)));
    queue.close();
    assert_eq!(first.attempts(), 1);

    let second = Scripted::new(vec![]);
    let queue = Queue::open(config.queue_options(), second.arc()).unwrap();
    let listed = queue.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert!(wait_for(LONG, || spool_empty(&config)));
    assert_eq!(second.delivered(), vec!["b@x.org"]);
    queue.close();
}

#[test]
fn broken_spool_files_are_quarantined_or_cleaned_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.queue.initial_retry = Duration::from_secs(3600);
    config.queue.max_retry_interval = Duration::from_secs(3600);
    let down = Scripted::new(vec![]).with_fallback(Plan::start(temp("down")));
    let queue = Queue::open(config.queue_options(), down.arc()).unwrap();
    let ids: Vec<_> = (0..5)
        .map(|i| {
            queue
                .enqueue(&envelope(&[&format!("r{i}@x.org")]), MSG)
                .unwrap()
        })
        .collect();
    assert!(wait_for(LONG, || down.attempts() == 5));
    queue.close();

    let q = config.spool.join("queue");
    // A removal interrupted between its two unlinks.
    std::fs::remove_file(q.join(format!("{}.msg", ids[0]))).unwrap();
    // Lost metadata: the message falls back to the state it was accepted in.
    std::fs::remove_file(q.join(format!("{}.meta", ids[1]))).unwrap();
    std::fs::write(
        q.join(format!("{}.meta", ids[2])),
        b"{\"version\":1,garbage",
    )
    .unwrap();
    // A message file cut short, into the message itself.
    std::fs::OpenOptions::new()
        .write(true)
        .open(q.join(format!("{}.msg", ids[4])))
        .unwrap()
        .set_len(MSG.len() as u64 / 2)
        .unwrap();
    // A write that never finished: no trailer, no metadata.
    std::fs::write(q.join("0123456789ABCDEF0123.msg"), MSG).unwrap();
    std::fs::write(config.spool.join("tmp").join("leftover.meta"), b"x").unwrap();

    let up = Scripted::new(vec![]);
    config.queue.initial_retry = Duration::from_millis(50);
    let queue = Queue::open(config.queue_options(), up.arc()).unwrap();
    // Overdue after the restart? Not yet: flush to deliver the healthy ones now.
    queue.flush(None);
    assert!(wait_for(LONG, || spool_empty(&config)));
    let mut delivered = up.delivered();
    delivered.sort();
    assert_eq!(delivered, vec!["r1@x.org", "r3@x.org"]);
    let corrupt = files_in(&config.spool.join("corrupt"));
    assert_eq!(corrupt, {
        let mut v = vec![
            format!("{}.meta", ids[2]),
            format!("{}.msg", ids[2]),
            format!("{}.meta", ids[4]),
            format!("{}.msg", ids[4]),
        ];
        v.sort();
        v
    });
    assert!(files_in(&config.spool.join("tmp")).is_empty());
    queue.close();
}

#[test]
fn no_accepted_recipients_means_abort_and_staged_abort_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let target = Scripted::new(vec![Plan::ok()
        .rcpt("b@x.org", perm("no"))
        .rcpt("c@x.org", perm("no"))]);
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &target, &bounces);
    queue
        .enqueue(&envelope(&["b@x.org", "c@x.org"]), MSG)
        .unwrap();
    assert!(wait_for(LONG, || spool_empty(&config)));
    let seen = target.seen();
    assert!(seen[0].aborted && !seen[0].committed && seen[0].body.is_empty());

    // The queue as a delivery target: abort leaves no files, commit queues.
    let info = MessageInfo {
        id: mailqueue::MessageId::generate(),
        sender: sender("s@example.org"),
        params: Default::default(),
        size: MSG.len() as u64,
    };
    // A body that cannot be read to its end (its checksum is wrong) is
    // an aborted delivery.
    let rcpts = [Recipient::new(addr("z@x.org"))];
    let damaged = dir.path().join("damaged");
    std::fs::write(&damaged, MSG).unwrap();
    let body = Body::from_file(damaged, MSG.len() as u64, Some(0));
    let outcomes = queue.deliver(&info, &rcpts, &body);
    assert_eq!(outcomes.len(), 1);
    assert!(outcomes[0].result.is_err());
    assert!(spool_empty(&config));
    assert!(files_in(&config.spool.join("tmp")).is_empty());

    let before = target.attempts();
    let outcomes = queue.deliver(&info, &rcpts, &Body::from_bytes(MSG.to_vec()));
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].result, Ok(Handoff::Passed));
    assert!(wait_for(LONG, || target.attempts() == before + 1
        && spool_empty(&config)));
    assert_eq!(target.seen().last().unwrap().accepted, vec!["z@x.org"]);
    queue.close();
}

/// Parses the notice the bounce target received in `attempt`.
fn notice(bounces: &Scripted, attempt: usize) -> (common::dsn::Dsn, Vec<u8>) {
    let seen = &bounces.seen()[attempt];
    (common::dsn::parse(&seen.body), seen.body.clone())
}

#[test]
fn a_bounce_is_a_well_formed_rfc3464_report() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let err = mailqueue::DeliveryError::from_reply(
        mailqueue::SmtpReply::parse_line("550 5.1.1 <b@x.org>: no such\r\nuser here").unwrap(),
    )
    .at("dns; mx.x.org");
    let target = Scripted::new(vec![Plan::ok().rcpt("b@x.org", err)]);
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &target, &bounces);
    let id = queue
        .enqueue(&envelope(&["b@x.org", "c@x.org"]), MSG)
        .unwrap();
    assert!(wait_for(LONG, || spool_empty(&config) && bounces.attempts() == 1));
    let seen = &bounces.seen()[0];
    assert_eq!(seen.sender, None, "a notice must use the null sender");
    assert_eq!(seen.accepted, vec!["a@example.org"]);
    let (dsn, _) = notice(&bounces, 0);
    assert_eq!(
        dsn.header("From"),
        "Mail Delivery System <MAILER-DAEMON@mq.test>"
    );
    assert_eq!(dsn.header("To"), "<a@example.org>");
    assert_eq!(dsn.header("Subject"), "Undelivered Mail Returned to Sender");
    assert_eq!(dsn.header("Auto-Submitted"), "auto-replied");
    assert!(dsn.header("Message-ID").ends_with("@mq.test>"));
    assert!(mailparse::dateparse(&dsn.header("Date")).is_ok());
    assert_eq!(dsn.content_type, "multipart/report");
    assert_eq!(dsn.report_type, "delivery-status");
    assert_eq!(
        dsn.part_types,
        vec![
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ]
    );
    assert!(
        dsn.text
            .contains("<b@x.org>: 550 5.1.1 <b@x.org>: no such user here"),
        "{}",
        dsn.text
    );
    assert!(!dsn.text.contains("c@x.org"));
    assert_eq!(dsn.message_fields["Reporting-MTA"], "dns; mq.test");
    assert!(mailparse::dateparse(&dsn.message_fields["Arrival-Date"]).is_ok());
    assert_eq!(dsn.message_fields["X-Mailqueue-Queue-ID"], id.to_string());
    assert_eq!(dsn.recipients.len(), 1);
    let r = &dsn.recipients[0];
    assert_eq!(r["Final-Recipient"], "rfc822; b@x.org");
    assert_eq!(r["Action"], "failed");
    assert_eq!(r["Status"], "5.1.1");
    assert_eq!(r["Remote-MTA"], "dns; mx.x.org");
    assert_eq!(
        r["Diagnostic-Code"],
        "smtp; 550 5.1.1 <b@x.org>: no such user here"
    );
    assert!(mailparse::dateparse(&r["Last-Attempt-Date"]).is_ok());
    assert!(dsn.returned.contains("Subject: test message"));
    assert!(
        !dsn.returned.contains("Hello."),
        "the body must not be returned"
    );
    queue.close();
}

#[test]
fn no_bounce_for_null_senders_or_failed_bounces_and_originals_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let target =
        Scripted::new(vec![]).with_fallback(Plan::ok().rcpt("gone@x.org", perm("no such user")));
    let bounces = Scripted::new(vec![]).with_fallback(Plan::body(perm("sender unknown")));
    let queue = open(&config, &target, &bounces);

    // A null-sender message that fails: no notice at all.
    let null = Envelope::new(None, vec![addr("gone@x.org")]);
    queue.enqueue(&null, MSG).unwrap();
    assert!(wait_for(LONG, || target.attempts() == 1 && spool_empty(&config)));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(bounces.attempts(), 0);

    // A rewritten recipient fails; its notice names the original address,
    // and the notice itself fails without a notice about the notice.
    let mut env = envelope(&[]);
    env.recipients.push(Recipient {
        address: addr("gone@x.org"),
        original: Some(addr("alias@example.org")),
        orcpt: None,
        notify: None,
    });
    queue.enqueue(&env, MSG).unwrap();
    assert!(wait_for(LONG, || bounces.attempts() == 1 && spool_empty(&config)));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        bounces.attempts(),
        1,
        "a failed notice must not be retried or bounced"
    );
    assert_eq!(target.attempts(), 2);
    let (dsn, raw) = notice(&bounces, 0);
    assert_eq!(
        dsn.recipients[0]["Final-Recipient"],
        "rfc822; alias@example.org"
    );
    assert!(dsn.text.contains("<alias@example.org>"));
    assert!(
        !String::from_utf8_lossy(&raw).contains("gone@x.org"),
        "the rewrite leaked"
    );
    queue.close();
}

#[test]
fn max_tries_ends_retries_also_when_lowered_on_queued_mail() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.queue.max_tries = 3;
    let target =
        Scripted::new(vec![]).with_fallback(Plan::ok().rcpt("b@x.org", temp("greylisted")));
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &target, &bounces);
    queue.enqueue(&envelope(&["b@x.org"]), MSG).unwrap();
    assert!(wait_for(LONG, || spool_empty(&config) && bounces.attempts() == 1));
    assert_eq!(target.attempts(), 3);
    let (dsn, _) = notice(&bounces, 0);
    assert_eq!(dsn.recipients[0]["Action"], "failed");
    assert_eq!(dsn.recipients[0]["Status"], "4.3.0");
    queue.close();

    // Queued under max_tries = 100, tried twice, then reopened with 2.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.queue.max_tries = 100;
    config.queue.initial_retry = Duration::from_millis(30);
    let target = Scripted::new(vec![]).with_fallback(Plan::start(temp("down")));
    let queue = Queue::open(config.queue_options(), target.arc()).unwrap();
    queue.enqueue(&envelope(&["b@x.org"]), MSG).unwrap();
    assert!(wait_for(LONG, || queue.list().unwrap()[0].recipients[0]
        .tries
        >= 2));
    queue.close();
    let tries = target.attempts() as u32;
    config.queue.max_tries = 2;
    let target = Scripted::new(vec![]).with_fallback(Plan::start(temp("down")));
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &target, &bounces);
    assert!(wait_for(LONG, || spool_empty(&config) && bounces.attempts() == 1));
    assert_eq!(
        target.attempts(),
        1,
        "after {tries} tries, one more and it must give up"
    );
    queue.close();
}

#[test]
fn a_retry_policy_and_notices_set_while_running_apply_at_the_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.queue.max_tries = 100;
    config.queue.initial_retry = Duration::from_millis(30);
    config.bounce.enabled = false;
    let target = Scripted::new(vec![]).with_fallback(Plan::start(temp("down")));
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &target, &bounces);
    queue.enqueue(&envelope(&["b@x.org"]), MSG).unwrap();
    assert!(wait_for(LONG, || target.attempts() >= 2));

    let mut options = queue.settings();
    options.retry.max_tries = 2;
    options.notices.enabled = true;
    queue.set_retry(options.retry);
    queue.set_notices(options.notices.clone(), options.delay_warning);
    assert_eq!(queue.settings(), options);
    assert_eq!(queue.options().retry.max_tries, 100, "as opened");
    // Given up at its next try (its tries are past the new limit), with
    // the notice the new settings allow.
    assert!(wait_for(LONG, || spool_empty(&config) && bounces.attempts() == 1));
    let (dsn, _) = notice(&bounces, 0);
    assert_eq!(dsn.recipients[0]["Action"], "failed");
    queue.close();
}

#[test]
fn max_lifetime_expires_mail_before_max_tries() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.queue.max_tries = 1000;
    config.queue.max_lifetime = Duration::from_millis(400);
    let target = Scripted::new(vec![]).with_fallback(Plan::body(temp("busy")));
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &target, &bounces);
    let started = std::time::Instant::now();
    queue.enqueue(&envelope(&["b@x.org"]), MSG).unwrap();
    assert!(wait_for(LONG, || spool_empty(&config) && bounces.attempts() == 1));
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(target.attempts() >= 2 && target.attempts() < 1000);
    queue.close();
}

#[test]
fn start_and_commit_failures_hit_every_recipient() {
    for (plan, permanent) in [
        (Plan::start(perm("go away")), true),
        (Plan::start(temp("busy")), false),
        (Plan::commit(perm("rejected after data")), true),
        (Plan::commit(temp("lost connection")), false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path());
        let target = Scripted::new(vec![plan]);
        let bounces = Scripted::new(vec![]);
        let queue = open(&config, &target, &bounces);
        queue
            .enqueue(&envelope(&["b@x.org", "c@x.org"]), MSG)
            .unwrap();
        assert!(wait_for(LONG, || spool_empty(&config)));
        std::thread::sleep(Duration::from_millis(100));
        if permanent {
            assert_eq!(target.attempts(), 1);
            assert!(target.delivered().is_empty());
            assert!(wait_for(LONG, || bounces.attempts() == 1));
            assert_eq!(notice(&bounces, 0).0.recipients.len(), 2);
        } else {
            assert_eq!(target.attempts(), 2);
            assert_eq!(target.delivered(), vec!["b@x.org", "c@x.org"]);
            assert_eq!(bounces.attempts(), 0);
        }
        queue.close();
    }
}

#[test]
fn metadata_records_each_recipient_state_across_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.queue.initial_retry = Duration::from_secs(3600);
    config.queue.max_retry_interval = Duration::from_secs(3600);
    let target = Scripted::new(vec![Plan::ok()
        .rcpt("p@x.org", perm("no such user"))
        .rcpt("t@x.org", temp("greylisted"))]);
    let queue = Queue::open(config.queue_options(), target.arc()).unwrap();
    let id = queue
        .enqueue(&envelope(&["p@x.org", "t@x.org", "o@x.org"]), MSG)
        .unwrap();
    assert!(wait_for(LONG, || queue.list().unwrap()[0]
        .last_attempt
        .is_some()));
    let meta = &queue.list().unwrap()[0];
    assert_eq!(meta.id, id);
    let by: HashMap<String, _> = meta
        .recipients
        .iter()
        .map(|r| (r.address.to_string(), r))
        .collect();
    assert_eq!(by["p@x.org"].status, RcptStatus::Failed);
    assert_eq!(by["t@x.org"].status, RcptStatus::Pending);
    assert_eq!(by["o@x.org"].status, RcptStatus::Delivered);
    assert_eq!(
        by["t@x.org"].last_error.as_ref().unwrap().to_string(),
        "451 4.3.0 greylisted"
    );
    assert!(by.values().all(|r| r.tries == 1));
    let wait = meta.next_attempt.since(meta.last_attempt.unwrap());
    assert_eq!(wait, Duration::from_secs(3600));
    queue.close();
}

#[test]
fn a_second_queue_on_the_same_spool_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let target: Arc<dyn DeliveryTarget> = Scripted::new(vec![]).arc();
    let queue = Queue::open(config.queue_options(), Arc::clone(&target)).unwrap();
    let err = Queue::open(config.queue_options(), Arc::clone(&target))
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("in use by another mailqueue process"),
        "{err}"
    );
    queue.close();
    Queue::open(config.queue_options(), target).unwrap().close();
}

/// Panics in `start` for one sender; otherwise hands over to `inner`.
struct PanicsFor {
    sender: &'static str,
    inner: Scripted,
    panics: std::sync::atomic::AtomicUsize,
}

impl DeliveryTarget for PanicsFor {
    fn deliver(
        &self,
        msg: &MessageInfo,
        rcpts: &[Recipient],
        body: &Body,
    ) -> Vec<RecipientOutcome> {
        if msg.sender.as_ref().map(|a| a.to_string()).as_deref() == Some(self.sender) {
            self.panics
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            panic!("a bug on this message");
        }
        self.inner.deliver(msg, rcpts, body)
    }
}

#[test]
fn a_panicking_attempt_keeps_its_worker_and_the_message_is_quarantined_after_3() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.queue.workers = 1;
    let inner = Scripted::new(vec![]);
    let target = Arc::new(PanicsFor {
        sender: "boom@example.org",
        inner: inner.clone(),
        panics: Default::default(),
    });
    let queue = Queue::open(config.queue_options(), target.clone()).unwrap();
    let bad = queue
        .enqueue(
            &Envelope::new(sender("boom@example.org"), vec![addr("b@x.org")]),
            MSG,
        )
        .unwrap();
    for _ in 0..3 {
        queue.enqueue(&envelope(&["c@x.org"]), MSG).unwrap();
    }
    // The only worker survived the panic and delivered the others.
    assert!(wait_for(LONG, || inner.attempts() == 3));
    // Retried like a temporary failure, then set aside, not lost.
    assert!(wait_for(LONG, || spool_empty(&config)));
    assert_eq!(target.panics.load(std::sync::atomic::Ordering::SeqCst), 3);
    let corrupt = files_in(&config.spool.join("corrupt"));
    assert!(
        corrupt.contains(&format!("{bad}.msg")),
        "not quarantined: {corrupt:?}"
    );
    assert!(wait_for(LONG, || queue.usage().0 == 0));
    // And the worker still works.
    queue.enqueue(&envelope(&["d@x.org"]), MSG).unwrap();
    assert!(wait_for(LONG, || inner.attempts() == 4 && spool_empty(&config)));
    queue.close();
}

/// Takes every recipient but `c@x.org` (deferred) and holds its commit
/// until the test lets it go.
struct SlowCommit {
    entered: crossbeam_channel::Sender<()>,
    release: crossbeam_channel::Receiver<()>,
}

impl DeliveryTarget for SlowCommit {
    fn deliver(
        &self,
        _msg: &MessageInfo,
        rcpts: &[Recipient],
        _body: &Body,
    ) -> Vec<RecipientOutcome> {
        let busy = |r: &Recipient| r.address.to_string() == "c@x.org";
        if rcpts.iter().any(|r| !busy(r)) {
            self.entered.send(()).unwrap();
            self.release.recv().unwrap();
        }
        rcpts
            .iter()
            .map(|r| match busy(r) {
                true => RecipientOutcome::new(Err(temp("mailbox busy"))),
                false => RecipientOutcome::new(Ok(Handoff::Relayed)),
            })
            .collect()
    }
}

#[test]
fn expire_during_an_attempt_bounces_only_what_the_attempt_left_pending() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let (entered_tx, entered) = crossbeam_channel::unbounded();
    let (release, release_rx) = crossbeam_channel::unbounded();
    let target = Arc::new(SlowCommit {
        entered: entered_tx,
        release: release_rx,
    });
    let bounces = Scripted::new(vec![]);
    let queue =
        Queue::open_with_bounce_target(config.queue_options(), target, bounces.arc()).unwrap();
    let id = queue
        .enqueue(&envelope(&["b@x.org", "c@x.org"]), MSG)
        .unwrap();
    entered.recv_timeout(LONG).unwrap();
    // The final reply is not in yet: b@x.org's fate is open.
    queue.admin().expire(id).unwrap();
    release.send(()).unwrap();
    assert!(wait_for(LONG, || spool_empty(&config) && bounces.attempts() == 1));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(bounces.attempts(), 1, "one notice only");
    let (dsn, _) = notice(&bounces, 0);
    let named: Vec<&str> = dsn
        .recipients
        .iter()
        .map(|r| r["Final-Recipient"].as_str())
        .collect();
    assert_eq!(
        named,
        vec!["rfc822; c@x.org"],
        "the delivered b@x.org was bounced"
    );
    assert_eq!(dsn.recipients[0]["Action"], "failed");
    queue.close();
}

/// A buggy target: reports only the first recipient, delivered.
struct ReportsOnlyTheFirst;

impl DeliveryTarget for ReportsOnlyTheFirst {
    fn deliver(
        &self,
        _msg: &MessageInfo,
        rcpts: &[Recipient],
        _body: &Body,
    ) -> Vec<RecipientOutcome> {
        RecipientOutcome::all(rcpts.len().min(1), Ok(Handoff::Relayed))
    }
}

#[test]
fn recipients_a_target_leaves_without_an_outcome_stay_pending() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.queue.initial_retry = Duration::from_secs(3600);
    config.queue.max_retry_interval = Duration::from_secs(3600);
    let queue = Queue::open(config.queue_options(), Arc::new(ReportsOnlyTheFirst)).unwrap();
    queue
        .enqueue(&envelope(&["b@x.org", "c@x.org", "d@x.org"]), MSG)
        .unwrap();
    // Attempted: recorded, or gone if every recipient counted as done.
    assert!(wait_for(LONG, || queue
        .list()
        .unwrap()
        .first()
        .is_none_or(|m| m.last_attempt.is_some())));
    let list = queue.list().unwrap();
    assert_eq!(list.len(), 1, "unreported recipients counted as delivered");
    let by: HashMap<String, _> = list[0]
        .recipients
        .iter()
        .map(|r| (r.address.to_string(), r))
        .collect();
    assert_eq!(by["b@x.org"].status, RcptStatus::Delivered);
    for unreported in ["c@x.org", "d@x.org"] {
        let r = by[unreported];
        assert_eq!(
            r.status,
            RcptStatus::Pending,
            "{unreported}: unreported counted as delivered"
        );
        assert_eq!(r.tries, 1);
        let error = r.last_error.as_ref().unwrap();
        assert_eq!(error.code, 451, "{error}");
        assert!(error.to_string().contains("internal error"), "{error}");
    }
    queue.close();
}

#[test]
fn date_and_message_id_are_added_to_small_and_large_messages_alike() {
    // A small message is completed in its own file; one of 2 MiB through
    // a new file in tmp/: each arrives whole with the two fields added once.
    for body_len in [10usize, 2 * 1024 * 1024] {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path());
        let target = Scripted::new(vec![]);
        let queue = Queue::open(config.queue_options(), target.arc()).unwrap();
        let body: String = "0123456789abcdef\r\n"
            .repeat(body_len / 18 + 1)
            .chars()
            .take(body_len)
            .collect();
        let message = format!("From: a@example.org\r\nSubject: plain\r\n\r\n{body}");
        queue
            .enqueue(&envelope(&["b@x.org"]), message.as_bytes())
            .unwrap();
        assert!(wait_for(LONG, || spool_empty(&config)));
        let seen = target.seen();
        let sent = String::from_utf8(seen[0].body.clone()).unwrap();
        let (head, rest) = sent.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("From: a@example.org\r\nSubject: plain\r\n"),
            "{head}"
        );
        assert_eq!(head.matches("\r\nDate: ").count(), 1, "{head}");
        assert_eq!(head.matches("\r\nMessage-ID: <").count(), 1, "{head}");
        assert_eq!(rest, body, "body of {body_len} bytes");
        queue.close();
        assert!(files_in(&config.spool.join("tmp")).is_empty());
    }
}
