//! The arc: a scripted participant driven through the real deciders, every
//! figure worked out by hand; each warning raised and cleared; the cohort.

use jiff::civil::date;
use jiff::{SignedDuration, Timestamp, ToSpan};
use uuid::Uuid;

use super::*;
use crate::DomainEvent;
use crate::decider::spec;
use crate::enrollment::{Command as EnrollmentCommand, Participant};
use crate::protocol::ProtocolSet;
use crate::protocol::{Activity, ActivityKind, Cadence, DaySpan, Protocol};
use crate::time::Zone;
use crate::{assessment, enrollment, practice};

const ENROLLMENT: Uuid = Uuid::from_u128(0xe1);
const GRACE: SignedDuration = SignedDuration::from_hours(6);

/// Four weeks either side, one 10-minute sit a day at 08:00 (UTC), two
/// hours to do it in.
fn protocol() -> Protocol {
    Protocol {
        id: "sit-daily".into(),
        version: 1,
        title: "Sit daily".into(),
        weeks_before: 4,
        weeks_after: 4,
        required_purposes: Default::default(),
        activities: vec![Activity {
            key: "sit".into(),
            kind: ActivityKind::Practice {
                practice: "formal-meditation".into(),
            },
            span: DaySpan::days(-28, 28).unwrap(),
            cadence: Cadence::Daily,
            times: vec!["08:00".parse().unwrap()],
            target_minutes: 10,
            window_minutes: 120,
        }],
    }
}

/// The session is on 2026-03-02, so day d is 2026-03-02 + d.
fn day(d: i32, hh_mm: &str) -> Timestamp {
    let date = date(2026, 3, 2).checked_add(d.days()).unwrap();
    format!("{date}T{hh_mm}:00Z").parse().unwrap()
}

/// One participant, driven through the deciders the services use, with
/// every event folded into the arc as the projection would.
struct Script {
    protocols: ProtocolSet,
    participant: Participant,
    log: practice::Log,
    record: assessment::Record,
    arc: ArcState,
    slots: SlotCache,
    next: u128,
}

impl Script {
    fn enrolled() -> Self {
        let mut protocols = ProtocolSet::default();
        protocols.insert(protocol());
        let mut s = Self {
            protocols,
            participant: Participant::default(),
            log: practice::Log::default(),
            record: assessment::Record::default(),
            arc: ArcState::default(),
            slots: SlotCache::default(),
            next: 0x100,
        };
        let events = enrollment::decide(
            &s.participant,
            EnrollmentCommand::Enroll {
                enrollment_id: ENROLLMENT,
                protocol: protocol(),
                requested_version: 1,
                session_at: "2026-03-02T10:00".parse().unwrap(),
                time_zone: Zone::new("UTC").unwrap(),
                now: day(-40, "09:00"),
            },
            &s.protocols,
        )
        .unwrap();
        s.enrollment(events);
        s
    }

    fn id(&mut self) -> Uuid {
        self.next += 1;
        Uuid::from_u128(self.next)
    }

    fn enrollment(&mut self, events: Vec<enrollment::Event>) {
        for e in &events {
            // Through the stored form, as the projection reads them.
            let e = enrollment::Event::from_stored(e.event_type(), 1, &e.to_payload()).unwrap();
            self.participant = enrollment::evolve(self.participant.clone(), &e);
            self.arc
                .apply(Input::Enrollment(&e), &self.protocols, &mut self.slots);
        }
    }

    /// The scheduler's round at `now`: practice links, then the tick.
    fn tick(&mut self, now: Timestamp) {
        let schedules: Vec<_> = self
            .participant
            .enrollments
            .iter()
            .map(|e| (e, e.schedule(&self.protocols, now).unwrap()))
            .collect();
        let links = practice::link(&self.log, &schedules);
        drop(schedules);
        self.enrollment(links);
        let events = enrollment::decide(
            &self.participant,
            EnrollmentCommand::Tick {
                now,
                miss_grace: GRACE,
            },
            &self.protocols,
        )
        .unwrap();
        self.enrollment(events);
    }

    fn practise(&mut self, at: Timestamp, minutes: u32) -> Uuid {
        let entry_id = self.id();
        let events = practice::decide(
            &self.log,
            practice::Command::Log {
                entry_id,
                content: practice::Content {
                    kind: "formal-meditation".into(),
                    started_at: at,
                    utc_offset_seconds: 0,
                    time_zone: None,
                    minutes,
                    occurrence_id: None,
                    note: None,
                },
            },
        )
        .unwrap();
        for e in &events {
            self.log = practice::evolve(self.log.clone(), e);
            self.arc
                .apply(Input::Practice(e), &self.protocols, &mut self.slots);
        }
        entry_id
    }

    fn retract(&mut self, entry_id: Uuid, now: Timestamp) {
        let events =
            practice::decide(&self.log, practice::Command::Retract { entry_id, now }).unwrap();
        for e in &events {
            self.log = practice::evolve(self.log.clone(), e);
            self.arc
                .apply(Input::Practice(e), &self.protocols, &mut self.slots);
        }
    }

    /// SCS-SF with every positive item answered `pos` and every negative
    /// item `neg` (items 1, 4, 8, 9, 11 and 12 are the negative ones).
    fn scs_sf(&mut self, at: Timestamp, pos: i32, neg: i32) -> Uuid {
        let answers = (1..=12)
            .map(|i| {
                (
                    i,
                    if [1, 4, 8, 9, 11, 12].contains(&i) {
                        neg
                    } else {
                        pos
                    },
                )
            })
            .collect();
        self.assess("scs-sf", at, answers)
    }

    fn assess(&mut self, instrument: &str, at: Timestamp, answers: Vec<(u32, i32)>) -> Uuid {
        let assessment_id = self.id();
        let events = assessment::decide(
            &self.record,
            assessment::Command::Submit {
                assessment_id,
                instrument: assessment::built_in(instrument).unwrap().clone(),
                answers,
                administered_at: at,
                occurrence_id: None,
                now: at,
            },
        )
        .unwrap();
        for e in &events {
            self.record = assessment::evolve(self.record.clone(), e);
            self.arc
                .apply(Input::Assessment(e), &self.protocols, &mut self.slots);
        }
        assessment_id
    }

    /// Decides the flags at `now` and folds them; returns what was decided.
    fn flags(&mut self, now: Timestamp) -> Vec<FlagEvent> {
        let ids = [1, 2, 3, 4].map(|n| Uuid::from_u128(0xf000 + n + self.next));
        let events = spec::given_state::<Flags>(self.arc.clone())
            .when(CheckFlags {
                rules: Rules::default(),
                now,
                ids,
            })
            .events();
        self.next += 0x100;
        for e in &events {
            let e = FlagEvent::from_stored(e.event_type(), 1, &e.to_payload()).unwrap();
            self.arc
                .apply(Input::Flag(&e), &self.protocols, &mut self.slots);
        }
        events
    }

    /// Practises `minutes` at 08:30 on each of `days`, with a scheduler
    /// round after each, and a round at the end of each day in between.
    fn practise_days(&mut self, days: impl IntoIterator<Item = i32>, minutes: u32) {
        for d in days {
            self.practise(day(d, "08:30"), minutes);
            self.tick(day(d, "08:31"));
            self.tick(day(d, "23:00"));
        }
    }

    fn week(&self, now: Timestamp, week: i32) -> Adherence {
        let view = self.arc.view(now);
        view.weeks
            .iter()
            .find(|(w, _)| *w == week)
            .map(|(_, a)| a.clone())
            .unwrap()
    }
}

fn adherence(due: u32, done: u32, late: u32, missed: u32, planned: u64, minutes: u64) -> Adherence {
    Adherence {
        due,
        done,
        late,
        missed,
        minutes_planned: planned,
        minutes_done: minutes,
    }
}

fn kinds(events: &[FlagEvent]) -> Vec<(&'static str, FlagKind)> {
    events
        .iter()
        .map(|e| match e {
            FlagEvent::Raised(r) => ("raised", r.kind),
            FlagEvent::Cleared(c) => ("cleared", c.kind),
        })
        .collect()
}

#[test]
fn a_scripted_arc_worked_by_hand() {
    let mut s = Script::enrolled();
    // Before: every day of weeks -4..-1 at 08:30, 10 minutes (28 entries).
    s.practise_days(-28..=-1, 10);
    // Baseline on day -28, all 3s: total 3, every subscale 3.
    let baseline = s.scs_sf(day(-28, "09:00"), 3, 3);
    // Day 0: nothing. Week +1: 20 minutes daily. Day 7: SCS-SF 4 on
    // positive items, 2 on negative ones.
    s.tick(day(0, "23:00"));
    s.practise_days(1..=7, 20);
    let second = s.scs_sf(day(7, "18:00"), 4, 2);
    // Week +2: day 8 practised; day 9 not; day 10 practised; now is day 10
    // at noon (day 10's window closed at 10:00, within the six-hour grace).
    s.practise_days([8], 10);
    s.tick(day(9, "23:00"));
    s.practise(day(10, "08:30"), 10);
    let now = day(10, "12:00");
    s.tick(now);

    let view = s.arc.view(now);
    assert_eq!(view.phase, Phase::Integration);
    let en = view.enrollment.as_ref().unwrap();
    assert_eq!(en.days_from_session, 10);
    assert_eq!(en.arc_week, Some(2));
    assert_eq!(view.erased_at, None);
    // Each pre-session week: 7 due, 7 done, 70 planned, 70 practised.
    for w in -4..=-1 {
        assert_eq!(s.week(now, w), adherence(7, 7, 0, 0, 70, 70), "week {w}");
    }
    // Day 0: due at 08:00, missed once 10:00 + 6 h had passed.
    assert_eq!(s.week(now, 0), adherence(1, 0, 0, 1, 10, 0));
    // Week +1: 7 of 7, 70 planned, 7 x 20 = 140 practised.
    assert_eq!(s.week(now, 1), adherence(7, 7, 0, 0, 70, 140));
    // Week +2 so far: days 8, 9, 10 due; 8 and 10 done, 9 missed.
    assert_eq!(s.week(now, 2), adherence(3, 2, 0, 1, 30, 20));
    assert_eq!(s.week(now, 3), adherence(0, 0, 0, 0, 0, 0));
    assert_eq!(view.before_session, adherence(28, 28, 0, 0, 280, 280));
    assert_eq!(view.session_day, adherence(1, 0, 0, 1, 10, 0));
    assert_eq!(view.after_session, adherence(10, 9, 0, 1, 100, 160));
    assert_eq!(view.total, adherence(39, 37, 0, 2, 390, 440));
    assert_eq!(view.total.rate(), Some(37.0 / 39.0));
    assert_eq!(view.after_session.minutes_rate(), Some(1.6));
    // Today (day 10) practised, day 9 not: a streak of 1.
    assert_eq!(view.streak_days, 1);
    assert_eq!(view.last_practice_at, Some(day(10, "08:30")));
    // Assessments: the baseline, then +1 (+33.3%) in total; self-kindness
    // 3 -> 4, self-judgment 3 -> 2 (subscales are reported unreversed).
    assert_eq!(view.assessments.len(), 2);
    let (b, a) = (&view.assessments[0], &view.assessments[1]);
    assert_eq!(b.assessment_id, baseline);
    assert!(b.is_baseline && b.change.is_none());
    assert_eq!(b.days_from_session, Some(-28));
    assert_eq!(a.assessment_id, second);
    assert_eq!(a.total, Some(4.0));
    let change = a.change.as_ref().unwrap();
    assert_eq!(change.baseline_assessment, baseline);
    assert_eq!(change.total.absolute, 1.0);
    assert!((change.total.percent.unwrap() - 100.0 / 3.0).abs() < 1e-9);
    assert_eq!(change.subscales["self-kindness"].absolute, 1.0);
    assert_eq!(change.subscales["self-judgment"].absolute, -1.0);
    assert!((s.arc.scs_change_percent().unwrap() - 100.0 / 3.0).abs() < 1e-9);
    // Nothing to warn of yet: pre 10 min/day, post (days 8, 9) 10/2 = 5
    // min/day, but only 2 whole days of weeks +2/+3 have passed.
    assert!(s.flags(now).is_empty());
}

#[test]
fn a_late_practice_and_a_retraction_move_the_counts() {
    let mut s = Script::enrolled();
    s.tick(day(-28, "23:00"));
    // Day -28 missed (window 08:00-10:00, grace to 16:00) ...
    let now = day(-27, "12:00");
    s.tick(now);
    assert_eq!(s.week(now, -4), adherence(2, 0, 0, 1, 20, 0));
    // ... while day -27's sit, practised in its window, is done; retracting
    // it reopens the occurrence and takes its minutes away.
    let entry = s.practise(day(-27, "09:00"), 15);
    s.tick(day(-27, "09:01"));
    assert_eq!(s.week(now, -4), adherence(2, 1, 0, 1, 20, 15));
    s.retract(entry, day(-27, "09:30"));
    s.tick(day(-27, "09:31"));
    assert_eq!(s.week(now, -4), adherence(2, 0, 0, 1, 20, 0));
}

#[test]
fn critic_returns_raised_on_a_drop_in_weeks_2_and_3_and_cleared_on_recovery() {
    let mut s = Script::enrolled();
    // Pre-session: 10 min/day over 28 days.
    s.practise_days(-28..=-1, 10);
    s.tick(day(0, "23:00"));
    s.practise_days(1..=8, 10);
    // Days 9..12 nothing. On day 13: days 8..12 whole, 10 min in 5 days =
    // 2 min/day < 0.5 x 10.
    s.tick(day(12, "23:00"));
    let events = s.flags(day(13, "07:00"));
    assert_eq!(
        kinds(&events),
        [
            ("raised", FlagKind::CriticReturns),
            ("raised", FlagKind::MissedInARow)
        ]
    );
    let FlagEvent::Raised(raised) = &events[0] else {
        unreachable!()
    };
    assert_eq!(
        raised.evidence,
        Evidence::CriticReturns {
            pre_minutes_per_day: 10.0,
            post_minutes_per_day: 2.0,
            post_days: 5,
        }
    );
    assert_eq!(raised.enrollment_id, Some(ENROLLMENT));
    // Raised once: deciding again changes nothing.
    assert!(s.flags(day(13, "07:30")).is_empty());
    // Days 13..16: 30 minutes a day. On day 17, days 8..16: 10 + 4 x 30 =
    // 130 in 9 days = 14.4 min/day >= 0.75 x 10: cleared, and the missed
    // run ended with a done occurrence.
    s.practise_days(13..=16, 30);
    let events = s.flags(day(17, "07:00"));
    assert_eq!(
        kinds(&events),
        [
            ("cleared", FlagKind::CriticReturns),
            ("cleared", FlagKind::MissedInARow)
        ]
    );
    assert!(
        matches!(&events[0], FlagEvent::Cleared(c) if c.flag_id == raised.flag_id && c.reason == ClearReason::Resolved)
    );
    assert!(s.arc.flags.is_empty());
}

#[test]
fn critic_returns_holds_between_the_ratios_and_needs_a_pre_session_habit() {
    let mut s = Script::enrolled();
    s.practise_days(-28..=-1, 10);
    s.practise_days(1..=7, 10);
    // Days 8..11 at 4 min/day: raised (4 < 5).
    s.practise_days(8..=11, 4);
    assert_eq!(
        kinds(&s.flags(day(12, "07:00"))),
        [("raised", FlagKind::CriticReturns)]
    );
    // Days 12..13 at 10: (16 + 20) / 6 = 6 min/day: above 5, below 7.5:
    // still open.
    s.practise_days(12..=13, 10);
    assert!(s.flags(day(14, "07:00")).is_empty());
    assert!(s.arc.flags.contains_key(&FlagKind::CriticReturns));

    // Without practice before the session there is no rate to fall from.
    let mut s = Script::enrolled();
    s.practise_days(1..=8, 10);
    s.tick(day(13, "06:00"));
    assert!(!kinds(&s.flags(day(13, "07:00"))).contains(&("raised", FlagKind::CriticReturns)));
}

#[test]
fn missed_in_a_row_counts_consecutive_misses_and_a_late_completion_breaks_the_run() {
    let mut s = Script::enrolled();
    s.practise_days([-28], 10);
    // Days -27 and -26 missed: two is not a warning.
    s.tick(day(-26, "23:00"));
    assert!(s.flags(day(-26, "23:30")).is_empty());
    // Day -25 too: three in a row.
    s.tick(day(-25, "23:00"));
    let events = s.flags(day(-25, "23:30"));
    assert_eq!(kinds(&events), [("raised", FlagKind::MissedInARow)]);
    let FlagEvent::Raised(r) = &events[0] else {
        unreachable!()
    };
    let Evidence::MissedInARow { count, occurrences } = &r.evidence else {
        unreachable!()
    };
    assert_eq!(*count, 3);
    assert_eq!(occurrences.len(), 3);
    // A partner completes day -25's occurrence late: the run is now two.
    let late = *occurrences.last().unwrap();
    let events = enrollment::decide(
        &s.participant,
        EnrollmentCommand::Complete {
            enrollment_id: ENROLLMENT,
            occurrence_id: late,
            completed_at: Some(day(-25, "23:45")),
            now: day(-25, "23:45"),
        },
        &s.protocols,
    )
    .unwrap();
    s.enrollment(events);
    assert_eq!(s.week(day(-25, "23:50"), -4).late, 1);
    assert_eq!(
        kinds(&s.flags(day(-25, "23:50"))),
        [("cleared", FlagKind::MissedInARow)]
    );
}

/// SCS-SF answers with every negative subscale at 2.5 (one item of each
/// pair at 2, one at 3) and the positive items at 3.
fn half_way() -> Vec<(u32, i32)> {
    (1..=12)
        .map(|i| (i, if matches!(i, 1 | 4 | 11) { 2 } else { 3 }))
        .collect()
}

#[test]
fn a_reliable_rise_in_a_negative_subscale_is_raised_and_cleared_by_a_later_assessment() {
    let mut s = Script::enrolled();
    // Threshold for SCS-SF: 1.96 x 0.8 x sqrt(2) x sqrt(1 - .86) = 0.8297.
    let threshold = Rules::default().rise_threshold("scs-sf");
    assert!((threshold - 0.829_72).abs() < 1e-4, "{threshold}");
    let from = s.scs_sf(day(-28, "09:00"), 3, 2);
    // Negative items 2 -> 3: a rise of 1 > 0.83 on all three.
    let to = s.scs_sf(day(7, "09:00"), 3, 3);
    let events = s.flags(day(7, "10:00"));
    assert_eq!(kinds(&events), [("raised", FlagKind::SubscaleRise)]);
    let FlagEvent::Raised(r) = &events[0] else {
        unreachable!()
    };
    assert_eq!(
        r.evidence,
        Evidence::SubscaleRise {
            instrument_id: "scs-sf".into(),
            from_assessment: from,
            to_assessment: to,
            rises: NEGATIVE_SUBSCALES
                .iter()
                .map(|s| Rise {
                    subscale: (*s).into(),
                    from: 2.0,
                    to: 3.0,
                    threshold,
                })
                .collect(),
        }
    );
    // A later one still 1 above where it rose from: open.
    s.scs_sf(day(14, "09:00"), 3, 3);
    assert!(s.flags(day(14, "10:00")).is_empty());
    // Back within the threshold (2.5 - 2 = 0.5): cleared.
    s.assess("scs-sf", day(21, "09:00"), half_way());
    assert_eq!(
        kinds(&s.flags(day(21, "10:00"))),
        [("cleared", FlagKind::SubscaleRise)]
    );
    // A rise under the threshold is no warning: 2 -> 2.5.
    let mut s = Script::enrolled();
    s.scs_sf(day(-28, "09:00"), 3, 2);
    s.assess("scs-sf", day(7, "09:00"), half_way());
    assert!(s.flags(day(7, "10:00")).is_empty());
}

#[test]
fn the_safety_signal_is_carried_onto_the_arc_until_a_later_administration_has_none() {
    let mut s = Script::enrolled();
    let phq = |item9: i32| {
        (1..=9)
            .map(|i| (i, if i == 9 { item9 } else { 1 }))
            .collect()
    };
    let flagged = s.assess("phq-9", day(-20, "09:00"), phq(2));
    let events = s.flags(day(-20, "09:05"));
    assert_eq!(kinds(&events), [("raised", FlagKind::SafetySignal)]);
    assert!(
        matches!(&events[0], FlagEvent::Raised(r) if r.evidence == Evidence::SafetySignal {
        assessment_id: flagged, instrument_id: "phq-9".into(), items: vec![9] })
    );
    // A later administration without the signal clears it.
    s.assess("phq-9", day(-13, "09:00"), phq(0));
    assert_eq!(
        kinds(&s.flags(day(-13, "09:05"))),
        [("cleared", FlagKind::SafetySignal)]
    );
}

#[test]
fn withdrawal_ends_the_arcs_flags() {
    let mut s = Script::enrolled();
    s.tick(day(-25, "23:00"));
    assert_eq!(
        kinds(&s.flags(day(-25, "23:30"))),
        [("raised", FlagKind::MissedInARow)]
    );
    let events = enrollment::decide(
        &s.participant,
        EnrollmentCommand::Withdraw {
            enrollment_id: ENROLLMENT,
            now: day(-24, "10:00"),
        },
        &s.protocols,
    )
    .unwrap();
    s.enrollment(events);
    let now = day(-24, "10:01");
    assert_eq!(s.arc.view(now).phase, Phase::Withdrawn);
    let events = s.flags(now);
    assert!(matches!(&events[..], [FlagEvent::Cleared(c)] if c.reason == ClearReason::ArcEnded));
}

#[test]
fn phases_follow_the_session_day_in_the_participants_zone() {
    let s = Script::enrolled();
    let phase = |t: Timestamp| s.arc.view(t).phase;
    assert_eq!(phase(day(-1, "23:59")), Phase::BeforeSession);
    assert_eq!(phase(day(0, "00:00")), Phase::SessionDay);
    assert_eq!(phase(day(1, "00:00")), Phase::Integration);
    assert_eq!(phase(day(28, "23:59")), Phase::Integration);
    assert_eq!(phase(day(29, "00:00")), Phase::Complete);
    assert_eq!(
        ArcState::default().view(day(0, "00:00")).phase,
        Phase::NotEnrolled
    );
}

#[test]
fn the_state_round_trips_through_its_stored_form() {
    let mut s = Script::enrolled();
    s.practise_days(-28..=-20, 10);
    s.scs_sf(day(-28, "09:00"), 3, 3);
    s.tick(day(-17, "23:00"));
    s.flags(day(-17, "23:30"));
    let json = serde_json::to_vec(&s.arc).unwrap();
    let back: ArcState = serde_json::from_slice(&json).unwrap();
    // Entries are stored apart from the state: it keeps them summed by day.
    let mut stored = s.arc.clone();
    stored.practice.clear();
    assert_eq!(back, stored);
    assert_eq!(back.view(day(-17, "23:40")), s.arc.view(day(-17, "23:40")));
}

#[test]
fn quantiles_and_the_confidence_interval_by_hand() {
    let v = [0.0, 0.5, 0.75, 1.0];
    // h = 3q: q1 at 0.75 -> 0 + 0.75 x 0.5; median at 1.5 -> 0.625;
    // q3 at 2.25 -> 0.75 + 0.25 x 0.25.
    assert_eq!(quantile(&v, 0.25), 0.375);
    assert_eq!(quantile(&v, 0.5), 0.625);
    assert_eq!(quantile(&v, 0.75), 0.8125);
    assert_eq!(quantile(&[0.4], 0.5), 0.4);
    // 30, 40, 50: mean 40, SD 10, t(2) = 4.303, half = 4.303 x 10 / sqrt 3.
    let ci = mean_ci(&[30.0, 40.0, 50.0]).unwrap();
    assert_eq!((ci.n, ci.mean), (3, 40.0));
    assert!((ci.high - (40.0 + 43.03 / 3f64.sqrt())).abs() < 1e-9);
    assert!((ci.low - (40.0 - 43.03 / 3f64.sqrt())).abs() < 1e-9);
    // Beyond the table the expansion meets the known values: t(60) =
    // 2.000, t(120) = 1.980.
    assert!((t_975(60) - 2.000).abs() < 1e-3);
    assert!((t_975(120) - 1.980).abs() < 1e-3);
    assert!(mean_ci(&[]).is_none());
}

#[test]
fn a_small_cohort_by_hand() {
    let m = |phase, weeks: Vec<(i32, u32, u32)>, change, flags| CohortMember {
        phase,
        weeks,
        scs_change_percent: change,
        flags,
    };
    let members = [
        m(
            Phase::Integration,
            vec![(-1, 7, 7), (1, 7, 0)],
            Some(30.0),
            vec![FlagKind::CriticReturns],
        ),
        m(
            Phase::Integration,
            vec![(-1, 7, 0), (1, 0, 0)],
            Some(50.0),
            vec![],
        ),
        m(
            Phase::BeforeSession,
            vec![(-1, 4, 2)],
            None,
            vec![FlagKind::CriticReturns, FlagKind::SafetySignal],
        ),
        m(Phase::Withdrawn, vec![(-1, 7, 7)], Some(40.0), vec![]),
    ];
    let c = cohort(&members);
    assert_eq!(c.enrolled, 4);
    assert_eq!(c.active, 3);
    assert_eq!(c.by_phase[&Phase::Integration], 2);
    assert_eq!(c.by_phase[&Phase::Withdrawn], 1);
    // Week -1 rates 1, 0, 0.5, 1 -> sorted 0, 0.5, 1, 1: q1 0.375, median
    // 0.75, q3 1. Week +1: only the first had anything due.
    assert_eq!(c.weeks.len(), 2);
    let w = &c.weeks[0];
    assert_eq!(
        (w.week, w.participants, w.q1, w.median, w.q3),
        (-1, 4, 0.375, 0.75, 1.0)
    );
    let w = &c.weeks[1];
    assert_eq!((w.week, w.participants, w.median), (1, 1, 0.0));
    assert_eq!(c.scs_change.unwrap().mean, 40.0);
    assert_eq!(c.open_flags[&FlagKind::CriticReturns], 2);
    assert_eq!(c.open_flags[&FlagKind::SafetySignal], 1);
}

#[test]
fn critic_returns_is_judged_to_day_22_and_then_holds_until_the_arc_ends() {
    // Never practised after day 7: by day 23 the window has closed
    // unjudged, and nothing is raised then.
    let mut s = Script::enrolled();
    s.practise_days(-28..=-1, 10);
    s.practise_days(1..=7, 10);
    s.tick(day(22, "23:00"));
    let late = kinds(&s.flags(day(23, "07:00")));
    assert!(
        !late.contains(&("raised", FlagKind::CriticReturns)),
        "{late:?}"
    );

    // Raised in week +2; practice in week +4 does not count for it, so it
    // stays open past day 22 and ends with the arc.
    let mut s = Script::enrolled();
    s.practise_days(-28..=-1, 10);
    s.practise_days(1..=8, 10);
    s.tick(day(12, "23:00"));
    assert!(kinds(&s.flags(day(13, "07:00"))).contains(&("raised", FlagKind::CriticReturns)));
    s.practise_days(13..=21, 2);
    s.practise_days(22..=28, 60);
    assert!(!kinds(&s.flags(day(28, "12:00"))).contains(&("cleared", FlagKind::CriticReturns)));
    assert!(s.arc.flags.contains_key(&FlagKind::CriticReturns));
    let events = s.flags(day(29, "00:30"));
    assert_eq!(s.arc.view(day(29, "00:30")).phase, Phase::Complete);
    assert!(
        events.iter().any(|e| matches!(e, FlagEvent::Cleared(c)
            if c.kind == FlagKind::CriticReturns && c.reason == ClearReason::ArcEnded)),
        "{events:?}"
    );
}

#[test]
fn the_arcs_own_flags_end_with_it_and_the_persons_do_not() {
    let mut s = Script::enrolled();
    s.scs_sf(day(14, "09:00"), 3, 2);
    s.scs_sf(day(21, "09:00"), 3, 3);
    // Nothing practised after day 24: missed in a row by the end.
    s.practise_days(-28..=24, 10);
    s.tick(day(28, "23:00"));
    let open = kinds(&s.flags(day(28, "23:30")));
    assert!(
        open.contains(&("raised", FlagKind::MissedInARow)),
        "{open:?}"
    );
    assert!(s.arc.flags.contains_key(&FlagKind::SubscaleRise));
    // The arc completes: missed in a row ends with it; the subscale rise,
    // about the person, stays open.
    let events = s.flags(day(29, "01:00"));
    assert_eq!(
        events
            .iter()
            .map(|e| match e {
                FlagEvent::Cleared(c) => (c.kind, c.reason),
                FlagEvent::Raised(r) => panic!("raised {:?}", r.kind),
            })
            .collect::<Vec<_>>(),
        [(FlagKind::MissedInARow, ClearReason::ArcEnded)]
    );
    assert!(s.arc.flags.contains_key(&FlagKind::SubscaleRise));
}

#[test]
fn weeks_follow_a_rescheduled_session() {
    let mut s = Script::enrolled();
    // Day -28 (2026-02-02) practised, then the session moves a week later.
    s.practise_days([-28], 10);
    let events = enrollment::decide(
        &s.participant,
        EnrollmentCommand::RescheduleSession {
            enrollment_id: ENROLLMENT,
            session_at: "2026-03-09T10:00".parse().unwrap(),
            now: day(-27, "12:00"),
        },
        &s.protocols,
    )
    .unwrap();
    s.enrollment(events);
    // 2026-02-02 is now day -35: week -5, outside the new arc, listed on
    // its own with its occurrence and minutes; week -4 starts afresh.
    let now = day(-27, "12:30");
    assert_eq!(s.week(now, -5), adherence(1, 1, 0, 0, 10, 10));
    assert_eq!(s.week(now, -4), adherence(0, 0, 0, 0, 0, 0));
    assert_eq!(s.arc.view(now).enrollment.unwrap().days_from_session, -34);
}

#[test]
fn a_change_is_from_the_baseline_forwards() {
    let mut s = Script::enrolled();
    // Designate the second as baseline: the first, before it, has no change.
    let first = s.scs_sf(day(-28, "09:00"), 3, 3);
    let second = s.scs_sf(day(-14, "09:00"), 4, 2);
    let events = assessment::decide(
        &s.record,
        assessment::Command::DesignateBaseline {
            assessment_id: second,
        },
    )
    .unwrap();
    for e in &events {
        s.arc
            .apply(Input::Assessment(e), &s.protocols, &mut s.slots);
    }
    s.scs_sf(day(7, "09:00"), 4, 2);
    let view = s.arc.view(day(8, "00:00"));
    let by_id = |id| {
        view.assessments
            .iter()
            .find(|a| a.assessment_id == id)
            .unwrap()
    };
    assert!(by_id(first).change.is_none());
    assert!(by_id(second).is_baseline);
    assert_eq!(
        view.assessments[2].change.as_ref().unwrap().total.absolute,
        0.0
    );
}
