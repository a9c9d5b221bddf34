//! Exporting the demo log of at least a million events (one tenant, a
//! realistic cohort from `tend-demo`) with the release `tend export`, as an
//! analyst runs it, in a process of its own; beside, in the same run:
//!
//! - reading the same log by position with nothing folded or written (the
//!   rebuild benchmark's baseline: what any fold of the log pays);
//! - PostgreSQL's own `COPY (SELECT * FROM events ...) TO STDOUT`, read to
//!   the end by this process (raw rows, no types, nothing folded).
//!
//! Prints events per second, the ratio to the read-by-position rate, the
//! export's CPU and its peak resident memory; and the same export at half
//! the log's position, to show memory does not grow with the log.
//! Target: at least 0.5x the read-by-position rate.
//!
//! Needs the release `tend` binary: `cargo build --release -p tend` first.
//!
//! cargo bench -p tend-tests --bench export
//!
//! Settings (environment): TEND_BENCH_PARTICIPANTS (default 5,000: about
//! 1.1 million events), TEND_BENCH_DATABASE_URL to use an existing server.

use std::time::Instant;

use futures::StreamExt;
use sqlx::postgres::PgPoolCopyExt;
use tend_event_store::{Filter, TenantId};
use tend_testkit::bench::{BenchServer, Result, env_number, read_by_position};
use tend_tests::tend_binary;

#[path = "common/demo_log.rs"]
mod demo_log;
use demo_log::DemoLog;

const TENANT: &str = "bench";

/// What one `tend export` run printed.
struct Exported {
    events: u64,
    seconds: f64,
    cpu: f64,
    peak_mib: f64,
    bytes: u64,
}

fn run_export(url: &str, keys: &str, format: &str, at: u64) -> Result<Exported> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("export");
    let started = Instant::now();
    let o = std::process::Command::new(tend_binary())
        .args([
            "export",
            "--tenant",
            TENANT,
            "--recipient",
            "analysts",
            "--format",
            format,
            "--at-position",
            &at.to_string(),
            "--out",
        ])
        .arg(&out)
        .env("TEND_DATABASE_URL", url)
        .env("TEND_RECIPIENT_KEYS", keys)
        .env("TEND_LOG", "warn")
        .output()?;
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        return Err(format!("tend export: {}", String::from_utf8_lossy(&o.stderr)).into());
    }
    let number_after = |s: &str, key: &str| -> Option<f64> {
        let i = s.find(key)? + key.len();
        s[i..]
            .split_whitespace()
            .next()?
            .trim_matches(|c| c == '(' || c == ',')
            .parse()
            .ok()
    };
    let events = stdout
        .split_once(" participants (")
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or("no event count")?;
    let cpu = number_after(&stdout, "resources: ").ok_or("no CPU figure")?;
    let peak_mib = number_after(&stdout, "peak memory ").ok_or("no memory figure")?;
    let bytes = std::fs::read_dir(&out)?
        .map(|e| Ok(e?.metadata()?.len()))
        .sum::<std::io::Result<u64>>()?;
    Ok(Exported {
        events,
        seconds,
        cpu,
        peak_mib,
        bytes,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let participants: usize = env_number("TEND_BENCH_PARTICIPANTS", 5_000);
    let server = BenchServer::start().await?;
    let db = server.database(16).await?;
    let tenant = TenantId::new(TENANT)?;
    let DemoLog { store, report, .. } = demo_log::generate(&db, &tenant, participants).await?;
    let head: i64 = sqlx::query_scalar("SELECT max(position) FROM events")
        .fetch_one(&db.pool)
        .await?;
    let head = head as u64;

    // Baseline: the same log read by position, nothing folded.
    let filter = Filter::tenant(tenant.clone());
    let (scanned, scan_seconds) = read_by_position(&store, &filter).await?;
    let scan = scanned as f64 / scan_seconds;

    // PostgreSQL's COPY of the same rows, read to the end.
    let copy_started = Instant::now();
    let mut copied = 0u64;
    let mut rows = 0u64;
    {
        let mut stream = db
            .pool
            .copy_out_raw(
                "COPY (SELECT * FROM events WHERE tenant_id = 'bench' ORDER BY position) TO STDOUT",
            )
            .await?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            copied += chunk.len() as u64;
            rows += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        }
    }
    let copy_seconds = copy_started.elapsed().as_secs_f64();
    let copy = rows as f64 / copy_seconds;
    store.shutdown().await;

    let keys = tend_privacy::Recipients::generate_entry(TENANT, "analysts", "k1")
        .map_err(|e| e.to_string())?;
    let csv = run_export(&db.url, &keys, "csv", head)?;
    let parquet = run_export(&db.url, &keys, "parquet", head)?;
    let half = run_export(&db.url, &keys, "csv", head / 2)?;

    println!(
        "log: {scanned} events of {} participants (position {head})",
        report.participants
    );
    println!(
        "| | events/s | ratio to read by position | CPU per 1,000 events | peak RSS | output |"
    );
    println!("|---|---|---|---|---|---|");
    println!("| read by position (baseline) | {scan:.0} | 1.00x ({scan_seconds:.1} s) | | | |");
    println!(
        "| COPY events TO STDOUT | {copy:.0} | {:.2}x ({copy_seconds:.1} s) | | | {:.0} MiB |",
        copy / scan,
        copied as f64 / 1048576.0
    );
    for (name, e) in [
        ("tend export, CSV", &csv),
        ("tend export, Parquet", &parquet),
    ] {
        let rate = e.events as f64 / e.seconds;
        println!(
            "| {name} | {rate:.0} | **{:.2}x** ({:.1} s) | {:.2} ms | {:.0} MiB | {:.0} MiB |",
            rate / scan,
            e.seconds,
            e.cpu * 1000.0 / (e.events as f64 / 1000.0),
            e.peak_mib,
            e.bytes as f64 / 1048576.0
        );
    }
    println!(
        "| tend export, CSV, at half the position | {:.0} | {:.2}x ({:.1} s, {} events) | | {:.0} MiB | |",
        half.events as f64 / half.seconds,
        half.events as f64 / half.seconds / scan,
        half.seconds,
        half.events,
        half.peak_mib
    );
    db.drop_database().await?;
    server.stop()?;
    Ok(())
}
