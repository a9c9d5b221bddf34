//! The participant aggregate: one stream per participant holds their
//! enrollments, how each was moved, paused or withdrawn, and what became of
//! each occurrence (due, completed, missed).
//!
//! One stream per participant (not per enrollment) is what lets the rule
//! "no two overlapping enrollments of one participant in one protocol" be
//! checked against a single, versioned state.

use std::collections::{BTreeMap, BTreeSet};

use jiff::civil::{Date, DateTime};
use jiff::{SignedDuration, Timestamp, ToSpan};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Error;
use crate::consent::{
    Consent, ConsentRecorded, ConsentWithdrawn, DocumentVersionDefined, ErasureReason, Purpose,
};
use crate::protocol::{Protocol, ProtocolSet, Protocols};
use crate::schedule::{Occurrence, Placements, Status, occurrences, occurrences_kept};
use crate::time::{LocalTime, Zone, resolve_date_time};

/// How far ahead a session may be booked.
pub const MAX_LEAD: SignedDuration = SignedDuration::from_hours(2 * 366 * 24);

/// The enrollment id for an `Enroll` request id: a retry maps to the same
/// enrollment.
pub fn enrollment_id_for_request(request_id: Uuid) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x2f9b_61d4_8c07_4a52_b3e1_0d7c_94a6_e518);
    Uuid::new_v5(&NAMESPACE, request_id.as_bytes())
}

pub fn validate_participant_ref(participant_ref: &str) -> Result<(), Error> {
    if participant_ref.is_empty() || participant_ref.len() > 128 {
        return Err(Error::invalid("participant_ref", "must be 1 to 128 bytes"));
    }
    if participant_ref.chars().any(char::is_control) {
        return Err(Error::invalid(
            "participant_ref",
            "must not contain control characters",
        ));
    }
    Ok(())
}

// ---- State ----

/// Everything known about one participant's enrollments and consent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Participant {
    pub enrollments: Vec<Enrollment>,
    pub consent: Consent,
    pub erased: Option<ParticipantErased>,
}

impl Participant {
    pub fn enrollment(&self, id: Uuid) -> Option<&Enrollment> {
        self.enrollments.iter().find(|e| e.id == id)
    }

    fn enrollment_mut(&mut self, id: Uuid) -> Option<&mut Enrollment> {
        self.enrollments.iter_mut().find(|e| e.id == id)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Enrollment {
    pub id: Uuid,
    pub protocol_id: String,
    pub enrolled_at: Timestamp,
    /// The timing history; never empty. The last is the current one.
    pub revisions: Vec<Revision>,
    /// First and last day of the current protocol's arc.
    pub arc_days: (i32, i32),
    pub pauses: Vec<Pause>,
    pub withdrawn_at: Option<Timestamp>,
    pub completions: BTreeMap<Uuid, Timestamp>,
    /// Completions made by a practice entry: the entry and its revision.
    pub completed_by: BTreeMap<Uuid, (Uuid, u32)>,
    /// Occurrences recorded due, with the instant they were due at.
    pub due: BTreeMap<Uuid, Timestamp>,
    pub missed: BTreeSet<Uuid>,
}

/// Session, zones and protocol version, in effect from `from`.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub from: Timestamp,
    pub protocol_version: u32,
    /// The session's local date-time, in `session_zone`.
    pub session: DateTime,
    /// Where the session takes place (the clinic's zone). A participant
    /// who travels keeps it: the session keeps its instant.
    pub session_zone: Zone,
    /// The participant's zone: the wall clock their activities follow.
    pub zone: Zone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    pub from: Timestamp,
    pub until: Option<Timestamp>,
}

impl Enrollment {
    pub fn current(&self) -> &Revision {
        self.revisions.last().expect("an enrollment has a revision")
    }

    pub fn is_paused(&self) -> bool {
        self.pauses.last().is_some_and(|p| p.until.is_none())
    }

    /// The session as an instant, by the zone rule, in the session's zone.
    pub fn session_instant(&self) -> Timestamp {
        resolve_date_time(&self.current().session_zone, self.current().session)
    }

    /// The calendar dates the arc covers.
    pub fn arc_dates(&self) -> (Date, Date) {
        arc_dates(self.current().session.date(), self.arc_days)
    }

    /// Every occurrence with its status at `now`.
    pub fn schedule(
        &self,
        protocols: &impl Protocols,
        now: Timestamp,
    ) -> Result<Vec<Occurrence>, Error> {
        occurrences(self, protocols, now).ok_or_else(|| Error::not_found("protocol version"))
    }

    /// [`Enrollment::schedule`], placing slots through `placements`: for
    /// whoever expands the same enrollments again and again.
    pub fn schedule_kept(
        &self,
        protocols: &impl Protocols,
        now: Timestamp,
        placements: &mut Placements,
    ) -> Result<Vec<Occurrence>, Error> {
        occurrences_kept(self, protocols, now, placements)
            .ok_or_else(|| Error::not_found("protocol version"))
    }

    /// The next instant at which time alone would make something happen to
    /// this enrollment (a window opening or closing without completion);
    /// `None` when nothing is left to happen.
    pub fn next_wake(schedule: &[Occurrence], miss_grace: SignedDuration) -> Option<Timestamp> {
        schedule
            .iter()
            .filter(|o| o.status != Status::Cancelled && o.completed_at.is_none())
            .filter_map(|o| {
                if !o.due_recorded {
                    Some(o.at)
                } else if !o.missed_recorded {
                    Some(crate::time::shift(o.closes_at, miss_grace))
                } else {
                    None
                }
            })
            .min()
    }
}

fn arc_dates(session: Date, (first, last): (i32, i32)) -> (Date, Date) {
    let at = |d: i32| session.checked_add(d.days()).unwrap_or(session);
    (at(first), at(last))
}

// ---- Events ----

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Enrolled(ParticipantEnrolled),
    SessionRescheduled(SessionRescheduled),
    TimeZoneChanged(TimeZoneChanged),
    Migrated(EnrollmentMigrated),
    Paused(EnrollmentPaused),
    Resumed(EnrollmentResumed),
    Withdrawn(EnrollmentWithdrawn),
    Completed(OccurrenceCompleted),
    CompletionWithdrawn(OccurrenceCompletionWithdrawn),
    Due(OccurrenceDue),
    Missed(OccurrenceMissed),
    ConsentRecorded(ConsentRecorded),
    ConsentWithdrawn(ConsentWithdrawn),
    Erased(ParticipantErased),
}

/// Schema version 2; version 1 also held the partner's reference, which a
/// read ignores (and an upgrade removes from the stored body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantEnrolled {
    pub enrollment_id: Uuid,
    pub protocol_id: String,
    pub protocol_version: u32,
    /// Local date-time of the session, in `time_zone`.
    pub session_at: DateTime,
    pub time_zone: Zone,
    pub arc_first_day: i32,
    pub arc_last_day: i32,
    pub enrolled_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRescheduled {
    pub enrollment_id: Uuid,
    pub session_at: DateTime,
    pub previous_session_at: DateTime,
    pub effective_from: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeZoneChanged {
    pub enrollment_id: Uuid,
    pub time_zone: Zone,
    pub previous_time_zone: Zone,
    pub effective_from: Timestamp,
    /// The zone the session stays in (schema v2). Absent in v1, whose
    /// change moved the session to the same local time in the new zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_time_zone: Option<Zone>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentMigrated {
    pub enrollment_id: Uuid,
    pub from_version: u32,
    pub to_version: u32,
    pub arc_first_day: i32,
    pub arc_last_day: i32,
    pub effective_from: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentPaused {
    pub enrollment_id: Uuid,
    pub paused_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentResumed {
    pub enrollment_id: Uuid,
    pub resumed_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentWithdrawn {
    pub enrollment_id: Uuid,
    pub withdrawn_at: Timestamp,
    /// Why, when it was not `WithdrawEnrollment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<WithdrawalCause>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawalCause {
    /// A purpose the protocol requires was withdrawn.
    ConsentWithdrawn,
    /// The participant was erased.
    ParticipantErased,
}

/// The participant was erased: their data key and reference are destroyed
/// outside the log; this records when, by which tenant and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantErased {
    pub erasure_id: Uuid,
    pub erased_at: Timestamp,
    pub by_tenant: String,
    pub reason: ErasureReason,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OccurrenceCompleted {
    pub enrollment_id: Uuid,
    pub occurrence_id: Uuid,
    pub completed_at: Timestamp,
    /// The practice entry that completed it; absent when a partner
    /// completed it directly (`CompleteOccurrence`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_id: Option<Uuid>,
    /// Which revision of that entry (1: as logged, +1 per correction), so
    /// that a link made again after being withdrawn is a new event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_revision: Option<u32>,
}

/// The practice entry that completed an occurrence was retracted, or
/// corrected so that it no longer fits: the occurrence is open again (or
/// missed, if its window has closed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OccurrenceCompletionWithdrawn {
    pub enrollment_id: Uuid,
    pub occurrence_id: Uuid,
    pub entry_id: Uuid,
    pub entry_revision: u32,
}

/// An occurrence's window opened: partners may send a reminder from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OccurrenceDue {
    pub enrollment_id: Uuid,
    pub occurrence_id: Uuid,
    pub activity_key: String,
    pub local_date: Date,
    pub local_time: LocalTime,
    pub time_zone: Zone,
    pub scheduled_at: Timestamp,
    pub window_closes_at: Timestamp,
}

/// An occurrence's window closed without completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OccurrenceMissed {
    pub enrollment_id: Uuid,
    pub occurrence_id: Uuid,
    pub activity_key: String,
    pub scheduled_at: Timestamp,
    pub window_closed_at: Timestamp,
}

impl Event {
    /// The enrollment the event is about; nil for consent and erasure,
    /// which are about the participant.
    pub fn enrollment_id(&self) -> Uuid {
        match self {
            Self::Enrolled(e) => e.enrollment_id,
            Self::SessionRescheduled(e) => e.enrollment_id,
            Self::TimeZoneChanged(e) => e.enrollment_id,
            Self::Migrated(e) => e.enrollment_id,
            Self::Paused(e) => e.enrollment_id,
            Self::Resumed(e) => e.enrollment_id,
            Self::Withdrawn(e) => e.enrollment_id,
            Self::Completed(e) => e.enrollment_id,
            Self::CompletionWithdrawn(e) => e.enrollment_id,
            Self::Due(e) => e.enrollment_id,
            Self::Missed(e) => e.enrollment_id,
            Self::ConsentRecorded(_) | Self::ConsentWithdrawn(_) | Self::Erased(_) => Uuid::nil(),
        }
    }

    /// The id to store the event under. Time-driven events get an id made
    /// from what they are about, so that two schedulers deciding the same
    /// thing write it once; the others get the id the caller chose.
    pub fn deterministic_id(&self) -> Option<Uuid> {
        match self {
            Self::Enrolled(e) => Some(e.enrollment_id),
            Self::Completed(OccurrenceCompleted {
                occurrence_id,
                entry_id: Some(entry),
                entry_revision,
                ..
            }) => Some(Uuid::new_v5(
                occurrence_id,
                format!("completed/{entry}/{}", entry_revision.unwrap_or(1)).as_bytes(),
            )),
            Self::CompletionWithdrawn(e) => Some(Uuid::new_v5(
                &e.occurrence_id,
                format!("withdrawn/{}/{}", e.entry_id, e.entry_revision).as_bytes(),
            )),
            Self::Due(e) => Some(Uuid::new_v5(
                &e.occurrence_id,
                format!("due/{}", e.scheduled_at.as_microsecond()).as_bytes(),
            )),
            Self::Missed(e) => Some(Uuid::new_v5(
                &e.occurrence_id,
                format!("missed/{}", e.window_closed_at.as_microsecond()).as_bytes(),
            )),
            Self::ConsentRecorded(e) => Some(e.consent_id),
            Self::ConsentWithdrawn(e) => Some(e.withdrawal_id),
            Self::Erased(e) => Some(e.erasure_id),
            _ => None,
        }
    }
}

event_codec! {
    for Event {
        Enrolled => "ParticipantEnrolled" v 2 (1..=2),
        SessionRescheduled => "SessionRescheduled",
        TimeZoneChanged => "TimeZoneChanged" v 2 (1..=2),
        Migrated => "EnrollmentMigrated",
        Paused => "EnrollmentPaused",
        Resumed => "EnrollmentResumed",
        Withdrawn => "EnrollmentWithdrawn",
        Completed => "OccurrenceCompleted",
        CompletionWithdrawn => "OccurrenceCompletionWithdrawn",
        Due => "OccurrenceDue",
        Missed => "OccurrenceMissed",
        ConsentRecorded => "ConsentRecorded",
        ConsentWithdrawn => "ConsentWithdrawn",
        Erased => "ParticipantErased",
    }
}

// ---- evolve ----

pub fn evolve(mut state: Participant, event: &Event) -> Participant {
    match event {
        Event::ConsentRecorded(e) => {
            state.consent.apply_recorded(e);
            return state;
        }
        Event::ConsentWithdrawn(e) => {
            state.consent.apply_withdrawn(e);
            return state;
        }
        Event::Erased(e) => {
            state.consent.granted.clear();
            state.erased.get_or_insert_with(|| e.clone());
            return state;
        }
        _ => {}
    }
    if let Event::Enrolled(e) = event {
        if state.enrollment(e.enrollment_id).is_none() {
            state.enrollments.push(Enrollment {
                id: e.enrollment_id,
                protocol_id: e.protocol_id.clone(),
                enrolled_at: e.enrolled_at,
                revisions: vec![Revision {
                    from: e.enrolled_at,
                    protocol_version: e.protocol_version,
                    session: e.session_at,
                    session_zone: e.time_zone.clone(),
                    zone: e.time_zone.clone(),
                }],
                arc_days: (e.arc_first_day, e.arc_last_day),
                pauses: vec![],
                withdrawn_at: None,
                completions: BTreeMap::new(),
                completed_by: BTreeMap::new(),
                due: BTreeMap::new(),
                missed: BTreeSet::new(),
            });
        }
        return state;
    }
    let Some(enrollment) = state.enrollment_mut(event.enrollment_id()) else {
        return state;
    };
    let revise = |enrollment: &mut Enrollment, from: Timestamp, change: &dyn Fn(&mut Revision)| {
        let mut next = enrollment.current().clone();
        next.from = from;
        change(&mut next);
        enrollment.revisions.push(next);
    };
    match event {
        Event::Enrolled(_)
        | Event::ConsentRecorded(_)
        | Event::ConsentWithdrawn(_)
        | Event::Erased(_) => {}
        Event::SessionRescheduled(e) => {
            revise(enrollment, e.effective_from, &|r| r.session = e.session_at)
        }
        Event::TimeZoneChanged(e) => revise(enrollment, e.effective_from, &|r| {
            r.zone = e.time_zone.clone();
            r.session_zone = e
                .session_time_zone
                .clone()
                .unwrap_or_else(|| e.time_zone.clone());
        }),
        Event::Migrated(e) => {
            revise(enrollment, e.effective_from, &|r| {
                r.protocol_version = e.to_version
            });
            enrollment.arc_days = (e.arc_first_day, e.arc_last_day);
        }
        Event::Paused(e) => enrollment.pauses.push(Pause {
            from: e.paused_at,
            until: None,
        }),
        Event::Resumed(e) => {
            if let Some(p) = enrollment.pauses.last_mut() {
                p.until = Some(e.resumed_at);
            }
        }
        Event::Withdrawn(e) => enrollment.withdrawn_at = Some(e.withdrawn_at),
        Event::Completed(e) => {
            enrollment
                .completions
                .insert(e.occurrence_id, e.completed_at);
            if let Some(entry) = e.entry_id {
                enrollment
                    .completed_by
                    .insert(e.occurrence_id, (entry, e.entry_revision.unwrap_or(1)));
            }
        }
        Event::CompletionWithdrawn(e) => {
            if enrollment
                .completed_by
                .get(&e.occurrence_id)
                .is_some_and(|(entry, _)| *entry == e.entry_id)
            {
                enrollment.completed_by.remove(&e.occurrence_id);
                enrollment.completions.remove(&e.occurrence_id);
            }
        }
        Event::Due(e) => {
            enrollment.due.insert(e.occurrence_id, e.scheduled_at);
        }
        Event::Missed(e) => {
            enrollment.missed.insert(e.occurrence_id);
        }
    }
    state
}

// ---- decide ----

#[derive(Debug, Clone)]
pub enum Command {
    Enroll {
        enrollment_id: Uuid,
        /// The published protocol version to enroll on.
        protocol: Protocol,
        /// The version the caller asked for; 0 for the latest published,
        /// so that a retry after a new version is published is still the
        /// same request.
        requested_version: u32,
        session_at: DateTime,
        time_zone: Zone,
        now: Timestamp,
    },
    RescheduleSession {
        enrollment_id: Uuid,
        session_at: DateTime,
        now: Timestamp,
    },
    ChangeTimeZone {
        enrollment_id: Uuid,
        time_zone: Zone,
        now: Timestamp,
    },
    /// Moves the enrollment to another published version of its protocol.
    Migrate {
        enrollment_id: Uuid,
        protocol: Protocol,
        now: Timestamp,
    },
    Pause {
        enrollment_id: Uuid,
        now: Timestamp,
    },
    Resume {
        enrollment_id: Uuid,
        now: Timestamp,
    },
    Withdraw {
        enrollment_id: Uuid,
        now: Timestamp,
    },
    Complete {
        enrollment_id: Uuid,
        occurrence_id: Uuid,
        /// `None`: now. A retry without a time of an occurrence already
        /// completed is then the same request.
        completed_at: Option<Timestamp>,
        now: Timestamp,
    },
    /// Records a consent given, against the document version it names
    /// (`None`: the tenant has no such version).
    RecordConsent {
        consent: ConsentRecorded,
        document: Option<DocumentVersionDefined>,
        now: Timestamp,
    },
    /// Withdraws purposes (empty: everything granted); enrollments whose
    /// protocol requires one of them are withdrawn with it.
    WithdrawConsent {
        withdrawal_id: Uuid,
        purposes: BTreeSet<Purpose>,
        now: Timestamp,
    },
    /// Records the participant's erasure, withdrawing every enrollment.
    Erase {
        erasure_id: Uuid,
        by_tenant: String,
        reason: ErasureReason,
        now: Timestamp,
    },
    /// Records what time alone has made happen by `now`, for every
    /// enrollment of the participant.
    Tick {
        now: Timestamp,
        /// How long after a window closes the missed event waits, so that
        /// practice logged offline and synced late can still complete it.
        miss_grace: SignedDuration,
    },
}

/// What `command` causes, given the participant's state and the protocol
/// versions their enrollments use.
pub fn decide(
    state: &Participant,
    command: Command,
    protocols: &impl Protocols,
) -> Result<Vec<Event>, Error> {
    if state.erased.is_some() {
        return match command {
            Command::Erase { .. } | Command::Tick { .. } => Ok(vec![]),
            _ => Err(Error::refused(
                "participant_ref",
                "the participant was erased",
            )),
        };
    }
    match command {
        Command::Enroll {
            enrollment_id,
            protocol,
            requested_version,
            session_at,
            time_zone,
            now,
        } => {
            let arc = protocol.arc_days();
            if let Some(existing) = state.enrollment(enrollment_id) {
                let same = existing.protocol_id == protocol.id
                    && (requested_version == 0
                        || existing.revisions[0].protocol_version == requested_version)
                    && existing.revisions[0].session == session_at
                    && existing.revisions[0].session_zone == time_zone;
                return if same {
                    Ok(vec![])
                } else {
                    Err(Error::already_exists(
                        "request_id",
                        "was already used for a different enrollment",
                    ))
                };
            }
            if let Some(missing) = state.consent.missing(&protocol.required_purposes) {
                return Err(Error::refused(
                    "consent",
                    format!(
                        "protocol `{}` requires consent to `{missing}`, which the participant has not granted: record it first (RecordConsent)",
                        protocol.id
                    ),
                ));
            }
            check_session(&session_at, &time_zone, arc, now)?;
            check_overlap(state, None, &protocol.id, session_at.date(), arc)?;
            Ok(vec![Event::Enrolled(ParticipantEnrolled {
                enrollment_id,
                protocol_id: protocol.id.clone(),
                protocol_version: protocol.version,
                session_at,
                time_zone,
                arc_first_day: arc.0,
                arc_last_day: arc.1,
                enrolled_at: now,
            })])
        }
        Command::RescheduleSession {
            enrollment_id,
            session_at,
            now,
        } => {
            let e = active(state, enrollment_id)?;
            if e.current().session == session_at {
                return Ok(vec![]);
            }
            check_session(&session_at, &e.current().session_zone, e.arc_days, now)?;
            check_overlap(
                state,
                Some(e.id),
                &e.protocol_id,
                session_at.date(),
                e.arc_days,
            )?;
            Ok(vec![Event::SessionRescheduled(SessionRescheduled {
                enrollment_id,
                session_at,
                previous_session_at: e.current().session,
                effective_from: effective(e, now),
            })])
        }
        Command::ChangeTimeZone {
            enrollment_id,
            time_zone,
            now,
        } => {
            let e = active(state, enrollment_id)?;
            if e.current().zone == time_zone {
                return Ok(vec![]);
            }
            // The session happens at the clinic: it keeps its instant and
            // its zone; only the participant's wall clock moves.
            Ok(vec![Event::TimeZoneChanged(TimeZoneChanged {
                enrollment_id,
                previous_time_zone: e.current().zone.clone(),
                time_zone,
                effective_from: effective(e, now),
                session_time_zone: Some(e.current().session_zone.clone()),
            })])
        }
        Command::Migrate {
            enrollment_id,
            protocol,
            now,
        } => {
            let e = active(state, enrollment_id)?;
            if protocol.id != e.protocol_id {
                return Err(Error::invalid(
                    "protocol_id",
                    "an enrollment moves between versions of its own protocol only",
                ));
            }
            let from_version = e.current().protocol_version;
            if protocol.version == from_version {
                return Ok(vec![]);
            }
            let arc = protocol.arc_days();
            check_overlap(
                state,
                Some(e.id),
                &e.protocol_id,
                e.current().session.date(),
                arc,
            )?;
            Ok(vec![Event::Migrated(EnrollmentMigrated {
                enrollment_id,
                from_version,
                to_version: protocol.version,
                arc_first_day: arc.0,
                arc_last_day: arc.1,
                effective_from: effective(e, now),
            })])
        }
        Command::Pause { enrollment_id, now } => {
            let e = active(state, enrollment_id)?;
            if e.is_paused() {
                return Err(Error::refused(
                    "enrollment_id",
                    "the enrollment is already paused",
                ));
            }
            Ok(vec![Event::Paused(EnrollmentPaused {
                enrollment_id,
                paused_at: now,
            })])
        }
        Command::Resume { enrollment_id, now } => {
            let e = active(state, enrollment_id)?;
            if !e.is_paused() {
                return Err(Error::refused(
                    "enrollment_id",
                    "the enrollment is not paused",
                ));
            }
            Ok(vec![Event::Resumed(EnrollmentResumed {
                enrollment_id,
                resumed_at: now,
            })])
        }
        Command::Withdraw { enrollment_id, now } => {
            let e = existing(state, enrollment_id)?;
            if e.withdrawn_at.is_some() {
                return Ok(vec![]);
            }
            Ok(vec![Event::Withdrawn(EnrollmentWithdrawn {
                enrollment_id,
                withdrawn_at: now,
                cause: None,
            })])
        }
        Command::Complete {
            enrollment_id,
            occurrence_id,
            completed_at,
            now,
        } => {
            let e = active(state, enrollment_id)?;
            let schedule = e.schedule(protocols, now)?;
            let Some(o) = schedule.iter().find(|o| o.id == occurrence_id) else {
                return Err(Error::not_found("occurrence"));
            };
            if let Some(at) = o.completed_at {
                return if completed_at.is_none_or(|c| c == at) {
                    Ok(vec![])
                } else {
                    Err(Error::already_exists(
                        "occurrence_id",
                        "the occurrence is already completed at another time",
                    ))
                };
            }
            let completed_at = completed_at.unwrap_or(now);
            if completed_at > now {
                return Err(Error::invalid("completed_at", "must not be in the future"));
            }
            if completed_at < o.at {
                return Err(Error::refused(
                    "completed_at",
                    "is before the occurrence's window opens",
                ));
            }
            if o.status == Status::Cancelled {
                return Err(Error::refused(
                    "occurrence_id",
                    "the occurrence was cancelled by a pause or withdrawal",
                ));
            }
            Ok(vec![Event::Completed(OccurrenceCompleted {
                enrollment_id,
                occurrence_id,
                completed_at,
                entry_id: None,
                entry_revision: None,
            })])
        }
        Command::RecordConsent {
            consent,
            document,
            now,
        } => {
            let consent = ConsentRecorded {
                recorded_at: now,
                ..consent
            };
            if state
                .consent
                .check_record(&consent, document.as_ref(), now)?
            {
                Ok(vec![Event::ConsentRecorded(consent)])
            } else {
                Ok(vec![])
            }
        }
        Command::WithdrawConsent {
            withdrawal_id,
            purposes,
            now,
        } => {
            let Some(purposes) = state.consent.check_withdraw(withdrawal_id, &purposes)? else {
                return Ok(vec![]);
            };
            let mut events = vec![];
            for e in state
                .enrollments
                .iter()
                .filter(|e| e.withdrawn_at.is_none())
            {
                let version = e.current().protocol_version;
                let needs = protocols
                    .get(&e.protocol_id, version)
                    .is_some_and(|p| p.required_purposes.iter().any(|r| purposes.contains(r)));
                if needs {
                    events.push(Event::Withdrawn(EnrollmentWithdrawn {
                        enrollment_id: e.id,
                        withdrawn_at: now,
                        cause: Some(WithdrawalCause::ConsentWithdrawn),
                    }));
                }
            }
            events.insert(
                0,
                Event::ConsentWithdrawn(ConsentWithdrawn {
                    withdrawal_id,
                    purposes,
                    withdrawn_at: now,
                }),
            );
            Ok(events)
        }
        Command::Erase {
            erasure_id,
            by_tenant,
            reason,
            now,
        } => {
            let mut events: Vec<Event> = state
                .enrollments
                .iter()
                .filter(|e| e.withdrawn_at.is_none())
                .map(|e| {
                    Event::Withdrawn(EnrollmentWithdrawn {
                        enrollment_id: e.id,
                        withdrawn_at: now,
                        cause: Some(WithdrawalCause::ParticipantErased),
                    })
                })
                .collect();
            events.push(Event::Erased(ParticipantErased {
                erasure_id,
                erased_at: now,
                by_tenant,
                reason,
            }));
            Ok(events)
        }
        Command::Tick { now, miss_grace } => {
            let schedules = state
                .enrollments
                .iter()
                .map(|e| e.schedule(protocols, now))
                .collect::<Result<Vec<_>, Error>>()?;
            Ok(tick_on(state, &schedules, now, miss_grace))
        }
    }
}

/// What `Command::Tick` causes, given each enrollment's schedule at `now`
/// (`schedules[i]` is `state.enrollments[i]`'s), for a caller that has
/// expanded them already: the scheduler, which links practice on the same
/// schedules first.
pub fn tick_on(
    state: &Participant,
    schedules: &[Vec<Occurrence>],
    now: Timestamp,
    miss_grace: SignedDuration,
) -> Vec<Event> {
    if state.erased.is_some() {
        return vec![];
    }
    let mut events = Vec::new();
    for (e, schedule) in state.enrollments.iter().zip(schedules) {
        events.extend(tick(e, schedule, now, miss_grace));
    }
    events.sort_by_key(|(at, _)| *at);
    events.into_iter().map(|(_, e)| e).collect()
}

/// A command with the protocol versions it may need: those the
/// participant's enrollments use, and any it names (read by the shell).
#[derive(Debug, Clone)]
pub struct WithProtocols {
    pub command: Command,
    pub protocols: ProtocolSet,
}

/// A participant's enrollments as a decider.
#[derive(Debug)]
pub enum Aggregate {}

impl crate::Decider for Aggregate {
    type State = Participant;
    type Command = WithProtocols;
    type Event = Event;

    fn decide(state: &Participant, c: WithProtocols) -> Result<Vec<Event>, Error> {
        decide(state, c.command, &c.protocols)
    }

    fn evolve(state: Participant, event: &Event) -> Participant {
        evolve(state, event)
    }
}

/// Due and missed events for one enrollment, with the instant each
/// happened, for every window that opened or closed by `now`.
fn tick(
    e: &Enrollment,
    schedule: &[Occurrence],
    now: Timestamp,
    miss_grace: SignedDuration,
) -> Vec<(Timestamp, Event)> {
    let mut out = Vec::new();
    for o in schedule {
        if o.status == Status::Cancelled || o.completed_at.is_some() {
            continue;
        }
        if o.at <= now && !o.due_recorded {
            out.push((
                o.at,
                Event::Due(OccurrenceDue {
                    enrollment_id: e.id,
                    occurrence_id: o.id,
                    activity_key: o.activity_key.clone(),
                    local_date: o.local_date,
                    local_time: o.local_time,
                    time_zone: o.zone.clone(),
                    scheduled_at: o.at,
                    window_closes_at: o.closes_at,
                }),
            ));
        }
        if crate::time::shift(o.closes_at, miss_grace) <= now && !o.missed_recorded {
            out.push((
                crate::time::shift(o.closes_at, miss_grace),
                Event::Missed(OccurrenceMissed {
                    enrollment_id: e.id,
                    occurrence_id: o.id,
                    activity_key: o.activity_key.clone(),
                    scheduled_at: o.at,
                    window_closed_at: o.closes_at,
                }),
            ));
        }
    }
    out
}

/// When a change made at `now` takes effect: never before the previous
/// change, so that revisions stay in order even when servers' clocks differ.
fn effective(e: &Enrollment, now: Timestamp) -> Timestamp {
    now.max(e.current().from)
}

fn existing(state: &Participant, id: Uuid) -> Result<&Enrollment, Error> {
    state
        .enrollment(id)
        .ok_or_else(|| Error::not_found("enrollment"))
}

/// An enrollment that may still be changed.
fn active(state: &Participant, id: Uuid) -> Result<&Enrollment, Error> {
    let e = existing(state, id)?;
    if e.withdrawn_at.is_some() {
        return Err(Error::refused(
            "enrollment_id",
            "the enrollment is withdrawn",
        ));
    }
    Ok(e)
}

/// A session must be bookable: not so far ahead it is surely a typo, and
/// not so far back that the whole arc is already over.
fn check_session(
    session_at: &DateTime,
    zone: &Zone,
    arc: (i32, i32),
    now: Timestamp,
) -> Result<(), Error> {
    let at = resolve_date_time(zone, *session_at);
    if at.duration_since(now) > MAX_LEAD {
        return Err(Error::invalid(
            "session_local_time",
            "is more than two years ahead",
        ));
    }
    let (_, last) = arc_dates(session_at.date(), arc);
    let arc_over = resolve_date_time(
        zone,
        last.tomorrow()
            .unwrap_or(last)
            .to_datetime(jiff::civil::Time::midnight()),
    );
    if arc_over <= now {
        return Err(Error::refused(
            "session_local_time",
            "the whole arc around this session is already over",
        ));
    }
    Ok(())
}

/// One participant may not be on two arcs of one protocol at once.
fn check_overlap(
    state: &Participant,
    except: Option<Uuid>,
    protocol_id: &str,
    session: Date,
    arc: (i32, i32),
) -> Result<(), Error> {
    let (first, last) = arc_dates(session, arc);
    for other in &state.enrollments {
        if Some(other.id) == except
            || other.protocol_id != protocol_id
            || other.withdrawn_at.is_some()
        {
            continue;
        }
        let (o_first, o_last) = other.arc_dates();
        if first <= o_last && o_first <= last {
            return Err(Error::refused(
                "session_local_time",
                format!(
                    "this arc ({first} to {last}) overlaps enrollment {} in the same protocol \
                     ({o_first} to {o_last}); withdraw it first or choose another session date",
                    other.id
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
