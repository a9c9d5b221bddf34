//! The instruments the libraries record into, created once from the global
//! meter. The server installs its meter provider before anything records,
//! so these bind to it; elsewhere (tests, tools) they are no-ops.

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};

use crate::{COUNT_BUCKETS, SECONDS_BUCKETS};

/// Every metric Tend records directly (observed gauges are registered by
/// the server, which owns what they observe).
#[derive(Debug)]
pub struct Instruments {
    /// Calls served, by method and status code (`rpc.server.call.duration`).
    pub rpc_duration: Histogram<f64>,
    /// One per append call, from the caller's side (queueing included).
    pub append_duration: Histogram<f64>,
    /// Events per append call.
    pub append_events: Histogram<u64>,
    /// Events written.
    pub events_appended: Counter<u64>,
    /// Appends written together in one commit (group commit).
    pub commit_appends: Histogram<u64>,
    /// One commit's round trip.
    pub commit_duration: Histogram<f64>,
    /// Subscriptions open now (`+1`/`-1`).
    pub subscriptions: opentelemetry::metrics::UpDownCounter<i64>,
    /// Events a projection folded.
    pub projection_events: Counter<u64>,
    /// One projection batch: read, fold, write, checkpoint.
    pub projection_batch_duration: Histogram<f64>,
    /// Scheduler rounds, by outcome.
    pub scheduler_ticks: Counter<u64>,
    pub scheduler_tick_duration: Histogram<f64>,
    /// 1 while this process holds a background lease, else 0.
    pub lease_held: Gauge<u64>,
    /// Webhook delivery attempts, by endpoint and outcome.
    pub webhook_attempts: Counter<u64>,
    /// One webhook request, to the receiver's answer.
    pub webhook_attempt_duration: Histogram<f64>,
    /// How long the event a webhook endpoint is at waited for its delivery
    /// (0 when nothing waits), by endpoint.
    pub webhook_lag: Gauge<f64>,
    /// The log position an endpoint has been delivered up to.
    pub webhook_position: Gauge<u64>,
    /// 1 while an endpoint's current delivery fails and is being retried.
    pub webhook_failing: Gauge<u64>,
    /// FHIR HTTP requests served, by route and status code.
    pub fhir_request_duration: Histogram<f64>,
    /// FHIR exports this server finished, by outcome.
    pub fhir_exports: Counter<u64>,
    /// One FHIR export's build, from its claim to its last file.
    pub fhir_export_duration: Histogram<f64>,
    /// Resources written by FHIR exports on this server.
    pub fhir_export_resources: Counter<u64>,
}

/// How an operation ended, as a low-cardinality attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Refused by the caller's input or a precondition (a version conflict).
    Refused,
    /// Failed: the database or the server.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Error => "error",
        }
    }

    pub fn attribute(self) -> KeyValue {
        KeyValue::new("tend.outcome", self.as_str())
    }
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// The instruments, created on first use from the global meter.
pub fn instruments() -> &'static Instruments {
    INSTRUMENTS.get_or_init(|| Instruments::new(&opentelemetry::global::meter("tend")))
}

/// Records whether this process holds the named background lease.
pub fn lease_held(lease: &'static str, held: bool) {
    instruments()
        .lease_held
        .record(u64::from(held), &[KeyValue::new("tend.lease", lease)]);
}

impl Instruments {
    fn new(meter: &Meter) -> Self {
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build()
        };
        let counts = |name: &'static str, unit: &'static str, description: &'static str| {
            meter
                .u64_histogram(name)
                .with_unit(unit)
                .with_description(description)
                .with_boundaries(COUNT_BUCKETS.to_vec())
                .build()
        };
        Self {
            rpc_duration: seconds(
                "rpc.server.call.duration",
                "Duration of gRPC calls served, to the end of the response stream",
            ),
            append_duration: seconds(
                "tend.event_store.append.duration",
                "Duration of an append as its caller sees it, queueing included",
            ),
            append_events: counts(
                "tend.event_store.append.events",
                "{event}",
                "Events in one append",
            ),
            events_appended: meter
                .u64_counter("tend.event_store.events.appended")
                .with_unit("{event}")
                .with_description("Events written to the log")
                .build(),
            commit_appends: counts(
                "tend.event_store.commit.appends",
                "{append}",
                "Appends written in one commit (group commit)",
            ),
            commit_duration: seconds(
                "tend.event_store.commit.duration",
                "Duration of one commit of a batch of appends",
            ),
            subscriptions: meter
                .i64_up_down_counter("tend.event_stream.subscriptions")
                .with_unit("{subscription}")
                .with_description("Subscriptions open on this server")
                .build(),
            projection_events: meter
                .u64_counter("tend.projection.events")
                .with_unit("{event}")
                .with_description("Events a projection folded on this server")
                .build(),
            projection_batch_duration: seconds(
                "tend.projection.batch.duration",
                "Duration of one projection batch: read, fold, write, checkpoint",
            ),
            scheduler_ticks: meter
                .u64_counter("tend.scheduler.ticks")
                .with_unit("{tick}")
                .with_description("Scheduler rounds run on this server, by outcome")
                .build(),
            scheduler_tick_duration: seconds(
                "tend.scheduler.tick.duration",
                "Duration of one scheduler round",
            ),
            lease_held: meter
                .u64_gauge("tend.lease.held")
                .with_description("1 while this server holds the background lease, else 0")
                .build(),
            webhook_attempts: meter
                .u64_counter("tend.webhook.attempts")
                .with_unit("{attempt}")
                .with_description("Webhook delivery attempts, by endpoint and outcome")
                .build(),
            webhook_attempt_duration: seconds(
                "tend.webhook.attempt.duration",
                "Duration of one webhook request, to the receiver's answer",
            ),
            webhook_lag: meter
                .f64_gauge("tend.webhook.lag")
                .with_unit("s")
                .with_description(
                    "How long the event an endpoint is at has waited for delivery; 0 when none waits",
                )
                .build(),
            webhook_position: meter
                .u64_gauge("tend.webhook.delivered_position")
                .with_description("The log position an endpoint has been delivered up to")
                .build(),
            webhook_failing: meter
                .u64_gauge("tend.webhook.failing")
                .with_description("1 while an endpoint's current delivery is failing and retried")
                .build(),
            fhir_request_duration: seconds(
                "tend.fhir.request.duration",
                "Duration of FHIR HTTP requests served, by route and status code",
            ),
            fhir_exports: meter
                .u64_counter("tend.fhir.exports")
                .with_unit("{export}")
                .with_description("FHIR exports this server finished, by outcome")
                .build(),
            fhir_export_duration: seconds(
                "tend.fhir.export.duration",
                "Duration of one FHIR export's build, from its claim to its last file",
            ),
            fhir_export_resources: meter
                .u64_counter("tend.fhir.export.resources")
                .with_unit("{resource}")
                .with_description("Resources written by FHIR exports on this server")
                .build(),
        }
    }
}
