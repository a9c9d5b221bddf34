//! A FHIR Bulk Data export of the demo cohort through the release server
//! as deployed (`tend serve` with its scheduler, arc projection and
//! webhooks on, FHIR on its port), pulled over HTTP by this process as an
//! integration engine would: kick-off, poll, download. Beside it, in the
//! same run, the analysts' CSV export (`tend export`) of the same snapshot
//! (the FHIR manifest's log position).
//!
//! Prints, for both, the wall time, the events folded per second, what was
//! written per second (resources; rows) and the CPU per 1,000 events (the
//! server's for FHIR, from /proc; the `tend export` process's for CSV).
//! Target: FHIR at least 0.5x the CSV export.
//!
//! Needs the release `tend` binary: `cargo build --release -p tend` first.
//!
//! cargo bench -p tend-tests --bench fhir
//!
//! Settings (environment): TEND_BENCH_PARTICIPANTS (default 2,000: about
//! 440,000 events).

use std::time::{Duration, Instant};

use serde_json::Value;
use tend_event_store::TenantId;
use tend_testkit::bench::{BenchServer, Result, env_number};
use tend_tests::load::cpu_seconds;
use tend_tests::{TendProcess, tend_binary};

#[path = "common/demo_log.rs"]
mod demo_log;
use demo_log::DemoLog;

const TENANT: &str = "bench";
const TOKEN: &str = "tend_bench_token_for_fhir";

async fn text(r: reqwest::Response) -> Result<String> {
    Ok(r.text().await?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let participants: usize = env_number("TEND_BENCH_PARTICIPANTS", 2_000);
    let server = BenchServer::start().await?;
    let db = server.database(16).await?;
    let DemoLog {
        store,
        master,
        report,
    } = demo_log::generate(&db, &TenantId::new(TENANT)?, participants).await?;
    store.shutdown().await;

    let tend = TendProcess::start(&[
        ("TEND_DATABASE_URL", &db.url),
        ("TEND_MASTER_KEYS", &master),
        (
            "TEND_AUTH_TOKENS",
            &format!("{TENANT}={}", tend_auth::TokenHash::of(TOKEN)),
        ),
        ("TEND_FHIR_LISTEN", "127.0.0.1:0"),
    ]);
    let base = tend
        .banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("FHIR R4: "))
        .and_then(|l| l.split(' ').next())
        .ok_or("no FHIR endpoint in the banner")?
        .to_owned();
    // The server's background work on a fresh log (the arc projection
    // catching up, the scheduler's first rounds) is not the export's: wait
    // until it idles (under 2% of a core over two seconds).
    let settle = Instant::now();
    loop {
        let before = cpu_seconds(tend.pid())?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        if cpu_seconds(tend.pid())? - before < 0.04 || settle.elapsed().as_secs() > 600 {
            break;
        }
    }
    eprintln!(
        "server idle after {:.0} s of background work",
        settle.elapsed().as_secs_f64()
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let get = |url: &str| http.get(url).bearer_auth(TOKEN);

    let cpu_before = cpu_seconds(tend.pid())?;
    let kicked = Instant::now();
    let r = get(&format!("{base}/$export"))
        .header("prefer", "respond-async")
        .header("accept", "application/fhir+json")
        .send()
        .await?;
    let status_url = r
        .headers()
        .get("content-location")
        .ok_or("no Content-Location")?
        .to_str()?
        .to_owned();
    // Polled often (not as Retry-After says) so as to time the build.
    let manifest: Value = loop {
        let r = get(&status_url).send().await?;
        match r.status().as_u16() {
            202 => tokio::time::sleep(Duration::from_millis(50)).await,
            200 => break serde_json::from_str(&text(r).await?)?,
            other => return Err(format!("status {other}: {}", text(r).await?).into()),
        }
    };
    let fhir_seconds = kicked.elapsed().as_secs_f64();
    let fhir_cpu = cpu_seconds(tend.pid())? - cpu_before;
    let position = manifest["extension"]["https://tend.dev/fhir/log-position"]
        .as_u64()
        .ok_or("no position")?;
    let downloaded = Instant::now();
    let (mut resources, mut bytes) = (0u64, 0u64);
    for f in manifest["output"].as_array().ok_or("no output")? {
        let body = text(get(f["url"].as_str().unwrap_or_default()).send().await?).await?;
        resources += body.lines().count() as u64;
        bytes += body.len() as u64;
    }
    let download_seconds = downloaded.elapsed().as_secs_f64();
    drop(tend);

    // The CSV export of the same snapshot.
    let keys = tend_privacy::Recipients::generate_entry(TENANT, "analysts", "k1")
        .map_err(|e| e.to_string())?;
    let out = tempfile::tempdir()?;
    let csv_started = Instant::now();
    let o = std::process::Command::new(tend_binary())
        .args(["export", "--tenant", TENANT, "--recipient", "analysts"])
        .args(["--format", "csv", "--at-position", &position.to_string()])
        .arg("--out")
        .arg(out.path().join("csv"))
        .env("TEND_DATABASE_URL", &db.url)
        .env("TEND_RECIPIENT_KEYS", &keys)
        .env("TEND_LOG", "warn")
        .output()?;
    let csv_seconds = csv_started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        return Err(format!("tend export: {}", String::from_utf8_lossy(&o.stderr)).into());
    }
    let events: u64 = stdout
        .split_once(" participants (")
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or("no event count")?;
    let rows: u64 = stdout
        .lines()
        .filter(|l| l.trim_start().contains(".csv"))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.next()?;
            words.next()?.parse::<u64>().ok()
        })
        .sum();
    let csv_bytes = std::fs::read_dir(out.path().join("csv"))?
        .map(|e| Ok(e?.metadata()?.len()))
        .sum::<std::io::Result<u64>>()?;
    let csv_cpu: f64 = stdout
        .split_once("resources: ")
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or("no CPU figure")?;

    println!(
        "log: {events} events of {} participants, exported at position {position}",
        report.participants
    );
    println!("| | wall | events/s | written/s | ratio | CPU per 1,000 events |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| `tend export`, CSV (baseline) | {csv_seconds:.2} s | {:.0} | {:.0} rows | 1.00x | {:.1} ms |",
        events as f64 / csv_seconds,
        rows as f64 / csv_seconds,
        csv_cpu * 1000.0 / (events as f64 / 1000.0)
    );
    println!(
        "| FHIR `$export`, kick-off to manifest | {fhir_seconds:.2} s | {:.0} | {:.0} resources | **{:.2}x** | {:.1} ms (server) |",
        events as f64 / fhir_seconds,
        resources as f64 / fhir_seconds,
        csv_seconds / fhir_seconds,
        fhir_cpu * 1000.0 / (events as f64 / 1000.0)
    );
    println!(
        "| download of the NDJSON | {download_seconds:.2} s | | {:.0} MiB/s | | |",
        bytes as f64 / 1048576.0 / download_seconds
    );
    println!(
        "{resources} resources in {:.0} MiB of NDJSON; {rows} CSV rows in {:.0} MiB",
        bytes as f64 / 1048576.0,
        csv_bytes as f64 / 1048576.0
    );
    db.drop_database().await?;
    server.stop()?;
    Ok(())
}
