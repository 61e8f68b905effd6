//! Prometheus metrics, rendered in the text exposition format at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters and gauges. Lock-free; read when `/metrics` is scraped.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub responses_4xx: AtomicU64,
    pub responses_5xx: AtomicU64,
    pub streams_open: AtomicI64,
    pub audit_ingested: AtomicU64,
    pub audit_duplicates: AtomicU64,
    pub bundles_served: AtomicU64,
    pub bundles_not_modified: AtomicU64,
    pub enrollments: AtomicU64,
    pub policy_pushes: AtomicU64,
    /// Time from a serial change reaching this replica to the notice being written to
    /// each open stream: sum (microseconds), count and maximum.
    pub fanout_us_sum: AtomicU64,
    pub fanout_count: AtomicU64,
    pub fanout_us_max: AtomicU64,
}

impl Metrics {
    pub fn observe_fanout(&self, micros: u64) {
        self.fanout_us_sum.fetch_add(micros, Ordering::Relaxed);
        self.fanout_count.fetch_add(1, Ordering::Relaxed);
        self.fanout_us_max.fetch_max(micros, Ordering::Relaxed);
    }

    pub fn render(&self, machines_enrolled: i64, serial: i64) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        metric(
            "warden_http_requests_total",
            "counter",
            "HTTP requests received.",
            g(&self.requests),
        );
        metric(
            "warden_http_responses_4xx_total",
            "counter",
            "Responses with a 4xx status.",
            g(&self.responses_4xx),
        );
        metric(
            "warden_http_responses_5xx_total",
            "counter",
            "Responses with a 5xx status.",
            g(&self.responses_5xx),
        );
        metric(
            "warden_machines_connected",
            "gauge",
            "Node streams open on this replica.",
            self.streams_open.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "warden_machines_enrolled",
            "gauge",
            "Machines enrolled (all replicas).",
            machines_enrolled.to_string(),
        );
        metric(
            "warden_audit_events_ingested_total",
            "counter",
            "Audit events stored for the first time.",
            g(&self.audit_ingested),
        );
        metric(
            "warden_audit_events_duplicate_total",
            "counter",
            "Audit events received again and not stored twice.",
            g(&self.audit_duplicates),
        );
        metric(
            "warden_bundles_served_total",
            "counter",
            "Signed bundles sent to nodes.",
            g(&self.bundles_served),
        );
        metric(
            "warden_bundles_not_modified_total",
            "counter",
            "Bundle requests answered 304 Not Modified.",
            g(&self.bundles_not_modified),
        );
        metric(
            "warden_enrollments_total",
            "counter",
            "Machines enrolled through this replica.",
            g(&self.enrollments),
        );
        metric(
            "warden_policy_pushes_total",
            "counter",
            "Policy versions pushed through this replica.",
            g(&self.policy_pushes),
        );
        metric(
            "warden_policy_serial",
            "gauge",
            "The policy serial this replica serves.",
            serial.to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP warden_push_fanout_seconds Time from a policy change reaching this \
             replica to the notice written on each node stream.\n\
             # TYPE warden_push_fanout_seconds summary\n\
             warden_push_fanout_seconds_sum {}\nwarden_push_fanout_seconds_count {}",
            self.fanout_us_sum.load(Ordering::Relaxed) as f64 / 1e6,
            self.fanout_count.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP warden_push_fanout_seconds_max Slowest fan-out observed.\n\
             # TYPE warden_push_fanout_seconds_max gauge\nwarden_push_fanout_seconds_max {}",
            self.fanout_us_max.load(Ordering::Relaxed) as f64 / 1e6
        );
        out
    }
}
