//! A realistic synthetic cohort: participants enrolled on the built-in
//! protocols, sessions spread so that some have not begun and some have
//! finished, practising as people do (some steadily, some dropping away in
//! weeks +2 and +3 as the critic returns), answering the SCS-SF or SCS when
//! the protocol asks.
//!
//! Every event is decided by the domain's own deciders (enrollment, the
//! scheduler's link-then-tick, practice, assessment), day by day, and
//! appended through the event store, participants interleaved in time, so
//! the log looks like one a clinic would have. Seeded: the same options
//! give the same cohort (event ids aside).
//!
//! Each participant first consents on the demo's consent document (defined
//! once per tenant): to the protocol, notes and questionnaires, nine in ten
//! to research sharing too, and (drawn apart) eight in ten to sharing with
//! their clinicians, so that exports, pseudonymous streams and FHIR have
//! people to show and people to leave out.

use futures::StreamExt;
use jiff::civil::{DateTime, Time};
use jiff::{SignedDuration, Timestamp, ToSpan};
use std::collections::BTreeSet;

use tend_domain::consent::{
    ConsentRecorded, DocumentEvent, DocumentVersionDefined, Method, Purpose,
};
use tend_domain::enrollment::{self, Command, Participant};
use tend_domain::protocol::ActivityKind;
use tend_domain::protocol::ProtocolSet;
use tend_domain::schedule::Status;
use tend_domain::time::{Zone, zoned};
use tend_domain::{DomainEvent, assessment, practice, protocol};
use tend_event_store::{EventStore, ExpectedVersion, NewEvent, StreamId, TenantId};
use tend_privacy::Directory;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Domain(#[from] tend_domain::Error),
    #[error(transparent)]
    Store(#[from] tend_event_store::Error),
    #[error(transparent)]
    Directory(#[from] tend_privacy::Error),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub tenant: TenantId,
    pub participants: usize,
    pub seed: u64,
    /// The cohort's "now": nothing happens after it.
    pub now: Timestamp,
    /// Participants appended at once.
    pub concurrency: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub participants: usize,
    pub events: u64,
}

const ZONES: &[&str] = &[
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "Europe/Berlin",
    "Australia/Sydney",
    "America/Chicago",
];

const GRACE: SignedDuration = SignedDuration::from_hours(6);

/// The consent document every demo participant signs.
const DOCUMENT: &str = "demo-consent";
/// Mixed into the seed of consent ids.
const CONSENT_SEED: u64 = 0xc0_45e4_7000;
/// Mixed into the draw of clinician sharing.
const CLINICIAN_MIX: u64 = 0xc1_1e1c_1a00;
/// The version of the demo's consent document participants sign (version
/// 1, of earlier releases, had no clinician sharing).
const DOCUMENT_VERSION: u32 = 2;

/// splitmix64: small, fast, and good enough for a synthetic cohort.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Roughly normal, mean 0, SD about `sd`.
    fn noise(&mut self, sd: f64) -> f64 {
        (self.unit() + self.unit() + self.unit() - 1.5) * 2.0 * sd
    }
}

/// One stream's events from one step.
#[derive(Debug)]
struct Batch {
    stream: StreamId,
    events: Vec<NewEvent>,
}

/// One simulated participant.
#[derive(Debug)]
struct Sim {
    key: Uuid,
    rng: Rng,
    protocols: ProtocolSet,
    participant: Participant,
    log: practice::Log,
    record: assessment::Record,
    enrollment_id: Uuid,
    enrolled_at: Timestamp,
    arc_end: Timestamp,
    /// How likely they do what is asked.
    adherence: f64,
    /// Whether their practice falls away in weeks +2 and +3.
    critic: bool,
    withdraws_on_day: Option<i32>,
    /// Latent answers: positive items, negative items.
    levels: (f64, f64),
    stepped_to: Timestamp,
    finished: bool,
}

fn stream(category: &str, key: Uuid) -> StreamId {
    StreamId::for_entity(category, key).expect("fixed categories make valid stream ids")
}

fn new_event<E: DomainEvent>(id: Option<Uuid>, e: &E) -> Result<NewEvent, Error> {
    Ok(NewEvent::new(
        id.unwrap_or_else(Uuid::now_v7),
        e.event_type(),
        e.schema_version(),
        &e.to_payload(),
    )?)
}

impl Sim {
    /// Participant `index`, whose opaque id is `key`.
    fn new(
        index: usize,
        key: Uuid,
        options: &Options,
        document: &DocumentVersionDefined,
    ) -> Result<(Self, Batch), Error> {
        let mut rng = Rng(options.seed ^ (index as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let protocol = if rng.unit() < 0.8 {
            protocol::built_in("integration-arc-8w")
        } else {
            protocol::built_in("msc-8w")
        }
        .expect("the built-in protocols exist")
        .clone();
        let zone = Zone::new(ZONES[(rng.next() % ZONES.len() as u64) as usize])?;
        let today = zoned(&zone, options.now).date();
        // Sessions from three weeks ahead to eleven weeks ago: every phase.
        let offset = rng.range(-21.0, 77.0).floor() as i64;
        let session_date = today.checked_sub(offset.days()).unwrap_or(today);
        let session_at = DateTime::from_parts(session_date, Time::constant(10, 0, 0, 0));
        let enrolled_at = tend_domain::time::shift(
            tend_domain::time::resolve_date_time(&zone, session_at),
            SignedDuration::from_hours(-24 * 35),
        );
        let enrollment_id =
            enrollment::enrollment_id_for_request(Uuid::from_u64_pair(options.seed, index as u64));
        let protocols = ProtocolSet::default();
        // Consent an hour before enrolling; whether they share for research
        // is drawn apart from the cohort's random stream, so that the rest
        // of the cohort is as before.
        let consented_at = tend_domain::time::shift(enrolled_at, SignedDuration::from_hours(-1));
        let consent_id = Uuid::from_u64_pair(options.seed ^ CONSENT_SEED, index as u64);
        let mut purposes = BTreeSet::from([
            Purpose::Protocol,
            Purpose::PracticeNotes,
            Purpose::Questionnaires,
        ]);
        let (a, b) = consent_id.as_u64_pair();
        if Rng(a ^ b).unit() < 0.9 {
            purposes.insert(Purpose::ResearchSharing);
        }
        // Drawn apart again, so that who shares for research is as before.
        if Rng(a ^ b ^ CLINICIAN_MIX).unit() < 0.8 {
            purposes.insert(Purpose::ClinicianSharing);
        }
        let mut events = enrollment::decide(
            &Participant::default(),
            Command::RecordConsent {
                consent: ConsentRecorded {
                    consent_id,
                    document_id: document.document_id.clone(),
                    document_version: document.version,
                    purposes,
                    given_at: consented_at,
                    method: Method::ElectronicSignature,
                    evidence_sha256: format!("{:032x}{:032x}", consent_id.as_u128(), index),
                    recorded_at: consented_at,
                },
                document: Some(document.clone()),
                now: consented_at,
            },
            &ProtocolSet::default(),
        )?;
        let consented = events
            .iter()
            .fold(Participant::default(), enrollment::evolve);
        events.extend(enrollment::decide(
            &consented,
            Command::Enroll {
                enrollment_id,
                protocol: protocol.clone(),
                requested_version: 0,
                session_at,
                time_zone: zone,
                now: enrolled_at,
            },
            &protocols,
        )?);
        let participant = events
            .iter()
            .fold(Participant::default(), enrollment::evolve);
        let arc_end = {
            let e = &participant.enrollments[0];
            let (_, last) = e.arc_dates();
            tend_domain::time::resolve_date_time(
                &e.current().zone,
                DateTime::from_parts(last, Time::midnight()),
            )
        };
        let arc_end = tend_domain::time::shift(arc_end, SignedDuration::from_hours(48));
        let adherence = rng.range(0.3, 0.97);
        let critic = rng.unit() < 0.3;
        let withdraws_on_day = (rng.unit() < 0.04).then(|| rng.range(-20.0, 20.0) as i32);
        let pos = rng.range(2.0, 3.4);
        let neg = (6.0 - pos + rng.noise(0.3)).clamp(1.5, 4.5);
        let batch = Batch {
            stream: stream("participant", key),
            events: events
                .iter()
                .map(|e| new_event(e.deterministic_id(), e))
                .collect::<Result<_, _>>()?,
        };
        Ok((
            Self {
                key,
                rng,
                protocols,
                participant,
                log: practice::Log::default(),
                record: assessment::Record::default(),
                enrollment_id,
                enrolled_at,
                arc_end,
                adherence,
                critic,
                withdraws_on_day,
                levels: (pos, neg),
                stepped_to: enrolled_at,
                finished: false,
            },
            batch,
        ))
    }

    /// Everything that happens after the last step, up to `until`.
    fn step(&mut self, until: Timestamp) -> Result<Vec<Batch>, Error> {
        if self.finished || until <= self.enrolled_at {
            return Ok(vec![]);
        }
        let until = until.min(self.arc_end);
        let from = self.stepped_to;
        self.stepped_to = until;
        if until >= self.arc_end {
            self.finished = true;
        }
        let en = self.participant.enrollments[0].clone();
        let session = en.session_instant();
        let day_of = |t: Timestamp| {
            let d = t.duration_since(session).as_hours();
            (d as f64 / 24.0).floor() as i32
        };
        let mut practice_events = Vec::new();
        let mut assessment_events = Vec::new();
        let mut participant_events = Vec::new();
        if en.withdrawn_at.is_none()
            && let Some(day) = self.withdraws_on_day
            && day_of(until) >= day
        {
            let events = enrollment::decide(
                &self.participant,
                Command::Withdraw {
                    enrollment_id: self.enrollment_id,
                    now: until,
                },
                &self.protocols,
            )?;
            self.apply_participant(&events, &mut participant_events)?;
            self.finished = true;
            // Nothing more is asked of them, and nothing more happens.
            return Ok(vec![Batch {
                stream: stream("participant", self.key),
                events: participant_events,
            }]);
        }
        let schedule = en.schedule(&self.protocols, until)?;
        for o in schedule
            .iter()
            .filter(|o| o.at > from && o.at <= until && o.status != Status::Cancelled)
        {
            let week = protocol::arc_week(o.day);
            let mut p = self.adherence;
            if self.critic && (2..=3).contains(&week) {
                p *= 0.25;
            }
            let window = o.closes_at.duration_since(o.at).as_mins().max(10);
            match &o.kind {
                ActivityKind::Practice { practice: kind } => {
                    if self.rng.unit() >= p {
                        continue;
                    }
                    let start = o.at
                        + SignedDuration::from_mins(self.rng.range(2.0, (window - 2) as f64) as i64);
                    let minutes = (f64::from(o.target_minutes.max(1)) * self.rng.range(0.6, 1.5))
                        .round()
                        .clamp(1.0, 600.0) as u32;
                    let offset = zoned(&o.zone, start).offset().seconds();
                    let entry_id = Uuid::now_v7();
                    let events = practice::decide(
                        &self.log,
                        practice::Command::Log {
                            entry_id,
                            content: practice::Content {
                                kind: kind.clone(),
                                started_at: start.min(until),
                                utc_offset_seconds: offset,
                                time_zone: Some(o.zone.clone()),
                                minutes,
                                occurrence_id: None,
                                note: None,
                            },
                        },
                    )?;
                    for e in &events {
                        self.log = practice::evolve(std::mem::take(&mut self.log), e);
                        practice_events.push(new_event(
                            Some(practice::entry_event_id(self.key, entry_id)),
                            e,
                        )?);
                    }
                }
                ActivityKind::Assessment { instrument } => {
                    if self.rng.unit() >= 0.9 {
                        continue;
                    }
                    let Some(instrument) = assessment::built_in(instrument) else {
                        continue;
                    };
                    let at = (o.at + SignedDuration::from_mins(10)).min(until);
                    let (pos, neg) = self.levels_at(o.day);
                    let answers = instrument
                        .items
                        .iter()
                        .map(|item| {
                            let base = if item.reversed { neg } else { pos };
                            let a = (base + self.rng.noise(0.5)).round() as i32;
                            (
                                item.number,
                                a.clamp(instrument.min_answer, instrument.max_answer),
                            )
                        })
                        .collect();
                    let events = assessment::decide(
                        &self.record,
                        assessment::Command::Submit {
                            assessment_id: Uuid::now_v7(),
                            instrument: instrument.clone(),
                            answers,
                            administered_at: at,
                            occurrence_id: Some(o.id),
                            now: at,
                        },
                    )?;
                    for e in &events {
                        self.record = assessment::evolve(std::mem::take(&mut self.record), e);
                        assessment_events.push(new_event(e.id(), e)?);
                    }
                    self.complete(o.id, at, &mut participant_events)?;
                }
                ActivityKind::IntegrationSession | ActivityKind::Task => {
                    if self.rng.unit() < (p + 0.1).min(1.0) {
                        let at = (o.at + SignedDuration::from_mins(5)).min(until);
                        self.complete(o.id, at, &mut participant_events)?;
                    }
                }
            }
        }
        // The scheduler's round: practice links, then due and missed.
        let links = {
            let schedules: Vec<_> = self
                .participant
                .enrollments
                .iter()
                .map(|e| Ok((e, e.schedule(&self.protocols, until)?)))
                .collect::<Result<_, tend_domain::Error>>()?;
            practice::link(&self.log, &schedules)
        };
        self.apply_participant(&links, &mut participant_events)?;
        let ticks = enrollment::decide(
            &self.participant,
            Command::Tick {
                now: until,
                miss_grace: GRACE,
            },
            &self.protocols,
        )?;
        self.apply_participant(&ticks, &mut participant_events)?;
        let mut batches = Vec::new();
        for (category, events) in [
            ("practice", practice_events),
            ("assessment", assessment_events),
            ("participant", participant_events),
        ] {
            if !events.is_empty() {
                batches.push(Batch {
                    stream: stream(category, self.key),
                    events,
                });
            }
        }
        Ok(batches)
    }

    fn complete(
        &mut self,
        occurrence_id: Uuid,
        at: Timestamp,
        out: &mut Vec<NewEvent>,
    ) -> Result<(), Error> {
        let events = enrollment::decide(
            &self.participant,
            Command::Complete {
                enrollment_id: self.enrollment_id,
                occurrence_id,
                completed_at: Some(at),
                now: at,
            },
            &self.protocols,
        )?;
        self.apply_participant(&events, out)
    }

    fn apply_participant(
        &mut self,
        events: &[enrollment::Event],
        out: &mut Vec<NewEvent>,
    ) -> Result<(), Error> {
        for e in events {
            self.participant = enrollment::evolve(std::mem::take(&mut self.participant), e);
            out.push(new_event(e.deterministic_id(), e)?);
        }
        Ok(())
    }

    /// Latent answer levels on a day of the arc: practice after the session
    /// raises the positive and lowers the negative items in proportion to
    /// how much they practise; a returning critic raises the negative.
    fn levels_at(&self, day: i32) -> (f64, f64) {
        let (pos, neg) = self.levels;
        if day <= 0 {
            return (pos, neg);
        }
        let gain = 1.8 * self.adherence * if self.critic { 0.3 } else { 1.0 };
        let critic = if self.critic { 1.1 } else { 0.0 };
        (
            (pos + gain).min(5.0),
            (neg - 0.8 * gain + critic).clamp(1.0, 5.0),
        )
    }
}

/// The reference of demo participant `index`.
pub fn participant_ref(index: usize) -> String {
    format!("demo-{index:05}")
}

/// Generates the cohort into `store`, day by day, and says how much it
/// wrote. Each participant is registered in `directory` under
/// `participant_ref(index)`.
pub async fn generate(
    store: &EventStore,
    directory: &Directory,
    options: &Options,
) -> Result<Report, Error> {
    let keys: Vec<Result<Uuid, tend_privacy::Error>> =
        futures::stream::iter(0..options.participants)
            .map(|i| async move {
                directory
                    .find_or_register(options.tenant.as_str(), &participant_ref(i))
                    .await
            })
            .buffered(options.concurrency.max(1))
            .collect()
            .await;
    let document = define_document(store, options).await?;
    let mut sims = Vec::with_capacity(options.participants);
    let mut first = Vec::with_capacity(options.participants);
    for (i, key) in keys.into_iter().enumerate() {
        let (sim, batch) = Sim::new(i, key?, options, &document)?;
        sims.push(sim);
        first.push(vec![batch]);
    }
    let mut events = append_all(store, &options.tenant, first, options.concurrency).await?;
    let start = sims
        .iter()
        .map(|s| s.enrolled_at)
        .min()
        .unwrap_or(options.now);
    let mut day = start;
    while day < options.now {
        day = (day + SignedDuration::from_hours(24)).min(options.now);
        let mut work = Vec::with_capacity(sims.len());
        for sim in &mut sims {
            let batches = sim.step(day)?;
            if !batches.is_empty() {
                work.push(batches);
            }
        }
        events += append_all(store, &options.tenant, work, options.concurrency).await?;
    }
    Ok(Report {
        participants: options.participants,
        events,
    })
}

/// The demo's consent document, defined in the tenant unless it already is
/// (with the same content: a retry).
async fn define_document(
    store: &EventStore,
    options: &Options,
) -> Result<DocumentVersionDefined, Error> {
    let document = document(options);
    let event = DocumentEvent::Defined(document.clone());
    let id = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("{}/{DOCUMENT}/{DOCUMENT_VERSION}", options.tenant.as_str()).as_bytes(),
    );
    store
        .append(
            &options.tenant,
            &StreamId::new(format!("consent-{DOCUMENT}"))?,
            ExpectedVersion::Any,
            vec![new_event(Some(id), &event)?],
        )
        .await?;
    Ok(document)
}

/// The demo's consent document.
fn document(options: &Options) -> DocumentVersionDefined {
    DocumentVersionDefined {
        document_id: DOCUMENT.to_owned(),
        version: DOCUMENT_VERSION,
        purposes: BTreeSet::from([
            Purpose::Protocol,
            Purpose::PracticeNotes,
            Purpose::Questionnaires,
            Purpose::ResearchSharing,
            Purpose::ClinicianSharing,
        ]),
        // Before any demo participant enrolls (at most 112 days back).
        defined_at: tend_domain::time::shift(options.now, SignedDuration::from_hours(-24 * 200)),
    }
}

/// Appends each participant's batches in order, participants concurrently.
async fn append_all(
    store: &EventStore,
    tenant: &TenantId,
    work: Vec<Vec<Batch>>,
    concurrency: usize,
) -> Result<u64, Error> {
    let results: Vec<Result<u64, Error>> = futures::stream::iter(work)
        .map(|batches| async move {
            let mut n = 0;
            for b in batches {
                n += b.events.len() as u64;
                store
                    .append(tenant, &b.stream, ExpectedVersion::Any, b.events)
                    .await?;
            }
            Ok(n)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut total = 0;
    for r in results {
        total += r?;
    }
    Ok(total)
}

/// Whether the tenant already holds participants (a demo is generated
/// into an empty tenant only).
pub async fn tenant_has_participants(store: &EventStore, tenant: &TenantId) -> Result<bool, Error> {
    Ok(!store.list_streams(tenant, "participant").await?.is_empty())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_simulated_participant_goes_through_the_deciders_day_by_day() {
        let options = Options {
            tenant: TenantId::new("demo").unwrap(),
            participants: 1,
            seed: 7,
            now: "2026-06-01T00:00:00Z".parse().unwrap(),
            concurrency: 1,
        };
        let mut totals: BTreeMap<String, usize> = BTreeMap::new();
        let mut sharing = 0;
        for i in 0..20 {
            let (mut sim, first) =
                Sim::new(i, Uuid::new_v4(), &options, &document(&options)).unwrap();
            // Consent, then the enrollment.
            let types: Vec<&str> = first.events.iter().map(|e| e.event_type.as_str()).collect();
            assert_eq!(types, ["ConsentRecorded", "ParticipantEnrolled"]);
            if sim.participant.consent.grants(Purpose::ResearchSharing) {
                sharing += 1;
            }
            let mut day = sim.enrolled_at;
            while day < options.now {
                day = (day + SignedDuration::from_hours(24)).min(options.now);
                for b in sim.step(day).unwrap() {
                    for e in &b.events {
                        *totals.entry(e.event_type.clone()).or_default() += 1;
                    }
                }
            }
        }
        // Twenty participants over whole or partial arcs: due occurrences,
        // practice, links, misses and scored assessments all happen.
        for kind in [
            "OccurrenceDue",
            "OccurrenceMissed",
            "OccurrenceCompleted",
            "PracticeLogged",
            "AssessmentSubmitted",
            "AssessmentScored",
        ] {
            assert!(
                totals.get(kind).copied().unwrap_or(0) > 0,
                "{kind}: {totals:?}"
            );
        }
        // Most share for research, some do not.
        assert!((14..20).contains(&sharing), "{sharing} of 20 share");
        // Every practice entry completes at most one occurrence.
        assert!(totals["OccurrenceCompleted"] >= totals["PracticeLogged"] / 2);
    }
}
