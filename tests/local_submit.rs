//! Local submission by users other than the daemon's: the sendmail
//! command run by root with a tight umask, by a member of the spool's
//! group, and by anyone through a set-group-id binary; and pickup facing
//! files in `incoming/` that are not submissions.
//!
//! The daemon runs as its own unprivileged user, as in production; the
//! other users are bare numeric ids (no accounts are created), which
//! setpriv(1) switches to. These tests need root.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{binary, free_port, run_mailqueue, wait_child, Daemon, Setup};
use common::peers::SmtpSink;
use common::wait_for;

/// The daemon's user and the spool's group.
const DAEMON_UID: u32 = 47_110;
const SPOOL_GID: u32 = 47_110;
/// nobody: a user with a name in the password database, put in the
/// spool's group where a test needs a member.
const NOBODY: u32 = 65_534;
/// A user in no group of the spool's.
const OUTSIDER: u32 = 47_112;

const LONG: Duration = Duration::from_secs(15);

/// These tests switch users: without root they fail, naming why, rather
/// than pass without testing anything.
#[track_caller]
fn require_root(what: &str) {
    assert!(
        is_root(),
        "this test must run as root {what} (CI runs as root)"
    );
}

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Who runs a command.
#[derive(Clone, Copy)]
struct User {
    uid: u32,
    gid: u32,
    groups: &'static [u32],
}

const ROOT: User = User {
    uid: 0,
    gid: 0,
    groups: &[0],
};
const MEMBER: User = User {
    uid: NOBODY,
    gid: NOBODY,
    groups: &[SPOOL_GID],
};
const STRANGER: User = User {
    uid: OUTSIDER,
    gid: OUTSIDER,
    groups: &[],
};
const DAEMON_USER: User = User {
    uid: DAEMON_UID,
    gid: SPOOL_GID,
    groups: &[SPOOL_GID],
};

/// `setpriv` arguments that run the rest of a command line as `user`.
fn setpriv(user: User) -> Vec<String> {
    let groups = if user.groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        let list: Vec<String> = user.groups.iter().map(u32::to_string).collect();
        format!("--groups={}", list.join(","))
    };
    vec![
        "setpriv".into(),
        format!("--reuid={}", user.uid),
        format!("--regid={}", user.gid),
        groups,
        "--".into(),
    ]
}

fn chown(path: &Path, uid: u32, gid: u32, mode: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A daemon running as DAEMON_UID:SPOOL_GID on a spool it creates in a
/// directory the spool's group may pass through.
struct UserDaemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl UserDaemon {
    fn start(setup: &Setup) -> UserDaemon {
        let dir = tempfile::tempdir().unwrap();
        chown(dir.path(), DAEMON_UID, SPOOL_GID, 0o710);
        let config = dir.path().join("mailqueue.toml");
        fs::write(&config, setup.toml(&dir.path().join("spool"), free_port())).unwrap();
        chown(&config, DAEMON_UID, SPOOL_GID, 0o640);
        let log = fs::File::create(dir.path().join("stderr.log")).unwrap();
        let argv = setpriv(DAEMON_USER);
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .arg(binary())
            .arg("--config")
            .arg(&config)
            .arg("serve")
            // The control socket's debug lines show who woke the daemon.
            .env("RUST_LOG", "info,mailqueue::cli::control=debug")
            .env_remove("MAILQUEUE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut d = UserDaemon { child, dir };
        let sock = d.spool().join("control.sock");
        let up = wait_for(LONG, || {
            sock.exists() || wait_child(&mut d.child, Duration::ZERO).is_some()
        });
        assert!(up && sock.exists(), "daemon did not start:\n{}", d.log());
        d
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("mailqueue.toml")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn incoming(&self) -> Vec<String> {
        common::files_in(&self.spool().join("incoming"))
    }
}

impl Drop for UserDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `program args` as `user` with `stdin`, through `sh -c 'umask
/// UMASK; exec ...'`, with extra environment; returns (exit code, stderr).
fn run_as(
    user: User,
    umask: &str,
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
) -> (i32, String) {
    let mut argv = setpriv(user);
    argv.push(program.display().to_string());
    argv.extend(args.iter().map(|a| a.to_string()));
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("umask {umask} && exec \"$@\""))
        .arg("sh")
        .args(&argv)
        .env_remove("MAILQUEUE_CONFIG")
        .env_remove("USER")
        .env_remove("LOGNAME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    finish(cmd, stdin)
}

fn finish(mut cmd: Command, stdin: &[u8]) -> (i32, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let status = wait_child(&mut child, LONG).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("{cmd:?} did not exit")
    });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code().unwrap_or(-1), err)
}

/// `mailqueue --config CONFIG sendmail ARGS` as `user`.
fn sendmail_as(
    user: User,
    umask: &str,
    config: &Path,
    args: &[&str],
    stdin: &[u8],
) -> (i32, String) {
    let mut all = vec!["--config", config.to_str().unwrap(), "sendmail"];
    all.extend_from_slice(args);
    run_as(user, umask, Path::new(binary()), &all, &[], stdin)
}

/// The message the sink got that carries `needle`.
fn delivered(sink: &SmtpSink, needle: &str, limit: Duration) -> Option<String> {
    let mut found = None;
    wait_for(limit, || {
        found = sink.messages().into_iter().find(|m| m.contains(needle));
        found.is_some()
    });
    found
}

/// An incoming file as sendmail writes it, for `rcpt`.
fn submission(rcpt: &str, subject: &str) -> Vec<u8> {
    format!(
        "{{\"sender\":\"s@example.org\",\"recipients\":[\"{rcpt}\"]}}\n\
         From: s@example.org\r\nSubject: {subject}\r\n\r\nbody\r\n"
    )
    .into_bytes()
}

#[test]
fn a_root_submission_with_umask_077_reaches_a_daemon_running_as_its_own_user() {
    require_root("to run the daemon as another user");
    let sink = SmtpSink::start(&[]);
    let d = UserDaemon::start(&Setup::to(&sink.url("smtp")));
    // What an older sendmail run with umask 077 left: the daemon cannot
    // read it. It must not hold up the files after it.
    let stuck = d.spool().join("incoming").join("0-unreadable.mail");
    fs::write(&stuck, submission("stuck@example.org", "stuck")).unwrap();
    chown(&stuck, 0, 0, 0o600);

    let (code, err) = sendmail_as(
        ROOT,
        "077",
        &d.config(),
        &["-i", "-f", "cron@example.org", "root-rcpt@example.org"],
        b"Subject: from cron\n\nnightly report\n",
    );
    assert_eq!(code, 0, "{err}");
    let got = delivered(&sink, "Subject: from cron", LONG)
        .unwrap_or_else(|| panic!("root's message not delivered:\n{}", d.log()));
    assert!(got.contains("(mailqueue, from userid 0)"), "{got}");

    let (code, err) = sendmail_as(
        MEMBER,
        "022",
        &d.config(),
        &["-i", "-f", "app@example.org", "later@example.org"],
        b"Subject: after it\n\nhello\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        delivered(&sink, "Subject: after it", LONG).is_some(),
        "a later submission waits behind an unreadable file:\n{}",
        d.log()
    );
    // Reported once (several passes have met it by now), not every pass.
    assert_eq!(
        d.log()
            .matches("0-unreadable.mail: left for a later pass")
            .count(),
        1,
        "{}",
        d.log()
    );
    // Pickup removes a file once its message is queued, which may be just
    // after the delivery.
    assert!(
        wait_for(LONG, || d.incoming() == vec!["0-unreadable.mail"]),
        "only the unreadable file stays: {:?}",
        d.incoming()
    );
}

#[test]
fn pickup_quarantines_what_is_not_a_bounded_regular_file_and_goes_on() {
    let sink = SmtpSink::start(&[]);
    // The envelope line may hold max_recipients long addresses: 11 KiB.
    let mut d = Daemon::start(
        &Setup::to(&sink.url("smtp")).listen("max_message_size = 1048576\nmax_recipients = 10"),
    );
    let incoming = d.spool().join("incoming");
    // A FIFO nobody writes to: opening or reading it would block for ever.
    let fifo = incoming.join("00-fifo.mail");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    fs::create_dir(incoming.join("01-dir.mail")).unwrap();
    // A symlink to a valid submission elsewhere: following it would send
    // whatever file the link names.
    let elsewhere = d.dir.path().join("elsewhere.mail");
    fs::write(&elsewhere, submission("stolen@example.org", "via a link")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, incoming.join("02-link.mail")).unwrap();
    // A hard link to a file of someone else's (that the daemon can read).
    let other = d.dir.path().join("other.mail");
    fs::write(&other, submission("linked@example.org", "via a hard link")).unwrap();
    fs::hard_link(&other, incoming.join("06-hardlink.mail")).unwrap();
    // 8 GiB, all holes: it costs no disk, but reading it costs 8 GiB.
    let sparse = fs::File::create(incoming.join("03-sparse.mail")).unwrap();
    sparse.set_len(8 << 30).unwrap();
    drop(sparse);
    // An envelope line that never ends.
    fs::write(incoming.join("04-long.mail"), vec![b'{'; 100 * 1024]).unwrap();
    // Just over the limit with its envelope line.
    let mut big = submission("big@example.org", "big");
    big.resize(1024 * 1024 + 64 * 1024 + 8192, b'x');
    fs::write(incoming.join("05-big.mail"), big).unwrap();

    let started = Instant::now();
    let (code, err) = finish(
        {
            let mut c = Command::new(binary());
            c.arg("--config")
                .arg(d.config_path())
                .args(["sendmail", "-i", "-f", "s@example.org", "good@example.org"])
                .env_remove("MAILQUEUE_CONFIG");
            c
        },
        b"Subject: good\n\nfine\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        delivered(&sink, "Subject: good", Duration::from_secs(10)).is_some(),
        "the good file was not delivered:\n{}",
        d.log()
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    let corrupt = d.spool().join("corrupt");
    assert!(
        wait_for(LONG, || common::files_in(&corrupt).len() == 7),
        "{:?}\n{}",
        common::files_in(&corrupt),
        d.log()
    );
    let log = d.log();
    for (name, why) in [
        ("00-fifo.mail", "not a regular file but a FIFO"),
        ("01-dir.mail", "not a regular file but a directory"),
        ("02-link.mail", "not a regular file but a symbolic link"),
        (
            "03-sparse.mail",
            "8589934592 bytes, more than a submission may have",
        ),
        ("04-long.mail", "no envelope line"),
        ("05-big.mail", "more than a submission may have"),
        ("06-hardlink.mail", "2 hard links to it"),
    ] {
        assert!(
            log.lines().any(|l| l.contains(name) && l.contains(why)),
            "no log line for {name} ({why}):\n{log}"
        );
    }
    assert!(fs::symlink_metadata(corrupt.join("02-link.mail"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(wait_for(LONG, || common::files_in(&incoming).is_empty()));
    assert!(!sink
        .messages()
        .iter()
        .any(|m| m.contains("stolen@example.org") || m.contains("linked@example.org")));

    d.terminate();
    assert!(
        d.wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success()),
        "the daemon did not stop promptly:\n{}",
        d.log()
    );
}

#[test]
fn a_group_member_submits_with_exit_0_and_the_daemon_is_told_at_once() {
    require_root("to switch users");
    let sink = SmtpSink::start(&[]);
    let d = UserDaemon::start(&Setup::to(&sink.url("smtp")));
    // As the README has operators set it (and new spools are made): the
    // group may pass through the spool to incoming/, not read it.
    fs::set_permissions(d.spool(), fs::Permissions::from_mode(0o710)).unwrap();
    let started = Instant::now();
    let (code, err) = sendmail_as(
        MEMBER,
        "022",
        &d.config(),
        &["-i", "-f", "app@example.org", "member@example.org"],
        b"Subject: from a member\n\nhello\n",
    );
    assert_eq!(code, 0, "{err}");
    // The daemon also looks every 5 s: what shows it was told is its log
    // (a busy machine may take longer than 5 s to deliver).
    let got = delivered(&sink, "Subject: from a member", LONG)
        .unwrap_or_else(|| panic!("not delivered:\n{}", d.log()));
    assert!(
        d.log().contains("control socket: pickup asked for"),
        "sendmail did not wake the daemon up (after {:?}):\n{}",
        started.elapsed(),
        d.log()
    );
    assert!(got.contains("(mailqueue, from userid 65534)"), "{got}");
    // Exactly once: an exit status that lied would make callers retry.
    assert_eq!(sink.count(), 1);
}

#[test]
fn the_default_sender_comes_from_the_uid_not_from_user() {
    require_root("to switch users");
    let sink = SmtpSink::start(&[]);
    let d = UserDaemon::start(&Setup::to(&sink.url("smtp")));
    let config = d.config();
    for (user, name) in [(ROOT, "root"), (MEMBER, "nobody")] {
        let subject = format!("Subject: who is {name}");
        let (code, err) = run_as(
            user,
            "022",
            Path::new(binary()),
            &[
                "--config",
                config.to_str().unwrap(),
                "sendmail",
                "-i",
                "rcpt@example.org",
            ],
            &[("USER", "ceo"), ("LOGNAME", "ceo")],
            format!("{subject}\n\nhello\n").as_bytes(),
        );
        assert_eq!(code, 0, "{err}");
        let got = delivered(&sink, &subject, LONG)
            .unwrap_or_else(|| panic!("not delivered:\n{}", d.log()));
        assert!(
            got.contains(&format!("X-Mail-Args: <{name}@mq.test>")),
            "{got}"
        );
        assert!(got.contains(&format!("From: {name}@mq.test")), "{got}");
        assert!(!got.contains("ceo"), "{got}");
    }
}

#[test]
fn pickup_records_the_owner_of_the_file_not_what_it_says() {
    require_root("to give a file to another user");
    let sink = SmtpSink::start(&[]);
    let d = Daemon::start(&Setup::to(&sink.url("smtp")));
    let file = d.spool().join("incoming").join("forged.mail");
    let mut text = submission("rcpt@example.org", "forged");
    // Put a forged Received line at the top of the header.
    let at = text.iter().position(|b| *b == b'\n').unwrap() + 1;
    text.splice(
        at..at,
        b"Received: by mq.test (mailqueue, from userid 0);\r\n\tMon, 1 Jan 2024 00:00:00 +0000\r\n"
            .iter()
            .copied(),
    );
    let tmp = d.dir.path().join("forged.tmp");
    fs::write(&tmp, text).unwrap();
    chown(&tmp, 4242, 4242, 0o640);
    fs::rename(&tmp, &file).unwrap();
    let got = delivered(&sink, "Subject: forged", LONG)
        .unwrap_or_else(|| panic!("not picked up:\n{}", d.log()));
    // smtp-sink puts its X- lines and Received first; ours comes next,
    // above what the file said.
    let first = got
        .lines()
        .find(|l| l.starts_with("Received: by mq.test"))
        .unwrap_or_default();
    assert_eq!(
        first, "Received: by mq.test (mailqueue, from userid 4242);",
        "{got}"
    );
    assert!(d.log().contains("from userid 4242"), "{}", d.log());
}

#[test]
fn a_group_member_meets_the_quota_but_may_not_manage_the_queue() {
    require_root("to switch users");
    // Nothing listens at the target: mail stays queued.
    let d = UserDaemon::start(&Setup::default().queue("max_messages = 1"));
    let (code, err) = sendmail_as(
        MEMBER,
        "022",
        &d.config(),
        &["-i", "-f", "app@example.org", "first@example.org"],
        b"Subject: first\n\nhello\n",
    );
    assert_eq!(code, 0, "{err}");
    let queue = d.spool().join("queue");
    assert!(
        wait_for(LONG, || common::files_in(&queue)
            .iter()
            .any(|f| f.ends_with(".msg"))),
        "not queued:\n{}",
        d.log()
    );
    let id = common::files_in(&queue)
        .into_iter()
        .find_map(|f| f.strip_suffix(".msg").map(str::to_string))
        .unwrap();

    let (code, err) = sendmail_as(
        MEMBER,
        "022",
        &d.config(),
        &["-i", "-f", "app@example.org", "second@example.org"],
        b"Subject: second\n\nhello\n",
    );
    assert_eq!(
        code, 75,
        "the daemon's quota applies to the group too: {err}"
    );
    assert!(err.contains("queue full"), "{err}");

    let config = d.config();
    let (code, err) = run_as(
        MEMBER,
        "022",
        Path::new(binary()),
        &["--config", config.to_str().unwrap(), "delete", &id],
        &[],
        b"",
    );
    assert_ne!(code, 0, "a group member deleted a message");
    assert!(err.contains("permission denied"), "{err}");
    assert!(queue.join(format!("{id}.msg")).exists());
    // Nor see it: `list`, answered line by line, is the owner's alone too.
    let (code, err) = run_as(
        MEMBER,
        "022",
        Path::new(binary()),
        &["--config", config.to_str().unwrap(), "list", "--json"],
        &[],
        b"",
    );
    assert_ne!(code, 0, "a group member listed the queue");
    assert!(err.contains("permission denied"), "{err}");
    assert!(
        d.log().contains("refused delete from userid 65534"),
        "{}",
        d.log()
    );
}

#[test]
fn a_setgid_sendmail_lets_any_user_submit_and_trusts_none_of_their_config() {
    require_root("to install a set-group-id binary");
    let sink = SmtpSink::start(&[]);
    let d = UserDaemon::start(&Setup::to(&sink.url("smtp")));

    // Installed as the README says: group of the spool, mode 2755.
    let bin = tempfile::tempdir().unwrap();
    chown(bin.path(), 0, 0, 0o755);
    let program = bin.path().join("mailqueue");
    fs::copy(binary(), &program).unwrap();
    chown(&program, 0, SPOOL_GID, 0o2755);
    let public_config = bin.path().join("mailqueue.toml");
    fs::copy(d.config(), &public_config).unwrap();
    chown(&public_config, 0, 0, 0o644);

    // Without the privilege, a user outside the group is told why.
    let (code, err) = sendmail_as(
        STRANGER,
        "022",
        &public_config,
        &["-i", "-f", "x@example.org", "r@example.org"],
        b"Subject: no\n\nno\n",
    );
    assert_eq!(code, 73, "{err}");
    assert!(err.contains("set-group-id"), "{err}");
    assert!(!err.contains("queue/"), "{err}");

    // A file the group may read but the caller may not: the privileged
    // sendmail must neither use it nor quote it.
    let secret = d.dir.path().join("secret.toml");
    fs::write(&secret, "hostname = \"SECRET-TEXT\"\nspool = [broken\n").unwrap();
    chown(&secret, 0, SPOOL_GID, 0o640);
    // /etc/mailqueue.toml, seen only by this command: an overlay of /etc
    // in a mount namespace of its own.
    let etc = tempfile::tempdir().unwrap();
    chown(etc.path(), 0, 0, 0o755);
    fs::copy(d.config(), etc.path().join("mailqueue.toml")).unwrap();
    chown(&etc.path().join("mailqueue.toml"), 0, 0, 0o644);

    let mut argv = setpriv(STRANGER);
    argv.extend(
        [
            program.to_str().unwrap(),
            "--config",
            secret.to_str().unwrap(),
            "--spool",
            "/tmp",
            "sendmail",
            "-i",
            "-f",
            "web@example.org",
            "setgid@example.org",
        ]
        .map(String::from),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "sh", "-c"])
        .arg(format!(
            "mount --make-rprivate / && \
             mount -t overlay overlay -o lowerdir={}:/etc /etc && exec \"$@\"",
            etc.path().display()
        ))
        .arg("sh")
        .args(&argv)
        .env("MAILQUEUE_CONFIG", &secret);
    let (code, err) = finish(cmd, b"Subject: through setgid\n\nhello\n");
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("SECRET"), "{err}");
    let got = delivered(&sink, "Subject: through setgid", LONG)
        .unwrap_or_else(|| panic!("not delivered:\n{}", d.log()));
    assert!(got.contains("(mailqueue, from userid 47112)"), "{got}");
    assert!(!got.contains("SECRET"), "{got}");
}

/// Runs a Python `script` as a member of the spool's group, on its own
/// thread, with `socket` as its argument; join for (exit code, stderr).
fn python_as_member(script: &'static str, socket: &Path) -> std::thread::JoinHandle<(i32, String)> {
    let socket = socket.to_str().unwrap().to_string();
    std::thread::spawn(move || {
        run_as(
            MEMBER,
            "022",
            Path::new("/usr/bin/python3"),
            &["-c", script, &socket],
            &[],
            b"",
        )
    })
}

#[test]
fn a_group_member_cannot_flood_the_control_socket() {
    require_root("to switch users");
    let d = UserDaemon::start(&Setup::default());
    fs::set_permissions(d.spool(), fs::Permissions::from_mode(0o710)).unwrap();
    let sock = d.spool().join("control.sock");
    // 64 MiB without a newline, then 40 connections held open at once.
    let script = r#"
import socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
sent = 0
chunk = b"A" * 65536
try:
    while sent < 64 << 20:
        sent += s.send(chunk)
except OSError:
    pass
print("sent", sent, file=sys.stderr)
held, busy = [], 0
for _ in range(40):
    c = socket.socket(socket.AF_UNIX)
    c.connect(path)
    c.settimeout(0.5)
    try:
        if b"busy" in c.recv(200):
            busy += 1
    except OSError:
        pass
    held.append(c)
print("busy", busy, file=sys.stderr)
sys.stdout.flush()
import time; time.sleep(3)
"#;
    let member = python_as_member(script, &sock);
    // While the member holds its connections, the owner is still served.
    std::thread::sleep(Duration::from_millis(1500));
    let config = d.config();
    let (code, _, err) = run_mailqueue(&["--config", config.to_str().unwrap(), "list"]);
    let (_, said) = member.join().unwrap();
    assert!(code.success(), "the owner was not served: {err}\n{said}");
    let sent: usize = said
        .lines()
        .find_map(|l| l.strip_prefix("sent "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    // The socket buffers hold a few hundred KiB; the daemon stops reading
    // after 4 KiB instead of taking all 64 MiB into memory.
    assert!(sent < 8 << 20, "the daemon read {sent} bytes: {said}");
    assert!(
        d.log().contains("request longer than 4096 bytes"),
        "{}",
        d.log()
    );
    let busy: usize = said
        .lines()
        .find_map(|l| l.strip_prefix("busy "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(
        busy >= 20,
        "every one of 40 connections got a thread: {said}"
    );
}

#[test]
fn the_spool_lock_is_out_of_the_groups_reach() {
    require_root("to switch users");
    let d = UserDaemon::start(&Setup::default());
    fs::set_permissions(d.spool(), fs::Permissions::from_mode(0o710)).unwrap();
    let lock = d.spool().join("lock");
    assert_eq!(fs::metadata(&lock).unwrap().mode() & 0o777, 0o600);
    // Readable, a member could hold it shared and keep a daemon from
    // starting (and read the daemon's pid).
    let (code, err) = run_as(
        MEMBER,
        "022",
        Path::new("/usr/bin/flock"),
        &["-n", "-s", lock.to_str().unwrap(), "true"],
        &[],
        b"",
    );
    assert_ne!(code, 0, "a group member could open the spool lock");
    assert!(err.contains("Permission denied"), "{err}");
}

/// Sets a file's modification time `ago` back, without following a
/// symbolic link (touch -h).
fn age(path: &Path, ago: Duration) {
    let when = std::time::SystemTime::now() - ago;
    let secs = when
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let status = Command::new("touch")
        .args(["-h", "-d"])
        .arg(format!("@{secs}"))
        .arg(path)
        .status()
        .expect("touch(1) is needed to age a symbolic link");
    assert!(status.success(), "touch -h {}", path.display());
}

#[test]
fn pickup_removes_temporary_files_a_killed_sendmail_left_behind() {
    let d = Daemon::start(&Setup::default());
    let incoming = d.spool().join("incoming");
    let two_hours = Duration::from_secs(2 * 3600);
    // What a sendmail killed between create and rename leaves.
    let old = incoming.join(".0123456789abcdef0123-00000000000000aa.tmp");
    fs::write(&old, submission("old@example.org", "abandoned")).unwrap();
    fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - two_hours)
        .unwrap();
    // A link is removed, never followed: what it names stays.
    let target = d.dir.path().join("precious");
    fs::write(&target, "keep me").unwrap();
    let link = incoming.join(".link-00000000000000bb.tmp");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    age(&link, two_hours);
    // Not even a submission's name: removed too, or it would fill the
    // disk as well.
    let junk = incoming.join("junk");
    fs::write(&junk, "x".repeat(1000)).unwrap();
    age(&junk, two_hours);
    // One being written now stays, and so does what is neither a file
    // nor a link.
    let fresh = incoming.join(".fresh-00000000000000cc.tmp");
    fs::write(&fresh, "being written").unwrap();
    let dir = incoming.join(".dir-00000000000000dd.tmp");
    fs::create_dir(&dir).unwrap();
    age(&dir, two_hours);

    assert!(
        wait_for(LONG, || !old.exists()
            && fs::symlink_metadata(&link).is_err()),
        "stale temporary files were not removed: {:?}\n{}",
        common::files_in(&incoming),
        d.log()
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), "keep me");
    assert!(
        fresh.exists() && dir.is_dir(),
        "{:?}",
        common::files_in(&incoming)
    );
    let log = d.log();
    for name in [&old, &link] {
        let name = name.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            log.lines()
                .filter(|l| l.contains(name) && l.contains("removed, an unfinished submission"))
                .count(),
            1,
            "{log}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains("/junk: removed, not a submission of userid 0 (1000 bytes")),
        "{log}"
    );
    // Nothing is ever queued from a temporary file.
    assert!(d.queued().is_empty(), "{:?}", d.queued());
}

#[test]
fn what_cannot_be_quarantined_is_reported_once_not_every_pass() {
    require_root("to run the daemon as another user");
    let sink = SmtpSink::start(&[]);
    let d = UserDaemon::start(&Setup::to(&sink.url("smtp")));
    // Another user's directory: the daemon may not move it out of
    // incoming/ (renaming a directory needs write access to it).
    let stuck = d.spool().join("incoming").join("0-dir.mail");
    fs::create_dir(&stuck).unwrap();
    chown(&stuck, 0, 0, 0o755);
    // Each submission is a pickup pass (it wakes the daemon, and is
    // delivered only once that pass ran).
    for n in 0..3 {
        let subject = format!("Subject: pass {n}");
        let (code, err) = sendmail_as(
            ROOT,
            "022",
            &d.config(),
            &["-i", "-f", "s@example.org", "r@example.org"],
            format!("{subject}\n\nhello\n").as_bytes(),
        );
        assert_eq!(code, 0, "{err}");
        assert!(
            delivered(&sink, &subject, LONG).is_some(),
            "not delivered:\n{}",
            d.log()
        );
    }
    assert!(stuck.is_dir());
    let log = d.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("0-dir.mail: not a regular file but a directory"))
            .count(),
        1,
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("0-dir.mail")
            && l.contains("ERROR")
            && l.contains("cannot move it to")),
        "{log}"
    );
}

#[test]
fn a_group_member_has_the_daemon_make_its_rename_durable_not_syncfs() {
    require_root("to switch users");
    let sink = SmtpSink::start(&[]);
    let mut d = UserDaemon::start(&Setup::to(&sink.url("smtp")));
    let config = d.config();
    let member_sendmail = |subject: &str| {
        run_as(
            MEMBER,
            "022",
            Path::new(binary()),
            &[
                "--config",
                config.to_str().unwrap(),
                "sendmail",
                "-i",
                "-f",
                "app@example.org",
                "member@example.org",
            ],
            &[("RUST_LOG", "mailqueue::cli::sendmail=debug")],
            format!("Subject: {subject}\n\nhello\n").as_bytes(),
        )
    };
    let (code, err) = member_sendmail("durable by the daemon");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("made durable by the daemon"), "{err}");
    assert!(!err.contains("syncfs"), "{err}");
    assert!(
        d.log()
            .contains("pickup asked for (incoming/ synced: true)"),
        "{}",
        d.log()
    );
    assert!(delivered(&sink, "Subject: durable by the daemon", LONG).is_some());
    // The daemon was told once, by the request that made the rename
    // durable.
    assert_eq!(
        d.log().matches("control socket: pickup asked for").count(),
        1
    );

    // With no daemon to ask, the whole file system is synced. (Pickup
    // removes its file just after queueing the message, which may be
    // after the delivery seen above: wait for that before the kill.)
    assert!(
        wait_for(LONG, || d.incoming().is_empty()),
        "{:?}",
        d.incoming()
    );
    let _ = d.child.kill();
    let _ = d.child.wait();
    let (code, err) = member_sendmail("no daemon");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("made durable by syncfs"), "{err}");
    assert_eq!(d.incoming().len(), 1, "{:?}", d.incoming());
}

#[test]
fn pickup_refuses_more_recipients_than_max_recipients() {
    let sink = SmtpSink::start(&[]);
    let d = Daemon::start(&Setup::to(&sink.url("smtp")).listen("max_recipients = 2"));
    let incoming = d.spool().join("incoming");
    // Written straight into incoming/, as the spool's group may.
    let three = b"{\"sender\":\"s@example.org\",\"recipients\":[\"a@example.org\",\
        \"b@example.org\",\"c@example.org\"]}\nSubject: three\r\n\r\nbody\r\n";
    fs::write(incoming.join("0-three.mail"), three).unwrap();
    // Two distinct recipients, one named twice: within the limit.
    let twice = b"{\"sender\":\"s@example.org\",\"recipients\":[\"a@example.org\",\
        \"b@example.org\",\"a@example.org\"]}\nSubject: two\r\n\r\nbody\r\n";
    fs::write(incoming.join("1-two.mail"), twice).unwrap();
    assert!(
        delivered(&sink, "Subject: two", LONG).is_some(),
        "{}",
        d.log()
    );
    let corrupt = d.spool().join("corrupt");
    assert!(
        wait_for(LONG, || common::files_in(&corrupt) == vec!["0-three.mail"]),
        "{:?}\n{}",
        common::files_in(&corrupt),
        d.log()
    );
    assert!(
        d.log()
            .contains("3 recipients, more than [listen] max_recipients (2)"),
        "{}",
        d.log()
    );
    assert!(!sink.messages().iter().any(|m| m.contains("Subject: three")));

    // sendmail says so itself, rather than exit 0 for a message pickup
    // would refuse.
    let (code, err) = finish(
        {
            let mut c = Command::new(binary());
            c.arg("--config")
                .arg(d.config_path())
                .args([
                    "sendmail",
                    "-i",
                    "a@example.org",
                    "b@example.org",
                    "c@example.org",
                ])
                .env_remove("MAILQUEUE_CONFIG");
            c
        },
        b"Subject: three again\n\nbody\n",
    );
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("max_recipients"), "{err}");
}

#[test]
fn a_full_queue_leaves_direct_submissions_waiting_and_says_so_once() {
    // Nothing listens at the target, and the next try is an hour away:
    // mail stays queued.
    let d = Daemon::start(
        &Setup::default()
            .queue("max_messages = 1\ninitial_retry = \"1h\"\nmax_retry_interval = \"1h\""),
    );
    let incoming = d.spool().join("incoming");
    fs::write(
        incoming.join("0-first.mail"),
        submission("a@example.org", "first"),
    )
    .unwrap();
    assert!(
        wait_for(LONG, || d.queued().len() == 1),
        "{:?}\n{}",
        d.queued(),
        d.log()
    );
    fs::write(
        incoming.join("1-second.mail"),
        submission("b@example.org", "second"),
    )
    .unwrap();
    assert!(
        d.wait_log("left for a later pass: queue full", LONG),
        "{}",
        d.log()
    );
    // Two more passes (one every 5 s).
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(
        common::files_in(&incoming),
        vec!["1-second.mail"],
        "{}",
        d.log()
    );
    assert!(common::files_in(&d.spool().join("corrupt")).is_empty());
    assert_eq!(
        d.log().matches("left for a later pass: queue full").count(),
        1,
        "{}",
        d.log()
    );

    // Room again: it is queued.
    let id = d.queued()[0].trim_end_matches(".msg").to_string();
    let config = d.config_path();
    let (status, _, err) =
        common::daemon::run_mailqueue(&["--config", config.to_str().unwrap(), "delete", &id]);
    assert!(status.success(), "{err}");
    assert!(
        wait_for(LONG, || common::files_in(&incoming).is_empty()),
        "{}",
        d.log()
    );
    assert_eq!(d.queued().len(), 1, "{:?}", d.queued());
}

#[test]
fn a_member_holding_every_control_slot_does_not_stop_submissions() {
    require_root("to switch users");
    let sink = SmtpSink::start(&[]);
    let d = UserDaemon::start(&Setup::to(&sink.url("smtp")));
    fs::set_permissions(d.spool(), fs::Permissions::from_mode(0o710)).unwrap();
    let sock = d.spool().join("control.sock");
    let script = r#"
import socket, sys, time
held = []
for _ in range(40):
    c = socket.socket(socket.AF_UNIX)
    c.connect(sys.argv[1])
    held.append(c)
print("holding", file=sys.stderr, flush=True)
time.sleep(4)
"#;
    let holder = python_as_member(script, &sock);
    std::thread::sleep(Duration::from_millis(1500));
    let (code, err) = sendmail_as(
        MEMBER,
        "022",
        &d.config(),
        &["-i", "-f", "app@example.org", "busy@example.org"],
        b"Subject: while busy\n\nhello\n",
    );
    let _ = holder.join();
    assert_eq!(code, 0, "a busy control socket refused the mail: {err}");
    assert!(
        delivered(&sink, "Subject: while busy", LONG).is_some(),
        "{}",
        d.log()
    );
}
