//! What a logged practice costs the server as it is deployed: the release
//! `tend` binary as a process of its own (scheduler, arc projection and
//! webhook dispatcher on, as by default), this bench as the load generator
//! in another process, and one durable PostgreSQL cluster (fsync on) that
//! also runs, in the same run, `../shared/bench/pg-baseline` and plain
//! INSERTs into Tend's own `events` table (with every index Tend has).
//!
//! For each figure it reports calls (or events) per second, p50 and p99,
//! and the CPU microseconds per event of `tend` and of PostgreSQL (all of
//! the cluster's processes, from /proc), counted from the start of the
//! load until the background work has caught up with it: a practice's
//! cost includes the scheduler round and the projection it causes.
//!
//! 1. A small log: 8 and 64 clients, and p99 at half the 8-client rate.
//! 2. Participants with 20, 200 and 2,000 events of history: each logs
//!    one practice a second (round robin, so every call is a scheduler
//!    round's work for its participant), CPU per call net of the idle cost.
//!    Each group's history is loaded, then the database vacuumed, as part
//!    4's log is after its fill.
//! 3. Idle: CPU per second with no calls, as participants are added.
//! 4. The log filled to `TEND_BENCH_LOG_EVENTS` (default 10 million) other
//!    events, then 1 again on a server restarted after the fill.
//!
//! Parts 1 and 4 first log one practice per participant, measured on its
//! own: after part 4's restart that is where the server folds each
//! participant again, so the figures after it compare a server that has
//! seen each participant in both parts.
//!
//! Needs the release `tend` binary: `cargo build --release -p tend` first
//! (or `TEND_BIN`).
//!
//! cargo bench -p tend-tests --bench deployed
//!
//! Settings (environment): TEND_BENCH_SECONDS (default 10) per figure;
//! TEND_BENCH_PARTICIPANTS (default 1000) for part 1;
//! TEND_BENCH_HISTORY_PARTICIPANTS (default 100) per history size;
//! TEND_BENCH_LOG_EVENTS (default 10000000, 0 to skip part 4);
//! TEND_BENCH_PARTS (default 124: the parts to run);
//! TEND_BENCH_DATABASE_URL to use an existing server on this machine.
//! The server inherits the rest of the environment, so TEND_* settings
//! reach it; with TEND_ARC_PROJECTION=false nothing waits for the arc.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tend_api::practice::v1 as pb;
use tend_api::practice::v1::practice_log_service_client::PracticeLogServiceClient;
use tend_api::scheduler::v1 as spb;
use tend_api::scheduler::v1::protocol_scheduler_service_client::ProtocolSchedulerServiceClient;
use tend_testkit::bench::{BenchServer, Result, env_number, pg_baseline, quantile};
use tend_tests::load::{cpu_seconds, stat_fields, ticks_per_second};
use tend_tests::{TendProcess, bearer, practice_request_at};
use tonic::transport::Channel;

const TOKEN: &str = "tend_bench_token_deployed";
const TENANT: &str = "bench";
const ARC: &str = "integration-arc-8w";
const SMALL: &str = "1. small log:";
/// The practice rows of pg-baseline, as Tend stores one (its payload).
const PAYLOAD: &str = r#"{"participant_id":"3f1c2a8e-8d55-4c7e-9d1b-2f6e5b1a9c01","practice":"self_compassion_break","minutes":10,"occurred_at":"2026-11-20T08:15:00Z","note":"b3BhcXVlIGNpcGhlcnRleHQgb2YgYSBqb3VybmFsIGVudHJ5IGFib3V0IHNlbGYtY3JpdGljaXNt"}"#;

/// CPU seconds used so far by `tend` and by every PostgreSQL process.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    tend: f64,
    pg: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            tend: self.tend - o.tend,
            pg: self.pg - o.pg,
        }
    }
}

/// The cluster: its postmaster, which reaps every backend (so their time
/// moves to its children's fields when they exit), and its live children.
struct Postgres {
    postmaster: u32,
}

impl Postgres {
    async fn find(pool: &PgPool) -> Result<Self> {
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(pool)
            .await?;
        let fields = stat_fields(backend as u32).ok_or("the database is not on this machine")?;
        let postmaster: u32 = fields[1].parse()?;
        // Asked now, so that a failure shows here; then it is kept.
        ticks_per_second()?;
        Ok(Self { postmaster })
    }

    fn cpu_seconds(&self) -> f64 {
        let mut ticks = 0.0;
        if let Some(f) = stat_fields(self.postmaster) {
            // utime, stime, cutime, cstime
            ticks += f[11..15]
                .iter()
                .map(|t| t.parse::<f64>().unwrap_or(0.0))
                .sum::<f64>();
        }
        let parent = self.postmaster.to_string();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Some(f) = stat_fields(pid)
                    && f[1] == parent
                {
                    ticks += f[11..13]
                        .iter()
                        .map(|t| t.parse::<f64>().unwrap_or(0.0))
                        .sum::<f64>();
                }
            }
        }
        ticks / ticks_per_second().unwrap_or(100.0)
    }
}

struct Probe {
    pool: PgPool,
    pg: Postgres,
    /// The server's process, replaced when it is restarted.
    tend_pid: std::sync::atomic::AtomicU32,
}

impl Probe {
    fn cpu(&self) -> Cpu {
        Cpu {
            tend: cpu_seconds(self.tend_pid.load(Ordering::Relaxed)).unwrap_or(0.0),
            pg: self.pg.cpu_seconds(),
        }
    }

    /// Blocks of each `events` index read from outside shared buffers so
    /// far (from the OS cache or the disk).
    async fn index_reads(&self) -> Result<BTreeMap<String, i64>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT indexrelname::text, coalesce(idx_blks_read, 0)::bigint
             FROM pg_statio_user_indexes WHERE relname = 'events'",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Waits until the scheduler and the arc projection have read the whole
    /// log and the scheduler has processed every stream it saw change.
    async fn idle(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(3600);
        // Builds from before migration 0011 have no `scheduler_behind`;
        // on later ones the version columns are in no index, and comparing
        // them would read the whole table.
        let behind_table: bool =
            sqlx::query_scalar("SELECT to_regclass('scheduler_behind') IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        let pending = if behind_table {
            "SELECT count(*) FROM scheduler_behind"
        } else {
            "SELECT count(*) FROM scheduler_streams
             WHERE seen_version > processed_version
                OR practice_seen_version > practice_processed_version"
        };
        let wait_for_arc = arc_on();
        loop {
            let (head, scheduler, arc, pending): (i64, i64, i64, i64) =
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT (SELECT coalesce(max(position), 0) FROM events),
                            (SELECT coalesce(max(position), 0) FROM scheduler_checkpoint),
                            (SELECT coalesce(max(c.position), 0) FROM projections p
                               JOIN projection_checkpoints c
                                 ON c.name = p.name AND c.generation = p.active_generation
                              WHERE p.name = 'arc'),
                            ({pending})"
                )))
                .fetch_one(&self.pool)
                .await?;
            if scheduler >= head && (arc >= head || !wait_for_arc) && pending == 0 {
                // Statistics reach the shared counters within a second.
                tokio::time::sleep(Duration::from_millis(1100)).await;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "background work did not catch up: head {head}, scheduler {scheduler}, arc {arc}, {pending} streams pending"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// CPU per second with no calls, over `seconds`.
    async fn idle_rate(&self, seconds: f64) -> Result<Cpu> {
        self.idle().await?;
        let before = self.cpu();
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        let d = self.cpu() - before;
        Ok(Cpu {
            tend: d.tend / seconds,
            pg: d.pg / seconds,
        })
    }
}

/// Whether the server runs the arc projection: it inherits the bench's
/// environment, so `TEND_ARC_PROJECTION=false` there turns it off (to see
/// what the scheduler alone costs), and then nothing waits for it.
fn arc_on() -> bool {
    std::env::var("TEND_ARC_PROJECTION").as_deref() != Ok("false")
}

/// One measured figure.
#[derive(Debug, Clone, Default)]
struct Figure {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU µs per event, load plus the background work it caused.
    tend_us: f64,
    pg_us: f64,
    index_reads_per_event: f64,
    /// The same, by index.
    index_reads_by_index: BTreeMap<String, f64>,
}

impl Figure {
    fn total_us(&self) -> f64 {
        self.tend_us + self.pg_us
    }
}

/// Latencies and counts of a load run.
struct Load {
    latencies: Vec<f64>,
    events: u64,
    seconds: f64,
}

/// Runs `load`, waits for the background work it caused, and charges all
/// the CPU used meanwhile (less `idle` per second) to its events.
async fn measure<F>(probe: &Probe, idle: Cpu, load: F) -> Result<Figure>
where
    F: std::future::Future<Output = Result<Load>>,
{
    probe.idle().await?;
    let reads = probe.index_reads().await?;
    let cpu = probe.cpu();
    let started = Instant::now();
    let mut run = load.await?;
    probe.idle().await?;
    let elapsed = started.elapsed().as_secs_f64();
    let used = probe.cpu() - cpu;
    let by_index: BTreeMap<String, i64> = probe
        .index_reads()
        .await?
        .into_iter()
        .map(|(index, n)| {
            let before = reads.get(&index).copied().unwrap_or(0);
            (index, n - before)
        })
        .collect();
    let reads: i64 = by_index.values().sum();
    run.latencies.sort_by(f64::total_cmp);
    let events = run.events.max(1) as f64;
    Ok(Figure {
        per_second: run.events as f64 / run.seconds,
        p50_ms: quantile(&run.latencies, 0.5),
        p99_ms: quantile(&run.latencies, 0.99),
        tend_us: (used.tend - idle.tend * elapsed).max(0.0) * 1e6 / events,
        pg_us: (used.pg - idle.pg * elapsed).max(0.0) * 1e6 / events,
        index_reads_per_event: reads as f64 / events,
        index_reads_by_index: by_index
            .into_iter()
            .map(|(index, n)| (index, n as f64 / events))
            .collect(),
    })
}

/// A practice entry of `participant`, `minutes_ago` minutes ago.
fn practice(participant: &str, minutes_ago: u64, n: u64) -> pb::LogPracticeRequest {
    let kind = if n.is_multiple_of(3) {
        "self-compassion-break"
    } else {
        "soothing-touch"
    };
    practice_request_at(
        participant,
        jiff::SignedDuration::from_mins(minutes_ago.min(40_000) as i64),
        kind,
        2 + (n % 20) as u32,
    )
}

async fn channels(endpoint: &str, n: usize) -> Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(Channel::from_shared(endpoint.to_owned())?.connect().await?);
    }
    Ok(out)
}

/// How long a closed loop runs.
#[derive(Clone, Copy)]
enum Run {
    Seconds(f64),
    /// One call per participant.
    OnePerParticipant,
}

/// `clients` callers, each calling again as soon as its call returns, for
/// as long as `run` says; call k of client c logs for
/// `participants[(c + k * clients) % len]`.
async fn closed_loop(
    endpoint: &str,
    participants: Arc<Vec<String>>,
    clients: usize,
    run: Run,
) -> Result<Load> {
    let channels = channels(endpoint, clients).await?;
    let (until, calls) = match run {
        Run::Seconds(s) => (Instant::now() + Duration::from_secs_f64(s), usize::MAX),
        // An hour is only a backstop: the count ends the run.
        Run::OnePerParticipant => (
            Instant::now() + Duration::from_secs(3600),
            participants.len(),
        ),
    };
    let started = Instant::now();
    let tasks: Vec<_> = channels
        .into_iter()
        .enumerate()
        .map(|(c, channel)| {
            let participants = participants.clone();
            tokio::spawn(async move {
                let mut client = PracticeLogServiceClient::new(channel);
                let mut latencies = Vec::new();
                let mut k = 0u64;
                while Instant::now() < until && c + (k as usize) * clients < calls {
                    let who = &participants[(c + k as usize * clients) % participants.len()];
                    let t = Instant::now();
                    client
                        .log_practice(bearer(TOKEN, practice(who, 5, k)))
                        .await
                        .map_err(|e| e.to_string())?;
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    k += 1;
                }
                Ok::<_, String>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    let events = latencies.len() as u64;
    Ok(Load {
        latencies,
        events,
        seconds,
    })
}

/// Calls offered at `rate` per second over `connections`, whatever the
/// latency (open loop: latency counts from when the call was due); call k
/// logs for `participants[k % len]`.
async fn open_loop(
    endpoint: &str,
    participants: Arc<Vec<String>>,
    connections: usize,
    rate: f64,
    seconds: f64,
) -> Result<Load> {
    let channels = channels(endpoint, connections).await?;
    let total = (rate * seconds).max(1.0) as u64;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0u64;
    while sent < total {
        tick.tick().await;
        // Call k is due at k / rate: every call due by now, the first at 0.
        let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while sent < due {
            let intended = started + Duration::from_secs_f64(sent as f64 / rate);
            let mut client =
                PracticeLogServiceClient::new(channels[sent as usize % connections].clone());
            let who = participants[sent as usize % participants.len()].clone();
            let k = sent;
            tasks.spawn(async move {
                client
                    .log_practice(bearer(TOKEN, practice(&who, 5, k)))
                    .await
                    .map(|_| intended.elapsed().as_secs_f64() * 1000.0)
                    .map_err(|e| e.to_string())
            });
            sent += 1;
        }
    }
    let mut latencies = Vec::with_capacity(total as usize);
    while let Some(r) = tasks.join_next().await {
        latencies.push(r??);
    }
    Ok(Load {
        latencies,
        events: total,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `total` calls from 32 callers, each on its own connection; call `k`
/// is `call(channel, k)`.
async fn from_callers<F, Fut>(endpoint: &str, total: u64, call: F) -> Result<()>
where
    F: Fn(Channel, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = std::result::Result<(), tonic::Status>> + Send,
{
    let channels = channels(endpoint, 32).await?;
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = channels
        .into_iter()
        .map(|channel| {
            let (next, call) = (next.clone(), call.clone());
            tokio::spawn(async move {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= total {
                        return Ok::<_, String>(());
                    }
                    call(channel.clone(), k).await.map_err(|e| e.to_string())?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Enrolls each of `participants` on the built-in arc, its session a week
/// ago (so that its windows are open now).
async fn enroll(endpoint: &str, participants: &[String]) -> Result<()> {
    let session = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * 7))
        .strftime("%Y-%m-%dT%H:%M")
        .to_string();
    let participants = Arc::new(participants.to_vec());
    let total = participants.len() as u64;
    from_callers(endpoint, total, move |channel, k| {
        let request = spb::EnrollRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            participant_ref: participants[k as usize].clone(),
            protocol_id: ARC.into(),
            protocol_version: 0,
            session_local_time: session.clone(),
            time_zone: "UTC".into(),
        };
        async move {
            ProtocolSchedulerServiceClient::new(channel)
                .enroll(bearer(TOKEN, request))
                .await
                .map(|_| ())
        }
    })
    .await
}

/// Logs `entries` practices for each of `participants`, oldest first, ten
/// minutes apart (within the backdating limit): their history.
async fn history(endpoint: &str, participants: &[String], entries: u64) -> Result<()> {
    let participants = Arc::new(participants.to_vec());
    let n = participants.len() as u64;
    from_callers(endpoint, n * entries, move |channel, k| {
        let who = &participants[(k % n) as usize];
        let ago = 10 + (entries - k / n) * 10;
        let request = practice(who, ago, k);
        async move {
            PracticeLogServiceClient::new(channel)
                .log_practice(bearer(TOKEN, request))
                .await
                .map(|_| ())
        }
    })
    .await
}

/// pgbench against Tend's own `events` table: one row per transaction
/// (`batch` 1) or ten rows of one stream. Category `raw`, which no
/// background reader follows.
fn raw_inserts(url: &str, clients: usize, seconds: f64, batch: u32) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("raw.sql");
    std::fs::write(
        &script,
        format!(
            "INSERT INTO events (position, tenant_id, stream_id, category, stream_version,
                                 event_id, event_type, schema_version, payload, metadata, recorded_at)
             SELECT nextval('event_position'), 'raw-bench', s.id, 'raw', g, gen_random_uuid(),
                    'PracticeLogged', 1, '{PAYLOAD}', NULL, now()
             FROM (SELECT 'raw-' || gen_random_uuid() AS id) s, generate_series(0, {}) g;\n",
            batch - 1
        ),
    )?;
    let out = std::process::Command::new("pgbench")
        .arg(url)
        .args(["-n", "-j", "2", "-c"])
        .arg(clients.to_string())
        .arg("-T")
        .arg(format!("{}", seconds.round().max(1.0) as u64))
        .arg("-f")
        .arg(&script)
        .output()?;
    if !out.status.success() {
        return Err(format!("pgbench failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let text = String::from_utf8(out.stdout)?;
    let tps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .ok_or("pgbench printed no tps")?
        .parse()?;
    Ok(tps * batch as f64)
}

/// Raw inserts measured like a call: events per second, CPU per event.
async fn measure_raw(probe: &Probe, url: &str, clients: usize, seconds: f64) -> Result<Figure> {
    let url = url.to_owned();
    measure(probe, Cpu::default(), async move {
        let started = Instant::now();
        let rate =
            tokio::task::spawn_blocking(move || raw_inserts(&url, clients, seconds, 1)).await??;
        let elapsed = started.elapsed().as_secs_f64();
        Ok(Load {
            latencies: vec![],
            events: (rate * seconds) as u64,
            seconds: elapsed.min(seconds),
        })
    })
    .await
}

/// Appends `count` events of category `archive` (which no background
/// reader follows) in batches, as a long-lived deployment's log holds:
/// random event ids, streams of 20 events, many tenants. The server must
/// be stopped: positions are taken without the append lock.
async fn fill(pool: &PgPool, count: u64) -> Result<()> {
    let batch = 500_000u64;
    let mut done = 0u64;
    let started = Instant::now();
    while done < count {
        let n = batch.min(count - done);
        sqlx::query(
            "INSERT INTO events (position, tenant_id, stream_id, category, stream_version,
                                 event_id, event_type, schema_version, payload, metadata, recorded_at)
             SELECT nextval('event_position'), 'tenant-' || (g % 50), 'archive-' || ((g / 20)::text),
                    'archive', g % 20, gen_random_uuid(), 'PracticeLogged', 1, $3::json, NULL, now()
             FROM generate_series($1::bigint, $2::bigint) g",
        )
        .bind(done as i64)
        .bind((done + n - 1) as i64)
        .bind(PAYLOAD)
        .execute(pool)
        .await?;
        done += n;
        eprintln!(
            "  log filled with {done} of {count} events ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    sqlx::query("VACUUM (ANALYZE) events").execute(pool).await?;
    sqlx::query("CHECKPOINT").execute(pool).await?;
    Ok(())
}

fn start_tend(url: &str) -> TendProcess {
    let tokens = format!("{TENANT}={}", tend_auth::TokenHash::of(TOKEN));
    TendProcess::start(&[
        ("TEND_DATABASE_URL", url),
        ("TEND_AUTH_TOKENS", tokens.as_str()),
        ("TEND_LOG", "warn"),
    ])
}

fn refs(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Where part 1 and part 4 run.
struct Target<'a> {
    probe: &'a Probe,
    server: &'a BenchServer,
    db_url: &'a str,
    participants: &'a Arc<Vec<String>>,
    seconds: f64,
}

/// Part 1 or 4: baseline, raw inserts and `LogPractice` at 8 and 64
/// clients, and latency at half the 8-client rate.
async fn part(
    label: &str,
    t: &Target<'_>,
    endpoint: &str,
    out: &mut BTreeMap<String, Figure>,
) -> Result<()> {
    let &Target {
        probe,
        server,
        db_url,
        participants,
        seconds,
    } = t;
    let idle = probe.idle_rate(10.0).await?;
    out.insert(
        format!("{label} idle (CPU µs per second)"),
        Figure {
            tend_us: idle.tend * 1e6,
            pg_us: idle.pg * 1e6,
            ..Figure::default()
        },
    );
    // Each participant's first practice here, on its own: in part 4 the
    // server has just been restarted, so this is where it folds each
    // participant's streams from the start again (its kept folds are in
    // memory). The figures after it then compare like with like: a server
    // that has seen each participant since it started.
    eprintln!("{label} one practice per participant");
    let first = measure(
        probe,
        Cpu::default(),
        closed_loop(endpoint, participants.clone(), 8, Run::OnePerParticipant),
    )
    .await?;
    out.insert(format!("{label} first practice of each participant"), first);
    for clients in [8, 64] {
        eprintln!("{label} {clients} clients");
        let baseline = pg_baseline(&server.admin_url, clients, seconds as u64)?;
        out.insert(
            format!("{label} {clients:>2} clients pg-baseline"),
            Figure {
                per_second: baseline.single as f64,
                ..Figure::default()
            },
        );
        let raw = measure_raw(probe, db_url, clients, seconds).await?;
        out.insert(format!("{label} {clients:>2} clients raw inserts"), raw);
        let tend = measure(
            probe,
            Cpu::default(),
            closed_loop(
                endpoint,
                participants.clone(),
                clients,
                Run::Seconds(seconds),
            ),
        )
        .await?;
        out.insert(format!("{label} {clients:>2} clients LogPractice"), tend);
    }
    let rate = out[&format!("{label}  8 clients LogPractice")].per_second / 2.0;
    eprintln!("{label} half the 8-client rate ({rate:.0}/s)");
    let half = measure(
        probe,
        Cpu::default(),
        open_loop(endpoint, participants.clone(), 8, rate, seconds),
    )
    .await?;
    out.insert(format!("{label} half rate, 8 connections"), half);
    Ok(())
}

fn print(out: &BTreeMap<String, Figure>) {
    println!();
    println!(
        "{:<58} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8}",
        "figure", "per s", "p50 ms", "p99 ms", "tend µs", "pg µs", "total µs", "idx rd"
    );
    // What a figure does not measure is a dash.
    let cell = |v: f64, digits: usize| {
        if v.is_finite() && v != 0.0 {
            format!("{v:.digits$}")
        } else {
            "-".into()
        }
    };
    for (k, f) in out {
        println!(
            "{:<58} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8}",
            k,
            cell(f.per_second, 0),
            cell(f.p50_ms, 2),
            cell(f.p99_ms, 2),
            cell(f.tend_us, 0),
            cell(f.pg_us, 0),
            cell(f.total_us(), 0),
            cell(f.index_reads_per_event, 3)
        );
    }
    // Where index reads are more than a few per hundred events: which
    // index they were of, so that the one outgrowing memory shows.
    for (k, f) in out.iter().filter(|(_, f)| f.index_reads_per_event > 0.05) {
        let by: Vec<String> = f
            .index_reads_by_index
            .iter()
            .filter(|(_, n)| **n > 0.0)
            .map(|(index, n)| format!("{index} {n:.3}"))
            .collect();
        println!(
            "index blocks read per event, {}: {}",
            k.trim(),
            by.join(", ")
        );
    }
}

fn ratio(out: &BTreeMap<String, Figure>, a: &str, b: &str, f: impl Fn(&Figure) -> f64) -> String {
    match (out.get(a), out.get(b)) {
        (Some(x), Some(y)) if f(y) > 0.0 => format!("{:.2}x", f(x) / f(y)),
        _ => "n/a".into(),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: f64 = env_number("TEND_BENCH_SECONDS", 10.0);
    let participants_n: usize = env_number("TEND_BENCH_PARTICIPANTS", 1000);
    let history_n: usize = env_number("TEND_BENCH_HISTORY_PARTICIPANTS", 100);
    let log_events: u64 = env_number("TEND_BENCH_LOG_EVENTS", 10_000_000);
    // Which parts run: 1 (small log), 2 (histories), 4 (big log).
    let parts = std::env::var("TEND_BENCH_PARTS").unwrap_or_else(|_| "124".into());

    let server = BenchServer::start().await?;
    // The server migrates the database itself, as deployed: a build from
    // before a migration can be measured on the same code.
    let db = server.empty_database(4).await?;
    let pg = Postgres::find(&db.pool).await?;
    let mut tend = start_tend(&db.url);
    let mut endpoint = tend.endpoint();
    let probe = Probe {
        pool: db.pool.clone(),
        pg,
        tend_pid: tend.pid().into(),
    };
    let mut out = BTreeMap::new();
    let big = format!("4. log of {:.1}M:", log_events as f64 / 1e6);

    eprintln!("enrolling {participants_n} participants");
    let participants = Arc::new(refs("p", participants_n));
    enroll(&endpoint, &participants).await?;
    let target = Target {
        probe: &probe,
        server: &server,
        db_url: &db.url,
        participants: &participants,
        seconds,
    };
    if parts.contains('1') {
        part(SMALL, &target, &endpoint, &mut out).await?;
    }

    let histories: &[u64] = if parts.contains('2') {
        &[20, 200, 2000]
    } else {
        &[]
    };
    for &entries in histories {
        eprintln!("history: {history_n} participants with {entries} practices each");
        let group = refs(&format!("h{entries}"), history_n);
        enroll(&endpoint, &group).await?;
        history(&endpoint, &group, entries).await?;
        // The history went in within a minute or two; in a deployment it
        // builds up over months with autovacuum keeping pace. Vacuumed now,
        // as part 4's log is after its fill: otherwise the vacuum of the
        // 2,000-practice group's 200,000 new rows lands in (or not) the
        // 2,000 practices measured next, a second or more of CPU.
        probe.idle().await?;
        sqlx::query("VACUUM (ANALYZE)").execute(&db.pool).await?;
        let idle = probe.idle_rate(10.0).await?;
        out.insert(
            format!("2. idle after the {entries:>4}-entry group (CPU µs per second)"),
            Figure {
                tend_us: idle.tend * 1e6,
                pg_us: idle.pg * 1e6,
                ..Figure::default()
            },
        );
        let group = Arc::new(group);
        eprintln!("history: measuring {entries}");
        // One call per participant per second: each is a round's work.
        let f = measure(
            &probe,
            idle,
            open_loop(&endpoint, group, 8, history_n as f64, seconds * 2.0),
        )
        .await?;
        out.insert(
            format!("2. history {entries:>4} practices, 1 call/s each (net of idle)"),
            f,
        );
    }

    if log_events > 0 && parts.contains('4') {
        eprintln!("filling the log with {log_events} events");
        let status = tend.stop_with("TERM", Duration::from_secs(60));
        if !status.success() {
            return Err(format!("tend exited with {status}").into());
        }
        fill(&db.pool, log_events).await?;
        tend = start_tend(&db.url);
        endpoint = tend.endpoint();
        probe.tend_pid.store(tend.pid(), Ordering::Relaxed);
        part(&big, &target, &endpoint, &mut out).await?;
    }

    let status = tend.stop_with("TERM", Duration::from_secs(60));
    drop(probe);
    db.drop_database().await?;
    server.stop()?;
    if !status.success() {
        return Err(format!("tend exited with {status}").into());
    }

    print(&out);
    let rate = |f: &Figure| f.per_second;
    let cpu = |f: &Figure| f.total_us();
    println!();
    for (label, n) in [(SMALL, "small log"), (big.as_str(), "big log")] {
        for c in [" 8", "64"] {
            println!(
                "{n}, {c} clients: LogPractice / raw inserts = {} (target 0.6x at 8, 0.8x at 64), / pg-baseline = {}",
                ratio(
                    &out,
                    &format!("{label} {c} clients LogPractice"),
                    &format!("{label} {c} clients raw inserts"),
                    rate
                ),
                ratio(
                    &out,
                    &format!("{label} {c} clients LogPractice"),
                    &format!("{label} {c} clients pg-baseline"),
                    rate
                ),
            );
        }
    }
    println!(
        "CPU per practice, history 2000 / 20: {} (target <= 1.2x); 200 / 20: {}",
        ratio(
            &out,
            "2. history 2000 practices, 1 call/s each (net of idle)",
            "2. history   20 practices, 1 call/s each (net of idle)",
            cpu
        ),
        ratio(
            &out,
            "2. history  200 practices, 1 call/s each (net of idle)",
            "2. history   20 practices, 1 call/s each (net of idle)",
            cpu
        ),
    );
    println!(
        "CPU per practice, big log / small log, 8 clients: {} (target <= 1.2x); 64 clients: {}",
        ratio(
            &out,
            &format!("{big}  8 clients LogPractice"),
            &format!("{SMALL}  8 clients LogPractice"),
            cpu
        ),
        ratio(
            &out,
            &format!("{big} 64 clients LogPractice"),
            &format!("{SMALL} 64 clients LogPractice"),
            cpu
        ),
    );
    println!(
        "CPU of each participant's first practice, big log (a restarted server) / small log: {}",
        ratio(
            &out,
            &format!("{big} first practice of each participant"),
            &format!("{SMALL} first practice of each participant"),
            cpu
        ),
    );
    Ok(())
}
