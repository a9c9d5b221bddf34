//! Given / when / then: past events in, a command, the events out (or the
//! refusal).

use jiff::civil::DateTime;

use super::*;
use crate::DomainEvent;
use crate::decider::spec;
use crate::protocol::ProtocolSet;
use crate::protocol::{Activity, ActivityKind, Cadence, DaySpan, built_in};
use crate::schedule::change;

const E: Uuid = Uuid::from_u128(0xe1);

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn local(s: &str) -> DateTime {
    crate::time::parse_local_date_time("t", s).unwrap()
}

fn zone(name: &str) -> Zone {
    Zone::new(name).unwrap()
}

fn arc() -> Protocol {
    built_in("integration-arc-8w").unwrap().clone()
}

/// A one-activity protocol, for time-zone cases.
fn daily_at(times: &[&str], days: (i32, i32), window_minutes: u32) -> Protocol {
    Protocol {
        id: "daily".into(),
        version: 1,
        title: "Daily".into(),
        weeks_before: 4,
        weeks_after: 4,
        required_purposes: Default::default(),
        activities: vec![Activity {
            key: "practice".into(),
            kind: ActivityKind::Practice {
                practice: "formal-meditation".into(),
            },
            span: DaySpan::days(days.0, days.1).unwrap(),
            cadence: Cadence::Daily,
            times: times.iter().map(|t| t.parse().unwrap()).collect(),
            target_minutes: 10,
            window_minutes,
        }],
    }
}

/// The generic harness, with the protocol versions every command of a
/// scenario may need.
struct Spec {
    given: spec::Given<Aggregate>,
    protocols: ProtocolSet,
}

fn given(protocols: &[Protocol], events: &[Event]) -> Spec {
    let mut set = ProtocolSet::default();
    for p in protocols {
        set.insert(p.clone());
    }
    Spec {
        given: spec::given(events),
        protocols: set,
    }
}

impl Spec {
    fn with(&self, command: Command) -> WithProtocols {
        WithProtocols {
            command,
            protocols: self.protocols.clone(),
        }
    }

    fn state(&self) -> &Participant {
        &self.given.state
    }

    fn when(&self, command: Command) -> Result<Vec<Event>, Error> {
        self.given.when(self.with(command)).outcome
    }

    /// Applies a command that must succeed, returning the new spec.
    fn then_apply(self, command: Command) -> Self {
        let command = self.with(command);
        Self {
            given: self.given.and(command),
            protocols: self.protocols,
        }
    }

    fn schedule(&self, now: Timestamp) -> Vec<Occurrence> {
        self.state()
            .enrollment(E)
            .unwrap()
            .schedule(&self.protocols, now)
            .unwrap()
    }
}

fn enrolled(protocol: &Protocol, session: &str, zone_name: &str, at: &str) -> Event {
    Event::Enrolled(ParticipantEnrolled {
        enrollment_id: E,
        protocol_id: protocol.id.clone(),
        protocol_version: protocol.version,
        session_at: local(session),
        time_zone: zone(zone_name),
        arc_first_day: protocol.arc_days().0,
        arc_last_day: protocol.arc_days().1,
        enrolled_at: ts(at),
    })
}

/// A participant enrolled on `p` alone.
fn on(p: &Protocol, session: &str, zone_name: &str, at: &str) -> Spec {
    given(
        std::slice::from_ref(p),
        &[enrolled(p, session, zone_name, at)],
    )
}

fn enroll(protocol: &Protocol, session: &str, zone_name: &str, now: &str) -> Command {
    Command::Enroll {
        enrollment_id: E,
        protocol: protocol.clone(),
        requested_version: 0,
        session_at: local(session),
        time_zone: zone(zone_name),
        now: ts(now),
    }
}

fn local_times(schedule: &[Occurrence]) -> Vec<String> {
    schedule
        .iter()
        .map(|o| format!("{} {}", o.local_date, o.local_time))
        .collect()
}

fn utc_times(schedule: &[Occurrence]) -> Vec<String> {
    schedule.iter().map(|o| o.at.to_string()).collect()
}

// ---- Enrolling ----

#[test]
fn enrolling_records_the_arc_and_expands_the_whole_schedule() {
    let spec = given(&[], &[]);
    let events = spec
        .when(enroll(
            &arc(),
            "2026-12-15T10:00",
            "Europe/London",
            "2026-11-10T09:00:00Z",
        ))
        .unwrap();
    assert_eq!(
        events,
        vec![enrolled(
            &arc(),
            "2026-12-15T10:00",
            "Europe/London",
            "2026-11-10T09:00:00Z"
        )]
    );
    let spec = given(&[], &events);
    let schedule = spec.schedule(ts("2026-11-10T09:00:00Z"));
    // 28 days × (break + 2 touches + journal) + 2 once before; 7 × 3 daily
    // weeks after; baseline/post/plan/support; 4 integration sessions.
    assert_eq!(schedule.len(), 28 * 4 + 2 + 3 * 7 + 2 + 4);
    let first = &schedule[0];
    assert_eq!(first.local_date.to_string(), "2026-11-17");
    assert_eq!(first.local_time.to_string(), "08:00");
    assert_eq!(first.arc_week, -4);
    assert!(schedule.iter().all(|o| o.status == Status::Upcoming));
    let sessions: Vec<_> = schedule
        .iter()
        .filter(|o| o.activity_key == "integration-session")
        .map(|o| o.local_date.to_string())
        .collect();
    assert_eq!(
        sessions,
        ["2026-12-16", "2026-12-23", "2026-12-30", "2027-01-06"]
    );
}

#[test]
fn enrolling_again_with_the_same_request_is_a_no_op() {
    let spec = given(
        &[],
        &[enrolled(
            &arc(),
            "2026-12-15T10:00",
            "Europe/London",
            "2026-11-10T09:00:00Z",
        )],
    );
    let again = spec.when(enroll(
        &arc(),
        "2026-12-15T10:00",
        "Europe/London",
        "2026-11-10T09:05:00Z",
    ));
    assert_eq!(again, Ok(vec![]));
    let other = spec.when(enroll(
        &arc(),
        "2026-12-16T10:00",
        "Europe/London",
        "2026-11-10T09:05:00Z",
    ));
    assert!(
        matches!(other, Err(Error::AlreadyExists { ref field, .. }) if field == "request_id"),
        "{other:?}"
    );
}

#[test]
fn refuses_an_overlapping_enrollment_in_the_same_protocol() {
    let spec = given(
        &[],
        &[enrolled(
            &arc(),
            "2026-12-15T10:00",
            "Europe/London",
            "2026-11-10T09:00:00Z",
        )],
    );
    let mut second = enroll(
        &arc(),
        "2027-01-20T10:00",
        "Europe/London",
        "2026-11-10T09:00:00Z",
    );
    if let Command::Enroll { enrollment_id, .. } = &mut second {
        *enrollment_id = Uuid::from_u128(0xe2);
    }
    let refused = spec.when(second.clone());
    assert!(
        matches!(refused, Err(Error::Refused { ref field, .. }) if field == "session_local_time"),
        "{refused:?}"
    );
    // After the first arc ends, a new one may begin.
    if let Command::Enroll { session_at, .. } = &mut second {
        *session_at = local("2027-02-15T10:00");
    }
    assert_eq!(spec.when(second.clone()).unwrap().len(), 1);
    // A withdrawn enrollment does not block.
    let spec = spec.then_apply(Command::Withdraw {
        enrollment_id: E,
        now: ts("2026-11-11T00:00:00Z"),
    });
    if let Command::Enroll { session_at, .. } = &mut second {
        *session_at = local("2027-01-20T10:00");
    }
    assert_eq!(spec.when(second).unwrap().len(), 1);
}

#[test]
fn refuses_a_session_whose_arc_is_already_over_or_years_ahead() {
    let spec = given(&[], &[]);
    let over = spec.when(enroll(
        &arc(),
        "2026-01-01T10:00",
        "UTC",
        "2026-11-10T09:00:00Z",
    ));
    assert!(
        matches!(over, Err(Error::Refused { ref field, .. }) if field == "session_local_time"),
        "{over:?}"
    );
    let far = spec.when(enroll(
        &arc(),
        "2029-01-01T10:00",
        "UTC",
        "2026-11-10T09:00:00Z",
    ));
    assert!(
        matches!(far, Err(Error::Invalid { ref field, .. }) if field == "session_local_time"),
        "{far:?}"
    );
}

#[test]
fn enrolling_late_drops_closed_windows_and_keeps_open_ones() {
    // Enrolled on day -20 at 10:00 UTC: the baseline window (7 days from day
    // -28) has closed, the 08:00 break of day -20 is still open.
    let spec = given(
        &[],
        &[enrolled(
            &arc(),
            "2026-12-15T10:00",
            "UTC",
            "2026-11-25T10:00:00Z",
        )],
    );
    let schedule = spec.schedule(ts("2026-11-25T10:00:00Z"));
    assert!(!schedule.iter().any(|o| o.activity_key == "baseline-scs-sf"));
    let first = &schedule[0];
    assert_eq!(
        (first.activity_key.as_str(), first.day),
        ("self-compassion-break", -20)
    );
    assert_eq!(first.status, Status::Due);
}

// ---- Time zones ----

#[test]
fn local_times_hold_across_spring_forward_in_new_york() {
    let p = daily_at(&["08:00"], (-3, 3), 60);
    let spec = on(
        &p,
        "2026-03-09T10:00",
        "America/New_York",
        "2026-03-01T00:00:00Z",
    );
    let s = spec.schedule(ts("2026-03-01T00:00:00Z"));
    assert!(local_times(&s).iter().all(|t| t.ends_with("08:00")));
    assert_eq!(
        utc_times(&s),
        [
            "2026-03-06T13:00:00Z",
            "2026-03-07T13:00:00Z",
            // DST from 2026-03-08 02:00: 08:00 is now 12:00 UTC.
            "2026-03-08T12:00:00Z",
            "2026-03-09T12:00:00Z",
            "2026-03-10T12:00:00Z",
            "2026-03-11T12:00:00Z",
            "2026-03-12T12:00:00Z",
        ]
    );
}

#[test]
fn a_session_inside_the_spring_forward_gap_moves_forward_by_the_gap() {
    let p = daily_at(&["02:30"], (-1, 1), 60);
    let spec = on(
        &p,
        "2026-03-08T02:30",
        "America/New_York",
        "2026-03-01T00:00:00Z",
    );
    let e = spec.state().enrollment(E).unwrap();
    assert_eq!(e.session_instant().to_string(), "2026-03-08T07:30:00Z");
    let s = spec.schedule(ts("2026-03-01T00:00:00Z"));
    assert_eq!(
        utc_times(&s),
        [
            "2026-03-07T07:30:00Z",
            "2026-03-08T07:30:00Z",
            "2026-03-09T06:30:00Z"
        ]
    );
    // The wall-clock intention is kept: it still says 02:30.
    assert!(local_times(&s).iter().all(|t| t.ends_with("02:30")));
}

#[test]
fn an_hour_that_happens_twice_in_london_is_taken_the_first_time() {
    let p = daily_at(&["01:30"], (-1, 1), 30);
    let spec = on(
        &p,
        "2026-10-25T12:00",
        "Europe/London",
        "2026-10-01T00:00:00Z",
    );
    assert_eq!(
        utc_times(&spec.schedule(ts("2026-10-01T00:00:00Z"))),
        [
            "2026-10-24T00:30:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-26T01:30:00Z"
        ]
    );
}

#[test]
fn lord_howe_half_hour_shift_is_handled_both_ways() {
    let p = daily_at(&["02:15"], (-1, 1), 60);
    // Spring forward 02:00 -> 02:30 on 2026-10-04: 02:15 becomes 02:45 (+11).
    let spec = on(
        &p,
        "2026-10-04T12:00",
        "Australia/Lord_Howe",
        "2026-09-01T00:00:00Z",
    );
    assert_eq!(
        utc_times(&spec.schedule(ts("2026-09-01T00:00:00Z"))),
        [
            "2026-10-02T15:45:00Z",
            "2026-10-03T15:45:00Z",
            "2026-10-04T15:15:00Z"
        ]
    );
    // Fall back 02:00 -> 01:30 on 2026-04-05: 01:45 happens twice, first at +11.
    let p = daily_at(&["01:45"], (-1, 1), 10);
    let spec = on(
        &p,
        "2026-04-05T12:00",
        "Australia/Lord_Howe",
        "2026-03-01T00:00:00Z",
    );
    assert_eq!(
        utc_times(&spec.schedule(ts("2026-03-01T00:00:00Z"))),
        [
            "2026-04-03T14:45:00Z",
            "2026-04-04T14:45:00Z",
            "2026-04-05T15:15:00Z"
        ]
    );
}

#[test]
fn a_zone_without_dst_keeps_one_offset() {
    let p = daily_at(&["08:00"], (-3, 3), 60);
    let spec = on(
        &p,
        "2026-03-09T10:00",
        "Asia/Kolkata",
        "2026-03-01T00:00:00Z",
    );
    assert!(
        utc_times(&spec.schedule(ts("2026-03-01T00:00:00Z")))
            .iter()
            .all(|t| t.ends_with("T02:30:00Z"))
    );
}

#[test]
fn changing_time_zone_keeps_local_clock_times_for_the_future_only() {
    let p = daily_at(&["08:00"], (-3, 3), 60);
    let spec = on(
        &p,
        "2026-06-10T10:00",
        "Europe/London",
        "2026-06-01T00:00:00Z",
    )
    .then_apply(Command::ChangeTimeZone {
        enrollment_id: E,
        time_zone: zone("America/New_York"),
        now: ts("2026-06-09T00:00:00Z"),
    });
    let s = spec.schedule(ts("2026-06-09T00:00:00Z"));
    assert!(local_times(&s).iter().all(|t| t.ends_with("08:00")));
    assert_eq!(
        utc_times(&s),
        [
            // Already due in London before the change: kept.
            "2026-06-07T07:00:00Z",
            "2026-06-08T07:00:00Z",
            // From then on, 08:00 in New York.
            "2026-06-09T12:00:00Z",
            "2026-06-10T12:00:00Z",
            "2026-06-11T12:00:00Z",
            "2026-06-12T12:00:00Z",
            "2026-06-13T12:00:00Z",
        ]
    );
    assert_eq!(s[0].zone.name(), "Europe/London");
    assert_eq!(s[2].zone.name(), "America/New_York");
}

#[test]
fn a_participant_who_travels_leaves_the_session_where_it_is() {
    // A 10:00 New York session; the participant's phone moves to Tokyo
    // before it. The session happens at the clinic: same instant, same
    // zone. Their practice follows the Tokyo wall clock.
    let p = daily_at(&["08:00"], (-3, 3), 60);
    let spec = on(
        &p,
        "2026-06-10T10:00",
        "America/New_York",
        "2026-06-01T00:00:00Z",
    )
    .then_apply(Command::ChangeTimeZone {
        enrollment_id: E,
        time_zone: zone("Asia/Tokyo"),
        now: ts("2026-06-08T00:00:00Z"),
    });
    let e = spec.state().enrollment(E).unwrap();
    assert_eq!(e.session_instant(), ts("2026-06-10T14:00:00Z"));
    assert_eq!(e.current().session_zone.name(), "America/New_York");
    assert_eq!(e.current().zone.name(), "Asia/Tokyo");
    assert_eq!(e.current().session, local("2026-06-10T10:00"));
    let s = spec.schedule(ts("2026-06-08T00:00:00Z"));
    assert_eq!(
        utc_times(&s),
        [
            // Due in New York before the move: kept.
            "2026-06-07T12:00:00Z",
            // 08:00 in Tokyo from then on, on the same arc days (day -2's
            // Tokyo window had already closed at the move: dropped).
            "2026-06-08T23:00:00Z",
            "2026-06-09T23:00:00Z",
            "2026-06-10T23:00:00Z",
            "2026-06-11T23:00:00Z",
            "2026-06-12T23:00:00Z",
        ]
    );
    // A reschedule afterwards is read in the session's zone.
    let events = spec
        .when(Command::RescheduleSession {
            enrollment_id: E,
            session_at: local("2026-06-11T10:00"),
            now: ts("2026-06-08T00:00:00Z"),
        })
        .unwrap();
    assert!(
        matches!(&events[..], [Event::SessionRescheduled(_)]),
        "{events:?}"
    );
    let spec = spec.then_apply(Command::RescheduleSession {
        enrollment_id: E,
        session_at: local("2026-06-11T10:00"),
        now: ts("2026-06-08T00:00:00Z"),
    });
    assert_eq!(
        spec.state().enrollment(E).unwrap().session_instant(),
        ts("2026-06-11T14:00:00Z")
    );
}

#[test]
fn a_time_zone_change_written_by_an_earlier_release_still_moved_the_session() {
    // Schema v1 has no session zone: its change moved the session to the
    // same local time in the new zone, and replaying it must say so.
    let p = daily_at(&["08:00"], (-3, 3), 60);
    let v1 = serde_json::json!({
        "enrollment_id": E,
        "time_zone": "Asia/Tokyo",
        "previous_time_zone": "America/New_York",
        "effective_from": "2026-06-08T00:00:00Z",
    });
    let event = <Event as crate::DomainEvent>::from_stored("TimeZoneChanged", 1, &v1).unwrap();
    let spec = given(
        std::slice::from_ref(&p),
        &[
            enrolled(
                &p,
                "2026-06-10T10:00",
                "America/New_York",
                "2026-06-01T00:00:00Z",
            ),
            event,
        ],
    );
    let e = spec.state().enrollment(E).unwrap();
    assert_eq!(e.current().session_zone.name(), "Asia/Tokyo");
    assert_eq!(e.session_instant(), ts("2026-06-10T01:00:00Z"));
}

// ---- Rescheduling ----

fn done_first_two(spec: Spec) -> Spec {
    let s = spec.schedule(ts("2026-06-09T00:00:00Z"));
    let (a, b) = (s[0].clone(), s[1].clone());
    spec.then_apply(Command::Complete {
        enrollment_id: E,
        occurrence_id: a.id,
        completed_at: Some(a.at),
        now: ts("2026-06-09T00:00:00Z"),
    })
    .then_apply(Command::Complete {
        enrollment_id: E,
        occurrence_id: b.id,
        completed_at: Some(b.at),
        now: ts("2026-06-09T00:00:00Z"),
    })
}

#[test]
fn rescheduling_later_moves_the_future_and_keeps_done_history_and_ids() {
    let p = daily_at(&["08:00"], (-5, 2), 60);
    let spec = done_first_two(on(&p, "2026-06-10T10:00", "UTC", "2026-06-01T00:00:00Z"));
    let now = ts("2026-06-07T09:30:00Z");
    let before = spec.schedule(now);
    let spec = spec.then_apply(Command::RescheduleSession {
        enrollment_id: E,
        session_at: local("2026-06-17T10:00"),
        now,
    });
    let after = spec.schedule(now);
    assert_eq!(
        local_times(&after),
        [
            // Days -5, -4 done; day -3 (06-07 08:00) was due before the change.
            "2026-06-05 08:00",
            "2026-06-06 08:00",
            "2026-06-07 08:00",
            // Days -2.. follow the new session (2026-06-17).
            "2026-06-15 08:00",
            "2026-06-16 08:00",
            "2026-06-17 08:00",
            "2026-06-18 08:00",
            "2026-06-19 08:00",
        ]
    );
    assert_eq!(after[0].status, Status::Done);
    assert_eq!(after[1].status, Status::Done);
    assert_eq!(after[2].status, Status::Missed);
    // Same slots, same ids.
    let ids = |s: &[Occurrence]| s.iter().map(|o| (o.id, o.day)).collect::<Vec<_>>();
    assert_eq!(ids(&before), ids(&after));
    let report = change(&before, &after, now);
    assert_eq!(
        (report.moved.len(), report.added.len(), report.removed.len()),
        (5, 0, 0)
    );
}

#[test]
fn rescheduling_earlier_skips_the_slots_it_jumps_over() {
    let p = daily_at(&["08:00"], (-5, 2), 60);
    let spec = on(&p, "2026-06-10T10:00", "UTC", "2026-06-01T00:00:00Z");
    let now = ts("2026-06-06T12:00:00Z");
    let before = spec.schedule(now);
    let spec = spec.then_apply(Command::RescheduleSession {
        enrollment_id: E,
        session_at: local("2026-06-08T10:00"),
        now,
    });
    let after = spec.schedule(now);
    assert_eq!(
        local_times(&after),
        [
            "2026-06-05 08:00",
            "2026-06-06 08:00",
            // Day -3 would now be 06-05, day -2 06-06 (closed): skipped.
            "2026-06-07 08:00",
            "2026-06-08 08:00",
            "2026-06-09 08:00",
            "2026-06-10 08:00",
        ]
    );
    let report = change(&before, &after, now);
    assert_eq!((report.moved.len(), report.removed.len()), (4, 2));
}

#[test]
fn rescheduling_to_the_same_time_changes_nothing() {
    let p = daily_at(&["08:00"], (-5, 2), 60);
    let spec = on(&p, "2026-06-10T10:00", "UTC", "2026-06-01T00:00:00Z");
    assert_eq!(
        spec.when(Command::RescheduleSession {
            enrollment_id: E,
            session_at: local("2026-06-10T10:00"),
            now: ts("2026-06-02T00:00:00Z")
        }),
        Ok(vec![])
    );
}

// ---- Pause, resume, withdraw ----

#[test]
fn a_pause_cancels_what_falls_in_it_and_resume_picks_up_after() {
    let p = daily_at(&["08:00"], (-5, 2), 60);
    let spec =
        on(&p, "2026-06-10T10:00", "UTC", "2026-06-01T00:00:00Z").then_apply(Command::Pause {
            enrollment_id: E,
            now: ts("2026-06-06T08:30:00Z"),
        });
    // While paused nothing comes due, however much time passes.
    let tick = spec
        .when(Command::Tick {
            now: ts("2026-06-08T12:00:00Z"),
            miss_grace: SignedDuration::ZERO,
        })
        .unwrap();
    let due: Vec<_> = tick
        .iter()
        .filter_map(|e| match e {
            Event::Due(d) => Some(d.local_date.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(due, ["2026-06-05"]);
    let spec = spec.then_apply(Command::Resume {
        enrollment_id: E,
        now: ts("2026-06-08T12:00:00Z"),
    });
    let s = spec.schedule(ts("2026-06-08T12:00:00Z"));
    let statuses: Vec<_> = s.iter().map(|o| o.status).collect();
    use Status::*;
    // 06-05 missed; 06-06 open at the pause, 06-07 and 06-08 inside it:
    // cancelled; from 06-09 on, upcoming again.
    assert_eq!(
        statuses,
        [
            Missed, Cancelled, Cancelled, Cancelled, Upcoming, Upcoming, Upcoming, Upcoming
        ]
    );
    assert!(matches!(
        spec.when(Command::Resume {
            enrollment_id: E,
            now: ts("2026-06-08T13:00:00Z")
        }),
        Err(Error::Refused { .. })
    ));
}

#[test]
fn a_withdrawn_enrollment_refuses_every_change() {
    let p = daily_at(&["08:00"], (-5, 2), 60);
    let spec =
        on(&p, "2026-06-10T10:00", "UTC", "2026-06-01T00:00:00Z").then_apply(Command::Withdraw {
            enrollment_id: E,
            now: ts("2026-06-06T00:00:00Z"),
        });
    let now = ts("2026-06-07T00:00:00Z");
    for command in [
        Command::RescheduleSession {
            enrollment_id: E,
            session_at: local("2026-06-12T10:00"),
            now,
        },
        Command::ChangeTimeZone {
            enrollment_id: E,
            time_zone: zone("Europe/Paris"),
            now,
        },
        Command::Pause {
            enrollment_id: E,
            now,
        },
        Command::Resume {
            enrollment_id: E,
            now,
        },
    ] {
        let result = spec.when(command.clone());
        assert!(
            matches!(result, Err(Error::Refused { ref field, ref reason }) if field == "enrollment_id" && reason.contains("withdrawn")),
            "{command:?}: {result:?}"
        );
    }
    // Withdrawing again is a no-op; the future is cancelled and nothing is due.
    assert_eq!(
        spec.when(Command::Withdraw {
            enrollment_id: E,
            now
        }),
        Ok(vec![])
    );
    assert!(
        spec.schedule(now)
            .iter()
            .filter(|o| o.day >= -4)
            .all(|o| o.status == Status::Cancelled)
    );
    let tick = spec
        .when(Command::Tick {
            now: ts("2026-06-30T00:00:00Z"),
            miss_grace: SignedDuration::ZERO,
        })
        .unwrap();
    assert_eq!(
        tick.len(),
        2,
        "only day -5 (due and missed before withdrawal): {tick:?}"
    );
}

// ---- Time-driven events ----

#[test]
fn a_window_opening_is_due_once_and_closing_is_missed_once() {
    let p = daily_at(&["08:00"], (-5, -5), 60);
    let spec = on(&p, "2026-06-10T10:00", "UTC", "2026-06-01T00:00:00Z");
    assert_eq!(
        spec.when(Command::Tick {
            now: ts("2026-06-05T07:59:59Z"),
            miss_grace: SignedDuration::ZERO,
        }),
        Ok(vec![])
    );
    let due = spec
        .when(Command::Tick {
            now: ts("2026-06-05T08:00:00Z"),
            miss_grace: SignedDuration::ZERO,
        })
        .unwrap();
    assert!(
        matches!(due.as_slice(), [Event::Due(d)] if d.window_closes_at == ts("2026-06-05T09:00:00Z"))
    );
    let spec = given(
        std::slice::from_ref(&p),
        &[
            enrolled(&p, "2026-06-10T10:00", "UTC", "2026-06-01T00:00:00Z"),
            due[0].clone(),
        ],
    );
    assert_eq!(
        spec.when(Command::Tick {
            now: ts("2026-06-05T08:30:00Z"),
            miss_grace: SignedDuration::ZERO,
        }),
        Ok(vec![])
    );
    let missed = spec
        .when(Command::Tick {
            now: ts("2026-06-05T09:00:00Z"),
            miss_grace: SignedDuration::ZERO,
        })
        .unwrap();
    assert!(matches!(missed.as_slice(), [Event::Missed(_)]));
    let spec = spec.then_apply(Command::Tick {
        now: ts("2026-06-05T09:00:00Z"),
        miss_grace: SignedDuration::ZERO,
    });
    assert_eq!(
        spec.when(Command::Tick {
            now: ts("2026-07-01T00:00:00Z"),
            miss_grace: SignedDuration::ZERO,
        }),
        Ok(vec![])
    );
    assert_eq!(
        Enrollment::next_wake(
            &spec.schedule(ts("2026-07-01T00:00:00Z")),
            SignedDuration::ZERO
        ),
        None
    );
}

#[test]
fn after_downtime_every_window_is_caught_up_in_time_order() {
    let p = daily_at(&["08:00", "20:00"], (-5, -4), 60);
    let spec = on(&p, "2026-06-10T10:00", "UTC", "2026-06-01T00:00:00Z");
    let events = spec
        .when(Command::Tick {
            now: ts("2026-06-20T00:00:00Z"),
            miss_grace: SignedDuration::ZERO,
        })
        .unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.event_type()).collect();
    assert_eq!(kinds, ["OccurrenceDue", "OccurrenceMissed"].repeat(4));
    let ids: std::collections::HashSet<_> = events
        .iter()
        .map(|e| e.deterministic_id().unwrap())
        .collect();
    assert_eq!(ids.len(), 8, "every time-driven event has its own id");
}

#[test]
fn a_completed_occurrence_is_never_missed_whichever_arrives_first() {
    let p = daily_at(&["08:00"], (-5, -5), 60);
    let base = enrolled(&p, "2026-06-10T10:00", "UTC", "2026-06-01T00:00:00Z");
    let spec = given(std::slice::from_ref(&p), std::slice::from_ref(&base));
    let o = spec.schedule(ts("2026-06-05T08:10:00Z"))[0].clone();
    // Completed inside the window, before any tick: no due, no missed.
    let spec = spec.then_apply(Command::Complete {
        enrollment_id: E,
        occurrence_id: o.id,
        completed_at: Some(ts("2026-06-05T08:10:00Z")),
        now: ts("2026-06-05T08:10:00Z"),
    });
    assert_eq!(
        spec.when(Command::Tick {
            now: ts("2026-06-06T00:00:00Z"),
            miss_grace: SignedDuration::ZERO,
        }),
        Ok(vec![])
    );
    assert_eq!(
        spec.schedule(ts("2026-06-06T00:00:00Z"))[0].status,
        Status::Done
    );
    // Missed first, then completed late: the history keeps the miss and the
    // occurrence reads as late.
    let spec = given(std::slice::from_ref(&p), &[base]).then_apply(Command::Tick {
        now: ts("2026-06-05T10:00:00Z"),
        miss_grace: SignedDuration::ZERO,
    });
    let spec = spec.then_apply(Command::Complete {
        enrollment_id: E,
        occurrence_id: o.id,
        completed_at: Some(ts("2026-06-05T10:00:00Z")),
        now: ts("2026-06-05T10:00:00Z"),
    });
    let s = spec.schedule(ts("2026-06-06T00:00:00Z"));
    assert_eq!((s[0].status, s[0].missed_recorded), (Status::Late, true));
    assert_eq!(
        spec.when(Command::Tick {
            now: ts("2026-06-07T00:00:00Z"),
            miss_grace: SignedDuration::ZERO,
        }),
        Ok(vec![])
    );
}

#[test]
fn refuses_completion_before_the_window_or_in_the_future() {
    let p = daily_at(&["08:00"], (-5, -5), 60);
    let spec = on(&p, "2026-06-10T10:00", "UTC", "2026-06-01T00:00:00Z");
    let o = spec.schedule(ts("2026-06-01T00:00:00Z"))[0].clone();
    let early = spec.when(Command::Complete {
        enrollment_id: E,
        occurrence_id: o.id,
        completed_at: Some(ts("2026-06-05T07:00:00Z")),
        now: ts("2026-06-05T07:00:00Z"),
    });
    assert!(
        matches!(early, Err(Error::Refused { ref field, .. }) if field == "completed_at"),
        "{early:?}"
    );
    let future = spec.when(Command::Complete {
        enrollment_id: E,
        occurrence_id: o.id,
        completed_at: Some(ts("2026-06-05T09:00:00Z")),
        now: ts("2026-06-05T08:30:00Z"),
    });
    assert!(
        matches!(future, Err(Error::Invalid { ref field, .. }) if field == "completed_at"),
        "{future:?}"
    );
    let unknown = spec.when(Command::Complete {
        enrollment_id: E,
        occurrence_id: Uuid::nil(),
        completed_at: Some(ts("2026-06-05T08:30:00Z")),
        now: ts("2026-06-05T08:30:00Z"),
    });
    assert!(matches!(unknown, Err(Error::NotFound { .. })));
}

// ---- Protocol versions ----

#[test]
fn migrating_to_a_new_version_changes_only_the_future_and_reports_it() {
    let v1 = daily_at(&["08:00"], (-5, 2), 60);
    let mut v2 = v1.clone();
    v2.version = 2;
    v2.activities[0].times = vec!["09:00".parse().unwrap()];
    v2.activities[0].span = DaySpan::days(-5, 1).unwrap();
    let spec = given(
        &[v1.clone(), v2.clone()],
        &[enrolled(
            &v1,
            "2026-06-10T10:00",
            "UTC",
            "2026-06-01T00:00:00Z",
        )],
    );
    let now = ts("2026-06-07T00:00:00Z");
    let before = spec.schedule(now);
    let spec = spec.then_apply(Command::Migrate {
        enrollment_id: E,
        protocol: v2,
        now,
    });
    let after = spec.schedule(now);
    assert_eq!(
        local_times(&after),
        [
            "2026-06-05 08:00",
            "2026-06-06 08:00",
            "2026-06-07 09:00",
            "2026-06-08 09:00",
            "2026-06-09 09:00",
            "2026-06-10 09:00",
            "2026-06-11 09:00",
        ]
    );
    assert_eq!(after[1].protocol_version, 1);
    assert_eq!(after[2].protocol_version, 2);
    let report = change(&before, &after, now);
    assert_eq!(
        (report.moved.len(), report.removed.len(), report.added.len()),
        (5, 1, 0)
    );
}

#[test]
fn an_enrollment_keeps_its_version_when_a_new_one_is_published() {
    let v1 = daily_at(&["08:00"], (-5, 2), 60);
    let mut v2 = v1.clone();
    v2.version = 2;
    v2.activities[0].times = vec!["09:00".parse().unwrap()];
    let spec = given(
        &[v1.clone(), v2],
        &[enrolled(
            &v1,
            "2026-06-10T10:00",
            "UTC",
            "2026-06-01T00:00:00Z",
        )],
    );
    assert!(
        spec.schedule(ts("2026-06-01T00:00:00Z"))
            .iter()
            .all(|o| o.protocol_version == 1 && o.local_time.to_string() == "08:00")
    );
}

#[test]
fn events_round_trip_through_their_stored_form() {
    let p = daily_at(&["08:00"], (-5, -4), 60);
    let spec = on(
        &p,
        "2026-06-10T10:00",
        "Europe/London",
        "2026-06-01T00:00:00Z",
    );
    let mut events = vec![enrolled(
        &p,
        "2026-06-10T10:00",
        "Europe/London",
        "2026-06-01T00:00:00Z",
    )];
    events.extend(
        spec.when(Command::Tick {
            now: ts("2026-06-20T00:00:00Z"),
            miss_grace: SignedDuration::ZERO,
        })
        .unwrap(),
    );
    events.push(Event::SessionRescheduled(SessionRescheduled {
        enrollment_id: E,
        session_at: local("2026-06-11T10:00"),
        previous_session_at: local("2026-06-10T10:00"),
        effective_from: ts("2026-06-02T00:00:00Z"),
    }));
    for event in events {
        let back = Event::from_stored(event.event_type(), 1, &event.to_payload()).unwrap();
        assert_eq!(back, event);
    }
}

// ---- Review findings ----

#[test]
fn a_change_never_moves_an_occurrence_already_recorded_due() {
    // Another server's clock ran ahead: 06-05 08:00 was recorded due, then
    // a reschedule decided at 07:59 arrives. The recorded occurrence stays.
    let p = daily_at(&["08:00"], (-5, 2), 60);
    let spec = on(&p, "2026-06-10T10:00", "UTC", "2026-06-01T00:00:00Z")
        .then_apply(Command::Tick {
            now: ts("2026-06-05T08:00:00Z"),
            miss_grace: SignedDuration::ZERO,
        })
        .then_apply(Command::RescheduleSession {
            enrollment_id: E,
            session_at: local("2026-06-12T10:00"),
            now: ts("2026-06-05T07:59:00Z"),
        });
    let s = spec.schedule(ts("2026-06-05T08:30:00Z"));
    assert_eq!(local_times(&s)[0], "2026-06-05 08:00");
    assert_eq!(
        (s[0].day, s[0].status, s[0].due_recorded),
        (-5, Status::Due, true)
    );
    // Day -4 follows the new session; nothing is due twice or lost.
    assert_eq!(local_times(&s)[1], "2026-06-08 08:00");
    assert_eq!(
        Enrollment::next_wake(&s, SignedDuration::ZERO),
        Some(ts("2026-06-05T09:00:00Z"))
    );
}

#[test]
fn a_change_takes_effect_no_earlier_than_the_one_before_it() {
    let p = daily_at(&["08:00"], (-5, 2), 60);
    let spec = on(&p, "2026-06-10T10:00", "UTC", "2026-06-01T00:00:00Z").then_apply(
        Command::ChangeTimeZone {
            enrollment_id: E,
            time_zone: zone("Europe/Paris"),
            now: ts("2026-06-06T00:00:00Z"),
        },
    );
    let events = spec
        .when(Command::RescheduleSession {
            enrollment_id: E,
            session_at: local("2026-06-11T10:00"),
            now: ts("2026-06-05T00:00:00Z"),
        })
        .unwrap();
    assert!(
        matches!(&events[..], [Event::SessionRescheduled(e)] if e.effective_from == ts("2026-06-06T00:00:00Z")),
        "{events:?}"
    );
}

#[test]
fn retries_are_the_same_request() {
    // Enroll on "the latest version", retried after version 2 is published.
    let v1 = daily_at(&["08:00"], (-5, 2), 60);
    let mut v2 = v1.clone();
    v2.version = 2;
    let spec = on(&v1, "2026-06-10T10:00", "UTC", "2026-06-01T00:00:00Z");
    assert_eq!(
        spec.when(enroll(
            &v2,
            "2026-06-10T10:00",
            "UTC",
            "2026-06-01T00:05:00Z"
        )),
        Ok(vec![])
    );
    let mut pinned = enroll(&v2, "2026-06-10T10:00", "UTC", "2026-06-01T00:05:00Z");
    if let Command::Enroll {
        requested_version, ..
    } = &mut pinned
    {
        *requested_version = 2;
    }
    assert!(matches!(
        spec.when(pinned),
        Err(Error::AlreadyExists { .. })
    ));
    // A completion without a time, sent again a minute later.
    let o = spec.schedule(ts("2026-06-05T08:10:00Z"))[0].clone();
    let complete = |now: &str| Command::Complete {
        enrollment_id: E,
        occurrence_id: o.id,
        completed_at: None,
        now: ts(now),
    };
    let spec = spec.then_apply(complete("2026-06-05T08:10:00Z"));
    assert_eq!(spec.when(complete("2026-06-05T08:11:00Z")), Ok(vec![]));
    let other_time = Command::Complete {
        enrollment_id: E,
        occurrence_id: o.id,
        completed_at: Some(ts("2026-06-05T08:20:00Z")),
        now: ts("2026-06-05T08:30:00Z"),
    };
    assert!(matches!(
        spec.when(other_time),
        Err(Error::AlreadyExists { .. })
    ));
}

#[test]
fn a_change_reports_a_slot_due_at_once_as_added() {
    let v1 = daily_at(&["08:00"], (-5, 2), 60);
    let mut v2 = v1.clone();
    v2.version = 2;
    v2.activities[0].key = "renamed".into();
    let spec = given(
        &[v1.clone(), v2.clone()],
        &[enrolled(
            &v1,
            "2026-06-10T10:00",
            "UTC",
            "2026-06-01T00:00:00Z",
        )],
    );
    let now = ts("2026-06-06T08:30:00Z");
    let before = spec.schedule(now);
    let after = spec
        .then_apply(Command::Migrate {
            enrollment_id: E,
            protocol: v2,
            now,
        })
        .schedule(now);
    let report = change(&before, &after, now);
    // 06-06 08:00 (open until 09:00) of the new activity is due at once.
    assert_eq!(report.added.len(), 7);
    assert_eq!(report.removed.len(), 6);
}

#[test]
fn a_change_after_a_pause_is_not_cancelled_by_it() {
    // Paused 06-06 00:00 to 06-06 12:00; at 06-06 12:30 the session moves a
    // day earlier, placing day -3 at 06-06 08:00, inside the old pause.
    let p = daily_at(&["08:00"], (-5, 2), 6 * 60);
    let paused_and_resumed = || {
        on(&p, "2026-06-10T10:00", "UTC", "2026-06-01T00:00:00Z")
            .then_apply(Command::Pause {
                enrollment_id: E,
                now: ts("2026-06-06T00:00:00Z"),
            })
            .then_apply(Command::Resume {
                enrollment_id: E,
                now: ts("2026-06-06T12:00:00Z"),
            })
    };
    let spec = paused_and_resumed().then_apply(Command::RescheduleSession {
        enrollment_id: E,
        session_at: local("2026-06-09T10:00"),
        now: ts("2026-06-06T12:30:00Z"),
    });
    let s = spec.schedule(ts("2026-06-06T12:30:00Z"));
    let day = |d: i32| {
        let o = s.iter().find(|o| o.day == d).unwrap();
        (o.local_date.to_string(), o.status)
    };
    assert_eq!(day(-5), ("2026-06-05".into(), Status::Missed));
    // Day -4 had come due (inside the pause) before the change: it stays,
    // cancelled by the pause.
    assert_eq!(day(-4), ("2026-06-06".into(), Status::Cancelled));
    // Day -3, placed by the change at 06-06 08:00 with its window open, is
    // due at once: the pause had ended before the change.
    assert_eq!(day(-3), ("2026-06-06".into(), Status::Due));
    // Before the change, day -4 (06-06 08:00) fell in the pause: cancelled.
    let before = paused_and_resumed().schedule(ts("2026-06-06T12:30:00Z"));
    assert_eq!(before[1].status, Status::Cancelled);
}

// ---- Consent and erasure ----

mod consent {
    use super::*;
    use crate::consent::{ConsentRecorded, DocumentVersionDefined, ErasureReason, Method, Purpose};

    const DOC_AT: &str = "2026-01-01T00:00:00Z";

    fn document(purposes: &[Purpose]) -> DocumentVersionDefined {
        DocumentVersionDefined {
            document_id: "study-consent".into(),
            version: 2,
            purposes: purposes.iter().copied().collect(),
            defined_at: ts(DOC_AT),
        }
    }

    fn needing(purposes: &[Purpose]) -> Protocol {
        let mut p = arc();
        p.id = "consented-arc".into();
        p.required_purposes = purposes.iter().copied().collect();
        p
    }

    fn record(id: u128, purposes: &[Purpose], given_at: &str, now: &str) -> Command {
        Command::RecordConsent {
            consent: ConsentRecorded {
                consent_id: Uuid::from_u128(id),
                document_id: "study-consent".into(),
                document_version: 2,
                purposes: purposes.iter().copied().collect(),
                given_at: ts(given_at),
                method: Method::ElectronicSignature,
                evidence_sha256: "ab".repeat(32),
                recorded_at: ts(now),
            },
            document: Some(document(&Purpose::ALL)),
            now: ts(now),
        }
    }

    fn withdraw(id: u128, purposes: &[Purpose], now: &str) -> Command {
        Command::WithdrawConsent {
            withdrawal_id: Uuid::from_u128(id),
            purposes: purposes.iter().copied().collect(),
            now: ts(now),
        }
    }

    fn erase(id: u128, now: &str) -> Command {
        Command::Erase {
            erasure_id: Uuid::from_u128(id),
            by_tenant: "clinic".into(),
            reason: ErasureReason::ParticipantRequest,
            now: ts(now),
        }
    }

    #[test]
    fn enrolling_needs_every_purpose_the_protocol_requires() {
        let p = needing(&[Purpose::Protocol, Purpose::Questionnaires]);
        let enroll = || {
            enroll(
                &p,
                "2026-12-15T10:00",
                "Europe/London",
                "2026-11-10T09:00:00Z",
            )
        };
        let err = given(std::slice::from_ref(&p), &[])
            .when(enroll())
            .unwrap_err();
        assert!(
            matches!(&err, Error::Refused { field, reason } if field == "consent" && reason.contains("`protocol`")),
            "{err}"
        );
        let partly = given(std::slice::from_ref(&p), &[]).then_apply(record(
            1,
            &[Purpose::Protocol],
            "2026-11-09T12:00:00Z",
            "2026-11-10T08:00:00Z",
        ));
        let err = partly.when(enroll()).unwrap_err();
        assert!(err.to_string().contains("`questionnaires`"), "{err}");
        let events = partly
            .then_apply(record(
                2,
                &[Purpose::Questionnaires],
                "2026-11-09T12:00:00Z",
                "2026-11-10T08:00:00Z",
            ))
            .when(enroll())
            .unwrap();
        assert!(matches!(events[..], [Event::Enrolled(_)]));
    }

    #[test]
    fn a_consent_must_fit_its_document_and_not_be_dated_ahead() {
        let spec = given(&[], &[]);
        let now = "2026-11-10T08:00:00Z";
        let mut narrow = record(1, &[Purpose::ResearchSharing], "2026-11-09T12:00:00Z", now);
        if let Command::RecordConsent { document, .. } = &mut narrow {
            *document = Some(document_of(&[Purpose::Protocol]));
        }
        assert_eq!(spec.when(narrow).unwrap_err().field(), Some("purposes"));
        assert_eq!(
            spec.when(record(1, &[Purpose::Protocol], "2026-11-10T09:00:00Z", now))
                .unwrap_err()
                .field(),
            Some("given_at")
        );
        let mut unknown = record(1, &[Purpose::Protocol], "2026-11-09T12:00:00Z", now);
        if let Command::RecordConsent { document, .. } = &mut unknown {
            *document = None;
        }
        assert_eq!(
            spec.when(unknown).unwrap_err().field(),
            Some("document_version")
        );
        let mut bad_hash = record(1, &[Purpose::Protocol], "2026-11-09T12:00:00Z", now);
        if let Command::RecordConsent { consent, .. } = &mut bad_hash {
            consent.evidence_sha256 = "not a hash".into();
        }
        assert_eq!(
            spec.when(bad_hash).unwrap_err().field(),
            Some("evidence_sha256")
        );
        assert_eq!(
            spec.when(record(1, &[], "2026-11-09T12:00:00Z", now))
                .unwrap_err()
                .field(),
            Some("purposes")
        );
        // A retry is the same consent; the same id for another is refused.
        let done = spec.then_apply(record(1, &[Purpose::Protocol], "2026-11-09T12:00:00Z", now));
        assert_eq!(
            done.when(record(
                1,
                &[Purpose::Protocol],
                "2026-11-09T12:00:00Z",
                "2026-11-10T08:05:00Z"
            ))
            .unwrap(),
            vec![]
        );
        assert!(matches!(
            done.when(record(
                1,
                &[Purpose::Questionnaires],
                "2026-11-09T12:00:00Z",
                now
            ))
            .unwrap_err(),
            Error::AlreadyExists { .. }
        ));
    }

    fn document_of(purposes: &[Purpose]) -> DocumentVersionDefined {
        document(purposes)
    }

    #[test]
    fn withdrawing_a_required_purpose_withdraws_the_enrollment_and_keeps_its_history() {
        let p = needing(&[Purpose::Protocol]);
        let spec = given(std::slice::from_ref(&p), &[])
            .then_apply(record(
                1,
                &[Purpose::Protocol, Purpose::ResearchSharing],
                "2026-11-09T12:00:00Z",
                "2026-11-10T08:00:00Z",
            ))
            .then_apply(enroll(
                &p,
                "2026-12-15T10:00",
                "Europe/London",
                "2026-11-10T09:00:00Z",
            ));
        // Research sharing is not what the arc needs: the schedule goes on.
        let events = spec
            .when(withdraw(
                7,
                &[Purpose::ResearchSharing],
                "2026-11-20T09:00:00Z",
            ))
            .unwrap();
        assert!(matches!(events[..], [Event::ConsentWithdrawn(_)]));
        let events = spec
            .when(withdraw(8, &[Purpose::Protocol], "2026-11-20T09:00:00Z"))
            .unwrap();
        assert!(matches!(
            &events[..],
            [
                Event::ConsentWithdrawn(_),
                Event::Withdrawn(EnrollmentWithdrawn {
                    enrollment_id: E,
                    cause: Some(WithdrawalCause::ConsentWithdrawn),
                    ..
                })
            ]
        ));
        let after = spec.then_apply(withdraw(8, &[Purpose::Protocol], "2026-11-20T09:00:00Z"));
        let enrollment = after.state().enrollment(E).unwrap();
        assert_eq!(enrollment.withdrawn_at, Some(ts("2026-11-20T09:00:00Z")));
        assert!(!enrollment.revisions.is_empty());
        assert_eq!(after.state().consent.recorded.len(), 1);
        assert!(!after.state().consent.grants(Purpose::Protocol));
        assert!(after.state().consent.grants(Purpose::ResearchSharing));
        // The retry is the same withdrawal; a purpose never (or no longer)
        // granted cannot be withdrawn.
        assert_eq!(
            after
                .when(withdraw(8, &[Purpose::Protocol], "2026-11-20T09:01:00Z"))
                .unwrap(),
            vec![]
        );
        assert_eq!(
            after
                .when(withdraw(9, &[Purpose::Protocol], "2026-11-20T09:01:00Z"))
                .unwrap_err()
                .field(),
            Some("purposes")
        );
        assert_eq!(
            after
                .when(withdraw(
                    9,
                    &[Purpose::ClinicianSharing],
                    "2026-11-20T09:01:00Z"
                ))
                .unwrap_err()
                .field(),
            Some("purposes")
        );
        // Empty withdraws everything still granted.
        let all = after
            .when(withdraw(10, &[], "2026-11-21T09:00:00Z"))
            .unwrap();
        assert!(
            matches!(&all[..], [Event::ConsentWithdrawn(w)] if w.purposes == [Purpose::ResearchSharing].into())
        );
    }

    #[test]
    fn erasure_withdraws_everything_once_and_refuses_what_follows() {
        let spec = on(
            &arc(),
            "2026-12-15T10:00",
            "Europe/London",
            "2026-11-10T09:00:00Z",
        )
        .then_apply(record(
            1,
            &[Purpose::ResearchSharing],
            "2026-11-09T12:00:00Z",
            "2026-11-10T09:00:00Z",
        ));
        let events = spec.when(erase(5, "2026-11-20T09:00:00Z")).unwrap();
        assert!(matches!(
            &events[..],
            [Event::Withdrawn(EnrollmentWithdrawn { cause: Some(WithdrawalCause::ParticipantErased), .. }), Event::Erased(e)]
                if e.by_tenant == "clinic" && e.reason == ErasureReason::ParticipantRequest
        ));
        let erased = spec.then_apply(erase(5, "2026-11-20T09:00:00Z"));
        assert!(erased.state().consent.granted.is_empty());
        // Erasing again (another request, concurrently) records nothing new.
        assert_eq!(
            erased.when(erase(6, "2026-11-20T09:00:01Z")).unwrap(),
            vec![]
        );
        assert!(
            erased
                .when(enroll(
                    &arc(),
                    "2027-03-15T10:00",
                    "Europe/London",
                    "2026-11-21T09:00:00Z"
                ))
                .is_err()
        );
        assert!(
            erased
                .when(record(
                    2,
                    &[Purpose::Protocol],
                    "2026-11-20T12:00:00Z",
                    "2026-11-21T09:00:00Z"
                ))
                .is_err()
        );
    }

    #[test]
    fn an_enrollment_stored_with_the_reference_reads_and_is_written_without_it() {
        let stored = serde_json::json!({
            "enrollment_id": E, "participant_ref": "MRN-12345", "protocol_id": "integration-arc-8w",
            "protocol_version": 1, "session_at": "2026-12-15T10:00:00", "time_zone": "Europe/London",
            "arc_first_day": -28, "arc_last_day": 56, "enrolled_at": "2026-11-10T09:00:00Z"
        });
        let event = Event::from_stored("ParticipantEnrolled", 1, &stored).unwrap();
        assert_eq!(event.schema_version(), 2);
        let written = event.to_payload().to_string();
        assert!(
            !written.contains("MRN-12345") && !written.contains("participant_ref"),
            "{written}"
        );
        assert_eq!(
            Event::from_stored("ParticipantEnrolled", 2, &event.to_payload()).unwrap(),
            event
        );
        assert!(Event::from_stored("ParticipantEnrolled", 3, &stored).is_err());
    }
}

// ---- Kept placements ----

/// `schedule_kept`, through `placements` kept from step to step, equals a
/// fresh expansion at instants before, across and after the arc.
fn kept_equals_fresh(spec: &Spec, placements: &mut Placements, step: &str) {
    let e = spec.state().enrollment(E).unwrap();
    for now in [
        "2027-01-01T00:00:00Z",
        "2027-02-25T15:00:00Z",
        "2027-03-14T12:00:00Z",
        "2027-03-20T15:30:00Z",
        "2027-04-10T00:00:00Z",
        "2027-06-01T00:00:00Z",
    ] {
        let now = ts(now);
        assert_eq!(
            e.schedule_kept(&spec.protocols, now, placements).unwrap(),
            e.schedule(&spec.protocols, now).unwrap(),
            "after {step}, at {now}"
        );
    }
}

fn tick(now: &str) -> Command {
    Command::Tick {
        now: ts(now),
        miss_grace: SignedDuration::ZERO,
    }
}

#[test]
fn kept_placements_equal_a_fresh_expansion_after_every_command() {
    let mut placements = Placements::default();
    // Enrolled late (day -23), in New York, whose clocks spring forward on
    // 14 March, within the arc.
    let mut spec = given(&[arc()], &[]).then_apply(enroll(
        &arc(),
        "2027-03-20T10:00",
        "America/New_York",
        "2027-02-25T15:00:00Z",
    ));
    kept_equals_fresh(&spec, &mut placements, "enrolling late");
    let kept = placements.len();
    spec = spec.then_apply(tick("2027-03-14T12:00:00Z"));
    kept_equals_fresh(&spec, &mut placements, "due and missed");
    let due = spec
        .schedule(ts("2027-03-14T12:00:00Z"))
        .into_iter()
        .find(|o| o.status == Status::Due)
        .expect("a window open");
    let steps = [
        (
            "a completion",
            Command::Complete {
                enrollment_id: E,
                occurrence_id: due.id,
                completed_at: None,
                now: ts("2027-03-14T12:00:00Z"),
            },
        ),
        (
            "a pause",
            Command::Pause {
                enrollment_id: E,
                now: ts("2027-03-15T00:00:00Z"),
            },
        ),
        ("a tick in the pause", tick("2027-03-18T00:00:00Z")),
        (
            "a resumption",
            Command::Resume {
                enrollment_id: E,
                now: ts("2027-03-19T00:00:00Z"),
            },
        ),
        ("a tick after it", tick("2027-03-25T00:00:00Z")),
        (
            "a withdrawal",
            Command::Withdraw {
                enrollment_id: E,
                now: ts("2027-03-26T00:00:00Z"),
            },
        ),
    ];
    for (step, command) in steps {
        spec = spec.then_apply(command);
        kept_equals_fresh(&spec, &mut placements, step);
    }
    // One revision throughout: placed once, then kept.
    assert_eq!((kept, placements.len()), (1, 1));

    // Each change of timing adds a revision: placed afresh, and still
    // equal.
    // A tenant's own protocol (built-ins have one version), and a second
    // version of it to migrate to.
    let mut own = arc();
    own.id = "own-arc".into();
    own.version = 1;
    let mut msc = built_in("msc-8w").unwrap().clone();
    msc.id = own.id.clone();
    msc.version = 2;
    let mut spec = given(&[own.clone(), msc.clone()], &[]).then_apply(enroll(
        &own,
        "2027-03-20T10:00",
        "America/New_York",
        "2027-02-25T15:00:00Z",
    ));
    let steps = [
        ("a tick", tick("2027-03-01T00:00:00Z")),
        (
            "a reschedule",
            Command::RescheduleSession {
                enrollment_id: E,
                session_at: local("2027-03-27T10:00"),
                now: ts("2027-03-02T00:00:00Z"),
            },
        ),
        (
            "a time-zone change",
            Command::ChangeTimeZone {
                enrollment_id: E,
                time_zone: zone("Europe/London"),
                now: ts("2027-03-03T00:00:00Z"),
            },
        ),
        (
            "a migration",
            Command::Migrate {
                enrollment_id: E,
                protocol: msc,
                now: ts("2027-03-04T00:00:00Z"),
            },
        ),
        ("a tick after them", tick("2027-03-20T15:30:00Z")),
    ];
    for (step, command) in steps {
        spec = spec.then_apply(command);
        kept_equals_fresh(&spec, &mut placements, step);
    }
}

#[test]
fn kept_placements_follow_the_protocol_not_its_name() {
    // Two tenants' protocols of one id and version, and an enrollment id
    // that happens to be the same in both.
    let eight = daily_at(&["08:00"], (-7, 7), 60);
    let nine = daily_at(&["09:00"], (-7, 7), 60);
    let a = on(&eight, "2027-03-20T10:00", "UTC", "2027-03-01T00:00:00Z");
    let b = on(&nine, "2027-03-20T10:00", "UTC", "2027-03-01T00:00:00Z");
    let mut placements = Placements::default();
    for spec in [&a, &b, &a, &b] {
        kept_equals_fresh(spec, &mut placements, "a switch of protocol");
    }
    assert!(
        local_times(&b.schedule(ts("2027-03-01T00:00:00Z")))
            .iter()
            .all(|t| t.ends_with("09:00"))
    );
}

#[test]
fn kept_placements_stay_bounded_and_equal() {
    let spec = on(
        &arc(),
        "2027-03-20T10:00",
        "America/New_York",
        "2027-01-01T00:00:00Z",
    );
    let e = spec.state().enrollment(E).unwrap();
    let now = ts("2027-03-14T12:00:00Z");
    // Fewer slots a generation than one arc has: each new enrollment
    // starts a generation, and only two are kept.
    let mut placements = Placements::with_generation_slots(100);
    for round in 0..3 {
        for n in 0..5 {
            let mut other = e.clone();
            other.id = Uuid::from_u128(n);
            assert_eq!(
                other
                    .schedule_kept(&spec.protocols, now, &mut placements)
                    .unwrap(),
                other.schedule(&spec.protocols, now).unwrap(),
                "round {round}, enrollment {n}"
            );
            assert!(placements.len() <= 2, "{}", placements.len());
        }
    }
}
