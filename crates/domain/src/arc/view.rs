//! Reading the arc at an instant: adherence by week, the phase, the streak and score changes.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::flags::ArcFlagRaised;
use super::state::{Administered, ArcState, OccState, Phase};
use crate::practice;
use crate::protocol::arc_week;
use crate::time::{Zone, zoned};

/// The instruments whose total change the cohort view reports.
pub const SCS_INSTRUMENTS: &[&str] = &["scs", "scs-sf"];

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
    pub erased_at: Option<Timestamp>,
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
    /// The session's local date-time, in `session_zone`.
    pub session: DateTime,
    pub session_zone: Zone,
    /// The participant's zone.
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
        for (date, day) in &self.practice_days {
            let week = arc_week(en.day_of_date(*date));
            if let Some(w) = weeks.get_mut(&week) {
                w.minutes_done += day.minutes;
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
        let days: BTreeSet<Date> = self.practice_days.keys().copied().collect();
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
            erased_at: self.erased_at,
            enrollment: en.map(|en| {
                let days = en.day_of(now);
                EnrollmentView {
                    enrollment_id: en.id,
                    protocol_id: en.protocol_id.clone(),
                    protocol_version: en.protocol_version,
                    session: en.session,
                    session_zone: en.session_zone.clone().unwrap_or_else(|| en.zone.clone()),
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
            last_practice_at: self.practice_days.values().map(|d| d.last_started_at).max(),
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
