//! The daemon's metrics endpoint: `GET /metrics` in the Prometheus text
//! exposition format (version 0.0.4), served by a blocking HTTP server
//! (tiny_http) on a thread of its own.
//!
//! The event counters live in the library (`queue::stats::Stats`, a few
//! atomics); the queue's shape by state (active, deferred, held) and the
//! oldest message's age come from the spool's census, kept in memory as
//! messages change (`Queue::census`): a scrape reads no file, however
//! many messages are queued.

use std::fmt::Write as _;
use std::sync::Arc;
use std::thread::JoinHandle;

use mailqueue::queue::meta::{MessageMeta, Timestamp};
use mailqueue::queue::spool::{CensusCounts, State};
use mailqueue::queue::stats::{self, OUTCOMES, REFUSAL_REASONS};
use mailqueue::{Config, Queue};

/// The queue's states, as `list --json` names them (`hold` there).
pub use mailqueue::queue::spool::STATES;

/// Messages and bytes by state, and the oldest message's age.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Shape {
    /// `(messages, bytes)` in the order of [`STATES`].
    pub by_state: [(u64, u64); 3],
    /// Seconds since the oldest queued message arrived; 0 when empty.
    pub oldest_age_secs: u64,
    /// The start-up load still reads the spool: the counts cover what it
    /// loaded so far and the new mail.
    pub loading: bool,
}

impl Shape {
    /// Counts one more message, as of `now`.
    pub fn add(&mut self, m: &MessageMeta, now: Timestamp) {
        let state = State::of(m) as usize;
        self.by_state[state].0 += 1;
        self.by_state[state].1 += m.size;
        self.oldest_age_secs = self.oldest_age_secs.max(m.age(now).as_secs());
    }

    /// The shape the running queue's census counts.
    pub fn of_census(c: &CensusCounts, now: Timestamp) -> Shape {
        Shape {
            by_state: c.by_state,
            oldest_age_secs: c.oldest_age(now).as_secs(),
            loading: false,
        }
    }
}

/// Binds the endpoint `[metrics] listen` names (`None` when it is empty),
/// before the queue opens: a daemon that cannot serve its metrics fails
/// at once, as one that cannot listen for SMTP does.
pub fn bind(config: &Config) -> Result<Option<Bound>, String> {
    let listen = &config.metrics.listen;
    if listen.is_empty() {
        return Ok(None);
    }
    let server = tiny_http::Server::http(listen.as_str())
        .map_err(|e| format!("cannot serve metrics on {listen}: {e}"))?;
    Ok(Some(Bound(server)))
}

/// A bound metrics socket, not serving yet.
pub struct Bound(tiny_http::Server);

impl Bound {
    /// Serves `queue`'s metrics on a thread of its own. Should the thread
    /// not start, the daemon runs on without metrics, logging why.
    pub fn serve(self, queue: Arc<Queue>) -> Option<MetricsServer> {
        MetricsServer::start(self.0, queue)
            .map_err(|e| log::error!("{e}"))
            .ok()
    }
}

/// A running metrics endpoint; stopped when dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `queue`'s metrics on a bound server.
    fn start(server: tiny_http::Server, queue: Arc<Queue>) -> Result<MetricsServer, String> {
        let server = Arc::new(server);
        let listen = server.server_addr();
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("mailqueue-metrics".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    answer(request, &queue);
                }
            })
            .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
        log::info!("metrics on http://{listen}/metrics");
        Ok(MetricsServer {
            server,
            thread: Some(thread),
        })
    }

    /// Stops serving and waits for the thread.
    pub fn stop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn answer(request: tiny_http::Request, queue: &Queue) {
    use tiny_http::{Header, Method, Response};
    let path = request.url().split('?').next().unwrap_or("");
    let response = match (request.method(), path) {
        (Method::Get, "/metrics") => {
            let header = Header::from_bytes(
                &b"Content-Type"[..],
                &b"text/plain; version=0.0.4; charset=utf-8"[..],
            )
            .expect("a valid header");
            Response::from_string(render(queue)).with_header(header)
        }
        (Method::Get, _) => {
            Response::from_string("not found; try /metrics\n").with_status_code(404)
        }
        _ => Response::from_string("only GET\n").with_status_code(405),
    };
    // A scraper that went away is not our problem.
    let _ = request.respond(response);
}

/// The running queue's metrics in the text format.
pub fn render(queue: &Queue) -> String {
    let shape = Shape {
        loading: queue.loading(),
        ..Shape::of_census(&queue.census(), Timestamp::now())
    };
    let free = fs2::available_space(&queue.options().spool).ok();
    encode(&shape, queue.counters(), free)
}

/// Lag histogram bounds: powers of two of microseconds up to 2^36 (about
/// 19 hours), every one an exact bucket edge of the library's histogram.
const LAG_MAX_BOUND_US: u64 = 1 << 36;

fn encode(shape: &Shape, c: &stats::Stats, free: Option<u64>) -> String {
    let mut out = String::with_capacity(4096);
    let o = &mut out;
    queue_families(o, shape);
    traffic_families(o, c);
    tls_families(o);
    lag_family(o, c);
    mta_sts_families(o);
    if let Some(free) = free {
        family(
            o,
            "mailqueue_spool_free_bytes",
            "gauge",
            "Bytes available to the daemon on the spool's file system.",
        );
        sample(o, "mailqueue_spool_free_bytes", &[], free);
    }
    out
}

/// The queue's gauges: messages and bytes by state, the oldest's age.
fn queue_families(o: &mut String, shape: &Shape) {
    family(
        o,
        "mailqueue_queue_messages",
        "gauge",
        "Messages in the queue, by state.",
    );
    for (state, (n, _)) in STATES.iter().zip(shape.by_state) {
        sample(o, "mailqueue_queue_messages", &[("state", state)], n);
    }
    family(
        o,
        "mailqueue_queue_bytes",
        "gauge",
        "Bytes of message text in the queue, by state.",
    );
    for (state, (_, b)) in STATES.iter().zip(shape.by_state) {
        sample(o, "mailqueue_queue_bytes", &[("state", state)], b);
    }
    family(
        o,
        "mailqueue_queue_oldest_message_age_seconds",
        "gauge",
        "Age of the oldest queued message; 0 when the queue is empty.",
    );
    sample(
        o,
        "mailqueue_queue_oldest_message_age_seconds",
        &[],
        shape.oldest_age_secs,
    );
    family(
        o,
        "mailqueue_spool_loading",
        "gauge",
        "1 while the start-up load reads the spool; the queue gauges then count the messages loaded so far and new mail.",
    );
    sample(o, "mailqueue_spool_loading", &[], u64::from(shape.loading));
}

/// Mail in and out: received, refused, delivery outcomes, notices,
/// connections.
fn traffic_families(o: &mut String, c: &stats::Stats) {
    family(
        o,
        "mailqueue_received_total",
        "counter",
        "Messages queued, by way in (notices not included).",
    );
    let (smtp, local) = c.received_counts();
    sample(o, "mailqueue_received_total", &[("way", "smtp")], smtp);
    sample(o, "mailqueue_received_total", &[("way", "local")], local);
    family(
        o,
        "mailqueue_refused_total",
        "counter",
        "SMTP replies refusing a command (4xx, 5xx), by reason.",
    );
    for (reason, n) in REFUSAL_REASONS.iter().zip(c.refused_counts()) {
        sample(o, "mailqueue_refused_total", &[("reason", reason)], n);
    }
    family(
        o,
        "mailqueue_deliveries_total",
        "counter",
        "Recipient outcomes of delivery attempts.",
    );
    for (outcome, n) in OUTCOMES.iter().zip(c.outcome_counts()) {
        sample(o, "mailqueue_deliveries_total", &[("outcome", outcome)], n);
    }
    family(
        o,
        "mailqueue_notices_total",
        "counter",
        "Delivery status notifications (bounces, delay warnings) queued.",
    );
    sample(o, "mailqueue_notices_total", &[], c.notices());
    family(
        o,
        "mailqueue_connections_total",
        "counter",
        "SMTP connections the listener took on.",
    );
    sample(o, "mailqueue_connections_total", &[], c.connections());
}

/// Outbound sessions by TLS version and verification.
fn tls_families(o: &mut String) {
    family(
        o,
        "mailqueue_outbound_tls_sessions_total",
        "counter",
        "Outbound SMTP sessions that negotiated TLS.",
    );
    sample(
        o,
        "mailqueue_outbound_tls_sessions_total",
        &[],
        stats::outbound_tls(),
    );
    family(
        o,
        "mailqueue_outbound_sessions_total",
        "counter",
        "Outbound SMTP/LMTP sessions set up, by TLS version (none: clear text) and \
         certificate verification (verified, unverified, dane-verified).",
    );
    for ((version, verified), n) in stats::outbound_sessions() {
        sample(
            o,
            "mailqueue_outbound_sessions_total",
            &[("tls", version), ("verified", verified)],
            n,
        );
    }
}

/// The scheduling lag histogram.
fn lag_family(o: &mut String, c: &stats::Stats) {
    family(
        o,
        "mailqueue_scheduling_lag_seconds",
        "histogram",
        "How late attempts started against the time they were due.",
    );
    let count = c.lag.count();
    for (bound_us, below) in c.lag.cumulative(LAG_MAX_BOUND_US) {
        let le = format!("{}", bound_us as f64 / 1e6);
        sample(
            o,
            "mailqueue_scheduling_lag_seconds_bucket",
            &[("le", &le)],
            below,
        );
    }
    sample(
        o,
        "mailqueue_scheduling_lag_seconds_bucket",
        &[("le", "+Inf")],
        count,
    );
    let _ = writeln!(
        o,
        "mailqueue_scheduling_lag_seconds_sum {}",
        c.lag.sum_us() as f64 / 1e6
    );
    sample(o, "mailqueue_scheduling_lag_seconds_count", &[], count);
}

/// MTA-STS: policy fetches by result, and MX hosts refused under
/// `enforce` (counted by every MX target of the process).
fn mta_sts_families(o: &mut String) {
    use mailqueue::delivery::mta_sts;
    family(
        o,
        "mailqueue_mta_sts_fetches_total",
        "counter",
        "MTA-STS policy fetches, by result.",
    );
    let (ok, failed) = mta_sts::fetch_counts();
    sample(
        o,
        "mailqueue_mta_sts_fetches_total",
        &[("result", "ok")],
        ok,
    );
    sample(
        o,
        "mailqueue_mta_sts_fetches_total",
        &[("result", "failed")],
        failed,
    );
    family(
        o,
        "mailqueue_mta_sts_refusals_total",
        "counter",
        "MX hosts refused under an enforce MTA-STS policy.",
    );
    sample(
        o,
        "mailqueue_mta_sts_refusals_total",
        &[],
        mta_sts::refusals(),
    );
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample; label values here are fixed words, never escaped text.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{v}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_queue_reports_zeros_for_every_state() {
        let text = encode(&Shape::default(), &stats::Stats::default(), Some(7));
        for state in STATES {
            assert!(text.contains(&format!(
                "mailqueue_queue_messages{{state=\"{state}\"}} 0\n"
            )));
            assert!(text.contains(&format!("mailqueue_queue_bytes{{state=\"{state}\"}} 0\n")));
        }
        assert!(text.contains("mailqueue_queue_oldest_message_age_seconds 0\n"));
        assert!(text.contains("mailqueue_scheduling_lag_seconds_bucket{le=\"+Inf\"} 0\n"));
        assert!(text.contains("mailqueue_spool_free_bytes 7\n"));
        assert!(text.contains("mailqueue_spool_loading 0\n"));
    }
}
