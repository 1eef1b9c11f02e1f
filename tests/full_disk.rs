//! A full disk: the spool on a small tmpfs that this test mounts. New mail
//! is refused with 452 (SMTP) and 75 (sendmail), nothing already queued is
//! damaged, and mail flows again once space is freed.
//!
//! Needs root (to mount); without it the test fails and says why.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::daemon::{binary, free_port, run_mailqueue, spawn_serve, wait_child, Client, Setup};
use common::wait_for;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(20);

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("the mount command is missing (util-linux)");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs for the full-disk test (it needs root and mount rights): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

struct Running {
    child: Child,
    config: PathBuf,
    port: u16,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the daemon with its spool on `spool` (mail stays queued:
/// nothing listens at the target).
fn start(dir: &Path, spool: &Path, queue: &str) -> Running {
    let port = free_port();
    let setup = Setup::default()
        .queue(queue)
        .listen("max_message_size = 10000000");
    let config = dir.join("mailqueue.toml");
    std::fs::write(&config, setup.toml(spool, port)).unwrap();
    let child = spawn_serve(&config, dir, "info");
    let log = dir.join("stderr.log");
    assert!(
        wait_for(LONG, || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&format!("127.0.0.1:{port}"))),
        "daemon did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    Running {
        child,
        config,
        port,
    }
}

/// Sends one message; returns the final reply code and the id if queued.
fn send(port: u16, size: usize) -> (u16, Option<String>) {
    let mut c = Client::connect(([127, 0, 0, 1], port).into()).unwrap();
    c.cmd("EHLO client.test").expect(250, "");
    let r = c.cmd("MAIL FROM:<s@example.org>");
    if r.code != 250 {
        return (r.code, None);
    }
    c.cmd("RCPT TO:<r@example.org>").expect(250, "");
    let r = c.cmd("DATA");
    if r.code != 354 {
        return (r.code, None);
    }
    let mut body = b"Subject: fill\r\n\r\n".to_vec();
    while body.len() < size {
        body.extend_from_slice(
            b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n",
        );
    }
    body.extend_from_slice(b".\r\n");
    let r = c.data_raw(&body);
    c.quit();
    let id = (r.code == 250).then(|| r.lines[0].rsplit(' ').next().unwrap().to_string());
    (r.code, id)
}

fn listed(config: &Path) -> Vec<Value> {
    let (status, out, err) =
        run_mailqueue(&["--config", config.to_str().unwrap(), "list", "--json"]);
    assert!(status.success(), "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sendmail(config: &Path) -> i32 {
    let mut child = Command::new(binary())
        .args([
            "--config",
            config.to_str().unwrap(),
            "sendmail",
            "-i",
            "-f",
            "s@example.org",
            "r@example.org",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let body = "Subject: x\n\n".to_string() + &"y".repeat(200_000);
    let _ = child.stdin.take().unwrap().write_all(body.as_bytes());
    wait_child(&mut child, LONG).unwrap().code().unwrap_or(-1)
}

#[test]
fn a_full_disk_refuses_new_mail_keeps_the_old_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let _fs = Tmpfs::mount(&dir.path().join("mnt"), "3m");
    let spool = dir.path().join("mnt").join("spool");
    // No free-space quota: the disk itself fills up.
    let d = start(
        dir.path(),
        &spool,
        "min_free_bytes = 0\ninitial_retry = \"1h\"\nmax_retry_interval = \"1h\"",
    );

    let mut acked = Vec::new();
    let refused = loop {
        let (code, id) = send(d.port, 150_000);
        match id {
            Some(id) => acked.push(id),
            None => break code,
        }
        assert!(acked.len() < 100, "the 3 MB disk never filled");
    };
    assert_eq!(refused, 452, "a full disk must be a temporary 452");
    assert!(!acked.is_empty());
    assert_eq!(
        sendmail(&d.config),
        75,
        "sendmail must exit EX_TEMPFAIL on a full disk"
    );

    // Nothing already acknowledged is damaged.
    let list = listed(&d.config);
    for id in &acked {
        let m = list
            .iter()
            .find(|m| m["queue_id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} lost"));
        let size = common::stored_message(&spool, id).len() as u64;
        assert_eq!(m["message_size"].as_u64(), Some(size), "{id} damaged");
    }
    assert!(std::fs::read_dir(spool.join("corrupt"))
        .unwrap()
        .next()
        .is_none());

    // Free space: mail flows again.
    for id in &acked[..acked.len() / 2] {
        let (status, _, err) =
            run_mailqueue(&["--config", d.config.to_str().unwrap(), "delete", id]);
        assert!(status.success(), "{err}");
    }
    let (code, id) = send(d.port, 150_000);
    assert_eq!(code, 250, "mail not accepted after space was freed");
    assert!(id.is_some());
    assert_eq!(sendmail(&d.config), 0);
    eprintln!("full disk: {} messages acknowledged before the disk filled, then 452 and exit 75; recovered after freeing space", acked.len());
}

#[test]
fn the_free_space_quota_refuses_mail_before_the_disk_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let _fs = Tmpfs::mount(&dir.path().join("mnt"), "4m");
    let spool = dir.path().join("mnt").join("spool");
    let d = start(
        dir.path(),
        &spool,
        "min_free_bytes = 2000000\ninitial_retry = \"1h\"\nmax_retry_interval = \"1h\"",
    );
    let mut acked = 0;
    let code = loop {
        match send(d.port, 150_000) {
            (_, Some(_)) => acked += 1,
            (code, None) => break code,
        }
        assert!(acked < 100);
    };
    assert_eq!(code, 452);
    // Refused with room to spare: about 2 MB of the 4 MB are still free.
    let free = fs2::available_space(&spool).unwrap();
    assert!(
        free >= 1_500_000,
        "{free} bytes free: the quota did not hold"
    );
}
