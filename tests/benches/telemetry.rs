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

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tend_testkit::bench::{BenchServer, Result, env_number, pg_baseline};
use tend_tests::TendProcess;
use tend_tests::load::{Figures, cpu_seconds, log_practice};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

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
            let endpoint = Channel::from_shared(tend.endpoint())?;
            // Warm up: connections, plans, the writer's hints.
            log_practice(endpoint.clone(), TOKEN, clients, 1.0).await?;
            let cpu_before = cpu_seconds(tend.pid())?;
            let f = log_practice(endpoint, TOKEN, clients, seconds as f64).await?;
            let cpu = cpu_seconds(tend.pid())? - cpu_before;
            cpu_per_call[i].push(cpu * 1e6 / f.calls as f64);
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
