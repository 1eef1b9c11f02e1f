//! sendmail's command line, parsed by hand: old programs pass options
//! (`-oi`, `-fsender`, `-F name`) that no argument parser knows.
//!
//! Depends on std alone, so that the fuzz target can build it on its own.

/// What the command line asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `-t`: recipients from To, Cc and Bcc (Bcc is then removed).
    pub extract: bool,
    /// `-i`/`-oi`: a line with a lone dot does not end the message.
    pub ignore_dots: bool,
    /// `-f`/`-r`: the envelope sender.
    pub sender: Option<String>,
    /// `-F`: the sender's full name, for a From: line we add.
    pub full_name: Option<String>,
    /// `-N`: RFC 3461 NOTIFY for every recipient (`never`, or a list of
    /// `success`, `failure`, `delay`).
    pub notify: Option<String>,
    /// `-R`: RFC 3461 RET (`full` or `hdrs`).
    pub ret: Option<String>,
    /// `-V`: RFC 3461 ENVID.
    pub envid: Option<String>,
    /// The recipients named as arguments.
    pub recipients: Vec<String>,
    /// What to do.
    pub mode: Mode,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Send,
    /// `-bp`: list the queue.
    List,
    /// `-q`: flush the queue.
    Flush,
    /// `-bs`: an SMTP session on standard input and output.
    Smtp,
    /// `-bi` (and `newaliases`): rebuild the aliases, which we do not
    /// have: succeed without doing anything, as programs expect.
    Nothing,
    /// `-h`/`--help`: the usage.
    Help,
}

/// What `sendmail --help` prints.
pub const USAGE: &str = "\
usage: sendmail [options] [recipient ...] < message
  -t          take recipients from To, Cc and Bcc (Bcc is removed)
  -i, -oi     a line with a lone dot does not end the message
  -f ADDR     envelope sender (also -r); -f '<>' for the null sender
  -F NAME     full name for the From: line added when there is none
  -N DSN      notify: never, or success,failure,delay
  -R RET      return full or hdrs of the message in a failure notice
  -V ENVID    envelope id for delivery status notices
  -bm         read a message and queue it (the default)
  -bs         speak SMTP on standard input and output
  -bp         list the queue (as mailq)
  -q          flush the queue
  -bi         rebuild aliases: nothing to do, succeeds
";

/// Parses sendmail's command line (without the program name).
pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut i = 0;
    let value = |i: &mut usize, inline: &str, flag: &str| -> Result<String, String> {
        if !inline.is_empty() {
            return Ok(inline.to_string());
        }
        *i += 1;
        args.get(*i)
            .map(|a| a.as_ref().to_string())
            .ok_or_else(|| format!("option {flag} needs a value"))
    };
    while i < args.len() {
        let a = args[i].as_ref();
        if a == "--" {
            o.recipients
                .extend(args[i + 1..].iter().map(|a| a.as_ref().to_string()));
            break;
        }
        if !a.starts_with('-') || a == "-" {
            o.recipients.push(a.to_string());
            i += 1;
            continue;
        }
        match a {
            "-t" => o.extract = true,
            "-i" | "-oi" => o.ignore_dots = true,
            "-bp" => o.mode = Mode::List,
            "-bm" => o.mode = Mode::Send,
            "-bs" => o.mode = Mode::Smtp,
            "-bi" => o.mode = Mode::Nothing,
            "-h" | "--help" => o.mode = Mode::Help,
            "-v" | "-n" | "-U" | "-m" | "-om" | "-oem" | "-oee" | "-oep" | "-oeq" | "-oew" => {}
            _ if a.starts_with("-q") => o.mode = Mode::Flush,
            _ if a.starts_with("-f") || a.starts_with("-r") => {
                o.sender = Some(value(&mut i, &a[2..], "-f")?)
            }
            _ if a.starts_with("-F") => o.full_name = Some(value(&mut i, &a[2..], "-F")?),
            _ if a.starts_with("-N") => o.notify = Some(value(&mut i, &a[2..], "-N")?),
            _ if a.starts_with("-R") => o.ret = Some(value(&mut i, &a[2..], "-R")?),
            _ if a.starts_with("-V") => o.envid = Some(value(&mut i, &a[2..], "-V")?),
            // Options with a value that sendmail accepts and we ignore.
            _ if a.starts_with("-B") || a.starts_with("-X") => {
                if a.len() == 2 {
                    value(&mut i, "", a)?;
                }
            }
            // Other -o options (-oX value, -oXvalue) are ignored, as sendmail does.
            _ if a.starts_with("-o") => {}
            _ if a.starts_with("-b") => return Err(format!("mode {a} is not supported")),
            _ => return Err(format!("unknown option {a}")),
        }
        i += 1;
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::{parse_args, Mode};
    use proptest::prelude::*;

    #[test]
    fn a_typical_command_line() {
        let o =
            parse_args(&["-t", "-oi", "-fme@example.org", "-F", "Me", "a@example.org"]).unwrap();
        assert!(o.extract && o.ignore_dots);
        assert_eq!(o.sender.as_deref(), Some("me@example.org"));
        assert_eq!(o.full_name.as_deref(), Some("Me"));
        assert_eq!(o.recipients, vec!["a@example.org"]);
        assert_eq!(parse_args(&["-bp"]).unwrap().mode, Mode::List);
    }

    #[test]
    fn dsn_options_modes_and_help() {
        let o = parse_args(&[
            "-N",
            "success,failure",
            "-Rhdrs",
            "-V",
            "id-1",
            "a@example.org",
        ])
        .unwrap();
        assert_eq!(o.notify.as_deref(), Some("success,failure"));
        assert_eq!(o.ret.as_deref(), Some("hdrs"));
        assert_eq!(o.envid.as_deref(), Some("id-1"));
        assert_eq!(o.recipients, vec!["a@example.org"]);
        assert_eq!(parse_args(&["-bs"]).unwrap().mode, Mode::Smtp);
        assert_eq!(parse_args(&["-bi"]).unwrap().mode, Mode::Nothing);
        assert_eq!(parse_args(&["--help"]).unwrap().mode, Mode::Help);
        assert_eq!(parse_args(&["-h"]).unwrap().mode, Mode::Help);
    }

    proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        #[test]
        fn sendmail_arguments_never_panic(
            args in prop::collection::vec(prop_oneof![
                any::<String>(),
                "-(t|i|oi|f|r|F|bp|bm|q|N|R|V|B|X|o[a-z]|v)[a-z@.]{0,6}",
                "[a-z]{1,5}@[a-z]{1,5}\\.org",
                Just("--".to_string()),
                Just("-".to_string()),
            ], 0..6)
        ) {
            if let Ok(o) = parse_args(&args) {
                for r in &o.recipients {
                    prop_assert!(args.contains(r), "{:?} not among {:?}", r, args);
                }
                if let Some(s) = &o.sender {
                    prop_assert!(args.iter().any(|a| a.ends_with(s.as_str())));
                }
            }
        }
    }
}
