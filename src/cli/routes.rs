//! `mailqueue routes`: the routing table as the daemon understands it,
//! and which route a recipient would take (like `postmap -q`).

use mailqueue::config::{format_duration, Config, DeliveryConfig, RouteConfig};
use mailqueue::Address;

use super::exit;

/// Prints the table, or with `test` the route of one recipient.
pub fn run(config: &Config, test: Option<&str>, from: Option<&str>) -> u8 {
    match test {
        None => {
            print!("{}", table(config));
            exit::OK
        }
        Some(rcpt) => match lookup(config, rcpt, from) {
            Ok(text) => {
                print!("{text}");
                exit::OK
            }
            Err(e) => {
                eprintln!("mailqueue: {e}");
                exit::DATAERR
            }
        },
    }
}

/// Every route in order, then `[delivery]` for the rest.
pub fn table(config: &Config) -> String {
    let mut out = String::new();
    for (i, r) in config.routes.iter().enumerate() {
        out.push_str(&format!("route {}: {}\n", i + 1, r.describe()));
        out.push_str(&route_settings(config, r));
    }
    let rest = if config.routes.is_empty() {
        "every recipient"
    } else {
        "recipients no route matches"
    };
    out.push_str(&format!("[delivery]: {rest}\n"));
    out.push_str(&settings(
        &config.delivery.target.to_string(),
        &config.delivery,
        &config.hostname,
    ));
    out
}

/// Which route mail from `from` to `rcpt` takes, and its targets.
fn lookup(config: &Config, rcpt: &str, from: Option<&str>) -> Result<String, String> {
    let rcpt: Address = rcpt.parse().map_err(|e| format!("--test {rcpt:?}: {e}"))?;
    let sender = match from {
        None | Some("<>") | Some("") => None,
        Some(f) => Some(
            f.parse::<Address>()
                .map_err(|e| format!("--from {f:?}: {e}"))?,
        ),
    };
    // Without --from, a route that names senders cannot be judged: it is
    // left out, and the answer says so.
    let found = config
        .routes
        .iter()
        .enumerate()
        .find(|(_, r)| (from.is_some() || r.senders.is_empty()) && r.matches(&sender, &rcpt));
    let mut out = match found {
        Some((i, r)) => format!(
            "{rcpt}: route {} ({})\n{}",
            i + 1,
            r.describe(),
            route_settings(config, r)
        ),
        None => format!(
            "{rcpt}: no route matches: [delivery]\n{}",
            settings(
                &config.delivery.target.to_string(),
                &config.delivery,
                &config.hostname
            )
        ),
    };
    if from.is_none() && config.routes.iter().any(|r| !r.senders.is_empty()) {
        out.push_str("(routes that name senders were left out: give --from to include them)\n");
    }
    Ok(out)
}

fn route_settings(config: &Config, route: &RouteConfig) -> String {
    let c = route.config(config);
    let mut s = settings(&route.target.to_string(), &c.delivery, &c.hostname);
    if let Some(f) = &route.fallback {
        s.push_str(&format!("    fallback  {f}\n"));
    }
    s
}

/// The settings a target of the table runs with, one per line.
fn settings(target: &str, d: &DeliveryConfig, helo: &str) -> String {
    let mut s = format!("    target    {target}\n");
    s.push_str(&format!(
        "    tls       {}\n",
        format!("{:?}", d.tls).to_lowercase()
    ));
    if !d.username.is_empty() {
        s.push_str(&format!(
            "    auth      {} (password in {})\n",
            d.username,
            d.password_file.display()
        ));
    }
    s.push_str(&format!("    helo      {helo}\n"));
    if target.split(", then ").any(|t| t == "remote") {
        let on = if d.mta_sts { "on" } else { "off" };
        s.push_str(&format!("    mta_sts   {on}\n"));
    }
    let source = if d.source_address.is_empty() {
        "(the kernel's choice)"
    } else {
        &d.source_address
    };
    s.push_str(&format!(
        "    source    {source}, ip_version {}\n",
        d.ip_version
    ));
    let per_connection = match d.messages_per_connection {
        0 => "no limit".to_string(),
        n => n.to_string(),
    };
    let rate = d
        .rate
        .map(|r| r.to_string())
        .unwrap_or_else(|| "no limit".into());
    s.push_str(&format!(
        "    limits    rate {rate}, concurrency {}, messages per connection {per_connection}\n",
        d.destination_concurrency
    ));
    s.push_str(&format!(
        "    timeouts  connect {}, command {}, data {}\n",
        format_duration(d.connect_timeout),
        format_duration(d.command_timeout),
        format_duration(d.data_timeout)
    ));
    s
}
