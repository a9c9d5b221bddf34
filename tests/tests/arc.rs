//! Arcs end to end: `tend demo` fills a tenant, the real server projects
//! it and answers ArcService over a socket, `tend projections rebuild`
//! switches generations under a running server, and with two servers on
//! one database the projection moves when its runner is killed.

use std::process::Command;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use tend_api::arc::v1 as pb;
use tend_api::arc::v1::arc_service_client::ArcServiceClient;
use tend_api::assessment::v1 as apb;
use tend_api::assessment::v1::assessment_service_client::AssessmentServiceClient;
use tend_api::scheduler::v1 as spb;
use tend_api::scheduler::v1::protocol_scheduler_service_client::ProtocolSchedulerServiceClient;
use tend_testkit::fresh_database;
use tend_tests::{TendProcess, channel, tend_binary};
use tonic::Request;
use tonic::transport::Channel;
use uuid::Uuid;

const TOKEN: &str = "tend_test_token_for_arcs";

fn authed<T>(message: T) -> Request<T> {
    tend_tests::bearer(TOKEN, message)
}

fn tokens() -> String {
    format!("clinic={}", tend_auth::TokenHash::of(TOKEN))
}

/// Runs a `tend` subcommand against the database; its output.
fn tend(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(tend_binary())
        .args(args)
        .env("TEND_DATABASE_URL", url)
        .env("TEND_MASTER_KEYS", tend_tests::TEST_MASTER_KEYS)
        .env("TEND_LOG", "warn")
        .env("TEND_LOG_FORMAT", "json")
        .output()
        .expect("run tend")
}

async fn caught_up(client: &mut ArcServiceClient<Channel>) -> pb::ProjectionStatus {
    tend_tests::arc_caught_up(client, TOKEN).await
}

/// Caught up, and still so 1.5 s later at the same position: the running
/// server's first scheduler rounds (the demo's time-driven events) and the
/// warnings they raise are all in.
async fn settled(client: &mut ArcServiceClient<Channel>) -> pb::ProjectionStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = caught_up(client).await;
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = caught_up(client).await;
        if now.position == last.position {
            return now;
        }
        assert!(Instant::now() < deadline, "the log kept moving: {now:?}");
        last = now;
    }
}

/// What of an arc does not depend on the instant it is read.
fn stable(
    arc: &pb::Arc,
) -> (
    Vec<pb::WeekAdherence>,
    Vec<pb::ArcAssessment>,
    Vec<pb::Flag>,
) {
    (
        arc.weeks.clone(),
        arc.assessments.clone(),
        arc.open_flags.clone(),
    )
}

#[tokio::test]
async fn demo_arcs_cohort_and_a_rebuild_under_a_running_server() {
    let db = fresh_database().await;
    let out = tend(
        &db.url,
        &[
            "demo",
            "--tenant",
            "clinic",
            "--participants",
            "30",
            "--seed",
            "5",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("tenant clinic: 30 participants"),
        "{stdout}"
    );
    // A demo fills an empty tenant only.
    let again = tend(
        &db.url,
        &["demo", "--tenant", "clinic", "--participants", "3"],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds participants"));

    let server = TendProcess::start(&[
        ("TEND_DATABASE_URL", &db.url),
        ("TEND_AUTH_TOKENS", &tokens()),
    ]);
    let mut client = ArcServiceClient::new(channel(&server).await);
    let status = settled(&mut client).await;
    assert_eq!(status.active_generation, 1);

    let mut enrolled = 0;
    for protocol in ["integration-arc-8w", "msc-8w"] {
        let c = client
            .get_cohort(authed(pb::GetCohortRequest {
                protocol_id: protocol.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        enrolled += c.enrolled;
        assert_eq!(c.benchmark_percent, 43.0);
    }
    assert_eq!(enrolled, 30);
    let listed = client
        .list_arcs(authed(pb::ListArcsRequest {
            page_size: 200,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.arcs.len(), 30);
    let mut before = Vec::new();
    for a in &listed.arcs {
        let arc = client
            .get_arc(authed(pb::GetArcRequest {
                participant_ref: a.participant_ref.clone(),
            }))
            .await
            .unwrap()
            .into_inner()
            .arc
            .unwrap();
        assert_eq!(arc.phase, a.phase);
        before.push(arc);
    }
    // Bad input over the wire: the field and the reason.
    let e = client
        .get_cohort(authed(pb::GetCohortRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("protocol_id"), "{e:?}");

    // A rebuild beside the running server: it switches to the next
    // generation, and every arc reads the same. The server's scheduler
    // writes due and missed events on the hour; a rebuild that an hour
    // boundary overtook is compared again on a quiet log.
    let mut position = status.position;
    let mut generation = 1;
    loop {
        let out = tend(
            &db.url,
            &["projections", "rebuild", "arc", "--flush-every", "2000"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let switched = format!("generation {generation} -> {}", generation + 1);
        assert!(String::from_utf8_lossy(&out.stdout).contains(&switched));
        generation += 1;
        let status = settled(&mut client).await;
        assert_eq!(status.active_generation, generation);
        let mut now = Vec::new();
        for arc in &before {
            now.push(
                client
                    .get_arc(authed(pb::GetArcRequest {
                        participant_ref: arc.participant_ref.clone(),
                    }))
                    .await
                    .unwrap()
                    .into_inner()
                    .arc
                    .unwrap(),
            );
        }
        if status.position == position {
            for (arc, now) in before.iter().zip(&now) {
                assert_eq!(stable(now), stable(arc), "{}", arc.participant_ref);
            }
            break;
        }
        assert!(generation < 5, "the log never stood still across a rebuild");
        (position, before) = (status.position, now);
    }
    let out = tend(&db.url, &["projections", "status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("arc: generation {generation}"))
    );
    let out = tend(&db.url, &["projections", "rebuild", "nothing"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown projection"));
}

async fn lease_holder(pool: &sqlx::PgPool) -> Option<Uuid> {
    sqlx::query_scalar("SELECT holder FROM leases WHERE name = 'arc'")
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn assessments_seen(client: &mut ArcServiceClient<Channel>, n: usize) -> pb::Arc {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client
            .get_arc(authed(pb::GetArcRequest {
                participant_ref: "p-1".into(),
            }))
            .await
        {
            let arc = r.into_inner().arc.unwrap();
            if arc.assessments.len() == n {
                return arc;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the arc never showed {n} assessments"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn scs_sf(at: Timestamp, value: i32) -> apb::SubmitResponsesRequest {
    apb::SubmitResponsesRequest {
        participant_ref: "p-1".into(),
        request_id: Uuid::new_v4().to_string(),
        instrument_id: "scs-sf".into(),
        instrument_version: 0,
        answers: (1..=12)
            .map(|item| apb::Answer {
                item,
                answer: value,
            })
            .collect(),
        administered_at: Some(prost_types::Timestamp {
            seconds: at.as_second(),
            nanos: 0,
        }),
        occurrence_id: String::new(),
    }
}

#[tokio::test]
async fn two_servers_one_projection_runner_and_it_moves_when_killed() {
    let db = fresh_database().await;
    let env = [
        ("TEND_DATABASE_URL", db.url.as_str()),
        ("TEND_AUTH_TOKENS", &tokens()),
        ("TEND_SCHEDULER_LEASE_SECONDS", "2"),
        ("TEND_SCHEDULER_TICK_MS", "200"),
    ];
    let a = TendProcess::start(&env);
    // a takes the projection lease first.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(h) = lease_holder(&db.pool).await {
            break h;
        }
        assert!(
            Instant::now() < deadline,
            "no server took the projection lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let b = TendProcess::start(&env);
    let b_channel = channel(&b).await;
    let mut arcs = ArcServiceClient::new(b_channel.clone());
    let now = Timestamp::now();
    let session = now
        .checked_add(SignedDuration::from_hours(24 * 14))
        .unwrap()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .datetime();
    ProtocolSchedulerServiceClient::new(b_channel.clone())
        .enroll(authed(spb::EnrollRequest {
            request_id: Uuid::new_v4().to_string(),
            participant_ref: "p-1".into(),
            protocol_id: "integration-arc-8w".into(),
            protocol_version: 0,
            session_local_time: session.strftime("%Y-%m-%dT%H:%M").to_string(),
            time_zone: "UTC".into(),
        }))
        .await
        .unwrap();
    let mut assessments = AssessmentServiceClient::new(b_channel);
    assessments
        .submit_responses(authed(scs_sf(now - SignedDuration::from_mins(10), 3)))
        .await
        .unwrap();
    // Written through b, projected by a's runner, read through b.
    let arc = assessments_seen(&mut arcs, 1).await;
    assert_eq!(arc.phase, pb::Phase::BeforeSession as i32);
    assert_eq!(lease_holder(&db.pool).await, Some(first));

    // a dies without a word; b takes the projection over once the lease
    // expires, and nothing written meanwhile is lost.
    a.stop_with("KILL", Duration::from_secs(10));
    assessments
        .submit_responses(authed(scs_sf(now - SignedDuration::from_mins(5), 4)))
        .await
        .unwrap();
    let arc = assessments_seen(&mut arcs, 2).await;
    let second = lease_holder(&db.pool).await;
    assert!(
        second.is_some() && second != Some(first),
        "b should hold the lease now"
    );
    // The second is a change from the baseline: 3 -> 4 on the positive
    // items and, unreversed, 3 -> 4 on the negative ones: total unchanged.
    let change = arc.assessments[1].change.as_ref().unwrap();
    assert_eq!(change.total.as_ref().unwrap().absolute, 0.0);
    drop(b);
}
