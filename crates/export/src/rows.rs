//! One participant's events, folded by the domain's own deciders, into the
//! rows of every dataset. Pure: no IO, no clock (the export's instant is
//! given), so the same events give the same rows.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::Timestamp;
use jiff::civil::{Date, Time};
use jiff::tz::Offset;
use tend_domain::arc::{ArcEnrollment, ClearReason, FlagEvent, FlagKind, Phase};
use tend_domain::assessment::{self, Instrument, Ratio, Verdict};
use tend_domain::consent::Purpose;
use tend_domain::enrollment::{self, Enrollment, Participant};
use tend_domain::practice;
use tend_domain::protocol::{ActivityKind, ProtocolSet, arc_week};
use tend_domain::schedule::{self, Occurrence, Status};
use tend_domain::time::{Zone, zoned};
use uuid::Uuid;

use crate::table::{Row, Value};

/// A participant's events up to the export's position, each with its
/// position, per stream in stream order.
#[derive(Debug, Default)]
pub struct History {
    /// The participant's opaque id (their streams' key).
    pub key: Uuid,
    pub participant: Vec<(u64, enrollment::Event)>,
    pub practice: Vec<(u64, practice::Event)>,
    pub assessment: Vec<(u64, assessment::Event)>,
    pub flags: Vec<(u64, FlagEvent)>,
}

impl History {
    pub fn events(&self) -> usize {
        self.participant.len() + self.practice.len() + self.assessment.len() + self.flags.len()
    }
}

/// The tenant's instrument versions (the built-ins answer for themselves).
#[derive(Debug, Clone, Default)]
pub struct InstrumentSet {
    versions: BTreeMap<(String, u32), Instrument>,
}

impl InstrumentSet {
    pub fn insert(&mut self, instrument: Instrument) {
        self.versions
            .insert((instrument.id.clone(), instrument.version), instrument);
    }

    pub fn get(&self, id: &str, version: u32) -> Option<&Instrument> {
        match assessment::built_in(id) {
            Some(i) if i.version == version => Some(i),
            Some(_) => None,
            None => self.versions.get(&(id.to_owned(), version)),
        }
    }

    /// Every instrument version, built-ins first.
    pub fn all(&self) -> impl Iterator<Item = &Instrument> {
        assessment::built_ins().iter().chain(self.versions.values())
    }
}

/// What the rows depend on besides the participant's events.
pub struct Context<'a> {
    pub protocols: &'a ProtocolSet,
    pub instruments: &'a InstrumentSet,
    /// The recipient's pseudonym of an id.
    pub pseudonym: &'a (dyn Fn(Uuid) -> Uuid + Sync),
    /// The instant of the export's position: "now" for the phase.
    pub as_of: Timestamp,
    /// Dates and instants left out.
    pub shift_dates: bool,
    /// Only rows changed after this position (0: all).
    pub since: u64,
    pub include_retracted: bool,
    /// Reference SDs of instruments' totals given for this export, over
    /// the instrument's own.
    pub sd: &'a BTreeMap<String, assessment::Sourced>,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("as_of", &self.as_of)
            .field("shift_dates", &self.shift_dates)
            .field("since", &self.since)
            .finish_non_exhaustive()
    }
}

/// One participant's rows.
#[derive(Debug, Default)]
pub struct Rows {
    pub participants: Vec<Row>,
    pub occurrences: Vec<Row>,
    pub practice: Vec<Row>,
    pub assessments: Vec<Row>,
    pub flags: Vec<Row>,
    /// By instrument: the waves of the wide table.
    pub wide: BTreeMap<String, Vec<Wave>>,
}

/// One administration in a wide table.
#[derive(Debug, Clone)]
pub struct Wave {
    pub administered_at: Value,
    pub day: Value,
    pub total: f64,
    pub subscales: BTreeMap<String, f64>,
}

impl Context<'_> {
    fn id(&self, id: Uuid) -> Value {
        Value::Uuid((self.pseudonym)(id))
    }

    fn date(&self, date: Date) -> Value {
        if self.shift_dates {
            Value::Null
        } else {
            Value::Date(date)
        }
    }

    fn instant(&self, at: Timestamp, offset_seconds: i32) -> Value {
        if self.shift_dates {
            Value::Null
        } else {
            Value::Instant(at, offset_seconds)
        }
    }

    fn in_zone(&self, at: Timestamp, zone: &Zone) -> Value {
        self.instant(at, zoned(zone, at).offset().seconds())
    }
}

/// Whether a participant's rows are exported: they share for research, or
/// were erased while they did (their numbers stay).
fn in_export(p: &Participant, shared_when_erased: bool) -> bool {
    p.consent.grants(Purpose::ResearchSharing) || (p.erased.is_some() && shared_when_erased)
}

/// The participant's current enrollment: the latest (as the arc takes it).
fn current(p: &Participant) -> Option<&Enrollment> {
    p.enrollments.iter().max_by_key(|e| (e.enrolled_at, e.id))
}

/// The arc's view of an enrollment, for its phase and arc start.
pub fn arc_enrollment(e: &Enrollment) -> ArcEnrollment {
    let r = e.current();
    ArcEnrollment {
        id: e.id,
        protocol_id: e.protocol_id.clone(),
        protocol_version: r.protocol_version,
        session: r.session,
        zone: r.zone.clone(),
        session_zone: (r.session_zone != r.zone).then(|| r.session_zone.clone()),
        arc_days: e.arc_days,
        enrolled_at: e.enrolled_at,
        paused_at: e
            .pauses
            .last()
            .filter(|p| p.until.is_none())
            .map(|p| p.from),
        withdrawn_at: e.withdrawn_at,
        occurrences: BTreeMap::new(),
    }
}

fn i64_of(n: i128) -> Value {
    i64::try_from(n).map_or(Value::Null, Value::Integer)
}

fn int(n: impl Into<i64>) -> Value {
    Value::Integer(n.into())
}

fn time_of(at: Timestamp, offset_seconds: i32) -> Time {
    Offset::from_seconds(offset_seconds)
        .unwrap_or(Offset::UTC)
        .to_datetime(at)
        .time()
        .with()
        .subsec_nanosecond(0)
        .build()
        .unwrap_or(Time::midnight())
}

/// A reliable change verdict's name, as exports write it.
pub fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::ReliablyImproved => "reliably_improved",
        Verdict::NoReliableChange => "no_reliable_change",
        Verdict::ReliablyWorse => "reliably_worse",
    }
}

/// An occurrence's status as the log recorded it. A window that closed
/// stays open until the scheduler records it missed, so that outputs at a
/// position do not depend on when they are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Open,
    Done,
    Late,
    Missed,
    Cancelled,
}

impl Recorded {
    pub fn of(o: &Occurrence) -> Self {
        match o.status {
            Status::Done => Self::Done,
            Status::Late => Self::Late,
            Status::Cancelled => Self::Cancelled,
            Status::Missed if o.missed_recorded => Self::Missed,
            Status::Missed | Status::Due | Status::Upcoming => Self::Open,
        }
    }
}

/// An enrollment's occurrences that the log recorded due or completed
/// (exactly what the arc's adherence counts), placed as of `as_of`; `None`
/// when the log does not hold its protocol version.
pub fn recorded_occurrences(
    e: &Enrollment,
    protocols: &ProtocolSet,
    as_of: Timestamp,
) -> Option<Vec<Occurrence>> {
    let mut all = schedule::occurrences(e, protocols, as_of)?;
    all.retain(|o| o.due_recorded || o.completed_at.is_some());
    Some(all)
}

/// A participant's practice log up to a position, with the position that
/// last touched each entry.
#[derive(Debug, Default)]
pub struct Practised {
    pub log: practice::Log,
    pub entry_pos: HashMap<Uuid, u64>,
}

/// Folds the practice stream's events up to `upto`.
pub fn practised(history: &History, upto: u64) -> Practised {
    let mut out = Practised::default();
    for (pos, e) in history.practice.iter().filter(|(p, _)| *p <= upto) {
        use practice::Event as E;
        match e {
            E::Logged(x) => {
                out.entry_pos.insert(x.entry_id, *pos);
            }
            E::Corrected(x) => {
                out.entry_pos.insert(x.entry_id, *pos);
            }
            E::Retracted(x) => {
                out.entry_pos.insert(x.entry_id, *pos);
            }
            E::NotesErased(_) => {}
        }
        out.log = practice::evolve(std::mem::take(&mut out.log), e);
    }
    out
}

/// A participant's assessments up to a position, with the position that
/// last touched each instrument's administrations (a new baseline or a
/// rescoring changes every comparison with it) and each submission.
#[derive(Debug, Default)]
pub struct Assessed {
    pub record: assessment::Record,
    pub instrument_pos: HashMap<String, u64>,
    pub submitted_pos: HashMap<Uuid, u64>,
}

impl Assessed {
    /// The instruments administered, by id.
    pub fn instruments(&self) -> BTreeSet<&str> {
        self.record
            .assessments
            .values()
            .map(|a| a.instrument_id.as_str())
            .collect()
    }

    /// The last position that changed the administrations of
    /// `instrument`, or `floor` if that is later.
    pub fn changed(&self, instrument: &str, floor: u64) -> u64 {
        self.instrument_pos
            .get(instrument)
            .copied()
            .unwrap_or(0)
            .max(floor)
    }
}

/// Folds the assessment stream's events up to `upto`.
pub fn assessed(history: &History, upto: u64) -> Assessed {
    let mut out = Assessed::default();
    for (pos, e) in history.assessment.iter().filter(|(p, _)| *p <= upto) {
        out.record = assessment::evolve(std::mem::take(&mut out.record), e);
        use assessment::Event as A;
        let instrument = match e {
            A::BaselineDesignated(x) => Some(x.instrument_id.clone()),
            A::Submitted(x) => {
                out.submitted_pos.insert(x.assessment_id, *pos);
                Some(x.instrument_id.clone())
            }
            // A scoring (first or rescored) or a safety signal changes
            // its administration's rows.
            A::Scored(x) => out
                .record
                .assessments
                .get(&x.assessment_id)
                .map(|a| a.instrument_id.clone()),
            A::SafetySignal(x) => Some(x.instrument_id.clone()),
        };
        if let Some(i) = instrument {
            out.instrument_pos.insert(i, *pos);
        }
    }
    out
}

/// Folds one participant's history into rows; `None` when they are not in
/// the export (no research sharing when the log stood at the position, and
/// not erased while sharing).
pub fn rows(history: &History, ctx: &Context<'_>) -> Option<Rows> {
    // The participant stream: enrollments, consent, erasure, with the
    // position that last touched each thing.
    let mut p = Participant::default();
    let mut shared_when_erased = false;
    // Anything that moves days or statuses of a whole enrollment.
    let mut timing_pos = 0;
    let mut occurrence_pos: HashMap<Uuid, u64> = HashMap::new();
    // Links made or withdrawn by the scheduler change a practice row.
    let mut linked_pos: HashMap<Uuid, u64> = HashMap::new();
    // Whether they shared as the log stood at `since`: someone who began
    // sharing after it gets every row, none of which an earlier export
    // could hold.
    let mut shared_at_since = false;
    for (pos, e) in &history.participant {
        use enrollment::Event as E;
        if *pos <= ctx.since {
            shared_at_since = match e {
                E::Erased(_) => false,
                _ => shared_at_since,
            };
        }
        match e {
            E::Erased(_) => {
                if p.erased.is_none() {
                    shared_when_erased = p.consent.grants(Purpose::ResearchSharing);
                }
            }
            E::Due(x) => {
                occurrence_pos.insert(x.occurrence_id, *pos);
            }
            E::Completed(x) => {
                occurrence_pos.insert(x.occurrence_id, *pos);
                if let Some(entry) = x.entry_id {
                    linked_pos.insert(entry, *pos);
                }
            }
            E::Missed(x) => {
                occurrence_pos.insert(x.occurrence_id, *pos);
            }
            E::CompletionWithdrawn(x) => {
                occurrence_pos.insert(x.occurrence_id, *pos);
                linked_pos.insert(x.entry_id, *pos);
            }
            E::ConsentRecorded(_) | E::ConsentWithdrawn(_) => {}
            _ => timing_pos = *pos,
        }
        p = enrollment::evolve(p, e);
        if *pos <= ctx.since {
            shared_at_since = in_export(&p, shared_when_erased);
        }
    }
    let shares = in_export(&p, shared_when_erased);
    if !shares {
        return None;
    }
    let since = if shared_at_since { ctx.since } else { 0 };
    let changed = |position: u64| position > since;
    let mut out = Rows::default();
    let me = ctx.id(history.key);
    let current = current(&p);
    let arc = current.map(arc_enrollment);
    let session_date = arc.as_ref().map(|a| a.session_date());
    let day_of = |date: Date| -> Option<i32> {
        session_date.map(|s| s.until(date).map_or(0, |span| span.get_days()))
    };
    let zone_of_participant = current.map(|e| e.current().zone.clone());
    let day_of_instant = |at: Timestamp| -> Option<i32> {
        zone_of_participant
            .as_ref()
            .and_then(|z| day_of(zoned(z, at).date()))
    };
    let offset_of = |at: Timestamp| -> i32 {
        zone_of_participant
            .as_ref()
            .map_or(0, |z| zoned(z, at).offset().seconds())
    };

    // participants: always every row (the phase moves with time).
    {
        let grants = |purpose| Value::Boolean(p.consent.grants(purpose));
        let phase = arc
            .as_ref()
            .map_or(Phase::NotEnrolled, |a| a.phase(ctx.as_of));
        let status = current.map(|e| {
            if e.withdrawn_at.is_some() {
                "withdrawn"
            } else if e.is_paused() {
                "paused"
            } else {
                "active"
            }
        });
        out.participants.push(vec![
            me.clone(),
            Value::Boolean(p.erased.is_some()),
            Value::opt(current, |e| ctx.id(e.id)),
            Value::opt(current, |e| Value::Code(e.protocol_id.clone())),
            Value::opt(current, |e| int(e.current().protocol_version)),
            Value::opt(current, |e| ctx.date(e.current().session.date())),
            Value::opt(zone_of_participant.as_ref(), |z| {
                Value::Code(z.name().to_owned())
            }),
            Value::opt(current, |e| int(e.arc_days.0)),
            Value::opt(current, |e| int(e.arc_days.1)),
            Value::opt(status, Value::Enum),
            Value::Enum(phase.name()),
            grants(Purpose::Protocol),
            grants(Purpose::PracticeNotes),
            grants(Purpose::Questionnaires),
            grants(Purpose::ResearchSharing),
            grants(Purpose::ClinicianSharing),
        ]);
    }

    // occurrences: every one that came due or was completed.
    let mut completed_by: HashMap<Uuid, Uuid> = HashMap::new();
    for e in &p.enrollments {
        for (occurrence, (entry, _)) in &e.completed_by {
            completed_by.insert(*entry, *occurrence);
        }
        // Days count from this enrollment's current session (for the
        // current enrollment: the arc's own rule).
        let session = e.current().session.date();
        let day_of = |date: Date| session.until(date).map_or(0, |span| span.get_days());
        let Some(recorded) = recorded_occurrences(e, ctx.protocols, ctx.as_of) else {
            // A protocol version the log does not hold: nothing to place.
            continue;
        };
        for o in &recorded {
            let pos = occurrence_pos
                .get(&o.id)
                .copied()
                .unwrap_or(0)
                .max(timing_pos);
            if !changed(pos) {
                continue;
            }
            let status = match Recorded::of(o) {
                Recorded::Done => "done",
                Recorded::Late => "late",
                Recorded::Cancelled => "cancelled",
                Recorded::Missed => "missed",
                Recorded::Open => "open",
            };
            let (kind, detail) = match &o.kind {
                ActivityKind::Practice { practice } => ("practice", Some(practice.clone())),
                ActivityKind::Assessment { instrument } => ("assessment", Some(instrument.clone())),
                ActivityKind::IntegrationSession => ("integration_session", None),
                ActivityKind::Task => ("task", None),
            };
            let day = day_of(o.local_date);
            out.occurrences.push(vec![
                me.clone(),
                ctx.id(e.id),
                ctx.id(o.id),
                Value::Code(o.activity_key.clone()),
                Value::Enum(kind),
                Value::opt(detail, Value::Code),
                ctx.date(o.local_date),
                int(day),
                int(arc_week(day)),
                Value::Time(o.local_time.civil()),
                ctx.in_zone(o.at, &o.zone),
                ctx.in_zone(o.closes_at, &o.zone),
                Value::Code(o.zone.name().to_owned()),
                int(if kind == "practice" {
                    o.target_minutes
                } else {
                    0
                }),
                Value::Enum(status),
                Value::opt(o.completed_at, |c| ctx.in_zone(c, &o.zone)),
                Value::opt(
                    o.completed_at.map(|c| day_of(zoned(&o.zone, c).date())),
                    int,
                ),
                int(o.protocol_version),
            ]);
        }
    }

    // practice: entries as they stand.
    let Practised { log, entry_pos } = practised(history, u64::MAX);
    let mut entries: Vec<&practice::Entry> = log.entries.values().map(|e| &**e).collect();
    entries.sort_by_key(|e| (e.current.started_at, e.entry_id));
    for entry in entries {
        let retracted = entry.retracted_at.is_some();
        if retracted && !ctx.include_retracted && ctx.since == 0 {
            continue;
        }
        let pos = entry_pos
            .get(&entry.entry_id)
            .copied()
            .unwrap_or(0)
            .max(linked_pos.get(&entry.entry_id).copied().unwrap_or(0))
            .max(timing_pos);
        if !changed(pos) {
            continue;
        }
        let c = &entry.current;
        let day = day_of(c.local_date());
        out.practice.push(vec![
            me.clone(),
            ctx.id(entry.entry_id),
            Value::Code(c.kind.clone()),
            ctx.instant(c.started_at, c.utc_offset_seconds),
            ctx.date(c.local_date()),
            Value::Time(time_of(c.started_at, c.utc_offset_seconds)),
            Value::opt(day, int),
            Value::opt(day.map(arc_week), int),
            int(c.minutes),
            Value::opt(completed_by.get(&entry.entry_id).copied(), |o| ctx.id(o)),
            Value::Boolean(entry.revision > 1),
            Value::Boolean(retracted),
        ]);
    }

    // assessments: each scored administration, total then subscales.
    let assessed = assessed(history, u64::MAX);
    let record = &assessed.record;
    let arc_start = arc.as_ref().map(ArcEnrollment::arc_start);
    for instrument_id in assessed.instruments() {
        let instrument_changed = changed(assessed.changed(instrument_id, timing_pos));
        let baseline = record.baseline(instrument_id, arc_start);
        let mut waves: Vec<Wave> = Vec::new();
        let mut after_baseline = false;
        for a in record.of(instrument_id) {
            let is_baseline = baseline.is_some_and(|b| b.assessment_id == a.assessment_id);
            after_baseline |= is_baseline;
            let Some(scores) = a.latest() else {
                continue;
            };
            let instrument = ctx
                .instruments
                .get(instrument_id, scores.instrument_version);
            let report = match (baseline, instrument) {
                (Some(b), Some(i)) if !is_baseline => {
                    let sd = ctx.sd.get(instrument_id).or(i.sd.as_ref());
                    assessment::compare(i, b, a, sd, i.reliability.as_ref()).ok()
                }
                _ => None,
            };
            let day = day_of_instant(a.administered_at);
            let administered_at = ctx.instant(a.administered_at, offset_of(a.administered_at));
            if after_baseline && (is_baseline || report.is_some()) {
                waves.push(Wave {
                    administered_at: administered_at.clone(),
                    day: Value::opt(day, int),
                    total: scores.total.value,
                    subscales: scores
                        .subscales
                        .iter()
                        .map(|s| (s.key.clone(), s.score.value))
                        .collect(),
                });
            }
            if !instrument_changed {
                continue;
            }
            let row = |scale: &str,
                       score: assessment::Score,
                       band: Value,
                       interpretable: bool,
                       change: Option<&assessment::Change>| {
                let exact =
                    |r: Option<Ratio>, f: fn(Ratio) -> i128| Value::opt(r, |r| i64_of(f(r)));
                let delta = change.map(|c| c.absolute.exact);
                let rc = change.and_then(|c| c.reliable.as_ref());
                vec![
                    me.clone(),
                    ctx.id(a.assessment_id),
                    Value::Code(instrument_id.to_owned()),
                    int(scores.instrument_version),
                    Value::Enum(scores.method.name()),
                    administered_at.clone(),
                    Value::opt(day, int),
                    Value::opt(day.map(arc_week), int),
                    Value::Boolean(is_baseline),
                    Value::Code(scale.to_owned()),
                    Value::Decimal(score.value),
                    i64_of(score.exact.num),
                    i64_of(score.exact.den),
                    band,
                    Value::Boolean(interpretable),
                    Value::opt(change, |c| Value::Decimal(c.absolute.value)),
                    exact(delta, |r| r.num),
                    exact(delta, |r| r.den),
                    Value::opt(change.and_then(|c| c.percent), Value::Decimal),
                    Value::opt(rc.filter(|r| r.rc.is_finite()), |r| Value::Decimal(r.rc)),
                    Value::opt(rc, |r| Value::Enum(verdict(r.verdict))),
                ]
            };
            out.assessments.push(row(
                "total",
                scores.total,
                Value::opt(scores.band.clone(), Value::Code),
                true,
                report.as_ref().map(|r| &r.total),
            ));
            for s in &scores.subscales {
                let change = report.as_ref().and_then(|r| {
                    r.subscales
                        .iter()
                        .find(|(k, _)| *k == s.key)
                        .map(|(_, c)| c)
                });
                // Subscales carry no reliable change: the configured SD is
                // the total's.
                let change = change.map(|c| assessment::Change {
                    reliable: None,
                    ..c.clone()
                });
                out.assessments.push(row(
                    &s.key,
                    s.score,
                    Value::Null,
                    scores.subscales_interpretable,
                    change.as_ref(),
                ));
            }
        }
        if instrument_changed && !waves.is_empty() {
            out.wide.insert(instrument_id.to_owned(), waves);
        }
    }

    // flags: raised, with their clearing.
    struct Flag {
        kind: FlagKind,
        enrollment: Option<Uuid>,
        raised_at: Timestamp,
        cleared: Option<(Timestamp, ClearReason)>,
        pos: u64,
    }
    let mut flags: BTreeMap<Uuid, Flag> = BTreeMap::new();
    for (pos, e) in &history.flags {
        match e {
            FlagEvent::Raised(r) => {
                flags.entry(r.flag_id).or_insert(Flag {
                    kind: r.kind,
                    enrollment: r.enrollment_id,
                    raised_at: r.raised_at,
                    cleared: None,
                    pos: *pos,
                });
            }
            FlagEvent::Cleared(c) => {
                if let Some(f) = flags.get_mut(&c.flag_id) {
                    f.cleared = Some((c.cleared_at, c.reason));
                    f.pos = *pos;
                }
            }
        }
    }
    let mut flags: Vec<(Uuid, Flag)> = flags.into_iter().collect();
    flags.sort_by_key(|(id, f)| (f.raised_at, *id));
    for (id, f) in flags {
        if !changed(f.pos.max(timing_pos)) {
            continue;
        }
        out.flags.push(vec![
            me.clone(),
            ctx.id(id),
            Value::Enum(f.kind.name()),
            Value::opt(f.enrollment, |e| ctx.id(e)),
            ctx.instant(f.raised_at, offset_of(f.raised_at)),
            Value::opt(day_of_instant(f.raised_at), int),
            Value::opt(f.cleared, |(at, _)| ctx.instant(at, offset_of(at))),
            Value::opt(f.cleared.and_then(|(at, _)| day_of_instant(at)), int),
            Value::opt(f.cleared, |(_, reason)| {
                Value::Enum(match reason {
                    ClearReason::Resolved => "resolved",
                    ClearReason::ArcEnded => "arc_ended",
                })
            }),
        ]);
    }
    Some(out)
}
