//! The `mailqueue` command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use super::commands::{parse_ids, Format};
use super::control::Request;

#[derive(Parser)]
#[command(
    name = "mailqueue",
    version,
    about = "A durable, synchronous mail queue"
)]
pub struct Cli {
    /// Configuration file (default: $MAILQUEUE_CONFIG, else /etc/mailqueue.toml if present, else built-in defaults).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Spool directory, overriding the configuration.
    #[arg(long, global = true, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the daemon in the foreground.
    Serve,
    /// Read a message on standard input and queue it (sendmail options).
    #[command(disable_help_flag = true)]
    Sendmail {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List the queue.
    List {
        /// One JSON object per message per line.
        #[arg(long)]
        json: bool,
    },
    /// Show a message's envelope, per-recipient state and header.
    Show { id: String },
    /// Retry now: the given messages, or all.
    Flush { ids: Vec<String> },
    /// Stop delivering messages until released.
    Hold {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Resume delivering held messages.
    Release {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Remove messages without telling their senders.
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Give messages up now, telling their senders.
    Expire {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Show the running daemon's counters: queue size, attempts,
    /// scheduling lag.
    Stats {
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and exit.
    Check,
    /// Check the daemon, the spool and the quarantine for monitoring:
    /// one line per check; exit 0 OK, 1 WARNING, 2 CRITICAL.
    Health {
        /// Warn about files quarantined in `<spool>/corrupt/` this recently.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
        corrupt_within: Duration,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    mailqueue::config::parse_duration(s).map_err(|e| e.to_string())
}

impl Cmd {
    /// An operator command as the request the daemon (or the spool)
    /// carries out, with how to print the answer; the other commands
    /// (serve, sendmail, check) as they are. Bad message ids are an error.
    pub fn into_request(self) -> Result<Result<(Request, Format), Cmd>, String> {
        let format = |json| if json { Format::Json } else { Format::Text };
        Ok(Ok(match self {
            Cmd::List { json } => (Request::List, format(json)),
            Cmd::Show { id } => {
                let id = parse_ids(&[id])?.remove(0);
                (Request::Show { id }, Format::Text)
            }
            Cmd::Flush { ids } => (
                Request::Flush {
                    ids: parse_ids(&ids)?,
                },
                Format::Text,
            ),
            Cmd::Hold { ids } => (
                Request::Hold {
                    ids: parse_ids(&ids)?,
                },
                Format::Text,
            ),
            Cmd::Release { ids } => (
                Request::Release {
                    ids: parse_ids(&ids)?,
                },
                Format::Text,
            ),
            Cmd::Delete { ids } => (
                Request::Delete {
                    ids: parse_ids(&ids)?,
                },
                Format::Text,
            ),
            Cmd::Expire { ids } => (
                Request::Expire {
                    ids: parse_ids(&ids)?,
                },
                Format::Text,
            ),
            Cmd::Stats { json } => (Request::Stats, format(json)),
            other => return Ok(Err(other)),
        }))
    }
}
