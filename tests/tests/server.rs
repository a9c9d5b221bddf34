//! The `tend` server end to end: a real process, real gRPC clients.

use std::time::Duration;

use serde_json::json;
use tend_api::events::v1 as pb;
use tend_api::events::v1::event_stream_service_client::EventStreamServiceClient;
use tend_event_store::{EventStore, ExpectedVersion, NewEvent, StreamId, TenantId};
use tend_testkit::{TestDatabase, fresh_database};
use tend_tests::{TendProcess, channel};
use tokio_stream::StreamExt;
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_types::StatusExt;
use uuid::Uuid;

// Fixed test credentials: the server is configured with their hashes only.
const TOKEN_A: &str = "tend_test_token_for_clinic_a";
const TOKEN_B: &str = "tend_test_token_for_clinic_b";

fn tokens_config() -> String {
    format!(
        "clinic-a={},clinic-b={}",
        tend_auth::TokenHash::of(TOKEN_A),
        tend_auth::TokenHash::of(TOKEN_B)
    )
}

fn start(db: &TestDatabase) -> TendProcess {
    TendProcess::start(&[
        ("TEND_DATABASE_URL", &db.url),
        ("TEND_AUTH_TOKENS", &tokens_config()),
    ])
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    tend_tests::bearer(token, message)
}

async fn append(store: &EventStore, tenant: &str, stream: &str, n: u64) -> u64 {
    let event =
        NewEvent::new(Uuid::new_v4(), "PracticeLogged", 1, &json!({ "n": n })).expect("event");
    store
        .append(
            &TenantId::new(tenant).expect("tenant"),
            &StreamId::new(stream).expect("stream"),
            ExpectedVersion::Any,
            vec![event],
        )
        .await
        .expect("append")
        .positions[0]
}

async fn next_message(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
) -> Result<pb::subscribe_response::Message, tonic::Status> {
    let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a message within 10 s")
        .expect("the stream is open")?;
    Ok(message.message.expect("message set"))
}

/// The next event, passing over checkpoints.
async fn next_event(stream: &mut tonic::Streaming<pb::SubscribeResponse>) -> pb::RecordedEvent {
    loop {
        match next_message(stream).await.expect("no error") {
            pb::subscribe_response::Message::Event(e) => return e,
            pb::subscribe_response::Message::Checkpoint(_) => {}
        }
    }
}

#[tokio::test]
async fn health_and_reflection_answer_without_a_token_and_tend_calls_need_one() {
    let db = fresh_database().await;
    let server = start(&db);
    let channel = channel(&server).await;

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "tend.events.v1.EventStreamService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("a response")
        .expect("no error");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["tend.events.v1.EventStreamService", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }

    let mut events = EventStreamServiceClient::new(channel);
    let read = pb::ReadStreamRequest {
        stream_id: "practice-1".into(),
        ..Default::default()
    };
    let refused = events
        .read_stream(Request::new(read.clone()))
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = events
        .read_stream(authed(read.clone(), "tend_not_a_real_token"))
        .await
        .expect_err("bad token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = events
        .subscribe(Request::new(pb::SubscribeRequest::default()))
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    // With a token the call goes through (the stream does not exist yet).
    let missing = events
        .read_stream(authed(read, TOKEN_A))
        .await
        .expect_err("no such stream");
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn sigterm_ends_open_streams_and_exits_zero() {
    let db = fresh_database().await;
    let server = start(&db);
    let mut events = EventStreamServiceClient::new(channel(&server).await);
    let mut stream = events
        .subscribe(authed(pb::SubscribeRequest::default(), TOKEN_A))
        .await
        .expect("subscribe")
        .into_inner();

    let ended = tokio::spawn(async move {
        // The subscription is idle; it must end with UNAVAILABLE, not hang.
        loop {
            match tokio::time::timeout(Duration::from_secs(15), stream.next()).await {
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(status))) => return Some(status.code()),
                Ok(None) => return None,
                Err(_) => panic!("the stream did not end"),
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status =
        tokio::task::spawn_blocking(move || server.stop_with("TERM", Duration::from_secs(15)))
            .await
            .expect("stop");
    assert!(status.success(), "exit status {status}");
    assert_eq!(ended.await.expect("stream task"), Some(Code::Unavailable));
}

#[tokio::test]
async fn a_subscriber_resumes_from_its_checkpoint_after_a_restart() {
    let db = fresh_database().await;
    let writer = EventStore::open(db.pool.clone(), Default::default())
        .await
        .expect("store");
    for n in 0..5 {
        append(&writer, "clinic-a", "practice-1", n).await;
    }

    let server = start(&db);
    let mut client = EventStreamServiceClient::new(channel(&server).await);
    let mut stream = client
        .subscribe(authed(pb::SubscribeRequest::default(), TOKEN_A))
        .await
        .expect("subscribe")
        .into_inner();
    let mut checkpoint = 0;
    for n in 0..3 {
        let event = next_event(&mut stream).await;
        assert_eq!(event.payload_json, json!({ "n": n }).to_string());
        assert!(event.position > checkpoint);
        checkpoint = event.position;
    }
    drop(stream);
    let status =
        tokio::task::spawn_blocking(move || server.stop_with("TERM", Duration::from_secs(15)))
            .await
            .expect("stop");
    assert!(status.success());

    // Written while no server runs.
    for n in 5..8 {
        append(&writer, "clinic-a", "practice-1", n).await;
    }

    let server = start(&db);
    let mut client = EventStreamServiceClient::new(channel(&server).await);
    let mut stream = client
        .subscribe(authed(
            pb::SubscribeRequest {
                after_position: checkpoint,
                ..Default::default()
            },
            TOKEN_A,
        ))
        .await
        .expect("subscribe")
        .into_inner();
    for n in 3..8 {
        let event = next_event(&mut stream).await;
        assert_eq!(
            event.payload_json,
            json!({ "n": n }).to_string(),
            "resumes at n = 3"
        );
        assert!(event.position > checkpoint);
        checkpoint = event.position;
    }
    // And it follows live after the restart.
    append(&writer, "clinic-a", "practice-1", 8).await;
    let event = next_event(&mut stream).await;
    assert_eq!(event.payload_json, json!({ "n": 8 }).to_string());
}

#[tokio::test]
async fn a_tenant_never_receives_another_tenants_events() {
    let db = fresh_database().await;
    let writer = EventStore::open(db.pool.clone(), Default::default())
        .await
        .expect("store");
    let server = start(&db);
    let mut client = EventStreamServiceClient::new(channel(&server).await);
    let mut stream = client
        .subscribe(authed(pb::SubscribeRequest::default(), TOKEN_A))
        .await
        .expect("subscribe")
        .into_inner();

    for n in 0..6 {
        let tenant = if n % 2 == 0 { "clinic-a" } else { "clinic-b" };
        append(&writer, tenant, "practice-shared", n).await;
    }
    append(&writer, "clinic-b", "practice-only_b", 100).await;

    let mut seen = Vec::new();
    let mut last_position = 0;
    while last_position < 7 {
        match next_message(&mut stream).await.expect("no error") {
            pb::subscribe_response::Message::Event(e) => {
                last_position = e.position;
                seen.push(e.payload_json);
            }
            pb::subscribe_response::Message::Checkpoint(c) => last_position = c.position,
        }
    }
    let expected: Vec<_> = [0, 2, 4]
        .iter()
        .map(|n| json!({ "n": n }).to_string())
        .collect();
    assert_eq!(seen, expected);

    // The same stream name holds only the caller's own events...
    let shared = client
        .read_stream(authed(
            pb::ReadStreamRequest {
                stream_id: "practice-shared".into(),
                ..Default::default()
            },
            TOKEN_A,
        ))
        .await
        .expect("read")
        .into_inner();
    assert_eq!(shared.events.len(), 3);
    assert_eq!(shared.stream_version, 2);
    // ...and another tenant's stream does not exist for it.
    let hidden = client
        .read_stream(authed(
            pb::ReadStreamRequest {
                stream_id: "practice-only_b".into(),
                ..Default::default()
            },
            TOKEN_A,
        ))
        .await
        .expect_err("not visible");
    assert_eq!(hidden.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_requests_get_invalid_argument_naming_the_field() {
    let db = fresh_database().await;
    let server = start(&db);
    let mut client = EventStreamServiceClient::new(channel(&server).await);
    let cases = [
        (
            pb::ReadStreamRequest {
                stream_id: "no_category_separator".into(),
                ..Default::default()
            },
            "stream_id",
        ),
        (
            pb::ReadStreamRequest {
                stream_id: "practice-1".into(),
                max_count: 5000,
                ..Default::default()
            },
            "max_count",
        ),
        (
            pb::ReadStreamRequest {
                stream_id: "practice-1".into(),
                direction: 42,
                ..Default::default()
            },
            "direction",
        ),
    ];
    for (request, field) in cases {
        let status = client
            .read_stream(authed(request, TOKEN_A))
            .await
            .expect_err("invalid");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        let violations = status
            .get_details_bad_request()
            .expect("bad request details")
            .field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, field);
        assert!(!violations[0].description.is_empty());
    }
    let status = client
        .subscribe(authed(
            pb::SubscribeRequest {
                categories: vec![String::new()],
                ..Default::default()
            },
            TOKEN_A,
        ))
        .await
        .expect_err("empty category");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn with_no_database_configured_it_runs_its_own_postgres() {
    let dir = tempfile::Builder::new()
        .prefix("tend-embedded")
        .tempdir()
        .expect("tempdir");
    // The cluster may run as the postgres user, who must reach the folder.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let data_dir = dir.path().to_str().expect("utf-8 path").to_string();
    let server = TendProcess::start(&[("TEND_DATA_DIR", &data_dir)]);
    let token = server
        .banner
        .iter()
        .find_map(|l| {
            l.split_once("(new at each start): ")
                .map(|(_, t)| t.to_string())
        })
        .expect("the banner prints a development token");

    let channel = channel(&server).await;
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let mut client = EventStreamServiceClient::new(channel);
    client
        .subscribe(authed(pb::SubscribeRequest::default(), &token))
        .await
        .expect("the printed token works");

    let pid_file = dir.path().join("postgres/postmaster.pid");
    assert!(pid_file.exists(), "the embedded cluster runs");
    let status =
        tokio::task::spawn_blocking(move || server.stop_with("INT", Duration::from_secs(20)))
            .await
            .expect("stop");
    assert!(status.success(), "exit status {status}");
    assert!(
        !pid_file.exists(),
        "the embedded cluster stopped with the server"
    );
}

#[test]
fn migrate_applies_migrations_and_exits() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = runtime.block_on(fresh_database());
    // Already migrated by the test kit: applying again is a no-op.
    let output = std::process::Command::new(tend_tests::tend_binary())
        .arg("migrate")
        .env("TEND_DATABASE_URL", &db.url)
        .env("TEND_LOG", "warn")
        .output()
        .expect("run tend migrate");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "migrations applied"
    );

    let output = std::process::Command::new(tend_tests::tend_binary())
        .args([
            "migrate",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
        ])
        .env("TEND_LOG", "off")
        .output()
        .expect("run tend migrate");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot connect to TEND_DATABASE_URL"),
        "{output:?}"
    );
}
