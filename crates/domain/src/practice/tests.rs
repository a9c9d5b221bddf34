//! Practice entries: validation, history, links to the schedule, summary.

use jiff::civil::date;

use super::*;
use crate::DomainEvent;
use crate::decider::spec;
use crate::enrollment::{Command as EnrollmentCommand, Participant};
use crate::protocol::ProtocolSet;
use crate::protocol::{Activity, Cadence, DaySpan, Protocol};

const ENTRY: Uuid = Uuid::from_u128(0xa1);
const ENTRY2: Uuid = Uuid::from_u128(0xa2);
const REQUEST: Uuid = Uuid::from_u128(0xb1);
const ENROLLMENT: Uuid = Uuid::from_u128(0xe1);

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn content(kind: &str, started_at: &str, minutes: u32) -> Content {
    Content {
        kind: kind.into(),
        started_at: ts(started_at),
        utc_offset_seconds: 0,
        time_zone: None,
        minutes,
        occurrence_id: None,
        note: None,
    }
}

fn sealed() -> SealedNote {
    SealedNote {
        key_id: Uuid::from_u128(1),
        nonce: "bm9uY2U=".into(),
        ciphertext: "Y2lwaGVy".into(),
    }
}

fn builtin_kind(k: &str) -> bool {
    BUILT_IN_KINDS.contains(&k)
}

fn check(c: &Content) -> Result<(), Error> {
    validate(
        c,
        ts("2026-06-10T12:00:00Z"),
        &Limits::default(),
        builtin_kind(&c.kind),
    )
}

fn field_of(e: Error) -> String {
    match e {
        Error::Invalid { field, .. } | Error::Refused { field, .. } => field,
        other => panic!("expected a field error, got {other:?}"),
    }
}

fn fold(events: &[Event]) -> Log {
    spec::given::<Aggregate>(events).state
}

fn apply(log: Log, command: Command) -> Log {
    spec::given_state::<Aggregate>(log).and(command).state
}

#[test]
fn accepts_a_plain_entry() {
    check(&content("soothing-touch", "2026-06-10T11:00:00Z", 2)).unwrap();
}

#[test]
fn rejects_minutes_outside_1_to_600() {
    for minutes in [0, 601, u32::MAX] {
        let e = check(&content("soothing-touch", "2026-06-10T11:00:00Z", minutes)).unwrap_err();
        assert_eq!(field_of(e), "minutes");
    }
    check(&content("soothing-touch", "2026-06-10T11:00:00Z", 600)).unwrap();
}

#[test]
fn rejects_a_start_in_the_future_beyond_the_clock_skew() {
    check(&content("soothing-touch", "2026-06-10T12:05:00Z", 5)).unwrap();
    let e = check(&content("soothing-touch", "2026-06-10T12:05:01Z", 5)).unwrap_err();
    assert_eq!(field_of(e), "started_at");
}

#[test]
fn rejects_entries_older_than_the_backdating_limit() {
    check(&content("soothing-touch", "2026-05-11T12:00:00Z", 5)).unwrap();
    let e = check(&content("soothing-touch", "2026-05-11T11:59:59Z", 5)).unwrap_err();
    assert_eq!(field_of(e), "started_at");
}

#[test]
fn rejects_unknown_and_malformed_kinds() {
    for kind in ["yoga", "", "Self Compassion"] {
        let e = check(&content(kind, "2026-06-10T11:00:00Z", 5)).unwrap_err();
        assert_eq!(field_of(e), "kind", "{kind}");
    }
}

#[test]
fn rejects_notes_over_16_kib_or_not_utf8() {
    assert_eq!(validate_note(b"").unwrap(), None);
    assert_eq!(validate_note("é".as_bytes()).unwrap(), Some("é"));
    assert!(validate_note(&[b'a'; MAX_NOTE_BYTES]).is_ok());
    assert_eq!(
        field_of(validate_note(&[b'a'; MAX_NOTE_BYTES + 1]).unwrap_err()),
        "note"
    );
    assert_eq!(field_of(validate_note(&[0xff, 0xfe]).unwrap_err()), "note");
}

#[test]
fn logging_the_same_entry_again_is_nothing_new_and_other_content_is_refused() {
    let c = content("soothing-touch", "2026-06-10T11:00:00Z", 2);
    let log = |content| Command::Log {
        entry_id: ENTRY,
        content,
    };
    let logged = spec::given_state::<Aggregate>(Log::default()).and(log(c.clone()));
    logged.when(log(c.clone())).then_nothing();
    let other = Content { minutes: 3, ..c };
    assert!(matches!(
        logged.when(log(other)).err(),
        Error::AlreadyExists { field, .. } if field == "entry_id"
    ));
}

#[test]
fn a_correction_keeps_the_original_and_counts_a_revision() {
    let c = content("soothing-touch", "2026-06-10T11:00:00Z", 2);
    let log = apply(
        Log::default(),
        Command::Log {
            entry_id: ENTRY,
            content: c.clone(),
        },
    );
    let fixed = Content {
        minutes: 20,
        ..c.clone()
    };
    let correct = Command::Correct {
        entry_id: ENTRY,
        request_id: REQUEST,
        content: fixed.clone(),
    };
    let log = apply(log, correct.clone());
    let entry = &log.entries[&ENTRY];
    assert_eq!(entry.logged, c);
    assert_eq!(entry.current, fixed);
    assert_eq!(entry.revision, 2);
    // Retrying the correction changes nothing; reusing its id for other
    // content is refused.
    assert_eq!(decide(&log, correct), Ok(vec![]));
    assert!(matches!(
        decide(
            &log,
            Command::Correct {
                entry_id: ENTRY,
                request_id: REQUEST,
                content: c
            }
        ),
        Err(Error::AlreadyExists { field, .. }) if field == "request_id"
    ));
}

#[test]
fn a_retracted_entry_stays_in_history_but_counts_for_nothing() {
    let log = apply(
        Log::default(),
        Command::Log {
            entry_id: ENTRY,
            content: content("soothing-touch", "2026-06-10T11:00:00Z", 2),
        },
    );
    let retract = Command::Retract {
        entry_id: ENTRY,
        now: ts("2026-06-10T12:00:00Z"),
    };
    let log = apply(log, retract.clone());
    assert_eq!(
        log.entries[&ENTRY].retracted_at,
        Some(ts("2026-06-10T12:00:00Z"))
    );
    assert_eq!(decide(&log, retract), Ok(vec![]));
    assert!(log.live().is_empty());
    assert!(matches!(
        decide(
            &log,
            Command::Correct {
                entry_id: ENTRY,
                request_id: REQUEST,
                content: content("soothing-touch", "2026-06-10T11:00:00Z", 3)
            }
        ),
        Err(Error::Refused { field, .. }) if field == "entry_id"
    ));
    assert!(matches!(
        decide(
            &log,
            Command::Retract {
                entry_id: ENTRY2,
                now: ts("2026-06-10T12:00:00Z")
            }
        ),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn after_erasure_new_notes_are_refused_and_plain_entries_accepted() {
    let log = apply(
        Log::default(),
        Command::EraseNotes {
            now: ts("2026-06-10T12:00:00Z"),
        },
    );
    assert_eq!(
        decide(
            &log,
            Command::EraseNotes {
                now: ts("2026-06-11T12:00:00Z")
            }
        ),
        Ok(vec![])
    );
    let with_note = Content {
        note: Some(sealed()),
        ..content("journaling-reframe", "2026-06-10T11:00:00Z", 10)
    };
    assert!(matches!(
        decide(
            &log,
            Command::Log {
                entry_id: ENTRY,
                content: with_note
            }
        ),
        Err(Error::Refused { field, .. }) if field == "note"
    ));
    assert_eq!(
        decide(
            &log,
            Command::Log {
                entry_id: ENTRY,
                content: content("journaling-reframe", "2026-06-10T11:00:00Z", 10)
            }
        )
        .unwrap()
        .len(),
        1
    );
}

#[test]
fn events_round_trip_through_their_stored_form() {
    let events = vec![
        Event::Logged(PracticeLogged {
            entry_id: ENTRY,
            content: Content {
                note: Some(sealed()),
                time_zone: Some(Zone::new("Europe/Paris").unwrap()),
                occurrence_id: Some(Uuid::from_u128(9)),
                utc_offset_seconds: 7200,
                ..content("journaling-reframe", "2026-06-10T11:00:00Z", 10)
            },
        }),
        Event::Corrected(PracticeCorrected {
            entry_id: ENTRY,
            request_id: REQUEST,
            content: content("journaling-reframe", "2026-06-10T11:00:00Z", 12),
        }),
        Event::Retracted(PracticeRetracted {
            entry_id: ENTRY,
            retracted_at: ts("2026-06-10T12:00:00Z"),
        }),
        Event::NotesErased(PracticeNotesErased {
            erased_at: ts("2026-06-10T12:00:00Z"),
        }),
    ];
    for e in events {
        let back = Event::from_stored(e.event_type(), 1, &e.to_payload()).unwrap();
        assert_eq!(back, e);
    }
}

// ---- Links ----

/// Formal meditation daily at 08:00 UTC, a 60-minute window, days -3..3
/// around a session on 2026-06-05.
fn protocol() -> Protocol {
    Protocol {
        id: "daily".into(),
        version: 1,
        title: "Daily".into(),
        weeks_before: 1,
        weeks_after: 1,
        required_purposes: Default::default(),
        activities: vec![
            Activity {
                key: "sit".into(),
                kind: ActivityKind::Practice {
                    practice: "formal-meditation".into(),
                },
                span: DaySpan::days(-3, 3).unwrap(),
                cadence: Cadence::Daily,
                times: vec!["08:00".parse().unwrap()],
                target_minutes: 10,
                window_minutes: 60,
            },
            Activity {
                key: "check-in".into(),
                kind: ActivityKind::Task,
                span: DaySpan::days(-3, -3).unwrap(),
                cadence: Cadence::Once,
                times: vec!["08:00".parse().unwrap()],
                target_minutes: 5,
                window_minutes: 60,
            },
        ],
    }
}

struct Arc {
    state: Participant,
    protocols: ProtocolSet,
}

fn enrolled() -> Arc {
    let mut protocols = ProtocolSet::default();
    protocols.insert(protocol());
    let events = enrollment::decide(
        &Participant::default(),
        EnrollmentCommand::Enroll {
            enrollment_id: ENROLLMENT,
            protocol: protocol(),
            requested_version: 1,
            session_at: crate::time::parse_local_date_time("s", "2026-06-05T10:00").unwrap(),
            time_zone: Zone::new("UTC").unwrap(),
            now: ts("2026-05-01T00:00:00Z"),
        },
        &protocols,
    )
    .unwrap();
    Arc {
        state: events
            .iter()
            .fold(Participant::default(), enrollment::evolve),
        protocols,
    }
}

impl Arc {
    fn schedule(&self, now: &str) -> Vec<Occurrence> {
        self.state.enrollments[0]
            .schedule(&self.protocols, ts(now))
            .unwrap()
    }

    fn link(&mut self, log: &Log, now: &str) -> Vec<enrollment::Event> {
        let schedule = self.schedule(now);
        let events = link(log, &[(&self.state.enrollments[0], schedule)]);
        self.state = events.iter().fold(self.state.clone(), enrollment::evolve);
        events
    }

    fn tick(&mut self, now: &str, grace_hours: i64) -> Vec<enrollment::Event> {
        let events = enrollment::decide(
            &self.state,
            EnrollmentCommand::Tick {
                now: ts(now),
                miss_grace: SignedDuration::from_hours(grace_hours),
            },
            &self.protocols,
        )
        .unwrap();
        self.state = events.iter().fold(self.state.clone(), enrollment::evolve);
        events
    }

    fn occurrence(&self, now: &str, date: &str) -> Occurrence {
        self.schedule(now)
            .into_iter()
            .find(|o| o.activity_key == "sit" && o.local_date.to_string() == date)
            .unwrap()
    }
}

fn logged(entries: &[(Uuid, Content)]) -> Log {
    entries.iter().fold(Log::default(), |log, (id, c)| {
        apply(
            log,
            Command::Log {
                entry_id: *id,
                content: c.clone(),
            },
        )
    })
}

fn completions(events: &[enrollment::Event]) -> Vec<(Uuid, Option<Uuid>)> {
    events
        .iter()
        .filter_map(|e| match e {
            enrollment::Event::Completed(c) => Some((c.occurrence_id, c.entry_id)),
            _ => None,
        })
        .collect()
}

fn missed_of(events: &[enrollment::Event], occurrence: Uuid) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, enrollment::Event::Missed(m) if m.occurrence_id == occurrence))
        .count()
}

#[test]
fn an_entry_in_a_window_completes_that_occurrence() {
    let mut arc = enrolled();
    let log = logged(&[(
        ENTRY,
        content("formal-meditation", "2026-06-03T08:20:00Z", 15),
    )]);
    let events = arc.link(&log, "2026-06-03T09:30:00Z");
    let o = arc.occurrence("2026-06-03T09:30:00Z", "2026-06-03");
    assert_eq!(completions(&events), vec![(o.id, Some(ENTRY))]);
    assert_eq!(o.status, Status::Done);
    assert_eq!(o.completed_at, Some(ts("2026-06-03T08:20:00Z")));
    // Linking again changes nothing.
    assert!(arc.link(&log, "2026-06-03T09:30:00Z").is_empty());
}

#[test]
fn an_entry_of_another_kind_or_outside_every_window_completes_nothing() {
    let mut arc = enrolled();
    let log = logged(&[
        (ENTRY, content("soothing-touch", "2026-06-03T08:20:00Z", 2)),
        (
            ENTRY2,
            content("formal-meditation", "2026-06-03T09:00:00Z", 15),
        ),
    ]);
    assert!(arc.link(&log, "2026-06-03T10:00:00Z").is_empty());
}

#[test]
fn an_entry_naming_its_occurrence_after_the_window_completes_it_late() {
    let mut arc = enrolled();
    let o = arc.occurrence("2026-06-03T12:00:00Z", "2026-06-03");
    let log = logged(&[(
        ENTRY,
        Content {
            occurrence_id: Some(o.id),
            ..content("formal-meditation", "2026-06-03T11:00:00Z", 15)
        },
    )]);
    assert_eq!(
        completions(&arc.link(&log, "2026-06-03T12:00:00Z")),
        vec![(o.id, Some(ENTRY))]
    );
    assert_eq!(
        arc.occurrence("2026-06-03T12:00:00Z", "2026-06-03").status,
        Status::Late
    );
}

#[test]
fn one_entry_completes_one_occurrence_and_one_occurrence_takes_one_entry() {
    let mut arc = enrolled();
    let log = logged(&[
        (
            ENTRY,
            content("formal-meditation", "2026-06-03T08:10:00Z", 15),
        ),
        (
            ENTRY2,
            content("formal-meditation", "2026-06-03T08:40:00Z", 15),
        ),
    ]);
    let events = arc.link(&log, "2026-06-03T10:00:00Z");
    let o = arc.occurrence("2026-06-03T10:00:00Z", "2026-06-03");
    // The earlier entry takes it; the second has nothing left to complete.
    assert_eq!(completions(&events), vec![(o.id, Some(ENTRY))]);
}

#[test]
fn retracting_the_entry_withdraws_the_completion_and_the_occurrence_can_be_missed() {
    let mut arc = enrolled();
    let log = logged(&[(
        ENTRY,
        content("formal-meditation", "2026-06-03T08:20:00Z", 15),
    )]);
    arc.link(&log, "2026-06-03T08:30:00Z");
    let log = apply(
        log,
        Command::Retract {
            entry_id: ENTRY,
            now: ts("2026-06-03T08:40:00Z"),
        },
    );
    let events = arc.link(&log, "2026-06-03T08:40:00Z");
    assert!(matches!(
        events.as_slice(),
        [enrollment::Event::CompletionWithdrawn(w)] if w.entry_id == ENTRY && w.entry_revision == 2
    ));
    let o = arc.occurrence("2026-06-03T09:00:00Z", "2026-06-03");
    let tick = arc.tick("2026-06-03T09:00:00Z", 0);
    assert_eq!(missed_of(&tick, o.id), 1);
}

#[test]
fn correcting_the_entry_into_another_window_moves_its_completion() {
    let mut arc = enrolled();
    let log = logged(&[(
        ENTRY,
        content("formal-meditation", "2026-06-03T08:20:00Z", 15),
    )]);
    arc.link(&log, "2026-06-04T08:30:00Z");
    let log = apply(
        log,
        Command::Correct {
            entry_id: ENTRY,
            request_id: REQUEST,
            content: content("formal-meditation", "2026-06-04T08:20:00Z", 15),
        },
    );
    let events = arc.link(&log, "2026-06-04T08:30:00Z");
    let third = arc.occurrence("2026-06-04T08:30:00Z", "2026-06-03");
    let fourth = arc.occurrence("2026-06-04T08:30:00Z", "2026-06-04");
    assert!(matches!(
        &events[0],
        enrollment::Event::CompletionWithdrawn(w) if w.occurrence_id == third.id
    ));
    assert_eq!(completions(&events), vec![(fourth.id, Some(ENTRY))]);
    assert_eq!(third.status, Status::Missed);
    assert_eq!(fourth.status, Status::Done);
}

#[test]
fn a_partners_direct_completion_is_never_touched() {
    let mut arc = enrolled();
    let o = arc.occurrence("2026-06-03T08:30:00Z", "2026-06-03");
    let events = enrollment::decide(
        &arc.state,
        EnrollmentCommand::Complete {
            enrollment_id: ENROLLMENT,
            occurrence_id: o.id,
            completed_at: None,
            now: ts("2026-06-03T08:30:00Z"),
        },
        &arc.protocols,
    )
    .unwrap();
    arc.state = events.iter().fold(arc.state.clone(), enrollment::evolve);
    let log = logged(&[(
        ENTRY,
        content("formal-meditation", "2026-06-03T08:20:00Z", 15),
    )]);
    assert!(arc.link(&log, "2026-06-03T08:40:00Z").is_empty());
}

#[test]
fn an_entry_linked_before_the_window_closes_is_never_missed() {
    let mut arc = enrolled();
    let log = logged(&[(
        ENTRY,
        content("formal-meditation", "2026-06-03T08:20:00Z", 15),
    )]);
    arc.link(&log, "2026-06-03T08:30:00Z");
    let tick = arc.tick("2026-06-03T20:00:00Z", 0);
    let o = arc.occurrence("2026-06-03T20:00:00Z", "2026-06-03");
    assert!(missed_of(&tick, o.id) == 0);
}

#[test]
fn an_entry_synced_after_the_window_but_within_the_grace_is_never_missed() {
    let mut arc = enrolled();
    // The window closed at 09:00; the scheduler ticks before the entry
    // arrives, but the grace holds the missed event back.
    let o = arc.occurrence("2026-06-03T10:00:00Z", "2026-06-03");
    let tick = arc.tick("2026-06-03T10:00:00Z", 6);
    assert!(missed_of(&tick, o.id) == 0);
    let log = logged(&[(
        ENTRY,
        content("formal-meditation", "2026-06-03T08:20:00Z", 15),
    )]);
    assert_eq!(
        completions(&arc.link(&log, "2026-06-03T11:00:00Z")),
        vec![(o.id, Some(ENTRY))]
    );
    let later = arc.tick("2026-06-04T08:00:00Z", 6);
    assert!(missed_of(&later, o.id) == 0);
    assert_eq!(
        arc.occurrence("2026-06-04T08:00:00Z", "2026-06-03").status,
        Status::Done
    );
}

#[test]
fn the_missed_event_waits_for_the_grace_and_a_later_entry_still_completes() {
    let mut arc = enrolled();
    let o = arc.occurrence("2026-06-03T16:00:00Z", "2026-06-03");
    assert!(
        arc.tick("2026-06-03T14:59:59Z", 6)
            .iter()
            .all(|e| !matches!(e, enrollment::Event::Missed(m) if m.occurrence_id == o.id))
    );
    let tick = arc.tick("2026-06-03T15:00:00Z", 6);
    assert!(
        tick.iter()
            .any(|e| matches!(e, enrollment::Event::Missed(m) if m.occurrence_id == o.id))
    );
    // Synced after the grace: the completion follows the missed event and
    // the occurrence reads done, by when it was practised.
    let log = logged(&[(
        ENTRY,
        content("formal-meditation", "2026-06-03T08:20:00Z", 15),
    )]);
    assert_eq!(
        completions(&arc.link(&log, "2026-06-03T16:00:00Z")),
        vec![(o.id, Some(ENTRY))]
    );
}

#[test]
fn next_wake_waits_for_the_grace() {
    let arc = enrolled();
    let schedule = arc.schedule("2026-06-03T08:30:00Z");
    let due_all: Vec<Occurrence> = schedule
        .into_iter()
        .map(|mut o| {
            o.due_recorded = o.at <= ts("2026-06-03T08:30:00Z");
            o.missed_recorded = o.closes_at <= ts("2026-06-03T08:00:00Z");
            o
        })
        .collect();
    assert_eq!(
        Enrollment::next_wake(&due_all, SignedDuration::from_hours(6)),
        Some(ts("2026-06-03T15:00:00Z"))
    );
}

#[test]
fn check_named_refuses_other_kinds_tasks_cancelled_and_early_starts() {
    let c = content("formal-meditation", "2026-06-03T08:20:00Z", 15);
    let sit = ActivityKind::Practice {
        practice: "formal-meditation".into(),
    };
    let opens = ts("2026-06-03T08:00:00Z");
    check_named(&c, &sit, false, opens).unwrap();
    let touch = ActivityKind::Practice {
        practice: "soothing-touch".into(),
    };
    assert_eq!(
        field_of(check_named(&c, &touch, false, opens).unwrap_err()),
        "occurrence_id"
    );
    assert_eq!(
        field_of(check_named(&c, &ActivityKind::Task, false, opens).unwrap_err()),
        "occurrence_id"
    );
    assert!(matches!(
        check_named(&c, &sit, true, opens),
        Err(Error::Refused { .. })
    ));
    assert_eq!(
        field_of(check_named(&c, &sit, false, ts("2026-06-03T09:00:00Z")).unwrap_err()),
        "started_at"
    );
    let session = content("integration-session", "2026-06-03T08:20:00Z", 50);
    check_named(&session, &ActivityKind::IntegrationSession, false, opens).unwrap();
}

// ---- Summary ----

#[test]
fn summary_counts_live_entries_by_arc_week_kind_and_local_day() {
    let mut log = logged(&[
        // 23:30 UTC on the 4th is the 5th in Auckland (+12): session day.
        (
            ENTRY,
            Content {
                utc_offset_seconds: 12 * 3600,
                ..content("soothing-touch", "2026-06-04T23:30:00Z", 2)
            },
        ),
        (
            ENTRY2,
            content("formal-meditation", "2026-06-04T08:00:00Z", 20),
        ),
        (
            Uuid::from_u128(0xa3),
            content("formal-meditation", "2026-06-06T08:00:00Z", 15),
        ),
        (
            Uuid::from_u128(0xa4),
            content("formal-meditation", "2026-06-07T08:00:00Z", 15),
        ),
        (
            Uuid::from_u128(0xa5),
            content("loving-kindness", "2026-05-20T08:00:00Z", 10),
        ),
    ]);
    log = apply(
        log,
        Command::Retract {
            entry_id: Uuid::from_u128(0xa5),
            now: ts("2026-06-07T09:00:00Z"),
        },
    );
    let s = summarize(&log, Some(date(2026, 6, 5)), date(2026, 6, 7));
    assert_eq!(s.entries, 4);
    assert_eq!(s.minutes, 2 + 20 + 15 + 15);
    let weeks: Vec<(i32, u32, u64)> = s
        .weeks
        .iter()
        .map(|t| (t.key, t.entries, t.minutes))
        .collect();
    assert_eq!(weeks, vec![(-1, 1, 20), (0, 1, 2), (1, 2, 30)]);
    let kinds: Vec<(&str, u32, u64)> = s
        .kinds
        .iter()
        .map(|t| (t.key.as_str(), t.entries, t.minutes))
        .collect();
    assert_eq!(
        kinds,
        vec![("formal-meditation", 3, 50), ("soothing-touch", 1, 2)]
    );
    // Local days 4, 5, 6, 7: four in a row ending today.
    assert_eq!(s.streak_days, 4);
    assert_eq!(s.last_practice_at, Some(ts("2026-06-07T08:00:00Z")));
    // Nothing yet today: the streak still counts up to yesterday; a day
    // without practice breaks it.
    assert_eq!(
        summarize(&log, None, date(2026, 6, 8)).streak_days,
        4,
        "yesterday still counts"
    );
    assert_eq!(summarize(&log, None, date(2026, 6, 9)).streak_days, 0);
    assert!(summarize(&log, None, date(2026, 6, 7)).weeks.is_empty());
}

#[test]
fn fold_of_logged_events_matches_apply() {
    let c = content("soothing-touch", "2026-06-10T11:00:00Z", 2);
    let log = fold(&[Event::Logged(PracticeLogged {
        entry_id: ENTRY,
        content: c.clone(),
    })]);
    assert_eq!(log.entries[&ENTRY].current, c);
    assert_eq!(log.live().len(), 1);
}

#[test]
fn a_completion_where_a_reschedule_moved_the_slot_stays_there_and_links_once() {
    let mut arc = enrolled();
    // On 06-01 the session moves two days later: the 06-02 08:00 slot
    // (day -3) moves to 06-04 08:00.
    let events = enrollment::decide(
        &arc.state,
        EnrollmentCommand::RescheduleSession {
            enrollment_id: ENROLLMENT,
            session_at: crate::time::parse_local_date_time("s", "2026-06-07T10:00").unwrap(),
            now: ts("2026-06-01T00:00:00Z"),
        },
        &arc.protocols,
    )
    .unwrap();
    arc.state = events.iter().fold(arc.state.clone(), enrollment::evolve);
    let log = logged(&[(
        ENTRY,
        content("formal-meditation", "2026-06-04T08:20:00Z", 15),
    )]);
    let first = arc.link(&log, "2026-06-04T09:30:00Z");
    assert_eq!(completions(&first).len(), 1);
    let (occurrence, _) = completions(&first)[0];
    let o = arc
        .schedule("2026-06-04T09:30:00Z")
        .into_iter()
        .find(|o| o.id == occurrence)
        .unwrap();
    assert_eq!((o.at, o.status), (ts("2026-06-04T08:00:00Z"), Status::Done));
    // Stable: linking again, and again after the window, changes nothing.
    assert!(arc.link(&log, "2026-06-04T09:30:00Z").is_empty());
    assert!(arc.link(&log, "2026-06-05T12:00:00Z").is_empty());
    assert_eq!(
        missed_of(&arc.tick("2026-06-05T12:00:00Z", 0), occurrence),
        0
    );
}

/// The live entries in the order they started, by scanning every entry
/// (what `Log::live` keeps as entries change).
fn live_by_scan(log: &Log) -> Vec<&Entry> {
    let mut live: Vec<&Entry> = log
        .entries
        .values()
        .map(|e| e.as_ref())
        .filter(|e| e.is_live())
        .collect();
    live.sort_by_key(|e| (e.current.started_at, e.entry_id));
    live
}

/// `link` as first written: every entry against the whole schedule. The
/// indexed `link` must decide exactly what it decides.
fn link_by_scan(log: &Log, schedules: &[(&Enrollment, Vec<Occurrence>)]) -> Vec<enrollment::Event> {
    let live: Vec<&Entry> = live_by_scan(log);
    let by_id: BTreeMap<Uuid, &Entry> = live.iter().map(|e| (e.entry_id, *e)).collect();
    let mut events = Vec::new();
    let mut used: BTreeSet<Uuid> = BTreeSet::new();
    let mut taken: BTreeSet<Uuid> = BTreeSet::new();
    for (enrollment, schedule) in schedules {
        for o in schedule {
            let Some(&(entry_id, revision)) = enrollment.completed_by.get(&o.id) else {
                if o.completed_at.is_some() {
                    taken.insert(o.id);
                }
                continue;
            };
            let holds = by_id.get(&entry_id).is_some_and(|entry| {
                !used.contains(&entry_id)
                    && match entry.current.occurrence_id {
                        Some(named) => named == o.id && fits_named(entry, o),
                        None => fits_window(entry, o),
                    }
                    && entry.current.started_at == o.completed_at.unwrap_or(Timestamp::MIN)
            });
            if holds {
                used.insert(entry_id);
                taken.insert(o.id);
            } else {
                let entry_revision = log.entries.get(&entry_id).map_or(revision, |e| e.revision);
                events.push(enrollment::Event::CompletionWithdrawn(
                    OccurrenceCompletionWithdrawn {
                        enrollment_id: enrollment.id,
                        occurrence_id: o.id,
                        entry_id,
                        entry_revision,
                    },
                ));
            }
        }
    }
    let complete = |enrollment: &Enrollment, o: &Occurrence, entry: &Entry| {
        enrollment::Event::Completed(OccurrenceCompleted {
            enrollment_id: enrollment.id,
            occurrence_id: o.id,
            completed_at: entry.current.started_at,
            entry_id: Some(entry.entry_id),
            entry_revision: Some(entry.revision),
        })
    };
    for entry in &live {
        let Some(named) = entry.current.occurrence_id else {
            continue;
        };
        if used.contains(&entry.entry_id) {
            continue;
        }
        for (enrollment, schedule) in schedules {
            if let Some(o) = schedule.iter().find(|o| o.id == named)
                && !taken.contains(&o.id)
                && fits_named(entry, o)
            {
                events.push(complete(enrollment, o, entry));
                used.insert(entry.entry_id);
                taken.insert(o.id);
            }
        }
    }
    for entry in &live {
        if entry.current.occurrence_id.is_some() || used.contains(&entry.entry_id) {
            continue;
        }
        let candidate = schedules
            .iter()
            .flat_map(|(enrollment, schedule)| schedule.iter().map(move |o| (*enrollment, o)))
            .filter(|(_, o)| !taken.contains(&o.id) && fits_window(entry, o))
            .min_by_key(|(_, o)| (o.at, o.id));
        if let Some((enrollment, o)) = candidate {
            events.push(complete(enrollment, o, entry));
            used.insert(entry.entry_id);
            taken.insert(o.id);
        }
    }
    events
}

#[test]
fn linking_through_the_window_index_decides_as_a_scan_of_every_window() {
    // Overlapping windows of two lengths, twice a day, and a task.
    let mut p = protocol();
    p.activities[0].times = vec!["08:00".parse().unwrap(), "09:30".parse().unwrap()];
    p.activities[0].window_minutes = 180;
    p.activities.push(Activity {
        key: "walk".into(),
        kind: ActivityKind::Practice {
            practice: "formal-meditation".into(),
        },
        span: DaySpan::days(-3, 3).unwrap(),
        cadence: Cadence::Daily,
        times: vec!["09:00".parse().unwrap()],
        target_minutes: 20,
        window_minutes: 45,
    });
    let mut protocols = ProtocolSet::default();
    protocols.insert(p.clone());
    let mut state = enrollment::decide(
        &Participant::default(),
        EnrollmentCommand::Enroll {
            enrollment_id: ENROLLMENT,
            protocol: p,
            requested_version: 1,
            session_at: crate::time::parse_local_date_time("s", "2026-06-05T10:00").unwrap(),
            time_zone: Zone::new("UTC").unwrap(),
            now: ts("2026-05-01T00:00:00Z"),
        },
        &protocols,
    )
    .unwrap()
    .iter()
    .fold(Participant::default(), enrollment::evolve);
    let now = ts("2026-06-09T00:00:00Z");
    let ids: Vec<Uuid> = state.enrollments[0]
        .schedule(&protocols, now)
        .unwrap()
        .iter()
        .map(|o| o.id)
        .collect();
    let mut rng = 17u64;
    let mut next = move |n: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % n
    };
    let mut log = Log::default();
    let (mut completed, mut withdrawn) = (0, 0);
    for round in 0..40u128 {
        for i in 0..6u128 {
            let entry_id = Uuid::from_u128(round << 8 | i);
            let start = ts("2026-06-02T00:00:00Z")
                .checked_add(SignedDuration::from_mins(next(7 * 24 * 12) as i64 * 5))
                .unwrap();
            let mut c = Content {
                started_at: start,
                ..content(
                    if next(5) == 0 {
                        "soothing-touch"
                    } else {
                        "formal-meditation"
                    },
                    "2026-06-02T00:00:00Z",
                    5 + next(30) as u32,
                )
            };
            if next(6) == 0 {
                c.occurrence_id = Some(ids[next(ids.len() as u64) as usize]);
            }
            let events = decide(
                &log,
                Command::Log {
                    entry_id,
                    content: c,
                },
            )
            .unwrap();
            log = events.iter().fold(log, evolve);
        }
        // Corrections and retractions of earlier entries.
        let existing: Vec<Uuid> = log.entries.keys().copied().collect();
        let pick = existing[next(existing.len() as u64) as usize];
        let moved = ts("2026-06-02T00:00:00Z")
            .checked_add(SignedDuration::from_mins(next(7 * 24 * 12) as i64 * 5))
            .unwrap();
        if let Ok(events) = decide(
            &log,
            Command::Correct {
                entry_id: pick,
                request_id: Uuid::from_u128(0xc000 + round),
                content: Content {
                    started_at: moved,
                    ..content("formal-meditation", "2026-06-02T00:00:00Z", 12)
                },
            },
        ) {
            log = events.iter().fold(log, evolve);
        }
        if round % 3 == 0 {
            let pick = existing[next(existing.len() as u64) as usize];
            if let Ok(events) = decide(
                &log,
                Command::Retract {
                    entry_id: pick,
                    now,
                },
            ) {
                log = events.iter().fold(log, evolve);
            }
        }
        let schedule = state.enrollments[0].schedule(&protocols, now).unwrap();
        let schedules = [(&state.enrollments[0], schedule)];
        assert_eq!(log.live(), live_by_scan(&log), "round {round}");
        let indexed = link(&log, &schedules);
        assert_eq!(indexed, link_by_scan(&log, &schedules), "round {round}");
        for e in &indexed {
            match e {
                enrollment::Event::Completed(_) => completed += 1,
                _ => withdrawn += 1,
            }
        }
        state = indexed.iter().fold(state, enrollment::evolve);
    }
    // The rounds linked, and withdrew links whose entries moved away.
    assert!(
        completed >= 15 && withdrawn >= 3,
        "{completed}, {withdrawn}"
    );
}
