//! The `mailqueue` command: the daemon and the tools around it. Invoked
//! through a link named `sendmail` it is the sendmail command; through a
//! link named `mailq`, it lists the queue.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use mailqueue::Config;

mod cli;

use cli::args::{Cli, Cmd, DkimCmd};
use cli::commands::{self, Format};
use cli::control::Request;
use cli::exit;
use cli::sendmail::{self, Mode};

/// Finds and loads the configuration; `None` for the path means built-in defaults.
fn load_config(
    config: Option<PathBuf>,
    spool: Option<PathBuf>,
) -> Result<(Config, Option<PathBuf>), String> {
    let path = config
        .or_else(|| std::env::var_os("MAILQUEUE_CONFIG").map(PathBuf::from))
        .or_else(|| Some(PathBuf::from("/etc/mailqueue.toml")).filter(|p| p.exists()));
    let mut config = match &path {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(spool) = spool {
        config.spool = spool;
    }
    Ok((config, path))
}

/// The configuration a set-group-id sendmail uses: only the system-wide
/// file (or the defaults), since the caller chooses `--config`, `--spool`
/// and `$MAILQUEUE_CONFIG`. Its errors do not quote the file: with the
/// privilege, a caller must learn nothing of a file they cannot read.
fn load_system_config() -> Result<Config, String> {
    let path = Path::new(SYSTEM_CONFIG);
    if !path.exists() {
        return Ok(Config::default());
    }
    Config::load(path).map_err(|_| {
        format!("{SYSTEM_CONFIG} cannot be loaded; `mailqueue check` run by its owner says why")
    })
}

const SYSTEM_CONFIG: &str = "/etc/mailqueue.toml";

/// Gives up a set-group-id privilege, for every command but sendmail's
/// submission: listing, flushing and the daemon must run with the
/// caller's own rights.
fn unprivileged() -> Result<(), ExitCode> {
    if !mailqueue::sys::is_privileged() {
        return Ok(());
    }
    mailqueue::sys::drop_privileges().map_err(|e| {
        eprintln!("mailqueue: cannot drop the set-group-id privilege: {e}");
        ExitCode::from(exit::SOFTWARE)
    })
}

/// The daemon's log: the level from `RUST_LOG` (default `info`), the
/// shape from `[log] format`.
fn init_logs(log: &mailqueue::config::LogConfig) {
    // RUST_LOG, when set, rules (with its module filters); else the
    // config's level, which a reload may change (see `apply_log_level`).
    let from_env = std::env::var("RUST_LOG").is_ok_and(|v| !v.is_empty());
    let mut builder = if from_env {
        env_logger::Builder::from_env(env_logger::Env::default())
    } else {
        let mut b = env_logger::Builder::new();
        b.filter_level(log::LevelFilter::Trace);
        b
    };
    if log.format == mailqueue::config::LogFormat::Journald {
        builder.format(|buf, record| {
            let text =
                mailqueue::config::LogFormat::journald(record.level(), &record.args().to_string());
            std::io::Write::write_all(buf, text.as_bytes())
        });
    }
    builder.init();
    cli::daemon::apply_log_level(log.level);
}

/// sendmail's log lines (warnings only, unless `RUST_LOG` says more) go
/// to standard error. Run set-group-id, it takes no level from the
/// caller's environment.
fn init_sendmail_logs() {
    if mailqueue::sys::is_privileged() {
        env_logger::Builder::new()
            .filter_level(log::LevelFilter::Warn)
            .init();
    } else {
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let program = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("mailqueue");
    // Old programs run `sendmail` and `mailq` with options clap knows
    // nothing of (-oi, -fsender): parse those by hand.
    match program {
        "sendmail" => run_sendmail(None, None, &args[1..]),
        // There are no aliases to rebuild: succeed, as programs expect.
        "newaliases" => ExitCode::SUCCESS,
        "mailq" => run_mailq(),
        _ => run(Cli::parse()),
    }
}

/// `mailq`: the queue's list.
fn run_mailq() -> ExitCode {
    if let Err(code) = unprivileged() {
        return code;
    }
    match load_config(None, None) {
        Ok((config, _)) => {
            ExitCode::from(commands::run(&config, Request::list_all(), Format::Text))
        }
        Err(e) => {
            eprintln!("mailq: {e}");
            ExitCode::from(exit::CONFIG)
        }
    }
}

/// `mailqueue COMMAND`.
fn run(cli: Cli) -> ExitCode {
    if let Cmd::Sendmail { args } = &cli.command {
        return run_sendmail(cli.config.clone(), cli.spool.clone(), args);
    }
    if let Err(code) = unprivileged() {
        return code;
    }
    // A new key needs no configuration (there may be none yet).
    if let Cmd::Dkim(DkimCmd::Keygen {
        domain,
        selector,
        ed25519,
        bits,
        out,
    }) = cli.command
    {
        let k = cli::dkim::Keygen {
            domain,
            selector,
            ed25519,
            bits,
            out,
        };
        return ExitCode::from(cli::dkim::keygen(&k));
    }
    let sources = ConfigSources {
        config: cli.config.clone(),
        spool: cli.spool.clone(),
    };
    let (config, path) = match load_config(cli.config, cli.spool) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mailqueue: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    run_configured(cli.command, config, path.as_deref(), sources)
}

/// Where the configuration came from on the command line, kept so that
/// the daemon's SIGHUP reads it again from the same place.
struct ConfigSources {
    config: Option<PathBuf>,
    spool: Option<PathBuf>,
}

/// A command that needs the configuration (all but sendmail and
/// `dkim keygen`), once it is loaded.
fn run_configured(
    command: Cmd,
    config: Config,
    path: Option<&Path>,
    sources: ConfigSources,
) -> ExitCode {
    match command.into_request() {
        Ok(Ok((request, format))) => ExitCode::from(commands::run(&config, request, format)),
        Ok(Err(Cmd::Check {
            dns,
            address,
            domain,
        })) => {
            let dns = dns.then_some(cli::dns_check::Options {
                addresses: address,
                domains: domain,
            });
            check(&config, path, dns.as_ref())
        }
        Ok(Err(Cmd::Routes { test, from })) => {
            ExitCode::from(cli::routes::run(&config, test.as_deref(), from.as_deref()))
        }
        Ok(Err(Cmd::Sts { domain })) => ExitCode::from(cli::sts::run(&config, &domain)),
        Ok(Err(Cmd::Dkim(DkimCmd::Check))) => ExitCode::from(cli::dkim::check(&config)),
        Ok(Err(Cmd::Health { corrupt_within })) => {
            ExitCode::from(cli::health::run(&config, corrupt_within))
        }
        Ok(Err(Cmd::Serve)) => serve(config, sources),
        Ok(Err(_)) => unreachable!("sendmail and dkim keygen are handled above"),
        Err(e) => {
            eprintln!("mailqueue: {e}");
            ExitCode::from(exit::USAGE)
        }
    }
}

/// `mailqueue serve`: the daemon, until it is told to stop.
fn serve(config: Config, sources: ConfigSources) -> ExitCode {
    init_logs(&config.log);
    // SIGHUP reads the configuration again, from the same place.
    let reload =
        || load_config(sources.config.clone(), sources.spool.clone()).map(|(config, _)| config);
    match cli::daemon::serve(config, reload) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailqueue: {e}");
            ExitCode::from(exit::SOFTWARE)
        }
    }
}

/// `mailqueue check`: the configuration, what the daemon would load with
/// it (passwords, certificates), and what it would need of the system
/// (a writable spool, free listening addresses), as the user running it;
/// with `--dns`, then the DNS report (its exit code when all else passed).
fn check(config: &Config, path: Option<&Path>, dns: Option<&cli::dns_check::Options>) -> ExitCode {
    let source = path
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    let checked = cli::daemon::targets(config)
        .and_then(|_| cli::daemon::server_settings(config))
        .and_then(|_| config.dkim_signer().map(|_| ()).map_err(|e| e.to_string()));
    for w in config.warnings() {
        eprintln!("mailqueue: {source}: warning: {w}");
    }
    if let Err(e) = checked {
        eprintln!("mailqueue: {source}: {e}");
        return ExitCode::from(exit::CONFIG);
    }
    let mut code = exit::OK;
    let spool = cli::check::spool(&config.spool).map_err(|e| (e, exit::CANTCREAT));
    let listen = cli::check::listen(&config.listen.smtp, &config.spool)
        .into_iter()
        .map(|r| r.map_err(|e| (e, exit::UNAVAILABLE)));
    for result in std::iter::once(spool).chain(listen) {
        match result {
            Ok(line) => println!("{line}"),
            Err((e, failed)) => {
                eprintln!("mailqueue: {e}");
                if code == exit::OK {
                    code = failed;
                }
            }
        }
    }
    if code == exit::OK {
        println!("{source}: ok");
    }
    if let Some(options) = dns {
        let dns_code = cli::dns_check::run(config, options);
        if code == exit::OK {
            code = dns_code;
        }
    }
    ExitCode::from(code)
}

/// The configuration sendmail reads: a set-group-id run ignores the
/// caller's `--config` and `MAILQUEUE_CONFIG` (the system file only), so
/// a local user cannot point it at another spool.
fn sendmail_config(config: Option<PathBuf>, spool: Option<PathBuf>) -> Result<Config, String> {
    if mailqueue::sys::is_privileged() {
        load_system_config()
    } else {
        load_config(config, spool).map(|(c, _)| c)
    }
}

fn run_sendmail(config: Option<PathBuf>, spool: Option<PathBuf>, args: &[String]) -> ExitCode {
    let opts = match sendmail::parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sendmail: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    match opts.mode {
        Mode::Help => {
            print!("{}", sendmail::USAGE);
            return ExitCode::from(exit::OK);
        }
        Mode::Nothing => return ExitCode::from(exit::OK),
        // Submissions keep a set-group-id privilege; nothing else does.
        Mode::Send | Mode::Smtp => {}
        Mode::List | Mode::Flush => {
            if let Err(code) = unprivileged() {
                return code;
            }
        }
    }
    let config = match sendmail_config(config, spool) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sendmail: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    match opts.mode {
        Mode::List => {
            return ExitCode::from(commands::run(&config, Request::list_all(), Format::Text))
        }
        Mode::Flush => {
            let flush = Request::flush_all();
            return ExitCode::from(commands::run(&config, flush, Format::Text));
        }
        Mode::Send | Mode::Smtp | Mode::Nothing | Mode::Help => {}
    }
    init_sendmail_logs();
    let stdin = std::io::stdin();
    let mut input: Box<dyn BufRead> = Box::new(stdin.lock());
    if opts.mode == Mode::Smtp {
        let stdout = std::io::stdout();
        return ExitCode::from(sendmail::smtp_session(
            &config,
            &opts,
            &mut input,
            &mut stdout.lock(),
        ));
    }
    match sendmail::submit(&config, &opts, &mut input) {
        Ok(_) => ExitCode::from(exit::OK),
        Err(f) => {
            eprintln!("sendmail: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
