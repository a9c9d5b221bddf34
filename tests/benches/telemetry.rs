//! What telemetry costs: `LogPractice` through the real `tend` binary on a
//! real socket, with telemetry off (the default), with the Prometheus
//! endpoint on, and with traces (one call in ten sampled, then every call;
//! exported over OTLP to a collector in this process, which shares the
//! machine) plus metrics. Beside it, in the
//! same run and on the same PostgreSQL, `../shared/bench/pg-baseline`'s
//! single-event insert rate.
//!
//! Target: off costs nothing (it is the default server); metrics and
//! sampled traces within a few percent of off.
//!
//! Needs the release `tend` binary: `cargo build --release -p tend` first.
//!
//! cargo bench -p tend-tests --bench telemetry
//!
//! Settings (environment): TEND_BENCH_SECONDS (default 5) per figure,
//! TEND_BENCH_CLIENTS (default 8), TEND_BENCH_ROUNDS (default 4: the
//! settings run in turn, each round starting with the next one, and the
//! best of each is shown, so that neither a background hiccup nor going
//! first decides the comparison).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tend_api::practice::v1 as pb;
use tend_api::practice::v1::practice_log_service_client::PracticeLogServiceClient;
use tend_testkit::bench::{BenchServer, Result, env_number, pg_baseline, quantile};
use tend_tests::TendProcess;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use uuid::Uuid;

const TOKEN: &str = "tend_bench_token_telemetry";

/// Counts the spans it is sent, and drops them.
#[derive(Clone, Default)]
struct Sink(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> std::result::Result<Response<ExportTraceServiceResponse>, Status> {
        let n: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

struct Figures {
    calls_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The server process's CPU time (user + system) per call: what
    /// telemetry costs, whatever else the machine is doing.
    cpu_us_per_call: f64,
    calls: usize,
}

/// User plus system CPU seconds a process has used, from /proc.
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').ok_or("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 here.
    let utime: f64 = fields.get(11).ok_or("no utime")?.parse()?;
    let stime: f64 = fields.get(12).ok_or("no stime")?.parse()?;
    Ok((utime + stime) / ticks_per_second)
}

fn ticks_per_second() -> Result<f64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()?;
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

async fn load(endpoint: &str, clients: usize, seconds: u64) -> Result<Figures> {
    let mut tasks = Vec::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    for c in 0..clients {
        // Each client its own connection, as separate partner apps would be.
        let channel = Channel::from_shared(endpoint.to_owned())?.connect().await?;
        tasks.push(tokio::spawn(async move {
            let mut client = PracticeLogServiceClient::new(channel);
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < until {
                let mut r = Request::new(pb::LogPracticeRequest {
                    participant_ref: format!("participant-{c}-{}", n % 100),
                    entry_id: Uuid::new_v4().to_string(),
                    practice: Some(pb::PracticeDetails {
                        kind: "self-compassion-break".into(),
                        started_at: (Timestamp::now() - SignedDuration::from_mins(1))
                            .strftime("%Y-%m-%dT%H:%M:%SZ")
                            .to_string(),
                        minutes: 10,
                        ..Default::default()
                    }),
                });
                r.metadata_mut()
                    .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
                let t = Instant::now();
                client.log_practice(r).await.map_err(|e| e.to_string())?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                n += 1;
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok(Figures {
        calls_per_second: all.len() as f64 / elapsed,
        p50_ms: quantile(&all, 0.5),
        p99_ms: quantile(&all, 0.99),
        cpu_us_per_call: 0.0,
        calls: all.len(),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: u64 = env_number("TEND_BENCH_SECONDS", 5);
    let clients: usize = env_number("TEND_BENCH_CLIENTS", 8);
    let rounds: usize = env_number("TEND_BENCH_ROUNDS", 4);
    let server = BenchServer::start().await?;
    let baseline = pg_baseline(&server.admin_url, clients, seconds)?;

    let sink = Sink::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let collector = format!("http://{}", listener.local_addr()?);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(sink.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let tokens = format!("bench={}", tend_auth::TokenHash::of(TOKEN));
    let settings: [(&str, Vec<(&str, &str)>); 4] = [
        ("off (default)", vec![]),
        (
            "metrics (Prometheus endpoint)",
            vec![
                ("OTEL_METRICS_EXPORTER", "prometheus"),
                ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
                ("OTEL_EXPORTER_PROMETHEUS_PORT", "0"),
            ],
        ),
        (
            "traces, 10% sampled, + metrics",
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
                ("OTEL_METRICS_EXPORTER", "prometheus"),
                ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
                ("OTEL_EXPORTER_PROMETHEUS_PORT", "0"),
            ],
        ),
        (
            "traces, every call sampled, + metrics",
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()),
                ("OTEL_TRACES_SAMPLER", "always_on"),
                ("OTEL_METRICS_EXPORTER", "prometheus"),
                ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
                ("OTEL_EXPORTER_PROMETHEUS_PORT", "0"),
            ],
        ),
    ];
    let ticks = ticks_per_second()?;
    let mut best: Vec<Option<Figures>> = (0..settings.len()).map(|_| None).collect();
    let mut cpu_per_call: Vec<Vec<f64>> = vec![Vec::new(); settings.len()];
    for round in 0..rounds {
        // Each round starts with the next setting: whatever the first run
        // of a round pays (a cold cache, a checkpoint) is shared out.
        for k in 0..settings.len() {
            let i = (round + k) % settings.len();
            let env = &settings[i].1;
            let db = server.database(4).await?;
            let mut vars = vec![
                ("TEND_DATABASE_URL", db.url.as_str()),
                ("TEND_AUTH_TOKENS", tokens.as_str()),
                ("TEND_ARC_PROJECTION", "false"),
            ];
            vars.extend(env.iter().copied());
            let tend = TendProcess::start(&vars);
            // Warm up: connections, plans, the writer's hints.
            load(&tend.endpoint(), clients, 1).await?;
            let cpu_before = cpu_seconds(tend.pid(), ticks)?;
            let mut f = load(&tend.endpoint(), clients, seconds).await?;
            let cpu = cpu_seconds(tend.pid(), ticks)? - cpu_before;
            f.cpu_us_per_call = cpu * 1e6 / f.calls as f64;
            cpu_per_call[i].push(f.cpu_us_per_call);
            drop(tend);
            db.drop_database().await?;
            if best[i]
                .as_ref()
                .is_none_or(|b| f.calls_per_second > b.calls_per_second)
            {
                best[i] = Some(f);
            }
        }
    }

    println!(
        "LogPractice through `tend serve`, {clients} clients, {seconds} s per figure, best of {rounds}"
    );
    println!(
        "pg-baseline single-event inserts, same PostgreSQL, {clients} clients: {} per s",
        baseline.single
    );
    let off = best[0].as_ref().map_or(f64::NAN, |f| f.calls_per_second);
    // CPU per call: the median over the rounds (it does not depend on
    // what else runs, so it needs no best-of).
    let cpu: Vec<f64> = cpu_per_call
        .iter_mut()
        .map(|v| tend_testkit::bench::median(v))
        .collect();
    let cpu_off = cpu[0];
    for (((name, _), f), cpu) in settings.iter().zip(&best).zip(&cpu) {
        let f = f.as_ref().ok_or("no figure")?;
        println!(
            "  {name:<40} {:>7.0} calls/s  p50 {:>5.2} ms  p99 {:>5.2} ms  {:.3}x off  {:.2}x baseline  server CPU {:>5.0} us/call ({:.3}x off)",
            f.calls_per_second,
            f.p50_ms,
            f.p99_ms,
            f.calls_per_second / off,
            f.calls_per_second / baseline.single as f64,
            cpu,
            cpu / cpu_off
        );
    }
    println!(
        "spans received by the collector: {}",
        sink.0.load(Ordering::Relaxed)
    );
    server.stop()?;
    Ok(())
}
