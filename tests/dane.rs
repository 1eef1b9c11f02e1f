//! DANE for MX delivery (RFC 7672) with the real binary: a test DNS
//! server on loopback (tests/peers/dane_dns.py) answers MX, A and TLSA
//! with the AD bit a validating resolver sets, and the MX host is the
//! Python SMTP peer offering STARTTLS with a certificate made in the test.

mod common;

use std::time::Duration;

use common::daemon::{queued_id, Client, Daemon, Setup};
use common::peers::{start_python_peer, PyServer, Reaper};
use common::tls::{ca_signed, self_signed, TestCert};
use common::wait_for;

const LONG: Duration = Duration::from_secs(20);
const MSG: &[u8] = b"From: a@example.org\r\nTo: b@d.test\r\nSubject: dane\r\n\r\nSigned.\r\n";

/// The test DNS server, with `args` (see the script).
struct Dns {
    _child: Reaper,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Dns {
    fn start(args: &[String]) -> Dns {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (child, port, dir) = start_python_peer("dane_dns.py", "the test DNS server", &args);
        Dns {
            _child: child,
            port,
            _dir: dir,
        }
    }
}

/// `3 1 1`: the SHA-256 digest of the certificate's public key, in hex.
fn spki_sha256(cert: &TestCert) -> String {
    let pem = std::fs::read(&cert.cert).unwrap();
    let x509 = openssl::x509::X509::from_pem(&pem).unwrap();
    let spki = x509.public_key().unwrap().public_key_to_der().unwrap();
    hex(&openssl::sha::sha256(&spki))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An STARTTLS MX host for d.test (mx.d.test at 127.0.0.1) presenting
/// `cert` (none: no STARTTLS), the DNS server with `tlsa` records for it
/// (AD set unless `no_ad`), and a daemon with `dane = true` delivering
/// there; one message for b@d.test is queued.
struct World {
    peer: PyServer,
    _dns: Dns,
    daemon: Daemon,
}

fn world(cert: Option<&TestCert>, tlsa: &[&str], no_ad: bool, tls: &str) -> World {
    let peer = match cert {
        Some(c) => PyServer::start(&["--tls-cert", c.cert_arg(), "--tls-key", c.key_arg()]),
        None => PyServer::start(&[]),
    };
    let mut args = vec![
        "--mx".to_string(),
        "d.test=mx.d.test".to_string(),
        "--a".to_string(),
        "mx.d.test=127.0.0.1".to_string(),
    ];
    for t in tlsa {
        args.push("--tlsa".into());
        args.push(format!("_{}._tcp.mx.d.test={t}", peer.port));
    }
    if no_ad {
        args.push("--no-ad".into());
    }
    let dns = Dns::start(&args);
    let daemon = Daemon::start(
        &Setup::to("remote")
            .delivery(&format!(
                "dane = true\ntls = \"{tls}\"\nmx_port = {}\ndns_servers = [\"127.0.0.1:{}\"]",
                peer.port, dns.port
            ))
            .queue("initial_retry = \"1h\"\nmax_retry_interval = \"1h\""),
    );
    let mut c = Client::connect(daemon.addr()).unwrap();
    queued_id(&c.mail("a@example.org", &["b@d.test"], MSG));
    c.quit();
    World {
        peer,
        _dns: dns,
        daemon,
    }
}

impl World {
    /// The daemon's first status line for b@d.test.
    fn status_line(&self) -> String {
        assert!(
            wait_for(LONG, || self.daemon.log().contains("to=<b@d.test>")),
            "{}",
            self.daemon.log()
        );
        let log = self.daemon.log();
        log.lines()
            .find(|l| l.contains("to=<b@d.test>"))
            .unwrap()
            .to_string()
    }

    /// Whether the peer saw a MAIL, RCPT or DATA.
    fn envelope_sent(&self) -> bool {
        self.peer
            .events()
            .iter()
            .any(|e| e["step"] == "mail" || e["step"] == "rcpt" || e["step"] == "data")
    }
}

#[test]
fn a_certificate_matching_its_tlsa_record_is_delivered_and_logged_as_dane_verified() {
    // Self-signed, for another name: only DANE-EE can vouch for it.
    let cert = self_signed(&["somewhere.else.test"]);
    let record = format!("3,1,1,{}", spki_sha256(&cert));
    let w = world(Some(&cert), &[&record, "0,1,1,00"], false, "may");
    let got = w.peer.wait_messages(1, LONG);
    assert_eq!(got[0].meta["tls"], true, "{:?}", got[0].meta);
    let line = w.status_line();
    assert!(
        line.contains(", tls=TLSv1.3 dane-verified, status=sent (250 "),
        "{line}"
    );
}

#[test]
fn a_certificate_its_tlsa_records_do_not_name_is_deferred_with_the_dane_reason() {
    let cert = self_signed(&["mx.d.test"]);
    let other = self_signed(&["mx.d.test"]);
    let record = format!("3,1,1,{}", spki_sha256(&other));
    let w = world(Some(&cert), &[&record], false, "may");
    let line = w.status_line();
    assert!(
        line.contains("status=deferred (451 4.7.5 DANE (TLSA _"),
        "{line}"
    );
    assert!(
        line.contains("matches none of the 1 usable TLSA records"),
        "{line}"
    );
    // Not retried in clear, though tls = "may" would for a broken TLS.
    assert!(!w.envelope_sent(), "{:?}", w.peer.events());
    assert_eq!(w.daemon.queued().len(), 1);
}

#[test]
fn a_host_with_tlsa_records_but_no_starttls_is_deferred_naming_dane() {
    let cert = self_signed(&["mx.d.test"]);
    let record = format!("3,1,1,{}", spki_sha256(&cert));
    // tls = "none" too: DANE still requires TLS.
    let w = world(None, &[&record], false, "none");
    let line = w.status_line();
    assert!(
        line.contains("status=deferred (451 4.7.10 TLS is required by DANE (TLSA _"),
        "{line}"
    );
    assert!(line.contains("does not offer STARTTLS"), "{line}");
    assert!(!w.envelope_sent(), "{:?}", w.peer.events());
}

#[test]
fn tlsa_records_without_the_ad_bit_are_ignored() {
    // The same mismatching record as above, unauthenticated: no DANE, the
    // mail goes with opportunistic TLS.
    let cert = self_signed(&["mx.d.test"]);
    let other = self_signed(&["mx.d.test"]);
    let record = format!("3,1,1,{}", spki_sha256(&other));
    let w = world(Some(&cert), &[&record], true, "may");
    w.peer.wait_messages(1, LONG);
    let line = w.status_line();
    assert!(
        line.contains(", tls=TLSv1.3 unverified, status=sent (250 "),
        "{line}"
    );
}

#[test]
fn only_unusable_tlsa_records_mean_no_dane() {
    // PKIX-EE (1) naming a key the server does not have: unusable for
    // SMTP, so not a mismatch either.
    let cert = self_signed(&["mx.d.test"]);
    let other = self_signed(&["mx.d.test"]);
    let record = format!("1,1,1,{}", spki_sha256(&other));
    let w = world(Some(&cert), &[&record], false, "may");
    w.peer.wait_messages(1, LONG);
    let line = w.status_line();
    assert!(
        line.contains(", tls=TLSv1.3 unverified, status=sent"),
        "{line}"
    );
}

#[test]
fn dane_with_a_resolver_off_this_host_is_a_warning_and_not_used() {
    let c =
        mailqueue::Config::from_toml("[delivery]\ndane = true\ndns_servers = [\"192.0.2.53\"]\n")
            .unwrap();
    let w = c.warnings();
    assert!(
        w.iter()
            .any(|w| w.contains("dane = true") && w.contains("DANE is not used")),
        "{w:?}"
    );
    let local =
        mailqueue::Config::from_toml("[delivery]\ndane = true\ndns_servers = [\"127.0.0.1:53\"]\n")
            .unwrap();
    assert!(local.warnings().is_empty(), "{:?}", local.warnings());
}

/// The domain d.test with an MTA-STS policy in enforce mode that names
/// another MX host (served over HTTPS with a certificate of the test CA),
/// its MX host presenting `mx_cert`, and `tlsa` records for it; the
/// daemon with both DANE and MTA-STS on.
struct PolicyWorld {
    peer: PyServer,
    daemon: Daemon,
    // Kept for the daemon's lifetime: the DNS and HTTPS servers and the
    // policy server's directories.
    _servers: (Dns, Reaper, tempfile::TempDir, tempfile::TempDir),
}

fn world_with_policy(mx_cert: &TestCert, tlsa: &[String]) -> PolicyWorld {
    let policy_cert = ca_signed(&["mta-sts.d.test"]);
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("mta-sts.d.test"),
        "version: STSv1\r\nmode: enforce\r\nmx: mx.other.test\r\nmax_age: 86400\r\n",
    )
    .unwrap();
    let (https, https_port, https_dir) = start_python_peer(
        "mta_sts_server.py",
        "the Python HTTPS policy server",
        &[
            "--policies",
            policies.path().to_str().unwrap(),
            "--tls-cert",
            policy_cert.cert_arg(),
            "--tls-key",
            policy_cert.key_arg(),
        ],
    );
    let peer = PyServer::start(&[
        "--tls-cert",
        mx_cert.cert_arg(),
        "--tls-key",
        mx_cert.key_arg(),
    ]);
    let mut args: Vec<String> = [
        "--mx",
        "d.test=mx.d.test",
        "--a",
        "mx.d.test=127.0.0.1",
        "--a",
        "mta-sts.d.test=127.0.0.1",
        "--txt",
        "_mta-sts.d.test=v=STSv1; id=1",
    ]
    .map(String::from)
    .to_vec();
    for t in tlsa {
        args.push("--tlsa".into());
        args.push(format!("_{}._tcp.mx.d.test={t}", peer.port));
    }
    let dns = Dns::start(&args);
    let daemon = Daemon::start(
        &Setup::to("remote")
            .delivery(&format!(
                "dane = true\nmta_sts = true\nmta_sts_port = {https_port}\nca_file = {:?}\n\
                 mx_port = {}\ndns_servers = [\"127.0.0.1:{}\"]",
                policy_cert.ca.to_str().unwrap(),
                peer.port,
                dns.port
            ))
            .queue("initial_retry = \"1h\"\nmax_retry_interval = \"1h\""),
    );
    let mut c = Client::connect(daemon.addr()).unwrap();
    queued_id(&c.mail("a@example.org", &["b@d.test"], MSG));
    c.quit();
    PolicyWorld {
        peer,
        daemon,
        _servers: (dns, https, https_dir, policies),
    }
}

#[test]
fn dane_settles_an_mx_hosts_tls_before_mta_sts_would() {
    // The policy names another MX host: MTA-STS alone refuses mx.d.test...
    let cert = self_signed(&["mx.d.test"]);
    let w = world_with_policy(&cert, &[]);
    let (peer, d) = (&w.peer, &w.daemon);
    assert!(
        d.wait_log("does not allow MX host mx.d.test", LONG),
        "{}",
        d.log()
    );
    assert!(peer.events().iter().all(|e| e["step"] != "mail"));
    drop(w);
    // ...but with usable TLSA records matching its certificate, DANE
    // decides (RFC 8461 §2) and the mail goes.
    let w = world_with_policy(&cert, &[format!("3,1,1,{}", spki_sha256(&cert))]);
    let (peer, d) = (&w.peer, &w.daemon);
    peer.wait_messages(1, LONG);
    assert!(
        d.wait_log("tls=TLSv1.3 dane-verified, status=sent", LONG),
        "{}",
        d.log()
    );
}
