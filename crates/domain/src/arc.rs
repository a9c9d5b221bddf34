//! The participant's arc: where they are in their weeks around the session,
//! how much of what was asked they did, how their scores moved, and the
//! early warnings a practitioner wants to see.
//!
//! [`ArcState`] is folded from the participant's enrollment, practice,
//! assessment and arc (flag) events, in log order; [`ArcState::view`] reads
//! it at an instant (phase, current week and streak depend on the clock,
//! the rest only on events). [`decide_flags`] compares the state with the
//! warning [`Rules`] and says which flags to raise or clear: flags are
//! events, so partners hear of them on the stream, and a rebuilt arc folds
//! the same flags instead of deciding them again.

use std::collections::{BTreeMap, BTreeSet};

use jiff::civil::{Date, DateTime, Time};
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::protocol::{ActivityKind, arc_week};
use crate::schedule::{Protocols, occurrence_id};
use crate::time::{Zone, resolve_date_time, zoned};
use crate::{assessment, enrollment, practice};

/// The published benchmark a cohort's SCS change is set beside: the 8-week
/// MSC program raises SCS scores by about 43% at post-program (Neff &
/// Germer 2013; see `shared/domain.md`).
pub const MSC_BENCHMARK_PERCENT: f64 = 43.0;

/// The instruments whose total change the cohort view reports.
pub const SCS_INSTRUMENTS: &[&str] = &["scs", "scs-sf"];

/// The subscales whose rise is a warning: the negative poles of Neff's three
/// components.
pub const NEGATIVE_SUBSCALES: &[&str] = &["self-judgment", "isolation", "over-identification"];

// ---- State ----

/// Everything the arc needs, folded from events. Stored as the projection's
/// row, so it is serialisable and holds no free text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArcState {
    /// The partner's reference, from the first enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant_ref: Option<String>,
    pub enrollments: Vec<ArcEnrollment>,
    /// Practice entries by entry id, as they stand after corrections.
    pub practice: BTreeMap<Uuid, Practised>,
    pub assessments: Vec<Administered>,
    /// Designated baselines by instrument.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub baselines: BTreeMap<String, Uuid>,
    /// Open flags by kind: at most one of each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub flags: BTreeMap<FlagKind, ArcFlagRaised>,
    /// The version of the participant's arc stream folded so far; flags are
    /// appended at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arc_version: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArcEnrollment {
    pub id: Uuid,
    pub protocol_id: String,
    pub protocol_version: u32,
    pub session: DateTime,
    pub zone: Zone,
    pub arc_days: (i32, i32),
    pub enrolled_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn_at: Option<Timestamp>,
    /// Occurrences that fell due (or were completed), by id.
    pub occurrences: BTreeMap<Uuid, Occ>,
}

/// One occurrence as the arc counts it. Stored with short names: an arc
/// holds a hundred or more of these, and GetArc reads them all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Occ {
    /// When its window opened; orders occurrences for "missed in a row".
    #[serde(rename = "a")]
    pub at: Timestamp,
    #[serde(rename = "c")]
    pub closes_at: Timestamp,
    /// The local date it falls on: its arc week is counted from the
    /// current session, so a rescheduled session moves it with the rest.
    #[serde(rename = "d")]
    pub date: Date,
    /// Planned minutes of a practice; 0 for anything else.
    #[serde(rename = "m", default, skip_serializing_if = "is_zero")]
    pub minutes: u32,
    #[serde(rename = "s")]
    pub state: OccState,
    /// A missed event was recorded (a withdrawn completion goes back to it).
    #[serde(rename = "x", default, skip_serializing_if = "std::ops::Not::not")]
    pub missed_recorded: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OccState {
    Open,
    Done,
    Late,
    Missed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Practised {
    #[serde(rename = "t")]
    pub started_at: Timestamp,
    #[serde(rename = "d")]
    pub local_date: Date,
    #[serde(rename = "m")]
    pub minutes: u32,
    #[serde(rename = "l")]
    pub live: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Administered {
    pub assessment_id: Uuid,
    pub instrument_id: String,
    pub administered_at: Timestamp,
    /// Latest scoring; `None` until scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subscales: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub safety_items: Vec<u32>,
}

impl ArcState {
    /// The enrollment the arc follows: the latest one.
    pub fn current(&self) -> Option<&ArcEnrollment> {
        self.enrollments
            .iter()
            .max_by_key(|e| (e.enrolled_at, e.id))
    }

    fn enrollment_mut(&mut self, id: Uuid) -> Option<&mut ArcEnrollment> {
        self.enrollments.iter_mut().find(|e| e.id == id)
    }

    /// Administrations of one instrument, oldest first (submission order
    /// breaks ties).
    fn of(&self, instrument_id: &str) -> Vec<&Administered> {
        // `assessments` is in submission order and the sort is stable.
        let mut list: Vec<&Administered> = self
            .assessments
            .iter()
            .filter(|a| a.instrument_id == instrument_id && a.total.is_some())
            .collect();
        list.sort_by_key(|a| a.administered_at);
        list
    }

    /// The baseline of an instrument: designated, else the first scored
    /// administration from the start of the current arc.
    fn baseline(&self, instrument_id: &str) -> Option<&Administered> {
        if let Some(id) = self.baselines.get(instrument_id) {
            return self.assessments.iter().find(|a| a.assessment_id == *id);
        }
        let start = self.current().map(|e| e.arc_start());
        self.of(instrument_id)
            .into_iter()
            .find(|a| start.is_none_or(|s| a.administered_at >= s))
    }
}

impl ArcEnrollment {
    pub fn session_date(&self) -> Date {
        self.session.date()
    }

    fn midnight(&self, day: i32) -> Timestamp {
        let date = self
            .session_date()
            .checked_add(day.days())
            .unwrap_or(self.session_date());
        resolve_date_time(&self.zone, date.to_datetime(Time::midnight()))
    }

    /// The first instant of the arc's first day.
    pub fn arc_start(&self) -> Timestamp {
        self.midnight(self.arc_days.0)
    }

    /// The first and last instants of the session day, and the end of the
    /// arc's last day, in the participant's zone.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            session_start: self.midnight(0),
            session_end: self.midnight(1),
            arc_end: self.midnight(self.arc_days.1 + 1),
        }
    }

    /// Days from the session to `at`'s local date.
    pub fn day_of(&self, at: Timestamp) -> i32 {
        self.day_of_date(zoned(&self.zone, at).date())
    }

    fn day_of_date(&self, date: Date) -> i32 {
        self.session_date()
            .until(date)
            .map_or(0, |span| span.get_days())
    }

    pub fn phase(&self, now: Timestamp) -> Phase {
        if self.withdrawn_at.is_some() {
            return Phase::Withdrawn;
        }
        if self.paused_at.is_some() {
            return Phase::Paused;
        }
        self.bounds().phase(now)
    }
}

/// The instants that decide a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub session_start: Timestamp,
    pub session_end: Timestamp,
    pub arc_end: Timestamp,
}

impl Bounds {
    /// The phase by time alone (an active enrollment).
    pub fn phase(&self, now: Timestamp) -> Phase {
        if now < self.session_start {
            Phase::BeforeSession
        } else if now < self.session_end {
            Phase::SessionDay
        } else if now < self.arc_end {
            Phase::Integration
        } else {
            Phase::Complete
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No enrollment (practice or assessments only).
    NotEnrolled,
    BeforeSession,
    SessionDay,
    /// After the session day, to the end of the arc.
    Integration,
    Complete,
    Paused,
    Withdrawn,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::NotEnrolled,
        Phase::BeforeSession,
        Phase::SessionDay,
        Phase::Integration,
        Phase::Complete,
        Phase::Paused,
        Phase::Withdrawn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::NotEnrolled => "not_enrolled",
            Phase::BeforeSession => "before_session",
            Phase::SessionDay => "session_day",
            Phase::Integration => "integration",
            Phase::Complete => "complete",
            Phase::Paused => "paused",
            Phase::Withdrawn => "withdrawn",
        }
    }

    /// In the arc and expected to practise.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Phase::BeforeSession | Phase::SessionDay | Phase::Integration
        )
    }
}

// ---- Flag events ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagKind {
    CriticReturns,
    SubscaleRise,
    MissedInARow,
    SafetySignal,
}

impl FlagKind {
    pub const ALL: [FlagKind; 4] = [
        FlagKind::CriticReturns,
        FlagKind::SubscaleRise,
        FlagKind::MissedInARow,
        FlagKind::SafetySignal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FlagKind::CriticReturns => "critic_returns",
            FlagKind::SubscaleRise => "subscale_rise",
            FlagKind::MissedInARow => "missed_in_a_row",
            FlagKind::SafetySignal => "safety_signal",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FlagEvent {
    Raised(ArcFlagRaised),
    Cleared(ArcFlagCleared),
}

/// An early warning was raised. Evidence holds numbers and ids only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArcFlagRaised {
    pub flag_id: Uuid,
    pub kind: FlagKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_id: Option<Uuid>,
    pub raised_at: Timestamp,
    pub evidence: Evidence,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArcFlagCleared {
    pub flag_id: Uuid,
    pub kind: FlagKind,
    pub cleared_at: Timestamp,
    pub reason: ClearReason,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Evidence {
    CriticReturns {
        /// Practice minutes per day over the pre-session weeks.
        pre_minutes_per_day: f64,
        /// Practice minutes per day over the days of weeks +2 and +3 so far.
        post_minutes_per_day: f64,
        post_days: u32,
    },
    SubscaleRise {
        instrument_id: String,
        from_assessment: Uuid,
        to_assessment: Uuid,
        rises: Vec<Rise>,
    },
    MissedInARow {
        count: u32,
        /// The missed occurrences, oldest first.
        occurrences: Vec<Uuid>,
    },
    SafetySignal {
        assessment_id: Uuid,
        instrument_id: String,
        items: Vec<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rise {
    pub subscale: String,
    pub from: f64,
    pub to: f64,
    /// The reliable-change threshold the rise exceeded.
    pub threshold: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClearReason {
    /// The rule no longer holds: practice recovered, a later assessment is
    /// back within the threshold, an occurrence was done.
    Resolved,
    /// The arc ended or the enrollment was withdrawn.
    ArcEnded,
}

event_codec! {
    for FlagEvent {
        Raised => "ArcFlagRaised",
        Cleared => "ArcFlagCleared",
    }
}

// ---- Folding ----

/// One event of any stream the arc reads.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    Enrollment(&'a enrollment::Event),
    Practice(&'a practice::Event),
    Assessment(&'a assessment::Event),
    Flag(&'a FlagEvent),
}

/// Which slot each occurrence id of an enrollment was made from, by
/// protocol version: a memo for folding completions that arrive before
/// their due event (ids are hashes, so finding one otherwise means hashing
/// every slot). Pure; bounded by `MAX_ENROLLMENTS`.
/// (activity index, day, slot) by occurrence id.
type Slots = std::collections::HashMap<Uuid, (usize, i32, usize)>;

#[derive(Debug, Default)]
pub struct SlotCache {
    slots: std::collections::HashMap<(Uuid, String, u32), Slots>,
}

impl SlotCache {
    const MAX_ENROLLMENTS: usize = 20_000;

    fn get(&mut self, en: &ArcEnrollment, protocol: &crate::protocol::Protocol) -> &Slots {
        if self.slots.len() >= Self::MAX_ENROLLMENTS {
            self.slots.clear();
        }
        self.slots
            .entry((en.id, en.protocol_id.clone(), en.protocol_version))
            .or_insert_with(|| {
                let mut map = std::collections::HashMap::new();
                for (a, activity) in protocol.activities.iter().enumerate() {
                    for day in activity.days() {
                        for slot in 0..activity.times.len() {
                            map.insert(
                                occurrence_id(en.id, &activity.key, day, slot as u8),
                                (a, day, slot),
                            );
                        }
                    }
                }
                map
            })
    }
}

impl ArcState {
    /// Folds one event. `protocols` gives the planned minutes and kinds of
    /// occurrences; an unknown protocol version counts them as 0 minutes.
    pub fn apply(&mut self, input: Input<'_>, protocols: &impl Protocols, slots: &mut SlotCache) {
        match input {
            Input::Enrollment(e) => self.apply_enrollment(e, protocols, slots),
            Input::Practice(e) => self.apply_practice(e),
            Input::Assessment(e) => self.apply_assessment(e),
            Input::Flag(e) => self.apply_flag(e),
        }
    }

    fn apply_enrollment(
        &mut self,
        event: &enrollment::Event,
        protocols: &impl Protocols,
        slots: &mut SlotCache,
    ) {
        use enrollment::Event as E;
        if let E::Enrolled(e) = event {
            self.participant_ref
                .get_or_insert_with(|| e.participant_ref.clone());
            if self.enrollment_mut(e.enrollment_id).is_none() {
                self.enrollments.push(ArcEnrollment {
                    id: e.enrollment_id,
                    protocol_id: e.protocol_id.clone(),
                    protocol_version: e.protocol_version,
                    session: e.session_at,
                    zone: e.time_zone.clone(),
                    arc_days: (e.arc_first_day, e.arc_last_day),
                    enrolled_at: e.enrolled_at,
                    paused_at: None,
                    withdrawn_at: None,
                    occurrences: BTreeMap::new(),
                });
            }
            return;
        }
        let Some(en) = self.enrollment_mut(event.enrollment_id()) else {
            return;
        };
        match event {
            E::Enrolled(_) => {}
            E::SessionRescheduled(e) => en.session = e.session_at,
            E::TimeZoneChanged(e) => en.zone = e.time_zone.clone(),
            E::Migrated(e) => {
                en.protocol_version = e.to_version;
                en.arc_days = (e.arc_first_day, e.arc_last_day);
            }
            E::Paused(e) => en.paused_at = Some(e.paused_at),
            E::Resumed(_) => en.paused_at = None,
            E::Withdrawn(e) => en.withdrawn_at = Some(e.withdrawn_at),
            E::Due(e) => {
                let minutes = protocols
                    .get(&en.protocol_id, en.protocol_version)
                    .and_then(|p| p.activity(&e.activity_key))
                    .map_or(0, planned_minutes);
                en.occurrences.entry(e.occurrence_id).or_insert(Occ {
                    at: e.scheduled_at,
                    closes_at: e.window_closes_at,
                    date: e.local_date,
                    minutes,
                    state: OccState::Open,
                    missed_recorded: false,
                });
            }
            E::Missed(e) => {
                if let Some(o) = en.occurrences.get_mut(&e.occurrence_id) {
                    o.missed_recorded = true;
                    if o.state == OccState::Open {
                        o.state = OccState::Missed;
                    }
                }
            }
            E::Completed(e) => {
                if !en.occurrences.contains_key(&e.occurrence_id)
                    && let Some(o) =
                        find_slot(en, e.occurrence_id, e.completed_at, protocols, slots)
                {
                    // Completed before its due event was recorded (a
                    // practice linked in the round its window opened): no
                    // due event will follow, so it is counted from here.
                    en.occurrences.insert(e.occurrence_id, o);
                }
                if let Some(o) = en.occurrences.get_mut(&e.occurrence_id) {
                    o.state = if e.completed_at <= o.closes_at {
                        OccState::Done
                    } else {
                        OccState::Late
                    };
                }
            }
            E::CompletionWithdrawn(e) => {
                if let Some(o) = en.occurrences.get_mut(&e.occurrence_id) {
                    o.state = if o.missed_recorded {
                        OccState::Missed
                    } else {
                        OccState::Open
                    };
                }
            }
        }
    }

    fn apply_practice(&mut self, event: &practice::Event) {
        use practice::Event as E;
        let practised = |c: &practice::Content| Practised {
            started_at: c.started_at,
            local_date: c.local_date(),
            minutes: c.minutes,
            live: true,
        };
        match event {
            E::Logged(e) => {
                self.practice
                    .entry(e.entry_id)
                    .or_insert_with(|| practised(&e.content));
            }
            E::Corrected(e) => {
                if let Some(p) = self.practice.get_mut(&e.entry_id) {
                    *p = Practised {
                        live: p.live,
                        ..practised(&e.content)
                    };
                }
            }
            E::Retracted(e) => {
                if let Some(p) = self.practice.get_mut(&e.entry_id) {
                    p.live = false;
                }
            }
            E::NotesErased(_) => {}
        }
    }

    fn apply_assessment(&mut self, event: &assessment::Event) {
        use assessment::Event as E;
        match event {
            E::Submitted(e) => {
                if !self
                    .assessments
                    .iter()
                    .any(|a| a.assessment_id == e.assessment_id)
                {
                    self.assessments.push(Administered {
                        assessment_id: e.assessment_id,
                        instrument_id: e.instrument_id.clone(),
                        administered_at: e.administered_at,
                        total: None,
                        subscales: BTreeMap::new(),
                        safety_items: vec![],
                    });
                }
            }
            E::Scored(e) => {
                if let Some(a) = self
                    .assessments
                    .iter_mut()
                    .find(|a| a.assessment_id == e.assessment_id)
                {
                    a.total = Some(e.scores.total.value);
                    a.subscales = e
                        .scores
                        .subscales
                        .iter()
                        .map(|s| (s.key.clone(), s.score.value))
                        .collect();
                }
            }
            E::SafetySignal(e) => {
                if let Some(a) = self
                    .assessments
                    .iter_mut()
                    .find(|a| a.assessment_id == e.assessment_id)
                    && !a.safety_items.contains(&e.item)
                {
                    a.safety_items.push(e.item);
                }
            }
            E::BaselineDesignated(e) => {
                self.baselines
                    .insert(e.instrument_id.clone(), e.assessment_id);
            }
        }
    }

    fn apply_flag(&mut self, event: &FlagEvent) {
        match event {
            FlagEvent::Raised(e) => {
                self.flags.insert(e.kind, e.clone());
            }
            FlagEvent::Cleared(e) => {
                if self
                    .flags
                    .get(&e.kind)
                    .is_some_and(|f| f.flag_id == e.flag_id)
                {
                    self.flags.remove(&e.kind);
                }
            }
        }
    }
}

fn planned_minutes(activity: &crate::protocol::Activity) -> u32 {
    match activity.kind {
        ActivityKind::Practice { .. } => activity.target_minutes,
        _ => 0,
    }
}

/// Finds the slot an occurrence id was made from, by the current revision's
/// protocol: its day (hence week) and activity do not depend on revisions.
fn find_slot(
    en: &ArcEnrollment,
    occurrence: Uuid,
    completed_at: Timestamp,
    protocols: &impl Protocols,
    slots: &mut SlotCache,
) -> Option<Occ> {
    let protocol = protocols.get(&en.protocol_id, en.protocol_version)?;
    let &(a, day, slot) = slots.get(en, protocol).get(&occurrence)?;
    let activity = protocol.activities.get(a)?;
    let date = en.session_date().checked_add(day.days()).ok()?;
    let at = crate::time::resolve(&en.zone, date, *activity.times.get(slot)?);
    let closes_at = crate::time::shift(
        at,
        jiff::SignedDuration::from_mins(i64::from(activity.window_minutes)),
    );
    Some(Occ {
        at: at.min(completed_at),
        closes_at,
        date,
        minutes: planned_minutes(activity),
        state: OccState::Open,
        missed_recorded: false,
    })
}

// ---- Reading ----

/// Done over due for a span of the arc.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Adherence {
    /// Occurrences whose window opened.
    pub due: u32,
    /// Completed in their window.
    pub done: u32,
    /// Completed after their window closed.
    pub late: u32,
    /// Closed without completion (after the grace).
    pub missed: u32,
    /// Planned minutes of the practices due.
    pub minutes_planned: u64,
    /// Minutes practised on the local days of the span (every live entry,
    /// planned or not).
    pub minutes_done: u64,
}

impl Adherence {
    /// Completed (in the window or late) over due; `None` when nothing was
    /// due.
    pub fn rate(&self) -> Option<f64> {
        (self.due > 0).then(|| f64::from(self.done + self.late) / f64::from(self.due))
    }

    pub fn minutes_rate(&self) -> Option<f64> {
        (self.minutes_planned > 0).then(|| self.minutes_done as f64 / self.minutes_planned as f64)
    }

    fn add(&mut self, other: &Adherence) {
        self.due += other.due;
        self.done += other.done;
        self.late += other.late;
        self.missed += other.missed;
        self.minutes_planned += other.minutes_planned;
        self.minutes_done += other.minutes_done;
    }
}

/// The arc as read at an instant.
#[derive(Debug, Clone, PartialEq)]
pub struct ArcView {
    pub participant_ref: Option<String>,
    pub enrollment: Option<EnrollmentView>,
    pub phase: Phase,
    /// By arc week, ascending (0: the session day).
    pub weeks: Vec<(i32, Adherence)>,
    pub before_session: Adherence,
    pub session_day: Adherence,
    pub after_session: Adherence,
    pub total: Adherence,
    pub streak_days: u32,
    pub last_practice_at: Option<Timestamp>,
    pub assessments: Vec<AssessmentView>,
    pub flags: Vec<ArcFlagRaised>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentView {
    pub enrollment_id: Uuid,
    pub protocol_id: String,
    pub protocol_version: u32,
    pub session: DateTime,
    pub zone: Zone,
    pub arc_days: (i32, i32),
    pub days_from_session: i32,
    /// The current arc week; `None` outside the arc.
    pub arc_week: Option<i32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AssessmentView {
    pub assessment_id: Uuid,
    pub instrument_id: String,
    pub administered_at: Timestamp,
    pub days_from_session: Option<i32>,
    pub total: Option<f64>,
    pub subscales: BTreeMap<String, f64>,
    pub is_baseline: bool,
    /// From the instrument's baseline; `None` for the baseline itself, or
    /// without one.
    pub change: Option<ScoreChange>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScoreChange {
    pub baseline_assessment: Uuid,
    pub total: Delta,
    pub subscales: BTreeMap<String, Delta>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delta {
    pub absolute: f64,
    /// Percent of the baseline's size; `None` when the baseline is 0.
    pub percent: Option<f64>,
}

impl Delta {
    fn of(from: f64, to: f64) -> Self {
        let absolute = to - from;
        Self {
            absolute,
            percent: (from != 0.0).then(|| 100.0 * absolute / from.abs()),
        }
    }
}

impl ArcState {
    /// Adherence by arc week of the current enrollment.
    pub fn weeks(&self) -> BTreeMap<i32, Adherence> {
        let mut weeks: BTreeMap<i32, Adherence> = BTreeMap::new();
        let Some(en) = self.current() else {
            return weeks;
        };
        let (first, last) = (arc_week(en.arc_days.0), arc_week(en.arc_days.1));
        for week in first..=last {
            weeks.insert(week, Adherence::default());
        }
        for o in en.occurrences.values() {
            // An occurrence due before the session moved may fall outside
            // the arc counted from the new one: it gets its own week.
            let w = weeks.entry(arc_week(en.day_of_date(o.date))).or_default();
            w.due += 1;
            w.minutes_planned += u64::from(o.minutes);
            match o.state {
                OccState::Done => w.done += 1,
                OccState::Late => w.late += 1,
                OccState::Missed => w.missed += 1,
                OccState::Open => {}
            }
        }
        for p in self.practice.values().filter(|p| p.live) {
            let week = arc_week(en.day_of_date(p.local_date));
            if let Some(w) = weeks.get_mut(&week) {
                w.minutes_done += u64::from(p.minutes);
            }
        }
        weeks
    }

    pub fn view(&self, now: Timestamp) -> ArcView {
        let en = self.current();
        let weeks = self.weeks();
        let mut before = Adherence::default();
        let mut day0 = Adherence::default();
        let mut after = Adherence::default();
        for (week, a) in &weeks {
            match week.signum() {
                -1 => before.add(a),
                0 => day0.add(a),
                _ => after.add(a),
            }
        }
        let mut total = before.clone();
        total.add(&day0);
        total.add(&after);
        let live = || self.practice.values().filter(|p| p.live);
        let days: BTreeSet<Date> = live().map(|p| p.local_date).collect();
        let today = match en {
            Some(en) => zoned(&en.zone, now).date(),
            // Without an enrollment, the zone of the latest entry's offset
            // is unknown here: the UTC date.
            None => now.to_zoned_datetime(jiff::tz::TimeZone::UTC).date(),
        };
        let baselines: BTreeMap<&str, &Administered> = self
            .assessments
            .iter()
            .map(|a| a.instrument_id.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|i| self.baseline(i).map(|b| (i, b)))
            .collect();
        let mut assessments: Vec<AssessmentView> = self
            .assessments
            .iter()
            .map(|a| {
                let base = baselines.get(a.instrument_id.as_str()).copied();
                let is_baseline = base.is_some_and(|b| b.assessment_id == a.assessment_id);
                AssessmentView {
                    assessment_id: a.assessment_id,
                    instrument_id: a.instrument_id.clone(),
                    administered_at: a.administered_at,
                    days_from_session: en.map(|en| en.day_of(a.administered_at)),
                    total: a.total,
                    subscales: a.subscales.clone(),
                    is_baseline,
                    // Change is from the baseline forwards: one before
                    // it (an earlier arc's) has none.
                    change: base
                        .filter(|b| !is_baseline && a.administered_at >= b.administered_at)
                        .and_then(|b| score_change(b, a)),
                }
            })
            .collect();
        assessments.sort_by_key(|a| a.administered_at);
        ArcView {
            participant_ref: self.participant_ref.clone(),
            enrollment: en.map(|en| {
                let days = en.day_of(now);
                EnrollmentView {
                    enrollment_id: en.id,
                    protocol_id: en.protocol_id.clone(),
                    protocol_version: en.protocol_version,
                    session: en.session,
                    zone: en.zone.clone(),
                    arc_days: en.arc_days,
                    days_from_session: days,
                    arc_week: (en.arc_days.0..=en.arc_days.1)
                        .contains(&days)
                        .then(|| arc_week(days)),
                }
            }),
            phase: en.map_or(Phase::NotEnrolled, |en| en.phase(now)),
            weeks: weeks.into_iter().collect(),
            before_session: before,
            session_day: day0,
            after_session: after,
            total,
            streak_days: practice::streak(&days, today),
            last_practice_at: live().map(|p| p.started_at).max(),
            assessments,
            flags: self.flags.values().cloned().collect(),
        }
    }

    /// The percent change of the SCS (or SCS-SF) total from its baseline to
    /// the latest administration after it, for the cohort view.
    pub fn scs_change_percent(&self) -> Option<f64> {
        SCS_INSTRUMENTS
            .iter()
            .filter_map(|i| {
                let base = self.baseline(i)?;
                let latest = *self.of(i).last()?;
                if latest.assessment_id == base.assessment_id
                    || latest.administered_at < base.administered_at
                {
                    return None;
                }
                let change = Delta::of(base.total?, latest.total?);
                Some((latest.administered_at, change.percent?))
            })
            .max_by_key(|(at, _)| *at)
            .map(|(_, p)| p)
    }
}

fn score_change(base: &Administered, a: &Administered) -> Option<ScoreChange> {
    Some(ScoreChange {
        baseline_assessment: base.assessment_id,
        total: Delta::of(base.total?, a.total?),
        subscales: a
            .subscales
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), Delta::of(*base.subscales.get(k)?, *v))))
            .collect(),
    })
}

// ---- Early warnings ----

/// The warning rules' thresholds. The defaults and why:
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// *Critic returns* is raised when practice minutes per day over weeks
    /// +2 and +3 fall below this share of the participant's own rate over
    /// the weeks before the session. 0.5: half their own habit is "well
    /// below"; a day or two of lost practice in a week is not.
    pub critic_ratio: f64,
    /// And cleared when the rate recovers to this share. Above the raising
    /// share (0.75), so that a rate hovering at the line does not flap.
    pub critic_clear_ratio: f64,
    /// Whole days of weeks +2/+3 needed before the rate is judged: 4, so
    /// that one quiet weekend does not raise it.
    pub critic_min_days: u32,
    /// *Missed in a row*: this many consecutive missed occurrences. 3:
    /// with daily practice, three days running without practice is the
    /// drop practitioners describe; one or two is ordinary life.
    pub missed_in_a_row: u32,
    /// *Subscale rise*: the reference SD of a subscale mean used for the
    /// reliable-change threshold (1.96 x SD x sqrt(2) x sqrt(1 - r)). No SD
    /// is published in our sources: 0.8 on the 1-to-5 scale is an assumed
    /// spread (the threshold it gives is in every flag's evidence); set it
    /// from your own cohort's baselines.
    pub rise_sd: f64,
    /// Reliabilities by instrument: SCS .92 (Neff 2003), SCS-SF .86
    /// (Raes et al. 2011; the lower bound reported).
    pub reliability: BTreeMap<String, f64>,
    /// For other instruments with these subscales.
    pub default_reliability: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            critic_ratio: 0.5,
            critic_clear_ratio: 0.75,
            critic_min_days: 4,
            missed_in_a_row: 3,
            rise_sd: 0.8,
            reliability: [("scs".to_owned(), 0.92), ("scs-sf".to_owned(), 0.86)]
                .into_iter()
                .collect(),
            default_reliability: 0.86,
        }
    }
}

impl Rules {
    /// The rise in a subscale mean that counts as reliable change.
    pub fn rise_threshold(&self, instrument_id: &str) -> f64 {
        let r = self
            .reliability
            .get(instrument_id)
            .copied()
            .unwrap_or(self.default_reliability);
        assessment::RELIABLE * self.rise_sd * 2f64.sqrt() * (1.0 - r).max(0.0).sqrt()
    }
}

/// The flags to raise and clear so that the open flags match the rules at
/// `now`. Each new flag gets `new_id()`.
pub fn decide_flags(
    state: &ArcState,
    rules: &Rules,
    now: Timestamp,
    mut new_id: impl FnMut() -> Uuid,
) -> Vec<FlagEvent> {
    let mut out = Vec::new();
    let ended = state
        .current()
        .is_none_or(|en| matches!(en.phase(now), Phase::Withdrawn | Phase::Complete));
    for kind in FlagKind::ALL {
        let open = state.flags.get(&kind);
        // The arc's own rules end with the arc; a rise in a subscale and a
        // safety signal are about the person and stand on their own.
        let arc_rule = matches!(kind, FlagKind::CriticReturns | FlagKind::MissedInARow);
        let wanted = match kind {
            _ if arc_rule && ended => None,
            FlagKind::CriticReturns => critic_returns(state, rules, now, open),
            FlagKind::SubscaleRise => subscale_rise(state, rules, open),
            FlagKind::MissedInARow => missed_in_a_row(state, rules),
            FlagKind::SafetySignal => safety_signal(state),
        };
        match (open, wanted) {
            (None, Some((enrollment_id, evidence))) => out.push(FlagEvent::Raised(ArcFlagRaised {
                flag_id: new_id(),
                kind,
                enrollment_id,
                raised_at: now,
                evidence,
            })),
            (Some(flag), None) => out.push(FlagEvent::Cleared(ArcFlagCleared {
                flag_id: flag.flag_id,
                kind,
                cleared_at: now,
                reason: if arc_rule && ended {
                    ClearReason::ArcEnded
                } else {
                    ClearReason::Resolved
                },
            })),
            _ => {}
        }
    }
    out
}

type Wanted = Option<(Option<Uuid>, Evidence)>;

fn critic_returns(
    state: &ArcState,
    rules: &Rules,
    now: Timestamp,
    open: Option<&ArcFlagRaised>,
) -> Wanted {
    // An ended arc never reaches here (`decide_flags` clears its flags).
    let en = state.current()?;
    if en.phase(now) == Phase::Paused {
        // A pause holds the flag as it is.
        return open.map(|f| (f.enrollment_id, f.evidence.clone()));
    }
    let today = en.day_of(now);
    // Judged on the whole days of weeks +2 and +3 (days 8 to 21) before
    // today, from day 9 to day 22. After that the window is closed: an open
    // flag stays (until the arc ends), and none is raised.
    if today > 22 {
        return open.map(|f| (f.enrollment_id, f.evidence.clone()));
    }
    let post_last = (today - 1).min(21);
    if post_last < 8 {
        return None;
    }
    let post_days = (post_last - 8 + 1) as u32;
    let pre_first = en.arc_days.0.min(-1);
    let pre_days = (-pre_first) as u32;
    let (mut pre, mut post) = (0u64, 0u64);
    for p in state.practice.values().filter(|p| p.live) {
        let day = en.day_of_date(p.local_date);
        if (pre_first..=-1).contains(&day) {
            pre += u64::from(p.minutes);
        } else if (8..=post_last).contains(&day) {
            post += u64::from(p.minutes);
        }
    }
    let pre_rate = pre as f64 / f64::from(pre_days.max(1));
    let post_rate = post as f64 / f64::from(post_days);
    let evidence = Evidence::CriticReturns {
        pre_minutes_per_day: pre_rate,
        post_minutes_per_day: post_rate,
        post_days,
    };
    let ratio = if open.is_some() {
        rules.critic_clear_ratio
    } else {
        rules.critic_ratio
    };
    if pre_rate > 0.0 && post_days >= rules.critic_min_days.min(14) && post_rate < ratio * pre_rate
    {
        Some((Some(en.id), evidence))
    } else if open.is_some() && post_days < rules.critic_min_days.min(14) {
        open.map(|f| (f.enrollment_id, f.evidence.clone()))
    } else {
        None
    }
}

fn subscale_rise(state: &ArcState, rules: &Rules, open: Option<&ArcFlagRaised>) -> Wanted {
    if let Some(flag) = open
        && let Evidence::SubscaleRise {
            instrument_id,
            to_assessment,
            rises,
            ..
        } = &flag.evidence
    {
        // Open until a later administration is back within the threshold
        // of where it rose from, on every subscale that rose.
        let list = state.of(instrument_id);
        let raised_at = list.iter().position(|a| a.assessment_id == *to_assessment);
        let latest = list.last()?;
        if raised_at.is_none_or(|i| i + 1 >= list.len()) {
            return Some((flag.enrollment_id, flag.evidence.clone()));
        }
        let still = rises.iter().any(|r| {
            latest
                .subscales
                .get(&r.subscale)
                .is_some_and(|v| v - r.from > r.threshold)
        });
        return still.then(|| (flag.enrollment_id, flag.evidence.clone()));
    }
    // Raised on the newest pair of administrations of any instrument with
    // the negative subscales.
    let instruments: BTreeSet<&str> = state
        .assessments
        .iter()
        .filter(|a| {
            NEGATIVE_SUBSCALES
                .iter()
                .any(|s| a.subscales.contains_key(*s))
        })
        .map(|a| a.instrument_id.as_str())
        .collect();
    let mut best: Option<(Timestamp, Evidence)> = None;
    for instrument in instruments {
        let list = state.of(instrument);
        let [.., from, to] = list.as_slice() else {
            continue;
        };
        let threshold = rules.rise_threshold(instrument);
        let rises: Vec<Rise> = NEGATIVE_SUBSCALES
            .iter()
            .filter_map(|s| {
                let (a, b) = (*from.subscales.get(*s)?, *to.subscales.get(*s)?);
                (b - a > threshold).then(|| Rise {
                    subscale: (*s).to_owned(),
                    from: a,
                    to: b,
                    threshold,
                })
            })
            .collect();
        if !rises.is_empty() && best.as_ref().is_none_or(|(at, _)| to.administered_at > *at) {
            best = Some((
                to.administered_at,
                Evidence::SubscaleRise {
                    instrument_id: instrument.to_owned(),
                    from_assessment: from.assessment_id,
                    to_assessment: to.assessment_id,
                    rises,
                },
            ));
        }
    }
    best.map(|(_, e)| (state.current().map(|en| en.id), e))
}

fn missed_in_a_row(state: &ArcState, rules: &Rules) -> Wanted {
    let en = state.current()?;
    let mut settled: Vec<(&Uuid, &Occ)> = en
        .occurrences
        .iter()
        .filter(|(_, o)| o.state != OccState::Open)
        .collect();
    settled.sort_by_key(|(id, o)| (o.at, **id));
    let run: Vec<Uuid> = settled
        .iter()
        .rev()
        .take_while(|(_, o)| o.state == OccState::Missed)
        .map(|(id, _)| **id)
        .collect();
    let count = run.len() as u32;
    (count >= rules.missed_in_a_row.max(1)).then(|| {
        (
            Some(en.id),
            Evidence::MissedInARow {
                count,
                occurrences: run.into_iter().rev().collect(),
            },
        )
    })
}

fn safety_signal(state: &ArcState) -> Wanted {
    // The newest administration with a signal, unless a later one of the
    // same instrument came back without one.
    let flagged = state
        .assessments
        .iter()
        .filter(|a| !a.safety_items.is_empty())
        .filter(|a| {
            !state.assessments.iter().any(|b| {
                b.instrument_id == a.instrument_id
                    && b.administered_at > a.administered_at
                    && b.total.is_some()
                    && b.safety_items.is_empty()
            })
        })
        .max_by_key(|a| a.administered_at)?;
    Some((
        state.current().map(|en| en.id),
        Evidence::SafetySignal {
            assessment_id: flagged.assessment_id,
            instrument_id: flagged.instrument_id.clone(),
            items: flagged.safety_items.clone(),
        },
    ))
}

// ---- Cohort ----

/// What the cohort view needs of one participant.
#[derive(Debug, Clone, PartialEq)]
pub struct CohortMember {
    pub phase: Phase,
    /// (arc week, due, completed).
    pub weeks: Vec<(i32, u32, u32)>,
    pub scs_change_percent: Option<f64>,
    pub flags: Vec<FlagKind>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cohort {
    pub enrolled: u32,
    pub by_phase: BTreeMap<Phase, u32>,
    pub active: u32,
    pub weeks: Vec<WeekSpread>,
    /// Mean percent change of the SCS total from baseline.
    pub scs_change: Option<MeanCi>,
    pub open_flags: BTreeMap<FlagKind, u32>,
}

/// Adherence across participants in one arc week.
#[derive(Debug, Clone, PartialEq)]
pub struct WeekSpread {
    pub week: i32,
    /// Participants with something due that week.
    pub participants: u32,
    pub q1: f64,
    pub median: f64,
    pub q3: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanCi {
    pub n: u32,
    pub mean: f64,
    /// The 95% confidence interval (Student's t); equal to the mean when
    /// n = 1.
    pub low: f64,
    pub high: f64,
}

pub fn cohort(members: &[CohortMember]) -> Cohort {
    let mut by_phase = BTreeMap::new();
    let mut open_flags = BTreeMap::new();
    let mut weeks: BTreeMap<i32, Vec<f64>> = BTreeMap::new();
    let mut changes = Vec::new();
    for m in members {
        *by_phase.entry(m.phase).or_insert(0) += 1;
        for f in &m.flags {
            *open_flags.entry(*f).or_insert(0) += 1;
        }
        for &(week, due, done) in &m.weeks {
            if due > 0 {
                weeks
                    .entry(week)
                    .or_default()
                    .push(f64::from(done) / f64::from(due));
            }
        }
        changes.extend(m.scs_change_percent);
    }
    Cohort {
        enrolled: members.len() as u32,
        active: by_phase
            .iter()
            .filter(|(p, _)| p.is_active())
            .map(|(_, n)| n)
            .sum(),
        by_phase,
        weeks: weeks
            .into_iter()
            .map(|(week, mut rates)| {
                rates.sort_by(f64::total_cmp);
                WeekSpread {
                    week,
                    participants: rates.len() as u32,
                    q1: quantile(&rates, 0.25),
                    median: quantile(&rates, 0.5),
                    q3: quantile(&rates, 0.75),
                }
            })
            .collect(),
        scs_change: mean_ci(&changes),
        open_flags,
    }
}

/// The q-quantile of sorted values by linear interpolation between order
/// statistics (Hyndman & Fan type 7, PostgreSQL's `percentile_cont`).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let h = (n - 1) as f64 * q;
            let (lo, frac) = (h.floor() as usize, h - h.floor());
            sorted[lo] + frac * (sorted[(lo + 1).min(n - 1)] - sorted[lo])
        }
    }
}

/// Mean with a 95% confidence interval from Student's t.
pub fn mean_ci(values: &[f64]) -> Option<MeanCi> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let half = match assessment::sample_sd(values) {
        Some(sd) => t_975(n as u32 - 1) * sd / (n as f64).sqrt(),
        None => 0.0,
    };
    Some(MeanCi {
        n: n as u32,
        mean,
        low: mean - half,
        high: mean + half,
    })
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom: the
/// standard table to 30, then the Cornish-Fisher expansion about the normal
/// quantile (within 0.001 of the table beyond 30).
pub fn t_975(df: u32) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df as usize - 1],
        _ => {
            let z: f64 = 1.959_964;
            let v = f64::from(df);
            z + (z.powi(3) + z) / (4.0 * v)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * v * v)
        }
    }
}

#[cfg(test)]
mod tests;
