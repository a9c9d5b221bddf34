//! Operations end to end, with the real binary over real sockets: a trace
//! of a partner's call reaches an OTLP collector with the RPC, the append
//! and the SQL; the Prometheus endpoint serves every metric the dashboard
//! and the alert rules query; and three replicas on one database share the
//! log, run background work once, and hand it over when one is killed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::{Span, span};
use tend_api::events::v1 as epb;
use tend_api::events::v1::event_stream_service_client::EventStreamServiceClient;
use tend_api::practice::v1 as ppb;
use tend_api::practice::v1::practice_log_service_client::PracticeLogServiceClient;
use tend_api::scheduler::v1 as spb;
use tend_api::scheduler::v1::protocol_scheduler_service_client::ProtocolSchedulerServiceClient;
use tend_testkit::fresh_database;
use tend_tests::{TendProcess, channel};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};
use uuid::Uuid;

const TOKEN: &str = "tend_test_token_for_operations";

fn authed<T>(message: T) -> Request<T> {
    tend_tests::bearer(TOKEN, message)
}

fn tokens() -> String {
    format!("clinic={}", tend_auth::TokenHash::of(TOKEN))
}

fn practice(participant: &str, minutes: u32) -> ppb::LogPracticeRequest {
    let started = Timestamp::now() - SignedDuration::from_mins(30);
    ppb::LogPracticeRequest {
        participant_ref: participant.into(),
        entry_id: Uuid::new_v4().to_string(),
        practice: Some(ppb::PracticeDetails {
            kind: "self-compassion-break".into(),
            started_at: started.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            minutes,
            ..Default::default()
        }),
    }
}

fn enroll(participant: &str) -> spb::EnrollRequest {
    let session = (Timestamp::now() + SignedDuration::from_hours(24 * 14))
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .datetime();
    spb::EnrollRequest {
        request_id: Uuid::new_v4().to_string(),
        participant_ref: participant.into(),
        protocol_id: "integration-arc-8w".into(),
        protocol_version: 0,
        session_local_time: session.strftime("%Y-%m-%dT%H:%M").to_string(),
        time_zone: "Europe/Berlin".into(),
    }
}

// ---------------------------------------------------------------- traces

/// An OTLP/gRPC receiver: keeps every span it is sent, and the names of
/// the metrics.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>, Arc<Mutex<HashSet<String>>>);

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut names = self.1.lock().unwrap();
        for resource in request.into_inner().resource_metrics {
            for scope in resource.scope_metrics {
                names.extend(scope.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn start_collector() -> (Collector, String) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (collector, format!("http://{addr}"))
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            any_value::Value::IntValue(i) => Some(i.to_string()),
            any_value::Value::BoolValue(b) => Some(b.to_string()),
            any_value::Value::DoubleValue(d) => Some(d.to_string()),
            _ => None,
        })
}

/// True when `ancestor` is `span`'s parent, or its parent's, and so on.
fn descends(span: &Span, ancestor: &Span, by_id: &HashMap<Vec<u8>, &Span>) -> bool {
    let mut parent = span.parent_span_id.clone();
    while !parent.is_empty() {
        if parent == ancestor.span_id {
            return true;
        }
        parent = by_id
            .get(&parent)
            .map(|s| s.parent_span_id.clone())
            .unwrap_or_default();
    }
    false
}

#[tokio::test]
async fn a_partners_log_practice_trace_shows_the_rpc_the_append_and_the_sql() {
    let db = fresh_database().await;
    let (collector, endpoint) = start_collector().await;
    let server = TendProcess::start(&[
        ("TEND_DATABASE_URL", db.url.as_str()),
        ("TEND_AUTH_TOKENS", &tokens()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
    ]);
    let channel = channel(&server).await;

    // The partner's own trace: Tend's spans must continue it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let partner_span = "00f067aa0ba902b7";
    let participant = "participant-ref-7f3a";
    let mut request = authed(practice(participant, 12));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{partner_span}-01").parse().unwrap(),
    );
    PracticeLogServiceClient::new(channel.clone())
        .log_practice(request)
        .await
        .unwrap();

    let wanted = hex(trace_id);
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans: Vec<Span> = collector
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == wanted)
            .cloned()
            .collect();
        let has = |name: &str| spans.iter().any(|s| s.name == name);
        if has("tend.practice.v1.PracticeLogService/LogPractice")
            && has("append")
            && has("commit")
            && has("INSERT events")
        {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans of the call did not arrive; got {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let by_id: HashMap<Vec<u8>, &Span> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    let named = |name: &str| spans.iter().find(|s| s.name == name).unwrap();

    let rpc = named("tend.practice.v1.PracticeLogService/LogPractice");
    assert_eq!(
        rpc.parent_span_id,
        hex(partner_span),
        "continues the partner's span"
    );
    assert_eq!(rpc.kind, span::SpanKind::Server as i32);
    assert_eq!(
        attribute(rpc, "rpc.response.status_code").as_deref(),
        Some("OK")
    );
    assert_eq!(attribute(rpc, "rpc.system.name").as_deref(), Some("grpc"));

    let append = named("append");
    assert!(
        descends(append, rpc, &by_id),
        "the append is within the call"
    );
    assert_eq!(
        attribute(append, "tend.category").as_deref(),
        Some("practice")
    );
    assert_eq!(attribute(append, "tend.outcome").as_deref(), Some("ok"));
    let commit = named("commit");
    assert!(
        descends(commit, append, &by_id),
        "the commit continues the append"
    );
    let insert = named("INSERT events");
    assert!(
        descends(insert, commit, &by_id),
        "the SQL is within the commit"
    );
    assert_eq!(insert.kind, span::SpanKind::Client as i32);
    assert_eq!(
        attribute(insert, "db.system.name").as_deref(),
        Some("postgresql")
    );

    // Nothing about the participant or the tenant in any span received:
    // no reference, no tenant id in an attribute, and no log events at
    // all (log lines may name a tenant; they stay in the logs).
    let tenant = "clinic";
    for s in collector.0.lock().unwrap().iter() {
        for kv in &s.attributes {
            let v = format!("{:?}", kv.value);
            assert!(
                !v.contains(participant) && !v.contains(tenant),
                "span {} attribute {} = {v}",
                s.name,
                kv.key
            );
        }
        assert!(
            s.events.is_empty(),
            "span {} has events: {:?}",
            s.name,
            s.events
        );
    }

    // The event carries the trace context of the append, so a subscriber
    // can link back to the call.
    let mut events = EventStreamServiceClient::new(channel)
        .subscribe(authed(epb::SubscribeRequest {
            categories: vec!["practice".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let event = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(epb::subscribe_response::Message::Event(e)) = message.message {
            break e;
        }
    };
    let traceparent = event.metadata.unwrap().traceparent;
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], trace_id);
    assert_eq!(hex(parts[2]), append.span_id, "points at the append span");

    // Metrics went over OTLP too, under their OpenTelemetry names.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let names = collector.1.lock().unwrap().clone();
        if names.contains("rpc.server.call.duration")
            && names.contains("tend.event_store.events.appended")
        {
            break;
        }
        assert!(Instant::now() < deadline, "OTLP metrics: {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // With exporters running, a stop is still orderly and prompt (the
    // collector on this runtime must go on answering meanwhile).
    let stopping = Instant::now();
    let status =
        tokio::task::spawn_blocking(move || server.stop_with("TERM", Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "stopped in {:?}",
        stopping.elapsed()
    );
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// --------------------------------------------------------------- metrics

/// One sample: its labels and value.
type Sample = (BTreeMap<String, String>, f64);

/// The samples of a text exposition, by metric name.
fn samples(text: &str) -> HashMap<String, Vec<Sample>> {
    let mut out: HashMap<String, Vec<Sample>> = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        // Label values here never hold commas or quotes.
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap();
            map.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
        let value = match value {
            "+Inf" => f64::INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap(),
        };
        out.entry(name.to_owned()).or_default().push((map, value));
    }
    out
}

fn value(samples: &HashMap<String, Vec<Sample>>, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .get(name)
        .into_iter()
        .flatten()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Every (metric, label names) a PromQL expression selects.
fn selected(expr: &promql_parser::parser::Expr, out: &mut Vec<(String, Vec<String>)>) {
    use promql_parser::parser::Expr;
    let mut vector = |vs: &promql_parser::parser::VectorSelector| {
        let name = vs.name.clone().or_else(|| {
            vs.matchers
                .matchers
                .iter()
                .find(|m| m.name == "__name__")
                .map(|m| m.value.clone())
        });
        let labels = vs
            .matchers
            .matchers
            .iter()
            .filter(|m| m.name != "__name__")
            .map(|m| m.name.clone())
            .collect();
        out.push((name.expect("every selector names its metric"), labels));
    };
    match expr {
        Expr::VectorSelector(vs) => vector(vs),
        Expr::MatrixSelector(ms) => vector(&ms.vs),
        Expr::Aggregate(a) => {
            selected(&a.expr, out);
            if let Some(p) = &a.param {
                selected(p, out);
            }
        }
        Expr::Unary(u) => selected(&u.expr, out),
        Expr::Binary(b) => {
            selected(&b.lhs, out);
            selected(&b.rhs, out);
        }
        Expr::Paren(p) => selected(&p.expr, out),
        Expr::Subquery(s) => selected(&s.expr, out),
        Expr::Call(c) => c.args.args.iter().for_each(|a| selected(a, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn deploy_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every PromQL expression in the dashboard and the alert rules, with
/// where it is.
fn queries() -> Vec<(String, String)> {
    let mut queries = Vec::new();
    let dashboard: serde_json::Value =
        serde_json::from_str(&deploy_file("deploy/grafana/dashboards/tend.json")).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push((
                format!("dashboard panel {:?}", panel["title"]),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&deploy_file("deploy/prometheus/alerts.yml")).unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            queries.push((
                format!("alert {:?}", rule["alert"].as_str().unwrap()),
                rule["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    queries
}

/// Series Prometheus makes itself when it scrapes.
const SCRAPE_SERIES: &[&str] = &["up"];

#[tokio::test]
async fn the_scrape_endpoint_serves_every_metric_the_dashboard_and_alerts_query() {
    let db = fresh_database().await;
    let server = TendProcess::start(&[
        ("TEND_DATABASE_URL", db.url.as_str()),
        ("TEND_AUTH_TOKENS", &tokens()),
        ("TEND_SCHEDULER_TICK_MS", "200"),
        ("OTEL_METRICS_EXPORTER", "prometheus"),
        ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
        ("OTEL_EXPORTER_PROMETHEUS_PORT", "0"),
    ]);
    let addr = tend_tests::metrics_addr(&server);
    let channel = channel(&server).await;
    let mut scheduler = ProtocolSchedulerServiceClient::new(channel.clone());
    scheduler.enroll(authed(enroll("p-1"))).await.unwrap();
    let mut practice_log = PracticeLogServiceClient::new(channel.clone());
    practice_log
        .log_practice(authed(practice("p-1", 10)))
        .await
        .unwrap();
    let refused = practice_log
        .log_practice(authed(practice("p-1", 0)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // One subscription stays open while we scrape.
    let mut subscription = EventStreamServiceClient::new(channel)
        .subscribe(authed(epb::SubscribeRequest::default()))
        .await
        .unwrap()
        .into_inner();
    subscription.next().await.unwrap().unwrap();

    // The projection's lag is polled from the database every few seconds,
    // and the scheduler takes its lease on its first round, on the
    // background thread, over a connection of its own it opens then.
    let deadline = Instant::now() + Duration::from_secs(30);
    let exported = loop {
        let s = samples(&tend_tests::scrape(&addr));
        if s.contains_key("tend_projection_lag_seconds")
            && s.contains_key("tend_projection_events_total")
            && value(&s, "tend_lease_held", &[("tend_lease", "scheduler")]) == 1.0
            && value(&s, "tend_scheduler_ticks_total", &[("tend_outcome", "ok")]) >= 1.0
        {
            break s;
        }
        assert!(Instant::now() < deadline, "projection metrics missing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // What was done shows in the figures.
    let log = "tend.practice.v1.PracticeLogService/LogPractice";
    let calls = "rpc_server_call_duration_seconds_count";
    assert_eq!(
        value(
            &exported,
            calls,
            &[("rpc_method", log), ("rpc_response_status_code", "OK")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &exported,
            calls,
            &[
                ("rpc_method", log),
                ("rpc_response_status_code", "INVALID_ARGUMENT")
            ]
        ),
        1.0
    );
    assert!(value(&exported, "tend_event_store_events_appended_total", &[]) >= 2.0);
    assert_eq!(
        value(&exported, "tend_event_stream_subscriptions", &[]),
        1.0
    );
    assert_eq!(
        value(&exported, "tend_lease_held", &[("tend_lease", "scheduler")]),
        1.0
    );
    assert!(
        value(
            &exported,
            "tend_scheduler_ticks_total",
            &[("tend_outcome", "ok")]
        ) >= 1.0
    );
    assert!(value(&exported, "db_client_connection_max", &[]) >= 2.0);

    // Every metric and label the dashboard and the alerts select exists.
    let queries = queries();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut checked = HashSet::new();
    for (place, expr) in &queries {
        let parsed = promql_parser::parser::parse(&expr.replace("$__rate_interval", "5m"))
            .unwrap_or_else(|e| panic!("{place}: {expr}: {e}"));
        let mut selections = Vec::new();
        selected(&parsed, &mut selections);
        assert!(!selections.is_empty(), "{place} selects nothing");
        for (name, labels) in selections {
            if SCRAPE_SERIES.contains(&name.as_str()) {
                continue;
            }
            let series = exported.get(&name).unwrap_or_else(|| {
                panic!("{place} queries {name}, which the server does not export")
            });
            for label in labels {
                assert!(
                    series.iter().any(|(l, _)| l.contains_key(&label)),
                    "{place} selects {name} by {label}, a label it does not have"
                );
            }
            checked.insert(name);
        }
    }
    assert!(checked.len() >= 15, "{checked:?}");
}

// ----------------------------------------------------------------- drain

#[tokio::test]
async fn on_sigterm_health_says_not_serving_while_calls_still_succeed() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let db = fresh_database().await;
    let server = TendProcess::start(&[
        ("TEND_DATABASE_URL", db.url.as_str()),
        ("TEND_AUTH_TOKENS", &tokens()),
        ("TEND_SHUTDOWN_DRAIN_SECONDS", "3"),
    ]);
    let channel = channel(&server).await;
    let mut health = HealthClient::new(channel.clone());
    let whole = || HealthCheckRequest {
        service: String::new(),
    };
    let status = health.check(whole()).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::Serving as i32);

    server.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let status = health.check(whole()).await.unwrap().into_inner().status;
        if status == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "health still {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Draining: health says go away, yet a call in this window is served.
    PracticeLogServiceClient::new(channel)
        .log_practice(authed(practice("p-1", 10)))
        .await
        .unwrap();
    let status =
        tokio::task::spawn_blocking(move || server.stop_with("TERM", Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(status.success(), "{status:?}");
}

// -------------------------------------------------------------- replicas

/// Reads a subscription until it has `n` events: (position, event id).
async fn first_events(
    stream: &mut tonic::Streaming<epb::SubscribeResponse>,
    seen: &mut Vec<(u64, String)>,
    n: usize,
) {
    while seen.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("the subscription keeps up")
            .expect("the subscription stays open")
            .expect("no error");
        if let Some(epb::subscribe_response::Message::Event(e)) = message.message {
            seen.push((e.position, e.event_id));
        }
    }
}

async fn log_order(pool: &sqlx::PgPool, n: usize) -> Vec<(u64, String)> {
    let rows: Vec<(i64, Uuid)> = sqlx::query_as(
        "SELECT position, event_id FROM events WHERE tenant_id = 'clinic'
         ORDER BY position LIMIT $1",
    )
    .bind(n as i64)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(p, id)| (p as u64, id.to_string()))
        .collect()
}

async fn tenant_events(pool: &sqlx::PgPool) -> usize {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = 'clinic'")
        .fetch_one(pool)
        .await
        .unwrap();
    n as usize
}

/// Which of `replicas` report holding `lease`, from their metrics.
fn holders(replicas: &[(usize, String)], lease: &str) -> Vec<usize> {
    replicas
        .iter()
        .filter(|(_, addr)| {
            value(
                &samples(&tend_tests::scrape(addr)),
                "tend_lease_held",
                &[("tend_lease", lease)],
            ) == 1.0
        })
        .map(|(i, _)| *i)
        .collect()
}

async fn one_holder(replicas: &[(usize, String)], lease: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = holders(replicas, lease);
        if h.len() == 1 {
            return h[0];
        }
        assert!(
            Instant::now() < deadline,
            "{lease}: holders {h:?}, expected exactly one"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ticks(addr: &str) -> f64 {
    value(
        &samples(&tend_tests::scrape(addr)),
        "tend_scheduler_ticks_total",
        &[("tend_outcome", "ok")],
    )
}

#[tokio::test]
async fn three_replicas_share_the_log_run_background_work_once_and_hand_it_over() {
    let db = fresh_database().await;
    let tokens = tokens();
    let env = [
        ("TEND_DATABASE_URL", db.url.as_str()),
        ("TEND_AUTH_TOKENS", tokens.as_str()),
        ("TEND_SCHEDULER_LEASE_SECONDS", "3"),
        ("TEND_SCHEDULER_TICK_MS", "200"),
        ("OTEL_METRICS_EXPORTER", "prometheus"),
        ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
        ("OTEL_EXPORTER_PROMETHEUS_PORT", "0"),
    ];
    let mut replicas: Vec<Option<TendProcess>> =
        (0..3).map(|_| Some(TendProcess::start(&env))).collect();
    let mut channels = Vec::new();
    let mut metrics = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        let r = r.as_ref().unwrap();
        channels.push(channel(r).await);
        metrics.push((i, tend_tests::metrics_addr(r)));
    }

    // A subscriber on every replica, from the start of the log.
    let mut streams = Vec::new();
    for c in &channels {
        streams.push(
            EventStreamServiceClient::new(c.clone())
                .subscribe(authed(epb::SubscribeRequest::default()))
                .await
                .unwrap()
                .into_inner(),
        );
    }

    // Writes through every replica at once: enrollments and practice.
    let mut writes = Vec::new();
    for (i, c) in channels.iter().enumerate() {
        let c = c.clone();
        writes.push(tokio::spawn(async move {
            let mut scheduler = ProtocolSchedulerServiceClient::new(c.clone());
            let mut practice_log = PracticeLogServiceClient::new(c);
            for k in 0..4 {
                let p = format!("p-{i}-{k}");
                scheduler.enroll(authed(enroll(&p))).await.unwrap();
                practice_log
                    .log_practice(authed(practice(&p, 5 + k)))
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writes {
        w.await.unwrap();
    }

    // Every subscriber sees every event, in the log's order, whichever
    // replica wrote it.
    let n = tenant_events(&db.pool).await;
    assert!(n >= 24, "{n} events");
    let expected = log_order(&db.pool, n).await;
    let mut seen = [Vec::new(), Vec::new(), Vec::new()];
    for (stream, seen) in streams.iter_mut().zip(seen.iter_mut()) {
        first_events(stream, seen, n).await;
        assert_eq!(seen[..n], expected[..], "a subscriber's order");
    }

    // Background work runs on exactly one replica: only the scheduler's
    // lease holder ticks. (A stall longer than the lease on a busy machine
    // may move the lease during the window: then measure again.)
    let mut attempts = 0;
    let scheduler_holder = loop {
        attempts += 1;
        let holder = one_holder(&metrics, "scheduler").await;
        let before: Vec<f64> = metrics.iter().map(|(_, a)| ticks(a)).collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after: Vec<f64> = metrics.iter().map(|(_, a)| ticks(a)).collect();
        if one_holder(&metrics, "scheduler").await != holder && attempts < 3 {
            continue;
        }
        for i in 0..3 {
            if i == holder {
                assert!(after[i] > before[i], "the holder ticks");
            } else {
                assert_eq!(after[i], before[i], "replica {i} ticked without the lease");
            }
        }
        break holder;
    };
    one_holder(&metrics, "arc").await;
    one_holder(&metrics, "webhooks").await;

    // Kill the scheduler's holder: another replica takes the work over
    // once the lease expires, and the survivors go on serving.
    let killed = scheduler_holder;
    replicas[killed]
        .take()
        .unwrap()
        .stop_with("KILL", Duration::from_secs(10));
    let survivors: Vec<(usize, String)> = metrics
        .iter()
        .filter(|(i, _)| *i != killed)
        .cloned()
        .collect();
    let new_holder = one_holder(&survivors, "scheduler").await;
    assert_ne!(new_holder, killed);
    // The arc projection's and the webhooks' leases, wherever they were,
    // are each held by one survivor.
    one_holder(&survivors, "arc").await;
    one_holder(&survivors, "webhooks").await;
    let t0 = ticks(&survivors.iter().find(|(i, _)| *i == new_holder).unwrap().1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let t1 = ticks(&survivors.iter().find(|(i, _)| *i == new_holder).unwrap().1);
    assert!(t1 > t0, "the new holder ticks");

    for (i, _) in &survivors {
        PracticeLogServiceClient::new(channels[*i].clone())
            .log_practice(authed(practice(&format!("p-{i}-0"), 20)))
            .await
            .unwrap();
    }
    let m = tenant_events(&db.pool).await;
    let expected = log_order(&db.pool, m).await;
    for (i, _) in &survivors {
        first_events(&mut streams[*i], &mut seen[*i], m).await;
        assert_eq!(
            seen[*i][..m],
            expected[..],
            "subscriber on replica {i} after the kill"
        );
    }
}

/// Each thread of process `pid`: its name and nice value (from /proc).
fn threads(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        // After the command name in parentheses: state is field 3, nice 19.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let nice = rest.split(' ').nth(16).unwrap().parse().unwrap();
        out.push((name.trim().to_owned(), nice));
    }
    out
}

#[tokio::test]
async fn background_work_runs_on_its_own_thread_below_the_calls_priority() {
    let db = fresh_database().await;
    let tokens = tokens();
    let server = TendProcess::start(&[
        ("TEND_DATABASE_URL", db.url.as_str()),
        ("TEND_AUTH_TOKENS", tokens.as_str()),
        ("TEND_SCHEDULER_TICK_MS", "100"),
        ("TEND_BACKGROUND_NICE", "10"),
    ]);
    let channel = channel(&server).await;
    // The background thread does the scheduler's work: an enrollment's
    // schedule reaches ListDue only through a scheduler round.
    let mut scheduler = ProtocolSchedulerServiceClient::new(channel.clone());
    scheduler.enroll(authed(enroll("P-nice"))).await.unwrap();
    let mut practice_log = PracticeLogServiceClient::new(channel);
    practice_log
        .log_practice(authed(practice("P-nice", 10)))
        .await
        .unwrap();
    // And the arc projection's: its checkpoint reaches the head.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (rows, head, arc): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM scheduler_occurrences),
                    (SELECT coalesce(max(position), 0) FROM events),
                    (SELECT coalesce(max(c.position), 0) FROM projections p
                       JOIN projection_checkpoints c
                         ON c.name = p.name AND c.generation = p.active_generation
                      WHERE p.name = 'arc')",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if rows > 0 && arc >= head {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "background work did not run: {rows} rows, head {head}, arc at {arc}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let threads = threads(server.pid());
    let background: Vec<_> = threads
        .iter()
        .filter(|(name, _)| name == "tend-background")
        .collect();
    // One worker thread, and any blocking threads its tasks started.
    assert!(!background.is_empty(), "a background thread: {threads:?}");
    assert!(
        background.iter().all(|(_, nice)| *nice == 10),
        "TEND_BACKGROUND_NICE: {threads:?}"
    );
    let calls: Vec<_> = threads
        .iter()
        .filter(|(name, _)| name == "tend-serve")
        .collect();
    assert!(!calls.is_empty(), "the calls' runtime threads: {threads:?}");
    assert!(calls.iter().all(|(_, nice)| *nice == 0), "{threads:?}");
}
