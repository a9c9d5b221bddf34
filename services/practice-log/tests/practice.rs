//! The practice log against a real PostgreSQL, with a hand-moved clock:
//! idempotent logging under concurrency, correction and retraction history,
//! links to the schedule in both arrival orders, erasure checked on a
//! `pg_dump` of the whole database, master key rotation, tenant scoping.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tend_api::practice::v1 as pb;
use tend_api::practice::v1::practice_log_service_server::PracticeLogService;
use tend_api::scheduler::v1 as spb;
use tend_api::scheduler::v1::protocol_scheduler_service_server::ProtocolSchedulerService;
use tend_event_store::{EventStore, Filter, TenantId};
use tend_practice_log::{PracticeLogApi, PracticeOptions};
use tend_privacy::Directory;
use tend_protocol_scheduler::{SchedulerApi, Worker, WorkerOptions};
use tend_service_kit::ManualClock;
use tend_testkit::TestDatabase;
use tend_testkit::grpc::{Services, req, ts};
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

const TENANT: &str = "clinic-a";

struct Harness {
    db: TestDatabase,
    directory: Directory,
    store: EventStore,
    clock: ManualClock,
    scheduler: SchedulerApi,
    practice: PracticeLogApi,
    worker: Worker,
}

async fn harness(start: &str) -> Harness {
    let Services {
        db,
        store,
        clock,
        directory,
    } = Services::start(start).await;
    let scheduler = SchedulerApi::new(store.clone(), directory.clone(), Arc::new(clock.clone()));
    let practice = PracticeLogApi::new(
        store.clone(),
        directory.clone(),
        Arc::new(clock.clone()),
        PracticeOptions::default(),
    );
    let worker = Worker::new(
        store.clone(),
        Arc::new(clock.clone()),
        WorkerOptions {
            tick_interval: Duration::from_millis(20),
            lease_ttl: Duration::from_secs(10),
            miss_grace: SignedDuration::from_hours(6),
            ..WorkerOptions::default()
        },
    );
    Harness {
        db,
        directory,
        store,
        clock,
        scheduler,
        practice,
        worker,
    }
}

fn details(kind: &str, started_at: &str, minutes: u32) -> pb::PracticeDetails {
    pb::PracticeDetails {
        kind: kind.into(),
        started_at: started_at.into(),
        time_zone: String::new(),
        minutes,
        occurrence_id: String::new(),
        note: Vec::new(),
    }
}

fn with_note(mut d: pb::PracticeDetails, note: &str) -> pb::PracticeDetails {
    d.note = note.as_bytes().to_vec();
    d
}

fn field_violation(status: &tonic::Status) -> String {
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .or_else(|| {
            status
                .get_details_precondition_failure()
                .and_then(|p| p.violations.first().map(|v| v.subject.clone()))
        })
        .unwrap_or_default()
}

impl Harness {
    async fn log(
        &self,
        tenant: &str,
        participant: &str,
        entry_id: Uuid,
        practice: pb::PracticeDetails,
    ) -> Result<pb::PracticeEntry, tonic::Status> {
        self.practice
            .log_practice(req(
                tenant,
                pb::LogPracticeRequest {
                    participant_ref: participant.into(),
                    entry_id: entry_id.to_string(),
                    practice: Some(practice),
                },
            ))
            .await
            .map(|r| r.into_inner().entry.unwrap())
    }

    async fn list(
        &self,
        tenant: &str,
        participant: &str,
        retracted: bool,
    ) -> Vec<pb::PracticeEntry> {
        self.practice
            .list_entries(req(
                tenant,
                pb::ListEntriesRequest {
                    participant_ref: participant.into(),
                    include_retracted: retracted,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .entries
    }

    async fn summary(&self, participant: &str) -> pb::GetSummaryResponse {
        self.practice
            .get_summary(req(
                TENANT,
                pb::GetSummaryRequest {
                    participant_ref: participant.into(),
                    enrollment_id: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// Every event of the tenant, as (type, payload).
    async fn events(&self, tenant: &str) -> Vec<(String, serde_json::Value)> {
        let filter = Filter {
            tenant: Some(TenantId::new(tenant).unwrap()),
            categories: vec![],
            event_types: vec![],
        };
        let page = self.store.read_log(&filter, 0, 10_000).await.unwrap();
        page.events
            .into_iter()
            .map(|e| (e.event_type, e.payload))
            .collect()
    }

    /// Formal meditation at 08:00 and 20:00 UTC, two-hour windows, days
    /// -7..7 around a session on 2026-06-08 at 10:00.
    async fn enroll(&self, participant: &str) -> spb::Enrollment {
        let activity = spb::Activity {
            key: "sit".into(),
            kind: Some(spb::activity::Kind::Practice(spb::PracticeActivity {
                practice: "formal-meditation".into(),
            })),
            span: Some(spb::activity::Span::Days(spb::DayRange {
                first: -7,
                last: 7,
            })),
            cadence: spb::Cadence::Daily as i32,
            times: vec!["08:00".into(), "20:00".into()],
            target_minutes: 10,
            window_minutes: 120,
        };
        let _ = self
            .scheduler
            .create_protocol(req(
                TENANT,
                spb::CreateProtocolRequest {
                    protocol: Some(spb::Protocol {
                        protocol_id: "sit-twice".into(),
                        title: "Sit twice a day".into(),
                        weeks_before: 1,
                        weeks_after: 1,
                        activities: vec![activity],
                        ..Default::default()
                    }),
                },
            ))
            .await;
        let _ = self
            .scheduler
            .publish_protocol(req(
                TENANT,
                spb::PublishProtocolRequest {
                    protocol_id: "sit-twice".into(),
                    version: 1,
                },
            ))
            .await;
        self.scheduler
            .enroll(req(
                TENANT,
                spb::EnrollRequest {
                    request_id: Uuid::new_v4().to_string(),
                    participant_ref: participant.into(),
                    protocol_id: "sit-twice".into(),
                    protocol_version: 0,
                    session_local_time: "2026-06-08T10:00".into(),
                    time_zone: "UTC".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .enrollment
            .unwrap()
    }

    async fn schedule(&self, enrollment: &spb::Enrollment) -> Vec<spb::Occurrence> {
        self.scheduler
            .get_schedule(req(
                TENANT,
                spb::GetScheduleRequest {
                    enrollment_id: enrollment.enrollment_id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .occurrences
    }

    async fn occurrence(&self, enrollment: &spb::Enrollment, at: &str) -> spb::Occurrence {
        let at = ts(at);
        self.schedule(enrollment)
            .await
            .into_iter()
            .find(|o| o.scheduled_at.as_ref().map(|t| t.seconds) == Some(at.as_second()))
            .unwrap()
    }

    /// At `now`, p-1's app syncs an entry; a second later the scheduler
    /// runs.
    async fn sync_at(&self, now: &str, practice: pb::PracticeDetails) {
        self.clock.set(ts(now));
        self.log(TENANT, "p-1", Uuid::new_v4(), practice)
            .await
            .unwrap();
        self.clock.advance(SignedDuration::from_secs(1));
        self.worker.run_once().await.unwrap();
    }

    /// Moves the clock and lets the scheduler do its round.
    async fn at(&self, now: &str) {
        self.clock.set(ts(now));
        self.worker.run_once().await.unwrap();
    }

    /// (type, occurrence id) of the scheduler's events about occurrences.
    async fn occurrence_events(&self, occurrence: &str) -> Vec<String> {
        self.events(TENANT)
            .await
            .into_iter()
            .filter(|(t, p)| t.starts_with("Occurrence") && p["occurrence_id"] == occurrence)
            .map(|(t, _)| t)
            .collect()
    }
}

#[tokio::test]
async fn the_same_entry_sent_20_times_at_once_is_stored_once() {
    let h = harness("2026-06-10T12:00:00Z").await;
    let entry = Uuid::new_v4();
    let practice = with_note(
        details("journaling-reframe", "2026-06-10T11:00:00+02:00", 10),
        "I was harsh with myself about the call; a friend would say I did fine.",
    );
    let calls = (0..20).map(|_| h.log(TENANT, "p-1", entry, practice.clone()));
    let results = futures::future::join_all(calls).await;
    let first = results[0].as_ref().unwrap().clone();
    for r in &results {
        assert_eq!(r.as_ref().unwrap(), &first);
    }
    let logged: Vec<_> = h
        .events(TENANT)
        .await
        .into_iter()
        .filter(|(t, _)| t == "PracticeLogged")
        .collect();
    assert_eq!(logged.len(), 1);
    assert_eq!(first.note_state(), pb::NoteState::Present);
    assert_eq!(first.started_at, "2026-06-10T11:00:00+02:00");

    // Same id, other content: refused, nothing written.
    let other = h
        .log(
            TENANT,
            "p-1",
            entry,
            details("journaling-reframe", "2026-06-10T11:00:00+02:00", 11),
        )
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists);
    assert_eq!(h.events(TENANT).await.len(), 1);
    let listed = h.list(TENANT, "p-1", false).await;
    assert_eq!(listed, vec![first]);
}

#[tokio::test]
async fn an_offline_week_synced_twice_is_stored_once() {
    let h = harness("2026-06-10T12:00:00Z").await;
    let week: Vec<(Uuid, pb::PracticeDetails)> = (1..=7)
        .flat_map(|day| {
            [
                (
                    Uuid::new_v4(),
                    details(
                        "soothing-touch",
                        &format!("2026-06-0{day}T08:00:00-04:00"),
                        2,
                    ),
                ),
                (
                    Uuid::new_v4(),
                    with_note(
                        details(
                            "journaling-reframe",
                            &format!("2026-06-0{day}T21:00:00-04:00"),
                            10,
                        ),
                        &format!("day {day}: the critic said I am too much; I am enough"),
                    ),
                ),
            ]
        })
        .collect();
    for _sync in 0..2 {
        for (id, d) in &week {
            h.log(TENANT, "p-1", *id, d.clone()).await.unwrap();
        }
    }
    let listed = h.list(TENANT, "p-1", false).await;
    assert_eq!(listed.len(), 14);
    assert_eq!(h.events(TENANT).await.len(), 14);
    let summary = h.summary("p-1").await;
    assert_eq!(summary.entries, 14);
    assert_eq!(summary.minutes, 7 * 12);
    // Local days 1..7 of June end the day before "today" (the 10th): no
    // streak.
    assert_eq!(summary.streak_days, 0);
}

#[tokio::test]
async fn corrections_and_retractions_keep_the_history() {
    let h = harness("2026-06-10T12:00:00Z").await;
    let entry = Uuid::new_v4();
    h.log(
        TENANT,
        "p-1",
        entry,
        with_note(
            details("loving-kindness", "2026-06-10T09:00:00Z", 5),
            "first draft",
        ),
    )
    .await
    .unwrap();
    let request_id = Uuid::new_v4();
    let correct = |minutes: u32| pb::CorrectEntryRequest {
        participant_ref: "p-1".into(),
        entry_id: entry.to_string(),
        request_id: request_id.to_string(),
        practice: Some(with_note(
            details("loving-kindness", "2026-06-10T09:00:00Z", minutes),
            "second draft",
        )),
    };
    let corrected = h
        .practice
        .correct_entry(req(TENANT, correct(25)))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!((corrected.minutes, corrected.revision), (25, 2));
    assert_eq!(corrected.note, "second draft");
    // A retry is the same correction; the same request id with other
    // content is refused.
    let again = h
        .practice
        .correct_entry(req(TENANT, correct(25)))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(again, corrected);
    let reused = h
        .practice
        .correct_entry(req(TENANT, correct(30)))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);

    let retract = || pb::RetractEntryRequest {
        participant_ref: "p-1".into(),
        entry_id: entry.to_string(),
    };
    let retracted = h
        .practice
        .retract_entry(req(TENANT, retract()))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert!(retracted.retracted_at.is_some());
    assert_eq!(retracted.revision, 3);
    h.practice
        .retract_entry(req(TENANT, retract()))
        .await
        .unwrap();
    let after = h
        .practice
        .correct_entry(req(
            TENANT,
            pb::CorrectEntryRequest {
                request_id: Uuid::new_v4().to_string(),
                ..correct(40)
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::FailedPrecondition);

    assert!(h.list(TENANT, "p-1", false).await.is_empty());
    assert_eq!(h.list(TENANT, "p-1", true).await, vec![retracted]);
    assert_eq!(h.summary("p-1").await.minutes, 0);
    let types: Vec<String> = h.events(TENANT).await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        types,
        ["PracticeLogged", "PracticeCorrected", "PracticeRetracted"]
    );
    // The original stays as it was logged.
    let (_, logged) = &h.events(TENANT).await[0];
    assert_eq!(logged["minutes"], 5);
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let h = harness("2026-06-10T12:00:00Z").await;
    let other = h.enroll("someone-else").await;
    let theirs = h.schedule(&other).await[0].occurrence_id.clone();
    let events_before = h.events(TENANT).await.len();
    let ok = || details("soothing-touch", "2026-06-10T11:00:00Z", 2);
    let cases: Vec<(&str, pb::PracticeDetails, &str, Code)> = vec![
        (
            "zero minutes",
            pb::PracticeDetails { minutes: 0, ..ok() },
            "practice.minutes",
            Code::InvalidArgument,
        ),
        (
            "601 minutes",
            pb::PracticeDetails {
                minutes: 601,
                ..ok()
            },
            "practice.minutes",
            Code::InvalidArgument,
        ),
        (
            "an hour ahead",
            details("soothing-touch", "2026-06-10T13:00:00Z", 2),
            "practice.started_at",
            Code::InvalidArgument,
        ),
        (
            "beyond the backdating limit",
            details("soothing-touch", "2026-05-01T11:00:00Z", 2),
            "practice.started_at",
            Code::InvalidArgument,
        ),
        (
            "no offset, no zone",
            details("soothing-touch", "2026-06-10T11:00", 2),
            "practice.started_at",
            Code::InvalidArgument,
        ),
        (
            "unknown kind",
            details("cold-plunge", "2026-06-10T11:00:00Z", 2),
            "practice.kind",
            Code::InvalidArgument,
        ),
        (
            "note over 16 KiB",
            with_note(ok(), &"a".repeat(16 * 1024 + 1)),
            "practice.note",
            Code::InvalidArgument,
        ),
        (
            "note not UTF-8",
            pb::PracticeDetails {
                note: vec![0xc3, 0x28],
                ..ok()
            },
            "practice.note",
            Code::InvalidArgument,
        ),
        (
            "another participant's occurrence",
            pb::PracticeDetails {
                occurrence_id: theirs,
                kind: "formal-meditation".into(),
                ..ok()
            },
            "practice.occurrence_id",
            Code::InvalidArgument,
        ),
        (
            "an occurrence id that is no UUID",
            pb::PracticeDetails {
                occurrence_id: "tomorrow".into(),
                ..ok()
            },
            "practice.occurrence_id",
            Code::InvalidArgument,
        ),
    ];
    for (case, practice, field, code) in cases {
        let status = h
            .log(TENANT, "p-1", Uuid::new_v4(), practice)
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{case}: {status:?}");
        assert_eq!(field_violation(&status), field, "{case}");
        // Nothing of a note ever appears in an error.
        assert!(!status.message().contains("aaaa"), "{case}");
    }
    let no_id = h
        .practice
        .log_practice(req(
            TENANT,
            pb::LogPracticeRequest {
                participant_ref: "p-1".into(),
                entry_id: "1".into(),
                practice: Some(ok()),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(field_violation(&no_id), "entry_id");
    assert_eq!(h.events(TENANT).await.len(), events_before);
}

#[tokio::test]
async fn practice_completes_occurrences_in_either_arrival_order_and_is_never_missed() {
    let h = harness("2026-06-03T07:00:00Z").await;
    let enrollment = h.enroll("p-1").await;
    h.at("2026-06-03T07:00:00Z").await;

    // 1. Logged inside the window, before it closes.
    let morning = h.occurrence(&enrollment, "2026-06-03T08:00:00Z").await;
    h.at("2026-06-03T08:05:00Z").await;
    h.sync_at(
        "2026-06-03T08:30:00Z",
        details("formal-meditation", "2026-06-03T08:10:00Z", 15),
    )
    .await;

    // 2. The window closes (20:00 to 22:00) and the scheduler runs before
    // the phone syncs; the entry arrives inside the grace.
    let evening = h.occurrence(&enrollment, "2026-06-03T20:00:00Z").await;
    h.at("2026-06-03T23:00:00Z").await;
    h.sync_at(
        "2026-06-04T01:00:00Z",
        details("formal-meditation", "2026-06-03T20:30:00Z", 20),
    )
    .await;

    // 3. A named occurrence, practised after its window: late.
    let next_morning = h.occurrence(&enrollment, "2026-06-04T08:00:00Z").await;
    h.at("2026-06-04T10:59:00Z").await;
    h.sync_at(
        "2026-06-04T11:00:00Z",
        pb::PracticeDetails {
            occurrence_id: next_morning.occurrence_id.clone(),
            ..details("formal-meditation", "2026-06-04T10:30:00Z", 10)
        },
    )
    .await;

    // A day later every grace has passed.
    h.at("2026-06-05T12:00:00Z").await;
    h.at("2026-06-05T12:00:01Z").await;
    for (o, status) in [
        (&morning, spb::OccurrenceStatus::Done),
        (&evening, spb::OccurrenceStatus::Done),
        (&next_morning, spb::OccurrenceStatus::Late),
    ] {
        let events = h.occurrence_events(&o.occurrence_id).await;
        assert_eq!(
            events,
            ["OccurrenceDue", "OccurrenceCompleted"],
            "{}",
            o.scheduled_at.as_ref().unwrap().seconds
        );
        let now = h.occurrence(&enrollment, &ts_of(o)).await;
        assert_eq!(now.status(), status);
    }
    // The evening of the 4th had no practice: missed once, after the grace.
    let missed = h.occurrence(&enrollment, "2026-06-04T20:00:00Z").await;
    assert_eq!(
        h.occurrence_events(&missed.occurrence_id).await,
        ["OccurrenceDue", "OccurrenceMissed"]
    );
}

fn ts_of(o: &spb::Occurrence) -> String {
    Timestamp::from_second(o.scheduled_at.as_ref().unwrap().seconds)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn retracting_a_linked_entry_reopens_its_occurrence() {
    let h = harness("2026-06-03T08:20:00Z").await;
    let enrollment = h.enroll("p-1").await;
    let entry = Uuid::new_v4();
    h.log(
        TENANT,
        "p-1",
        entry,
        details("formal-meditation", "2026-06-03T08:10:00Z", 15),
    )
    .await
    .unwrap();
    h.at("2026-06-03T08:20:01Z").await;
    let o = h.occurrence(&enrollment, "2026-06-03T08:00:00Z").await;
    assert_eq!(o.status(), spb::OccurrenceStatus::Done);
    h.practice
        .retract_entry(req(
            TENANT,
            pb::RetractEntryRequest {
                participant_ref: "p-1".into(),
                entry_id: entry.to_string(),
            },
        ))
        .await
        .unwrap();
    h.at("2026-06-03T08:40:00Z").await;
    let o = h.occurrence(&enrollment, "2026-06-03T08:00:00Z").await;
    assert_eq!(o.status(), spb::OccurrenceStatus::Due);
    assert_eq!(
        h.occurrence_events(&o.occurrence_id).await,
        [
            "OccurrenceCompleted",
            "OccurrenceCompletionWithdrawn",
            "OccurrenceDue"
        ]
    );
}

#[tokio::test]
async fn summary_counts_arc_weeks_from_the_session_and_the_streak_in_local_days() {
    let h = harness("2026-06-10T09:00:00Z").await;
    h.enroll("p-1").await;
    for (start, minutes) in [
        ("2026-06-07T08:00:00Z", 10), // day -1: week -1
        ("2026-06-08T08:00:00Z", 5),  // day 0: the session day
        ("2026-06-09T08:00:00Z", 12), // day 1: week 1
        ("2026-06-10T08:00:00Z", 20), // today
    ] {
        h.log(
            TENANT,
            "p-1",
            Uuid::new_v4(),
            details("formal-meditation", start, minutes),
        )
        .await
        .unwrap();
    }
    let s = h.summary("p-1").await;
    assert_eq!((s.entries, s.minutes, s.streak_days), (4, 47, 4));
    let weeks: Vec<(i32, u32, u64)> = s
        .weeks
        .iter()
        .map(|w| (w.arc_week, w.entries, w.minutes))
        .collect();
    assert_eq!(weeks, [(-1, 1, 10), (0, 1, 5), (1, 2, 32)]);
    assert!(!s.enrollment_id.is_empty());
}

/// `pg_dump` of the whole test database, as text.

#[tokio::test]
async fn after_forget_participant_no_note_is_readable_anywhere_and_the_minutes_still_add_up() {
    let h = harness("2026-06-10T12:00:00Z").await;
    let notes = [
        "Mum's voice again: you never finish anything. Reframe: I finished today.",
        "The part of me that hid in the session wants to be held, not fixed.",
    ];
    for (i, note) in notes.iter().enumerate() {
        h.log(
            TENANT,
            "forget-me",
            Uuid::new_v4(),
            with_note(
                details(
                    "journaling-reframe",
                    &format!("2026-06-0{}T20:00:00Z", i + 1),
                    10 + i as u32,
                ),
                note,
            ),
        )
        .await
        .unwrap();
    }
    let keep = "Another participant's reflection stays readable.";
    h.log(
        TENANT,
        "keep-me",
        Uuid::new_v4(),
        with_note(
            details("journaling-reframe", "2026-06-05T20:00:00Z", 7),
            keep,
        ),
    )
    .await
    .unwrap();

    // Encrypted at rest: no plaintext in the database, but readable
    // through the API.
    let before = h.db.dump();
    assert!(
        before.contains("PracticeLogged"),
        "the dump holds the events"
    );
    for note in notes.iter().chain([&keep]) {
        assert!(!before.contains(note), "plaintext in the dump");
        assert!(!before.contains(&note[..24]), "plaintext in the dump");
    }
    let listed = h.list(TENANT, "forget-me", false).await;
    assert_eq!(
        listed.iter().map(|e| e.note.as_str()).collect::<Vec<_>>(),
        notes
    );

    let forgot = h
        .practice
        .forget_participant(req(
            TENANT,
            pb::ForgetParticipantRequest {
                participant_ref: "forget-me".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forgot.keys_destroyed, 1);
    assert!(forgot.notes_erased_at.is_some());

    // The person is erased: their reference finds no one, and the other
    // participant is untouched.
    let gone = h
        .practice
        .list_entries(req(
            TENANT,
            pb::ListEntriesRequest {
                participant_ref: "forget-me".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(h.list(TENANT, "keep-me", false).await[0].note, keep);

    // The data key is gone from the database; the sealed notes are all
    // that is left, and nothing can open them. The minutes stay, under an
    // opaque id.
    let dumped = h.db.dump();
    for note in notes {
        assert!(!dumped.contains(note));
    }
    assert!(!dumped.contains("forget-me"));
    let keys: Vec<Option<Vec<u8>>> = sqlx::query_scalar(
        "SELECT wrapped_key FROM participants ORDER BY wrapped_key IS NULL DESC",
    )
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys[0].is_none() && keys[1].is_some());
    let events = h.events(TENANT).await;
    assert!(events.iter().any(|(t, _)| t == "PracticeNotesErased"));
    assert!(events.iter().any(|(t, _)| t == "ParticipantErased"));
    let minutes: i64 = events
        .iter()
        .filter(|(t, _)| t == "PracticeLogged")
        .map(|(_, p)| p["minutes"].as_i64().unwrap())
        .sum();
    assert_eq!(minutes, 10 + 11 + 7);

    // A second request finds no one; the same reference used again is
    // someone new, with a new id and key.
    let again = h
        .practice
        .forget_participant(req(
            TENANT,
            pb::ForgetParticipantRequest {
                participant_ref: "forget-me".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    h.log(
        TENANT,
        "forget-me",
        Uuid::new_v4(),
        with_note(
            details("journaling-reframe", "2026-06-09T20:00:00Z", 5),
            "new",
        ),
    )
    .await
    .unwrap();
    let fresh = h.list(TENANT, "forget-me", false).await;
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0].note, "new");
}

#[tokio::test]
async fn rotating_the_master_key_rewraps_every_data_key() {
    let h = harness("2026-06-10T12:00:00Z").await;
    let k1 = tend_privacy::MasterKeys::generate_entry("k1").unwrap();
    let k2 = tend_privacy::MasterKeys::generate_entry("k2").unwrap();
    let directory = |keys: String| {
        let pool = h.db.pool.clone();
        async move { Directory::open(pool, keys.parse().unwrap()).await.unwrap() }
    };
    let api = |directory: Directory| {
        PracticeLogApi::new(
            h.store.clone(),
            directory,
            Arc::new(h.clock.clone()),
            PracticeOptions::default(),
        )
    };
    let list = |api: PracticeLogApi| async move {
        api.list_entries(req(
            TENANT,
            pb::ListEntriesRequest {
                participant_ref: "p-1".into(),
                ..Default::default()
            },
        ))
        .await
        .map(|r| r.into_inner().entries)
    };
    api(directory(k1.clone()).await)
        .log_practice(req(
            TENANT,
            pb::LogPracticeRequest {
                participant_ref: "p-1".into(),
                entry_id: Uuid::new_v4().to_string(),
                practice: Some(with_note(
                    details("journaling-reframe", "2026-06-10T08:00:00Z", 5),
                    "kept across rotation",
                )),
            },
        ))
        .await
        .unwrap();
    // Without k1 the reference is not found (its lookup is keyed by k1)
    // and the note cannot be opened; with k2 first and k1 still there,
    // rotation re-wraps the key and re-hashes the lookup; then k2 alone
    // finds the participant and opens the note.
    assert_eq!(
        list(api(directory(k2.clone()).await))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let both = directory(format!("{k2},{k1}")).await;
    assert_eq!(
        list(api(both.clone())).await.unwrap()[0].note,
        "kept across rotation"
    );
    let rotated = both.rotate().await.unwrap();
    assert_eq!((rotated.keys, rotated.lookups), (1, 1));
    assert_eq!(both.rotate().await.unwrap(), Default::default());
    assert_eq!(
        list(api(directory(k2).await)).await.unwrap()[0].note,
        "kept across rotation"
    );
}

#[tokio::test]
async fn a_tenant_never_sees_or_changes_another_tenants_entries() {
    let h = harness("2026-06-10T12:00:00Z").await;
    let entry = Uuid::new_v4();
    h.log(
        TENANT,
        "p-1",
        entry,
        with_note(details("soothing-touch", "2026-06-10T11:00:00Z", 2), "mine"),
    )
    .await
    .unwrap();
    // The same reference in another tenant names no one there.
    let unknown = h
        .practice
        .list_entries(req(
            "clinic-b",
            pb::ListEntriesRequest {
                participant_ref: "p-1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let status = h
        .practice
        .retract_entry(req(
            "clinic-b",
            pb::RetractEntryRequest {
                participant_ref: "p-1".into(),
                entry_id: entry.to_string(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // The same entry id in the other tenant is a different entry.
    h.log(
        "clinic-b",
        "p-1",
        entry,
        details("soothing-touch", "2026-06-10T11:30:00Z", 3),
    )
    .await
    .unwrap();
    assert_eq!(h.list(TENANT, "p-1", false).await[0].minutes, 2);
    assert_eq!(h.list("clinic-b", "p-1", false).await[0].minutes, 3);
}

#[tokio::test]
async fn a_retry_gets_the_original_even_past_the_backdating_limit() {
    let h = harness("2026-06-10T12:00:00Z").await;
    let plain = Uuid::new_v4();
    let noted = Uuid::new_v4();
    let plain_details = details("soothing-touch", "2026-06-10T11:00:00Z", 2);
    let noted_details = with_note(
        details("journaling-reframe", "2026-06-10T11:30:00Z", 10),
        "retried",
    );
    let first = h
        .log(TENANT, "p-1", plain, plain_details.clone())
        .await
        .unwrap();
    h.log(TENANT, "p-1", noted, noted_details.clone())
        .await
        .unwrap();
    // Forty days on, the same request is past the backdating limit.
    h.clock.set(ts("2026-07-20T12:00:00Z"));
    assert_eq!(
        h.log(TENANT, "p-1", plain, plain_details.clone())
            .await
            .unwrap(),
        first
    );
    // Other content under the old id is still refused.
    let changed = h
        .log(
            TENANT,
            "p-1",
            plain,
            details("soothing-touch", "2026-06-10T11:00:00Z", 3),
        )
        .await
        .unwrap_err();
    assert_eq!(changed.code(), Code::InvalidArgument);
    // The entry with a note comes back with its note.
    let again = h.log(TENANT, "p-1", noted, noted_details).await.unwrap();
    assert_eq!(again.note, "retried");
    assert_eq!(again.minutes, 10);
    assert_eq!(
        h.events(TENANT)
            .await
            .iter()
            .filter(|(t, _)| t == "PracticeLogged")
            .count(),
        2
    );
}

#[tokio::test]
async fn concurrent_erasure_requests_destroy_one_key_and_record_one_erasure() {
    let h = harness("2026-06-10T12:00:00Z").await;
    h.log(
        TENANT,
        "p-1",
        Uuid::new_v4(),
        with_note(
            details("journaling-reframe", "2026-06-10T11:00:00Z", 5),
            "x",
        ),
    )
    .await
    .unwrap();
    // The real clock: each request decides a different erasure instant.
    let api = PracticeLogApi::new(
        h.store.clone(),
        h.directory.clone(),
        Arc::new(tend_service_kit::SystemClock),
        PracticeOptions::default(),
    );
    let calls = (0..5).map(|_| {
        api.forget_participant(req(
            TENANT,
            pb::ForgetParticipantRequest {
                participant_ref: "p-1".into(),
            },
        ))
    });
    let results = futures::future::join_all(calls).await;
    // A request that looks the reference up after another erased the
    // person finds no one; every other succeeds.
    let mut destroyed = 0;
    for r in results {
        match r {
            Ok(r) => destroyed += r.into_inner().keys_destroyed,
            Err(e) => assert_eq!(e.code(), Code::NotFound, "{e:?}"),
        }
    }
    assert_eq!(destroyed, 1);
    let events = h.events(TENANT).await;
    for kind in ["PracticeNotesErased", "ParticipantErased"] {
        assert_eq!(
            events.iter().filter(|(t, _)| t == kind).count(),
            1,
            "{kind}"
        );
    }
}
