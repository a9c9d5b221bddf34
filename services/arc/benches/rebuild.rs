//! Rebuilding the arc projection from a generated log of at least a million
//! events (a realistic cohort: thousands of participants over whole and
//! partial arcs, from `tend-demo`), while GetArc is called through a real
//! gRPC server on a real socket.
//!
//! Prints:
//! - the log: events and participants;
//! - the baseline, measured in the same run: reading the same log by
//!   position with nothing folded or written (what any rebuild must pay);
//! - the rebuild: events per second, and the ratio to that baseline; it
//!   runs on one thread of its own, as `tend projections rebuild` does;
//! - GetArc latency (p50, p99) at a steady rate, idle and while the
//!   rebuild runs (open loop).
//!
//! Targets: at least 50,000 events/s; GetArc p99 under 5 ms during it.
//!
//! cargo bench -p tend-arc --bench rebuild
//!
//! Settings (environment): TEND_BENCH_EVENTS (default 1,000,000): the log's
//! least size; TEND_BENCH_GETARC_RATE (calls/s, default 200) and
//! TEND_BENCH_GETARC_CLIENTS (connections, default 4); TEND_BENCH_DATABASE_URL
//! to use an existing server; TEND_BENCH_DUTY (default 1: `--duty` of the
//! rebuild command), TEND_BENCH_PAGE (10,000), TEND_BENCH_READ_AHEAD (0),
//! TEND_BENCH_ONE_THREAD (1) to compare.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use tend_api::arc::v1 as pb;
use tend_api::arc::v1::arc_service_client::ArcServiceClient;
use tend_arc::{ArcApi, ArcProjection};
use tend_auth::{Authenticator, TokenHash, Tokens};
use tend_event_store::{EventStore, Filter, TenantId};
use tend_projections::{RebuildOptions, rebuild};
use tend_service_kit::SystemClock;
use tend_testkit::bench::{BenchServer, Result, env_number, quantile, read_by_position};
use tokio::net::TcpListener;
use tonic::Request;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "tend_bench_token";
const TENANT: &str = "bench";
/// Participants per generated batch (one seed each).
const CHUNK: usize = 500;

fn arc_request(participant: usize) -> Request<pb::GetArcRequest> {
    let mut r = Request::new(pb::GetArcRequest {
        participant_ref: format!("demo-{participant:05}"),
    });
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("ascii"),
    );
    r
}

/// GetArc at `rate` calls per second spread over `clients` connections,
/// random participants, until `stop`. Open loop: each call is its own task,
/// so a slow one does not delay the next and a stall is not hidden by
/// callers slowing down. Latency counts from when the call is sent (the
/// ticker's own lateness, up to a millisecond, is not the server's).
/// Latencies in ms.
async fn get_arcs(
    endpoint: String,
    clients: usize,
    rate: f64,
    participants: usize,
    stop: Arc<AtomicBool>,
) -> Result<Vec<f64>> {
    let mut connections = Vec::new();
    for _ in 0..clients.max(1) {
        let channel = Channel::from_shared(endpoint.clone())?.connect().await?;
        connections.push(ArcServiceClient::new(channel));
    }
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut calls = Vec::new();
    let mut x = 0x9e37_79b9_u64;
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut client = connections[i % connections.len()].clone();
        i += 1;
        let participant = x as usize % participants;
        let sent = Instant::now();
        calls.push(tokio::spawn(async move {
            client.get_arc(arc_request(participant)).await?;
            let l = sent.elapsed().as_secs_f64() * 1000.0;
            Ok::<_, tonic::Status>(l)
        }));
    }
    let mut all = Vec::with_capacity(calls.len());
    for c in calls {
        all.push(c.await??);
    }
    all.sort_by(f64::total_cmp);
    Ok(all)
}

#[tokio::main]
async fn main() -> Result<()> {
    let least: u64 = env_number("TEND_BENCH_EVENTS", 1_000_000);
    let clients: usize = env_number("TEND_BENCH_GETARC_CLIENTS", 4);
    let rate: f64 = env_number("TEND_BENCH_GETARC_RATE", 200.0);
    let server = BenchServer::start().await?;
    let db = server.database(16).await?;
    let store = EventStore::open(db.pool.clone(), Default::default()).await?;
    // One master key for the generator and the server's directory, so that
    // GetArc finds the demo references.
    let master = tend_privacy::MasterKeys::generate_entry("bench").map_err(|e| e.to_string())?;
    let directory = tend_privacy::Directory::open(db.pool.clone(), master.parse()?).await?;

    // The log: cohorts of CHUNK participants (demo-00000, ...) until it
    // holds at least `least` events.
    let started = Instant::now();
    let now = jiff::Timestamp::now();
    let (mut events, mut participants) = (0u64, 0usize);
    while events < least {
        // Each chunk is its own tenant-wide cohort; names continue.
        let report = tend_demo::generate(
            &store,
            &directory,
            &tend_demo::Options {
                // GetArc reads the first chunk's tenant.
                tenant: if participants == 0 {
                    TenantId::new(TENANT)?
                } else {
                    TenantId::new(format!("{TENANT}-{}", participants / CHUNK))?
                },
                participants: CHUNK,
                seed: participants as u64,
                now,
                concurrency: 32,
            },
        )
        .await?;
        events += report.events;
        participants += report.participants;
        eprintln!("generated {events} events, {participants} participants");
    }
    let generated = started.elapsed();
    sqlx::query("VACUUM ANALYZE events")
        .execute(&db.pool)
        .await?;

    // The baseline: the same log read by position, nothing folded.
    let filter = ArcProjection::new(
        store.clone(),
        Arc::new(SystemClock),
        Default::default(),
        false,
    );
    let filter: Filter = tend_projections::Projection::filter(&filter);
    let (scanned, scan_seconds) = read_by_position(&store, &filter).await?;
    let scan = scanned as f64 / scan_seconds;

    // A first build gives GetArc an active generation to read.
    let first = rebuild(&store, projection(&store), RebuildOptions::default()).await?;

    // The server, on a runtime of its own.
    let connect = (*db.pool.connect_options()).clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_thread = std::thread::spawn(move || -> Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .connect_with(connect)
                .await?;
            let mut tokens = Tokens::default();
            tokens.insert(TokenHash::of(TOKEN), TenantId::new(TENANT)?)?;
            let directory = tend_privacy::Directory::open(pool.clone(), master.parse()?).await?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let _ = ready_tx.send(format!("http://{}", listener.local_addr()?));
            Server::builder()
                .add_service(InterceptedService::new(
                    ArcApi::new(pool.clone(), directory, Arc::new(SystemClock)).into_server(),
                    Authenticator::new(tokens),
                ))
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async {
                        let _ = stop_rx.await;
                    },
                )
                .await?;
            pool.close().await;
            Ok(())
        })
    });
    let endpoint = ready_rx.await?;

    // Warm up (connections, the server's pool, the cache), then GetArc
    // idle, then while the measured rebuild runs.
    let stop = Arc::new(AtomicBool::new(false));
    let warm = load(endpoint.clone(), clients, rate, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    warm.join().map_err(|_| "the load thread panicked")??;
    let stop = Arc::new(AtomicBool::new(false));
    let idle = load(endpoint.clone(), clients, rate, stop.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let idle = idle.join().map_err(|_| "the load thread panicked")??;

    let stop = Arc::new(AtomicBool::new(false));
    let during = load(endpoint, clients, rate, stop.clone());
    let report = if env_number("TEND_BENCH_ONE_THREAD", 1u8) == 1 {
        let connect = (*db.pool.connect_options()).clone();
        std::thread::spawn(move || -> Result<tend_projections::RebuildReport> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async move {
                    let pool = PgPoolOptions::new()
                        .max_connections(4)
                        .connect_with(connect)
                        .await?;
                    let store = EventStore::open(pool.clone(), Default::default()).await?;
                    let report = rebuild(
                        &store,
                        projection(&store),
                        RebuildOptions {
                            read_ahead: env_number("TEND_BENCH_READ_AHEAD", 0u8) == 1,
                            duty: env_number("TEND_BENCH_DUTY", 1.0),
                            page: env_number("TEND_BENCH_PAGE", 10_000),
                            ..Default::default()
                        },
                    )
                    .await?;
                    store.shutdown().await;
                    pool.close().await;
                    Ok(report)
                })
        })
        .join()
        .map_err(|_| "the rebuild thread panicked")??
    } else {
        rebuild(&store, projection(&store), RebuildOptions::default()).await?
    };
    stop.store(true, Ordering::Relaxed);
    let during = during.join().map_err(|_| "the load thread panicked")??;

    let _ = stop_tx.send(());
    server_thread
        .join()
        .map_err(|_| "the server thread panicked")??;
    store.shutdown().await;
    directory.close().await;
    db.drop_database().await?;
    server.stop()?;

    let events_per_s = report.events_per_second();
    println!(
        "Arc projection rebuild; GetArc at {rate:.0}/s over {clients} connections through gRPC on a real socket"
    );
    println!(
        "  log: {events} events, {participants} participants (generated in {:.0} s)",
        generated.as_secs_f64()
    );
    println!("  baseline, the log read by position with nothing folded: {scan:.0} events/s");
    println!(
        "  rebuild alone: {:.0} events/s ({} events in {:.1} s)",
        first.events_per_second(),
        first.events,
        first.elapsed.as_secs_f64()
    );
    println!(
        "  rebuild while GetArc is called: {events_per_s:.0} events/s ({} events in {:.1} s) = {:.2}x the baseline read; target >= 50,000/s: {}",
        report.events,
        report.elapsed.as_secs_f64(),
        events_per_s / scan,
        if events_per_s >= 50_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    for (label, l) in [("idle", &idle), ("during the rebuild", &during)] {
        println!(
            "  GetArc {label}: {} calls, p50 {:.2} ms, p99 {:.2} ms{}",
            l.len(),
            quantile(l, 0.5),
            quantile(l, 0.99),
            if label == "idle" {
                String::new()
            } else {
                format!(
                    "; target p99 < 5 ms: {}",
                    if quantile(l, 0.99) < 5.0 {
                        "met"
                    } else {
                        "NOT met"
                    }
                )
            }
        );
    }
    Ok(())
}

/// The GetArc load on a thread and runtime of its own, as a client would
/// be: the rebuild's folding on the bench's runtime cannot delay its calls
/// in a shared queue, only compete for the CPU.
fn load(
    endpoint: String,
    clients: usize,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<Vec<f64>>> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(get_arcs(endpoint, clients, rate, CHUNK, stop))
    })
}

fn projection(store: &EventStore) -> ArcProjection {
    ArcProjection::new(
        store.clone(),
        Arc::new(SystemClock),
        Default::default(),
        false,
    )
}
