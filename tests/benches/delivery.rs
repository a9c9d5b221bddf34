//! What partners' ways in and out cost, on the release `tend` binary as
//! deployed (its background work on), with the load generator and the
//! webhook receiver in this process:
//!
//! - TLS: `LogPractice` calls per second with TLS against plain TCP, in
//!   alternating rounds on the same PostgreSQL, with the server's CPU per
//!   call;
//! - webhooks: events per second delivered from a backlog to one endpoint
//!   and to 50, with the server's CPU per delivery; then, with events
//!   written at a steady rate, the lag from commit to the receiver's 2xx,
//!   to one endpoint and to 50, beside the event stream's own delivery of
//!   the same events to a subscriber in the same run.
//!
//! Beside them, `../shared/bench/pg-baseline`'s single-event insert rate
//! on the same PostgreSQL, in the same run.
//!
//! Needs the release `tend` binary: `cargo build --release -p tend` first.
//!
//! cargo bench -p tend-tests --bench delivery
//!
//! Settings (environment): TEND_BENCH_SECONDS (default 5) per TLS figure,
//! TEND_BENCH_ROUNDS (default 3), TEND_BENCH_EVENTS (default 1000: the
//! backlog), TEND_BENCH_RATE (default 100 events/s for the lag),
//! TEND_BENCH_LAG_SECONDS (default 10).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tend_api::events::v1 as events;
use tend_api::events::v1::event_stream_service_client::EventStreamServiceClient;
use tend_api::practice::v1::practice_log_service_client::PracticeLogServiceClient;
use tend_api::webhooks::v1 as pb;
use tend_api::webhooks::v1::webhook_service_client::WebhookServiceClient;
use tend_testkit::bench::{BenchServer, Result, env_number, median, pg_baseline, quantile};
use tend_tests::load::{cpu_seconds, log_practice};
use tend_tests::pki::Pki;
use tend_tests::{TendProcess, bearer, practice_request};
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use uuid::Uuid;

const TOKEN: &str = "tend_bench_token_delivery";
const CLIENTS: usize = 8;

/// What the receiver saw: per endpoint path, each delivery's log position
/// and its lag (receipt minus the event's commit time), in seconds.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<ByPath>>);

/// Endpoint path to (position, lag) of each delivery.
type ByPath = HashMap<String, Vec<(u64, f64)>>;

impl Received {
    fn count(&self) -> usize {
        self.0.lock().unwrap().values().map(Vec::len).sum()
    }

    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }

    fn lags(&self) -> Vec<f64> {
        let mut all: Vec<f64> = self
            .0
            .lock()
            .unwrap()
            .values()
            .flat_map(|v| v.iter().map(|(_, lag)| *lag))
            .collect();
        all.sort_by(f64::total_cmp);
        all
    }
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn seconds_of(rfc3339: &str) -> f64 {
    rfc3339
        .parse::<jiff::Timestamp>()
        .map(|t| t.as_microsecond() as f64 / 1e6)
        .unwrap_or(f64::NAN)
}

/// A receiver that answers 204 at once and notes what came.
async fn receiver(received: Received) -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let received = received.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let received = received.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let body = request.into_body().collect().await?.to_bytes();
                        let at = now_seconds();
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                            let position = v["data"]["position"].as_u64().unwrap_or(0);
                            let committed = seconds_of(v["timestamp"].as_str().unwrap_or(""));
                            received
                                .0
                                .lock()
                                .unwrap()
                                .entry(path)
                                .or_default()
                                .push((position, at - committed));
                        }
                        let mut response = hyper::Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = hyper::StatusCode::NO_CONTENT;
                        Ok::<_, hyper::Error>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(port)
}

async fn endpoints(
    client: &mut WebhookServiceClient<Channel>,
    port: u16,
    n: usize,
) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for i in 0..n {
        let created = client
            .create_endpoint(bearer(
                TOKEN,
                pb::CreateEndpointRequest {
                    request_id: Uuid::new_v4().to_string(),
                    url: format!("http://127.0.0.1:{port}/e/{i}"),
                    categories: vec!["practice".into()],
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        ids.push(created.endpoint.ok_or("no endpoint")?.endpoint_id);
    }
    Ok(ids)
}

async fn wait_for(received: &Received, n: usize, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    while received.count() < n {
        if started.elapsed() > limit {
            return Err(format!("{} of {n} deliveries after {limit:?}", received.count()).into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(started.elapsed())
}

/// Writes events at `rate` per second for `seconds` (open loop, one
/// client per participant stream so that writes do not queue on one).
async fn steady(channel: &Channel, rate: f64, seconds: f64) -> Result<usize> {
    let total = (rate * seconds) as usize;
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        let mut client = PracticeLogServiceClient::new(channel.clone());
        tokio::time::sleep_until(due).await;
        tasks.push(tokio::spawn(async move {
            client
                .log_practice(bearer(
                    TOKEN,
                    practice_request(&format!("steady-{}", i % 50)),
                ))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(total)
}

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: f64 = env_number("TEND_BENCH_SECONDS", 5.0);
    let rounds: usize = env_number("TEND_BENCH_ROUNDS", 3);
    let backlog: usize = env_number("TEND_BENCH_EVENTS", 1000);
    let rate: f64 = env_number("TEND_BENCH_RATE", 100.0);
    let lag_seconds: f64 = env_number("TEND_BENCH_LAG_SECONDS", 10.0);
    let server = BenchServer::start().await?;
    let baseline = pg_baseline(&server.admin_url, CLIENTS, seconds as u64)?;
    let tokens = format!("bench={}", tend_auth::TokenHash::of(TOKEN));

    // ---- TLS against plain TCP, alternating.
    let pki = Pki::new();
    pki.write_server();
    let (cert, key) = (pki.path("tls.crt"), pki.path("tls.key"));
    let mut figures: [Vec<(f64, f64, f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for k in 0..2 {
            let tls = (round + k) % 2 == 1;
            let db = server.database(4).await?;
            let mut env = vec![
                ("TEND_DATABASE_URL", db.url.as_str()),
                ("TEND_AUTH_TOKENS", tokens.as_str()),
            ];
            if tls {
                env.push(("TEND_TLS_CERT", cert.to_str().ok_or("path")?));
                env.push(("TEND_TLS_KEY", key.to_str().ok_or("path")?));
            }
            let tend = TendProcess::start(&env);
            let endpoint: Endpoint = if tls {
                Channel::from_shared(format!("https://{}", tend.addr))?.tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
                        .domain_name("localhost"),
                )?
            } else {
                Channel::from_shared(tend.endpoint())?
            };
            log_practice(endpoint.clone(), TOKEN, CLIENTS, 1.0).await?;
            let cpu = cpu_seconds(tend.pid())?;
            let f = log_practice(endpoint, TOKEN, CLIENTS, seconds).await?;
            let cpu_us = (cpu_seconds(tend.pid())? - cpu) * 1e6 / f.calls as f64;
            figures[usize::from(tls)].push((f.calls_per_second, f.p50_ms, f.p99_ms, cpu_us));
            drop(tend);
            db.drop_database().await?;
        }
    }

    // ---- Webhooks.
    let received = Received::default();
    let port = receiver(received.clone()).await?;
    let db = server.database(4).await?;
    let tend = TendProcess::start(&[
        ("TEND_DATABASE_URL", db.url.as_str()),
        ("TEND_AUTH_TOKENS", tokens.as_str()),
        ("TEND_WEBHOOK_ALLOW_HTTP_HOSTS", "127.0.0.1"),
        ("TEND_WEBHOOK_ALLOW_NETWORKS", "127.0.0.0/8"),
    ]);
    let channel = Channel::from_shared(tend.endpoint())?.connect().await?;
    let mut webhooks = WebhookServiceClient::new(channel.clone());
    // The backlog: written first, then delivered by a redelivery from 0.
    let mut written = 0;
    while written < backlog {
        let mut client = PracticeLogServiceClient::new(channel.clone());
        client
            .log_practice(bearer(
                TOKEN,
                practice_request(&format!("backlog-{}", written % 50)),
            ))
            .await?;
        written += 1;
    }
    let mut backlog_figures = Vec::new();
    for n in [1usize, 50] {
        let ids = endpoints(&mut webhooks, port, n).await?;
        received.clear();
        let cpu = cpu_seconds(tend.pid())?;
        for id in &ids {
            webhooks
                .redeliver_events(bearer(
                    TOKEN,
                    pb::RedeliverEventsRequest {
                        endpoint_id: id.clone(),
                        after_position: 0,
                    },
                ))
                .await?;
        }
        let took = wait_for(&received, n * backlog, Duration::from_secs(600)).await?;
        let cpu_us = (cpu_seconds(tend.pid())? - cpu) * 1e6 / (n * backlog) as f64;
        backlog_figures.push((n, (n * backlog) as f64 / took.as_secs_f64(), cpu_us));
        for id in ids {
            webhooks
                .delete_endpoint(bearer(TOKEN, pb::DeleteEndpointRequest { endpoint_id: id }))
                .await?;
        }
    }

    // Lag at a steady rate, webhooks beside the event stream.
    let mut lag_figures = Vec::new();
    for n in [1usize, 50] {
        let ids = endpoints(&mut webhooks, port, n).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        received.clear();
        let total = steady(&channel, rate, lag_seconds).await?;
        wait_for(&received, n * total, Duration::from_secs(120)).await?;
        let webhook_lags = received.lags();
        lag_figures.push((n, webhook_lags, total));
        for id in ids {
            webhooks
                .delete_endpoint(bearer(TOKEN, pb::DeleteEndpointRequest { endpoint_id: id }))
                .await?;
        }
    }
    // The event stream's own delivery of the same kind of events, at the
    // same rate, to one subscriber.
    let stream_lags = stream_lag(&channel, &mut webhooks, rate, lag_seconds).await?;
    drop(tend);
    db.drop_database().await?;
    server.stop()?;

    println!(
        "pg-baseline single-event inserts, same PostgreSQL, {CLIENTS} clients: {} per s",
        baseline.single
    );
    println!("LogPractice, {CLIENTS} clients, {seconds} s per figure, {rounds} rounds (median):");
    let med = |v: &[(f64, f64, f64, f64)], f: fn(&(f64, f64, f64, f64)) -> f64| {
        let mut xs: Vec<f64> = v.iter().map(f).collect();
        median(&mut xs)
    };
    let plain_rate = med(&figures[0], |f| f.0);
    let plain_cpu = med(&figures[0], |f| f.3);
    for (name, f) in [("plain TCP", &figures[0]), ("TLS", &figures[1])] {
        let rate = med(f, |f| f.0);
        let cpu = med(f, |f| f.3);
        println!(
            "  {name:<10} {rate:>7.0} calls/s ({:.2}x plain, {:.2}x baseline)  p50 {:.2} ms  p99 {:.2} ms  server CPU {cpu:.0} us/call ({:.2}x plain)",
            rate / plain_rate,
            rate / baseline.single as f64,
            med(f, |f| f.1),
            med(f, |f| f.2),
            cpu / plain_cpu
        );
    }
    println!("Webhooks from a backlog of {backlog} events:");
    for (n, per_second, cpu) in &backlog_figures {
        println!(
            "  {n:>2} endpoint(s): {per_second:>7.0} deliveries/s  server CPU {cpu:.0} us/delivery"
        );
    }
    println!("Lag from commit to the receiver's 2xx, {rate} events/s for {lag_seconds} s:");
    for (n, lags, total) in &lag_figures {
        println!(
            "  webhooks, {n:>2} endpoint(s): p50 {:.1} ms  p99 {:.1} ms  ({} deliveries of {total} events)",
            quantile(lags, 0.5) * 1000.0,
            quantile(lags, 0.99) * 1000.0,
            lags.len()
        );
    }
    println!(
        "  event stream, 1 subscriber:  p50 {:.1} ms  p99 {:.1} ms  ({} events)",
        quantile(&stream_lags, 0.5) * 1000.0,
        quantile(&stream_lags, 0.99) * 1000.0,
        stream_lags.len()
    );
    Ok(())
}

/// The log's head, as an endpoint's status reports it.
async fn tend_head(webhooks: &mut WebhookServiceClient<Channel>, id: &str) -> Result<u64> {
    let e = webhooks
        .get_endpoint(bearer(
            TOKEN,
            pb::GetEndpointRequest {
                endpoint_id: id.to_owned(),
            },
        ))
        .await?
        .into_inner()
        .endpoint
        .ok_or("no endpoint")?;
    Ok(e.delivery.ok_or("no delivery")?.head_position)
}

/// One subscriber's lag at the steady rate.
async fn stream_lag(
    channel: &Channel,
    webhooks: &mut WebhookServiceClient<Channel>,
    rate: f64,
    seconds: f64,
) -> Result<Vec<f64>> {
    let ids = endpoints(webhooks, 1, 1).await?;
    let head = tend_head(webhooks, &ids[0]).await?;
    webhooks
        .delete_endpoint(bearer(
            TOKEN,
            pb::DeleteEndpointRequest {
                endpoint_id: ids[0].clone(),
            },
        ))
        .await?;
    let mut stream = EventStreamServiceClient::new(channel.clone())
        .subscribe(bearer(
            TOKEN,
            events::SubscribeRequest {
                after_position: head,
                categories: vec!["practice".into()],
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    let total = (rate * seconds) as usize;
    let reader = tokio::spawn(async move {
        let mut lags = Vec::new();
        while lags.len() < total {
            let Some(Ok(m)) = stream.next().await else {
                break;
            };
            if let Some(events::subscribe_response::Message::Event(e)) = m.message {
                let committed = e
                    .recorded_at
                    .map(|t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
                    .unwrap_or(f64::NAN);
                lags.push(now_seconds() - committed);
            }
        }
        lags
    });
    steady(channel, rate, seconds).await?;
    let mut lags = tokio::time::timeout(Duration::from_secs(60), reader).await??;
    lags.sort_by(f64::total_cmp);
    Ok(lags)
}
