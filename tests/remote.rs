//! MX delivery (`target = "remote"`) against a real DNS server (dnsmasq)
//! and real SMTP sinks (Postfix's smtp-sink), all on loopback.

mod common;

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::dns::dnsmasq;
use common::peers::Reaper;
use common::scripted::{addr, sender, Scripted};
use common::{files_in, test_config, wait_for};
use mailqueue::config::{Config, TargetSpec};
use mailqueue::delivery::dns::{RecordType, Resolver};
use mailqueue::delivery::remote::{RemoteSettings, RemoteTarget};
use mailqueue::delivery::smtp_client::ClientSettings;
use mailqueue::queue::meta::RcptStatus;
use mailqueue::{Envelope, Queue};

const LONG: Duration = Duration::from_secs(20);
const MSG: &[u8] = b"Subject: remote test\r\n\r\nbody\r\n";

fn require(program: &str, peer: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(program);
        if p.exists() {
            return p;
        }
    }
    panic!("test peer missing: {program} ({peer}); run tests/run.sh to install it");
}

/// A port free on every loopback address the sinks use.
fn free_tcp_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
            .iter()
            .all(|ip| TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
}

/// smtp-sink on `ip:port`, dumping each transaction into a file in `dir`.
fn sink(ip: &str, port: u16, dir: &Path, extra: &[&str]) -> Reaper {
    let bin = require("smtp-sink", "Debian package postfix");
    let template = format!("{}/%M.", dir.display());
    let child = Command::new(bin)
        .args(["-u", "root", "-d", &template])
        .args(extra)
        .arg(format!("{ip}:{port}"))
        .arg("100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Reaper(child);
    assert!(
        wait_for(LONG, || TcpStream::connect((ip, port)).is_ok()),
        "smtp-sink did not start"
    );
    proc
}

fn dumps(dir: &Path) -> Vec<String> {
    files_in(dir)
        .into_iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .collect()
}

fn remote_config(spool: &Path, dns_port: u16, mx_port: u16) -> Config {
    let mut c = test_config(spool);
    c.delivery.target = TargetSpec::Remote;
    c.delivery.dns_servers = vec![format!("127.0.0.1:{dns_port}")];
    c.delivery.dns_timeout = Duration::from_millis(300);
    c.delivery.mx_port = mx_port;
    c.delivery.connect_timeout = Duration::from_secs(2);
    c.delivery.command_timeout = Duration::from_secs(10);
    c.delivery.tls = mailqueue::config::TlsPolicy::None;
    c
}

fn open(config: &Config, bounces: &Scripted) -> Queue {
    let target = mailqueue::build_target(&config.delivery.target, config).unwrap();
    Queue::open_with_bounce_target(config.queue_options(), target, bounces.arc()).unwrap()
}

fn send(queue: &Queue, rcpts: &[&str]) {
    let env = Envelope::new(
        sender("s@example.org"),
        rcpts.iter().map(|r| addr(r)).collect(),
    );
    queue.enqueue(&env, MSG).unwrap();
}

fn spool_empty(c: &Config) -> bool {
    files_in(&c.spool.join("queue")).is_empty()
}

#[test]
fn mx_preference_is_followed_and_a_refusing_host_is_skipped() {
    let port = free_tcp_port();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _sa = sink("127.0.0.2", port, a.path(), &[]);
    let _sb = sink("127.0.0.4", port, b.path(), &[]);
    let (_dns, dns_port) = dnsmasq(&[
        // order.test: the preferred host is sink A.
        "--mx-host=order.test,mx-a.order.test,10".into(),
        "--mx-host=order.test,mx-b.order.test,20".into(),
        "--host-record=mx-a.order.test,127.0.0.2".into(),
        "--host-record=mx-b.order.test,127.0.0.4".into(),
        // fallback.test: the preferred host refuses connections.
        "--mx-host=fallback.test,mx-dead.fallback.test,10".into(),
        "--mx-host=fallback.test,mx-b.fallback.test,20".into(),
        "--host-record=mx-dead.fallback.test,127.0.0.3".into(),
        "--host-record=mx-b.fallback.test,127.0.0.4".into(),
    ]);
    let spool = tempfile::tempdir().unwrap();
    let config = remote_config(spool.path(), dns_port, port);
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &bounces);
    send(&queue, &["u@order.test"]);
    assert!(wait_for(LONG, || spool_empty(&config)));
    assert_eq!(
        dumps(a.path()).len(),
        1,
        "the preferred MX did not get the message"
    );
    assert!(dumps(b.path()).is_empty());
    send(&queue, &["u@fallback.test"]);
    assert!(wait_for(LONG, || spool_empty(&config)));
    let got = dumps(b.path());
    assert_eq!(got.len(), 1, "no fallback to the second MX");
    assert!(
        got[0].contains("X-Rcpt-Args: <u@fallback.test>"),
        "{}",
        got[0]
    );
    assert_eq!(bounces.attempts(), 0);
    queue.close();
}

#[test]
fn a_domain_without_mx_gets_mail_at_its_own_address() {
    let port = free_tcp_port();
    let a = tempfile::tempdir().unwrap();
    let _sa = sink("127.0.0.2", port, a.path(), &[]);
    let (_dns, dns_port) = dnsmasq(&["--host-record=implicit.test,127.0.0.2".into()]);
    let spool = tempfile::tempdir().unwrap();
    let config = remote_config(spool.path(), dns_port, port);
    let queue = open(&config, &Scripted::new(vec![]));
    send(&queue, &["u@implicit.test"]);
    assert!(wait_for(LONG, || spool_empty(&config)));
    assert_eq!(dumps(a.path()).len(), 1);
    queue.close();
}

#[test]
fn null_mx_and_nxdomain_bounce_at_once_with_their_status() {
    let (_dns, dns_port) = dnsmasq(&["--dns-rr=nullmx.test,15,000000".into()]);
    let spool = tempfile::tempdir().unwrap();
    let config = remote_config(spool.path(), dns_port, free_tcp_port());
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &bounces);
    send(&queue, &["u@nullmx.test", "v@nowhere.test"]);
    assert!(wait_for(LONG, || spool_empty(&config) && bounces.attempts() == 1));
    let body = String::from_utf8(bounces.seen()[0].body.clone()).unwrap();
    let fields = |rcpt: &str| -> String {
        let start = body
            .find(&format!("Final-Recipient: rfc822; {rcpt}"))
            .unwrap();
        body[start..].split("\r\n\r\n").next().unwrap().to_string()
    };
    let null = fields("u@nullmx.test");
    assert!(null.contains("Status: 5.1.10"), "{null}");
    assert!(null.contains("Diagnostic-Code: smtp; 556 5.1.10"), "{null}");
    let nx = fields("v@nowhere.test");
    assert!(nx.contains("Status: 5.1.2"), "{nx}");
    assert!(nx.contains("Diagnostic-Code: smtp; 550 5.1.2"), "{nx}");
    queue.close();
}

#[test]
fn a_silent_dns_server_defers_instead_of_bouncing() {
    // A socket that takes queries and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns_port = silent.local_addr().unwrap().port();
    let spool = tempfile::tempdir().unwrap();
    let mut config = remote_config(spool.path(), dns_port, free_tcp_port());
    config.queue.initial_retry = Duration::from_secs(3600);
    config.queue.max_retry_interval = Duration::from_secs(3600);
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &bounces);
    send(&queue, &["u@d.test"]);
    assert!(wait_for(LONG, || queue.list().unwrap()[0].recipients[0]
        .tries
        == 1));
    let meta = &queue.list().unwrap()[0];
    let r = &meta.recipients[0];
    assert_eq!(r.status, RcptStatus::Pending);
    let err = r.last_error.as_ref().unwrap();
    assert_eq!(
        (err.code, err.status().to_string().as_str()),
        (451, "4.4.3"),
        "{err}"
    );
    assert_eq!(bounces.attempts(), 0);
    queue.close();
}

#[test]
fn an_answer_too_big_for_udp_is_fetched_over_tcp() {
    let records: Vec<String> = (0..40)
        .map(|i| format!("--mx-host=big.test,mx-with-a-rather-long-name-number-{i}.big.test,10"))
        .collect();
    let (_dns, dns_port) = dnsmasq(&records);
    let resolver =
        Resolver::new(&[format!("127.0.0.1:{dns_port}")], Duration::from_secs(2)).unwrap();
    // Over UDP dnsmasq fits only a few of the 40 records and sets TC.
    let all = resolver.lookup("big.test", RecordType::Mx).unwrap();
    assert_eq!(all.len(), 40);
}

#[test]
fn three_domains_make_three_transactions() {
    let port = free_tcp_port();
    let a = tempfile::tempdir().unwrap();
    let _sa = sink("127.0.0.2", port, a.path(), &[]);
    let mut records = vec!["--host-record=mx.shared.test,127.0.0.2".to_string()];
    for d in ["one", "two", "three"] {
        records.push(format!("--mx-host={d}.test,mx.shared.test,10"));
    }
    let (_dns, dns_port) = dnsmasq(&records);
    let spool = tempfile::tempdir().unwrap();
    let config = remote_config(spool.path(), dns_port, port);
    let queue = open(&config, &Scripted::new(vec![]));
    send(
        &queue,
        &["a@one.test", "b@two.test", "c@three.test", "d@one.test"],
    );
    assert!(wait_for(LONG, || spool_empty(&config)));
    let mut got = dumps(a.path());
    assert_eq!(got.len(), 3, "one transaction per domain");
    got.sort_by_key(|d| d.matches("X-Rcpt-Args").count());
    let rcpts = |d: &str| -> Vec<String> {
        d.lines()
            .filter_map(|l| l.strip_prefix("X-Rcpt-Args: "))
            .map(|s| s.to_string())
            .collect()
    };
    let mut singles: Vec<Vec<String>> = got[..2].iter().map(|d| rcpts(d)).collect();
    singles.sort();
    assert_eq!(
        singles,
        vec![
            vec!["<b@two.test>".to_string()],
            vec!["<c@three.test>".to_string()]
        ]
    );
    assert_eq!(rcpts(&got[2]), vec!["<a@one.test>", "<d@one.test>"]);
    queue.close();
}

#[test]
fn the_destination_concurrency_limit_holds_under_load() {
    let port = free_tcp_port();
    let a = tempfile::tempdir().unwrap();
    // One second before each DATA reply keeps connections busy.
    let _sa = sink("127.0.0.2", port, a.path(), &["-w", "1"]);
    let (_dns, dns_port) = dnsmasq(&[
        "--mx-host=slow.test,mx.slow.test,10".into(),
        "--host-record=mx.slow.test,127.0.0.2".into(),
    ]);
    let spool = tempfile::tempdir().unwrap();
    let mut config = remote_config(spool.path(), dns_port, port);
    config.queue.workers = 8;
    let client = ClientSettings {
        helo_name: "mq.test".into(),
        lmtp: false,
        tls: mailqueue::config::TlsPolicy::None,
        tls_connector: None,
        auth: None,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(10),
        data_timeout: Duration::from_secs(10),
        source_address: None,
        ip_version: Default::default(),
        messages_per_connection: 0,
    };
    let resolver = Resolver::new(&config.delivery.dns_servers, Duration::from_secs(1)).unwrap();
    let target = Arc::new(RemoteTarget::new(
        resolver,
        RemoteSettings {
            client: Arc::new(client),
            mx_port: port,
            destination_concurrency: 2,
            rate: None,
            connection_cache_time: Duration::from_secs(5),
        },
    ));
    let queue = Queue::open(config.queue_options(), target.clone()).unwrap();
    for i in 0..8 {
        send(&queue, &[&format!("u{i}@slow.test")]);
    }
    let mut peak = 0;
    assert!(wait_for(Duration::from_secs(60), || {
        peak = peak.max(target.active_connections("slow.test"));
        assert!(peak <= 2, "{peak} connections to one destination");
        spool_empty(&config)
    }));
    assert_eq!(
        peak, 2,
        "the limit was never reached, so the test proved nothing"
    );
    assert_eq!(dumps(a.path()).len(), 8);
    queue.close();
}

#[test]
fn under_tls_may_a_botched_handshake_falls_back_to_clear_text() {
    let port = free_tcp_port();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record");
    let python = require("python3", "Python 3");
    let child = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/broken_tls.py"
        ))
        .args(["127.0.0.2", &port.to_string()])
        .arg(&record)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = Reaper(child);
    assert!(
        wait_for(LONG, || TcpStream::connect(("127.0.0.2", port)).is_ok()),
        "broken_tls.py did not start"
    );
    let (_dns, dns_port) = dnsmasq(&[
        "--mx-host=tls.test,mx.tls.test,10".into(),
        "--host-record=mx.tls.test,127.0.0.2".into(),
    ]);
    let spool = tempfile::tempdir().unwrap();
    let mut config = remote_config(spool.path(), dns_port, port);
    config.delivery.tls = mailqueue::config::TlsPolicy::May;
    let queue = open(&config, &Scripted::new(vec![]));
    send(&queue, &["u@tls.test"]);
    assert!(wait_for(LONG, || spool_empty(&config)), "not delivered");
    let got = std::fs::read_to_string(&record).unwrap();
    assert_eq!(got, "<s@example.org> -> <u@tls.test>\n");
    queue.close();

    // Under encrypt the same server gets nothing: the mail waits.
    let spool = tempfile::tempdir().unwrap();
    let mut config = remote_config(spool.path(), dns_port, port);
    config.delivery.tls = mailqueue::config::TlsPolicy::Encrypt;
    config.queue.initial_retry = Duration::from_secs(3600);
    config.queue.max_retry_interval = Duration::from_secs(3600);
    let queue = open(&config, &Scripted::new(vec![]));
    send(&queue, &["v@tls.test"]);
    assert!(wait_for(LONG, || queue.list().unwrap()[0].recipients[0]
        .tries
        == 1));
    let err = queue.list().unwrap()[0].recipients[0]
        .last_error
        .clone()
        .unwrap();
    assert_eq!(err.status().to_string(), "4.7.5", "{err}");
    assert_eq!(
        std::fs::read_to_string(&record).unwrap().lines().count(),
        1,
        "sent in clear under encrypt"
    );
    queue.close();
}

#[test]
fn a_hanging_destination_does_not_take_every_worker() {
    // hang.test's server accepts and never greets; fast.test's is
    // smtp-sink. With 4 workers and destination_concurrency 20, hang.test
    // may hold 3 of them: mail for fast.test still goes out at once.
    let port = free_tcp_port();
    let hang = TcpListener::bind(("127.0.0.2", port)).unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let held = Arc::clone(&held);
        std::thread::spawn(move || {
            for s in hang.incoming().flatten() {
                held.lock().unwrap().push(s);
            }
        });
    }
    let fast = tempfile::tempdir().unwrap();
    let _sink = sink("127.0.0.3", port, fast.path(), &[]);
    let (_dns, dns_port) = dnsmasq(&[
        "--mx-host=hang.test,mx.hang.test,10".into(),
        "--host-record=mx.hang.test,127.0.0.2".into(),
        "--mx-host=fast.test,mx.fast.test,10".into(),
        "--host-record=mx.fast.test,127.0.0.3".into(),
    ]);
    let spool = tempfile::tempdir().unwrap();
    let mut config = remote_config(spool.path(), dns_port, port);
    config.queue.workers = 4;
    config.delivery.destination_concurrency = 20;
    config.delivery.command_timeout = Duration::from_secs(8);
    let bounces = Scripted::new(vec![]);
    let queue = open(&config, &bounces);
    for i in 0..6 {
        send(&queue, &[&format!("u{i}@hang.test")]);
    }
    // The hanging server has what it may get before fast.test's turn.
    assert!(wait_for(LONG, || held.lock().unwrap().len() >= 3));
    std::thread::sleep(Duration::from_millis(300));
    send(&queue, &["v@fast.test"]);
    assert!(
        wait_for(Duration::from_secs(5), || !dumps(fast.path()).is_empty()),
        "fast.test waited for hang.test; {} connections to hang.test",
        held.lock().unwrap().len()
    );
    assert_eq!(held.lock().unwrap().len(), 3, "the share of 4 workers is 3");
    queue.close();
}

#[test]
fn the_rate_limit_counts_per_recipient_domain_and_a_waiting_one_uses_no_try() {
    let port = free_tcp_port();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _sa = sink("127.0.0.2", port, a.path(), &[]);
    let _sb = sink("127.0.0.3", port, b.path(), &[]);
    let (_dns, dns_port) = dnsmasq(&[
        "--mx-host=one.test,mx.one.test,10".into(),
        "--host-record=mx.one.test,127.0.0.2".into(),
        "--mx-host=two.test,mx.two.test,10".into(),
        "--host-record=mx.two.test,127.0.0.3".into(),
    ]);
    let spool = tempfile::tempdir().unwrap();
    let mut config = remote_config(spool.path(), dns_port, port);
    config.delivery.rate = Config::from_toml("[delivery]\nrate = \"1/1h\"\n")
        .unwrap()
        .delivery
        .rate;
    let queue = open(&config, &Scripted::new(vec![]));
    send(&queue, &["u1@one.test"]);
    assert!(wait_for(LONG, || spool_empty(&config)), "not delivered");

    // one.test has used its token for the hour; two.test has its own.
    let env = Envelope::new(
        sender("s@example.org"),
        vec![addr("u2@one.test"), addr("v@two.test")],
    );
    let id = queue.enqueue(&env, MSG).unwrap();
    assert!(wait_for(LONG, || dumps(b.path()).len() == 1), "two.test");
    let spool_files = mailqueue::queue::spool::Spool::open(&config.spool).unwrap();
    let mut meta = None;
    assert!(wait_for(LONG, || {
        meta = spool_files.read_meta(&id).ok();
        meta.as_ref()
            .is_some_and(|m| m.recipients[1].status == RcptStatus::Delivered)
    }));
    let meta = meta.unwrap();
    let waiting = &meta.recipients[0];
    assert_eq!(waiting.status, RcptStatus::Pending);
    assert_eq!(waiting.tries, 0);
    assert_eq!(waiting.last_error, None);
    let throttle = waiting.throttled.as_ref().expect("recorded as throttled");
    assert_eq!(throttle.reason, "rate 1/1h to one.test");
    let hour = Duration::from_secs(3600);
    let last = meta.last_attempt.unwrap();
    assert!(throttle.until >= last.plus(hour - Duration::from_secs(60)));
    assert!(meta.next_attempt >= last.plus(hour - Duration::from_secs(60)));
    assert_eq!(dumps(a.path()).len(), 1, "one.test got only the first");
    queue.close();
}
