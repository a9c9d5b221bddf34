//! The practice log: what a participant practised, when and for how long,
//! as entries on one stream per participant; how entries complete scheduled
//! occurrences; and the per-week summary.
//!
//! Notes arrive here already sealed: the domain never sees a note's text,
//! only that there is one, so nothing in this module can leak it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::civil::Date;
use jiff::tz::Offset;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Error;
use crate::enrollment::{self, Enrollment, OccurrenceCompleted, OccurrenceCompletionWithdrawn};
use crate::protocol::{ActivityKind, arc_week};
use crate::schedule::{Occurrence, Status};
use crate::time::Zone;

/// Minutes an entry may last.
pub const MINUTES: std::ops::RangeInclusive<u32> = 1..=600;
/// The longest note, in bytes of UTF-8.
pub const MAX_NOTE_BYTES: usize = 16 * 1024;
/// How far in the future a start may lie: a phone's clock runs fast.
pub const CLOCK_SKEW: SignedDuration = SignedDuration::from_mins(5);

/// The practices every tenant may log; protocols add their own.
pub const BUILT_IN_KINDS: &[&str] = &[
    "self-compassion-break",
    "soothing-touch",
    "journaling-reframe",
    "loving-kindness",
    "written-integration",
    "formal-meditation",
    "integration-session",
];

/// The kind an activity is completed by, if practice can complete it.
pub fn kind_of_activity(kind: &ActivityKind) -> Option<&str> {
    match kind {
        ActivityKind::Practice { practice } => Some(practice),
        ActivityKind::IntegrationSession => Some("integration-session"),
        ActivityKind::Assessment { .. } | ActivityKind::Task => None,
    }
}

/// The stored event id of an entry: one per tenant, participant and the
/// client's entry id, so that a retried `LogPractice` is the same event.
pub fn entry_event_id(participant_key: Uuid, entry_id: Uuid) -> Uuid {
    Uuid::new_v5(&participant_key, format!("entry/{entry_id}").as_bytes())
}

/// The stored event id of a correction, from the caller's request id.
pub fn correction_event_id(participant_key: Uuid, entry_id: Uuid, request_id: Uuid) -> Uuid {
    Uuid::new_v5(
        &participant_key,
        format!("correction/{entry_id}/{request_id}").as_bytes(),
    )
}

/// Checks a note's bytes: valid UTF-8, at most `MAX_NOTE_BYTES`. An empty
/// note is no note.
pub fn validate_note(bytes: &[u8]) -> Result<Option<&str>, Error> {
    if bytes.len() > MAX_NOTE_BYTES {
        return Err(Error::invalid("note", "must be at most 16 KiB of UTF-8"));
    }
    let text =
        std::str::from_utf8(bytes).map_err(|_| Error::invalid("note", "must be valid UTF-8"))?;
    Ok((!text.is_empty()).then_some(text))
}

/// A note as stored: encrypted by the service with the participant's data
/// key. Opaque to the domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedNote {
    pub key_id: Uuid,
    /// Base64.
    pub nonce: String,
    /// Base64, with the authentication tag.
    pub ciphertext: String,
}

/// What an entry says. A correction restates all of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Content {
    pub kind: String,
    pub started_at: Timestamp,
    /// The participant's UTC offset when they started, in seconds: their
    /// local day is the one that counts for streaks and arc weeks.
    pub utc_offset_seconds: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<Zone>,
    pub minutes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurrence_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<SealedNote>,
}

impl Content {
    /// The participant's local date at the start.
    pub fn local_date(&self) -> Date {
        let offset = Offset::from_seconds(self.utc_offset_seconds).unwrap_or(Offset::UTC);
        offset.to_datetime(self.started_at).date()
    }
}

/// The limits an entry is checked against, from configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How far back an entry may start.
    pub backdating: SignedDuration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            backdating: SignedDuration::from_hours(30 * 24),
        }
    }
}

/// Validates what a client says it practised, at `now`. `kind_known` says
/// whether the tenant may log its kind (the built-ins and its protocols').
pub fn validate(
    content: &Content,
    now: Timestamp,
    limits: &Limits,
    kind_known: bool,
) -> Result<(), Error> {
    crate::protocol::validate_slug("kind", &content.kind)?;
    if !kind_known {
        return Err(Error::invalid(
            "kind",
            "is not a practice kind of Tend or of any of this tenant's protocols",
        ));
    }
    if !MINUTES.contains(&content.minutes) {
        return Err(Error::invalid("minutes", "must be between 1 and 600"));
    }
    if content.started_at > crate::time::shift(now, CLOCK_SKEW) {
        return Err(Error::invalid(
            "started_at",
            "is in the future (more than 5 minutes ahead of the server's clock)",
        ));
    }
    if content.started_at < crate::time::shift(now, -limits.backdating) {
        return Err(Error::invalid(
            "started_at",
            format!(
                "is older than the backdating limit of {} days",
                limits.backdating.as_hours() / 24
            ),
        ));
    }
    Ok(())
}

// ---- State ----

/// One participant's practice log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Log {
    /// Shared, so that a copy of the log (a kept fold handed out while a
    /// copy stays kept) is a pointer, not every entry; the map is copied
    /// when a copy still held elsewhere changes, and an entry when it does.
    pub entries: Arc<BTreeMap<Uuid, Arc<Entry>>>,
    /// The live entries by start, then id: what linking walks in order,
    /// kept as entries change rather than sorted at every round.
    live: Arc<BTreeMap<(Timestamp, Uuid), Arc<Entry>>>,
    /// When the participant's notes were erased, if they were.
    pub notes_erased_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub entry_id: Uuid,
    /// As logged first.
    pub logged: Content,
    /// As it stands after corrections.
    pub current: Content,
    /// 1 as logged, +1 per correction.
    pub revision: u32,
    /// The request ids of corrections applied, with the content each set.
    pub corrections: BTreeMap<Uuid, Content>,
    pub retracted_at: Option<Timestamp>,
}

impl Entry {
    pub fn is_live(&self) -> bool {
        self.retracted_at.is_none()
    }
}

impl Log {
    /// Entries not retracted, in the order they started.
    pub fn live(&self) -> Vec<&Entry> {
        self.live.values().map(Arc::as_ref).collect()
    }

    /// Applies `change` to the entry, if there is one, and keeps it in the
    /// live entries by start as it now stands.
    fn change(&mut self, entry_id: Uuid, change: impl FnOnce(&mut Entry)) {
        let Some(slot) = Arc::make_mut(&mut self.entries).get_mut(&entry_id) else {
            return;
        };
        let before = slot
            .is_live()
            .then_some((slot.current.started_at, entry_id));
        change(Arc::make_mut(slot));
        let after = slot.is_live().then(|| slot.clone());
        let live = Arc::make_mut(&mut self.live);
        if let Some(key) = before {
            live.remove(&key);
        }
        if let Some(entry) = after {
            live.insert((entry.current.started_at, entry_id), entry);
        }
    }
}

// ---- Events ----

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Logged(PracticeLogged),
    Corrected(PracticeCorrected),
    Retracted(PracticeRetracted),
    NotesErased(PracticeNotesErased),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PracticeLogged {
    pub entry_id: Uuid,
    #[serde(flatten)]
    pub content: Content,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PracticeCorrected {
    pub entry_id: Uuid,
    pub request_id: Uuid,
    #[serde(flatten)]
    pub content: Content,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PracticeRetracted {
    pub entry_id: Uuid,
    pub retracted_at: Timestamp,
}

/// The participant's data keys were destroyed: every note they wrote is
/// unreadable from now on. Minutes, kinds and times stay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PracticeNotesErased {
    pub erased_at: Timestamp,
}

event_codec! {
    for Event {
        Logged => "PracticeLogged",
        Corrected => "PracticeCorrected",
        Retracted => "PracticeRetracted",
        NotesErased => "PracticeNotesErased",
    }
}

/// The practice types for the event catalogue: their flattened `Content`
/// fields included.
pub fn catalogue() -> Vec<crate::catalogue::EventType> {
    // serde hands a flattened struct's fields to no one: these two are
    // spelled out, and a test compares them with a written body.
    let content = crate::catalogue::fields::<Content>();
    let mut types = Event::catalogue();
    for t in &mut types {
        let own: &[&'static str] = match t.name {
            "PracticeLogged" => &["entry_id"],
            "PracticeCorrected" => &["entry_id", "request_id"],
            _ => continue,
        };
        t.fields = own.iter().chain(&content).copied().collect();
    }
    types
}

pub fn evolve(mut log: Log, event: &Event) -> Log {
    match event {
        Event::Logged(e) => {
            if !log.entries.contains_key(&e.entry_id) {
                let entry = Arc::new(Entry {
                    entry_id: e.entry_id,
                    logged: e.content.clone(),
                    current: e.content.clone(),
                    revision: 1,
                    corrections: BTreeMap::new(),
                    retracted_at: None,
                });
                Arc::make_mut(&mut log.live)
                    .insert((e.content.started_at, e.entry_id), entry.clone());
                Arc::make_mut(&mut log.entries).insert(e.entry_id, entry);
            }
        }
        Event::Corrected(e) => log.change(e.entry_id, |entry| {
            entry.current = e.content.clone();
            entry.revision += 1;
            entry.corrections.insert(e.request_id, e.content.clone());
        }),
        Event::Retracted(e) => log.change(e.entry_id, |entry| {
            entry.retracted_at.get_or_insert(e.retracted_at);
            entry.revision += 1;
        }),
        Event::NotesErased(e) => {
            log.notes_erased_at.get_or_insert(e.erased_at);
        }
    }
    log
}

// ---- decide ----

#[derive(Debug, Clone)]
pub enum Command {
    Log {
        entry_id: Uuid,
        content: Content,
    },
    Correct {
        entry_id: Uuid,
        request_id: Uuid,
        content: Content,
    },
    Retract {
        entry_id: Uuid,
        now: Timestamp,
    },
    EraseNotes {
        now: Timestamp,
    },
}

/// What a command causes. Content must have passed `validate` (it needs the
/// clock and the tenant's kinds, which the shell has).
pub fn decide(log: &Log, command: Command) -> Result<Vec<Event>, Error> {
    match command {
        Command::Log { entry_id, content } => {
            if let Some(existing) = log.entries.get(&entry_id) {
                return if existing.logged == content {
                    Ok(vec![])
                } else {
                    Err(already_used())
                };
            }
            if content.note.is_some() && log.notes_erased_at.is_some() {
                return Err(erased());
            }
            Ok(vec![Event::Logged(PracticeLogged { entry_id, content })])
        }
        Command::Correct {
            entry_id,
            request_id,
            content,
        } => {
            let entry = log
                .entries
                .get(&entry_id)
                .ok_or_else(|| Error::not_found("entry"))?;
            if let Some(applied) = entry.corrections.get(&request_id) {
                return if *applied == content {
                    Ok(vec![])
                } else {
                    Err(Error::already_exists(
                        "request_id",
                        "was already used for a different correction",
                    ))
                };
            }
            if !entry.is_live() {
                return Err(Error::refused(
                    "entry_id",
                    "the entry was retracted: log a new one instead",
                ));
            }
            if content.note.is_some() && log.notes_erased_at.is_some() {
                return Err(erased());
            }
            Ok(vec![Event::Corrected(PracticeCorrected {
                entry_id,
                request_id,
                content,
            })])
        }
        Command::Retract { entry_id, now } => {
            let entry = log
                .entries
                .get(&entry_id)
                .ok_or_else(|| Error::not_found("entry"))?;
            if !entry.is_live() {
                return Ok(vec![]);
            }
            Ok(vec![Event::Retracted(PracticeRetracted {
                entry_id,
                retracted_at: now,
            })])
        }
        Command::EraseNotes { now } => {
            if log.notes_erased_at.is_some() {
                return Ok(vec![]);
            }
            Ok(vec![Event::NotesErased(PracticeNotesErased {
                erased_at: now,
            })])
        }
    }
}

decider! {
    /// A participant's practice log as a decider.
    Aggregate: Log, Command => Event
}

fn already_used() -> Error {
    Error::already_exists("entry_id", "was already used for a different entry")
}

fn erased() -> Error {
    Error::refused(
        "note",
        "the participant's notes were erased at their request: no new notes are kept",
    )
}

// ---- Links to the schedule ----

/// How practice entries complete a participant's occurrences. Returns the
/// events that bring the enrollments' links in line with the log:
///
/// - an entry that names an occurrence completes it, if the kinds match,
///   the occurrence is not cancelled and the entry did not start before its
///   window opened. Starting after the window closed makes it *late*;
/// - an entry that names none completes the earliest open occurrence of its
///   kind whose window contains its start;
/// - one entry completes at most one occurrence and one occurrence is
///   completed by at most one entry; entries are matched in the order they
///   started, and existing links are kept while they still hold;
/// - a link whose entry was retracted, or corrected so it no longer fits,
///   is withdrawn; occurrences completed directly by a partner are never
///   touched.
///
/// `schedules` holds each enrollment with its occurrences at `now`.
pub fn link(log: &Log, schedules: &[(&Enrollment, Vec<Occurrence>)]) -> Vec<enrollment::Event> {
    let live: Vec<&Entry> = log.live();
    let mut events = Vec::new();
    let mut used: BTreeSet<Uuid> = BTreeSet::new();
    let mut taken: BTreeSet<Uuid> = BTreeSet::new();

    // Existing links: kept while they hold.
    for (enrollment, schedule) in schedules {
        for o in schedule {
            let Some(&(entry_id, revision)) = enrollment.completed_by.get(&o.id) else {
                if o.completed_at.is_some() {
                    taken.insert(o.id);
                }
                continue;
            };
            let holds = log.entries.get(&entry_id).is_some_and(|entry| {
                entry.is_live()
                    && !used.contains(&entry_id)
                    && match entry.current.occurrence_id {
                        Some(named) => named == o.id && fits_named(entry, o),
                        None => fits_window(entry, o),
                    }
                    && entry.current.started_at == o.completed_at.unwrap_or(Timestamp::MIN)
            });
            if holds {
                used.insert(entry_id);
                taken.insert(o.id);
            } else {
                let entry_revision = log.entries.get(&entry_id).map_or(revision, |e| e.revision);
                events.push(enrollment::Event::CompletionWithdrawn(
                    OccurrenceCompletionWithdrawn {
                        enrollment_id: enrollment.id,
                        occurrence_id: o.id,
                        entry_id,
                        entry_revision,
                    },
                ));
            }
        }
    }

    let complete = |enrollment: &Enrollment, o: &Occurrence, entry: &Entry| {
        enrollment::Event::Completed(OccurrenceCompleted {
            enrollment_id: enrollment.id,
            occurrence_id: o.id,
            completed_at: entry.current.started_at,
            entry_id: Some(entry.entry_id),
            entry_revision: Some(entry.revision),
        })
    };

    // The occurrences by id, and those practice can complete by when
    // their windows open (then id: the order candidates are chosen in),
    // so that each entry looks only at the windows that could hold it
    // rather than the whole schedule.
    let by_id: BTreeMap<Uuid, (&Enrollment, &Occurrence)> = schedules
        .iter()
        .flat_map(|(enrollment, schedule)| schedule.iter().map(move |o| (o.id, (*enrollment, o))))
        .collect();
    let mut windows: Vec<(&Enrollment, &Occurrence)> = schedules
        .iter()
        .flat_map(|(enrollment, schedule)| schedule.iter().map(move |o| (*enrollment, o)))
        .filter(|(_, o)| o.status != Status::Cancelled && kind_of_activity(&o.kind).is_some())
        .collect();
    windows.sort_by_key(|(_, o)| (o.at, o.id));
    let widest = windows
        .iter()
        .map(|(_, o)| o.closes_at.duration_since(o.at))
        .max()
        .unwrap_or_default();

    // Entries that name their occurrence come first: they say what they
    // are for.
    for entry in &live {
        let Some(named) = entry.current.occurrence_id else {
            continue;
        };
        if used.contains(&entry.entry_id) {
            continue;
        }
        if let Some(&(enrollment, o)) = by_id.get(&named)
            && !taken.contains(&o.id)
            && fits_named(entry, o)
        {
            events.push(complete(enrollment, o, entry));
            used.insert(entry.entry_id);
            taken.insert(o.id);
        }
    }

    for entry in &live {
        if entry.current.occurrence_id.is_some() || used.contains(&entry.entry_id) {
            continue;
        }
        // Only a window that opened by the start, and at most the widest
        // window before it, can hold it; the first that does is the one.
        let start = entry.current.started_at;
        let from = windows.partition_point(|(_, o)| o.at.duration_since(start) < -widest);
        let to = windows.partition_point(|(_, o)| o.at <= start);
        let candidate = windows[from..to.max(from)]
            .iter()
            .copied()
            .find(|(_, o)| !taken.contains(&o.id) && fits_window(entry, o));
        if let Some((enrollment, o)) = candidate {
            events.push(complete(enrollment, o, entry));
            used.insert(entry.entry_id);
            taken.insert(o.id);
        }
    }
    events
}

fn same_kind(entry: &Entry, o: &Occurrence) -> bool {
    kind_of_activity(&o.kind) == Some(entry.current.kind.as_str())
}

fn fits_named(entry: &Entry, o: &Occurrence) -> bool {
    same_kind(entry, o) && o.status != Status::Cancelled && entry.current.started_at >= o.at
}

fn fits_window(entry: &Entry, o: &Occurrence) -> bool {
    same_kind(entry, o)
        && o.status != Status::Cancelled
        && o.at <= entry.current.started_at
        && entry.current.started_at < o.closes_at
}

/// Why a named occurrence cannot be completed by an entry, if it cannot:
/// checked when the entry is logged, so that the client hears at once.
pub fn check_named(
    content: &Content,
    kind: &ActivityKind,
    cancelled: bool,
    opens_at: Timestamp,
) -> Result<(), Error> {
    match kind_of_activity(kind) {
        None => Err(Error::invalid(
            "occurrence_id",
            "names an assessment or a task: practice cannot complete it",
        )),
        Some(k) if k != content.kind => Err(Error::invalid(
            "occurrence_id",
            format!("is a `{k}` occurrence, not `{}`", content.kind),
        )),
        Some(_) if cancelled => Err(Error::refused(
            "occurrence_id",
            "the occurrence was cancelled by a pause or withdrawal",
        )),
        Some(_) if content.started_at < opens_at => Err(Error::invalid(
            "started_at",
            "is before the named occurrence's window opens",
        )),
        Some(_) => Ok(()),
    }
}

// ---- Summary ----

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub entries: u32,
    pub minutes: u64,
    /// By arc week (0: the session day), when there is a session to count
    /// from; ascending.
    pub weeks: Vec<Tally<i32>>,
    /// By kind, ascending.
    pub kinds: Vec<Tally<String>>,
    /// Consecutive local days with practice, ending today or yesterday.
    pub streak_days: u32,
    pub last_practice_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tally<K> {
    pub key: K,
    pub entries: u32,
    pub minutes: u64,
}

/// Sums the live entries. `session` is the session's local date, if the
/// participant has one; `today` is the participant's local date now.
pub fn summarize(log: &Log, session: Option<Date>, today: Date) -> Summary {
    let mut weeks: BTreeMap<i32, (u32, u64)> = BTreeMap::new();
    let mut kinds: BTreeMap<String, (u32, u64)> = BTreeMap::new();
    let mut days: BTreeSet<Date> = BTreeSet::new();
    let mut summary = Summary::default();
    for entry in log.live() {
        let c = &entry.current;
        let minutes = u64::from(c.minutes);
        summary.entries += 1;
        summary.minutes += minutes;
        let date = c.local_date();
        days.insert(date);
        if let Some(session) = session
            && let Ok(span) = session.until(date)
        {
            let w = weeks.entry(arc_week(span.get_days())).or_default();
            w.0 += 1;
            w.1 += minutes;
        }
        let k = kinds.entry(c.kind.clone()).or_default();
        k.0 += 1;
        k.1 += minutes;
        summary.last_practice_at = summary.last_practice_at.max(Some(c.started_at));
    }
    summary.weeks = tallies(weeks);
    summary.kinds = tallies(kinds);
    summary.streak_days = streak(&days, today);
    summary
}

fn tallies<K>(map: BTreeMap<K, (u32, u64)>) -> Vec<Tally<K>> {
    map.into_iter()
        .map(|(key, (entries, minutes))| Tally {
            key,
            entries,
            minutes,
        })
        .collect()
}

/// Consecutive days ending today, or yesterday if nothing yet today (the
/// day is not over).
pub(crate) fn streak(days: &BTreeSet<Date>, today: Date) -> u32 {
    let mut day = if days.contains(&today) {
        today
    } else {
        match today.yesterday() {
            Ok(d) if days.contains(&d) => d,
            _ => return 0,
        }
    };
    let mut n = 0;
    while days.contains(&day) {
        n += 1;
        match day.yesterday() {
            Ok(d) => day = d,
            Err(_) => break,
        }
    }
    n
}

#[cfg(test)]
mod tests;
