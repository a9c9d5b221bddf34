//! `LogPractice` through a real gRPC server on a real socket, beside
//! `../shared/bench/pg-baseline` run against the same PostgreSQL in the same
//! run:
//! - calls per second and latency at 8 and at 64 concurrent clients (each
//!   its own connection, each call a new entry, one in four with a note);
//! - latency at a fixed offered rate of half the baseline's single-event
//!   rate, over 8 and over 64 connections (open loop: latency counts from
//!   when the call was due, so a stall is not hidden by the callers slowing
//!   down);
//! - the same calls in process, without gRPC, to show what the socket costs.
//!
//! Client, server and PostgreSQL share the machine: on a small one the
//! clients' own CPU is part of what is measured.
//!
//! Target: calls per second at least 1.0x the baseline's single-event
//! rate; p99 under 10 ms at half that rate.
//!
//! cargo bench -p tend-practice-log --bench log_practice
//!
//! Settings (environment): TEND_BENCH_SECONDS (default 5) per figure;
//! TEND_BENCH_DATABASE_URL to use an existing server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use sqlx::postgres::PgPoolOptions;
use tend_api::practice::v1 as pb;
use tend_api::practice::v1::practice_log_service_client::PracticeLogServiceClient;
use tend_api::practice::v1::practice_log_service_server::PracticeLogService;
use tend_auth::{Authenticator, Caller, TokenHash, Tokens};
use tend_event_store::{EventStore, TenantId};
use tend_practice_log::{PracticeLogApi, PracticeOptions};
use tend_privacy::{Directory, MasterKeys};
use tend_service_kit::SystemClock;
use tend_testkit::bench::{BenchServer, Result, env_number, pg_baseline, quantile};
use tokio::net::TcpListener;
use tonic::Request;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use uuid::Uuid;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "tend_bench_token";
const PARTICIPANTS: usize = 1000;
const NOTE: &str = "The critic said I should have done more today. What I would say to a \
                    friend: you showed up, and that counts. Hand on chest, three breaths, \
                    and the tightness eased a little. Tomorrow I will try the break before \
                    the team meeting instead of after it, when it is already too late.";

fn request(n: u64) -> Request<pb::LogPracticeRequest> {
    let started = Timestamp::now() - SignedDuration::from_mins(1);
    let with_note = n.is_multiple_of(4);
    let mut r = Request::new(pb::LogPracticeRequest {
        participant_ref: format!("participant-{}", n as usize % PARTICIPANTS),
        entry_id: Uuid::new_v4().to_string(),
        practice: Some(pb::PracticeDetails {
            kind: if with_note {
                "journaling-reframe"
            } else {
                "soothing-touch"
            }
            .into(),
            started_at: started.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            minutes: 2 + (n % 20) as u32,
            note: if with_note {
                NOTE.as_bytes().to_vec()
            } else {
                Vec::new()
            },
            ..Default::default()
        }),
    });
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("ascii"),
    );
    r
}

async fn clients(endpoint: &str, n: usize) -> Result<Vec<PracticeLogServiceClient<Channel>>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = Channel::from_shared(endpoint.to_owned())?.connect().await?;
        clients.push(PracticeLogServiceClient::new(channel));
    }
    Ok(clients)
}

struct Figures {
    calls_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn figures(mut latencies: Vec<f64>, calls: usize, seconds: f64) -> Figures {
    latencies.sort_by(f64::total_cmp);
    Figures {
        calls_per_s: calls as f64 / seconds,
        p50_ms: quantile(&latencies, 0.5),
        p99_ms: quantile(&latencies, 0.99),
    }
}

/// The same calls made in process, without gRPC: what the socket costs.
async fn in_process(api: &PracticeLogApi, n: usize, seconds: u64) -> Result<Figures> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|c| {
            let (api, stop) = (api.clone(), stop.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = c as u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut r = request(i);
                    r.extensions_mut().insert(Caller {
                        tenant: TenantId::new("bench").expect("tenant"),
                    });
                    let t = Instant::now();
                    api.log_practice(r).await?;
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    i += n as u64;
                }
                Ok::<_, tonic::Status>(latencies)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let calls = all.len();
    Ok(figures(all, calls, elapsed))
}

/// Each client calls again as soon as its previous call returns.
async fn closed_loop(endpoint: &str, n: usize, seconds: u64) -> Result<Figures> {
    let clients = clients(endpoint, n).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut client)| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = c as u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    client.log_practice(request(i)).await?;
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    i += n as u64;
                }
                Ok::<_, tonic::Status>(latencies)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let calls = all.len();
    Ok(figures(all, calls, elapsed))
}

/// Calls offered at a fixed rate over `n` connections, whatever the
/// latency; each latency counts from when its call was due.
async fn open_loop(endpoint: &str, n: usize, rate: f64, seconds: u64) -> Result<Figures> {
    let clients = clients(endpoint, n).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::result::Result<f64, String>>();
    let started = Instant::now();
    let total = (rate * seconds as f64) as u64;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while sent < total {
        tick.tick().await;
        // Call k is due at k / rate: every call due by now, the first at 0.
        let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while sent < due {
            let intended = started + Duration::from_secs_f64(sent as f64 / rate);
            let mut client = clients[sent as usize % n].clone();
            let tx = tx.clone();
            let i = sent;
            tokio::spawn(async move {
                let result = client
                    .log_practice(request(i))
                    .await
                    .map(|_| intended.elapsed().as_secs_f64() * 1000.0)
                    .map_err(|e| e.to_string());
                let _ = tx.send(result);
            });
            sent += 1;
        }
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(total as usize);
    while let Some(r) = rx.recv().await {
        latencies.push(r?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let calls = latencies.len();
    Ok(figures(latencies, calls, elapsed))
}

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: u64 = env_number("TEND_BENCH_SECONDS", 5);
    let server = BenchServer::start().await?;
    let baseline_8 = pg_baseline(&server.admin_url, 8, seconds)?;
    let baseline_64 = pg_baseline(&server.admin_url, 64, seconds)?;
    let db = server.database(16).await?;
    // The server gets a runtime (threads) of its own, as it would in its own
    // process: the load generator's tasks then cannot delay its tasks in a
    // shared queue, only compete for the CPU.
    let connect = (*db.pool.connect_options()).clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_thread = std::thread::spawn(move || -> Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .connect_with(connect)
                .await?;
            let store = EventStore::open(pool.clone(), Default::default()).await?;
            let master: MasterKeys = MasterKeys::generate_entry("bench")
                .map_err(|e| e.to_string())?
                .parse()?;
            let directory = Directory::open(pool.clone(), master).await?;
            let api = PracticeLogApi::new(
                store.clone(),
                directory.clone(),
                Arc::new(SystemClock),
                PracticeOptions::default(),
            );
            let mut tokens = Tokens::default();
            tokens.insert(TokenHash::of(TOKEN), TenantId::new("bench")?)?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let endpoint = format!("http://{}", listener.local_addr()?);
            let _ = ready_tx.send((endpoint, api.clone()));
            Server::builder()
                .add_service(InterceptedService::new(
                    api.into_server(),
                    Authenticator::new(tokens),
                ))
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async {
                        let _ = stop_rx.await;
                    },
                )
                .await?;
            store.shutdown().await;
            directory.close().await;
            pool.close().await;
            Ok(())
        })
    });
    let (endpoint, api) = ready_rx.await?;

    // Warm up: connections, the pool, every participant's data key.
    closed_loop(&endpoint, 8, 1).await?;

    let local = in_process(&api, 8, seconds).await?;
    let c8 = closed_loop(&endpoint, 8, seconds).await?;
    let c64 = closed_loop(&endpoint, 64, seconds).await?;
    let half = baseline_8.single as f64 / 2.0;
    let open8 = open_loop(&endpoint, 8, half, seconds).await?;
    let open64 = open_loop(&endpoint, 64, half, seconds).await?;

    let _ = stop_tx.send(());
    server_thread
        .join()
        .map_err(|_| "the server thread panicked")??;
    db.drop_database().await?;
    server.stop()?;

    println!(
        "LogPractice through gRPC on a real socket ({seconds} s per figure; 1 call in 4 with a note)"
    );
    println!(
        "pg-baseline single-event inserts/s: {} at 8 clients, {} at 64",
        baseline_8.single, baseline_64.single
    );
    for (clients, f, base) in [(8, &c8, baseline_8.single), (64, &c64, baseline_64.single)] {
        println!(
            "{clients:>2} clients: {:>8.0} calls/s = {:.2}x baseline; p50 {:.2} ms, p99 {:.2} ms",
            f.calls_per_s,
            f.calls_per_s / base as f64,
            f.p50_ms,
            f.p99_ms
        );
    }
    println!(
        "in process, no socket, 8 callers: {:.0} calls/s = {:.2}x baseline; p50 {:.2} ms, p99 {:.2} ms",
        local.calls_per_s,
        local.calls_per_s / baseline_8.single as f64,
        local.p50_ms,
        local.p99_ms
    );
    for (connections, open) in [(8, &open8), (64, &open64)] {
        println!(
            "offered {half:.0} calls/s (half the 8-client baseline) over {connections} connections: achieved {:.0}/s; p50 {:.2} ms, p99 {:.2} ms (target p99 < 10 ms)",
            open.calls_per_s, open.p50_ms, open.p99_ms
        );
    }
    Ok(())
}
