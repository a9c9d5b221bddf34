//! The scheduler's costs, beside `../shared/bench/pg-baseline` run against
//! the same PostgreSQL in the same run:
//! - expanding one integration-arc enrollment into its schedule (pure),
//!   afresh and with its slots kept as the scheduler's rounds keep them;
//! - `Enroll` calls (in process, no socket) from 8 concurrent callers;
//! - `GetSchedule` latency for one participant;
//! - a scheduler round after downtime: every participant's due and missed
//!   events recorded and schedules rebuilt.
//!
//! cargo bench -p tend-protocol-scheduler --bench scheduler
//!
//! Settings (environment): TEND_BENCH_SECONDS (default 5) for the enroll
//! and baseline figures; TEND_BENCH_DATABASE_URL to use an existing server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tend_api::scheduler::v1 as pb;
use tend_api::scheduler::v1::protocol_scheduler_service_server::ProtocolSchedulerService;
use tend_auth::Caller;
use tend_domain::enrollment::{self, Participant};
use tend_domain::protocol::ProtocolSet;
use tend_domain::protocol::built_in;
use tend_domain::schedule::Placements;
use tend_domain::time::{Zone, parse_local_date_time};
use tend_event_store::{EventStore, TenantId};
use tend_protocol_scheduler::{SchedulerApi, Worker, WorkerOptions};
use tend_service_kit::ManualClock;
use tend_testkit::bench::{BenchServer, Result, env_number, pg_baseline, quantile};
use tonic::Request;
use uuid::Uuid;

const CALLERS: usize = 8;
const ZONES: [&str; 4] = [
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
];

fn req<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.extensions_mut().insert(Caller {
        tenant: TenantId::new("bench").expect("tenant"),
    });
    r
}

/// Runs scheduler rounds until one finds nothing to do: (streams, events)
/// and the seconds it took.
async fn drain(worker: &Worker) -> Result<((usize, usize), f64)> {
    let t = Instant::now();
    let mut done = (0, 0);
    loop {
        let round = worker.run_once().await?;
        if round.streams == 0 {
            return Ok((done, t.elapsed().as_secs_f64()));
        }
        done = (done.0 + round.streams, done.1 + round.events);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: u64 = env_number("TEND_BENCH_SECONDS", 5);

    // 1. Pure expansion.
    let arc = built_in("integration-arc-8w").expect("built in").clone();
    let now: Timestamp = "2026-06-01T00:00:00Z".parse()?;
    let enrolled = enrollment::decide(
        &Participant::default(),
        enrollment::Command::Enroll {
            enrollment_id: Uuid::new_v4(),
            protocol: arc.clone(),
            requested_version: 0,
            session_at: parse_local_date_time("session", "2026-07-01T10:00")?,
            time_zone: Zone::new("America/New_York")?,
            now,
        },
        &ProtocolSet::default(),
    )?;
    let state = enrolled
        .iter()
        .fold(Participant::default(), enrollment::evolve);
    let e = &state.enrollments[0];
    let n = 2000;
    let t = Instant::now();
    let mut occurrences = 0;
    for _ in 0..n {
        occurrences += e.schedule(&ProtocolSet::default(), now)?.len();
    }
    let expand_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    // As the scheduler's rounds do it: the slots kept from the last round.
    let mut placements = Placements::default();
    let t = Instant::now();
    for _ in 0..n {
        e.schedule_kept(&ProtocolSet::default(), now, &mut placements)?;
    }
    let kept_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;

    let server = BenchServer::start().await?;
    let baseline = pg_baseline(&server.admin_url, CALLERS, seconds)?;
    let db = server.database(16).await?;
    let store = EventStore::open(db.pool.clone(), Default::default()).await?;
    let clock = ManualClock::new(now);
    let master = tend_privacy::MasterKeys::generate_entry("bench").map_err(|e| e.to_string())?;
    let directory = tend_privacy::Directory::open(db.pool.clone(), master.parse()?).await?;
    let api = SchedulerApi::new(store.clone(), directory.clone(), Arc::new(clock.clone()));

    // 2. Enroll, 8 callers, each a new participant.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let (api, stop) = (api.clone(), stop.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    api.enroll(req(pb::EnrollRequest {
                        request_id: Uuid::new_v4().to_string(),
                        participant_ref: format!("P-{c}-{i}"),
                        protocol_id: "integration-arc-8w".into(),
                        protocol_version: 0,
                        session_local_time: "2026-07-01T10:00".into(),
                        time_zone: ZONES[i % ZONES.len()].into(),
                    }))
                    .await?;
                    latencies.push(ms(t.elapsed()));
                    i += 1;
                }
                Ok::<_, tonic::Status>(latencies)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut enroll_ms = Vec::new();
    for task in tasks {
        enroll_ms.extend(task.await??);
    }
    let enroll_elapsed = started.elapsed().as_secs_f64();
    enroll_ms.sort_by(f64::total_cmp);
    let participants = enroll_ms.len();

    // 3. GetSchedule for one participant.
    let enrollment_id = api
        .enroll(req(pb::EnrollRequest {
            request_id: Uuid::new_v4().to_string(),
            participant_ref: "P-read".into(),
            protocol_id: "integration-arc-8w".into(),
            protocol_version: 0,
            session_local_time: "2026-07-01T10:00".into(),
            time_zone: "Europe/London".into(),
        }))
        .await?
        .into_inner()
        .enrollment
        .expect("enrollment")
        .enrollment_id;
    let mut read_ms = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        api.get_schedule(req(pb::GetScheduleRequest {
            enrollment_id: enrollment_id.clone(),
            from: None,
            to: None,
        }))
        .await?;
        read_ms.push(ms(t.elapsed()));
    }
    read_ms.sort_by(f64::total_cmp);

    // 4. The scheduler's first round: every schedule built; then two days
    // of downtime, caught up in one go.
    let worker = Worker::new(
        store.clone(),
        Arc::new(clock.clone()),
        WorkerOptions {
            miss_grace: jiff::SignedDuration::ZERO,
            ..WorkerOptions::default()
        },
    );
    let (first, first_s) = drain(&worker).await?;
    clock.set("2026-06-04T23:00:00Z".parse()?);
    let (catch_up, catch_up_s) = drain(&worker).await?;

    store.shutdown().await;
    directory.close().await;
    db.drop_database().await?;
    server.stop()?;

    let enroll_rate = participants as f64 / enroll_elapsed;
    let event_rate = catch_up.1 as f64 / catch_up_s;
    println!();
    println!(
        "scheduler, same server as pg-baseline ({} single-event inserts/s with {CALLERS} clients, {seconds} s):",
        baseline.single
    );
    println!(
        "  expand one integration-arc schedule ({} occurrences): {expand_us:.0} µs; with its slots kept: {kept_us:.0} µs",
        occurrences / n
    );
    println!(
        "  Enroll, {CALLERS} callers in process: {enroll_rate:.0} /s = {:.2}x baseline single-event rate; p50 {:.2} ms p99 {:.2} ms ({participants} participants)",
        enroll_rate / baseline.single as f64,
        quantile(&enroll_ms, 0.5),
        quantile(&enroll_ms, 0.99)
    );
    println!(
        "  GetSchedule (141 occurrences): p50 {:.2} ms p99 {:.2} ms",
        quantile(&read_ms, 0.5),
        quantile(&read_ms, 0.99)
    );
    println!(
        "  first round, every schedule built: {} participants in {first_s:.2} s = {:.0} participants/s",
        first.0,
        first.0 as f64 / first_s
    );
    println!(
        "  after two days down: {} due/missed events for {} participants in {catch_up_s:.2} s = {event_rate:.0} events/s = {:.2}x baseline; {:.0} participants/s",
        catch_up.1,
        catch_up.0,
        event_rate / baseline.single as f64,
        catch_up.0 as f64 / catch_up_s
    );
    Ok(())
}
