//! Folding the enrollment, practice, assessment and flag events into the arc's state.

use std::collections::BTreeMap;

use jiff::{Timestamp, ToSpan};
use uuid::Uuid;

use super::flags::FlagEvent;
use super::state::{Administered, ArcEnrollment, ArcState, Occ, OccState, PracticeDay, Practised};
use crate::protocol::ActivityKind;
use crate::protocol::Protocols;
use crate::schedule::occurrence_id;
use crate::{assessment, enrollment, practice};

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
        if let E::Erased(e) = event {
            self.erased_at.get_or_insert(e.erased_at);
            return;
        }
        if let E::Enrolled(e) = event {
            if self.enrollment_mut(e.enrollment_id).is_none() {
                self.enrollments.push(ArcEnrollment {
                    id: e.enrollment_id,
                    protocol_id: e.protocol_id.clone(),
                    protocol_version: e.protocol_version,
                    session: e.session_at,
                    zone: e.time_zone.clone(),
                    session_zone: None,
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
            E::Enrolled(_) | E::ConsentRecorded(_) | E::ConsentWithdrawn(_) | E::Erased(_) => {}
            E::SessionRescheduled(e) => en.session = e.session_at,
            E::TimeZoneChanged(e) => {
                // v1 moved the session with the participant; v2 leaves it.
                let session_zone = e.session_time_zone.as_ref().unwrap_or(&e.time_zone);
                en.session_zone = (*session_zone != e.time_zone).then(|| session_zone.clone());
                en.zone = e.time_zone.clone();
            }
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
                // An entry is logged once: its event's id derives from it,
                // and the store keeps event ids unique. So one not in the
                // working set is new.
                if !self.practice.contains_key(&e.entry_id) {
                    let p = practised(&e.content);
                    self.add_to_day(&p);
                    self.practice.insert(e.entry_id, p);
                }
            }
            E::Corrected(e) => {
                if let Some(p) = self.practice.get_mut(&e.entry_id) {
                    let before = p.clone();
                    *p = Practised {
                        live: p.live,
                        ..practised(&e.content)
                    };
                    let after = p.clone();
                    if after.live {
                        // The old date is whole in the working set; the
                        // new one gains an entry.
                        self.recount_day(before.local_date);
                        if after.local_date != before.local_date {
                            self.add_to_day(&after);
                        }
                    }
                }
            }
            E::Retracted(e) => {
                if let Some(p) = self.practice.get_mut(&e.entry_id)
                    && p.live
                {
                    p.live = false;
                    let date = p.local_date;
                    self.recount_day(date);
                }
            }
            E::NotesErased(_) => {}
        }
    }

    fn add_to_day(&mut self, p: &Practised) {
        self.practice_days
            .entry(p.local_date)
            .or_insert(PracticeDay::EMPTY)
            .count(p);
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

    pub(super) fn apply_flag(&mut self, event: &FlagEvent) {
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
