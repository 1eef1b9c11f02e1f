use super::*;

fn err_of(toml: &str) -> String {
    Config::from_toml(toml).unwrap_err().to_string()
}

#[test]
fn built_in_defaults_match_the_design() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(c.queue.workers, 16);
    assert_eq!(c.queue.max_tries, 20);
    assert_eq!(c.queue.initial_retry, Duration::from_secs(900));
    assert_eq!(c.queue.retry_scale, 1.25);
    assert_eq!(c.queue.max_retry_interval, Duration::from_secs(8 * 3600));
    assert_eq!(c.queue.max_lifetime, Duration::from_secs(5 * 86400));
    assert_eq!(c.queue.delay_warning, Duration::from_secs(4 * 3600));
    assert_eq!(c.queue.max_messages, 100_000);
    assert_eq!(c.queue.max_bytes, 10_737_418_240);
    assert_eq!(c.queue.min_free_bytes, 104_857_600);
    assert_eq!(c.listen.smtp, vec!["127.0.0.1:2525".to_string()]);
    assert_eq!(c.listen.relay_networks.len(), 2);
    assert_eq!(c.listen.max_message_size, 33_554_432);
    assert_eq!(c.listen.max_recipients, 1000);
    assert_eq!(c.listen.max_connections, 64);
    assert_eq!(c.delivery.target, TargetSpec::Remote);
    assert_eq!(c.delivery.tls, TlsPolicy::May);
    assert_eq!(c.delivery.mx_port, 25);
    assert_eq!(c.delivery.connect_timeout, Duration::from_secs(30));
    assert_eq!(c.delivery.command_timeout, Duration::from_secs(300));
    assert_eq!(c.delivery.data_timeout, Duration::from_secs(600));
    assert!(c.bounce.enabled);
    assert_eq!(c.bounce_from(), format!("MAILER-DAEMON@{}", c.hostname));
    assert_eq!(c.bounce.target, None);
    assert_eq!(c.spool, PathBuf::from("/var/spool/mailqueue"));
}

#[test]
fn every_key_of_the_design_parses() {
    let c = Config::from_toml(
        r#"
hostname = "mx.example.org"
spool = "/tmp/spool"
[queue]
workers = 3
max_tries = 5
initial_retry = "1m"
retry_scale = 2.0
max_retry_interval = "2h"
max_lifetime = "1d"
delay_warning = "0s"
max_messages = 10
max_bytes = 1000
min_free_bytes = 0
[listen]
smtp = []
relay_networks = ["10.0.0.0/8"]
max_message_size = 1000
max_recipients = 5
max_connections = 2
tls_cert = "/c.pem"
tls_key = "/k.pem"
[delivery]
target = "lmtp+unix:///run/lmtp.sock"
tls = "verify"
ca_file = "/ca.pem"
username = "u"
password_file = "/p"
mx_port = 2525
dns_servers = ["127.0.0.1:53"]
connect_timeout = "5s"
command_timeout = "1m"
data_timeout = "2m"
[bounce]
enabled = false
from = "postmaster@example.org"
target = "smtp://127.0.0.1:25"
"#,
    )
    .unwrap();
    assert_eq!(c.hostname, "mx.example.org");
    assert_eq!(c.queue.delay_warning, Duration::ZERO);
    assert_eq!(
        c.delivery.target,
        TargetSpec::LmtpUnix {
            path: "/run/lmtp.sock".into()
        }
    );
    assert_eq!(c.delivery.tls, TlsPolicy::Verify);
    assert_eq!(c.bounce_from(), "postmaster@example.org");
    assert_eq!(
        c.bounce.target,
        Some(TargetSpec::Smtp {
            host: "127.0.0.1".into(),
            port: 25
        })
    );
}

#[test]
fn bad_values_name_the_key_and_the_value() {
    // Each file, and what its error must mention.
    for (toml, named) in [
        ("[queue]\nworkers = 0\n", &["queue.workers", "0"][..]),
        (
            "[queue]\nretry_scale = 0.5\n",
            &["queue.retry_scale", "0.5"],
        ),
        (
            "[queue]\ninitial_retry = \"soon\"\n",
            &["initial_retry", "soon"],
        ),
        ("[queue]\nworkerz = 4\n", &["workerz"]),
        ("bogus = 1\n", &["bogus"]),
        ("[delivery]\ntarget = \"ftp://x:1\"\n", &["ftp://x:1"]),
        ("[delivery]\ntls = \"maybe\"\n", &["maybe"]),
        (
            "[listen]\nsmtp = [\"localhost\"]\n",
            &["listen.smtp", "localhost"],
        ),
        (
            "[listen]\nrelay_networks = [\"10.0.0.0/33\"]\n",
            &["10.0.0.0/33"],
        ),
        (
            "[queue]\ninitial_retry = \"0s\"\n",
            &["queue.initial_retry"],
        ),
        ("[bounce]\nfrom = \"not an address\"\n", &["bounce.from"]),
    ] {
        let e = err_of(toml);
        for name in named {
            assert!(e.contains(name), "{toml:?}: {e}");
        }
    }
}

#[test]
fn durations_parse_with_units() {
    assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
    assert_eq!(parse_duration("5d").unwrap(), Duration::from_secs(432_000));
    assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    for bad in ["", "s", "10", "10 s", "10x", "-1s", "1e3s", "1..2s"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

/// Messages name durations as the file writes them, so what they print
/// reads back as the same value (`format_duration` is re-exported here).
#[test]
fn formatted_durations_parse_back() {
    for d in [
        Duration::ZERO,
        Duration::from_millis(250),
        Duration::from_secs(90),
        Duration::from_secs(5 * 86400),
    ] {
        assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
    }
}

#[test]
fn targets_round_trip() {
    // A good target prints as it was written; a bad one does not parse.
    for (text, good) in [
        ("remote", true),
        ("smtp://mail.example.org:25", true),
        ("smtps://[::1]:465", true),
        ("lmtp://127.0.0.1:24", true),
        ("lmtp+unix:///run/l.sock", true),
        ("smtp://host", false),
        ("smtp://:25", false),
        ("smtp://h:0", false),
        ("lmtp+unix://rel", false),
        ("smtp://a:b:25", false),
    ] {
        let parsed = text.parse::<TargetSpec>().map(|t| t.to_string());
        assert_eq!(parsed.as_deref().ok(), good.then_some(text), "{text}");
    }
}

/// The errors of the parts keep the text they had as strings.
#[test]
fn duration_and_target_errors_say_what_they_did() {
    assert_eq!(
        parse_duration("soon").unwrap_err().to_string(),
        "invalid duration \"soon\": expected a number followed by ms, s, m, h or d, \
         like \"90s\" or \"5d\""
    );
    assert_eq!(
        "ftp://x:1".parse::<TargetSpec>().unwrap_err().to_string(),
        "invalid target \"ftp://x:1\": unknown scheme; expected \"remote\", \
         \"smtp://host:port\", \"smtps://host:port\", \"lmtp://host:port\" or \
         \"lmtp+unix:///path\""
    );
}

mod shipped_file {
    use super::*;

    /// conf/mailqueue.toml documents the defaults: it must parse and agree.
    #[test]
    fn the_example_file_parses_and_states_the_defaults() {
        let text = include_str!("../../conf/mailqueue.toml");
        let c = Config::from_toml(text).unwrap();
        let d = Config::default();
        assert_eq!(c.queue.workers, d.queue.workers);
        assert_eq!(c.queue.initial_retry, d.queue.initial_retry);
        assert_eq!(c.queue.max_lifetime, d.queue.max_lifetime);
        assert_eq!(c.queue.max_bytes, d.queue.max_bytes);
        assert_eq!(c.listen.smtp, d.listen.smtp);
        assert_eq!(c.listen.relay_networks, d.listen.relay_networks);
        assert_eq!(c.listen.command_timeout, d.listen.command_timeout);
        assert_eq!(c.delivery.target, d.delivery.target);
        assert_eq!(c.delivery.data_timeout, d.delivery.data_timeout);
        assert_eq!(c.delivery.source_address, d.delivery.source_address);
        assert_eq!(c.delivery.ip_version, d.delivery.ip_version);
        assert_eq!(
            c.delivery.messages_per_connection,
            d.delivery.messages_per_connection
        );
        assert_eq!(c.bounce.target, d.bounce.target);
        assert_eq!(c.delivery.mta_sts, d.delivery.mta_sts);
        assert_eq!(c.delivery.mta_sts_port, d.delivery.mta_sts_port);
        assert!(c.routes.is_empty());
    }

    /// Each commented `[[route]]` example of the file, uncommented, is a
    /// valid configuration of the route it says.
    #[test]
    fn the_route_examples_parse_as_documented() {
        let text = include_str!("../../conf/mailqueue.toml");
        // An example runs from its `#[[route]]` line to the first line
        // that is not a commented key (prose or the end of the block).
        let mut examples: Vec<String> = Vec::new();
        let mut open = false;
        for line in text.lines() {
            if line == "#[[route]]" {
                examples.push(String::new());
                open = true;
            }
            let key = line
                .strip_prefix('#')
                .filter(|l| !l.is_empty() && !l.starts_with(' '));
            match (open, key, examples.last_mut()) {
                (true, Some(l), Some(e)) => {
                    e.push_str(l);
                    e.push('\n');
                }
                _ => open = false,
            }
        }
        let examples: Vec<&str> = examples.iter().map(|e| e.trim()).collect();
        assert_eq!(examples.len(), 3, "{examples:#?}");
        let spool = std::env::temp_dir();
        let parsed: Vec<Config> = examples
            .iter()
            .map(|e| {
                // A password file of the daemon's own, mode 0600, is not
                // needed to parse: only to build the target.
                Config::from_toml(&format!("spool = {:?}\n{e}", spool.display()))
                    .unwrap_or_else(|err| panic!("{e}\n{err}"))
            })
            .collect();
        assert_eq!(parsed[0].routes[0].target.0.len(), 1);
        assert_eq!(parsed[1].routes[0].target.0.len(), 2);
        assert!(parsed[2].routes[0].fallback.is_some());
    }
}

#[test]
fn metrics_listen_is_off_by_default_and_must_be_an_address() {
    assert_eq!(Config::default().metrics.listen, "");
    let c = Config::from_toml("[metrics]\nlisten = \"127.0.0.1:9925\"\n").unwrap();
    assert_eq!(c.metrics.listen, "127.0.0.1:9925");
    let e = Config::from_toml("[metrics]\nlisten = \"localhost\"\n").unwrap_err();
    assert!(e.to_string().contains("metrics.listen"), "{e}");
}

#[test]
fn a_target_named_on_its_own_gets_its_routes_settings_and_no_stray_password() {
    let c = Config::from_toml(
        "[delivery]\ntarget = \"smtp://smart.example:587\"\ntls = \"verify\"\n\
         username = \"u\"\npassword_file = \"/etc/mailqueue/pw\"\n\
         [[route]]\ndomains = [\"example.net\"]\ntarget = \"smtp://relay.example:25\"\n\
         tls = \"none\"\nhelo_name = \"out.example.org\"\n",
    )
    .unwrap();
    let smart: TargetSpec = "smtp://smart.example:587".parse().unwrap();
    assert_eq!(c.config_for_target(&smart).delivery.username, "u");
    let relay: TargetSpec = "smtp://relay.example:25".parse().unwrap();
    let r = c.config_for_target(&relay);
    assert_eq!(r.delivery.tls, TlsPolicy::None);
    assert_eq!(r.hostname, "out.example.org");
    assert!(r.delivery.username.is_empty());
    let other: TargetSpec = "smtp://typo.example:587".parse().unwrap();
    let o = c.config_for_target(&other);
    assert!(o.delivery.username.is_empty() && o.delivery.password_file.as_os_str().is_empty());
    assert_eq!(o.delivery.tls, TlsPolicy::Verify);
}
