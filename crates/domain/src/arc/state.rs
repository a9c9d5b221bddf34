//! The arc's state, folded from events: enrollments, occurrences, practice, scores, phase.

use std::collections::{BTreeMap, BTreeSet};

use jiff::civil::{Date, DateTime, Time};
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::flags::{ArcFlagRaised, FlagKind};
use crate::time::{Zone, resolve_date_time, zoned};

/// Everything the arc needs, folded from events. Stored as the projection's
/// row, so it is serialisable and holds no free text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArcState {
    /// When the participant was erased: what is left of them is numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<Timestamp>,
    pub enrollments: Vec<ArcEnrollment>,
    /// Practice entries by entry id, as they stand after corrections: a
    /// working set. Folded from the start it holds every entry; a kept
    /// state holds only what its holder loaded, which must include the
    /// entries that the events about to be folded correct or retract, and
    /// every other entry on their local dates. Never stored with the state
    /// (older states held them all, and are read back into it).
    #[serde(default, skip_serializing)]
    pub practice: BTreeMap<Uuid, Practised>,
    /// Live practice by local date: what every view and rule reads, so
    /// that the stored state grows with the days practised, not the
    /// entries.
    #[serde(default, rename = "days", skip_serializing_if = "BTreeMap::is_empty")]
    pub practice_days: BTreeMap<Date, PracticeDay>,
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
    /// The session's local date-time, in `session_zone`.
    pub session: DateTime,
    /// The participant's zone.
    pub zone: Zone,
    /// Where the session takes place, when a move of the participant left
    /// it behind; `None`: `zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_zone: Option<Zone>,
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

/// The live entries of one local date, summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PracticeDay {
    #[serde(rename = "n")]
    pub entries: u32,
    #[serde(rename = "m")]
    pub minutes: u64,
    /// The latest start among them.
    #[serde(rename = "t")]
    pub last_started_at: Timestamp,
}

impl PracticeDay {
    pub(super) const EMPTY: PracticeDay = PracticeDay {
        entries: 0,
        minutes: 0,
        last_started_at: Timestamp::MIN,
    };

    /// Counts one more live entry in.
    pub(super) fn count(&mut self, p: &Practised) {
        self.entries += 1;
        self.minutes += u64::from(p.minutes);
        self.last_started_at = self.last_started_at.max(p.started_at);
    }
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
    /// Makes a state read back from storage whole: one stored by an older
    /// build holds its entries and no day totals, which are summed from
    /// them. Returns whether it was such a state (its entries are then
    /// all in the working set, to be stored apart).
    pub fn settle_stored(&mut self) -> bool {
        if !self.practice_days.is_empty() || self.practice.is_empty() {
            return false;
        }
        let dates: BTreeSet<Date> = self.practice.values().map(|p| p.local_date).collect();
        for date in dates {
            self.recount_day(date);
        }
        true
    }

    /// Sums one date's day from the working set (which holds every entry
    /// on it).
    pub(super) fn recount_day(&mut self, date: Date) {
        let mut day: Option<PracticeDay> = None;
        for p in self
            .practice
            .values()
            .filter(|p| p.live && p.local_date == date)
        {
            PracticeDay::count(day.get_or_insert(PracticeDay::EMPTY), p);
        }
        match day {
            Some(d) => self.practice_days.insert(date, d),
            None => self.practice_days.remove(&date),
        };
    }

    /// The enrollment the arc follows: the latest one.
    pub fn current(&self) -> Option<&ArcEnrollment> {
        self.enrollments
            .iter()
            .max_by_key(|e| (e.enrolled_at, e.id))
    }

    pub(super) fn enrollment_mut(&mut self, id: Uuid) -> Option<&mut ArcEnrollment> {
        self.enrollments.iter_mut().find(|e| e.id == id)
    }

    /// Administrations of one instrument, oldest first (submission order
    /// breaks ties).
    pub(super) fn of(&self, instrument_id: &str) -> Vec<&Administered> {
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
    pub(super) fn baseline(&self, instrument_id: &str) -> Option<&Administered> {
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

    pub(super) fn day_of_date(&self, date: Date) -> i32 {
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
