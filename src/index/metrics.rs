//! `GET /metrics`: the index's numbers in Prometheus' text exposition format (version
//! 0.0.4). Request latencies are histograms per endpoint and status, recorded by the HTTP
//! edge; everything else is read from the index when scraped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::threads::lock;

/// Upper bounds of the latency buckets, in seconds: 100 µs to 10 s, as requests on loopback
/// take well under a millisecond and a long-polled heartbeat's handling is not its wait.
const BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A latency histogram with the fixed `BOUNDS`.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative; the last one is above every bound).
    counts: [u64; BOUNDS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BOUNDS.len());
        self.counts[bucket] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `_bucket`, `_sum` and `_count` lines of `name` with `labels` (already rendered,
    /// without braces; may be empty).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in BOUNDS.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// What the HTTP edge records as it answers.
#[derive(Default)]
pub struct Metrics {
    /// (endpoint, status) -> latency. Endpoints are the API's own paths or "other", so a
    /// client cannot grow this map with made-up paths.
    requests: Mutex<BTreeMap<(&'static str, u16), Histogram>>,
}

impl Metrics {
    pub fn request(&self, endpoint: &'static str, status: u16, took: Duration) {
        lock(&self.requests)
            .entry((endpoint, status))
            .or_default()
            .observe(took);
    }

    fn requests(&self) -> BTreeMap<(&'static str, u16), Histogram> {
        lock(&self.requests).clone()
    }
}

/// Everything `/metrics` reports besides the request latencies, read from the index.
pub struct Snapshot {
    pub role: &'static str,
    pub uptime: Duration,
    pub seq: u64,
    pub peers: usize,
    pub files: usize,
    /// Names with a version history, held or not.
    pub histories: usize,
    pub leases: usize,
    pub under_replicated: usize,
    pub tasks: TaskCounts,
    /// Primary: (shadow URL, lag in ops, seconds since its last acknowledgement).
    pub shadows: Vec<(String, u64, Option<f64>)>,
    /// Shadow: seconds since the primary's last push.
    pub since_sync: Option<f64>,
    /// With a data directory: the duration of each fsync of the op log.
    pub fsync: Option<Histogram>,
    /// The HTTP server's connections.
    pub connections: Option<crate::net::Counts>,
}

/// The planner's books, counted since start.
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskCounts {
    pub in_flight: usize,
    pub planned: u64,
    pub completed: u64,
    pub failed: u64,
    pub timed_out: u64,
}

/// A label value with `\`, `"` and newlines escaped, as the format asks.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    metric(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    metric(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

/// The whole exposition.
pub fn render(metrics: &Metrics, s: &Snapshot) -> String {
    let mut out = String::new();
    metric(
        &mut out,
        "nap_request_duration_seconds",
        "histogram",
        "Time from the server taking a request (its wait for a worker included) to its \
         answer (a write's answer waits for the disk; a long poll's wait is not counted), by \
         endpoint and status; _count counts the requests.",
    );
    for ((endpoint, status), histogram) in metrics.requests() {
        let labels = format!("endpoint=\"{}\",status=\"{status}\"", escape(endpoint));
        histogram.render(&mut out, "nap_request_duration_seconds", &labels);
    }
    metric(
        &mut out,
        "nap_role",
        "gauge",
        "1 for the role this index runs as.",
    );
    let _ = writeln!(out, "nap_role{{role=\"{}\"}} 1", s.role);
    gauge(
        &mut out,
        "nap_uptime_seconds",
        "Seconds since the index started.",
        s.uptime.as_secs_f64(),
    );
    gauge(
        &mut out,
        "nap_seq",
        "Sequence number of the last op applied.",
        s.seq,
    );
    gauge(&mut out, "nap_peers", "Registered peers.", s.peers);
    gauge(
        &mut out,
        "nap_files",
        "File names some live peer holds.",
        s.files,
    );
    gauge(
        &mut out,
        "nap_histories",
        "File names with a version history, held or not (unheld ones are forgotten after --history-retention).",
        s.histories,
    );
    gauge(&mut out, "nap_leases", "Write leases held.", s.leases);
    gauge(
        &mut out,
        "nap_under_replicated_files",
        "Files with fewer up-to-date holders than the replication factor (at the planner's last pass).",
        s.under_replicated,
    );
    gauge(
        &mut out,
        "nap_tasks_in_flight",
        "Copy tasks handed out and not yet done.",
        s.tasks.in_flight,
    );
    counter(
        &mut out,
        "nap_tasks_planned_total",
        "Copy tasks assigned to peers.",
        s.tasks.planned,
    );
    counter(
        &mut out,
        "nap_tasks_completed_total",
        "Copy tasks done: the peer announced the copy.",
        s.tasks.completed,
    );
    counter(
        &mut out,
        "nap_tasks_failed_total",
        "Copy tasks a peer reported it could not make.",
        s.tasks.failed,
    );
    counter(
        &mut out,
        "nap_tasks_timed_out_total",
        "Copy tasks taken back after their deadline.",
        s.tasks.timed_out,
    );
    if !s.shadows.is_empty() {
        metric(
            &mut out,
            "nap_shadow_lag_ops",
            "gauge",
            "Ops the shadow has yet to acknowledge.",
        );
        for (url, lag, _) in &s.shadows {
            let _ = writeln!(
                out,
                "nap_shadow_lag_ops{{shadow=\"{}\"}} {lag}",
                escape(url)
            );
        }
        metric(
            &mut out,
            "nap_shadow_last_ack_seconds",
            "gauge",
            "Seconds since the shadow last acknowledged a push (absent before the first).",
        );
        for (url, _, ago) in &s.shadows {
            if let Some(ago) = ago {
                let _ = writeln!(
                    out,
                    "nap_shadow_last_ack_seconds{{shadow=\"{}\"}} {ago}",
                    escape(url)
                );
            }
        }
    }
    if let Some(ago) = s.since_sync {
        gauge(
            &mut out,
            "nap_sync_last_seconds",
            "Shadow: seconds since the primary's last push.",
            ago,
        );
    }
    if let Some(c) = &s.connections {
        gauge(
            &mut out,
            "nap_connections_open",
            "Client connections open at the warden's last look (it looks every 100 ms or more).",
            c.open,
        );
        gauge(
            &mut out,
            "nap_requests_in_flight",
            "Requests taken and not yet answered, parked long polls included.",
            c.in_flight,
        );
        gauge(
            &mut out,
            "nap_connections_max",
            "Requests in flight (and open connections) this index takes (--max-connections).",
            c.max,
        );
        counter(
            &mut out,
            "nap_requests_refused_total",
            "Requests answered 503 because --max-connections were in flight.",
            c.refused,
        );
        metric(
            &mut out,
            "nap_connections_closed_total",
            "counter",
            "Connections the index closed: idle past --idle-timeout, idle while over \
             --max-connections, or too slow or too large (a head, body or answer that did not \
             move within --request-timeout or at the minimum rate).",
        );
        let _ = writeln!(
            out,
            "nap_connections_closed_total{{reason=\"idle\"}} {}",
            c.closed_idle
        );
        let _ = writeln!(
            out,
            "nap_connections_closed_total{{reason=\"over_limit\"}} {}",
            c.closed_over_limit
        );
        let _ = writeln!(
            out,
            "nap_connections_closed_total{{reason=\"slow\"}} {}",
            c.closed_slow
        );
        counter(
            &mut out,
            "nap_accept_restarts_total",
            "Times the index started accepting connections again after accepting failed (out \
             of descriptors, say).",
            c.accept_restarts,
        );
    }
    if let Some(fsync) = &s.fsync {
        metric(
            &mut out,
            "nap_log_fsync_duration_seconds",
            "histogram",
            "Duration of each write and fsync of the op log (one per group of ops).",
        );
        fsync.render(&mut out, "nap_log_fsync_duration_seconds", "");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_at_the_count() {
        let mut h = Histogram::default();
        for us in [50, 50, 700, 3_000, 20_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.0001\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.001\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"10\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 5\n"), "{out}");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
