//! The practice log end to end: the real `tend` binary, real gRPC clients
//! over a real socket, a subscriber on the event stream.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tend_api::events::v1 as events;
use tend_api::events::v1::event_stream_service_client::EventStreamServiceClient;
use tend_api::practice::v1 as pb;
use tend_api::practice::v1::practice_log_service_client::PracticeLogServiceClient;
use tend_api::scheduler::v1 as spb;
use tend_api::scheduler::v1::protocol_scheduler_service_client::ProtocolSchedulerServiceClient;
use tend_testkit::{TestDatabase, fresh_database};
use tend_tests::{TendProcess, channel};
use tokio_stream::StreamExt;
use tonic::{Code, Request};
use tonic_types::StatusExt;
use uuid::Uuid;

const TOKEN: &str = "tend_test_token_for_the_practice_log";
/// A fixed test master key: "tend-test-master-key-of-32-bytes".
const MASTER_KEYS: &str = "test-1:dGVuZC10ZXN0LW1hc3Rlci1rZXktb2YtMzItYnl0ZXM=";

fn start(db: &TestDatabase) -> TendProcess {
    start_with(db, &[])
}

fn start_with(db: &TestDatabase, extra: &[(&str, &str)]) -> TendProcess {
    let tokens = format!("clinic={}", tend_auth::TokenHash::of(TOKEN));
    let mut env = vec![
        ("TEND_DATABASE_URL", db.url.as_str()),
        ("TEND_AUTH_TOKENS", tokens.as_str()),
        ("TEND_MASTER_KEYS", MASTER_KEYS),
        ("TEND_SCHEDULER_TICK_MS", "100"),
        ("TEND_SCHEDULER_LEASE_SECONDS", "2"),
    ];
    env.extend_from_slice(extra);
    TendProcess::start(&env)
}

fn authed<T>(message: T) -> Request<T> {
    tend_tests::bearer(TOKEN, message)
}

fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn entry_request(participant: &str, entry_id: Uuid, started: Timestamp) -> pb::LogPracticeRequest {
    pb::LogPracticeRequest {
        participant_ref: participant.into(),
        entry_id: entry_id.to_string(),
        practice: Some(pb::PracticeDetails {
            kind: "self-compassion-break".into(),
            started_at: rfc3339(started),
            minutes: 10,
            note: format!("reflection {entry_id}").into_bytes(),
            ..Default::default()
        }),
    }
}

/// Eight apps each log a week of practice offline, then sync it twice at
/// once; a subscriber that started before them sees every entry exactly
/// once, in strictly increasing positions, and nothing more.
#[tokio::test]
async fn concurrent_syncs_reach_a_subscriber_once_each_in_order() {
    const APPS: usize = 8;
    const ENTRIES: usize = 3 * 7;
    let db = fresh_database().await;
    let server = start(&db);
    let channel = channel(&server).await;
    let mut subscription = EventStreamServiceClient::new(channel.clone())
        .subscribe(authed(events::SubscribeRequest {
            categories: vec!["practice".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();

    let now = Timestamp::now();
    let apps: Vec<(String, Vec<(Uuid, Timestamp)>)> = (0..APPS)
        .map(|app| {
            let week = (0..ENTRIES)
                .map(|i| {
                    let back = SignedDuration::from_hours(7 * 24 - 8 * i as i64);
                    (Uuid::new_v4(), now - back)
                })
                .collect();
            (format!("participant-{app}"), week)
        })
        .collect();
    // Each app syncs twice, the two syncs at once, all apps at once.
    let mut syncs = tokio::task::JoinSet::new();
    for (participant, week) in &apps {
        for _ in 0..2 {
            let mut client = PracticeLogServiceClient::new(channel.clone());
            let (participant, week) = (participant.clone(), week.clone());
            syncs.spawn(async move {
                for (id, started) in week {
                    client
                        .log_practice(authed(entry_request(&participant, id, started)))
                        .await
                        .unwrap();
                }
            });
        }
    }
    while let Some(done) = syncs.join_next().await {
        done.unwrap();
    }

    let expected: BTreeSet<String> = apps
        .iter()
        .flat_map(|(_, week)| week.iter().map(|(id, _)| id.to_string()))
        .collect();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut last = 0;
    while seen.len() < expected.len() {
        let message = tokio::time::timeout(Duration::from_secs(20), subscription.next())
            .await
            .expect("events keep coming")
            .unwrap()
            .unwrap();
        if let Some(events::subscribe_response::Message::Event(e)) = message.message {
            assert!(e.position > last, "positions strictly increase");
            last = e.position;
            let payload: serde_json::Value = serde_json::from_str(&e.payload_json).unwrap();
            assert_eq!(e.event_type, "PracticeLogged");
            // The stream carries the note sealed, never the text.
            assert!(!e.payload_json.contains("reflection"));
            assert!(payload["note"]["ciphertext"].is_string());
            let id = payload["entry_id"].as_str().unwrap().to_owned();
            assert!(
                seen.insert(id, e.position).is_none(),
                "an entry delivered twice"
            );
        }
    }
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), expected);
    // Nothing else follows: the second syncs wrote nothing.
    let extra = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            match subscription.next().await {
                Some(Ok(events::SubscribeResponse {
                    message: Some(events::subscribe_response::Message::Event(e)),
                })) => return Some(e),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await;
    assert!(extra.is_err(), "an extra event arrived: {extra:?}");

    // The notes come back through the API.
    let mut client = PracticeLogServiceClient::new(channel.clone());
    let listed = client
        .list_entries(authed(pb::ListEntriesRequest {
            participant_ref: "participant-0".into(),
            page_size: 500,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(listed.len(), ENTRIES);
    for e in &listed {
        assert_eq!(e.note, format!("reflection {}", e.entry_id));
    }
}

#[tokio::test]
async fn an_entry_for_a_scheduled_occurrence_completes_it_and_bad_input_is_named() {
    let db = fresh_database().await;
    // The server's clock starts two hours into a four-hour window, so a
    // window is open whenever the test runs.
    const START: &str = "2026-12-01T02:00:00Z";
    let since = Timestamp::now();
    let server = start_with(
        &db,
        &[
            ("TEND_TEST_CLOCK", START),
            ("TEND_TEST_CLOCK_SINCE", &since.to_string()),
        ],
    );
    // The server's "now".
    let now = || START.parse::<Timestamp>().unwrap() + Timestamp::now().duration_since(since);
    let channel = channel(&server).await;
    let mut scheduler = ProtocolSchedulerServiceClient::new(channel.clone());
    let mut practice = PracticeLogServiceClient::new(channel.clone());

    // A protocol with a soothing-touch slot every four hours, each open for
    // 3 h 59 min.
    tend_tests::publish_protocol(
        channel.clone(),
        TOKEN,
        spb::Protocol {
            protocol_id: "every-four-hours".into(),
            title: "Every four hours".into(),
            weeks_before: 1,
            weeks_after: 1,
            activities: vec![spb::Activity {
                key: "touch".into(),
                kind: Some(spb::activity::Kind::Practice(spb::PracticeActivity {
                    practice: "soothing-touch".into(),
                })),
                span: Some(spb::activity::Span::Days(spb::DayRange {
                    first: -7,
                    last: 7,
                })),
                cadence: spb::Cadence::Daily as i32,
                times: ["00:00", "04:00", "08:00", "12:00", "16:00", "20:00"]
                    .map(String::from)
                    .to_vec(),
                target_minutes: 2,
                window_minutes: 239,
            }],
            ..Default::default()
        },
    )
    .await;
    let session = now() + SignedDuration::from_hours(2 * 24);
    let enrollment = scheduler
        .enroll(authed(spb::EnrollRequest {
            request_id: Uuid::new_v4().to_string(),
            participant_ref: "p-1".into(),
            protocol_id: "every-four-hours".into(),
            protocol_version: 0,
            session_local_time: session.strftime("%Y-%m-%dT10:00").to_string(),
            time_zone: "UTC".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    let schedule = scheduler
        .get_schedule(authed(spb::GetScheduleRequest {
            enrollment_id: enrollment.enrollment_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .occurrences;
    let now = now();
    let open = schedule
        .iter()
        .filter(|o| o.scheduled_at.as_ref().unwrap().seconds <= now.as_second())
        .max_by_key(|o| o.scheduled_at.as_ref().unwrap().seconds)
        .expect("the slot open now");
    let opened = Timestamp::from_second(open.scheduled_at.as_ref().unwrap().seconds).unwrap();

    let logged = practice
        .log_practice(authed(pb::LogPracticeRequest {
            participant_ref: "p-1".into(),
            entry_id: Uuid::new_v4().to_string(),
            practice: Some(pb::PracticeDetails {
                kind: "soothing-touch".into(),
                started_at: rfc3339(opened.max(now - SignedDuration::from_mins(1))),
                minutes: 2,
                occurrence_id: open.occurrence_id.clone(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(logged.occurrence_id, open.occurrence_id);

    // The server's scheduler links it within a few ticks.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = scheduler
            .get_schedule(authed(spb::GetScheduleRequest {
                enrollment_id: enrollment.enrollment_id.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .occurrences
            .into_iter()
            .find(|o| o.occurrence_id == open.occurrence_id)
            .unwrap()
            .status();
        if matches!(
            status,
            spb::OccurrenceStatus::Done | spb::OccurrenceStatus::Late
        ) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not completed: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Over the wire, a bad request names its field, and writes nothing.
    let bad = |kind: &str, minutes: u32, note: Vec<u8>| pb::LogPracticeRequest {
        participant_ref: "p-1".into(),
        entry_id: Uuid::new_v4().to_string(),
        practice: Some(pb::PracticeDetails {
            kind: kind.into(),
            started_at: rfc3339(opened.max(now - SignedDuration::from_mins(1))),
            minutes,
            occurrence_id: open.occurrence_id.clone(),
            note,
            ..Default::default()
        }),
    };
    for (request, field) in [
        // A self-compassion break cannot complete a soothing-touch slot.
        (
            bad("self-compassion-break", 2, vec![]),
            "practice.occurrence_id",
        ),
        (bad("soothing-touch", 2, vec![0xff]), "practice.note"),
        (bad("soothing-touch", 900, vec![]), "practice.minutes"),
    ] {
        let status = practice.log_practice(authed(request)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations[0].field,
            field
        );
    }
    let summary = practice
        .get_summary(authed(pb::GetSummaryRequest {
            participant_ref: "p-1".into(),
            enrollment_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((summary.entries, summary.minutes), (1, 2));
    assert_eq!(summary.enrollment_id, enrollment.enrollment_id);
}
