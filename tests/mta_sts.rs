//! MTA-STS (RFC 8461) for MX delivery, with real peers on loopback:
//! dnsmasq serves the MX, address and `_mta-sts` TXT records, a Python
//! HTTPS server (tests/peers/mta_sts_server.py) serves the policies with a
//! certificate from a CA made in the test, which the daemon trusts through
//! `ca_file`, and aiosmtpd with STARTTLS is the MX host.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::daemon::{free_port, queued_id, run_mailqueue, spawn_serve, Client, Daemon, Setup};
use common::dns::dnsmasq;
use common::peers::{require_python_module, start_python_peer, PyServer, Reaper};
use common::tls::{ca_signed, self_signed, TestCert};
use common::wait_for;

const LONG: Duration = Duration::from_secs(20);
const MSG: &[u8] = b"From: a@example.org\r\nTo: b@d.test\r\nSubject: sts\r\n\r\nHello.\r\n";

/// Every name a server of these tests shows a certificate for.
const NAMES: &[&str] = &[
    "mta-sts.d.test",
    "mta-sts.e.test",
    "mta-sts.f.test",
    "mx.d.test",
    "mx.e.test",
    "mx.f.test",
];

fn enforce(mx: &str, max_age: u64) -> String {
    format!("version: STSv1\r\nmode: enforce\r\nmx: {mx}\r\nmax_age: {max_age}\r\n")
}

/// The HTTPS policy server: serves `<policies>/mta-sts.<domain>`.
struct PolicyServer {
    child: Option<Reaper>,
    port: u16,
    dir: tempfile::TempDir,
    policies: tempfile::TempDir,
}

impl PolicyServer {
    fn start(cert: &TestCert) -> PolicyServer {
        let policies = tempfile::tempdir().unwrap();
        let (child, port, dir) = start_python_peer(
            "mta_sts_server.py",
            "the Python HTTPS policy server",
            &[
                "--policies",
                policies.path().to_str().unwrap(),
                "--tls-cert",
                cert.cert_arg(),
                "--tls-key",
                cert.key_arg(),
            ],
        );
        PolicyServer {
            child: Some(child),
            port,
            dir,
            policies,
        }
    }

    /// Publishes (or replaces) the policy of `domain`.
    fn publish(&self, domain: &str, text: &str) {
        fs::write(self.policies.path().join(format!("mta-sts.{domain}")), text).unwrap();
    }

    /// Requests served for `domain`'s policy host.
    fn fetches(&self, domain: &str) -> usize {
        let host = format!("\"mta-sts.{domain}\"");
        fs::read_to_string(self.dir.path().join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&host))
            .count()
    }

    fn stop(&mut self) {
        self.child.take();
    }
}

/// dnsmasq with, for each domain, its MX host on 127.0.0.1, its policy
/// host, and the `_mta-sts` TXT record naming policy `id` (none for
/// domains given without one).
fn dns(domains: &[(&str, Option<&str>)], mx_names: &[(&str, &str)]) -> (Reaper, u16) {
    let mut args = Vec::new();
    for (domain, id) in domains {
        args.push(format!("--host-record=mta-sts.{domain},127.0.0.1"));
        if let Some(id) = id {
            args.push(format!("--txt-record=_mta-sts.{domain},v=STSv1; id={id}"));
        }
    }
    for (domain, mx) in mx_names {
        args.push(format!("--mx-host={domain},{mx},10"));
        args.push(format!("--host-record={mx},127.0.0.1"));
    }
    dnsmasq(&args)
}

/// MX delivery through dnsmasq to the peer on `mx_port`, policies from
/// `https_port`, trusting `ca`; no connection reuse, so each message
/// looks its policy up.
fn setup(dns_port: u16, mx_port: u16, https_port: u16, ca: &Path) -> Setup {
    Setup::to("remote").delivery(&format!(
        "mx_port = {mx_port}\ndns_servers = [\"127.0.0.1:{dns_port}\"]\ndns_timeout = \"2s\"\n\
         ca_file = {:?}\nmta_sts_port = {https_port}\nconnection_cache_time = \"0s\"",
        ca.to_str().unwrap()
    ))
}

/// A TLS MX host with the test CA's certificate.
fn tls_mx(cert: &TestCert) -> PyServer {
    PyServer::start(&["--tls-cert", cert.cert_arg(), "--tls-key", cert.key_arg()])
}

fn submit(d: &Daemon, to: &str) -> String {
    let mut c = Client::connect(d.addr()).unwrap();
    let id = queued_id(&c.mail("a@example.org", &[to], MSG));
    c.quit();
    id
}

/// What `mailqueue list` prints for the daemon's queue.
fn list(d: &Daemon) -> String {
    let config = d.config_path();
    let (_, out, err) = run_mailqueue(&["--config", config.to_str().unwrap(), "list"]);
    out + &err
}

fn envelope_steps(peer: &PyServer) -> usize {
    peer.events()
        .iter()
        .filter(|e| e["step"] == "mail" || e["step"] == "rcpt")
        .count()
}

#[test]
fn enforce_with_a_matching_mx_delivers_over_verified_tls_and_caches_the_policy() {
    require_python_module("aiosmtpd");
    let cert = ca_signed(NAMES);
    let policies = PolicyServer::start(&cert);
    policies.publish("d.test", &enforce("mx.d.test", 86400));
    let (_dns, dns_port) = dns(&[("d.test", Some("1"))], &[("d.test", "mx.d.test")]);
    let mx = tls_mx(&cert);
    let d = Daemon::start(&setup(dns_port, mx.port, policies.port, &cert.ca));
    submit(&d, "b@d.test");
    let got = mx.wait_messages(1, LONG);
    assert_eq!(got[0].meta["tls"], true, "{:?}", got[0].meta);
    assert!(
        d.wait_log(
            "d.test: MTA-STS policy 1 fetched: mode enforce, mx mx.d.test",
            LONG
        ),
        "{}",
        d.log()
    );
    assert_eq!(policies.fetches("d.test"), 1);
    let cached = fs::read_to_string(d.spool().join("mta-sts/d.test.json")).unwrap();
    assert!(cached.contains("\"id\": \"1\""), "{cached}");
    assert!(cached.contains("mode: enforce"), "{cached}");

    // A second message uses the cached policy: the TXT id is the same.
    submit(&d, "c@d.test");
    mx.wait_messages(2, LONG);
    assert_eq!(policies.fetches("d.test"), 1);
}

#[test]
fn enforce_defers_an_mx_the_policy_does_not_name_and_says_why() {
    require_python_module("aiosmtpd");
    let cert = ca_signed(NAMES);
    let policies = PolicyServer::start(&cert);
    policies.publish("d.test", &enforce("mx.other.test", 86400));
    let (_dns, dns_port) = dns(&[("d.test", Some("1"))], &[("d.test", "mx.d.test")]);
    let mx = tls_mx(&cert);
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start(
        &setup(dns_port, mx.port, policies.port, &cert.ca)
            .set("metrics", &format!("listen = {metrics:?}")),
    );
    submit(&d, "b@d.test");
    let why = "MTA-STS policy of d.test (enforce) does not allow MX host mx.d.test \
               (mx: mx.other.test)";
    assert!(d.wait_log("status=deferred", LONG), "{}", d.log());
    assert!(d.log().contains(why), "{}", d.log());
    assert!(d.log().contains("4.7.5"), "{}", d.log());
    assert!(
        wait_for(LONG, || list(&d).contains(why)),
        "list: {}",
        list(&d)
    );
    // Not even a connection went to the host.
    assert!(mx.events().is_empty(), "{:?}", mx.events());
    assert_eq!(d.queued().len(), 1);
    // Counted: one fetch, and a refusal at each try.
    let scraped = scrape(&metrics);
    assert!(
        scraped.contains("mailqueue_mta_sts_fetches_total{result=\"ok\"} 1\n"),
        "{scraped}"
    );
    assert!(
        scraped.contains("mailqueue_mta_sts_fetches_total{result=\"failed\"} 0\n"),
        "{scraped}"
    );
    let refusals = scraped
        .lines()
        .find_map(|l| l.strip_prefix("mailqueue_mta_sts_refusals_total "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(refusals.is_some_and(|n| n >= 1), "{scraped}");
}

/// The metrics endpoint's text.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw
}

#[test]
fn enforce_defers_an_mx_whose_certificate_does_not_verify() {
    require_python_module("aiosmtpd");
    let cert = ca_signed(NAMES);
    let policies = PolicyServer::start(&cert);
    policies.publish("d.test", &enforce("mx.d.test", 86400));
    let (_dns, dns_port) = dns(&[("d.test", Some("1"))], &[("d.test", "mx.d.test")]);
    // Self-signed: tls = "may" would send to it, the policy must not.
    let own = self_signed(&["mx.d.test"]);
    let mx = tls_mx(&own);
    let d = Daemon::start(&setup(dns_port, mx.port, policies.port, &cert.ca));
    submit(&d, "b@d.test");
    assert!(d.wait_log("status=deferred", LONG), "{}", d.log());
    assert!(
        d.log()
            .contains("MTA-STS policy of d.test (enforce) requires verified TLS: TLS handshake with mx.d.test failed"),
        "{}",
        d.log()
    );
    assert_eq!(envelope_steps(&mx), 0, "{:?}", mx.events());
}

#[test]
fn testing_mode_delivers_and_logs_what_enforce_would_refuse() {
    require_python_module("aiosmtpd");
    let cert = ca_signed(NAMES);
    let policies = PolicyServer::start(&cert);
    policies.publish(
        "d.test",
        "version: STSv1\nmode: testing\nmx: mx.other.test\nmax_age: 86400\n",
    );
    let (_dns, dns_port) = dns(&[("d.test", Some("7"))], &[("d.test", "mx.d.test")]);
    // Without STARTTLS at all.
    let mx = PyServer::start(&[]);
    let d = Daemon::start(&setup(dns_port, mx.port, policies.port, &cert.ca));
    submit(&d, "b@d.test");
    let got = mx.wait_messages(1, LONG);
    assert_eq!(got[0].meta["tls"], false);
    assert!(d.wait_log("status=sent", LONG), "{}", d.log());
    assert!(
        d.log().contains(
            "d.test: MTA-STS (testing): enforce would refuse MX host mx.d.test \
             (mx: mx.other.test); delivering anyway"
        ),
        "{}",
        d.log()
    );
}

#[test]
fn testing_mode_logs_an_mx_without_tls() {
    require_python_module("aiosmtpd");
    let cert = ca_signed(NAMES);
    let policies = PolicyServer::start(&cert);
    policies.publish(
        "d.test",
        "version: STSv1\nmode: testing\nmx: mx.d.test\nmax_age: 86400\n",
    );
    let (_dns, dns_port) = dns(&[("d.test", Some("7"))], &[("d.test", "mx.d.test")]);
    let mx = PyServer::start(&[]);
    let d = Daemon::start(&setup(dns_port, mx.port, policies.port, &cert.ca));
    submit(&d, "b@d.test");
    mx.wait_messages(1, LONG);
    assert!(
        d.wait_log(
            "d.test: MTA-STS (testing): enforce would refuse MX host mx.d.test: ",
            LONG
        ),
        "{}",
        d.log()
    );
}

#[test]
fn a_cached_policy_is_enforced_after_a_restart_with_the_policy_host_gone() {
    require_python_module("aiosmtpd");
    let cert = ca_signed(NAMES);
    let mut policies = PolicyServer::start(&cert);
    policies.publish("d.test", &enforce("mx.d.test", 86400));
    let (_dns, dns_port) = dns(&[("d.test", Some("1"))], &[("d.test", "mx.d.test")]);
    let mx = tls_mx(&cert);
    let setup = setup(dns_port, mx.port, policies.port, &cert.ca);
    let mut d = Daemon::start(&setup);
    submit(&d, "b@d.test");
    mx.wait_messages(1, LONG);
    assert_eq!(policies.fetches("d.test"), 1);

    // The policy host goes away, and the MX host now shows a certificate
    // that does not verify: without the cached policy, tls = "may" would
    // deliver to it.
    policies.stop();
    let own = self_signed(&["mx.d.test"]);
    let impostor = tls_mx(&own);
    d.terminate();
    assert!(d.wait_exit(LONG).is_some(), "the daemon did not stop");
    fs::write(
        d.config_path(),
        setup
            .clone()
            .delivery(&format!("mx_port = {}", impostor.port))
            .toml(&d.spool(), d.port),
    )
    .unwrap();
    let _restarted = Reaper(spawn_serve(&d.config_path(), d.dir.path(), "info"));
    let listening = format!("listening for SMTP on 127.0.0.1:{}", d.port);
    assert!(
        wait_for(LONG, || d.log().matches(&listening).count() == 2),
        "{}",
        d.log()
    );
    submit(&d, "c@d.test");
    assert!(d.wait_log("requires verified TLS", LONG), "{}", d.log());
    assert_eq!(envelope_steps(&impostor), 0, "{:?}", impostor.events());
    // Taken from the spool, not fetched.
    assert_eq!(
        d.log().matches("MTA-STS policy 1 fetched").count(),
        1,
        "{}",
        d.log()
    );
}

#[test]
fn an_expired_policy_is_fetched_again() {
    require_python_module("aiosmtpd");
    let cert = ca_signed(NAMES);
    let policies = PolicyServer::start(&cert);
    // One second: expired by the next message.
    policies.publish("d.test", &enforce("mx.d.test", 1));
    let (_dns, dns_port) = dns(&[("d.test", Some("1"))], &[("d.test", "mx.d.test")]);
    let mx = tls_mx(&cert);
    let d = Daemon::start(&setup(dns_port, mx.port, policies.port, &cert.ca));
    submit(&d, "b@d.test");
    mx.wait_messages(1, LONG);
    assert_eq!(policies.fetches("d.test"), 1);

    // Same TXT id, a new policy that no longer names the MX host.
    policies.publish("d.test", &enforce("mx.other.test", 86400));
    std::thread::sleep(Duration::from_millis(2100));
    submit(&d, "c@d.test");
    assert!(
        d.wait_log("does not allow MX host mx.d.test (mx: mx.other.test)", LONG),
        "{}",
        d.log()
    );
    assert_eq!(policies.fetches("d.test"), 2);
    assert_eq!(mx.messages().len(), 1);
}

#[test]
fn a_bad_policy_counts_as_none_and_is_logged() {
    require_python_module("aiosmtpd");
    let cert = ca_signed(NAMES);
    let policies = PolicyServer::start(&cert);
    // Would refuse the MX host, were it valid.
    policies.publish(
        "d.test",
        "version: STSv2\nmode: enforce\nmx: mx.other.test\nmax_age: 86400\n",
    );
    let big = enforce("mx.other.test", 86400) + &"# padding\n".repeat(7000);
    policies.publish("e.test", &big);
    let (_dns, dns_port) = dns(
        &[("d.test", Some("1")), ("e.test", Some("1"))],
        &[("d.test", "mx.d.test"), ("e.test", "mx.e.test")],
    );
    let mx = tls_mx(&cert);
    let d = Daemon::start(&setup(dns_port, mx.port, policies.port, &cert.ca));
    submit(&d, "b@d.test");
    submit(&d, "b@e.test");
    mx.wait_messages(2, LONG);
    assert!(
        d.wait_log(
            "d.test: MTA-STS policy 1 not usable: bad policy: version \"STSv2\" is not STSv1; \
             delivering as if the domain had no policy",
            LONG
        ),
        "{}",
        d.log()
    );
    assert!(
        d.wait_log("e.test: MTA-STS policy 1 not usable: fetching https://mta-sts.e.test/.well-known/mta-sts.txt: policy larger than 65536 bytes", LONG),
        "{}",
        d.log()
    );
    assert!(!d.spool().join("mta-sts/d.test.json").exists());
}

#[test]
fn the_sts_command_shows_the_policy_in_force() {
    let cert = ca_signed(NAMES);
    let policies = PolicyServer::start(&cert);
    policies.publish("d.test", &enforce("mx.d.test", 604800));
    policies.publish(
        "e.test",
        "version: STSv1\nmode: testing\nmx: *.e.test\nmx: mx.d.test\nmax_age: 3600\n",
    );
    let (_dns, dns_port) = dns(
        &[
            ("d.test", Some("20240101T000000")),
            ("e.test", Some("2")),
            ("f.test", None),
        ],
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mailqueue.toml");
    fs::write(
        &config,
        setup(dns_port, 25, policies.port, &cert.ca).toml(&dir.path().join("spool"), 2525),
    )
    .unwrap();
    let sts = |domain: &str| run_mailqueue(&["--config", config.to_str().unwrap(), "sts", domain]);

    let (status, out, err) = sts("d.test");
    assert!(status.success(), "{out}{err}");
    for line in [
        "domain   d.test",
        "id       20240101T000000\n",
        "source   fetched now",
        "mode     enforce",
        "mx       mx.d.test",
        "max_age  604800 seconds",
        "fetched  ",
        "expires  ",
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }
    let (status, out, _) = sts("E.TEST");
    assert!(status.success());
    assert!(out.contains("mode     testing"), "{out}");
    assert!(out.contains("mx       *.e.test, mx.d.test"), "{out}");

    // No TXT record: no policy, exit 1.
    let (status, out, err) = sts("f.test");
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(
        err.contains("f.test: no MTA-STS policy: _mta-sts.f.test has no MTA-STS TXT record"),
        "{err}"
    );

    // A policy the daemon cached is shown from the spool, even with the
    // policy host gone.
    let cached = dir.path().join("spool/mta-sts");
    fs::create_dir_all(&cached).unwrap();
    fs::write(
        cached.join("f.test.json"),
        format!(
            "{{\"version\": 1, \"domain\": \"f.test\", \"id\": \"9\", \"fetched\": {}, \
             \"policy\": \"version: STSv1\\nmode: enforce\\nmx: mx.f.test\\nmax_age: 600\\n\"}}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        ),
    )
    .unwrap();
    drop(policies);
    let (status, out, err) = sts("f.test");
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains("id       9\nsource   cached in the spool"),
        "{out}"
    );
    assert!(out.contains("mx       mx.f.test"), "{out}");
}

#[test]
fn routes_tell_where_mta_sts_applies_and_a_route_may_turn_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mailqueue.toml");
    fs::write(
        &config,
        format!(
            "spool = {:?}\n[delivery]\ntarget = \"remote\"\n\
             [[route]]\ndomains = [\"example.net\"]\ntarget = \"remote\"\nmta_sts = false\n\
             [[route]]\ndomains = [\"example.com\"]\ntarget = \"smtp://127.0.0.1:2526\"\n",
            dir.path().join("spool").to_str().unwrap()
        ),
    )
    .unwrap();
    let (status, out, err) = run_mailqueue(&["--config", config.to_str().unwrap(), "routes"]);
    assert!(status.success(), "{err}");
    // The lines of the table's entry that starts with `head`.
    let route = |head: &str| -> String {
        let mut lines = out.lines().skip_while(|l| !l.starts_with(head));
        let first = lines.next().unwrap_or_else(|| panic!("{head} in {out}"));
        std::iter::once(first)
            .chain(lines.take_while(|l| l.starts_with(' ')))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(route("route 1:").contains("mta_sts   off"), "{out}");
    // A relay is not MX delivery: no MTA-STS line.
    assert!(!route("route 2:").contains("mta_sts"), "{out}");
    assert!(route("[delivery]").contains("mta_sts   on"), "{out}");
    let (status, _, err) = run_mailqueue(&["--config", config.to_str().unwrap(), "check"]);
    assert!(status.code() != Some(78), "{err}");

    fs::write(&config, "[delivery]\nmta_sts = \"yes\"\n").unwrap();
    let (status, _, err) = run_mailqueue(&["--config", config.to_str().unwrap(), "check"]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(err.contains("mta_sts"), "{err}");
}
