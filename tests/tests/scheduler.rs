//! The protocol scheduler end to end: the real binary, real gRPC clients,
//! the real clock.

use std::collections::HashMap;
use std::time::Duration;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use tend_api::events::v1 as events;
use tend_api::events::v1::event_stream_service_client::EventStreamServiceClient;
use tend_api::scheduler::v1 as pb;
use tend_api::scheduler::v1::protocol_scheduler_service_client::ProtocolSchedulerServiceClient;
use tend_event_store::{EventStore, Filter, TenantId};
use tend_testkit::{TestDatabase, fresh_database};
use tend_tests::{TendProcess, channel};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;
use uuid::Uuid;

const TOKEN: &str = "tend_test_token_for_the_clinic";

type Client = ProtocolSchedulerServiceClient<Channel>;

fn start(db: &TestDatabase, extra: &[(&str, &str)]) -> TendProcess {
    let tokens = format!("clinic={}", tend_auth::TokenHash::of(TOKEN));
    let mut env = vec![
        ("TEND_DATABASE_URL", db.url.as_str()),
        ("TEND_AUTH_TOKENS", &tokens),
    ];
    env.extend_from_slice(extra);
    TendProcess::start(&env)
}

fn authed<T>(message: T) -> Request<T> {
    tend_tests::bearer(TOKEN, message)
}

fn field_of(status: &Status) -> String {
    let details = status.get_error_details();
    if let Some(bad) = details.bad_request() {
        return bad.field_violations[0].field.clone();
    }
    if let Some(pre) = details.precondition_failure() {
        return pre.violations[0].subject.clone();
    }
    String::new()
}

fn enroll_request(
    request_id: Uuid,
    participant: &str,
    session: &str,
    zone: &str,
) -> pb::EnrollRequest {
    pb::EnrollRequest {
        request_id: request_id.to_string(),
        participant_ref: participant.into(),
        protocol_id: "integration-arc-8w".into(),
        protocol_version: 0,
        session_local_time: session.into(),
        time_zone: zone.into(),
    }
}

async fn schedule(client: &mut Client, enrollment_id: &str) -> Vec<pb::Occurrence> {
    client
        .get_schedule(authed(pb::GetScheduleRequest {
            enrollment_id: enrollment_id.into(),
            from: None,
            to: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .occurrences
}

fn instant(t: &prost_types::Timestamp) -> Timestamp {
    Timestamp::new(t.seconds, t.nanos).unwrap()
}

/// A session date far enough ahead that the whole arc is in the future.
fn session_date() -> Date {
    Timestamp::now()
        .to_zoned_datetime(TimeZone::UTC)
        .date()
        .checked_add(40.days())
        .unwrap()
}

#[tokio::test]
async fn a_partner_enrolls_on_the_integration_arc_and_moving_the_session_moves_the_future() {
    let db = fresh_database().await;
    let server = start(&db, &[]);
    let mut client = Client::new(channel(&server).await);

    let listed = client
        .list_protocols(authed(pb::ListProtocolsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .protocols;
    let ids: Vec<_> = listed
        .iter()
        .map(|p| (p.protocol_id.as_str(), p.built_in))
        .collect();
    assert_eq!(ids, [("integration-arc-8w", true), ("msc-8w", true)]);

    let day0 = session_date();
    let session = format!("{day0}T10:00");
    let request_id = Uuid::new_v4();
    let enrolled = client
        .enroll(authed(enroll_request(
            request_id,
            "P-0042",
            &session,
            "America/New_York",
        )))
        .await
        .unwrap()
        .into_inner();
    let enrollment = enrolled.enrollment.unwrap();
    assert_eq!(enrolled.occurrence_count, 141);
    assert_eq!(enrollment.state, pb::EnrollmentState::Active as i32);
    assert_eq!(
        enrollment.arc_start_date,
        day0.checked_add((-28).days()).unwrap().to_string()
    );
    assert_eq!(
        enrollment.arc_end_date,
        day0.checked_add(28.days()).unwrap().to_string()
    );

    // A retry of the same request is the same enrollment, written once.
    let again = client
        .enroll(authed(enroll_request(
            request_id,
            "P-0042",
            &session,
            "America/New_York",
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.enrollment.unwrap().enrollment_id,
        enrollment.enrollment_id
    );

    let before = schedule(&mut client, &enrollment.enrollment_id).await;
    assert_eq!(before.len(), 141);
    let ny = TimeZone::get("America/New_York").unwrap();
    for o in &before {
        // The wall clock is what the protocol says, whatever the offset.
        let local = instant(o.scheduled_at.as_ref().unwrap()).to_zoned_datetime(ny.clone());
        assert_eq!(
            format!("{:02}:{:02}", local.hour(), local.minute()),
            o.local_time
        );
        assert_eq!(local.date().to_string(), o.local_date);
        assert_eq!(o.status, pb::OccurrenceStatus::Upcoming as i32);
    }
    let sessions: Vec<_> = before
        .iter()
        .filter(|o| o.activity_key == "integration-session")
        .map(|o| (o.day, o.local_time.as_str()))
        .collect();
    assert_eq!(
        sessions,
        [(1, "10:00"), (8, "10:00"), (15, "10:00"), (22, "10:00")]
    );
    let baseline = before
        .iter()
        .find(|o| o.activity_key == "baseline-scs-sf")
        .unwrap();
    assert!(
        matches!(&baseline.kind, Some(pb::occurrence::Kind::Assessment(a)) if a.instrument == "scs-sf")
    );

    // Another arc in the same protocol that overlaps: refused, naming the field.
    let overlap = client
        .enroll(authed(enroll_request(
            Uuid::new_v4(),
            "P-0042",
            &session,
            "America/New_York",
        )))
        .await
        .unwrap_err();
    assert_eq!(overlap.code(), Code::FailedPrecondition);
    assert_eq!(field_of(&overlap), "session_local_time");

    // The session moves a week: every occurrence follows, ids unchanged.
    let moved_to = format!("{}T10:00", day0.checked_add(7.days()).unwrap());
    let moved = client
        .reschedule_session(authed(pb::RescheduleSessionRequest {
            enrollment_id: enrollment.enrollment_id.clone(),
            session_local_time: moved_to,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        moved.change.as_ref().unwrap().moved_occurrence_ids.len(),
        141
    );
    let after = schedule(&mut client, &enrollment.enrollment_id).await;
    let by_id: HashMap<_, _> = after.iter().map(|o| (o.occurrence_id.clone(), o)).collect();
    for b in &before {
        let a = by_id[&b.occurrence_id];
        assert_eq!(a.local_time, b.local_time);
        let (bd, ad): (Date, Date) = (b.local_date.parse().unwrap(), a.local_date.parse().unwrap());
        assert_eq!(bd.checked_add(7.days()).unwrap(), ad);
    }

    // Travel: the same local times in the new zone.
    let travelled = client
        .change_time_zone(authed(pb::ChangeTimeZoneRequest {
            enrollment_id: enrollment.enrollment_id.clone(),
            time_zone: "Europe/London".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    // ... while the session stays at the clinic: same instant, own zone.
    let travelled = travelled.enrollment.unwrap();
    assert_eq!(travelled.time_zone, "Europe/London");
    assert_eq!(
        (
            travelled.session_at,
            travelled.session_time_zone.as_str(),
            travelled.session_local_time.as_str()
        ),
        (
            moved.enrollment.as_ref().unwrap().session_at,
            moved.enrollment.as_ref().unwrap().time_zone.as_str(),
            moved
                .enrollment
                .as_ref()
                .unwrap()
                .session_local_time
                .as_str()
        )
    );
    let london = schedule(&mut client, &enrollment.enrollment_id).await;
    assert!(
        london
            .iter()
            .zip(&after)
            .all(|(l, a)| l.local_time == a.local_time && l.local_date == a.local_date)
    );
    assert!(london.iter().all(|o| o.time_zone == "Europe/London"));

    // Pause, a second pause refused, resume.
    let paused = client
        .pause_enrollment(authed(pb::PauseEnrollmentRequest {
            enrollment_id: enrollment.enrollment_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        paused.enrollment.unwrap().state,
        pb::EnrollmentState::Paused as i32
    );
    let twice = client
        .pause_enrollment(authed(pb::PauseEnrollmentRequest {
            enrollment_id: enrollment.enrollment_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (twice.code(), field_of(&twice).as_str()),
        (Code::FailedPrecondition, "enrollment_id")
    );
    client
        .resume_enrollment(authed(pb::ResumeEnrollmentRequest {
            enrollment_id: enrollment.enrollment_id.clone(),
        }))
        .await
        .unwrap();

    // Withdrawn: everything cancelled, and no further change accepted.
    client
        .withdraw_enrollment(authed(pb::WithdrawEnrollmentRequest {
            enrollment_id: enrollment.enrollment_id.clone(),
        }))
        .await
        .unwrap();
    let refused = client
        .reschedule_session(authed(pb::RescheduleSessionRequest {
            enrollment_id: enrollment.enrollment_id.clone(),
            session_local_time: session.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(field_of(&refused), "enrollment_id");
    assert!(
        refused.message().contains("withdrawn"),
        "{}",
        refused.message()
    );
    let withdrawn = schedule(&mut client, &enrollment.enrollment_id).await;
    assert!(
        withdrawn
            .iter()
            .all(|o| o.status == pb::OccurrenceStatus::Cancelled as i32)
    );
}

#[tokio::test]
async fn bad_requests_name_the_field_and_write_nothing() {
    let db = fresh_database().await;
    let server = start(&db, &[]);
    let mut client = Client::new(channel(&server).await);
    let session = format!("{}T10:00", session_date());

    let cases: Vec<(pb::EnrollRequest, Code, &str)> = vec![
        (
            enroll_request(Uuid::new_v4(), "P-1", &session, "Mars/Olympus"),
            Code::InvalidArgument,
            "time_zone",
        ),
        (
            enroll_request(Uuid::new_v4(), "P-1", &session, ""),
            Code::InvalidArgument,
            "time_zone",
        ),
        (
            enroll_request(
                Uuid::new_v4(),
                "P-1",
                &format!("{session}-05:00"),
                "America/New_York",
            ),
            Code::InvalidArgument,
            "session_local_time",
        ),
        (
            enroll_request(Uuid::new_v4(), "P-1", &format!("{session}Z"), "UTC"),
            Code::InvalidArgument,
            "session_local_time",
        ),
        (
            enroll_request(Uuid::new_v4(), "", &session, "UTC"),
            Code::InvalidArgument,
            "participant_ref",
        ),
        (
            pb::EnrollRequest {
                request_id: "not-a-uuid".into(),
                ..enroll_request(Uuid::nil(), "P-1", &session, "UTC")
            },
            Code::InvalidArgument,
            "request_id",
        ),
        (
            enroll_request(Uuid::new_v4(), "P-1", "2020-01-01T10:00", "UTC"),
            Code::FailedPrecondition,
            "session_local_time",
        ),
        (
            pb::EnrollRequest {
                protocol_id: "no-such-protocol".into(),
                ..enroll_request(Uuid::new_v4(), "P-1", &session, "UTC")
            },
            Code::NotFound,
            "",
        ),
    ];
    for (request, code, field) in cases {
        let err = client.enroll(authed(request.clone())).await.unwrap_err();
        assert_eq!(err.code(), code, "{request:?}: {err:?}");
        assert_eq!(field_of(&err), field, "{request:?}: {}", err.message());
    }

    // A protocol whose activity lies outside its arc.
    let mut protocol = client
        .get_protocol(authed(pb::GetProtocolRequest {
            protocol_id: "integration-arc-8w".into(),
            version: 0,
        }))
        .await
        .unwrap()
        .into_inner()
        .protocol
        .unwrap();
    protocol.protocol_id = "clinic-arc".into();
    protocol.activities[2].span = Some(pb::activity::Span::Weeks(pb::WeekRange {
        first: -6,
        last: -1,
    }));
    let err = client
        .create_protocol(authed(pb::CreateProtocolRequest {
            protocol: Some(protocol.clone()),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(field_of(&err), "protocol.activities[2].span");
    assert!(
        err.message().contains("outside the protocol's arc"),
        "{}",
        err.message()
    );
    protocol.activities[2].times = vec!["8 am".into()];
    let err = client
        .create_protocol(authed(pb::CreateProtocolRequest {
            protocol: Some(protocol.clone()),
        }))
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), "protocol.activities[2].times[0]");
    let err = client
        .create_protocol(authed(pb::CreateProtocolRequest {
            protocol: Some(pb::Protocol {
                protocol_id: "msc-8w".into(),
                ..protocol.clone()
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // Nothing of any of it was written.
    let store = EventStore::open(db.pool.clone(), Default::default())
        .await
        .unwrap();
    let page = store
        .read_log(&Filter::tenant(TenantId::new("clinic").unwrap()), 0, 100)
        .await
        .unwrap();
    assert!(page.events.is_empty(), "{:?}", page.events);

    // A draft cannot be enrolled on until it is published.
    protocol.activities[2].span = Some(pb::activity::Span::Weeks(pb::WeekRange {
        first: -4,
        last: -1,
    }));
    protocol.activities[2].times = vec!["08:00".into()];
    let draft = client
        .create_protocol(authed(pb::CreateProtocolRequest {
            protocol: Some(protocol),
        }))
        .await
        .unwrap()
        .into_inner()
        .protocol
        .unwrap();
    assert_eq!(
        (draft.version, draft.state),
        (1, pb::ProtocolState::Draft as i32)
    );
    let on_draft = pb::EnrollRequest {
        protocol_id: "clinic-arc".into(),
        protocol_version: 1,
        ..enroll_request(Uuid::new_v4(), "P-1", &session, "UTC")
    };
    let err = client.enroll(authed(on_draft.clone())).await.unwrap_err();
    assert_eq!(
        (err.code(), field_of(&err).as_str()),
        (Code::FailedPrecondition, "protocol_version")
    );
    let published = client
        .publish_protocol(authed(pb::PublishProtocolRequest {
            protocol_id: "clinic-arc".into(),
            version: 1,
        }))
        .await
        .unwrap()
        .into_inner()
        .protocol
        .unwrap();
    assert_eq!(published.state, pb::ProtocolState::Published as i32);
    let enrolled = client.enroll(authed(on_draft)).await.unwrap().into_inner();
    assert_eq!(enrolled.occurrence_count, 141);
    store.shutdown().await;
}

#[tokio::test]
async fn due_and_missed_reach_the_stream_once_each_when_the_scheduling_server_dies() {
    let db = fresh_database().await;
    // Both servers' clocks read a minute before the occurrence now and run
    // six times faster than the wall clock: it is due some 10 s into the
    // test and missed some 10 s later, wherever the wall clock is.
    let since = Timestamp::now().to_string();
    let fast = [
        ("TEND_SCHEDULER_TICK_MS", "100"),
        ("TEND_SCHEDULER_LEASE_SECONDS", "2"),
        ("TEND_SCHEDULER_MISS_GRACE_MINUTES", "0"),
        ("TEND_TEST_CLOCK", "2026-12-01T12:00:00Z"),
        ("TEND_TEST_CLOCK_RATE", "6"),
        ("TEND_TEST_CLOCK_SINCE", &since),
    ];
    let first = start(&db, &fast);
    // The first server takes the lease before the second one starts.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sqlx::query_scalar::<_, Uuid>("SELECT holder FROM leases WHERE name = 'scheduler'")
        .fetch_optional(&db.pool)
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no server took the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = start(&db, &fast);
    let mut client = Client::new(channel(&second).await);

    // One occurrence at 12:01 by the servers' clocks, in UTC, with a
    // one-minute window.
    let at = jiff::civil::date(2026, 12, 1).at(12, 1, 0, 0);
    let activity = pb::Activity {
        key: "check-in".into(),
        kind: Some(pb::activity::Kind::Task(pb::TaskActivity {})),
        span: Some(pb::activity::Span::Days(pb::DayRange { first: 0, last: 0 })),
        cadence: pb::Cadence::Once as i32,
        times: vec![format!("{:02}:{:02}", at.hour(), at.minute())],
        target_minutes: 5,
        window_minutes: 1,
    };
    tend_tests::publish_protocol(
        channel(&second).await,
        TOKEN,
        pb::Protocol {
            protocol_id: "check-in".into(),
            title: "Check-in".into(),
            weeks_before: 0,
            weeks_after: 1,
            activities: vec![activity],
            ..Default::default()
        },
    )
    .await;
    let enrollment = client
        .enroll(authed(pb::EnrollRequest {
            request_id: Uuid::new_v4().to_string(),
            participant_ref: "P-7".into(),
            protocol_id: "check-in".into(),
            protocol_version: 1,
            session_local_time: format!("{}T00:00", at.date()),
            time_zone: "UTC".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();

    let mut stream = EventStreamServiceClient::new(channel(&second).await)
        .subscribe(authed(events::SubscribeRequest {
            after_position: 0,
            categories: vec![],
            event_types: vec!["OccurrenceDue".into(), "OccurrenceMissed".into()],
            pseudonymous: None,
        }))
        .await
        .unwrap()
        .into_inner();

    // The lease holder dies without a word.
    first.stop_with("KILL", Duration::from_secs(10));

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while seen.len() < 2 {
        let message = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("due and missed within 90 s")
            .expect("stream open")
            .expect("no error");
        if let Some(events::subscribe_response::Message::Event(e)) = message.message {
            let payload: serde_json::Value = serde_json::from_str(&e.payload_json).unwrap();
            assert_eq!(payload["enrollment_id"], enrollment.enrollment_id.as_str());
            seen.push((
                e.event_type,
                payload["scheduled_at"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let expected_at = at
        .to_zoned_datetime(TimeZone::UTC)
        .unwrap()
        .timestamp()
        .to_string();
    assert_eq!(
        seen,
        [
            ("OccurrenceDue".to_owned(), expected_at.clone()),
            ("OccurrenceMissed".to_owned(), expected_at)
        ]
    );
    // A few more rounds: still once each.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type IN ('OccurrenceDue', 'OccurrenceMissed')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(count, 2);
    let statuses: Vec<i32> = schedule(&mut client, &enrollment.enrollment_id)
        .await
        .iter()
        .map(|o| o.status)
        .collect();
    assert_eq!(statuses, [pb::OccurrenceStatus::Missed as i32]);
}

#[tokio::test]
async fn a_patient_app_asks_one_call_for_today() {
    let db = fresh_database().await;
    // 09:00 in New York on 2026-06-10.
    let server = start(
        &db,
        &[
            ("TEND_TEST_CLOCK", "2026-06-10T13:00:00Z"),
            ("TEND_SCHEDULER_TICK_MS", "100"),
        ],
    );
    let mut client = Client::new(channel(&server).await);
    let mut ids = Vec::new();
    for who in ["P-7", "P-8"] {
        let enrolled = client
            .enroll(authed(enroll_request(
                Uuid::new_v4(),
                who,
                "2026-06-12T10:00",
                "America/New_York",
            )))
            .await
            .unwrap()
            .into_inner()
            .enrollment
            .unwrap();
        ids.push(enrolled);
    }

    // Their enrollments, by their reference.
    let listed = client
        .list_enrollments(authed(pb::ListEnrollmentsRequest {
            participant_ref: "P-7".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.participant_id, ids[0].participant_id);
    assert_eq!(listed.enrollments, [ids[0].clone()]);
    let unknown = client
        .list_enrollments(authed(pb::ListEnrollmentsRequest {
            participant_ref: "P-404".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // Today, on their calendar: exactly the schedule's occurrences dated
    // today, by when their windows open.
    let agenda = |local_date: &str, end: &str, open_only: bool| {
        authed(pb::GetAgendaRequest {
            participant_ref: "P-7".into(),
            local_date: local_date.into(),
            end_local_date: end.into(),
            open_only,
        })
    };
    let today = client
        .get_agenda(agenda("", "", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (today.time_zone.as_str(), today.local_date.as_str()),
        ("America/New_York", "2026-06-10")
    );
    let all = schedule(&mut client, &ids[0].enrollment_id).await;
    let dated = |from: &str, to: &str| -> Vec<String> {
        all.iter()
            .filter(|o| o.local_date.as_str() >= from && o.local_date.as_str() <= to)
            .map(|o| o.occurrence_id.clone())
            .collect()
    };
    let got: Vec<String> = today
        .occurrences
        .iter()
        .map(|o| o.occurrence_id.clone())
        .collect();
    assert!(!got.is_empty());
    assert_eq!(got, dated("2026-06-10", "2026-06-10"));
    assert!(today.occurrences.iter().all(|o| {
        o.participant_ref == "P-7"
            && o.participant_id == ids[0].participant_id
            && o.window_closes_at.is_some()
            && o.status != pb::OccurrenceStatus::Unspecified as i32
    }));

    // A week, and only what is still open once one is done.
    let week = client
        .get_agenda(agenda("2026-06-10", "2026-06-16", false))
        .await
        .unwrap()
        .into_inner();
    let week_ids: Vec<String> = week
        .occurrences
        .iter()
        .map(|o| o.occurrence_id.clone())
        .collect();
    assert_eq!(week_ids, dated("2026-06-10", "2026-06-16"));
    let due = week
        .occurrences
        .iter()
        .find(|o| o.status == pb::OccurrenceStatus::Due as i32)
        .expect("something is due at 09:00");
    client
        .complete_occurrence(authed(pb::CompleteOccurrenceRequest {
            enrollment_id: ids[0].enrollment_id.clone(),
            occurrence_id: due.occurrence_id.clone(),
            completed_at: None,
        }))
        .await
        .unwrap();
    let open = client
        .get_agenda(agenda("2026-06-10", "2026-06-16", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(open.occurrences.len(), week.occurrences.len() - 1);
    assert!(
        open.occurrences
            .iter()
            .all(|o| o.occurrence_id != due.occurrence_id)
    );

    // ListDue, for one participant.
    let due_for = |participant_ref: &str| {
        authed(pb::ListDueRequest {
            // Midnight in New York on 2026-06-10, and a week on.
            from: Some(prost_types::Timestamp {
                seconds: 1_781_064_000,
                nanos: 0,
            }),
            to: Some(prost_types::Timestamp {
                seconds: 1_781_064_000 + 7 * 86_400,
                nanos: 0,
            }),
            page_size: 1000,
            participant_ref: participant_ref.into(),
            ..Default::default()
        })
    };
    // The worker files occurrences for ListDue as they are scheduled.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let whole = loop {
        let whole = client
            .list_due(due_for(""))
            .await
            .unwrap()
            .into_inner()
            .occurrences;
        let people: std::collections::HashSet<_> =
            whole.iter().map(|o| o.participant_id.clone()).collect();
        if people.len() == 2 {
            break whole;
        }
        assert!(std::time::Instant::now() < deadline, "{people:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let one = client
        .list_due(due_for("P-7"))
        .await
        .unwrap()
        .into_inner()
        .occurrences;
    assert!(!one.is_empty() && one.len() < whole.len());
    assert!(
        one.iter()
            .all(|o| o.participant_id == ids[0].participant_id)
    );
    assert_eq!(
        one.len(),
        whole
            .iter()
            .filter(|o| o.participant_id == ids[0].participant_id)
            .count()
    );

    // Bad ranges name the field.
    for (date, end, field) in [
        ("2026-06-10", "2026-06-09", "end_local_date"),
        ("2026-06-10", "2026-12-31", "end_local_date"),
        ("10/06/2026", "", "local_date"),
        ("", "2026-06-12", "local_date"),
    ] {
        let e = client
            .get_agenda(agenda(date, end, false))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), field_of(&e).as_str()),
            (Code::InvalidArgument, field),
            "{date}..{end}"
        );
    }
}
