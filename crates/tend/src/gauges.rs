//! The gauges read from state this server owns: the connection pool, the
//! open subscriptions against the head, and the projection's lag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use sqlx::PgPool;
use tend_event_store::EventStore;
use tend_event_stream::EventStreamApi;
use tokio_util::sync::CancellationToken;

use crate::telemetry::Telemetry;

/// How often the projection lag gauges are refreshed from the database.
const PROJECTION_STATUS_EVERY: Duration = Duration::from_secs(5);

/// The gauges read from state this server owns: the connection pool, the
/// open subscriptions against the head, and the projection's lag (polled
/// from the database, so every replica reports it, lease holder or not).
/// Kept alive by the caller for as long as it serves.
pub(crate) fn observe(
    pool: &PgPool,
    max_connections: u32,
    store: &EventStore,
    event_stream: &EventStreamApi,
    telemetry: &Telemetry,
    shutdown: CancellationToken,
) -> Vec<Box<dyn std::any::Any + Send>> {
    if !telemetry.metrics_enabled() {
        return Vec::new();
    }
    let meter = opentelemetry::global::meter("tend");
    let counted = pool.clone();
    let connections = meter
        .i64_observable_up_down_counter("db.client.connection.count")
        .with_unit("{connection}")
        .with_description("Connections in the pool, by state")
        .with_callback(move |o| {
            let size = i64::from(counted.size());
            let idle = counted.num_idle() as i64;
            let name = KeyValue::new("db.client.connection.pool.name", "tend");
            o.observe(
                idle,
                &[
                    name.clone(),
                    KeyValue::new("db.client.connection.state", "idle"),
                ],
            );
            o.observe(
                (size - idle).max(0),
                &[name, KeyValue::new("db.client.connection.state", "used")],
            );
        })
        .build();
    let max = meter
        .i64_observable_up_down_counter("db.client.connection.max")
        .with_unit("{connection}")
        .with_description("The most connections the pool opens")
        .with_callback(move |o| {
            o.observe(
                i64::from(max_connections.max(2)),
                &[KeyValue::new("db.client.connection.pool.name", "tend")],
            );
        })
        .build();
    let open = event_stream.open_subscriptions();
    let head_store = store.clone();
    let subscription_lag = meter
        .u64_observable_gauge("tend.event_stream.subscription.lag")
        .with_unit("{event}")
        .with_description("Events between the head and the furthest-behind open subscription")
        .with_callback(move |o| {
            let head = head_store.head();
            let lag = open.oldest_position().map_or(0, |p| head.saturating_sub(p));
            o.observe(lag, &[]);
        })
        .build();
    let head_store = store.clone();
    let head = meter
        .u64_observable_gauge("tend.event_store.head")
        .with_unit("{position}")
        .with_description("The last committed position this server knows of")
        .with_callback(move |o| o.observe(head_store.head(), &[]))
        .build();

    let behind = Arc::new(AtomicU64::new(0));
    let seconds_behind = Arc::new(AtomicU64::new(0f64.to_bits()));
    let known = Arc::new(AtomicBool::new(false));
    tokio::spawn({
        let (behind, seconds_behind, known) =
            (behind.clone(), seconds_behind.clone(), known.clone());
        let pool = pool.clone();
        async move {
            loop {
                match tend_projections::status(&pool, tend_arc::NAME).await {
                    Ok(s) => {
                        behind.store(s.events_behind, Ordering::Relaxed);
                        seconds_behind.store(s.seconds_behind.to_bits(), Ordering::Relaxed);
                        known.store(true, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // No figure rather than a stale one.
                        known.store(false, Ordering::Relaxed);
                        tracing::debug!(error = %e, "projection status unavailable");
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(PROJECTION_STATUS_EVERY) => {}
                }
            }
        }
    });
    let projection = [KeyValue::new("tend.projection", tend_arc::NAME)];
    let events_behind = meter
        .u64_observable_gauge("tend.projection.events_behind")
        .with_unit("{event}")
        .with_description("Events in the log the projection has not folded yet")
        .with_callback({
            let (behind, known, projection) = (behind.clone(), known.clone(), projection.clone());
            move |o| {
                if known.load(Ordering::Relaxed) {
                    o.observe(behind.load(Ordering::Relaxed), &projection);
                }
            }
        })
        .build();
    let lag = meter
        .f64_observable_gauge("tend.projection.lag")
        .with_unit("s")
        .with_description("Age of the oldest event the projection has not folded yet")
        .with_callback(move |o| {
            if known.load(Ordering::Relaxed) {
                o.observe(
                    f64::from_bits(seconds_behind.load(Ordering::Relaxed)),
                    &projection,
                );
            }
        })
        .build();
    vec![
        Box::new(connections),
        Box::new(max),
        Box::new(subscription_lag),
        Box::new(head),
        Box::new(events_behind),
        Box::new(lag),
    ]
}
