//! Runs the real `mailqueue serve` binary with a config written into a
//! tempdir, and speaks SMTP to it over loopback.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a daemon may take to open its port.
const START_LIMIT: Duration = Duration::from_secs(10);

/// A loopback port nobody listens on right now. Another process may
/// take it before we bind it again; `Daemon::start` retries for that.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot bind a loopback port")
        .port()
}

/// The path of the `mailqueue` binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_mailqueue")
}

/// A test configuration: `key = value` lines per section. The defaults
/// give quick retries and a delivery target where nothing listens; a
/// line for a key that is already set replaces it.
#[derive(Clone)]
pub struct Setup {
    sections: Vec<(&'static str, Vec<(String, String)>)>,
    /// `[[route]]` tables, in order, as TOML lines.
    routes: Vec<String>,
    /// Other arrays of tables (`[[dkim]]`), in order, header included.
    tables: Vec<String>,
    /// RUST_LOG for the daemon.
    rust_log: String,
}

impl Default for Setup {
    fn default() -> Self {
        // Nothing listens there: mail stays in the spool.
        Setup::to(&format!("smtp://127.0.0.1:{}", free_port()))
    }
}

impl Setup {
    /// Delivers to `target`, e.g. `smtp://127.0.0.1:2526`.
    pub fn to(target: &str) -> Setup {
        let s = Setup {
            sections: [
                "", "queue", "listen", "delivery", "bounce", "metrics", "local", "log",
            ]
            .into_iter()
            .map(|name| (name, Vec::new()))
            .collect(),
            routes: Vec::new(),
            tables: Vec::new(),
            rust_log: "info".into(),
        };
        s.set("", "hostname = \"mq.test\"")
            .set(
                "queue",
                "workers = 2\ninitial_retry = \"200ms\"\nretry_scale = 1.0\n\
             max_retry_interval = \"1s\"\ndelay_warning = \"0s\"",
            )
            .set(
                "listen",
                "command_timeout = \"10s\"\ndata_timeout = \"10s\"",
            )
            .set(
                "delivery",
                &format!(
                    "target = \"{target}\"\nconnect_timeout = \"2s\"\n\
                 command_timeout = \"5s\"\ndata_timeout = \"5s\""
                ),
            )
    }

    /// Sets `key = value` lines in a section ("" is the top level).
    pub fn set(mut self, section: &str, lines: &str) -> Setup {
        let (_, entries) = self
            .sections
            .iter_mut()
            .find(|(name, _)| *name == section)
            .unwrap_or_else(|| panic!("no section [{section}]"));
        for line in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not key = value: {line}"));
            let (key, value) = (key.trim().to_string(), value.trim().to_string());
            match entries.iter_mut().find(|(k, _)| *k == key) {
                Some(e) => e.1 = value,
                None => entries.push((key, value)),
            }
        }
        self
    }

    /// Adds a `[[route]]` with these `key = value` lines, after the
    /// routes added before.
    pub fn route(mut self, lines: &str) -> Setup {
        self.routes.push(lines.trim().to_string());
        self
    }

    /// Adds a `[[name]]` table (`[[dkim]]`) with these `key = value`
    /// lines, after the tables added before.
    pub fn table(mut self, name: &str, lines: &str) -> Setup {
        self.tables.push(format!("[[{name}]]\n{}\n", lines.trim()));
        self
    }

    /// Runs the daemon with this RUST_LOG instead of `info`.
    pub fn rust_log(mut self, level: &str) -> Setup {
        self.rust_log = level.into();
        self
    }

    pub fn queue(self, lines: &str) -> Setup {
        self.set("queue", lines)
    }

    pub fn listen(self, lines: &str) -> Setup {
        self.set("listen", lines)
    }

    pub fn delivery(self, lines: &str) -> Setup {
        self.set("delivery", lines)
    }

    pub fn bounce(self, lines: &str) -> Setup {
        self.set("bounce", lines)
    }

    /// The config file text for a spool and a listening port.
    pub fn toml(&self, spool: &Path, port: u16) -> String {
        let s = self
            .clone()
            .set("", &format!("spool = {:?}", spool.display().to_string()))
            .set("listen", &format!("smtp = [\"127.0.0.1:{port}\"]"));
        let mut out = String::new();
        for (name, entries) in &s.sections {
            if !name.is_empty() {
                out.push_str(&format!("[{name}]\n"));
            }
            for (k, v) in entries {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        for r in &s.routes {
            out.push_str(&format!("[[route]]\n{r}\n"));
        }
        for t in &s.tables {
            out.push_str(t);
        }
        out
    }
}

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts a daemon with its own spool and waits until it accepts
    /// SMTP connections.
    pub fn start(setup: &Setup) -> Daemon {
        let mut dir = tempfile::tempdir().unwrap();
        // The free port may be taken by someone else before the daemon
        // binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("mailqueue.toml");
            fs::write(&config, setup.toml(&dir.path().join("spool"), port)).unwrap();
            let child = spawn_serve(&config, dir.path(), &setup.rust_log);
            let mut daemon = Daemon { child, port, dir };
            let logs_info = ["info", "debug", "trace"].contains(&setup.rust_log.as_str());
            match daemon.wait_listening(logs_info) {
                Ok(()) => return daemon,
                Err(log) if log.contains("cannot listen") => {
                    dir = daemon.into_dir();
                    continue;
                }
                Err(log) => panic!("mailqueue serve did not start:\n{log}"),
            }
        }
        panic!("mailqueue serve found no free port");
    }

    /// Waits until the port accepts, or the daemon has exited (its log
    /// is the error).
    fn wait_listening(&mut self, logs_info: bool) -> Result<(), String> {
        let end = Instant::now() + START_LIMIT;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(self.log());
            }
            // The log line shows that *this* daemon bound the port, and a
            // probe session would count against max_connections for a
            // moment. Without info lines, a probe it is.
            let ready = if logs_info {
                self.log()
                    .contains(&format!("listening for SMTP on 127.0.0.1:{}", self.port))
            } else {
                Client::connect(self.addr()).is_ok_and(|mut c| {
                    c.quit();
                    true
                }) && wait_child(&mut self.child, Duration::from_millis(100)).is_none()
            };
            if ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "not listening after {START_LIMIT:?}\n{}",
            self.log()
        ))
    }

    fn into_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("mailqueue.toml")
    }

    /// Message files waiting in the spool.
    pub fn queued(&self) -> Vec<String> {
        super::files_in(&self.spool().join("queue"))
            .into_iter()
            .filter(|f| f.ends_with(".msg"))
            .collect()
    }

    /// Everything the daemon has written to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; false on timeout.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        super::wait_for(limit, || self.log().contains(needle))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        signal(self.child.id(), "TERM");
    }

    /// Waits for the daemon to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, limit)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `mailqueue --config <config> serve` with stderr to
/// `<dir>/stderr.log` (a file, so a chatty daemon never blocks on a pipe).
pub fn spawn_serve(config: &Path, dir: &Path, rust_log: &str) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stderr.log"))
        .unwrap();
    Command::new(binary())
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("RUST_LOG", rust_log)
        .env_remove("MAILQUEUE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("cannot start mailqueue")
}

/// Sends a signal by name with kill(1): the tests need no libc binding.
pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{name} {pid} failed");
}

/// Polls a child until it exits or `limit` passes.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One SMTP reply: the code and each line's text after `NNN-`/`NNN `.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The first line as sent, e.g. `250 2.0.0 Ok`.
    pub fn first(&self) -> String {
        format!("{} {}", self.code, self.lines[0])
    }

    /// All lines' texts joined by spaces.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// Asserts the code and the start of the text (e.g. the enhanced code).
    #[track_caller]
    pub fn expect(&self, code: u16, text_starts: &str) -> &Reply {
        assert!(
            self.code == code && self.lines[0].starts_with(text_starts),
            "expected {code} {text_starts}..., got {self:?}"
        );
        self
    }
}

/// A raw SMTP client over any byte stream (TCP, or TLS after STARTTLS).
pub struct Client<S: Read + Write = TcpStream> {
    pub io: BufReader<S>,
}

impl Client<TcpStream> {
    /// Connects and reads the 220 greeting.
    pub fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let mut c = Client::raw(addr)?;
        let greeting = c.try_reply()?;
        if greeting.code != 220 {
            return Err(std::io::Error::other(format!("greeting {greeting:?}")));
        }
        Ok(c)
    }

    /// Connects without reading anything.
    pub fn raw(addr: SocketAddr) -> std::io::Result<Client> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(Client {
            io: BufReader::new(s),
        })
    }
}

impl<S: Read + Write> Client<S> {
    pub fn wrap(stream: S) -> Client<S> {
        Client {
            io: BufReader::new(stream),
        }
    }

    /// Writes bytes as they are, in one write.
    pub fn send(&mut self, bytes: &[u8]) {
        let s = self.io.get_mut();
        s.write_all(bytes).unwrap();
        s.flush().unwrap();
    }

    /// Reads one (possibly multi-line) reply.
    pub fn try_reply(&mut self) -> std::io::Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut raw = Vec::new();
            let n = self.io.read_until(b'\n', &mut raw)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let line = String::from_utf8_lossy(&raw).trim_end().to_string();
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad reply line {line:?}")))?;
            lines.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply { code, lines });
            }
        }
    }

    #[track_caller]
    pub fn reply(&mut self) -> Reply {
        self.try_reply().expect("no reply from the server")
    }

    /// Sends one command line and reads its reply.
    #[track_caller]
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Sends a message in a DATA phase that was already accepted with 354;
    /// `data` must be dot-stuffed and end with `\r\n.\r\n`.
    #[track_caller]
    pub fn data_raw(&mut self, data: &[u8]) -> Reply {
        self.send(data);
        self.reply()
    }

    /// EHLO, MAIL, RCPTs, DATA and the message (dot-stuffed here). Returns
    /// the final reply.
    #[track_caller]
    pub fn mail(&mut self, from: &str, to: &[&str], message: &[u8]) -> Reply {
        self.cmd("EHLO client.test").expect(250, "");
        self.cmd(&format!("MAIL FROM:<{from}>"))
            .expect(250, "2.1.0");
        for r in to {
            self.cmd(&format!("RCPT TO:<{r}>")).expect(250, "2.1.5");
        }
        self.cmd("DATA").expect(354, "");
        self.data_raw(&dot_stuff(message))
    }

    /// Says QUIT and ignores what happens next.
    pub fn quit(&mut self) {
        let _ = self.io.get_mut().write_all(b"QUIT\r\n");
        let _ = self.try_reply();
    }

    /// True when the server has closed the connection (EOF or reset).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.io.read(&mut b), Ok(0) | Err(_))
    }
}

/// Dot-stuffs a message and adds the final `.` line (the client side of
/// RFC 5321 §4.5.2); `message` must end in CRLF.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 8);
    let mut line_start = true;
    for &b in message {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The queue id in a `250 2.0.0 Ok: queued as <id>` reply.
#[track_caller]
pub fn queued_id(r: &Reply) -> String {
    r.expect(250, "2.0.0 Ok: queued as ");
    r.lines[0]
        .rsplit(' ')
        .next()
        .expect("an id after 'queued as'")
        .to_string()
}

/// Runs `mailqueue` with arguments; returns (exit status, stdout, stderr).
pub fn run_mailqueue(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(binary())
        .args(args)
        .env_remove("MAILQUEUE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start mailqueue");
    // Short outputs: reading them after the exit cannot deadlock.
    let status = wait_child(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("mailqueue {args:?} did not exit");
    });
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, out, err)
}
