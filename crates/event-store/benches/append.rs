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

use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use tend_event_store::{EventStore, ExpectedVersion, NewEvent, Options, StreamId, TenantId};
use uuid::Uuid;

const APPENDERS: usize = 8;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; there are no other options.
    let seconds: u64 = std::env::var("TEND_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rounds_wanted: usize = std::env::var("TEND_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3);

    let mut cluster = None;
    let mut _dir = None;
    let admin_url = match std::env::var("TEND_BENCH_DATABASE_URL") {
        Ok(url) => url,
        Err(_) => {
            let dir = tempfile::Builder::new().prefix("tend-bench").tempdir()?;
            std::fs::set_permissions(
                dir.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )?;
            // Durable, like a production server: fsync on.
            let mut options = tend_local_postgres::Options::new(dir.path().join("pg"));
            options.database = "bench".into();
            let c = tend_local_postgres::Cluster::start(options).await?;
            let url = c.url();
            cluster = Some(c);
            _dir = Some(dir);
            url
        }
    };

    // A database of its own, so the baseline's table and ours never mix.
    let admin = PgConnectOptions::from_str(&admin_url)?;
    let name = format!("tend_bench_{}", Uuid::new_v4().simple());
    let mut conn = admin.connect().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect_with(admin.clone().database(&name))
        .await?;
    tend_event_store::migrate(&pool).await?;
    let store = EventStore::open(pool.clone(), Options::default()).await?;

    // The baseline drifts by a third from one run to the next on a small
    // machine: measure it and Tend side by side in each round, and report
    // the median of the rounds' ratios.
    let mut rounds = Vec::new();
    for round in 1..=rounds_wanted {
        eprintln!("round {round} of {rounds_wanted}");
        let baseline = run_baseline(&admin_url, seconds)?;
        let single = measure(&store, 1, seconds).await?;
        let batch = measure(&store, 10, seconds).await?;
        rounds.push((baseline, single, batch));
    }

    store.shutdown().await;
    pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    if let Some(c) = cluster {
        c.stop()?;
    }

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

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Baseline {
    single: u64,
    batch10: u64,
}

fn run_baseline(url: &str, seconds: u64) -> Result<Baseline> {
    let script = std::env::var_os("TEND_PG_BASELINE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/bench/pg-baseline")
        });
    if !script.exists() {
        return Err(format!(
            "the baseline script {} is missing (set TEND_PG_BASELINE)",
            script.display()
        )
        .into());
    }
    // The script's random stream ids collide now and then (a birthday
    // collision among ~100,000 inserts; more likely the longer it runs), and
    // pgbench then aborts with exit status 2. That says nothing about the
    // server: run it again.
    let mut attempt = 0;
    let output = loop {
        attempt += 1;
        eprintln!("running {} ({seconds} s per figure)…", script.display());
        let output = Command::new("bash")
            .arg(&script)
            .arg(url)
            .arg(APPENDERS.to_string())
            .arg(seconds.to_string())
            .output()?;
        if output.status.success() {
            break output;
        }
        if attempt == 5 {
            return Err(format!(
                "pg-baseline failed {attempt} times, last ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        eprintln!(
            "pg-baseline failed ({}): pgbench aborts on a collision of its random stream ids; retrying",
            output.status
        );
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = |key: &str| -> Result<u64> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("pg-baseline printed no {key}: {stdout}").into())
    };
    Ok(Baseline {
        single: value("baseline_single_events_per_s")?,
        batch10: value("baseline_batch10_events_per_s")?,
    })
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
