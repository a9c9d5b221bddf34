//! The early-warning rules, and the decision of which flags to raise or clear.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use uuid::Uuid;

use super::flags::{
    ArcFlagCleared, ArcFlagRaised, ClearReason, Evidence, FlagEvent, FlagKind, Rise,
};
use super::state::{ArcState, Occ, OccState, Phase};
use crate::assessment;

/// The subscales whose rise is a warning: the negative poles of Neff's three
/// components.
pub const NEGATIVE_SUBSCALES: &[&str] = &["self-judgment", "isolation", "over-identification"];

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
    for (date, d) in &state.practice_days {
        let day = en.day_of_date(*date);
        if (pre_first..=-1).contains(&day) {
            pre += d.minutes;
        } else if (8..=post_last).contains(&day) {
            post += d.minutes;
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

/// What `decide_flags` needs: the rules, the instant, and an id for each
/// flag it may raise (at most one per kind).
#[derive(Debug, Clone)]
pub struct CheckFlags {
    pub rules: Rules,
    pub now: Timestamp,
    pub ids: [Uuid; FlagKind::ALL.len()],
}

/// The arc's early warnings as a decider: the state is the whole arc, the
/// events it decides are flags raised and cleared.
#[derive(Debug)]
pub enum Flags {}

impl crate::Decider for Flags {
    type State = ArcState;
    type Command = CheckFlags;
    type Event = FlagEvent;

    fn decide(state: &ArcState, c: CheckFlags) -> Result<Vec<FlagEvent>, crate::Error> {
        let mut ids = c.ids.into_iter();
        // One id per kind suffices: each kind is raised at most once.
        Ok(decide_flags(state, &c.rules, c.now, || {
            ids.next().unwrap_or_default()
        }))
    }

    fn evolve(mut state: ArcState, event: &FlagEvent) -> ArcState {
        state.apply_flag(event);
        state
    }
}
