//! The outbound connection policy of `[delivery]`: `source_address`,
//! `ip_version` and `messages_per_connection`, against real peers on
//! loopback (smtp-sink, aiosmtpd, dnsmasq). Messages go straight to the
//! target built from the configuration, without a queue: every step is
//! one call, so nothing waits on timers.

mod common;

use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::dns::dnsmasq;
use common::peers::{require_tool, PyServer, Reaper, SmtpSink};
use common::{files_in, wait_for};
use mailqueue::delivery::outbound::IpVersion;
use mailqueue::{Body, Config, DeliveryTarget, MessageId, MessageInfo, Recipient};

const LONG: Duration = Duration::from_secs(20);
const MSG: &[u8] = b"Subject: connection policy\r\n\r\nbody\r\n";

/// A test configuration (no TLS, short timeouts) with `extra` added to
/// its `[delivery]` section, parsed and checked as a file would be.
fn config(dir: &Path, target: &str, extra: &str) -> Config {
    let text = format!(
        "hostname = \"mq.test\"\n[listen]\nsmtp = []\n[delivery]\ntarget = \"{target}\"\n\
         tls = \"none\"\nconnect_timeout = \"2s\"\ncommand_timeout = \"10s\"\n{extra}\n"
    );
    let mut c = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    c.spool = dir.to_path_buf();
    c
}

fn target(c: &Config) -> Arc<dyn DeliveryTarget> {
    mailqueue::build_target(&c.delivery.target, c).unwrap()
}

/// Sends one message to `rcpt` through `target`; its one outcome.
fn send(target: &dyn DeliveryTarget, rcpt: &str) -> Result<(), mailqueue::DeliveryError> {
    let info = MessageInfo {
        id: MessageId::generate(),
        sender: Some("s@example.org".parse().unwrap()),
        params: Default::default(),
        size: MSG.len() as u64,
    };
    let rcpts = [Recipient::new(rcpt.parse().unwrap())];
    let mut outcomes = target.deliver(&info, &rcpts, &Body::from_bytes(MSG.to_vec()));
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0).result.map(|_| ())
}

/// The client addresses smtp-sink saw, one per message it dumped.
fn client_addrs(messages: &[String]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("X-Client-Addr: ")))
        .map(str::to_string)
        .collect()
}

/// smtp-sink on `127.0.0.1:port`, dumping each message into `dir`.
fn sink_on(port: u16, dir: &Path) -> Reaper {
    let bin = require_tool("smtp-sink", "Debian package postfix");
    let child = Command::new(bin)
        .args(["-u", "root", "-d", &format!("{}/%M.", dir.display())])
        .arg(format!("127.0.0.1:{port}"))
        .arg("100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Reaper(child);
    assert!(
        wait_for(LONG, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "smtp-sink did not start on port {port}"
    );
    proc
}

fn dumps(dir: &Path) -> Vec<String> {
    files_in(dir)
        .into_iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .filter(|d| !d.is_empty())
        .collect()
}

/// A listener on `[::1]:port` (port 0: any) that counts the connections
/// it gets and hangs up on each at once, before any greeting: a client
/// that is sent there tries its next address.
fn ipv6_counter(port: u16) -> std::io::Result<(u16, Arc<AtomicUsize>)> {
    let l = TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))?;
    let port = l.local_addr()?.port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    Ok((port, count))
}

/// An IPv6 counter and an smtp-sink on 127.0.0.1, on the same port.
fn dual_stack_mx() -> (u16, Arc<AtomicUsize>, Reaper, tempfile::TempDir) {
    for _ in 0..10 {
        let (port, count) = ipv6_counter(0).expect("no IPv6 loopback (::1) on this machine");
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let sink = sink_on(port, dir.path());
        return (port, count, sink, dir);
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

#[test]
fn a_relay_target_connects_from_the_source_address() {
    let sink = SmtpSink::start(&[]);
    let spool = tempfile::tempdir().unwrap();
    let url = sink.url("smtp");

    // Without it the kernel picks the address of the route: 127.0.0.1.
    let plain = config(spool.path(), &url, "");
    send(&*target(&plain), "a@example.net").unwrap();
    assert!(wait_for(LONG, || sink.count() == 1));
    assert_eq!(client_addrs(&sink.messages()), ["127.0.0.1"]);

    let bound = config(spool.path(), &url, "source_address = \"127.0.0.2\"");
    send(&*target(&bound), "b@example.net").unwrap();
    assert!(wait_for(LONG, || sink.count() == 2));
    let mut seen = client_addrs(&sink.messages());
    seen.sort();
    assert_eq!(seen, ["127.0.0.1", "127.0.0.2"]);
}

#[test]
fn an_mx_host_is_reached_from_the_source_address() {
    let port = common::daemon::free_port();
    let dir = tempfile::tempdir().unwrap();
    let _sink = sink_on(port, dir.path());
    let (_dns, dns_port) = dnsmasq(&[
        "--mx-host=d.test,mx.d.test,10".into(),
        "--host-record=mx.d.test,127.0.0.1".into(),
    ]);
    let spool = tempfile::tempdir().unwrap();
    let c = config(
        spool.path(),
        "remote",
        &format!(
            "dns_servers = [\"127.0.0.1:{dns_port}\"]\nmx_port = {port}\n\
             source_address = \"127.0.0.2\""
        ),
    );
    send(&*target(&c), "u@d.test").unwrap();
    assert!(wait_for(LONG, || dumps(dir.path()).len() == 1));
    assert_eq!(client_addrs(&dumps(dir.path())), ["127.0.0.2"]);
}

#[test]
fn ip_version_4_never_connects_to_the_ipv6_address_of_an_mx_host() {
    // mx.d.test has both 127.0.0.1 (smtp-sink) and ::1 (hangs up).
    let (port, v6_connections, _sink, dir) = dual_stack_mx();
    let (_dns, dns_port) = dnsmasq(&[
        "--mx-host=d.test,mx.d.test,10".into(),
        "--host-record=mx.d.test,127.0.0.1,::1".into(),
    ]);
    let spool = tempfile::tempdir().unwrap();
    let remote = |extra: &str| {
        config(
            spool.path(),
            "remote",
            &format!("dns_servers = [\"127.0.0.1:{dns_port}\"]\nmx_port = {port}\n{extra}"),
        )
    };

    // With "any" the IPv6 address is tried, first: so the test can tell.
    send(&*target(&remote("ip_version = \"any\"")), "a@d.test").unwrap();
    assert_eq!(v6_connections.load(Ordering::SeqCst), 1);
    assert!(wait_for(LONG, || dumps(dir.path()).len() == 1));

    let before = v6_connections.load(Ordering::SeqCst);
    let v4 = remote("ip_version = \"4\"");
    assert_eq!(v4.delivery.ip_version, IpVersion::V4);
    send(&*target(&v4), "b@d.test").unwrap();
    assert!(wait_for(LONG, || dumps(dir.path()).len() == 2));
    assert_eq!(
        v6_connections.load(Ordering::SeqCst),
        before,
        "a connection reached ::1 under ip_version = 4"
    );
    assert_eq!(client_addrs(&dumps(dir.path())), ["127.0.0.1", "127.0.0.1"]);
}

#[test]
fn ip_version_6_with_an_mx_host_of_ipv4_only_is_a_temporary_error_that_says_why() {
    let port = common::daemon::free_port();
    let dir = tempfile::tempdir().unwrap();
    let _sink = sink_on(port, dir.path());
    let (_dns, dns_port) = dnsmasq(&[
        "--mx-host=d.test,mx.d.test,10".into(),
        "--host-record=mx.d.test,127.0.0.1".into(),
    ]);
    let spool = tempfile::tempdir().unwrap();
    let remote = |extra: &str| {
        config(
            spool.path(),
            "remote",
            &format!("dns_servers = [\"127.0.0.1:{dns_port}\"]\nmx_port = {port}\n{extra}"),
        )
    };
    // The same host takes mail over IPv4: the error is the setting's.
    send(&*target(&remote("")), "a@d.test").unwrap();

    let e = send(&*target(&remote("ip_version = \"6\"")), "b@d.test").unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    assert_eq!(
        e.reply().text,
        "mx.d.test has no IPv6 address (ip_version = 6)",
        "{e}"
    );
    assert_eq!(e.reply().status().to_string(), "4.4.4", "{e}");
    // An IPv6 source address rules out the IPv4 host the same way.
    let e = send(&*target(&remote("source_address = \"::1\"")), "c@d.test").unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    assert_eq!(
        e.reply().text,
        "mx.d.test has no IPv6 address (source_address = ::1)"
    );
    assert_eq!(dumps(dir.path()).len(), 1);
}

#[test]
fn a_relay_host_without_an_address_of_the_family_is_a_temporary_error() {
    let sink = SmtpSink::start(&[]);
    let spool = tempfile::tempdir().unwrap();
    let c = config(spool.path(), &sink.url("smtp"), "ip_version = \"6\"");
    let e = send(&*target(&c), "a@example.net").unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    assert_eq!(
        e.reply().text,
        "127.0.0.1 has no IPv6 address (ip_version = 6)"
    );
    assert_eq!(sink.count(), 0);
}

/// Connections the aiosmtpd peer took: one EHLO each (no STARTTLS here).
fn connections(server: &PyServer) -> usize {
    server
        .events()
        .iter()
        .filter(|e| e["step"] == "ehlo")
        .count()
}

#[test]
fn messages_per_connection_closes_a_session_after_so_many_messages() {
    let spool = tempfile::tempdir().unwrap();
    // Reuse is on (60 s, longer than the test) so only the limit closes.
    let reuse = "connection_cache_time = \"60s\"\n";

    let limited = PyServer::start(&[]);
    let c = config(
        spool.path(),
        &limited.url("smtp"),
        &format!("{reuse}messages_per_connection = 2"),
    );
    let t = target(&c);
    for i in 0..5 {
        send(&*t, &format!("u{i}@example.net")).unwrap();
    }
    assert_eq!(limited.wait_messages(5, LONG).len(), 5);
    assert_eq!(connections(&limited), 3, "2 + 2 + 1 messages");

    let unlimited = PyServer::start(&[]);
    let c = config(
        spool.path(),
        &unlimited.url("smtp"),
        &format!("{reuse}messages_per_connection = 0"),
    );
    let t = target(&c);
    for i in 0..5 {
        send(&*t, &format!("u{i}@example.net")).unwrap();
    }
    assert_eq!(unlimited.wait_messages(5, LONG).len(), 5);
    assert_eq!(connections(&unlimited), 1, "one reused connection");
}

#[test]
fn the_config_check_refuses_a_bad_source_address_or_a_family_mismatch() {
    let check = |delivery: &str| Config::from_toml(&format!("[delivery]\n{delivery}\n"));
    let ok = check("source_address = \"127.0.0.2\"\nip_version = \"4\"").unwrap();
    assert_eq!(ok.delivery.source_address, "127.0.0.2");
    assert_eq!(ok.delivery.ip_version, IpVersion::V4);
    assert!(check("source_address = \"::1\"\nip_version = 6").is_ok());
    assert!(check("source_address = \"::1\"").is_ok());
    assert_eq!(
        Config::default().delivery.messages_per_connection,
        100,
        "the documented default"
    );

    let e = check("source_address = \"127.0.0.2\"\nip_version = \"6\"")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("delivery.ip_version") && e.contains("delivery.source_address"),
        "{e}"
    );
    assert!(e.contains("IPv4"), "{e}");
    let e = check("source_address = \"::1\"\nip_version = \"4\"")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("delivery.ip_version") && e.contains("delivery.source_address"),
        "{e}"
    );

    for bad in ["mail.example.org", "127.0.0.2:25", "300.1.1.1", "0.0.0.0"] {
        let e = check(&format!("source_address = \"{bad}\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("delivery.source_address"), "{bad}: {e}");
    }
    let e = check("ip_version = \"5\"").unwrap_err().to_string();
    assert!(e.contains("ip_version"), "{e}");
    let e = check("messages_per_connection = -1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("messages_per_connection"), "{e}");
}
