//! `[[route]]`: recipients split by route, failover between relays, a
//! fallback relay behind MX delivery, reloads, the config check and
//! `mailqueue routes` — against real SMTP servers (aiosmtpd), a real DNS
//! server (dnsmasq) and the real daemon, all on loopback.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::daemon::{binary, free_port, queued_id, signal, Client, Daemon, Setup};
use common::dns::dnsmasq;
use common::peers::{PyServer, SmtpSink};
use common::wait_for;

const LONG: Duration = Duration::from_secs(20);
const MSG: &[u8] = b"Subject: routes\r\n\r\nbody\r\n";

/// Submits one message to the daemon; returns its queue id.
fn submit(d: &Daemon, from: &str, to: &[&str]) -> String {
    let mut c = Client::connect(d.addr()).unwrap();
    let id = queued_id(&c.mail(from, to, MSG));
    c.quit();
    id
}

/// The recipients of each message a server got, sorted within each.
fn got(peer: &PyServer) -> Vec<Vec<String>> {
    peer.messages()
        .iter()
        .map(|m| {
            let mut r = m.recipients();
            r.sort();
            r
        })
        .collect()
}

/// A server that greets every connection with `greeting` and closes it;
/// it counts the connections it took.
fn greeter(greeting: &'static str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().take(50) {
            let Ok(mut s) = s else { continue };
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(greeting.as_bytes());
            let mut b = [0u8; 256];
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut b);
        }
    });
    (port, count)
}

fn tls_none(setup: Setup) -> Setup {
    setup.delivery("tls = \"none\"")
}

#[test]
fn each_recipient_goes_to_the_route_its_domain_and_sender_match() {
    let (net, billing, rest) = (
        PyServer::start(&[]),
        PyServer::start(&[]),
        PyServer::start(&[]),
    );
    let setup = tls_none(Setup::to(&rest.url("smtp")))
        .route(&format!(
            "domains = [\"example.net\", \".example.net\"]\ntarget = \"{}\"",
            net.url("smtp")
        ))
        .route(&format!(
            "domains = [\"*\"]\nsenders = [\"billing@example.org\"]\ntarget = \"{}\"",
            billing.url("smtp")
        ));
    let d = Daemon::start(&setup);
    submit(
        &d,
        "me@example.org",
        &["a@example.net", "b@sub.example.net", "c@example.com"],
    );
    net.wait_messages(1, LONG);
    rest.wait_messages(1, LONG);
    // One message, split in the attempt: one transaction per route.
    assert_eq!(got(&net), [["a@example.net", "b@sub.example.net"]]);
    assert_eq!(got(&rest), [["c@example.com"]]);
    assert!(billing.messages().is_empty());

    submit(
        &d,
        "billing@example.org",
        &["c@example.com", "d@example.net"],
    );
    billing.wait_messages(1, LONG);
    net.wait_messages(2, LONG);
    assert_eq!(got(&billing), [["c@example.com"]]);
    assert_eq!(got(&net)[1], ["d@example.net"]);
    assert_eq!(rest.messages().len(), 1);
    assert!(wait_for(LONG, || d.queued().is_empty()), "{}", d.log());
}

#[test]
fn a_route_connects_with_its_own_source_address_and_helo_name() {
    let (routed, rest) = (SmtpSink::start(&[]), SmtpSink::start(&[]));
    let setup = tls_none(Setup::to(&rest.url("smtp"))).route(&format!(
        "domains = [\"example.net\"]\ntarget = \"{}\"\n\
         source_address = \"127.0.0.2\"\nip_version = \"4\"\nhelo_name = \"mail.example.org\"",
        routed.url("smtp")
    ));
    let d = Daemon::start(&setup);
    submit(&d, "me@example.org", &["a@example.net", "b@example.com"]);
    assert!(wait_for(LONG, || d.queued().is_empty()), "{}", d.log());
    let header = |dump: &str, name: &str| {
        dump.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .to_string()
    };
    let (routed, rest) = (routed.messages(), rest.messages());
    assert_eq!(routed.len(), 1);
    assert_eq!(header(&routed[0], "X-Client-Addr: "), "127.0.0.2");
    assert_eq!(header(&routed[0], "X-Helo-Args: "), "mail.example.org");
    assert_eq!(header(&routed[0], "X-Rcpt-Args: "), "<a@example.net>");
    // [delivery] keeps the kernel's choice and the hostname.
    assert_eq!(header(&rest[0], "X-Client-Addr: "), "127.0.0.1");
    assert_eq!(header(&rest[0], "X-Helo-Args: "), "mq.test");
}

#[test]
fn a_route_has_its_own_rate_and_can_lift_the_one_of_delivery() {
    let (routed, rest) = (SmtpSink::start(&[]), SmtpSink::start(&[]));
    let setup = tls_none(Setup::to(&rest.url("smtp")))
        .delivery("rate = \"1/1h\"")
        .route(&format!(
            "domains = [\"example.net\"]\ntarget = \"{}\"\nrate = \"\"",
            routed.url("smtp")
        ));
    let d = Daemon::start(&setup);
    for _ in 0..3 {
        submit(&d, "me@example.org", &["a@example.net", "b@example.com"]);
    }
    // The route has no limit: all three; [delivery] takes one an hour.
    assert!(wait_for(LONG, || routed.count() == 3), "{}", d.log());
    assert!(wait_for(LONG, || rest.count() == 1), "{}", d.log());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rest.count(), 1);
    assert_eq!(d.queued().len(), 2, "two wait for [delivery]'s rate");
}

#[test]
fn a_relay_that_is_down_or_says_421_hands_its_recipients_to_the_next() {
    let backup = PyServer::start(&[]);
    let (busy, busy_seen) = greeter("421 4.3.2 too busy, try another\r\n");
    let down = free_port();
    let setup = tls_none(Setup::default()).route(&format!(
        "domains = [\"*\"]\ntarget = [\"smtp://127.0.0.1:{down}\", \
         \"smtp://127.0.0.1:{busy}\", \"{}\"]",
        backup.url("smtp")
    ));
    let d = Daemon::start(&setup);
    let id = submit(&d, "me@example.org", &["a@example.net"]);
    backup.wait_messages(1, LONG);
    assert!(busy_seen.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(
        d.wait_log(&format!("{id}: to=<a@example.net>"), LONG),
        "{}",
        d.log()
    );
    let log = d.log();
    // The log says which relay took it, and that the others were passed.
    let sent = log
        .lines()
        .find(|l| l.contains(&id) && l.contains("status=sent"))
        .unwrap_or_else(|| panic!("no sent line:\n{log}"));
    assert!(
        sent.contains(&format!("relay=127.0.0.1[127.0.0.1]:{}", backup.port)),
        "{sent}"
    );
    assert!(sent.contains("tries=1"), "{sent}");
    assert!(
        log.contains(&format!("not taken by smtp://127.0.0.1:{down}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("not taken by smtp://127.0.0.1:{busy}")),
        "{log}"
    );
}

#[test]
fn a_relay_that_answers_4xx_or_5xx_keeps_its_verdict() {
    let (first, second) = (PyServer::start(&[]), PyServer::start(&[]));
    let setup = tls_none(Setup::default()).route(&format!(
        "domains = [\"*\"]\ntarget = [\"{}\", \"{}\"]",
        first.url("smtp"),
        second.url("smtp")
    ));
    let d = Daemon::start(&setup);
    let id = submit(
        &d,
        "me@example.org",
        &["tempfail-rcpt@example.net", "permfail-rcpt@example.net"],
    );
    assert!(
        d.wait_log(&format!("{id}: to=<permfail-rcpt@example.net>"), LONG)
            && d.wait_log(&format!("{id}: to=<tempfail-rcpt@example.net>"), LONG),
        "{}",
        d.log()
    );
    let log = d.log();
    assert!(log.contains("status=bounced"), "{log}");
    assert!(log.contains("status=deferred"), "{log}");
    // Neither went on to the second relay.
    assert!(second.events().is_empty(), "{:?}", second.events());
    assert!(!log.contains("not taken by"), "{log}");
}

#[test]
fn a_fallback_relay_takes_what_the_mx_hosts_defer_but_not_what_they_refuse() {
    // The fallback is smtp-sink, which takes every recipient (the Python
    // server would refuse tempfail-rcpt again).
    let (mx, fallback) = (PyServer::start(&[]), SmtpSink::start(&[]));
    let (_dns, dns_port) = dnsmasq(&[
        "--mx-host=d.test,mx.d.test,10".into(),
        "--host-record=mx.d.test,127.0.0.1".into(),
    ]);
    // Notices to the sender (example.org has no MX here) would go to the
    // fallback too: they go elsewhere.
    let setup = tls_none(Setup::default())
        .bounce(&format!("target = \"smtp://127.0.0.1:{}\"", free_port()))
        .delivery(&format!(
            "dns_servers = [\"127.0.0.1:{dns_port}\"]\nmx_port = {}",
            mx.port
        ))
        .route(&format!(
            "domains = [\"*\"]\ntarget = \"remote\"\nfallback = \"{}\"",
            fallback.url("smtp")
        ));
    let d = Daemon::start(&setup);
    let id = submit(
        &d,
        "me@example.org",
        &["ok@d.test", "tempfail-rcpt@d.test", "permfail-rcpt@d.test"],
    );
    assert!(wait_for(LONG, || d.queued().is_empty()), "{}", d.log());
    assert_eq!(got(&mx), [["ok@d.test"]]);
    let taken = fallback.messages();
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert!(
        taken[0].contains("X-Rcpt-Args: <tempfail-rcpt@d.test>"),
        "{taken:?}"
    );
    assert_eq!(taken[0].matches("X-Rcpt-Args").count(), 1, "{taken:?}");
    let log = d.log();
    let line = |rcpt: &str| {
        log.lines()
            .find(|l| l.contains(&format!("{id}: to=<{rcpt}>")))
            .unwrap_or_else(|| panic!("no line for {rcpt}:\n{log}"))
            .to_string()
    };
    let taken = line("tempfail-rcpt@d.test");
    assert!(taken.contains("status=sent"), "{taken}");
    assert!(
        taken.contains(&format!("relay=127.0.0.1[127.0.0.1]:{}", fallback.port)),
        "{taken}"
    );
    assert!(line("permfail-rcpt@d.test").contains("status=bounced"));
}

#[test]
fn a_reloaded_route_applies_to_mail_already_queued() {
    let peer = PyServer::start(&[]);
    let down = free_port();
    let setup = tls_none(Setup::default()).route(&format!(
        "domains = [\"example.net\"]\ntarget = \"smtp://127.0.0.1:{down}\""
    ));
    let d = Daemon::start(&setup);
    let id = submit(&d, "me@example.org", &["a@example.net"]);
    assert!(d.wait_log("status=deferred", LONG), "{}", d.log());
    let text = std::fs::read_to_string(d.config_path())
        .unwrap()
        .replace(&format!("smtp://127.0.0.1:{down}"), &peer.url("smtp"));
    std::fs::write(d.config_path(), text).unwrap();
    signal(d.pid(), "HUP");
    peer.wait_messages(1, LONG);
    assert_eq!(got(&peer), [["a@example.net"]]);
    assert!(d.wait_log(&format!("{id}: removed"), LONG), "{}", d.log());
    assert!(
        d.log().contains("[[route]]"),
        "the reload names what changed"
    );
}

/// `mailqueue --config <daemon's config> <args>`.
fn mq(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .arg("--config")
        .arg(d.config_path())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn requeue_pins_stuck_mail_to_a_target_and_without_one_returns_it_to_the_routes() {
    let peer = PyServer::start(&[]);
    let (down, other_down) = (free_port(), free_port());
    let setup = tls_none(Setup::to(&format!("smtp://127.0.0.1:{down}")))
        .queue("initial_retry = \"1h\"\nmax_retry_interval = \"1h\"");
    let d = Daemon::start(&setup);
    let (a, b) = (
        submit(&d, "me@example.org", &["a@example.net"]),
        submit(&d, "me@example.org", &["b@example.net"]),
    );
    assert!(wait_for(LONG, || d
        .log()
        .matches("status=deferred")
        .count()
        == 2));

    // Pinned to the peer: sent now, where the routes would wait an hour.
    let (code, out, err) = mq(&d, &["requeue", "--target", &peer.url("smtp"), &a]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Requeued: 1 message");
    peer.wait_messages(1, LONG);
    assert_eq!(got(&peer), [["a@example.net"]]);
    assert!(d.wait_log(
        &format!("{a}: requeued by the operator to {}", peer.url("smtp")),
        LONG
    ));

    // Pinned to a target that is down: deferred there, and show says so;
    // requeue without --target gives it back to the routes.
    let other = format!("smtp://127.0.0.1:{other_down}");
    let (code, _, err) = mq(&d, &["requeue", "--target", &other, &b]);
    assert_eq!(code, 0, "{err}");
    assert!(
        d.wait_log(
            &format!("connect to 127.0.0.1[127.0.0.1]:{other_down}"),
            LONG
        ),
        "{}",
        d.log()
    );
    let (_, shown, _) = mq(&d, &["show", &b]);
    assert!(
        shown.contains(&format!("target: {other} (pinned by requeue")),
        "{shown}"
    );
    let (code, _, err) = mq(&d, &["requeue", &b]);
    assert_eq!(code, 0, "{err}");
    let requeued = format!("{b}: requeued by the operator");
    assert!(
        wait_for(LONG, || d.log().matches(&requeued).count() == 2),
        "{}",
        d.log()
    );
    let (_, shown, _) = mq(&d, &["show", &b]);
    assert!(!shown.contains("target:"), "{shown}");

    // A URL that is not a target is refused before anything changes.
    let (code, _, err) = mq(&d, &["requeue", "--target", "ftp://x:21", &b]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--target"), "{err}");
}

/// `mailqueue --config <file> <args>` with the given config text.
fn cli(config: &str, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailqueue.toml");
    let text = format!("spool = {:?}\n{config}", dir.path().join("spool"));
    std::fs::write(&path, text).unwrap();
    let out = Command::new(binary())
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_config_check_names_a_bad_route() {
    let cases = [
        (
            "[[route]]\ndomains = [\"*\"]\ntarget = \"ftp://relay.example.com:21\"\n",
            "unknown scheme",
        ),
        (
            "[[route]]\ndomains = [\"*\"]\ntarget = \"remote\"\nusername = \"u\"\n\
             password_file = \"/etc/hostname\"\n",
            "route 1 (*): username = \"u\": credentials are for a smarthost",
        ),
        (
            "[[route]]\ndomains = [\"*.example.net\"]\ntarget = \"remote\"\n",
            "\"*.example.net\" cannot match",
        ),
        (
            "[[route]]\ndomains = [\"example.net\"]\ntarget = \"smtp://a.example:25\"\n\
             [[route]]\ndomains = []\ntarget = \"remote\"\n",
            "route 2 (): domains = []: matches nothing",
        ),
        (
            "[[route]]\ndomains = [\"example.net\"]\ntarget = \"smtp://a.example:25\"\n\
             fallback = \"smtp://b.example:25\"\n",
            "fallback = \"smtp://b.example:25\": is for target = \"remote\"",
        ),
        (
            "[[route]]\ndomains = [\"example.net\"]\ntarget = \"remote\"\nrelay = \"x\"\n",
            "unknown field `relay`",
        ),
        (
            "[[route]]\ndomains = [\"*\"]\ntarget = \"remote\"\n\
             source_address = \"127.0.0.2\"\nip_version = \"6\"\n",
            "route 1 (*): ip_version = \"6\"",
        ),
        (
            "[[route]]\ndomains = [\"*\"]\ntarget = \"remote\"\nrate = \"55 a minute\"\n",
            "invalid rate \"55 a minute\"",
        ),
        (
            "[[route]]\ndomains = [\"*\"]\ntarget = \"remote\"\nconcurrency = 0\n",
            "route 1 (*): concurrency = 0: must be at least 1",
        ),
        (
            "[[route]]\ndomains = [\"*\"]\ntarget = \"remote\"\nhelo_name = \"not a name\"\n",
            "route 1 (*): helo_name = \"not a name\": must be a domain name",
        ),
    ];
    for (config, expect) in cases {
        let (code, _, err) = cli(config, &["check"]);
        assert_eq!(code, 78, "{config}\n{err}");
        assert!(
            err.contains(expect),
            "{config}\nexpected {expect:?} in:\n{err}"
        );
    }
    // A route after a catch-all is allowed, with a warning.
    let (code, _, err) = cli(
        "[[route]]\ndomains = [\"*\"]\ntarget = \"remote\"\n\
         [[route]]\ndomains = [\"example.net\"]\ntarget = \"remote\"\n",
        &["check"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("route 2 (example.net) is never used: route 1 (*)"),
        "{err}"
    );
}

#[test]
fn routes_prints_the_table_and_tells_which_route_a_recipient_takes() {
    let config = "[delivery]\ntarget = \"smtp://127.0.0.1:2525\"\ntls = \"none\"\n\
        [[route]]\ndomains = [\"example.net\", \".example.net\"]\n\
        senders = [\"billing@example.org\"]\n\
        target = [\"smtp://127.0.0.1:2526\", \"smtp://127.0.0.1:2527\"]\n\
        helo_name = \"mail.example.org\"\n\
        [[route]]\ndomains = [\"*\"]\ntarget = \"remote\"\n\
        fallback = \"smtp://127.0.0.1:2528\"\n";
    let (code, out, err) = cli(config, &["routes"]);
    assert_eq!(code, 0, "{err}");
    for expect in [
        "route 1: example.net, .example.net from billing@example.org",
        "target    smtp://127.0.0.1:2526, then smtp://127.0.0.1:2527",
        "helo      mail.example.org",
        "route 2: *",
        "fallback  smtp://127.0.0.1:2528",
        "[delivery]: recipients no route matches",
        "target    smtp://127.0.0.1:2525",
    ] {
        assert!(out.contains(expect), "{expect:?} in:\n{out}");
    }
    let (code, out, _) = cli(
        config,
        &[
            "routes",
            "--test",
            "a@mx.example.net",
            "--from",
            "billing@example.org",
        ],
    );
    assert_eq!(code, 0);
    assert!(out.starts_with("a@mx.example.net: route 1 ("), "{out}");
    let (_, out, _) = cli(
        config,
        &[
            "routes",
            "--test",
            "a@mx.example.net",
            "--from",
            "x@example.org",
        ],
    );
    assert!(out.starts_with("a@mx.example.net: route 2 (*)"), "{out}");
    assert!(out.contains("fallback  smtp://127.0.0.1:2528"), "{out}");
    let (code, _, err) = cli(config, &["routes", "--test", "not an address"]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("--test"), "{err}");
}
