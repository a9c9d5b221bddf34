//! Expanding an enrollment into dated occurrences, and what state each is in.
//!
//! An enrollment's timing has a history of *revisions*: the one it was
//! enrolled with, then one per session reschedule, time-zone change or
//! protocol migration, each in effect from the instant it was made. A slot
//! (an activity, a day relative to the session, the n-th time of that day)
//! is placed by the revisions in order:
//! - a slot whose time came before the next revision took effect stays where
//!   it was: it was due, and its history (done, late, missed) is kept; so
//!   does one already recorded due or done there;
//! - otherwise the next revision places it anew: the future moves;
//! - a slot that a revision places with its window already closed when the
//!   revision takes effect is dropped (moving the session earlier skips the
//!   slots it jumps over); one whose window is still open is due at once;
//! - a slot the next revision's protocol does not have is dropped, unless it
//!   had already come due.
//!
//! A slot keeps its occurrence id across every revision.

use std::collections::{BTreeMap, HashMap};

use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp, ToSpan};
use uuid::Uuid;

use crate::enrollment::{Enrollment, Revision};
use crate::protocol::{ActivityKind, Protocol, Protocols, arc_week};
use crate::time::{LocalTime, Zone, resolve};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Its window has not opened yet.
    Upcoming,
    /// Its window is open and it is not done.
    Due,
    /// Completed within its window.
    Done,
    /// Completed after its window closed.
    Late,
    /// Its window closed without completion.
    Missed,
    /// It will not be asked for: the enrollment was paused or withdrawn over
    /// it.
    Cancelled,
}

/// One dated instance of an activity in a participant's schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Occurrence {
    pub id: Uuid,
    pub enrollment_id: Uuid,
    pub activity_key: String,
    pub kind: ActivityKind,
    /// Day relative to the session.
    pub day: i32,
    /// Which of the day's times (0-based).
    pub slot: u8,
    pub arc_week: i32,
    pub local_date: Date,
    pub local_time: LocalTime,
    pub zone: Zone,
    /// When the window opens (and the occurrence falls due).
    pub at: Timestamp,
    pub closes_at: Timestamp,
    pub target_minutes: u32,
    pub protocol_version: u32,
    pub status: Status,
    pub completed_at: Option<Timestamp>,
    /// A due event is already recorded for it.
    pub due_recorded: bool,
    /// A missed event is already recorded for it.
    pub missed_recorded: bool,
}

/// The stable id of a slot of an enrollment: a v5 UUID of
/// `"{activity_key}/{day}/{slot}"` in the enrollment's namespace.
pub fn occurrence_id(enrollment_id: Uuid, activity_key: &str, day: i32, slot: u8) -> Uuid {
    // Every round of the scheduler names every occurrence of a schedule
    // again (141 for the built-in arc): the name is put together on the
    // stack rather than formatted into a new string each time.
    const ROOM: usize = 96;
    let key = activity_key.as_bytes();
    // "/" + an i32 (11 bytes at most) + "/" + a u8 (3).
    if key.len() > ROOM - 16 {
        return Uuid::new_v5(
            &enrollment_id,
            format!("{activity_key}/{day}/{slot}").as_bytes(),
        );
    }
    let mut name = [0u8; ROOM];
    let mut len = 0;
    let (mut day_digits, mut slot_digits) = (itoa::Buffer::new(), itoa::Buffer::new());
    for part in [
        key,
        b"/",
        day_digits.format(day).as_bytes(),
        b"/",
        slot_digits.format(slot).as_bytes(),
    ] {
        name[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    Uuid::new_v5(&enrollment_id, &name[..len])
}

struct Placed {
    occurrence: Occurrence,
    frozen: bool,
    /// When the revision that placed it took effect.
    placed_from: Timestamp,
}

/// Where a revision puts one slot of its protocol: what expanding a
/// schedule costs (a v5 UUID and a time-zone resolution per slot).
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: Uuid,
    /// Index into the protocol's activities.
    activity: usize,
    day: i32,
    slot: u8,
    date: Date,
    at: Timestamp,
    closes_at: Timestamp,
}

impl Slot {
    fn occurrence(
        &self,
        enrollment_id: Uuid,
        revision: &Revision,
        protocol: &Protocol,
    ) -> Occurrence {
        let activity = &protocol.activities[self.activity];
        Occurrence {
            id: self.id,
            enrollment_id,
            activity_key: activity.key.clone(),
            kind: activity.kind.clone(),
            day: self.day,
            slot: self.slot,
            arc_week: arc_week(self.day),
            local_date: self.date,
            local_time: activity.times[usize::from(self.slot)],
            zone: revision.zone.clone(),
            at: self.at,
            closes_at: self.closes_at,
            target_minutes: activity.target_minutes,
            protocol_version: revision.protocol_version,
            status: Status::Upcoming,
            completed_at: None,
            due_recorded: false,
            missed_recorded: false,
        }
    }
}

/// Every slot of `protocol` as `revision` places it, in the protocol's
/// order. Days whose date would overflow the calendar have none.
fn slots<'a>(
    enrollment_id: Uuid,
    revision: &'a Revision,
    protocol: &'a Protocol,
) -> impl Iterator<Item = Slot> + 'a {
    protocol
        .activities
        .iter()
        .enumerate()
        .flat_map(move |(a, activity)| {
            let window = SignedDuration::from_mins(i64::from(activity.window_minutes));
            activity
                .days()
                .filter_map(move |day| {
                    let date = revision.session.date().checked_add(day.days()).ok()?;
                    Some((day, date))
                })
                .flat_map(move |(day, date)| {
                    activity.times.iter().enumerate().map(move |(slot, &time)| {
                        let slot = slot as u8;
                        let at = resolve(&revision.zone, date, time);
                        Slot {
                            id: occurrence_id(enrollment_id, &activity.key, day, slot),
                            activity: a,
                            day,
                            slot,
                            date,
                            at,
                            closes_at: at.saturating_add(window).unwrap_or(Timestamp::MAX),
                        }
                    })
                })
        })
}

/// Every occurrence of `enrollment`, ordered by time, with its status at
/// `now`. `None` when a protocol version it needs is missing from
/// `protocols`.
pub fn occurrences(
    enrollment: &Enrollment,
    protocols: &impl Protocols,
    now: Timestamp,
) -> Option<Vec<Occurrence>> {
    let mut placed: BTreeMap<Uuid, Placed> = BTreeMap::new();
    let revisions = &enrollment.revisions;
    for (i, revision) in revisions.iter().enumerate() {
        let protocol = protocols.get(&enrollment.protocol_id, revision.protocol_version)?;
        let next = revisions.get(i + 1).map(|r| r.from);
        let mut present = std::collections::HashSet::new();
        for s in slots(enrollment.id, revision, protocol) {
            present.insert(s.id);
            if placed.get(&s.id).is_some_and(|p| p.frozen) {
                continue;
            }
            if s.closes_at <= revision.from {
                placed.remove(&s.id);
                continue;
            }
            // Came due before the next revision, or is already recorded
            // due here, or was done inside this window (whatever the
            // clocks said). A completion after this window belongs to
            // where the slot moved.
            let frozen = next.is_some_and(|n| {
                s.at < n
                    || enrollment.due.get(&s.id) == Some(&s.at)
                    || enrollment
                        .completions
                        .get(&s.id)
                        .is_some_and(|&c| s.at <= c && c < s.closes_at)
            });
            placed.insert(
                s.id,
                Placed {
                    occurrence: s.occurrence(enrollment.id, revision, protocol),
                    frozen,
                    placed_from: revision.from,
                },
            );
        }
        placed.retain(|id, p| p.frozen || present.contains(id));
    }
    let mut out: Vec<Occurrence> = placed
        .into_values()
        .map(|p| with_state(enrollment, p.occurrence, p.placed_from, now))
        .collect();
    out.sort_by_key(|o| (o.at, o.id));
    Some(out)
}

/// [`occurrences`], with the slots of an enrollment that has only ever had
/// one revision kept in `placements`: those depend on nothing but the
/// enrollment's id, its revision and its protocol, so the scheduler's
/// rounds for the same participant need not place them again. Equal to
/// [`occurrences`] for every enrollment.
pub fn occurrences_kept(
    enrollment: &Enrollment,
    protocols: &impl Protocols,
    now: Timestamp,
    placements: &mut Placements,
) -> Option<Vec<Occurrence>> {
    // A later revision keeps what came due under an earlier one, which
    // depends on what was recorded: placed afresh each time.
    let [revision] = enrollment.revisions.as_slice() else {
        return occurrences(enrollment, protocols, now);
    };
    let protocol = protocols.get(&enrollment.protocol_id, revision.protocol_version)?;
    let slots = placements.slots(enrollment.id, revision, protocol);
    Some(
        slots
            .iter()
            .map(|s| {
                let o = s.occurrence(enrollment.id, revision, protocol);
                with_state(enrollment, o, revision.from, now)
            })
            .collect(),
    )
}

/// Placed slots of one-revision enrollments, by enrollment id, each kept
/// with the revision and the protocol (its whole definition) that placed
/// it, and used only while both are unchanged. Bounded: when the newer of two generations
/// fills, it becomes the older one and the older one is dropped, so that
/// what rounds keep using stays and the rest goes.
#[derive(Debug)]
pub struct Placements {
    newer: HashMap<Uuid, Kept>,
    older: HashMap<Uuid, Kept>,
    newer_slots: usize,
    generation_slots: usize,
}

impl Default for Placements {
    fn default() -> Self {
        Self::with_generation_slots(Self::GENERATION_SLOTS)
    }
}

#[derive(Debug)]
struct Kept {
    revision: Revision,
    protocol: Protocol,
    /// In schedule order.
    slots: Vec<Slot>,
}

impl Kept {
    /// The single-revision case of [`occurrences`]: nothing is frozen, so
    /// each slot is where the revision puts it, unless its window closed
    /// before the revision took effect.
    fn place(enrollment_id: Uuid, revision: &Revision, protocol: &Protocol) -> Self {
        let mut placed: BTreeMap<Uuid, Slot> = BTreeMap::new();
        for s in slots(enrollment_id, revision, protocol) {
            if s.closes_at <= revision.from {
                placed.remove(&s.id);
            } else {
                placed.insert(s.id, s);
            }
        }
        let mut slots: Vec<Slot> = placed.into_values().collect();
        slots.sort_by_key(|s| (s.at, s.id));
        Self {
            revision: revision.clone(),
            protocol: protocol.clone(),
            slots,
        }
    }

    fn holds(&self, revision: &Revision, protocol: &Protocol) -> bool {
        self.revision == *revision && self.protocol == *protocol
    }
}

impl Placements {
    /// Slots per generation (about 80 bytes each): the built-in arc's 141
    /// for some 1,400 enrollments.
    const GENERATION_SLOTS: usize = 200_000;

    /// Keeps up to `slots` slots in each of its two generations.
    pub fn with_generation_slots(slots: usize) -> Self {
        Self {
            newer: HashMap::new(),
            older: HashMap::new(),
            newer_slots: 0,
            generation_slots: slots,
        }
    }

    /// How many enrollments are kept.
    pub fn len(&self) -> usize {
        self.newer.len() + self.older.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slots(&mut self, enrollment_id: Uuid, revision: &Revision, protocol: &Protocol) -> &[Slot] {
        let fresh = self
            .newer
            .get(&enrollment_id)
            .is_some_and(|k| k.holds(revision, protocol));
        if !fresh {
            if let Some(stale) = self.newer.remove(&enrollment_id) {
                self.newer_slots -= stale.slots.len();
            }
            let kept = match self.older.remove(&enrollment_id) {
                Some(k) if k.holds(revision, protocol) => k,
                _ => Kept::place(enrollment_id, revision, protocol),
            };
            if self.newer_slots + kept.slots.len() > self.generation_slots {
                self.older = std::mem::take(&mut self.newer);
                self.newer_slots = 0;
            }
            self.newer_slots += kept.slots.len();
            self.newer.insert(enrollment_id, kept);
        }
        &self.newer[&enrollment_id].slots
    }
}

/// `o`, placed by a revision in effect from `placed_from`, with what is
/// recorded of it and its status at `now`.
fn with_state(
    enrollment: &Enrollment,
    mut o: Occurrence,
    placed_from: Timestamp,
    now: Timestamp,
) -> Occurrence {
    o.completed_at = enrollment.completions.get(&o.id).copied();
    o.due_recorded = enrollment.due.contains_key(&o.id);
    o.missed_recorded = enrollment.missed.contains(&o.id);
    o.status = status(enrollment, &o, placed_from, now);
    o
}

/// The state of `o`, placed by a revision in effect from `placed_from`, at
/// `now`.
fn status(
    enrollment: &Enrollment,
    o: &Occurrence,
    placed_from: Timestamp,
    now: Timestamp,
) -> Status {
    if let Some(done) = o.completed_at {
        return if done <= o.closes_at {
            Status::Done
        } else {
            Status::Late
        };
    }
    // Withdrawn before the window closed.
    if enrollment.withdrawn_at.is_some_and(|w| o.closes_at > w) {
        return Status::Cancelled;
    }
    // A pause cancels what it was in force over; a change made after it
    // ended may place an occurrence in its past, due at once, untouched.
    let paused_over = enrollment.pauses.iter().any(|p| {
        let opened_in_pause = o.at >= p.from && p.until.is_none_or(|u| o.at < u);
        let open_at_pause = o.at < p.from && o.closes_at > p.from;
        (opened_in_pause || open_at_pause) && p.until.is_none_or(|u| placed_from < u)
    });
    if paused_over {
        return Status::Cancelled;
    }
    if now < o.at {
        Status::Upcoming
    } else if now < o.closes_at {
        Status::Due
    } else {
        Status::Missed
    }
}

/// What a change to an enrollment (reschedule, new zone, new protocol
/// version) does to the occurrences that have not yet come due.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// Same slot, new time.
    pub moved: Vec<Uuid>,
    /// Slots the change adds.
    pub added: Vec<Uuid>,
    /// Slots the change drops (skipped over, or not in the new version).
    pub removed: Vec<Uuid>,
    /// Future slots at the same time as before.
    pub unchanged: usize,
}

/// Compares the schedules before and after a change made at `now`.
pub fn change(before: &[Occurrence], after: &[Occurrence], now: Timestamp) -> Change {
    let before: BTreeMap<Uuid, &Occurrence> = before.iter().map(|o| (o.id, o)).collect();
    let after: BTreeMap<Uuid, &Occurrence> = after.iter().map(|o| (o.id, o)).collect();
    let mut change = Change::default();
    // Slots already due before the change keep their place, so only the
    // future can move or disappear; a new slot counts as added even when it
    // is due at once.
    for (id, b) in before.iter().filter(|(_, o)| o.at >= now) {
        match after.get(id) {
            None => change.removed.push(*id),
            Some(a) if a.at != b.at || a.closes_at != b.closes_at => change.moved.push(*id),
            Some(_) => change.unchanged += 1,
        }
    }
    change
        .added
        .extend(after.keys().filter(|id| !before.contains_key(id)));
    change
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The derivation as it was first written, which every stored
    /// occurrence id came from.
    fn formatted(enrollment_id: Uuid, key: &str, day: i32, slot: u8) -> Uuid {
        Uuid::new_v5(&enrollment_id, format!("{key}/{day}/{slot}").as_bytes())
    }

    #[test]
    fn occurrence_ids_are_the_v5_uuids_of_their_slot_names() {
        let ns = Uuid::parse_str("6f1c1e52-27b5-4f1e-9a33-0c2d1f8e4b70").unwrap();
        // Computed apart from this code, with Python's uuid.uuid5.
        assert_eq!(
            occurrence_id(ns, "self-compassion-break", -7, 1).to_string(),
            "66d13486-2ba9-56cc-9515-e78487e412af"
        );
        assert_eq!(
            occurrence_id(ns, "journal", i32::MAX, 255).to_string(),
            "a4077108-1c7f-5a25-9594-78777ebd4689"
        );
    }

    #[test]
    fn occurrence_ids_match_the_formatted_names_at_every_edge() {
        let ns = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let long = "k".repeat(200);
        // Below, at and above the longest key named on the stack.
        let keys = [
            "a",
            "weekly-checkin",
            &long[..64],
            &long[..80],
            &long[..81],
            &long,
        ];
        let days = [
            i32::MIN,
            i32::MIN + 1,
            -1_000_000,
            -364,
            -10,
            -9,
            -1,
            0,
            1,
            9,
            10,
            99,
            100,
            364,
            i32::MAX,
        ];
        for key in keys {
            for day in days {
                for slot in [0u8, 1, 9, 10, 99, 100, 255] {
                    assert_eq!(
                        occurrence_id(ns, key, day, slot),
                        formatted(ns, key, day, slot),
                        "{} bytes of key, day {day}, slot {slot}",
                        key.len()
                    );
                }
            }
        }
    }
}
