//! Append throughput with 8 concurrent appenders, single-event and 10-event
//! appends, beside `../shared/bench/pg-baseline` (plain pgbench INSERTs of
//! the same rows) run against the same PostgreSQL in the same run.
//!
//! cargo bench -p tend-event-store --bench append
//!
//! Settings (environment): TEND_BENCH_SECONDS (default 5) per measurement;
//! TEND_BENCH_ROUNDS (default 3) rounds of baseline-then-Tend, whose median
//! ratio is the result;
//! TEND_BENCH_DATABASE_URL to use an existing server instead of a fresh
//! durable cluster in a temporary folder; TEND_PG_BASELINE for the baseline
//! script's path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tend_event_store::{EventStore, ExpectedVersion, NewEvent, Options, StreamId, TenantId};
use tend_testkit::bench::{BenchServer, Result, env_number, median, pg_baseline};
use uuid::Uuid;

const APPENDERS: usize = 8;

#[tokio::main]
async fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; there are no other options.
    let seconds: u64 = env_number("TEND_BENCH_SECONDS", 5);
    let rounds_wanted: usize = env_number("TEND_BENCH_ROUNDS", 3_usize).max(1);
    let server = BenchServer::start().await?;
    let db = server.database(16).await?;
    let store = EventStore::open(db.pool.clone(), Options::default()).await?;

    // The baseline drifts by a third from one run to the next on a small
    // machine: measure it and Tend side by side in each round, and report
    // the median of the rounds' ratios.
    let mut rounds = Vec::new();
    for round in 1..=rounds_wanted {
        eprintln!("round {round} of {rounds_wanted}");
        let baseline = pg_baseline(&server.admin_url, APPENDERS, seconds)?;
        let single = measure(&store, 1, seconds).await?;
        let batch = measure(&store, 10, seconds).await?;
        rounds.push((baseline, single, batch));
    }

    store.shutdown().await;
    db.drop_database().await?;
    server.stop()?;

    println!();
    println!(
        "append throughput, {APPENDERS} concurrent appenders, {seconds} s per figure, same server, {rounds_wanted} rounds:"
    );
    let mut single_ratios = Vec::new();
    let mut batch_ratios = Vec::new();
    for (i, (baseline, single, batch)) in rounds.iter().enumerate() {
        let single_ratio = single.events_per_s / baseline.single as f64;
        let batch_ratio = batch.events_per_s / baseline.batch10 as f64;
        single_ratios.push(single_ratio);
        batch_ratios.push(batch_ratio);
        println!(
            "  round {}: single-event tend {:>6.0} /s vs pg-baseline {:>6} /s = {:.2}x | 10-event tend {:>6.0} /s vs pg-baseline {:>6} /s = {:.2}x",
            i + 1,
            single.events_per_s,
            baseline.single,
            single_ratio,
            batch.events_per_s,
            baseline.batch10,
            batch_ratio
        );
        println!(
            "           latency single-event p50 {:.2} ms p99 {:.2} ms | 10-event p50 {:.2} ms p99 {:.2} ms",
            single.p50_ms, single.p99_ms, batch.p50_ms, batch.p99_ms
        );
    }
    println!(
        "  median ratio: single-event {:.2}x (target >= 1.0x), 10-event {:.2}x (target >= 0.8x)",
        median(&mut single_ratios),
        median(&mut batch_ratios)
    );
    Ok(())
}

struct Measured {
    events_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `APPENDERS` tasks append `per_append` events at a time, each to a new
/// stream (as the baseline does), for `seconds`.
async fn measure(store: &EventStore, per_append: usize, seconds: u64) -> Result<Measured> {
    let tenant = TenantId::new("bench")?;
    let payload = json!({
        "participant_id": "3f1c2a8e-8d55-4c7e-9d1b-2f6e5b1a9c01",
        "practice": "self_compassion_break",
        "minutes": 10,
        "occurred_at": "2026-11-20T08:15:00Z",
        "note": "b3BhcXVlIGNpcGhlcnRleHQgb2YgYSBqb3VybmFsIGVudHJ5IGFib3V0IHNlbGYtY3JpdGljaXNt"
    });
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..APPENDERS)
        .map(|_| {
            let (store, tenant, payload) = (store.clone(), tenant.clone(), payload.clone());
            let (stop, events) = (stop.clone(), events.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let stream = StreamId::for_entity("practice", Uuid::new_v4())?;
                    let batch = (0..per_append)
                        .map(|_| NewEvent::new(Uuid::new_v4(), "PracticeLogged", 1, &payload))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    let t = Instant::now();
                    store
                        .append(&tenant, &stream, ExpectedVersion::NoStream, batch)
                        .await?;
                    latencies.push(t.elapsed());
                    events.fetch_add(per_append as u64, Ordering::Relaxed);
                }
                Ok::<_, tend_event_store::Error>(latencies)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| -> f64 {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(Measured {
        events_per_s: events.load(Ordering::Relaxed) as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}
