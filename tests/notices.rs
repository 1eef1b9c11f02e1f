//! Delivery status notifications: RFC 3461 parameters end to end, success
//! and delay notices, expiry wording, RET=FULL, SMTPUTF8 report types.
//! Each notice is parsed with a MIME parser and its fields checked.

mod common;

use std::time::Duration;

use common::daemon::{queued_id, Client, Daemon, Setup};
use common::dsn::{parse, Dsn};
use common::peers::SmtpSink;
use common::scripted::{addr, perm, sender, temp, Plan, Scripted};
use common::{files_in, test_config, wait_for};
use mailqueue::{Config, Envelope, Handoff, Notify, Queue, Recipient, Ret};

const LONG: Duration = Duration::from_secs(15);
const MSG: &[u8] = b"From: a@example.org\r\nSubject: notices\r\n\r\nHello.\r\n";

fn rcpt(a: &str, notify: &str) -> Recipient {
    Recipient {
        notify: Some(notify.parse::<Notify>().unwrap()),
        ..Recipient::new(addr(a))
    }
}

fn open(config: &Config, target: &Scripted, bounces: &Scripted) -> Queue {
    Queue::open_with_bounce_target(config.queue_options(), target.arc(), bounces.arc()).unwrap()
}

fn spool_empty(c: &Config) -> bool {
    files_in(&c.spool.join("queue")).is_empty()
}

fn notices(bounces: &Scripted) -> Vec<Dsn> {
    bounces.seen().iter().map(|s| parse(&s.body)).collect()
}

#[test]
fn notify_never_suppresses_every_kind_of_notice() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.queue.max_tries = 4;
    config.queue.delay_warning = Duration::from_millis(1);
    let target = Scripted::new(vec![]).with_fallback(
        Plan::ok()
            .rcpt("p@x.org", perm("no"))
            .rcpt("t@x.org", temp("later")),
    );
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &target, &bounces);
    let mut env = Envelope::new(sender("s@example.org"), vec![]);
    env.recipients = vec![
        rcpt("p@x.org", "NEVER"),
        rcpt("t@x.org", "NEVER"),
        rcpt("ok@x.org", "NEVER"),
    ];
    queue.enqueue(&env, MSG).unwrap();
    assert!(wait_for(LONG, || spool_empty(&config)));
    // The same message without NEVER makes notices: the control case.
    assert_eq!(
        bounces.attempts(),
        0,
        "NEVER must silence failure, delay and success notices"
    );
    let mut env = Envelope::new(sender("s@example.org"), vec![]);
    env.recipients = vec![
        rcpt("p@x.org", "FAILURE,DELAY"),
        rcpt("t@x.org", "FAILURE,DELAY"),
    ];
    queue.enqueue(&env, MSG).unwrap();
    assert!(wait_for(LONG, || spool_empty(&config) && bounces.attempts() >= 2));
    queue.close();
}

#[test]
fn success_notices_say_delivered_or_relayed_and_none_when_passed_on() {
    for (handoff, action) in [
        (Handoff::Delivered, Some("delivered")),
        (Handoff::Relayed, Some("relayed")),
        (Handoff::Passed, None),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path());
        let target = Scripted::new(vec![]).with_handoff(handoff);
        let bounces = Scripted::new(vec![]);
        let queue = open(&config, &target, &bounces);
        let mut env = Envelope::new(sender("s@example.org"), vec![]);
        env.recipients = vec![rcpt("yes@x.org", "SUCCESS"), rcpt("no@x.org", "FAILURE")];
        queue.enqueue(&env, MSG).unwrap();
        assert!(wait_for(LONG, || spool_empty(&config)));
        std::thread::sleep(Duration::from_millis(200));
        match action {
            None => assert_eq!(
                bounces.attempts(),
                0,
                "{handoff:?}: the next hop reports, not us"
            ),
            Some(action) => {
                assert!(wait_for(LONG, || bounces.attempts() == 1));
                let n = &notices(&bounces)[0];
                assert_eq!(n.header("Subject"), "Successful Mail Delivery Report");
                assert_eq!(n.recipients.len(), 1, "only the recipient that asked");
                let r = &n.recipients[0];
                assert_eq!(r["Final-Recipient"], "rfc822; yes@x.org");
                assert_eq!(r["Action"], action);
                assert_eq!(r["Status"], "2.0.0");
                assert!(!r.contains_key("Diagnostic-Code"));
            }
        }
        queue.close();
    }
}

#[test]
fn one_failure_notice_and_one_success_notice_per_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let target = Scripted::new(vec![Plan::ok()
        .rcpt("a@x.org", perm("no"))
        .rcpt("b@x.org", perm("gone"))]);
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &target, &bounces);
    let mut env = Envelope::new(sender("s@example.org"), vec![]);
    env.recipients = ["a@x.org", "b@x.org", "c@x.org"]
        .iter()
        .map(|a| rcpt(a, "SUCCESS,FAILURE"))
        .collect();
    queue.enqueue(&env, MSG).unwrap();
    assert!(wait_for(LONG, || spool_empty(&config) && bounces.attempts() == 2));
    std::thread::sleep(Duration::from_millis(200));
    let all = notices(&bounces);
    assert_eq!(all.len(), 2);
    let failure = all
        .iter()
        .find(|n| n.recipients[0]["Action"] == "failed")
        .unwrap();
    assert_eq!(failure.recipients.len(), 2);
    let success = all
        .iter()
        .find(|n| n.recipients[0]["Action"] == "relayed")
        .unwrap();
    assert_eq!(success.recipients.len(), 1);
    queue.close();
}

#[test]
fn a_delay_warning_is_sent_exactly_once_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.queue.delay_warning = Duration::from_millis(150);
    config.queue.max_tries = 1000;
    let down =
        || Scripted::new(vec![]).with_fallback(Plan::ok().rcpt("t@x.org", temp("mailbox busy")));
    let (target, bounces) = (down(), Scripted::new(vec![]));
    let queue = open(&config, &target, &bounces);
    queue
        .enqueue(
            &Envelope::new(sender("s@example.org"), vec![addr("t@x.org")]),
            MSG,
        )
        .unwrap();
    assert!(wait_for(LONG, || bounces.attempts() == 1));
    let attempts = target.attempts();
    assert!(wait_for(LONG, || target.attempts() >= attempts + 5));
    queue.close();
    assert_eq!(bounces.attempts(), 1);
    let n = &notices(&bounces)[0];
    assert_eq!(n.header("Subject"), "Delayed Mail (still being retried)");
    let r = &n.recipients[0];
    assert_eq!(r["Action"], "delayed");
    assert_eq!(r["Status"], "4.3.0");
    assert_eq!(r["Diagnostic-Code"], "smtp; 451 4.3.0 mailbox busy");
    assert!(mailparse::dateparse(&r["Will-Retry-Until"]).is_ok());

    let (target, more) = (down(), Scripted::new(vec![]));
    let queue = open(&config, &target, &more);
    queue.flush(None);
    assert!(wait_for(LONG, || target.attempts() >= 5));
    queue.close();
    assert_eq!(more.attempts(), 0, "warned again after the restart");
}

#[test]
fn an_expiry_notice_says_so_and_keeps_the_last_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.queue.max_tries = 2;
    let target =
        Scripted::new(vec![]).with_fallback(Plan::ok().rcpt("t@x.org", temp("greylisted")));
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &target, &bounces);
    queue
        .enqueue(
            &Envelope::new(sender("s@example.org"), vec![addr("t@x.org")]),
            MSG,
        )
        .unwrap();
    assert!(wait_for(LONG, || spool_empty(&config) && bounces.attempts() == 1));
    let n = &notices(&bounces)[0];
    assert!(
        n.text.contains(
            "gave up after 2 tries, the message expired; last error: 451 4.3.0 greylisted"
        ),
        "{}",
        n.text
    );
    assert_eq!(n.recipients[0]["Action"], "failed");
    assert_eq!(n.recipients[0]["Status"], "4.3.0");
    queue.close();
}

#[test]
fn ret_full_returns_the_message_under_the_limit_and_the_header_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.bounce.max_return_size = 2000;
    let target = Scripted::new(vec![]).with_fallback(Plan::body(perm("rejected")));
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &target, &bounces);
    let mut env = Envelope::new(sender("s@example.org"), vec![addr("r@x.org")]);
    env.params.ret = Some(Ret::Full);
    let small = b"Subject: small\r\n\r\nthe small body\r\n".to_vec();
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b"0123456789abcdef\r\n".as_slice(), 200).flatten());
    queue.enqueue(&env, &small).unwrap();
    assert!(wait_for(LONG, || bounces.attempts() == 1));
    queue.enqueue(&env, &big).unwrap();
    assert!(wait_for(LONG, || bounces.attempts() == 2));
    let all = notices(&bounces);
    assert_eq!(all[0].part_types[2], "message/rfc822");
    assert!(all[0].returned.contains("the small body"));
    assert_eq!(all[1].part_types[2], "text/rfc822-headers");
    assert!(
        all[1].returned.contains("Subject: big") && !all[1].returned.contains("0123456789abcdef")
    );
    assert!(
        all[1].text.contains("larger than 2000 bytes"),
        "{}",
        all[1].text
    );
    // Without RET, the header only.
    env.params.ret = None;
    queue.enqueue(&env, &small).unwrap();
    assert!(wait_for(LONG, || bounces.attempts() == 3));
    let n = &notices(&bounces)[2];
    assert_eq!(n.part_types[2], "text/rfc822-headers");
    assert!(!n.returned.contains("the small body"));
    queue.close();
}

#[test]
fn smtputf8_messages_get_global_report_types() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let target =
        Scripted::new(vec![]).with_fallback(Plan::ok().rcpt("ü@x.org", perm("no such user")));
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &target, &bounces);
    let mut env = Envelope::new(sender("sé@example.org"), vec![addr("ü@x.org")]);
    env.params.smtputf8 = true;
    queue
        .enqueue(&env, "Subject: ça va\r\n\r\nbody\r\n".as_bytes())
        .unwrap();
    assert!(wait_for(LONG, || bounces.attempts() == 1));
    let n = &notices(&bounces)[0];
    assert_eq!(
        n.part_types,
        vec![
            "text/plain",
            "message/global-delivery-status",
            "message/global-headers"
        ]
    );
    assert_eq!(n.recipients[0]["Final-Recipient"], "utf-8; ü@x.org");
    assert!(n.returned.contains("Subject: ça va"));
    queue.close();
}

/// Through the daemon: the listener takes ENVID, ORCPT (xtext) and
/// NOTIFY; the notices name them; a next hop with DSN gets them passed on.
fn dsn_transaction(d: &Daemon, rcpt: &str) -> String {
    let mut c = Client::connect(d.addr()).unwrap();
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<s@example.org> RET=HDRS ENVID=env+2Bid")
        .expect(250, "2.1.0");
    c.cmd(&format!(
        "RCPT TO:<{rcpt}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig+2Btag@example.org"
    ))
    .expect(250, "2.1.5");
    c.cmd("DATA").expect(354, "");
    let id = queued_id(&c.data_raw(b"Subject: dsn\r\n\r\nbody\r\n.\r\n"));
    c.quit();
    id
}

fn sink_notice(sink: &SmtpSink) -> Dsn {
    assert!(wait_for(LONG, || sink.count() == 1), "no notice arrived");
    let raw = sink.messages().remove(0);
    // smtp-sink puts its own X- headers and a Received in front.
    parse(raw.as_bytes())
}

#[test]
fn dsn_parameters_round_trip_and_pass_to_a_dsn_capable_hop() {
    // A next hop with DSN: it gets the parameters, we send no success notice.
    let hop = SmtpSink::start(&[]);
    let notices = SmtpSink::start(&[]);
    let d = Daemon::start(
        &Setup::to(&hop.url("smtp")).bounce(&format!("target = \"{}\"", notices.url("smtp"))),
    );
    dsn_transaction(&d, "r@example.org");
    assert!(wait_for(LONG, || hop.count() == 1));
    let m = &hop.messages()[0];
    assert!(
        m.contains("X-Mail-Args: <s@example.org> RET=HDRS ENVID=env+2Bid"),
        "{m}"
    );
    assert!(m.contains("X-Rcpt-Args: <r@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig+2Btag@example.org"), "{m}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        notices.count(),
        0,
        "the DSN-capable hop reports success, not us"
    );
}

#[test]
fn a_hop_without_dsn_gets_no_parameters_and_we_say_relayed() {
    let hop = SmtpSink::start(&["-N"]);
    let notices = SmtpSink::start(&[]);
    let d = Daemon::start(
        &Setup::to(&hop.url("smtp")).bounce(&format!("target = \"{}\"", notices.url("smtp"))),
    );
    dsn_transaction(&d, "r@example.org");
    assert!(wait_for(LONG, || hop.count() == 1));
    let m = &hop.messages()[0];
    assert!(
        m.contains("X-Mail-Args: <s@example.org>\n")
            || m.contains("X-Mail-Args: <s@example.org>\r\n"),
        "{m}"
    );
    assert!(!m.contains("NOTIFY=") && !m.contains("ENVID="), "{m}");
    let n = sink_notice(&notices);
    assert_eq!(n.message_fields["Original-Envelope-Id"], "env+id");
    let r = &n.recipients[0];
    assert_eq!(r["Action"], "relayed");
    assert_eq!(r["Original-Recipient"], "rfc822; orig+tag@example.org");
}

#[test]
fn an_lmtp_delivery_is_reported_as_delivered() {
    let hop = SmtpSink::start(&["-L"]);
    let notices = SmtpSink::start(&[]);
    let d = Daemon::start(
        &Setup::to(&hop.url("lmtp")).bounce(&format!("target = \"{}\"", notices.url("smtp"))),
    );
    dsn_transaction(&d, "r@example.org");
    let n = sink_notice(&notices);
    assert_eq!(n.recipients[0]["Action"], "delivered");
    assert_eq!(n.recipients[0]["Status"], "2.0.0");
}

#[test]
fn a_failure_notice_names_envid_and_the_decoded_orcpt() {
    // The hop refuses every recipient for good.
    let hop = SmtpSink::start(&["-f", "RCPT"]);
    let notices = SmtpSink::start(&[]);
    let d = Daemon::start(
        &Setup::to(&hop.url("smtp")).bounce(&format!("target = \"{}\"", notices.url("smtp"))),
    );
    dsn_transaction(&d, "gone@example.org");
    let n = sink_notice(&notices);
    assert_eq!(n.message_fields["Original-Envelope-Id"], "env+id");
    let r = &n.recipients[0];
    assert_eq!(r["Action"], "failed");
    assert_eq!(r["Final-Recipient"], "rfc822; gone@example.org");
    assert_eq!(r["Original-Recipient"], "rfc822; orig+tag@example.org");
    assert!(r["Status"].starts_with('5'), "{r:?}");
    assert_eq!(n.part_types[2], "text/rfc822-headers");
}
