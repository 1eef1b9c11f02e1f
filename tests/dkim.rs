//! DKIM signing as a receiver checks it: messages go through the daemon
//! to a real SMTP peer (aiosmtpd), and what the peer got is verified by
//! an independent verifier (Python's dkimpy, tests/peers/dkim_verify.py)
//! with the public keys that `openssl` derives from the key files.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;

use common::daemon::{queued_id, run_mailqueue, Client, Daemon, Setup};
use common::peers::{require_python_module, require_tool, PyServer};

const LONG: Duration = Duration::from_secs(20);

/// A private key made by `openssl` as an operator would make it:
/// `rsa` (PKCS#8, `openssl genpkey`), `rsa1` (PKCS#1, `openssl genrsa
/// -traditional`) or `ed25519`.
fn openssl_key(dir: &Path, name: &str, kind: &str) -> PathBuf {
    let openssl = require_tool("openssl", "Debian package openssl");
    let path = dir.join(format!("{name}.pem"));
    let p = path.to_str().unwrap();
    let args: Vec<&str> = match kind {
        "rsa" => vec![
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            p,
        ],
        "rsa1" => vec!["genrsa", "-traditional", "-out", p, "2048"],
        "ed25519" => vec!["genpkey", "-algorithm", "ed25519", "-out", p],
        _ => unreachable!(),
    };
    let out = Command::new(&openssl).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut perms = fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    fs::set_permissions(&path, perms).unwrap();
    path
}

/// The key record for a key file, from `openssl pkey -pubout`: RSA's
/// SubjectPublicKeyInfo, Ed25519's 32 raw bytes (RFC 8463 §4.2).
fn record_of(key: &Path) -> String {
    let openssl = require_tool("openssl", "Debian package openssl");
    let out = Command::new(openssl)
        .args([
            "pkey",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-outform",
            "DER",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let der = out.stdout;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    if der.len() == 44 {
        format!("v=DKIM1; k=ed25519; p={}", b64(&der[12..]))
    } else {
        format!("v=DKIM1; k=rsa; p={}", b64(&der))
    }
}

/// Runs the independent verifier on `message` with `records` (name,
/// record); returns whether every signature passed, and its output.
fn verify(message: &[u8], records: &[(String, String)]) -> (bool, String) {
    require_python_module("dkim");
    require_python_module("nacl");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.eml");
    fs::write(&file, message).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/dkim_verify.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&file)
        .args(records.iter().map(|(n, r)| format!("{n}={r}")))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A `[[dkim]]` table's lines.
fn dkim_table(domain: &str, selector: &str, key: &Path) -> String {
    format!(
        "domain = {domain:?}\nselector = {selector:?}\nkey_file = {:?}",
        key.display().to_string()
    )
}

struct Signing {
    _keys: tempfile::TempDir,
    records: Vec<(String, String)>,
    setup: Setup,
    peer: PyServer,
}

/// A daemon setup delivering to a fresh peer, signing example.org's mail
/// with an RSA key and example.com's with an Ed25519 key.
fn signing() -> Signing {
    let keys = tempfile::tempdir().unwrap();
    let rsa = openssl_key(keys.path(), "org", "rsa");
    let ed = openssl_key(keys.path(), "com", "ed25519");
    let records = vec![
        ("rsa1._domainkey.example.org".to_string(), record_of(&rsa)),
        ("ed1._domainkey.example.com".to_string(), record_of(&ed)),
    ];
    let peer = PyServer::start(&[]);
    let setup = Setup::to(&peer.url("smtp"))
        .table("dkim", &dkim_table("example.org", "rsa1", &rsa))
        .table("dkim", &dkim_table("example.com", "ed1", &ed));
    Signing {
        _keys: keys,
        records,
        setup,
        peer,
    }
}

fn signature_domain(message: &str) -> Option<String> {
    let unfolded = message.replace("\r\n\t", " ").replace("\r\n ", " ");
    let line = unfolded
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("dkim-signature:"))?;
    let d = line
        .split(';')
        .map(str::trim)
        .find_map(|t| t.strip_prefix("d="))?;
    Some(d.to_string())
}

#[test]
fn rsa_and_ed25519_signatures_verify_for_awkward_messages() {
    let s = signing();
    let d = Daemon::start(&s.setup);
    let long_line = "x".repeat(990);
    let messages: Vec<(&str, Vec<u8>)> = vec![
        (
            "example.org",
            b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: plain\r\n\r\nHello.\r\n"
                .to_vec(),
        ),
        (
            "example.com",
            b"From: carol@example.com\r\nTo: bob@example.net,\r\n\tdave@example.net\r\nSubject: a subject\r\n  folded over\r\n\tthree lines\r\nX-Tail:   spaced \t value  \r\n\r\nHello.\r\n"
                .to_vec(),
        ),
        (
            "example.org",
            "From: =?utf-8?q?J=C3=BCrgen?= <j@example.org>\r\nSubject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße, ça va? 日本語\r\n\tindented  with   runs\t\r\ntrailing blanks   \r\n\r\n\r\n"
                .as_bytes()
                .to_vec(),
        ),
        (
            "example.com",
            format!("From: carol@example.com\r\nSubject: long lines\r\n\r\n{long_line}\r\n.leading dot\r\n{long_line}  \r\n")
                .into_bytes(),
        ),
    ];
    let mut c = Client::connect(d.addr()).unwrap();
    for (_, m) in &messages {
        c.mail("sender@example.org", &["bob@example.net"], m)
            .expect(250, "2.0.0");
    }
    c.quit();
    let got = s.peer.wait_messages(messages.len(), LONG);
    for (domain, sent) in &messages {
        // The Subject tells the messages apart; other lines prefix one
        // another ("To: bob@example.net" and "To: bob@example.net,"), and
        // the messages may arrive in any order.
        let first_line = String::from_utf8_lossy(sent)
            .lines()
            .find(|l| l.starts_with("Subject:"))
            .unwrap()
            .to_string();
        let m = got
            .iter()
            .find(|m| m.text().contains(&first_line))
            .unwrap_or_else(|| panic!("no message with {first_line:?}"));
        assert_eq!(
            signature_domain(&m.text()).as_deref(),
            Some(*domain),
            "{}",
            m.text()
        );
        let (ok, out) = verify(&m.body, &s.records);
        assert!(ok, "{out}\n{}", m.text());
        // The signature field is folded: no line over 78 characters.
        let text = m.text();
        let sig: Vec<&str> = text
            .split("\r\n")
            .skip_while(|l| !l.starts_with("DKIM-Signature:"))
            .take_while(|l| l.starts_with("DKIM-Signature:") || l.starts_with('\t'))
            .collect();
        assert!(
            sig.len() > 1 && sig.iter().all(|l| l.len() <= 78),
            "{sig:?}"
        );
    }
    // A change in transit breaks it: the verifier is not a rubber stamp.
    let tampered = String::from_utf8_lossy(&got[0].body).replace("Hello.", "Hellö.");
    let (ok, out) = verify(tampered.as_bytes(), &s.records);
    assert!(!ok, "{out}");
}

#[test]
fn a_subdomain_is_signed_with_its_parent_key_and_others_not_at_all() {
    let s = signing();
    let d = Daemon::start(&s.setup);
    let mut c = Client::connect(d.addr()).unwrap();
    c.mail(
        "news@mail.example.org",
        &["bob@example.net"],
        b"From: news@mail.example.org\r\nSubject: sub\r\n\r\nHi.\r\n",
    )
    .expect(250, "2.0.0");
    c.mail(
        "x@example.net",
        &["bob@example.net"],
        b"From: x@example.net\r\nSubject: nokey\r\n\r\nHi.\r\n",
    )
    .expect(250, "2.0.0");
    c.mail(
        "x@notexample.org",
        &["bob@example.net"],
        b"From: x@notexample.org\r\nSubject: lookalike\r\n\r\nHi.\r\n",
    )
    .expect(250, "2.0.0");
    c.quit();
    let got = s.peer.wait_messages(3, LONG);
    let find = |subject: &str| {
        got.iter()
            .find(|m| m.text().contains(&format!("Subject: {subject}")))
            .unwrap()
            .clone()
    };
    let sub = find("sub");
    assert_eq!(
        signature_domain(&sub.text()).as_deref(),
        Some("example.org")
    );
    let (ok, out) = verify(&sub.body, &s.records);
    assert!(ok, "{out}");
    for subject in ["nokey", "lookalike"] {
        let m = find(subject);
        assert!(!m.text().contains("DKIM-Signature"), "{}", m.text());
        let (ok, out) = verify(&m.body, &s.records);
        assert!(!ok && out.starts_with("none"), "{out}");
    }
}

#[test]
fn a_retried_message_is_sent_with_the_same_bytes_and_its_signature_holds() {
    let s = signing();
    let d = Daemon::start(&s.setup);
    let mut c = Client::connect(d.addr()).unwrap();
    // The peer defers flaky-rcpt at the first attempt and takes it at the
    // second: the message goes out twice, one attempt apart.
    let id = queued_id(&c.mail(
        "alice@example.com",
        &["ok@example.net", "flaky-rcpt@example.net"],
        b"From: alice@example.com\r\nSubject: retry\r\n\r\nSame bytes, twice.\r\n",
    ));
    c.quit();
    let got = s.peer.wait_messages(2, LONG);
    assert!(d.wait_log("tries=2", LONG), "{}", d.log());
    assert!(d.log().contains(&id));
    assert_eq!(got[0].recipients(), ["ok@example.net"]);
    assert_eq!(got[1].recipients(), ["flaky-rcpt@example.net"]);
    assert_eq!(got[0].body, got[1].body, "the retry sent other bytes");
    assert_eq!(got[0].text().matches("DKIM-Signature:").count(), 1);
    for m in &got {
        let (ok, out) = verify(&m.body, &s.records);
        assert!(ok, "{out}");
    }
}

#[test]
fn a_pkcs1_rsa_key_signs_and_a_reload_puts_a_new_key_in_force() {
    let keys = tempfile::tempdir().unwrap();
    let old = openssl_key(keys.path(), "old", "rsa1");
    let new = openssl_key(keys.path(), "new", "ed25519");
    let records = vec![
        ("old._domainkey.example.org".to_string(), record_of(&old)),
        ("new._domainkey.example.org".to_string(), record_of(&new)),
    ];
    let peer = PyServer::start(&[]);
    let base = Setup::to(&peer.url("smtp"));
    let d = Daemon::start(
        &base
            .clone()
            .table("dkim", &dkim_table("example.org", "old", &old)),
    );
    let send = |subject: &str| {
        let mut c = Client::connect(d.addr()).unwrap();
        c.mail(
            "a@example.org",
            &["b@example.net"],
            format!("From: a@example.org\r\nSubject: {subject}\r\n\r\nx\r\n").as_bytes(),
        )
        .expect(250, "2.0.0");
        c.quit();
    };
    send("before");
    let got = peer.wait_messages(1, LONG);
    assert!(got[0].text().contains("s=old;"), "{}", got[0].text());
    let (ok, out) = verify(&got[0].body, &records);
    assert!(ok, "{out}");

    let text = base
        .table("dkim", &dkim_table("example.org", "new", &new))
        .toml(&d.spool(), d.port);
    fs::write(d.config_path(), text).unwrap();
    common::daemon::signal(d.pid(), "HUP");
    assert!(
        d.wait_log("reload: done; changed: [[dkim]]", LONG),
        "{}",
        d.log()
    );
    send("after");
    let got = peer.wait_messages(2, LONG);
    let after = got
        .iter()
        .find(|m| m.text().contains("Subject: after"))
        .unwrap();
    assert!(
        after.text().contains("a=ed25519-sha256;"),
        "{}",
        after.text()
    );
    assert!(after.text().contains("s=new;"), "{}", after.text());
    let (ok, out) = verify(&after.body, &records);
    assert!(ok, "{out}");
}

#[test]
fn check_names_a_bad_key_and_warns_about_one_others_can_read() {
    let keys = tempfile::tempdir().unwrap();
    let good = openssl_key(keys.path(), "good", "ed25519");
    let bad = keys.path().join("bad.pem");
    fs::write(
        &bad,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let spool = keys.path().join("spool");
    let write = |name: &str, tables: &[String]| {
        let mut text = format!(
            "hostname = \"mq.test\"\nspool = {:?}\n[listen]\nsmtp = []\n",
            spool.display().to_string()
        );
        for t in tables {
            text.push_str(&format!("[[dkim]]\n{t}\n"));
        }
        let path = keys.path().join(name);
        fs::write(&path, text).unwrap();
        path
    };
    let config = write(
        "bad.toml",
        &[
            dkim_table("example.org", "s1", &good),
            dkim_table("example.com", "s2", &bad),
        ],
    );
    let (status, out, err) = run_mailqueue(&["--config", config.to_str().unwrap(), "check"]);
    assert_eq!(status.code(), Some(78), "{out}{err}");
    assert!(
        err.contains("[[dkim]] 2 (example.com, selector s2)"),
        "{err}"
    );
    assert!(err.contains("bad.pem"), "{err}");

    let missing = write(
        "missing.toml",
        &[dkim_table(
            "example.org",
            "s1",
            &keys.path().join("nope.pem"),
        )],
    );
    let (status, _, err) = run_mailqueue(&["--config", missing.to_str().unwrap(), "check"]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(err.contains("cannot read key_file"), "{err}");

    let mut perms = fs::metadata(&good).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    fs::set_permissions(&good, perms).unwrap();
    let open = write("open.toml", &[dkim_table("example.org", "s1", &good)]);
    let (status, out, err) = run_mailqueue(&["--config", open.to_str().unwrap(), "check"]);
    assert_eq!(status.code(), Some(0), "{out}{err}");
    assert!(
        err.contains("warning") && err.contains("readable by others"),
        "{err}"
    );

    let unknown = write(
        "unknown.toml",
        &[format!(
            "{}\nheader = [\"from\"]",
            dkim_table("example.org", "s1", &good)
        )],
    );
    let (status, _, err) = run_mailqueue(&["--config", unknown.to_str().unwrap(), "check"]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(err.contains("unknown field"), "{err}");
}

/// `mailqueue dkim keygen ARGS`; returns (exit code, stdout, stderr).
fn keygen(args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["dkim", "keygen"];
    all.extend_from_slice(args);
    let (status, out, err) = run_mailqueue(&all);
    (status.code(), out, err)
}

/// The strings of the TXT record `keygen` printed for publishing.
fn printed_strings(out: &str) -> (String, Vec<String>) {
    let line = out.lines().find(|l| l.contains(" IN TXT ")).unwrap();
    let name = line
        .split(' ')
        .next()
        .unwrap()
        .trim_end_matches('.')
        .to_string();
    let strings = line
        .split('"')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect();
    (name, strings)
}

#[test]
fn keygen_writes_a_private_key_once_and_prints_its_record_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("example.org.pem");
    let out_arg = out_path.to_str().unwrap();
    let (code, out, err) = keygen(&[
        "--domain",
        "example.org",
        "--selector",
        "s1",
        "--out",
        out_arg,
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&out_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let pem = fs::read_to_string(&out_path).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    // The printed record is the key's (as openssl reads it), in strings
    // of at most 255 bytes.
    let (name, strings) = printed_strings(&out);
    assert_eq!(name, "s1._domainkey.example.org");
    assert!(
        strings.len() >= 2 && strings.iter().all(|s| s.len() <= 255),
        "{out}"
    );
    assert_eq!(strings.concat(), record_of(&out_path));
    let openssl = require_tool("openssl", "Debian package openssl");
    let text = Command::new(openssl)
        .args(["pkey", "-in", out_arg, "-noout", "-text"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("2048 bit"));
    assert!(
        out.contains("[[dkim]]\ndomain = \"example.org\"\nselector = \"s1\"\nkey_file = "),
        "{out}"
    );

    // Never over an existing file.
    let (code, _, err) = keygen(&[
        "--domain",
        "example.org",
        "--selector",
        "s2",
        "--out",
        out_arg,
    ]);
    assert_eq!(code, Some(73), "{err}");
    assert!(err.contains("exists already"), "{err}");
    assert_eq!(fs::read_to_string(&out_path).unwrap(), pem);

    let ed_path = dir.path().join("ed.pem");
    let (code, out, err) = keygen(&[
        "--domain",
        "example.com",
        "--selector",
        "ed",
        "--ed25519",
        "--out",
        ed_path.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (_, strings) = printed_strings(&out);
    assert_eq!(strings.concat(), record_of(&ed_path));
    assert!(strings[0].starts_with("v=DKIM1; k=ed25519; p="));
}

#[test]
fn dkim_check_tells_published_missing_and_mismatched_keys_apart() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    let gen = |domain: &str, extra: &[&str], file: &str| {
        let p = path(file);
        let mut args = vec![
            "--domain",
            domain,
            "--selector",
            "s1",
            "--out",
            p.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = keygen(&args);
        assert_eq!(code, Some(0), "{err}");
        printed_strings(&out)
    };
    // good.test: RSA, its record in two strings; ed.test: Ed25519;
    // other.test: the record of another key; none.test: none.
    let (good_name, good) = gen("good.test", &[], "good.pem");
    let (ed_name, ed) = gen("ed.test", &["--ed25519"], "ed.pem");
    let (other_name, _) = gen("other.test", &["--ed25519"], "other.pem");
    let (_, stranger) = gen("stranger.test", &["--ed25519"], "stranger.pem");
    gen("none.test", &["--ed25519"], "none.pem");
    let (bad_name, _) = gen("bad.test", &["--ed25519"], "bad.pem");
    let txt = |name: &str, strings: &[String]| format!("--txt-record={name},{}", strings.join(","));
    let (_dns, port) = common::dns::dnsmasq(&[
        txt(&good_name, &good),
        txt(&ed_name, &ed),
        txt(&other_name, &stranger),
        // No p= tag: no key record at all.
        txt(&bad_name, &["v=DKIM1; k=ed25519".to_string()]),
    ]);
    let write = |domains: &[&str]| {
        let mut text = format!(
            "hostname = \"mq.test\"\nspool = {:?}\n[listen]\nsmtp = []\n[delivery]\ndns_servers = [\"127.0.0.1:{port}\"]\ndns_timeout = \"2s\"\n",
            path("spool").display().to_string()
        );
        for d in domains {
            let file = path(&format!("{}.pem", d.trim_end_matches(".test")));
            text.push_str(&format!("[[dkim]]\n{}\n", dkim_table(d, "s1", &file)));
        }
        let p = path("mailqueue.toml");
        fs::write(&p, text).unwrap();
        p
    };
    let config = write(&["good.test", "ed.test"]);
    let (status, out, err) =
        run_mailqueue(&["--config", config.to_str().unwrap(), "dkim", "check"]);
    assert_eq!(status.code(), Some(0), "{out}{err}");
    assert!(
        out.contains("s1._domainkey.good.test: published and matching"),
        "{out}"
    );
    assert!(
        out.contains("s1._domainkey.ed.test: published and matching"),
        "{out}"
    );

    let config = write(&["good.test", "other.test", "none.test", "bad.test"]);
    let (status, out, err) =
        run_mailqueue(&["--config", config.to_str().unwrap(), "dkim", "check"]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(
        out.contains("s1._domainkey.good.test: published and matching"),
        "{out}"
    );
    assert!(
        out.contains("s1._domainkey.other.test: published with a different key"),
        "{out}"
    );
    assert!(
        out.contains("s1._domainkey.none.test: not published"),
        "{out}"
    );
    assert!(
        out.contains("s1._domainkey.bad.test: malformed record (no p= tag)"),
        "{out}"
    );
    // What to publish is said for each key that fails.
    assert!(
        out.contains("publish: s1._domainkey.none.test. IN TXT \"v=DKIM1; k=ed25519; p="),
        "{out}"
    );
}

/// A message as the SMTP client sends it: every line end CR LF.
fn as_on_the_wire(stored: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored.len() + 64);
    let mut i = 0;
    while i < stored.len() {
        match stored[i] {
            b'\r' if stored.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[test]
fn an_embedder_signs_through_the_queue_options_and_odd_line_ends_still_verify() {
    use common::scripted::{addr, sender, Scripted};
    use mailqueue::dkim::{DkimSigner, SigningKey};
    let keys = tempfile::tempdir().unwrap();
    let key_file = openssl_key(keys.path(), "lib", "ed25519");
    let records = vec![(
        "lib._domainkey.example.org".to_string(),
        record_of(&key_file),
    )];
    let dir = tempfile::tempdir().unwrap();
    let config = common::test_config(dir.path());
    let mut options = config.queue_options();
    options.dkim = DkimSigner::new(vec![
        SigningKey::from_file("example.org", "lib", &key_file).unwrap()
    ]);
    let target = Scripted::new(vec![]);
    let queue = mailqueue::Queue::open(options, target.arc()).unwrap();
    let envelope = mailqueue::Envelope::new(sender("a@example.org"), vec![addr("b@example.net")]);
    let messages: [&[u8]; 3] = [
        b"From: a@example.org\nSubject: bare LF\n\nline one\nline two  \n\n",
        b"From: a@example.org\r\nSubject: all header, no line end",
        b"From: a@example.org\r\nSubject: a body line ends the header\r\nno blank line before me\r\n",
    ];
    for m in messages {
        queue.enqueue(&envelope, m).unwrap();
    }
    assert!(
        common::wait_for(LONG, || target.seen().len() == messages.len()),
        "{} delivered",
        target.seen().len()
    );
    for seen in target.seen() {
        let wire = as_on_the_wire(&seen.body);
        let text = String::from_utf8_lossy(&wire).into_owned();
        assert!(
            text.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"),
            "{text}"
        );
        assert!(
            text.contains("\r\nMessage-ID: <") && text.contains("\r\nDate: "),
            "{text}"
        );
        let (ok, out) = verify(&wire, &records);
        assert!(ok, "{out}\n{text}");
    }
    // A header field RFC 5322 allows once, twice: refused, nothing queued.
    let e = queue
        .enqueue(
            &envelope,
            b"From: a@example.org\r\nFrom: b@example.org\r\n\r\nx\r\n",
        )
        .unwrap_err();
    assert!(matches!(e, mailqueue::QueueError::BadMessage(_)), "{e}");
    assert!(e.to_string().contains("From appears 2 times"), "{e}");
    queue.close();
    assert!(common::files_in(&dir.path().join("queue")).is_empty());
    assert!(common::files_in(&dir.path().join("tmp")).is_empty());
}

#[test]
fn a_bounce_from_a_domain_with_a_key_is_signed() {
    let s = signing();
    let d = Daemon::start(&s.setup.clone().bounce("from = \"postmaster@example.org\""));
    let mut c = Client::connect(d.addr()).unwrap();
    c.mail(
        "alice@example.com",
        &["permfail-rcpt@example.net"],
        b"From: alice@example.com\r\nSubject: will bounce\r\n\r\nx\r\n",
    )
    .expect(250, "2.0.0");
    c.quit();
    let got = s.peer.wait_messages(1, LONG);
    let notice = &got[0];
    assert_eq!(notice.sender(), "", "not the notice: {}", notice.text());
    assert_eq!(
        signature_domain(&notice.text()).as_deref(),
        Some("example.org")
    );
    let (ok, out) = verify(&notice.body, &s.records);
    assert!(ok, "{out}\n{}", notice.text());
}

#[test]
fn the_notices_of_an_operators_expire_are_signed_with_or_without_the_daemon() {
    let s = signing();
    // The peer defers tempfail-rcpt for ever; retries an hour apart.
    let setup = s
        .setup
        .clone()
        .bounce("from = \"postmaster@example.org\"")
        .queue("initial_retry = \"1h\"\nmax_retry_interval = \"1h\"");
    let mut d = Daemon::start(&setup);
    let config = d.config_path();
    let config = config.to_str().unwrap();
    let mut c = Client::connect(d.addr()).unwrap();
    for n in 0..3 {
        c.mail(
            "alice@example.com",
            &["tempfail-rcpt@example.net"],
            format!("From: alice@example.com\r\nSubject: expire {n}\r\n\r\nx\r\n").as_bytes(),
        )
        .expect(250, "2.0.0");
    }
    c.quit();
    assert!(
        common::wait_for(LONG, || d.log().matches("status=deferred").count() == 3),
        "{}",
        d.log()
    );
    // Through the daemon, several at once (the bulk path).
    let ids: Vec<String> = d
        .queued()
        .iter()
        .map(|f| f.trim_end_matches(".msg").to_string())
        .collect();
    let (status, out, err) = run_mailqueue(&["--config", config, "expire", &ids[0], &ids[1]]);
    assert!(status.success(), "{out}{err}");
    let notices = s.peer.wait_messages(2, LONG);
    for n in &notices {
        assert_eq!(n.sender(), "");
        let (ok, out) = verify(&n.body, &s.records);
        assert!(ok, "{out}\n{}", n.text());
    }
    // With the daemon stopped: the notice waits in the spool, signed.
    d.terminate();
    assert!(d.wait_exit(LONG).is_some());
    let (status, out, err) = run_mailqueue(&["--config", config, "expire", &ids[2]]);
    assert!(status.success(), "{out}{err}");
    let left = d.queued();
    assert_eq!(left.len(), 1, "{left:?}");
    let stored = common::stored_message(&d.spool(), left[0].trim_end_matches(".msg"));
    let text = String::from_utf8_lossy(&stored);
    assert!(
        text.starts_with("DKIM-Signature: v=1; a=rsa-sha256;"),
        "{text}"
    );
    assert!(text.contains("d=example.org;"), "{text}");
    let (ok, out) = verify(&stored, &s.records);
    assert!(ok, "{out}\n{text}");
}
