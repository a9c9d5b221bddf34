//! Webhooks end to end: the real binary delivering to a partner's receiver
//! (tests/receiver, Python, verifying every signature with the
//! `standardwebhooks` package from PyPI) that is killed, answers 500s and
//! is slow: every matching event arrives at least once, in log order; a
//! receiver that never recovers gets its endpoint disabled, as does a 410;
//! URLs into the operator's network are refused, at registration and again
//! at delivery.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tend_api::practice::v1::practice_log_service_client::PracticeLogServiceClient;
use tend_api::webhooks::v1 as pb;
use tend_api::webhooks::v1::webhook_service_client::WebhookServiceClient;
use tend_testkit::{TestDatabase, fresh_database};
use tend_tests::{TendProcess, bearer, channel, practice_request};
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

const TOKEN: &str = "tend_test_token_for_webhooks";

fn start(db: &TestDatabase, extra: &[(&str, &str)]) -> TendProcess {
    let tokens = format!("clinic={}", tend_auth::TokenHash::of(TOKEN));
    let mut env = vec![
        ("TEND_DATABASE_URL", db.url.as_str()),
        ("TEND_AUTH_TOKENS", tokens.as_str()),
        ("TEND_SCHEDULER_LEASE_SECONDS", "2"),
        ("TEND_SCHEDULER_TICK_MS", "100"),
        ("TEND_WEBHOOK_BACKOFF_MS", "50"),
        ("TEND_WEBHOOK_BACKOFF_MAX_SECONDS", "1"),
    ];
    env.extend_from_slice(extra);
    TendProcess::start(&env)
}

/// The receivers' allowances: plain http to 127.0.0.1, and its network.
const LOCAL: [(&str, &str); 2] = [
    ("TEND_WEBHOOK_ALLOW_HTTP_HOSTS", "127.0.0.1"),
    ("TEND_WEBHOOK_ALLOW_NETWORKS", "127.0.0.0/8"),
];

/// A receiver process on `port`, logging to `log`.
struct Receiver {
    child: Child,
}

impl Receiver {
    fn start(port: u16, secret: &str, log: &Path, extra: &[&str]) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("receiver/webhook_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--secret", secret, "--log"])
            .arg(log)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("listening"), "receiver said {line:?}");
        Self { child }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every delivery a receiver logged.
fn received(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The positions of the tenant's events of `category`, from the database.
async fn positions(db: &TestDatabase, category: &str) -> Vec<u64> {
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let rows: Vec<i64> = sqlx::query_scalar(
        "SELECT position FROM events WHERE tenant_id = 'clinic' AND category = $1 ORDER BY position",
    )
    .bind(category)
    .fetch_all(&pool)
    .await
    .unwrap();
    rows.into_iter().map(|p| p as u64).collect()
}

async fn create(
    client: &mut WebhookServiceClient<Channel>,
    url: &str,
    categories: &[&str],
) -> Result<pb::CreateEndpointResponse, tonic::Status> {
    client
        .create_endpoint(bearer(
            TOKEN,
            pb::CreateEndpointRequest {
                request_id: Uuid::new_v4().to_string(),
                url: url.into(),
                categories: categories.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            },
        ))
        .await
        .map(|r| r.into_inner())
}

/// An endpoint for practice events on a free local port: the port, what
/// CreateEndpoint answered, and the endpoint's id.
async fn local_endpoint(
    client: &mut WebhookServiceClient<Channel>,
) -> (u16, pb::CreateEndpointResponse, String) {
    let port = free_port();
    let created = create(
        client,
        &format!("http://127.0.0.1:{port}/tend"),
        &["practice"],
    )
    .await
    .unwrap();
    let id = created.endpoint.clone().unwrap().endpoint_id;
    (port, created, id)
}

/// Waits until the endpoint is disabled; it, then.
async fn until_disabled(client: &mut WebhookServiceClient<Channel>, id: &str) -> pb::Endpoint {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let e = get(client, id).await;
        if e.state == pb::EndpointState::Disabled as i32 {
            return e;
        }
        assert!(Instant::now() < deadline, "never disabled: {e:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(client: &mut WebhookServiceClient<Channel>, id: &str) -> pb::Endpoint {
    client
        .get_endpoint(bearer(
            TOKEN,
            pb::GetEndpointRequest {
                endpoint_id: id.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap()
}

async fn log_practice(channel: &Channel, n: usize, prefix: &str) {
    let mut client = PracticeLogServiceClient::new(channel.clone());
    for i in 0..n {
        client
            .log_practice(bearer(
                TOKEN,
                practice_request(&format!("{prefix}-{}", i % 4)),
            ))
            .await
            .unwrap();
    }
}

/// Waits until `done` holds of what the receiver logged.
async fn wait_for(log: &Path, what: &str, done: impl Fn(&[serde_json::Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = received(log);
        if done(&got) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} deliveries so far",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn delivered_positions(got: &[serde_json::Value]) -> Vec<u64> {
    got.iter()
        .filter(|d| d["status"] == 200)
        .map(|d| d["position"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn every_event_arrives_at_least_once_and_in_order_through_500s_a_kill_and_slowness() {
    let db = fresh_database().await;
    let mut env = LOCAL.to_vec();
    env.extend([
        ("OTEL_METRICS_EXPORTER", "prometheus"),
        ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
        ("OTEL_EXPORTER_PROMETHEUS_PORT", "0"),
    ]);
    let server = start(&db, &env);
    let channel = channel(&server).await;
    let mut webhooks = WebhookServiceClient::new(channel.clone());
    let dir = tempfile::tempdir().unwrap();
    let log: PathBuf = dir.path().join("deliveries.jsonl");
    let port = free_port();
    let created = create(
        &mut webhooks,
        &format!("http://127.0.0.1:{port}/tend"),
        &["practice"],
    )
    .await
    .unwrap();
    assert!(created.secret.starts_with("whsec_"));
    let id = created.endpoint.unwrap().endpoint_id;

    // 500 to the first three requests.
    let receiver = Receiver::start(port, &created.secret, &log, &["--fail-first", "3"]);
    log_practice(&channel, 12, "a").await;
    wait_for(&log, "the first twelve", |got| {
        delivered_positions(got).len() >= 12
    })
    .await;

    // Killed: what is logged meanwhile waits, and is retried.
    receiver.kill();
    log_practice(&channel, 8, "b").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let failing = loop {
        let d = get(&mut webhooks, &id).await.delivery.unwrap();
        if d.failed_attempts > 0 || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(failing.failed_attempts > 0, "{failing:?}");
    assert_eq!(failing.last_error, "connection", "{failing:?}");
    assert!(failing.lag_seconds > 0.0, "{failing:?}");

    // Back, and slow.
    let _receiver = Receiver::start(port, &created.secret, &log, &["--slow-ms", "150"]);
    log_practice(&channel, 5, "c").await;
    let expected = positions(&db, "practice").await;
    assert_eq!(expected.len(), 25);
    wait_for(&log, "all twenty-five", |got| {
        let positions: BTreeSet<u64> = delivered_positions(got).into_iter().collect();
        expected.iter().all(|p| positions.contains(p))
    })
    .await;

    let got = received(&log);
    assert!(
        got.iter().all(|d| d["verified"] == true),
        "a signature failed to verify"
    );
    // In log order: the first receipt of each event follows the log, and
    // the webhook-id is the position.
    let mut firsts = Vec::new();
    for d in &got {
        let p = d["position"].as_u64().unwrap();
        assert_eq!(d["id"].as_str().unwrap(), p.to_string());
        assert_eq!(d["type"], "PracticeLogged");
        if !firsts.contains(&p) {
            firsts.push(p);
        }
    }
    assert_eq!(firsts, expected, "first receipts out of log order");
    assert_eq!(got.iter().filter(|d| d["status"] == 500).count(), 3);

    // Positions are saved within 200 ms of a delivery.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = get(&mut webhooks, &id).await;
        let at = status.delivery.as_ref().unwrap().delivered_position;
        if at == *expected.last().unwrap() || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let delivery = status.delivery.unwrap();
    assert_eq!(status.state, pb::EndpointState::Active as i32);
    assert_eq!(delivery.delivered_position, *expected.last().unwrap());
    assert_eq!(delivery.lag_seconds, 0.0);
    assert!(
        delivery.delivered_total >= 25 && delivery.failed_total >= 4,
        "{delivery:?}"
    );
    assert_eq!(delivery.last_error, "");

    // A position beyond the log is refused, naming the field.
    let beyond = webhooks
        .redeliver_events(bearer(
            TOKEN,
            pb::RedeliverEventsRequest {
                endpoint_id: id.clone(),
                after_position: u64::MAX,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(beyond.code(), Code::InvalidArgument);
    assert!(
        beyond.message().starts_with("after_position: "),
        "{beyond:?}"
    );

    // Redelivery from a position: the events after it, again, in order.
    let from = expected[19];
    webhooks
        .redeliver_events(bearer(
            TOKEN,
            pb::RedeliverEventsRequest {
                endpoint_id: id.clone(),
                after_position: from,
            },
        ))
        .await
        .unwrap();
    let before = got.len();
    wait_for(&log, "the redelivery", |got| got.len() >= before + 5).await;
    let again: Vec<u64> = delivered_positions(&received(&log)[before..]);
    assert_eq!(again, expected[20..].to_vec());

    // The metrics say where it is, by endpoint.
    let metrics = tend_tests::scrape(&tend_tests::metrics_addr(&server));
    let label = format!("tend_webhook_endpoint=\"{id}\"");
    for series in [
        "tend_webhook_attempts_total",
        "tend_webhook_attempt_duration_seconds_bucket",
        "tend_webhook_lag_seconds",
        "tend_webhook_delivered_position",
        "tend_webhook_failing",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(series) && l.contains(&label)),
            "no {series} for the endpoint in:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("tend_lease_held{tend_lease=\"webhooks\"} 1"),
        "{metrics}"
    );
    let status =
        tokio::task::spawn_blocking(move || server.stop_with("TERM", Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn an_endpoint_that_never_recovers_is_disabled_and_enabled_again_from_where_it_stopped() {
    let db = fresh_database().await;
    let mut env = LOCAL.to_vec();
    env.push(("TEND_WEBHOOK_RETRY_SECONDS", "2"));
    let server = start(&db, &env);
    let channel = channel(&server).await;
    let mut webhooks = WebhookServiceClient::new(channel.clone());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("deliveries.jsonl");
    let (port, created, id) = local_endpoint(&mut webhooks).await;
    let down = Receiver::start(port, &created.secret, &log, &["--status", "503"]);
    log_practice(&channel, 3, "a").await;

    let disabled = until_disabled(&mut webhooks, &id).await;
    assert_eq!(
        disabled.disabled_reason,
        pb::DisabledReason::RetriesExhausted as i32
    );
    let first = positions(&db, "practice").await[0];
    assert_eq!(disabled.delivery.as_ref().unwrap().last_status, 503);
    // ... with an event saying so, in the endpoint's stream.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let (reason, failed, status): (String, i64, i64) = sqlx::query_as(
        "SELECT payload->>'reason', (payload->>'failed_position')::bigint, (payload->>'last_status')::bigint
         FROM events WHERE event_type = 'WebhookEndpointDisabled'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (reason.as_str(), failed as u64, status),
        ("retries_exhausted", first, 503)
    );
    down.kill();

    // Fixed: enabled, it delivers from the event that failed.
    let up = Receiver::start(port, &created.secret, &log, &[]);
    webhooks
        .enable_endpoint(bearer(
            TOKEN,
            pb::EnableEndpointRequest {
                endpoint_id: id.clone(),
                after_position: None,
            },
        ))
        .await
        .unwrap();
    let expected = positions(&db, "practice").await;
    wait_for(&log, "the three after enabling", |got| {
        delivered_positions(got) == expected
    })
    .await;
    drop(up);

    // A receiver that answers 410 Gone has its endpoint disabled at once.
    let (gone_port, gone, gone_id) = local_endpoint(&mut webhooks).await;
    let gone_log = dir.path().join("gone.jsonl");
    let _gone = Receiver::start(gone_port, &gone.secret, &gone_log, &["--status", "410"]);
    log_practice(&channel, 1, "b").await;
    let e = until_disabled(&mut webhooks, &gone_id).await;
    assert_eq!(e.disabled_reason, pb::DisabledReason::Gone as i32);
    assert_eq!(received(&gone_log).len(), 1, "no retry after 410");
}

#[tokio::test]
async fn urls_into_the_operators_network_are_refused_at_registration_and_at_delivery() {
    let db = fresh_database().await;
    let server = start(&db, &[]);
    let mut webhooks = WebhookServiceClient::new(channel(&server).await);
    for url in [
        "http://hooks.example.com/tend",
        "https://127.0.0.1/tend",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.5/tend",
        "https://[::1]/tend",
        "https://localhost/tend",
        "https://2130706433/tend",
        "https://user:pass@hooks.example.com/tend",
        "not a url",
    ] {
        let e = create(&mut webhooks, url, &[]).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{url}: {e:?}");
        assert!(e.message().starts_with("url: "), "{url}: {e:?}");
    }
    // Nothing was registered.
    let listed = webhooks
        .list_endpoints(bearer(TOKEN, pb::ListEndpointsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.endpoints.is_empty());
    drop(server);

    // Registered while the operator allowed 127.0.0.1, delivered after the
    // allowance went: refused at the connection, never sent.
    let allowed = start(&db, &LOCAL);
    let mut webhooks = WebhookServiceClient::new(channel(&allowed).await);
    let (port, created, id) = local_endpoint(&mut webhooks).await;
    drop(allowed);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("deliveries.jsonl");
    let _receiver = Receiver::start(port, &created.secret, &log, &[]);
    let strict = start(&db, &[("TEND_WEBHOOK_ALLOW_HTTP_HOSTS", "127.0.0.1")]);
    let channel = channel(&strict).await;
    let mut webhooks = WebhookServiceClient::new(channel.clone());
    log_practice(&channel, 1, "a").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = get(&mut webhooks, &id).await.delivery.unwrap();
        if d.last_error == "address_not_allowed" {
            break;
        }
        assert!(Instant::now() < deadline, "{d:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(received(&log).is_empty(), "a refused address was called");
}

#[tokio::test]
async fn an_endpoint_tied_to_a_recipient_gets_only_those_who_share_under_pseudonyms() {
    use tend_api::privacy::v1 as ppb;
    use tend_api::privacy::v1::privacy_service_client::PrivacyServiceClient;
    let db = fresh_database().await;
    // A test key, in the test code only.
    let recipients = "clinic/analysts/k1:loMS65xAtKnxZMLG8jC4KL9ECPhDS6Z8PKznanE7Y8s=";
    let mut env = LOCAL.to_vec();
    env.push(("TEND_RECIPIENT_KEYS", recipients));
    let server = start(&db, &env);
    let channel = channel(&server).await;
    let mut privacy = PrivacyServiceClient::new(channel.clone());
    privacy
        .define_consent_document(bearer(
            TOKEN,
            ppb::DefineConsentDocumentRequest {
                document: Some(ppb::ConsentDocumentVersion {
                    document_id: "study-consent".into(),
                    version: 1,
                    purposes: vec![ppb::ConsentPurpose::ResearchSharing as i32],
                    defined_at: None,
                }),
            },
        ))
        .await
        .unwrap();
    let mut webhooks = WebhookServiceClient::new(channel.clone());
    let port = free_port();
    let created = webhooks
        .create_endpoint(bearer(
            TOKEN,
            pb::CreateEndpointRequest {
                request_id: Uuid::new_v4().to_string(),
                url: format!("http://127.0.0.1:{port}/research"),
                categories: vec!["practice".into()],
                recipient_id: "analysts".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("deliveries.jsonl");
    let _receiver = Receiver::start(port, &created.secret, &log, &[]);

    // One participant shares for research, one does not.
    let shares = privacy
        .record_consent(bearer(
            TOKEN,
            ppb::RecordConsentRequest {
                participant_ref: "p-shares".into(),
                request_id: Uuid::new_v4().to_string(),
                document_id: "study-consent".into(),
                document_version: 1,
                purposes: vec![ppb::ConsentPurpose::ResearchSharing as i32],
                given_at: Some(prost_types::Timestamp {
                    seconds: jiff::Timestamp::now().as_second() - 60,
                    nanos: 0,
                }),
                method: ppb::ConsentMethod::ElectronicSignature as i32,
                evidence_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
                    .into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut practice = PracticeLogServiceClient::new(channel.clone());
    for who in ["p-private", "p-shares", "p-private", "p-shares"] {
        practice
            .log_practice(bearer(TOKEN, practice_request(who)))
            .await
            .unwrap();
    }
    wait_for(&log, "the two shared entries", |got| got.len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = received(&log);
    assert_eq!(got.len(), 2, "only the participant who shares: {got:?}");
    assert!(shares.consent.is_some());
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let real: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT stream_id FROM events WHERE category = 'practice'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(real.len(), 2);
    for d in &got {
        assert_eq!(d["verified"], true);
        assert_eq!(d["type"], "PracticeLogged");
        assert_eq!(d["pseudonym_key_id"], "k1");
        let stream = d["stream_id"].as_str().unwrap();
        assert!(stream.starts_with("practice-"), "{stream}");
        assert!(
            !real.iter().any(|r| r == stream),
            "a real stream id: {stream}"
        );
        assert!(d["payload"].get("note").is_none());
    }
    // One pseudonym for the one participant.
    assert_eq!(got[0]["stream_id"], got[1]["stream_id"]);
}
