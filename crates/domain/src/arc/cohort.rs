//! The cohort view: participants by phase, adherence spread by week, SCS change, open flags.

use std::collections::BTreeMap;

use super::flags::FlagKind;
use super::state::Phase;
use super::stats::{MeanCi, mean_ci, quantile};

/// The published benchmark a cohort's SCS change is set beside: the 8-week
/// MSC program raises SCS scores by about 43% at post-program (Neff &
/// Germer 2013; see `shared/domain.md`).
pub const MSC_BENCHMARK_PERCENT: f64 = 43.0;

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
