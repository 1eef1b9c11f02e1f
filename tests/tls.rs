//! TLS both ways, with certificates made in the test: STARTTLS to the
//! daemon's listener, STARTTLS and implicit TLS from its client under each
//! `tls` policy, and AUTH to a server that requires it.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{free_port, queued_id, Client, Daemon, Setup};
use common::peers::PyServer;
use common::tls::{ca_signed, self_signed, trusting_connector, TestCert};
use common::wait_for;

const LONG: Duration = Duration::from_secs(20);
const MSG: &[u8] = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: tls\r\n\r\nSecret.\r\n";

/// A daemon offering STARTTLS with `cert`; its target accepts nothing.
fn listener_with_tls(cert: &TestCert) -> Daemon {
    Daemon::start(
        &Setup::default()
            .queue("initial_retry = \"1h\"\nmax_retry_interval = \"1h\"")
            .listen(&format!(
                "tls_cert = {:?}\ntls_key = {:?}",
                cert.cert_arg(),
                cert.key_arg()
            )),
    )
}

/// Queues one message through the daemon in clear.
fn submit(d: &Daemon, to: &str) {
    let mut c = Client::connect(d.addr()).unwrap();
    queued_id(&c.mail("a@example.org", &[to], MSG));
    c.quit();
}

/// The events of the steps that carry the envelope.
fn envelope_steps(peer: &PyServer) -> usize {
    peer.events()
        .iter()
        .filter(|e| e["step"] == "mail" || e["step"] == "rcpt" || e["step"] == "data")
        .count()
}

#[test]
fn starttls_to_the_listener_then_mail_over_tls() {
    let cert = self_signed(&["mq.test"]);
    let d = listener_with_tls(&cert);
    let mut c = Client::connect(d.addr()).unwrap();
    let ehlo = c.cmd("EHLO client.test");
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
    c.cmd("STARTTLS").expect(220, "2.0.0");
    let tls = trusting_connector()
        .connect("mq.test", c.io.into_inner())
        .expect("TLS handshake with the listener");
    let mut c = Client::wrap(tls);
    // The upgrade forgot the EHLO and the transaction (RFC 3207 4.2).
    c.cmd("MAIL FROM:<a@example.org>").expect(503, "5.5.1");
    let ehlo = c.cmd("EHLO client.test");
    assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    c.cmd("STARTTLS").expect(502, "5.5.1");
    let id = queued_id(&c.mail("a@example.org", &["b@example.net"], MSG));
    let stored = String::from_utf8(common::stored_message(&d.spool(), &id)).unwrap();
    assert!(stored.contains("with ESMTPS id"), "{stored}");
}

#[test]
fn commands_pipelined_after_starttls_are_thrown_away() {
    let cert = self_signed(&["mq.test"]);
    let d = listener_with_tls(&cert);
    let mut c = Client::connect(d.addr()).unwrap();
    c.cmd("EHLO client.test").expect(250, "");
    // Sent in clear after STARTTLS: must not be run as if it came over TLS.
    c.send(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n");
    c.reply().expect(220, "2.0.0");
    let tls = trusting_connector()
        .connect("mq.test", c.io.into_inner())
        .expect("TLS handshake with the listener");
    let mut c = Client::wrap(tls);
    c.cmd("EHLO client.test").expect(250, "mq.test");
    c.cmd("NOOP").expect(250, "2.0.0");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "2.1.0");
}

#[test]
fn python_smtplib_starttls_to_the_listener() {
    let cert = self_signed(&["mq.test"]);
    let d = listener_with_tls(&cert);
    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10) as s:
    s.ehlo("client.test")
    s.starttls(context=ctx)
    s.ehlo("client.test")
    assert s.sock.version() is not None
    s.sendmail("a@example.org", ["b@example.net"], b"Subject: over tls\r\n\r\nHi.\r\n")
"#;
    let out = Command::new("python3")
        .args(["-c", script, &d.port.to_string()])
        .output()
        .expect("cannot run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.queued().len(), 1);
}

#[test]
fn tls_may_uses_starttls_with_a_self_signed_certificate() {
    let cert = self_signed(&["peer.test"]);
    let peer = PyServer::start(&["--tls-cert", cert.cert_arg(), "--tls-key", cert.key_arg()]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")).delivery("tls = \"may\""));
    submit(&d, "b@example.net");
    let got = peer.wait_messages(1, LONG);
    assert_eq!(got[0].meta["tls"], true, "{:?}", got[0].meta);
    assert!(got[0].text().ends_with("Secret.\r\n"));
}

#[test]
fn tls_may_sends_in_clear_when_starttls_is_not_offered() {
    let peer = PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")).delivery("tls = \"may\""));
    submit(&d, "b@example.net");
    let got = peer.wait_messages(1, LONG);
    assert_eq!(got[0].meta["tls"], false);
}

#[test]
fn tls_encrypt_fails_temporarily_without_starttls_and_sends_nothing_in_clear() {
    let peer = PyServer::start(&[]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")).delivery("tls = \"encrypt\""));
    submit(&d, "b@example.net");
    assert!(d.wait_log("status=deferred", LONG), "{}", d.log());
    assert!(d.log().contains("4.7.10"), "{}", d.log());
    // Retried (temporary), never got past EHLO.
    assert!(
        wait_for(LONG, || d.log().contains("tries=2")),
        "{}",
        d.log()
    );
    assert_eq!(envelope_steps(&peer), 0, "{:?}", peer.events());
    assert_eq!(d.queued().len(), 1);
}

#[test]
fn tls_encrypt_works_with_starttls() {
    let cert = self_signed(&["peer.test"]);
    let peer = PyServer::start(&["--tls-cert", cert.cert_arg(), "--tls-key", cert.key_arg()]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")).delivery("tls = \"encrypt\""));
    submit(&d, "b@example.net");
    let got = peer.wait_messages(1, LONG);
    assert_eq!(got[0].meta["tls"], true);
}

#[test]
fn tls_verify_fails_without_the_ca_and_passes_with_ca_file() {
    let cert = ca_signed(&["localhost", "127.0.0.1"]);
    let args = ["--tls-cert", cert.cert_arg(), "--tls-key", cert.key_arg()];

    // Without ca_file the test CA is unknown: a temporary failure, nothing sent.
    let peer = PyServer::start(&args);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")).delivery("tls = \"verify\""));
    submit(&d, "b@example.net");
    assert!(d.wait_log("status=deferred", LONG), "{}", d.log());
    assert!(
        d.log().contains("TLS handshake with 127.0.0.1 failed"),
        "{}",
        d.log()
    );
    assert_eq!(envelope_steps(&peer), 0, "{:?}", peer.events());
    assert_eq!(d.queued().len(), 1);
    drop(d);

    // With the CA as ca_file the certificate chains and names 127.0.0.1.
    let peer = PyServer::start(&args);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")).delivery(&format!(
        "tls = \"verify\"\nca_file = {:?}",
        cert.ca.to_str().unwrap()
    )));
    submit(&d, "b@example.net");
    let got = peer.wait_messages(1, LONG);
    assert_eq!(got[0].meta["tls"], true);
}

#[test]
fn tls_verify_fails_when_the_certificate_names_another_host() {
    let cert = ca_signed(&["other.test"]);
    let peer = PyServer::start(&["--tls-cert", cert.cert_arg(), "--tls-key", cert.key_arg()]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")).delivery(&format!(
        "tls = \"verify\"\nca_file = {:?}",
        cert.ca.to_str().unwrap()
    )));
    submit(&d, "b@example.net");
    assert!(d.wait_log("status=deferred", LONG), "{}", d.log());
    assert_eq!(envelope_steps(&peer), 0, "{:?}", peer.events());
}

#[test]
fn smtps_is_tls_from_the_first_byte() {
    let cert = self_signed(&["peer.test"]);
    let peer = PyServer::start(&[
        "--implicit-tls",
        "--tls-cert",
        cert.cert_arg(),
        "--tls-key",
        cert.key_arg(),
    ]);
    let d = Daemon::start(&Setup::to(&peer.url("smtps")).delivery("tls = \"none\""));
    submit(&d, "b@example.net");
    let got = peer.wait_messages(1, LONG);
    assert_eq!(got[0].meta["tls"], true);
    assert!(d.wait_log("status=sent", LONG), "{}", d.log());
}

/// A server with STARTTLS that requires AUTH with `mechs`, and a daemon
/// that logs at trace level with `password` in its password_file.
fn auth_setup(mechs: &str, password: &str) -> (PyServer, Daemon, TestCert) {
    let cert = self_signed(&["peer.test"]);
    let peer = PyServer::start(&[
        "--tls-cert",
        cert.cert_arg(),
        "--tls-key",
        cert.key_arg(),
        "--auth",
        "relay-user:s3cret-Pa55",
        "--auth-mechs",
        mechs,
    ]);
    let password_file = cert.dir.path().join("password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    private(&password_file);
    let d = Daemon::start(
        &Setup::to(&peer.url("smtp"))
            .rust_log("trace")
            .delivery(&format!(
                "tls = \"encrypt\"\ntls_insecure_auth = true\n\
                 username = \"relay-user\"\npassword_file = {:?}",
                password_file.to_str().unwrap()
            )),
    );
    (peer, d, cert)
}

#[test]
fn auth_plain_to_a_server_that_requires_it() {
    let (peer, d, _cert) = auth_setup("PLAIN", "s3cret-Pa55");
    submit(&d, "b@example.net");
    let got = peer.wait_messages(1, LONG);
    assert_eq!(got[0].meta["auth"], "relay-user");
    let auth: Vec<_> = peer
        .events()
        .into_iter()
        .filter(|e| e["step"] == "auth")
        .collect();
    assert_eq!(auth.len(), 1);
    assert_eq!(auth[0]["mechanism"], "PLAIN");
    assert!(d.wait_log("status=sent", LONG));
    assert!(!d.log().contains("s3cret-Pa55"), "password in the log");
}

#[test]
fn auth_login_to_a_server_that_requires_it() {
    let (peer, d, _cert) = auth_setup("LOGIN", "s3cret-Pa55");
    submit(&d, "b@example.net");
    let got = peer.wait_messages(1, LONG);
    assert_eq!(got[0].meta["auth"], "relay-user");
    let auth: Vec<_> = peer
        .events()
        .into_iter()
        .filter(|e| e["step"] == "auth")
        .collect();
    assert_eq!(auth[0]["mechanism"], "LOGIN");
    assert!(d.wait_log("status=sent", LONG));
    assert!(!d.log().contains("s3cret-Pa55"), "password in the log");
}

#[test]
fn a_wrong_password_defers_the_mail_and_stays_out_of_the_log() {
    let (peer, d, _cert) = auth_setup("PLAIN", "wrong-Pa55");
    submit(&d, "b@example.net");
    assert!(d.wait_log("status=deferred", LONG), "{}", d.log());
    assert!(d.log().contains("4.7.8"), "{}", d.log());
    assert_eq!(envelope_steps(&peer), 0);
    assert!(!d.log().contains("wrong-Pa55"), "password in the log");
    let queued = d.spool().join("queue").join(&d.queued()[0]);
    let on_disk = String::from_utf8_lossy(&std::fs::read(queued).unwrap()).into_owned();
    assert!(!on_disk.contains("wrong-Pa55"), "password in the spool");
}

#[test]
fn starttls_refused_under_encrypt_is_a_temporary_failure() {
    let cert = self_signed(&["peer.test"]);
    let peer = PyServer::start(&[
        "--tls-cert",
        cert.cert_arg(),
        "--tls-key",
        cert.key_arg(),
        "--refuse-starttls",
    ]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")).delivery("tls = \"encrypt\""));
    submit(&d, "b@example.net");
    // TLS failures are temporary whatever the server's code: the mail
    // waits for TLS to come back rather than bouncing.
    assert!(
        wait_for(LONG, || d.log().contains("tries=2")),
        "{}",
        d.log()
    );
    assert!(!d.log().contains("status=bounced"), "{}", d.log());
    assert_eq!(envelope_steps(&peer), 0, "{:?}", peer.events());
    assert_eq!(d.queued().len(), 1);
}

#[test]
fn starttls_refused_under_may_goes_on_in_clear() {
    let cert = self_signed(&["peer.test"]);
    let peer = PyServer::start(&[
        "--tls-cert",
        cert.cert_arg(),
        "--tls-key",
        cert.key_arg(),
        "--refuse-starttls",
    ]);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")).delivery("tls = \"may\""));
    submit(&d, "b@example.net");
    let got = peer.wait_messages(1, LONG);
    assert_eq!(got[0].meta["tls"], false);
}

#[test]
fn auth_in_clear_is_allowed_to_a_loopback_server() {
    let peer = PyServer::start(&["--auth", "relay-user:s3cret-Pa55", "--auth-clear"]);
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "s3cret-Pa55\n").unwrap();
    private(&password_file);
    let d = Daemon::start(&Setup::to(&peer.url("smtp")).delivery(&format!(
        "tls = \"none\"\ntls_insecure_auth = true\nusername = \"relay-user\"\npassword_file = {:?}",
        password_file.to_str().unwrap()
    )));
    submit(&d, "b@example.net");
    let got = peer.wait_messages(1, LONG);
    assert_eq!(got[0].meta["auth"], "relay-user");
    assert_eq!(got[0].meta["tls"], false);
}

#[test]
fn a_failed_tls_handshake_ends_only_that_session() {
    let cert = self_signed(&["mq.test"]);
    let d = listener_with_tls(&cert);
    let mut c = Client::connect(d.addr()).unwrap();
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("STARTTLS").expect(220, "2.0.0");
    c.send(b"this is not a TLS client hello\r\n");
    assert!(c.closed());
    let mut c = Client::connect(d.addr()).unwrap();
    c.cmd("NOOP").expect(250, "2.0.0");
}

/// A password file only its owner may read, as the daemon requires.
fn private(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn an_idle_tls_session_is_reused_not_taken_for_closed() {
    // The check before reuse peeks under TLS: an open session with
    // nothing to read must pass it, so messages one after the other share
    // one connection (one STARTTLS, two EHLOs).
    let cert = self_signed(&["peer.test"]);
    let peer = PyServer::start(&["--tls-cert", cert.cert_arg(), "--tls-key", cert.key_arg()]);
    let d = Daemon::start(
        &Setup::to(&peer.url("smtp"))
            .delivery("tls = \"encrypt\"\nconnection_cache_time = \"60s\""),
    );
    for n in 1..=3 {
        submit(&d, &format!("b{n}@example.net"));
        peer.wait_messages(n, LONG);
        // Idle a moment, so whatever the server sends after TLS is there.
        std::thread::sleep(Duration::from_millis(300));
    }
    let ehlos = peer.events().iter().filter(|e| e["step"] == "ehlo").count();
    assert_eq!(ehlos, 2, "{:?}", peer.events());
    assert!(!d.log().contains("status=deferred"), "{}", d.log());
}

#[test]
fn a_client_trickling_its_tls_hello_is_cut_off_at_the_command_timeout() {
    let cert = self_signed(&["mq.test"]);
    let d = Daemon::start(&Setup::default().listen(&format!(
        "tls_cert = {:?}\ntls_key = {:?}\ncommand_timeout = \"1s\"",
        cert.cert_arg(),
        cert.key_arg()
    )));
    let mut c = Client::connect(d.addr()).unwrap();
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("STARTTLS").expect(220, "2.0.0");
    // A handshake record announced 16 KiB long, then a byte every 100 ms:
    // each read is within the timeout, the handshake never is.
    let started = Instant::now();
    c.send(&[0x16, 0x03, 0x01, 0x40, 0x00]);
    let s = c.io.get_mut();
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until && s.write_all(&[0]).is_ok() {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the listener waited {:?} for the handshake",
        started.elapsed()
    );
}

/// GET /metrics from the daemon's endpoint: the body.
fn scrape(addr: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(raw)
}

/// Delivers one message to a fresh peer started with `peer_args`, under
/// `delivery`; returns the `status=sent` line and the metrics scraped
/// after it.
fn sent_over(peer_args: &[&str], delivery: &str) -> (String, String) {
    let peer = PyServer::start(peer_args);
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start(
        &Setup::to(&peer.url("smtp"))
            .delivery(delivery)
            .set("metrics", &format!("listen = {metrics:?}")),
    );
    submit(&d, "b@example.net");
    assert!(d.wait_log("status=sent", LONG), "{}", d.log());
    let log = d.log();
    let line = log.lines().find(|l| l.contains("status=sent")).unwrap();
    (line.to_string(), scrape(&metrics))
}

#[test]
fn each_delivery_logs_its_tls_version_and_verification_and_the_metrics_count_them() {
    // A certificate that chains to the ca_file and names the address:
    // verified, though `may` would have taken any.
    let cert = ca_signed(&["localhost", "127.0.0.1"]);
    let (line, metrics) = sent_over(
        &["--tls-cert", cert.cert_arg(), "--tls-key", cert.key_arg()],
        &format!("tls = \"may\"\nca_file = {:?}", cert.ca.to_str().unwrap()),
    );
    assert!(
        line.contains(", tls=TLSv1.3 verified, status=sent (250 "),
        "{line}"
    );
    assert!(
        metrics.contains(
            "mailqueue_outbound_sessions_total{tls=\"TLSv1.3\",verified=\"verified\"} 1\n"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("mailqueue_outbound_tls_sessions_total 1\n"),
        "{metrics}"
    );

    // Self-signed under `may`: encrypted, not verified.
    let cert = self_signed(&["peer.test"]);
    let (line, metrics) = sent_over(
        &["--tls-cert", cert.cert_arg(), "--tls-key", cert.key_arg()],
        "tls = \"may\"",
    );
    assert!(
        line.contains(", tls=TLSv1.3 unverified, status=sent (250 "),
        "{line}"
    );
    assert!(
        metrics.contains(
            "mailqueue_outbound_sessions_total{tls=\"TLSv1.3\",verified=\"unverified\"} 1\n"
        ),
        "{metrics}"
    );

    // No STARTTLS offered: clear text, and said so.
    let (line, metrics) = sent_over(&[], "tls = \"may\"");
    assert!(line.contains(", tls=none, status=sent (250 "), "{line}");
    assert!(
        metrics.contains("mailqueue_outbound_sessions_total{tls=\"none\",verified=\"none\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mailqueue_outbound_tls_sessions_total 0\n"),
        "{metrics}"
    );
}
