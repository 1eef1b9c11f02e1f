//! `mailqueue serve` and `mailqueue check` as an operator runs them:
//! start-up failures, signals, restarts, config errors and log lines.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::daemon::{
    binary, queued_id, run_mailqueue, spawn_serve, wait_child, Client, Daemon, Setup,
};
use common::peers::{PyServer, Reaper, SmtpSink};
use common::wait_for;

const LONG: Duration = Duration::from_secs(20);
const MSG: &[u8] = b"Subject: daemon test\r\n\r\nHello.\r\n";

/// Writes a config for `spool` listening on `port` and returns its path.
fn write_config(
    dir: &std::path::Path,
    setup: &Setup,
    spool: &std::path::Path,
    port: u16,
) -> std::path::PathBuf {
    let path = dir.join("other.toml");
    std::fs::write(&path, setup.toml(spool, port)).unwrap();
    path
}

#[test]
fn serve_exits_non_zero_naming_the_address_when_the_port_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &Setup::default(),
        &dir.path().join("spool"),
        port,
    );
    let mut child = Reaper(spawn_serve(&config, dir.path(), "info"));
    let status = wait_child(&mut child.0, LONG).expect("serve kept running on a taken port");
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(
        log.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{log}"
    );
    assert!(
        log.to_lowercase().contains("address already in use"),
        "{log}"
    );
    // It gave up before opening the spool: a daemon that cannot listen
    // must not start delivering what is queued and then die mid-attempt.
    assert!(!dir.path().join("spool").exists(), "{log}");
}

#[test]
fn a_second_daemon_on_the_same_spool_exits_non_zero_naming_the_first() {
    let first = Daemon::start(&Setup::default());
    let other = tempfile::tempdir().unwrap();
    let config = write_config(
        other.path(),
        &Setup::default(),
        &first.spool(),
        common::daemon::free_port(),
    );
    let mut child = Reaper(spawn_serve(&config, other.path(), "info"));
    let status = wait_child(&mut child.0, LONG).expect("a second daemon ran on a locked spool");
    assert!(!status.success());
    let log = std::fs::read_to_string(other.path().join("stderr.log")).unwrap();
    assert!(log.contains("in use by another mailqueue process"), "{log}");
    assert!(log.contains(&format!("pid {}", first.pid())), "{log}");
    // The first one is unharmed.
    let mut c = Client::connect(first.addr()).unwrap();
    c.cmd("NOOP").expect(250, "2.0.0");
}

#[test]
fn sigterm_stops_the_daemon_with_exit_0() {
    let mut d = Daemon::start(&Setup::default());
    // A client in the middle of a session must not hold the shutdown up.
    let mut idle = Client::connect(d.addr()).unwrap();
    idle.cmd("EHLO client.test").expect(250, "");
    d.terminate();
    let status = d.wait_exit(LONG).expect("still running after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", d.log());
    assert!(d.log().contains("stopped"), "{}", d.log());
    assert!(Client::connect(d.addr()).is_err(), "still accepting");
}

#[test]
fn sigint_stops_the_daemon_with_exit_0() {
    let mut d = Daemon::start(&Setup::default());
    common::daemon::signal(d.pid(), "INT");
    let status = d.wait_exit(LONG).expect("still running after SIGINT");
    assert!(status.success(), "{status:?}\n{}", d.log());
}

#[test]
fn mail_queued_before_a_restart_is_delivered_after_it() {
    let sink = SmtpSink::start(&[]);
    // First run: the target is dead, the message waits in the spool with
    // its next attempt (2s later) in its metadata.
    let mut d = Daemon::start(
        &Setup::default().queue("initial_retry = \"2s\"\nmax_retry_interval = \"2s\""),
    );
    let mut c = Client::connect(d.addr()).unwrap();
    let id = queued_id(&c.mail("a@example.org", &["b@example.net"], MSG));
    c.quit();
    assert!(d.wait_log("status=deferred", LONG), "{}", d.log());
    d.terminate();
    assert!(d.wait_exit(LONG).is_some_and(|s| s.success()));

    // Second run on the same spool, with a working target.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &Setup::to(&sink.url("smtp")),
        &d.spool(),
        common::daemon::free_port(),
    );
    let _second = Reaper(spawn_serve(&config, dir.path(), "info"));
    let log = || std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    // Sent means smtp-sink answered the final dot: its dump is complete.
    assert!(
        wait_for(LONG, || log().contains("tries=2")
            && log().contains("status=sent")),
        "{}",
        log()
    );
    let dumps = sink.messages();
    assert_eq!(dumps.len(), 1);
    assert!(dumps[0].contains(&format!("id {id}")), "{}", dumps[0]);
}

#[test]
fn check_names_the_bad_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[queue]\nworkers = 0\n").unwrap();
    let (status, _, err) = run_mailqueue(&["--config", bad.to_str().unwrap(), "check"]);
    assert!(!status.success());
    assert!(err.contains("workers = 0"), "{err}");

    std::fs::write(&bad, "[delivery]\ntls = \"sometimes\"\n").unwrap();
    let (status, _, err) = run_mailqueue(&["--config", bad.to_str().unwrap(), "check"]);
    assert!(!status.success());
    assert!(err.contains("sometimes") && err.contains("tls"), "{err}");

    std::fs::write(&bad, "[listen]\nmax_conections = 5\n").unwrap();
    let (status, _, err) = run_mailqueue(&["--config", bad.to_str().unwrap(), "check"]);
    assert!(!status.success());
    assert!(err.contains("max_conections"), "{err}");
}

#[test]
fn check_accepts_a_good_file_and_reads_mailqueue_config_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(
        dir.path(),
        &Setup::default(),
        &dir.path().join("spool"),
        common::daemon::free_port(),
    );
    let (status, out, err) = run_mailqueue(&["--config", good.to_str().unwrap(), "check"]);
    assert!(status.success(), "{err}");
    assert!(out.contains("ok"), "{out}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[queue]\nmax_tries = 0\n").unwrap();
    let out = Command::new(binary())
        .arg("check")
        .env("MAILQUEUE_CONFIG", &bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_tries = 0"));
}

#[test]
fn check_fails_on_a_missing_certificate_or_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &Setup::default()
            .listen("tls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\""),
        &dir.path().join("spool"),
        common::daemon::free_port(),
    );
    let (status, _, err) = run_mailqueue(&["--config", config.to_str().unwrap(), "check"]);
    assert!(!status.success());
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");

    let config = write_config(
        dir.path(),
        &Setup::default().delivery(
            "tls = \"verify\"\nusername = \"u\"\npassword_file = \"/nonexistent/password\"",
        ),
        &dir.path().join("spool"),
        common::daemon::free_port(),
    );
    let (status, _, err) = run_mailqueue(&["--config", config.to_str().unwrap(), "check"]);
    assert!(!status.success());
    assert!(err.contains("/nonexistent/password"), "{err}");
}

#[test]
fn rust_log_sets_the_level() {
    let sink = SmtpSink::start(&[]);
    let d = Daemon::start(&Setup::to(&sink.url("smtp")).rust_log("warn"));
    let mut c = Client::connect(d.addr()).unwrap();
    queued_id(&c.mail("a@example.org", &["b@example.net"], MSG));
    assert!(wait_for(LONG, || sink.count() == 1));
    assert!(wait_for(LONG, || d.queued().is_empty()));
    assert!(!d.log().contains("status=sent"), "{}", d.log());
}

#[test]
fn sigterm_lets_a_running_attempt_finish() {
    // smtp-sink answers DATA after 2 s: the attempt is still running when
    // the signal comes.
    let sink = SmtpSink::start(&["-w", "2"]);
    let mut d = Daemon::start(&Setup::to(&sink.url("smtp")));
    let mut c = Client::connect(d.addr()).unwrap();
    queued_id(&c.mail("a@example.org", &["b@example.net"], MSG));
    c.quit();
    std::thread::sleep(Duration::from_millis(500));
    d.terminate();
    let status = d.wait_exit(LONG).expect("still running after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", d.log());
    // Finished, not abandoned: delivered once and gone from the spool.
    assert!(d.log().contains("status=sent"), "{}", d.log());
    assert_eq!(sink.count(), 1);
    assert!(d.queued().is_empty());
}

#[test]
fn with_no_config_at_all_serve_runs_on_the_built_in_defaults() {
    assert!(
        !std::path::Path::new("/etc/mailqueue.toml").exists(),
        "/etc/mailqueue.toml exists: this test needs a machine without it"
    );
    let dir = tempfile::tempdir().unwrap();
    let (status, out, err) = run_mailqueue(&["check"]);
    assert!(status.success(), "{err}");
    assert!(out.contains("built-in defaults: ok"), "{out}");

    // Only the spool is moved; the default listener is 127.0.0.1:2525.
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let mut child = Reaper(
        Command::new(binary())
            .arg("--spool")
            .arg(dir.path().join("spool"))
            .arg("serve")
            .env_remove("MAILQUEUE_CONFIG")
            .env("RUST_LOG", "info")
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let read = || std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    assert!(
        wait_for(LONG, || read()
            .contains("listening for SMTP on 127.0.0.1:2525")),
        "{}",
        read()
    );
    common::daemon::signal(child.0.id(), "TERM");
    let status = wait_child(&mut child.0, LONG).expect("still running after SIGTERM");
    assert!(status.success(), "{}", read());
}

/// Runs `check` on a config with these `[delivery]` lines; returns
/// (success, stderr).
fn check_delivery(dir: &std::path::Path, delivery: &str) -> (bool, String) {
    let config = write_config(
        dir,
        &Setup::default().delivery(delivery),
        &dir.join("spool"),
        common::daemon::free_port(),
    );
    let (status, _, err) = run_mailqueue(&["--config", config.to_str().unwrap(), "check"]);
    (status.success(), err)
}

fn private_password(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("password");
    std::fs::write(&path, "s3cret\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn credentials_with_target_remote_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pw = private_password(dir.path());
    let (ok, err) = check_delivery(
        dir.path(),
        &format!("target = \"remote\"\ntls = \"verify\"\nusername = \"u\"\npassword_file = {pw:?}"),
    );
    assert!(!ok, "accepted credentials for every MX host");
    assert!(
        err.contains("delivery.username") && err.contains("smarthost"),
        "{err}"
    );
}

#[test]
fn auth_without_a_verified_certificate_needs_tls_insecure_auth_and_gets_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let pw = private_password(dir.path());
    for tls in ["none", "may", "encrypt"] {
        let (ok, err) = check_delivery(
            dir.path(),
            &format!("tls = \"{tls}\"\nusername = \"u\"\npassword_file = {pw:?}"),
        );
        assert!(!ok, "tls = {tls} with AUTH accepted");
        assert!(err.contains("tls_insecure_auth"), "{err}");
    }
    let (ok, err) = check_delivery(
        dir.path(),
        &format!(
            "tls = \"encrypt\"\ntls_insecure_auth = true\nusername = \"u\"\npassword_file = {pw:?}"
        ),
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("warning") && err.contains("tls_insecure_auth"),
        "{err}"
    );
    let (ok, err) = check_delivery(
        dir.path(),
        &format!("tls = \"verify\"\nusername = \"u\"\npassword_file = {pw:?}"),
    );
    assert!(ok && !err.contains("warning"), "{err}");
}

#[test]
fn a_password_file_others_may_read_is_refused_naming_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let pw = private_password(dir.path());
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o640)).unwrap();
    let delivery = format!("tls = \"verify\"\nusername = \"u\"\npassword_file = {pw:?}");
    let (ok, err) = check_delivery(dir.path(), &delivery);
    assert!(!ok, "a group-readable password file was accepted");
    assert!(
        err.contains("0640") && err.contains(pw.to_str().unwrap()),
        "{err}"
    );
    // serve refuses to start the same way.
    let config = write_config(
        dir.path(),
        &Setup::default().delivery(&delivery),
        &dir.path().join("spool"),
        common::daemon::free_port(),
    );
    let (status, _, err) = run_mailqueue(&["--config", config.to_str().unwrap(), "serve"]);
    assert!(!status.success());
    assert!(err.contains("0640"), "{err}");
}

#[test]
fn auth_in_clear_to_a_smarthost_off_this_machine_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pw = private_password(dir.path());
    let (ok, err) = check_delivery(
        dir.path(),
        &format!(
            "target = \"smtp://smtp.example.net:587\"\ntls = \"none\"\ntls_insecure_auth = true\n\
             username = \"u\"\npassword_file = {pw:?}"
        ),
    );
    assert!(!ok, "a config that can never deliver passed check");
    assert!(err.contains("never sent in clear"), "{err}");
}

#[test]
fn a_password_file_of_another_user_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pw = private_password(dir.path());
    std::os::unix::fs::chown(&pw, Some(65534), None).unwrap();
    let (ok, err) = check_delivery(
        dir.path(),
        &format!("tls = \"verify\"\nusername = \"u\"\npassword_file = {pw:?}"),
    );
    assert!(!ok, "a password file owned by another user was accepted");
    assert!(err.contains("belongs to user id 65534"), "{err}");
    // check run as root judges the file as the daemon's user (the spool's
    // owner) will: its own file passes, one of root's would be unreadable.
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    std::os::unix::fs::chown(&spool, Some(65534), Some(65534)).unwrap();
    let delivery = format!("tls = \"verify\"\nusername = \"u\"\npassword_file = {pw:?}");
    let (ok, err) = check_delivery(dir.path(), &delivery);
    assert!(ok, "{err}");
    std::os::unix::fs::chown(&pw, Some(0), None).unwrap();
    let (ok, err) = check_delivery(dir.path(), &delivery);
    assert!(
        !ok,
        "a root-only password file passed for a daemon running as 65534"
    );
    assert!(err.contains("id 65534, the spool's owner"), "{err}");
}

/// Rewrites a running daemon's config with `setup` (same spool, same
/// port) and sends it SIGHUP.
fn reload(d: &Daemon, setup: &Setup) {
    std::fs::write(d.config_path(), setup.toml(&d.spool(), d.port)).unwrap();
    common::daemon::signal(d.pid(), "HUP");
}

/// The daemon is still up, with its lock and its control socket.
fn still_running(d: &mut Daemon) {
    assert!(
        d.wait_exit(Duration::from_millis(200)).is_none(),
        "{}",
        d.log()
    );
    assert!(d.spool().join("lock").exists());
    assert!(d.spool().join("control.sock").exists());
    let (status, out, err) =
        run_mailqueue(&["--config", d.config_path().to_str().unwrap(), "list"]);
    assert!(status.success(), "{out}{err}");
}

#[test]
fn sighup_switches_the_target_for_queued_and_new_mail() {
    let sink = SmtpSink::start(&[]);
    // Target A: nothing listens there; the first message waits.
    let mut d = Daemon::start(&Setup::default());
    let mut c = Client::connect(d.addr()).unwrap();
    let first = queued_id(&c.mail("a@example.org", &["b@example.net"], MSG));
    assert!(d.wait_log("status=deferred", LONG), "{}", d.log());

    // Target B: the sink. Workers cannot change without a restart.
    reload(
        &d,
        &Setup::to(&sink.url("smtp"))
            .queue("workers = 3")
            .listen("max_recipients = 7"),
    );
    assert!(d.wait_log("reload: done", LONG), "{}", d.log());
    let log = d.log();
    assert!(
        log.contains("reload: [queue] workers changed; restart to apply"),
        "{log}"
    );
    assert!(
        log.contains("changed: [listen] max_recipients, [delivery] target"),
        "{log}"
    );
    // The queued message goes to B at its next try, a new one at once.
    assert!(wait_for(LONG, || sink.count() == 1), "{}", d.log());
    let second = queued_id(&c.mail("a@example.org", &["c@example.net"], MSG));
    c.quit();
    assert!(wait_for(LONG, || sink.count() == 2), "{}", d.log());
    let dumps = sink.messages().join("\n");
    assert!(dumps.contains(&format!("id {first}")), "{dumps}");
    assert!(dumps.contains(&format!("id {second}")), "{dumps}");
    // The new listener limit holds for new connections.
    let mut c = Client::connect(d.addr()).unwrap();
    c.cmd("EHLO client.test").expect(250, "");
    c.cmd("MAIL FROM:<a@example.org>").expect(250, "");
    for i in 0..7 {
        c.cmd(&format!("RCPT TO:<r{i}@example.net>"))
            .expect(250, "");
    }
    assert_eq!(c.cmd("RCPT TO:<r7@example.net>").first()[..1], *"4");
    c.quit();

    still_running(&mut d);
    d.terminate();
    assert!(
        d.wait_exit(LONG).is_some_and(|s| s.success()),
        "{}",
        d.log()
    );
}

#[test]
fn a_config_that_fails_on_sighup_leaves_the_running_one_in_place() {
    let sink = SmtpSink::start(&[]);
    let setup = Setup::to(&sink.url("smtp"));
    let mut d = Daemon::start(&setup);

    // Does not parse: an unknown key.
    std::fs::write(d.config_path(), "[queue]\nworkerz = 3\n").unwrap();
    common::daemon::signal(d.pid(), "HUP");
    assert!(d.wait_log("stays in place", LONG), "{}", d.log());
    assert!(d.log().contains("workerz"), "{}", d.log());
    // Parses, but a file it names cannot be read: nothing of it is used,
    // not even its target.
    reload(
        &d,
        &Setup::default()
            .listen("tls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\""),
    );
    assert!(
        wait_for(LONG, || d.log().matches("stays in place").count() == 2),
        "{}",
        d.log()
    );
    assert!(d.log().contains("/nonexistent/cert.pem"), "{}", d.log());
    assert!(!d.log().contains("reload: done"), "{}", d.log());

    let mut c = Client::connect(d.addr()).unwrap();
    c.mail("a@example.org", &["b@example.net"], MSG)
        .expect(250, "");
    c.quit();
    assert!(wait_for(LONG, || sink.count() == 1), "{}", d.log());
    still_running(&mut d);
}

#[test]
fn check_reports_a_port_in_use_and_a_spool_it_cannot_write() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = write_config(
        dir.path(),
        &Setup::default(),
        &dir.path().join("spool"),
        port,
    );
    let check = || run_mailqueue(&["--config", config.to_str().unwrap(), "check"]);
    let (status, _, err) = check();
    assert_eq!(status.code(), Some(69), "{err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains("address already in use"),
        "{err}"
    );
    drop(taken);
    let (status, out, err) = check();
    assert!(status.success(), "{err}");
    assert!(
        out.contains(&format!("listen 127.0.0.1:{port}: can be bound")),
        "{out}"
    );
    assert!(out.contains("writable by user id 0"), "{out}");
    // Nothing is left behind: the spool is not created, the probe removed.
    assert_eq!(common::files_in(dir.path()), ["other.toml"]);

    // Another user (nobody) may read the config but not write where the
    // spool would be created, nor in a spool that exists.
    assert!(
        std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0),
        "this test must run as root to check as another user"
    );
    for path in [dir.path(), &config] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let as_nobody = || {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(binary())
            .args(["--config", config.to_str().unwrap(), "check"])
            .env_remove("MAILQUEUE_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = as_nobody();
    assert_eq!(code, Some(73), "{err}");
    assert!(err.contains("where serve would create it"), "{err}");
    assert!(err.contains("not writable by user id 65534"), "{err}");
    std::fs::create_dir(dir.path().join("spool")).unwrap();
    let (code, err) = as_nobody();
    assert_eq!(code, Some(73), "{err}");
    assert!(err.contains("the spool"), "{err}");
    assert!(err.contains("not writable by user id 65534"), "{err}");
}

#[test]
fn check_passes_a_port_held_by_the_daemon_running_on_the_spool() {
    let d = Daemon::start(&Setup::default());
    let (status, out, err) =
        run_mailqueue(&["--config", d.config_path().to_str().unwrap(), "check"]);
    assert!(status.success(), "{err}");
    assert!(
        out.contains(&format!(
            "listen 127.0.0.1:{}: in use by the running daemon",
            d.port
        )),
        "{out}"
    );
    // Another spool's check does not take the port for its own daemon's.
    let other = tempfile::tempdir().unwrap();
    let config = write_config(
        other.path(),
        &Setup::default(),
        &other.path().join("spool"),
        d.port,
    );
    let (status, _, err) = run_mailqueue(&["--config", config.to_str().unwrap(), "check"]);
    assert_eq!(status.code(), Some(69), "{err}");
}

#[test]
fn sighup_applies_a_new_log_level() {
    // No RUST_LOG: the configuration's level rules.
    let setup = Setup::default().rust_log("");
    let d = Daemon::start(&setup);
    let submit = |n: u32| {
        let mut child = std::process::Command::new(common::daemon::binary())
            .args([
                "--config",
                d.config_path().to_str().unwrap(),
                "sendmail",
                "-i",
            ])
            .arg("a@example.org")
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("Subject: {n}\n\nx\n").as_bytes())
            .unwrap();
        drop(stdin);
        assert!(child.wait().unwrap().success());
    };
    // A pickup request is logged at debug level: not at info.
    submit(1);
    assert!(
        wait_for(LONG, || d.log().contains("picked up")),
        "{}",
        d.log()
    );
    assert!(!d.log().contains("pickup asked for"), "{}", d.log());

    reload(&d, &setup.clone().set("log", "level = \"debug\""));
    assert!(d.wait_log("changed: [log] level", LONG), "{}", d.log());
    submit(2);
    assert!(d.wait_log("pickup asked for", LONG), "{}", d.log());
}

#[test]
fn sighup_applies_the_retry_policy_and_the_notice_settings_at_the_next_attempt() {
    // The peer answers 450 to this recipient, and takes the notice.
    let peer = PyServer::start(&[]);
    // Retries an hour apart: the next attempt is the operator's flush.
    let setup = Setup::to(&peer.url("smtp"))
        .queue("max_tries = 5\ninitial_retry = \"1h\"\nmax_retry_interval = \"1h\"")
        .bounce("enabled = false");
    let mut d = Daemon::start(&setup);
    let mut c = Client::connect(d.addr()).unwrap();
    let id = queued_id(&c.mail("sender@example.org", &["tempfail-rcpt@example.net"], MSG));
    c.quit();
    assert!(d.wait_log("tries=1, ", LONG), "{}", d.log());
    assert!(d.log().contains("status=deferred"), "{}", d.log());

    reload(
        &d,
        &setup
            .clone()
            .queue("max_tries = 1")
            .bounce("enabled = true"),
    );
    assert!(d.wait_log("reload: done", LONG), "{}", d.log());
    let log = d.log();
    assert!(
        log.contains("changed: [queue] max_tries, [bounce] enabled"),
        "{log}"
    );
    assert!(!log.contains("restart to apply"), "{log}");
    // Nothing is rescheduled by the reload itself: the message waits for
    // its next attempt.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!d.log().contains("tries=2"), "{}", d.log());

    let (status, out, err) =
        run_mailqueue(&["--config", d.config_path().to_str().unwrap(), "flush", &id]);
    assert!(status.success(), "{out}{err}");
    assert!(d.wait_log("tries=2, ", LONG), "{}", d.log());
    let log = d.log();
    let second = log.lines().find(|l| l.contains("tries=2, ")).unwrap();
    assert!(second.contains("status=bounced"), "{log}");
    assert!(
        d.wait_log("sender non-delivery notification", LONG),
        "{}",
        d.log()
    );
    // The notice, now enabled, reaches the sender through the peer.
    let notices = peer.wait_messages(1, LONG);
    assert_eq!(notices[0].sender(), "", "{}", d.log());
    assert_eq!(notices[0].recipients(), ["sender@example.org"]);
    still_running(&mut d);
}
