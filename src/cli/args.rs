//! The `mailqueue` command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use mailqueue::queue::admin::{Filter, Selection};

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
    /// List the queue (and what waits in incoming/ for pickup).
    List {
        /// One JSON object per message per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Show a message's envelope, per-recipient state and header.
    Show {
        id: String,
        /// Print the whole message as queued instead (postcat -b).
        #[arg(long)]
        body: bool,
    },
    /// Retry now: the given messages, ALL, `-` (ids on standard input),
    /// or, with neither, every message the filters match.
    Flush {
        ids: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Stop delivering messages until released: IDs, ALL or `-`.
    Hold {
        ids: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Resume delivering held messages: IDs, ALL or `-`.
    Release {
        ids: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Remove messages without telling their senders: IDs, ALL or `-`.
    Delete {
        ids: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Give messages up now, telling their senders: IDs, ALL or `-`.
    Expire {
        ids: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Route messages again, now: IDs, ALL or `-`. With --target, pin
    /// them to that target until they leave the queue; without, back to
    /// the routes.
    Requeue {
        ids: Vec<String>,
        /// The target to send them to: smtp://host:port, smtps://, lmtp://,
        /// lmtp+unix:///path or remote.
        #[arg(long, value_name = "URL")]
        target: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Pending recipients per domain and age (qshape).
    Shape {
        /// By sender domain (messages) instead of recipient domain.
        #[arg(long = "by-sender")]
        by_sender: bool,
        /// One JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Show the running daemon's counters: queue size, attempts,
    /// scheduling lag.
    Stats {
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and exit; with --dns, also report what
    /// big mail providers would object to in this host's DNS.
    Check {
        /// Also check DNS as receivers see it: the outbound address's
        /// reverse DNS, the sender domains' SPF and MX, DKIM keys. Exit 1
        /// on a problem, 75 when DNS did not answer.
        #[arg(long)]
        dns: bool,
        /// The address mail leaves from as receivers see it (behind NAT),
        /// instead of source_address or the kernel's choice; repeatable.
        #[arg(long, value_name = "IP", requires = "dns")]
        address: Vec<std::net::IpAddr>,
        /// One more sender domain to check (SPF, MX); repeatable.
        #[arg(long, value_name = "DOMAIN", requires = "dns", value_parser = parse_domain)]
        domain: Vec<String>,
    },
    /// Print the routing table; with --test, the route a recipient takes.
    Routes {
        /// The recipient to look up: which route and target it would take.
        #[arg(long, value_name = "ADDRESS")]
        test: Option<String>,
        /// The sender, for routes that match on senders (<> for notices).
        #[arg(long, value_name = "ADDRESS", requires = "test")]
        from: Option<String>,
    },
    /// Show the MTA-STS policy in force for a recipient domain: the
    /// cached one, or fetched now; exit 1 when there is none.
    Sts {
        /// The recipient domain.
        domain: String,
    },
    /// DKIM keys: make one (keygen), check their DNS records (check).
    #[command(subcommand)]
    Dkim(DkimCmd),
    /// Check the daemon, the spool and the quarantine for monitoring:
    /// one line per check; exit 0 OK, 1 WARNING, 2 CRITICAL.
    Health {
        /// Warn about files quarantined in `<spool>/corrupt/` this recently.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
        corrupt_within: Duration,
    },
}

fn parse_domain(s: &str) -> Result<String, String> {
    mailqueue::delivery::dns::to_ascii(s).map_err(|e| e.to_string())
}

/// `mailqueue dkim ...`.
#[derive(Subcommand)]
pub enum DkimCmd {
    /// Make a signing key (PKCS#8 PEM, mode 0600) and print the DNS
    /// record to publish and the [[dkim]] lines to add.
    Keygen {
        /// The signing domain: mail from it and its subdomains.
        #[arg(long)]
        domain: String,
        /// The selector: the record goes at <selector>._domainkey.<domain>.
        #[arg(long)]
        selector: String,
        /// An Ed25519 key (RFC 8463) instead of RSA.
        #[arg(long)]
        ed25519: bool,
        /// RSA key size.
        #[arg(long, default_value_t = 2048, conflicts_with = "ed25519")]
        bits: u32,
        /// Where to write the key (default: <domain>.<selector>.pem here);
        /// an existing file is never overwritten.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Look up each configured key's DNS record and compare it with the
    /// key; exit 1 when any is missing or differs.
    Check,
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
            Cmd::List { json, filter } => (
                Request::List {
                    filter: filter.into_filter()?,
                },
                format(json),
            ),
            Cmd::Show { id, body } => {
                let id = parse_ids(&[id])?.remove(0);
                (Request::Show { id, body }, Format::Text)
            }
            Cmd::Shape {
                by_sender,
                json,
                filter,
            } => (
                Request::Shape {
                    sender: by_sender,
                    filter: filter.into_filter()?,
                },
                format(json),
            ),
            Cmd::Flush { ids, filter } => {
                let sel = selection(ids, filter, true)?;
                (Request::Flush(sel), Format::Text)
            }
            Cmd::Hold { ids, filter } => {
                (Request::Hold(selection(ids, filter, false)?), Format::Text)
            }
            Cmd::Release { ids, filter } => {
                let sel = selection(ids, filter, false)?;
                (Request::Release(sel), Format::Text)
            }
            Cmd::Delete { ids, filter } => {
                let sel = selection(ids, filter, false)?;
                (Request::Delete(sel), Format::Text)
            }
            Cmd::Expire { ids, filter } => {
                let sel = selection(ids, filter, false)?;
                (Request::Expire(sel), Format::Text)
            }
            Cmd::Requeue {
                ids,
                target,
                filter,
            } => {
                if let Some(t) = &target {
                    t.parse::<mailqueue::TargetSpec>()
                        .map_err(|e| format!("--target: {e}"))?;
                }
                let selection = selection(ids, filter, false)?;
                (Request::Requeue { selection, target }, Format::Text)
            }
            Cmd::Stats { json } => (Request::Stats, format(json)),
            other => return Ok(Err(other)),
        }))
    }
}

/// Which messages, besides their ids (`list` and the bulk commands).
#[derive(Args, Debug, Default)]
pub struct FilterArgs {
    /// Only messages with a pending recipient at this domain.
    #[arg(long, value_name = "DOMAIN")]
    domain: Option<String>,
    /// Only messages from this sender: an address, @domain, or <> for notices.
    #[arg(long, value_name = "ADDRESS")]
    sender: Option<String>,
    /// Only messages that arrived at least this long ago (30m, 2h, 3d).
    #[arg(long, value_name = "DURATION")]
    older_than: Option<String>,
    /// Only held messages.
    #[arg(long)]
    held: bool,
    /// Only deferred messages (tried, not held).
    #[arg(long)]
    deferred: bool,
}

impl FilterArgs {
    fn into_filter(self) -> Result<Filter, String> {
        let older_than_secs = match self.older_than {
            Some(d) => Some(
                mailqueue::config::parse_duration(&d)
                    .map_err(|e| format!("--older-than: {e}"))?
                    .as_secs(),
            ),
            None => None,
        };
        Ok(Filter {
            domain: self.domain,
            sender: self.sender,
            older_than_secs,
            held: self.held,
            deferred: self.deferred,
        })
    }
}

/// The messages a bulk command names: `ALL`, `-` (ids on standard input,
/// one per line, as `postsuper -d -` reads them), or ids; with none, the
/// filters must say which (or, for `flush`, every message).
fn selection(ids: Vec<String>, filter: FilterArgs, none_is_all: bool) -> Result<Selection, String> {
    let filter = filter.into_filter()?;
    let special = ids.iter().any(|i| i == "ALL" || i == "-");
    if special && ids.len() > 1 {
        return Err("ALL and - stand alone, without message ids".into());
    }
    if ids.is_empty() {
        if filter.is_empty() && !none_is_all {
            return Err("name the messages: IDs, ALL, - (ids on standard input) or filters such as --domain".into());
        }
        return Ok(Selection {
            ids: Vec::new(),
            all: true,
            filter,
        });
    }
    match ids[0].as_str() {
        "ALL" => Ok(Selection {
            ids: Vec::new(),
            all: true,
            filter,
        }),
        "-" => {
            let mut read = Vec::new();
            for line in std::io::stdin().lines() {
                let line = line.map_err(|e| format!("standard input: {e}"))?;
                let id = line.trim();
                if !id.is_empty() {
                    read.push(id.to_string());
                }
            }
            Ok(Selection {
                ids: parse_ids(&read)?,
                all: false,
                filter,
            })
        }
        _ => Ok(Selection {
            ids: parse_ids(&ids)?,
            all: false,
            filter,
        }),
    }
}
