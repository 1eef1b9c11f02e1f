//! `mailqueue check --dns` against dnsmasq on loopback: the report's
//! findings and exit code for good and broken reverse DNS and SPF.

mod common;

use std::process::Command;

use common::daemon::binary;
use common::dns::dnsmasq;

/// What one run printed and how it exited.
struct Run {
    code: i32,
    out: String,
    err: String,
}

impl Run {
    /// The report's line that starts with `prefix` (level and check).
    fn line(&self, prefix: &str) -> &str {
        self.out
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?}:\n{}{}", self.out, self.err))
    }

    fn assert_code(&self, code: i32) {
        assert_eq!(self.code, code, "exit code\n{}{}", self.out, self.err);
    }
}

/// The records every test starts from: mail.d.test is 127.0.0.2 both
/// ways (dnsmasq's host records make the PTR too), d.test has an MX.
fn base_records() -> Vec<String> {
    [
        "--host-record=mail.d.test,127.0.0.2",
        "--mx-host=d.test,mx.d.test,10",
        "--host-record=mx.d.test,127.0.0.1",
        // The EHLO name's SPF, by which notices (sent from <>) are judged.
        "--txt-record=mail.d.test,v=spf1 a -all",
        // PTR names nobody set are "no such name", not "refused".
        "--local=/127.in-addr.arpa/",
    ]
    .map(String::from)
    .to_vec()
}

/// Runs `check --dns ARGS` with dnsmasq serving `records` (beside the
/// base ones) and `extra` appended to the configuration; the host is
/// mail.d.test and notices come from MAILER-DAEMON@d.test.
fn check_dns(records: &[&str], extra: &str, args: &[&str]) -> Run {
    let mut all = base_records();
    all.extend(records.iter().map(|r| r.to_string()));
    let (_dns, port) = dnsmasq(&all);
    run_check(
        &format!("dns_servers = [\"127.0.0.1:{port}\"]\ndns_timeout = \"2s\""),
        extra,
        args,
    )
}

fn run_check(delivery: &str, extra: &str, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mailqueue.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"mail.d.test\"\nspool = {:?}\n[listen]\nsmtp = []\n\
             [delivery]\n{delivery}\n\
             [bounce]\nfrom = \"MAILER-DAEMON@d.test\"\n{extra}",
            dir.path().join("spool").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(binary())
        .arg("--config")
        .arg(&config)
        .args(["check", "--dns"])
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code().expect("exited"),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const GOOD_SPF: &str = "--txt-record=d.test,v=spf1 ip4:127.0.0.0/8 -all";

#[test]
fn a_good_setup_reports_no_problem_and_exits_0() {
    let r = check_dns(&[GOOD_SPF], "", &["--address", "127.0.0.2"]);
    r.assert_code(0);
    assert!(!r.out.contains("PROBLEM"), "{}", r.out);
    r.line("ok       outbound [delivery]: mail leaves from 127.0.0.2 (given with --address) with EHLO mail.d.test");
    r.line("ok       reverse DNS 127.0.0.2: PTR mail.d.test resolves back to the address and is the EHLO name");
    r.line("ok       SPF d.test (127.0.0.2): permits it (\"ip4:127.0.0.0/8\" in d.test)");
    r.line("ok       SPF mail.d.test (127.0.0.2): permits it (\"a\" in mail.d.test)");
    r.line("ok       MX d.test: bounces come back to mx.d.test");
    r.line("warning  DKIM: no keys configured (see `mailqueue dkim keygen`)");
    r.line("DNS check: 0 problems, 0 checks not made, 1 warning, 5 ok");
}

#[test]
fn an_address_without_ptr_is_a_problem() {
    let r = check_dns(&[GOOD_SPF], "", &["--address", "127.0.0.3"]);
    r.assert_code(1);
    let line = r.line("PROBLEM  reverse DNS 127.0.0.3: no PTR record at 3.0.0.127.in-addr.arpa");
    assert!(line.contains("fix: ask whoever runs 127.0.0.3"), "{line}");
    assert!(line.contains("publish mail.d.test A 127.0.0.3"), "{line}");
    // The rest is still checked.
    r.line("ok       SPF d.test (127.0.0.3): permits it");
}

#[test]
fn a_ptr_whose_name_does_not_resolve_back_is_a_problem() {
    let r = check_dns(
        &[
            GOOD_SPF,
            // ghost.d.test exists, with another address.
            "--ptr-record=4.0.0.127.in-addr.arpa,ghost.d.test",
            "--host-record=ghost.d.test,127.0.0.9",
            // nowhere.d.test does not exist at all.
            "--ptr-record=5.0.0.127.in-addr.arpa,nowhere.d.test",
        ],
        "",
        &["--address", "127.0.0.4", "--address", "127.0.0.5"],
    );
    r.assert_code(1);
    let line = r.line("PROBLEM  reverse DNS 127.0.0.4: PTR ghost.d.test is not confirmed: ghost.d.test resolves to 127.0.0.9 only");
    assert!(
        line.contains("fix: publish ghost.d.test A 127.0.0.4"),
        "{line}"
    );
    r.line("PROBLEM  reverse DNS 127.0.0.5: PTR nowhere.d.test is not confirmed: nowhere.d.test has no A record");
}

#[test]
fn a_ptr_other_than_the_ehlo_name_is_a_problem_and_a_route_helo_name_fixes_it() {
    let r = check_dns(
        &[GOOD_SPF, "--host-record=other.d.test,127.0.0.6"],
        "[[route]]\ndomains = [\"example.net\"]\ntarget = \"remote\"\nhelo_name = \"other.d.test\"\n",
        &["--address", "127.0.0.6"],
    );
    r.assert_code(1);
    let line = r.line(
        "PROBLEM  reverse DNS 127.0.0.6: PTR other.d.test resolves back to the address but the EHLO name is mail.d.test",
    );
    assert!(line.contains("give EHLO other.d.test"), "{line}");
    // Notices through the route are judged by other.d.test's SPF: none.
    let line = r.line("warning  SPF other.d.test (127.0.0.6): no v=spf1 record at other.d.test: receivers judge notices");
    assert!(
        line.contains("fix: publish other.d.test. TXT \"v=spf1 a -all\""),
        "{line}"
    );
    // The route says other.d.test in EHLO: that one is right.
    r.line("ok       outbound route 1 (example.net): mail leaves from 127.0.0.6 (given with --address) with EHLO other.d.test");
    r.line("ok       reverse DNS 127.0.0.6: PTR other.d.test resolves back to the address and is the EHLO name");
}

#[test]
fn spf_that_does_not_permit_the_address_is_a_problem() {
    let r = check_dns(
        &["--txt-record=d.test,v=spf1 ip4:192.0.2.0/24 -all"],
        "",
        &["--address", "127.0.0.2"],
    );
    r.assert_code(1);
    let line = r.line("PROBLEM  SPF d.test (127.0.0.2): does not permit it (\"-all\" in d.test)");
    assert!(
        line.contains("fix: add ip4:127.0.0.2 to d.test's SPF record"),
        "{line}"
    );
}

#[test]
fn softfail_and_neutral_are_warnings_and_exit_0() {
    let r = check_dns(
        &["--txt-record=d.test,v=spf1 ip4:192.0.2.0/24 ~all"],
        "",
        &["--address", "127.0.0.2"],
    );
    r.assert_code(0);
    r.line("warning  SPF d.test (127.0.0.2): softfail (\"~all\" in d.test)");
    let r = check_dns(
        &["--txt-record=d.test,v=spf1 ip4:192.0.2.0/24"],
        "",
        &["--address", "127.0.0.2"],
    );
    r.assert_code(0);
    r.line("warning  SPF d.test (127.0.0.2): neutral (no term of d.test matched");
}

#[test]
fn no_spf_record_and_two_of_them_are_problems() {
    let r = check_dns(
        &["--txt-record=d.test,some-site-verification=x"],
        "",
        &["--address", "127.0.0.2"],
    );
    r.assert_code(1);
    let line = r.line("PROBLEM  SPF d.test (127.0.0.2): no v=spf1 record at d.test");
    assert!(
        line.contains("fix: publish d.test. TXT \"v=spf1 ip4:127.0.0.2 -all\""),
        "{line}"
    );

    let r = check_dns(
        &[GOOD_SPF, "--txt-record=d.test,v=spf1 mx -all"],
        "",
        &["--address", "127.0.0.2"],
    );
    r.assert_code(1);
    r.line("PROBLEM  SPF d.test (127.0.0.2): the record is broken: 2 v=spf1 records at d.test");
}

#[test]
fn an_include_chain_that_permits_the_address_passes() {
    let r = check_dns(
        &[
            "--txt-record=d.test,v=spf1 include:_spf.d.test -all",
            "--txt-record=_spf.d.test,v=spf1 include:_net.d.test ~all",
            "--txt-record=_net.d.test,v=spf1 ip4:192.0.2.0/24 a:mail.d.test -all",
        ],
        "",
        &["--address", "127.0.0.2"],
    );
    r.assert_code(0);
    r.line("ok       SPF d.test (127.0.0.2): permits it (\"a:mail.d.test\" in _net.d.test, via \"include:_net.d.test\" in _spf.d.test, via \"include:_spf.d.test\" in d.test)");
}

#[test]
fn a_redirect_is_followed() {
    let r = check_dns(
        &[
            "--txt-record=d.test,v=spf1 redirect=_spf.d.test",
            "--txt-record=_spf.d.test,v=spf1 mx ip4:127.0.0.2 -all",
        ],
        "",
        &["--address", "127.0.0.2"],
    );
    r.assert_code(0);
    r.line("ok       SPF d.test (127.0.0.2): permits it (\"ip4:127.0.0.2\" in _spf.d.test)");
    // A redirect to a record that does not permit it fails as that one.
    let r = check_dns(
        &[
            "--txt-record=d.test,v=spf1 redirect=_spf.d.test",
            "--txt-record=_spf.d.test,v=spf1 ip4:192.0.2.1 -all",
        ],
        "",
        &["--address", "127.0.0.2"],
    );
    r.assert_code(1);
    r.line("PROBLEM  SPF d.test (127.0.0.2): does not permit it (\"-all\" in _spf.d.test)");
}

#[test]
fn more_than_ten_lookups_is_a_problem_even_when_the_end_permits() {
    let mut records = vec!["--txt-record=d.test,v=spf1 include:s1.d.test -all".to_string()];
    for i in 1..=10 {
        records.push(format!(
            "--txt-record=s{i}.d.test,v=spf1 include:s{}.d.test -all",
            i + 1
        ));
    }
    records.push("--txt-record=s11.d.test,v=spf1 ip4:127.0.0.2 -all".into());
    let records: Vec<&str> = records.iter().map(String::as_str).collect();
    let r = check_dns(&records, "", &["--address", "127.0.0.2"]);
    r.assert_code(1);
    let line =
        r.line("PROBLEM  SPF d.test (127.0.0.2): the record is broken: more than 10 DNS lookups");
    assert!(
        line.contains("replace includes by the ip4:/ip6: ranges"),
        "{line}"
    );

    // One fewer step is within the limit.
    let r = check_dns(
        &records[1..],
        "",
        &["--address", "127.0.0.2", "--domain", "s1.d.test"],
    );
    r.line("ok       SPF s1.d.test (127.0.0.2): permits it");
}

#[test]
fn sender_domains_come_from_bounce_routes_and_the_command_line_and_mx_is_checked() {
    let r = check_dns(
        &[
            GOOD_SPF,
            "--txt-record=nomx.test,v=spf1 ip4:127.0.0.2 -all",
            "--txt-record=billing.test,v=spf1 ip4:127.0.0.2 -all",
            "--host-record=billing.test,127.0.0.7",
        ],
        "[[route]]\ndomains = [\"*\"]\nsenders = [\"pay@billing.test\"]\ntarget = \"remote\"\n",
        &["--address", "127.0.0.2", "--domain", "nomx.test"],
    );
    r.assert_code(0);
    r.line("ok       SPF billing.test (127.0.0.2): permits it");
    r.line("ok       SPF nomx.test (127.0.0.2): permits it");
    r.line(
        "ok       MX billing.test: no MX record; bounces go to its address record (implicit MX)",
    );
    r.line("warning  MX nomx.test: no MX and no address record");
}

#[test]
fn dns_that_does_not_answer_exits_75() {
    // A server that never answers: held here, so that no other test's
    // dnsmasq takes its port meanwhile.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let r = run_check(
        &format!("dns_servers = [\"127.0.0.1:{port}\"]\ndns_timeout = \"100ms\""),
        "",
        &["--address", "127.0.0.2"],
    );
    r.assert_code(75);
    r.line("unknown  reverse DNS 127.0.0.2: could not check:");
    r.line("unknown  SPF d.test (127.0.0.2): could not check:");
}

#[test]
fn dns_options_need_dns_and_bad_domains_are_usage_errors() {
    let out = Command::new(binary())
        .args(["check", "--address", "127.0.0.2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dns"));
    let out = Command::new(binary())
        .args(["check", "--dns", "--domain", "a..b"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("a..b"));
}

/// `mailqueue dkim keygen` for `domain` selector s1 into `file`: the
/// record as dnsmasq serves it (`--txt-record=NAME,STRING,...`).
fn keygen_record(domain: &str, file: &std::path::Path) -> String {
    let out = Command::new(binary())
        .args([
            "dkim",
            "keygen",
            "--ed25519",
            "--selector",
            "s1",
            "--domain",
            domain,
        ])
        .arg("--out")
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains(" IN TXT "))
        .expect("a TXT line");
    let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
    format!("--txt-record=s1._domainkey.{domain},{}", strings.join(","))
}

#[test]
fn each_dkim_key_record_is_compared_with_the_key() {
    let keys = tempfile::tempdir().unwrap();
    let (good, other, stranger) = (
        keys.path().join("good.pem"),
        keys.path().join("other.pem"),
        keys.path().join("stranger.pem"),
    );
    let good_record = keygen_record("d.test", &good);
    keygen_record("other.d.test", &other);
    // other.d.test publishes a key, but not the one it signs with.
    let stranger_record = keygen_record("other.d.test", &stranger);
    let dkim = |domain: &str, file: &std::path::Path| {
        format!(
            "[[dkim]]\ndomain = \"{domain}\"\nselector = \"s1\"\nkey_file = {:?}\n",
            file.display().to_string()
        )
    };
    let r = check_dns(
        &[GOOD_SPF, &good_record, &stranger_record],
        &format!("{}{}", dkim("d.test", &good), dkim("other.d.test", &other)),
        &["--address", "127.0.0.2"],
    );
    r.assert_code(1);
    r.line("ok       DKIM d.test selector s1: key record at s1._domainkey.d.test holds this key");
    let line = r.line("PROBLEM  DKIM other.d.test selector s1: record at s1._domainkey.other.d.test: published with a different key");
    assert!(
        line.contains("fix: publish at s1._domainkey.other.d.test"),
        "{line}"
    );
    assert!(!r.out.contains("no keys configured"), "{}", r.out);
}
