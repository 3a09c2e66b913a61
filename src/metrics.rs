//! Counters of every shard, readable from any shard for `GET /metrics` (Prometheus text).
//!
//! Each counter has one writer, its own shard, which adds with a relaxed atomic: no lock,
//! no shared cache line between shards on the data path (each shard's counters are padded
//! to their own line).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// One shard's counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShardMetrics {
    pub invocations: AtomicU64,
    /// Ingress requests whose target another shard owns: a smart client keeps this at zero.
    pub forwarded: AtomicU64,
    pub egress: AtomicU64,
    /// Batches written and synced: one write and one fdatasync each.
    pub log_batches: AtomicU64,
    pub log_records: AtomicU64,
    pub log_bytes: AtomicU64,
    /// 1 once the shard's log failed and it refuses work.
    pub poisoned: AtomicU64,
    /// Requests sent to remote functions, retries and handshakes included.
    pub remote_requests: AtomicU64,
    /// Requests to remote functions that failed (and will be retried).
    pub remote_failures: AtomicU64,
    /// Missing-state handshakes: replies that declared values not sent.
    pub remote_handshakes: AtomicU64,
    /// Messages delivered to remote functions in applied batches.
    pub remote_messages: AtomicU64,
}

impl ShardMetrics {
    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }
}

/// Picks one counter out of a shard's.
type Counter = fn(&ShardMetrics) -> &AtomicU64;

/// The counters of all shards of a node.
#[derive(Debug)]
pub struct Metrics {
    pub shards: Vec<ShardMetrics>,
}

impl Metrics {
    pub fn new(shards: u16) -> Metrics {
        Metrics { shards: (0..shards).map(|_| ShardMetrics::default()).collect() }
    }

    /// The Prometheus text exposition of every counter, labelled by shard.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, Counter); 11] = [
            ("statefun_invocations_total", "Function invocations run.", |m| &m.invocations),
            ("statefun_forwarded_requests_total", "Ingress requests handed to another shard.", |m| &m.forwarded),
            ("statefun_egress_records_total", "Egress records published.", |m| &m.egress),
            ("statefun_log_batches_total", "Log batches written and synced.", |m| &m.log_batches),
            ("statefun_log_records_total", "Log records committed.", |m| &m.log_records),
            ("statefun_log_bytes_total", "Log bytes written.", |m| &m.log_bytes),
            ("statefun_log_poisoned", "1 if the shard's log failed and it refuses work.", |m| &m.poisoned),
            ("statefun_remote_requests_total", "Requests sent to remote functions.", |m| &m.remote_requests),
            ("statefun_remote_failures_total", "Requests to remote functions that failed.", |m| &m.remote_failures),
            ("statefun_remote_handshakes_total", "Missing-state handshakes with remote functions.", |m| {
                &m.remote_handshakes
            }),
            ("statefun_remote_messages_total", "Messages delivered to remote functions.", |m| &m.remote_messages),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (shard, metrics) in self.shards.iter().enumerate() {
                let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", counter(metrics).load(Ordering::Relaxed));
            }
        }
        out
    }
}
