//! smtp::command::parse: a parsed command, written back in canonical form,
//! parses to the same command; parameter keys are upper case tokens and
//! values have no white space; every refusal is a one-line 5xx reply that
//! reads back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailqueue::smtp::command::{parse, Command};
use mailqueue::SmtpReply;

fn params(out: &mut String, params: &[(String, Option<String>)]) {
    for (k, v) in params {
        out.push(' ');
        out.push_str(k);
        if let Some(v) = v {
            out.push('=');
            out.push_str(v);
        }
    }
}

fn render(c: &Command) -> String {
    match c {
        Command::Helo(h) => format!("HELO {h}"),
        Command::Ehlo(h) => format!("EHLO {h}"),
        Command::Mail(s, p) => {
            let mut out = format!(
                "MAIL FROM:<{}>",
                s.as_ref().map(|a| a.as_str()).unwrap_or("")
            );
            params(&mut out, p);
            out
        }
        Command::Rcpt(a, p) => {
            let mut out = format!("RCPT TO:<{a}>");
            params(&mut out, p);
            out
        }
        Command::Data => "DATA".into(),
        Command::Rset => "RSET".into(),
        Command::Noop => "NOOP".into(),
        Command::Quit => "QUIT".into(),
        Command::Vrfy => "VRFY".into(),
        Command::Help => "HELP".into(),
        Command::StartTls => "STARTTLS".into(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match parse(line) {
        Ok(cmd) => {
            match &cmd {
                Command::Helo(h) | Command::Ehlo(h) => {
                    assert!(!h.is_empty() && !h.contains(' ') && h.trim() == h, "{h:?}");
                }
                Command::Mail(_, p) | Command::Rcpt(_, p) => {
                    for (k, v) in p {
                        assert!(!k.is_empty(), "{line:?}");
                        assert!(
                            k.bytes()
                                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-'),
                            "{k:?}"
                        );
                        if let Some(v) = v {
                            assert!(!v.contains(|c: char| c.is_ascii_whitespace()), "{v:?}");
                        }
                    }
                }
                _ => {}
            }
            let again = render(&cmd);
            assert_eq!(parse(&again), Ok(cmd), "{line:?} -> {again:?}");
        }
        Err(reply) => {
            assert!(
                matches!(reply.code, 500 | 501 | 553 | 555),
                "{line:?}: {reply}"
            );
            assert_eq!(reply.enhanced.map(|e| e.class), Some(5), "{reply}");
            let shown = reply.to_string();
            assert!(!shown.contains(['\r', '\n', '\0']), "{shown:?}");
            assert_eq!(SmtpReply::parse_line(&shown), Some(reply), "{shown:?}");
        }
    }
});
