//! The `mailqueue` command: the daemon and the tools around it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailqueue::Config;

/// sysexits EX_CONFIG.
const EX_CONFIG: u8 = 78;
/// sysexits EX_SOFTWARE: the daemon could not run.
const EX_SOFTWARE: u8 = 70;

#[derive(Parser)]
#[command(
    name = "mailqueue",
    version,
    about = "A durable, synchronous mail queue"
)]
struct Cli {
    /// Configuration file (default: $MAILQUEUE_CONFIG, else /etc/mailqueue.toml if present, else built-in defaults).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Spool directory, overriding the configuration.
    #[arg(long, global = true, value_name = "DIR")]
    spool: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground.
    Serve,
    /// Validate the configuration and exit.
    Check,
}

/// Finds and loads the configuration; `None` for the path means built-in defaults.
fn load_config(cli: &Cli) -> Result<(Config, Option<PathBuf>), String> {
    let path = cli
        .config
        .clone()
        .or_else(|| std::env::var_os("MAILQUEUE_CONFIG").map(PathBuf::from))
        .or_else(|| Some(PathBuf::from("/etc/mailqueue.toml")).filter(|p| p.exists()));
    let mut config = match &path {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(spool) = &cli.spool {
        config.spool = spool.clone();
    }
    Ok((config, path))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let (config, path) = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mailqueue: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let source = path
        .as_deref()
        .map(Path::display)
        .map(|d| d.to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    match cli.command {
        Cmd::Check => {
            // Also load what the daemon would load: passwords, certificates.
            let checked = mailqueue::daemon::targets(&config)
                .and_then(|_| mailqueue::daemon::server_settings(&config));
            match checked {
                Ok(_) => {
                    println!("{source}: ok");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mailqueue: {source}: {e}");
                    ExitCode::from(EX_CONFIG)
                }
            }
        }
        Cmd::Serve => match mailqueue::daemon::serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mailqueue: {e}");
                ExitCode::from(EX_SOFTWARE)
            }
        },
    }
}
