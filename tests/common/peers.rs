//! Real SMTP/LMTP servers for the daemon to deliver to: Python's aiosmtpd
//! (tests/peers/smtp_server.py) and Postfix's smtp-sink. A missing peer
//! fails the test and names what to install; nothing is skipped.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::daemon::{free_port, wait_child};
use super::wait_for;

const START_LIMIT: Duration = Duration::from_secs(15);

/// Finds a program in PATH or the sbin directories (Postfix's tools live
/// in /usr/sbin, which a user's PATH may lack); panics naming it if absent.
pub fn require_tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("missing test peer: {name} (install {package}; tests/run.sh does it)");
}

/// Panics naming the module when python3 cannot import it.
pub fn require_python_module(module: &str) {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "missing test peer: python3 module {module} (pip install {module}; tests/run.sh does it)"
    );
}

/// Kills a child process on drop.
pub struct Reaper(pub Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One message the Python server accepted.
#[derive(Debug, Clone)]
pub struct Received {
    /// sender, recipients, mail_options, rcpt_options, tls, auth.
    pub meta: Value,
    /// The bytes after dot-unstuffing.
    pub body: Vec<u8>,
}

impl Received {
    pub fn sender(&self) -> &str {
        self.meta["sender"].as_str().unwrap_or("")
    }

    pub fn recipients(&self) -> Vec<String> {
        self.meta["recipients"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// tests/peers/smtp_server.py: an aiosmtpd SMTP or LMTP server with fault
/// injection by recipient address, recording into its own tempdir.
pub struct PyServer {
    _child: Reaper,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

/// Runs `tests/peers/<script> --dir <tempdir> <args>` and waits for the
/// `PORT n` line it prints once it listens; its stderr goes to
/// `<tempdir>/<script>.log`.
pub fn start_python_peer(
    script: &str,
    what: &str,
    args: &[&str],
) -> (Reaper, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(script);
    let log = dir.path().join(format!("{script}.log"));
    let mut child = Command::new("python3")
        .arg(path)
        .arg("--dir")
        .arg(dir.path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("missing test peer: python3 (cannot start it)");
    let stdout = child.stdout.take().unwrap();
    let child = Reaper(child);
    // Read the "PORT n" line on a thread, so the wait has a limit.
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(START_LIMIT).unwrap_or_default();
    let port = line
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{what} did not start: {line:?}\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            )
        });
    (child, port, dir)
}

impl PyServer {
    /// Starts the server with extra command-line options (see the script)
    /// and waits for the port it reports.
    pub fn start(args: &[&str]) -> PyServer {
        require_python_module("aiosmtpd");
        let (child, port, dir) = start_python_peer("smtp_server.py", "the Python SMTP peer", args);
        PyServer {
            _child: child,
            port,
            dir,
        }
    }

    /// `smtp://127.0.0.1:<port>` and the like.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The messages accepted so far, in arrival order.
    pub fn messages(&self) -> Vec<Received> {
        let mut out = Vec::new();
        for n in 1.. {
            let Ok(meta) = fs::read(self.dir.path().join(format!("{n}.json"))) else {
                break;
            };
            out.push(Received {
                meta: serde_json::from_slice(&meta).unwrap(),
                body: fs::read(self.dir.path().join(format!("{n}.eml"))).unwrap(),
            });
        }
        out
    }

    /// Waits until at least `n` messages arrived; panics with the server's
    /// events otherwise.
    #[track_caller]
    pub fn wait_messages(&self, n: usize, limit: Duration) -> Vec<Received> {
        if !wait_for(limit, || self.messages().len() >= n) {
            panic!(
                "the peer got {} messages, expected {n}; events:\n{}",
                self.messages().len(),
                fs::read_to_string(self.dir.path().join("events.jsonl")).unwrap_or_default()
            );
        }
        self.messages()
    }

    /// Every recorded step (ehlo, auth, mail, rcpt, data) as JSON.
    pub fn events(&self) -> Vec<Value> {
        fs::read_to_string(self.dir.path().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// How many times a recipient was offered at RCPT.
    pub fn rcpt_tries(&self, address: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e["step"] == "rcpt" && e["address"] == address)
            .count()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("smtp_server.py.log")).unwrap_or_default()
    }
}

/// Postfix's smtp-sink, dumping each message into its own file.
pub struct SmtpSink {
    _child: Reaper,
    pub port: u16,
    pub dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl SmtpSink {
    /// Starts `smtp-sink -u <user> -d <dir>/%M. <extra> 127.0.0.1:PORT 256`.
    pub fn start(extra: &[&str]) -> SmtpSink {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // The port may be taken between free_port and smtp-sink's bind.
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn_sink(port, dir.path(), &extra) {
                return SmtpSink {
                    _child: child,
                    port,
                    dir,
                    extra,
                };
            }
        }
        panic!(
            "smtp-sink did not start:\n{}",
            fs::read_to_string(dir.path().join("sink.log")).unwrap_or_default()
        );
    }

    /// Kills the sink (its connections die with it) and starts a new one
    /// on the same port and directory: a next hop restarting.
    pub fn restart(&mut self) {
        let _ = self._child.0.kill();
        let _ = self._child.0.wait();
        let end = Instant::now() + START_LIMIT;
        loop {
            if let Some(child) = spawn_sink(self.port, self.dir.path(), &self.extra) {
                self._child = child;
                return;
            }
            assert!(
                Instant::now() < end,
                "smtp-sink did not start again on port {}:\n{}",
                self.port,
                fs::read_to_string(self.dir.path().join("sink.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The dumped messages (smtp-sink's X- headers, then the message).
    /// smtp-sink creates a dump file at MAIL and writes it at the final
    /// dot: empty files are transactions in progress and are left out. A
    /// big message may still be half written; wait for the daemon to log
    /// its delivery before reading it.
    pub fn messages(&self) -> Vec<String> {
        let dir = self.dir.path().join("mail");
        super::files_in(&dir)
            .iter()
            .filter_map(|f| fs::read(dir.join(f)).ok())
            .filter(|b| !b.is_empty())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect()
    }

    /// Number of messages received so far (see [`SmtpSink::messages`]).
    pub fn count(&self) -> usize {
        let dir = self.dir.path().join("mail");
        super::files_in(&dir)
            .iter()
            .filter(|f| fs::metadata(dir.join(f)).is_ok_and(|m| m.len() > 0))
            .count()
    }
}

/// Starts smtp-sink on `port`, dumping into `<dir>/mail/`; `None` when it
/// does not come up (the port is taken).
fn spawn_sink(port: u16, dir: &Path, extra: &[String]) -> Option<Reaper> {
    let program = require_tool("smtp-sink", "Debian package postfix");
    let dump = format!("{}/%M.", dir.join("mail").display());
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("sink.log"))
        .unwrap();
    let child = Command::new(&program)
        .args(["-u", &current_user(), "-d", &dump])
        .args(extra)
        .arg(format!("127.0.0.1:{port}"))
        .arg("256")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("cannot start smtp-sink");
    let mut child = Reaper(child);
    wait_port(port, &mut child.0).then_some(child)
}

/// Waits until `port` accepts connections, or the child exits.
fn wait_port(port: u16, child: &mut Child) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let end = Instant::now() + START_LIMIT;
    while Instant::now() < end {
        if wait_child(child, Duration::ZERO).is_some() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            // Still alive: it was our child that answered, not a process
            // that took the port first.
            return wait_child(child, Duration::from_millis(100)).is_none();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The user smtp-sink should run as (it insists on -u when started as root).
fn current_user() -> String {
    let out = Command::new("id")
        .arg("-un")
        .output()
        .expect("cannot run id");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
