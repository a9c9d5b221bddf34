//! Traces and metrics for Tend.
//!
//! Everything here records through the OpenTelemetry API. With no provider
//! installed (the default: `tend serve` installs one only when an exporter
//! is configured) every instrument is a no-op and no span reaches an
//! exporter, so switched-off telemetry costs next to nothing.
//!
//! What never goes into a span or a metric: participant ids, stream ids,
//! tenant ids, payloads or any free text. Attributes are method names,
//! status codes, categories, counts and durations.

mod instruments;
pub mod prometheus;
mod rpc;
mod trace;

pub use instruments::{Instruments, Outcome, instruments, lease_held};
pub use rpc::RpcLayer;
pub use trace::{current_traceparent, is_sampled, link_to, remote_parent};

/// Bucket bounds (seconds) for durations from sub-millisecond calls to
/// ten-second stalls.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

/// Bucket bounds for counts (events per append, appends per commit).
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1000.0, 5000.0,
];

use std::sync::atomic::{AtomicBool, Ordering};

static TRACING: AtomicBool = AtomicBool::new(false);

/// Called once by the server when it exports traces: spans are made only
/// then (off, [`span`] and [`db_span`] return a disabled span).
pub fn enable_tracing() {
    TRACING.store(true, Ordering::Relaxed);
}

pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// True when a child span should be made: tracing is on and something
/// traced and sampled (a call, a projection batch) is in progress.
/// Background work that is not itself traced (subscriptions, idle polls,
/// scheduler rounds) then exports no stream of one-span traces, and a call
/// the sampler left out costs no child spans.
pub fn within_trace() -> bool {
    if !tracing_enabled() {
        return false;
    }
    let current = tracing::Span::current();
    !current.is_none() && is_sampled(&current)
}

/// A span for one round trip to PostgreSQL, named by its summary
/// (`"INSERT events"`), inside a traced operation. The statement is not
/// recorded: the summary says enough, and no value ever is.
pub fn db_span(
    summary: &'static str,
    operation: &'static str,
    table: &'static str,
) -> tracing::Span {
    if !within_trace() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "db",
        otel.name = summary,
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = operation,
        db.collection.name = table,
        db.query.summary = summary,
    )
}
