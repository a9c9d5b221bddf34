//! One participant's events, folded by the domain's own deciders, into
//! their FHIR resources. Pure: the same events give the same resources.
//!
//! Every resource carries the position of the last event that changed it,
//! so that an export `_since` a position holds exactly the resources that
//! changed after it; what a participant had then and no longer has (they
//! stopped sharing with clinicians, or were erased) is listed as gone.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::Timestamp;
use serde_json::{Value, json};
use tend_domain::arc::{FlagEvent, FlagKind};
use tend_domain::assessment::{self, Assessment};
use tend_domain::consent::Purpose;
use tend_domain::enrollment::{self, Enrollment, Participant};
use tend_domain::protocol::{ActivityKind, ProtocolSet};
use tend_domain::time::{Zone, zoned};
use tend_export::rows::{
    History, InstrumentSet, Practised, Recorded, arc_enrollment, assessed, practised,
    recorded_occurrences, verdict,
};
use uuid::Uuid;

use crate::codes::{self, BASE, extension};
use crate::definitions::{activity_canonical, plan_canonical, plan_id, questionnaire_canonical};
use crate::json::{clean, date, instant, link, quantity};
use crate::{Kind, Resource, ids};

/// What the resources depend on besides the participant's events.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub protocols: &'a ProtocolSet,
    pub instruments: &'a InstrumentSet,
    /// The instant of the export's position: the schedule is placed as of
    /// it (statuses themselves come from recorded events only).
    pub as_of: Timestamp,
    /// Only what changed after this position (0: everything).
    pub since: u64,
}

/// A participant in an export.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Their resources (those changed after `since`).
    pub resources: Vec<Resource>,
    /// Resources they had at `since` that are no longer there.
    pub gone: Vec<(Kind, String)>,
    /// Protocol and instrument versions the resources name, each with
    /// whether it is new to a reader of the export at `since` (the
    /// participant's resources did not name it then).
    pub plans: BTreeMap<(String, u32), bool>,
    pub questionnaires: BTreeMap<(String, u32), bool>,
}

/// Whether clinicians may see the participant: they share with them, and
/// are not erased.
fn shared(p: &Participant) -> bool {
    p.erased.is_none() && p.consent.grants(Purpose::ClinicianSharing)
}

/// Which of the participant's log an outcome compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    /// Whether they are in the export now (beside sharing: a Group's
    /// membership).
    pub now: bool,
    /// Whether they were in it at `since`.
    pub then: bool,
}

impl Membership {
    pub const ALWAYS: Membership = Membership {
        now: true,
        then: true,
    };
}

/// The participant's resources; `reference` is the partner's reference of
/// them, absent once erased: a participant erased after the export's
/// position is left out all the same (and listed as gone).
pub fn resources(
    history: &History,
    reference: Option<&str>,
    ctx: &Context<'_>,
    membership: Membership,
) -> Outcome {
    let now = if membership.now && reference.is_some() {
        build(history, reference, ctx, u64::MAX)
    } else {
        None
    };
    let then = (ctx.since > 0 && membership.then)
        .then(|| build(history, reference, ctx, ctx.since))
        .flatten();
    let then_ids: BTreeSet<(Kind, String)> = then
        .iter()
        .flat_map(|b| b.resources.iter().map(|r| (r.kind, r.id.clone())))
        .collect();
    let Some(now) = now else {
        return Outcome {
            gone: then_ids.into_iter().collect(),
            ..Default::default()
        };
    };
    let now_ids: BTreeSet<(Kind, String)> = now
        .resources
        .iter()
        .map(|r| (r.kind, r.id.clone()))
        .collect();
    let since = if then.is_none() { 0 } else { ctx.since };
    let named_then = |set: &dyn Fn(&Built) -> &BTreeSet<(String, u32)>, key: &(String, u32)| {
        then.as_ref().is_some_and(|t| set(t).contains(key))
    };
    Outcome {
        gone: then_ids.difference(&now_ids).cloned().collect(),
        plans: now
            .plans
            .iter()
            .map(|k| (k.clone(), !named_then(&|b| &b.plans, k)))
            .collect(),
        questionnaires: now
            .questionnaires
            .iter()
            .map(|k| (k.clone(), !named_then(&|b| &b.questionnaires, k)))
            .collect(),
        resources: now
            .resources
            .into_iter()
            .filter(|r| r.changed > since)
            .collect(),
    }
}

struct Built {
    resources: Vec<Resource>,
    plans: BTreeSet<(String, u32)>,
    questionnaires: BTreeSet<(String, u32)>,
}

/// The participant's resources as the log stood at `upto`; `None` when
/// they were not shared with clinicians then.
fn build(
    history: &History,
    reference: Option<&str>,
    ctx: &Context<'_>,
    upto: u64,
) -> Option<Built> {
    let key = history.key;
    let patient = link(Kind::Patient, &ids::patient(key));
    let upto_filter = |pos: &u64| *pos <= upto;

    // The participant stream, with the position that last touched each
    // thing.
    let mut p = Participant::default();
    let mut first = None;
    let mut enrollment_pos: HashMap<Uuid, u64> = HashMap::new();
    let mut occurrence_pos: HashMap<Uuid, u64> = HashMap::new();
    let mut linked_pos: HashMap<Uuid, u64> = HashMap::new();
    let mut occurrence_enrollment: HashMap<Uuid, Uuid> = HashMap::new();
    let mut consent_pos = 0;
    // When each enrollment's zone was last set: the current one's is the
    // offset of every instant not local to something of its own.
    let mut zone_pos: HashMap<Uuid, u64> = HashMap::new();
    for (pos, e) in history.participant.iter().filter(|(p, _)| upto_filter(p)) {
        use enrollment::Event as E;
        first.get_or_insert(*pos);
        match e {
            E::Enrolled(x) => {
                enrollment_pos.insert(x.enrollment_id, *pos);
                zone_pos.insert(x.enrollment_id, *pos);
            }
            E::SessionRescheduled(x) => {
                enrollment_pos.insert(x.enrollment_id, *pos);
            }
            E::TimeZoneChanged(x) => {
                enrollment_pos.insert(x.enrollment_id, *pos);
                zone_pos.insert(x.enrollment_id, *pos);
            }
            E::Migrated(x) => {
                enrollment_pos.insert(x.enrollment_id, *pos);
            }
            E::Paused(x) => {
                enrollment_pos.insert(x.enrollment_id, *pos);
            }
            E::Resumed(x) => {
                enrollment_pos.insert(x.enrollment_id, *pos);
            }
            E::Withdrawn(x) => {
                enrollment_pos.insert(x.enrollment_id, *pos);
            }
            E::Due(x) => {
                occurrence_pos.insert(x.occurrence_id, *pos);
                occurrence_enrollment.insert(x.occurrence_id, x.enrollment_id);
            }
            E::Completed(x) => {
                occurrence_pos.insert(x.occurrence_id, *pos);
                occurrence_enrollment.insert(x.occurrence_id, x.enrollment_id);
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
            E::ConsentRecorded(_) | E::ConsentWithdrawn(_) => consent_pos = *pos,
            E::Erased(_) => {}
        }
        p = enrollment::evolve(p, e);
    }
    if !shared(&p) {
        return None;
    }
    let mut out = Built {
        resources: Vec::new(),
        plans: BTreeSet::new(),
        questionnaires: BTreeSet::new(),
    };
    let mut push = |kind: Kind, id: String, changed: u64, body: Value| {
        out.resources.push(Resource {
            kind,
            id,
            changed,
            body: clean(body),
        });
    };
    let timing_pos = enrollment_pos.values().copied().max().unwrap_or(0);
    let current: Option<&Enrollment> = p.enrollments.iter().max_by_key(|e| (e.enrolled_at, e.id));
    let zone: Option<Zone> = current.map(|e| e.current().zone.clone());
    // Instants written in the participant's zone change with it.
    let zone_changed = current
        .and_then(|e| zone_pos.get(&e.id))
        .copied()
        .unwrap_or(0);
    let offset_of =
        |at: Timestamp| -> i32 { zone.as_ref().map_or(0, |z| zoned(z, at).offset().seconds()) };
    let at = |t: Timestamp| instant(t, offset_of(t));
    let care_plan = |enrollment: Uuid| link(Kind::CarePlan, &ids::of(key, enrollment));

    push(
        Kind::Patient,
        ids::patient(key),
        first.unwrap_or(0),
        json!({
            "resourceType": "Patient",
            "id": ids::patient(key),
            "identifier": reference.map(|r| json!([{
                "system": codes::participant_ref_system(),
                "value": r,
            }])),
            "active": true,
        }),
    );

    // Consent: one per consent recorded; a later consent or a withdrawal
    // can change what an earlier one still grants, so any of them changes
    // all.
    for r in &p.consent.recorded {
        let id = ids::of(key, r.consent_id);
        let (granted, withdrawn): (Vec<Purpose>, Vec<Purpose>) =
            r.purposes.iter().partition(|purpose| {
                p.consent
                    .granted
                    .get(purpose)
                    .is_some_and(|g| g.consent_id == r.consent_id)
            });
        let coding = |ps: &[Purpose]| -> Value {
            ps.iter()
                .map(|purpose| {
                    json!({"system": codes::CONSENT_PURPOSE.url(), "code": purpose.as_str()})
                })
                .collect()
        };
        push(
            Kind::Consent,
            id.clone(),
            consent_pos.max(zone_changed),
            json!({
                "resourceType": "Consent",
                "id": id,
                "identifier": [{
                    "system": format!("{BASE}/sid/consent-evidence-sha256"),
                    "value": r.evidence_sha256,
                }],
                "status": if granted.is_empty() { "inactive" } else { "active" },
                "scope": {"coding": [{"system": codes::CONSENT_SCOPE, "code": "patient-privacy"}]},
                "category": [{"coding": [{
                    "system": codes::LOINC,
                    "code": codes::LOINC_PATIENT_CONSENT,
                    "display": "Patient Consent",
                }]}],
                "patient": patient,
                "dateTime": at(r.given_at),
                "policyRule": {"coding": [{"system": codes::ACT_CODE, "code": "OPTIN"}]},
                "provision": {
                    "type": "permit",
                    "purpose": coding(&granted),
                    "provision": (!withdrawn.is_empty()).then(|| json!([{
                        "type": "deny",
                        "purpose": coding(&withdrawn),
                    }])),
                },
            }),
        );
    }

    // Enrollments: the care plan, the session, the research subject and
    // the occurrences that came due or were completed.
    let mut completed_by: HashMap<Uuid, (Uuid, Uuid)> = HashMap::new();
    let mut outputs: HashMap<Uuid, Vec<Value>> = HashMap::new();
    for e in &p.enrollments {
        for (occurrence, (entry, _)) in &e.completed_by {
            completed_by.insert(*entry, (e.id, *occurrence));
            outputs.entry(*occurrence).or_default().push(json!({
                "type": {"coding": [{"system": codes::ACTIVITY_KIND.url(), "code": "practice"}]},
                "valueReference": link(Kind::Observation, &ids::of(key, *entry)),
            }));
        }
    }
    // Assessments are folded first: their responses are tasks' outputs.
    let assessed = assessed(history, upto);
    let (record, submitted_pos) = (&assessed.record, &assessed.submitted_pos);
    // A task's output changes when a response names its occurrence.
    let mut output_pos: HashMap<Uuid, u64> = HashMap::new();
    for a in record.assessments.values() {
        if let Some(o) = a.occurrence_id {
            let at = submitted_pos.get(&a.assessment_id).copied().unwrap_or(0);
            let p = output_pos.entry(o).or_default();
            *p = (*p).max(at);
            outputs.entry(o).or_default().push(json!({
                "type": {"coding": [{"system": codes::ACTIVITY_KIND.url(), "code": "assessment"}]},
                "valueReference": link(Kind::QuestionnaireResponse, &ids::of(key, a.assessment_id)),
            }));
        }
    }

    for e in &p.enrollments {
        let pos = enrollment_pos.get(&e.id).copied().unwrap_or(0);
        let r = e.current();
        let plan = (e.protocol_id.clone(), r.protocol_version);
        let (first_day, last_day) = e.arc_dates();
        let status = if e.withdrawn_at.is_some() {
            "revoked"
        } else if e.is_paused() {
            "on-hold"
        } else {
            "active"
        };
        let id = ids::of(key, e.id);
        push(
            Kind::CarePlan,
            id.clone(),
            pos.max(zone_changed),
            json!({
                "resourceType": "CarePlan",
                "id": id,
                "instantiatesCanonical": [plan_canonical(&plan.0, plan.1)],
                "status": status,
                "intent": "plan",
                "subject": patient,
                "period": {"start": date(first_day), "end": date(last_day)},
                "created": at(e.enrolled_at),
            }),
        );
        let session = e.session_instant();
        let session_id = ids::derived(key, e.id, "session");
        push(
            Kind::Procedure,
            session_id.clone(),
            pos,
            json!({
                "resourceType": "Procedure",
                "id": session_id,
                "basedOn": [care_plan(e.id)],
                // Tend schedules the arc around the session; whether it took
                // place is the clinic's record, not Tend's.
                "status": if e.withdrawn_at.is_some_and(|w| w < session) { "not-done" } else { "unknown" },
                "code": {"coding": [{"system": codes::ACTIVITY_KIND.url(), "code": "session"}]},
                "subject": patient,
                "performedDateTime": instant(session, zoned(&r.session_zone, session).offset().seconds()),
            }),
        );
        if p.consent.grants(Purpose::ResearchSharing) {
            let research_id = ids::derived(key, e.id, "research");
            let consent = p
                .consent
                .granted
                .get(&Purpose::ResearchSharing)
                .map(|g| link(Kind::Consent, &ids::of(key, g.consent_id)));
            push(
                Kind::ResearchSubject,
                research_id.clone(),
                pos.max(consent_pos).max(zone_changed),
                json!({
                    "resourceType": "ResearchSubject",
                    "id": research_id,
                    "status": if e.withdrawn_at.is_some() { "withdrawn" } else { "on-study" },
                    "period": {"start": at(e.enrolled_at), "end": e.withdrawn_at.map(at)},
                    "study": link(Kind::ResearchStudy, &plan_id(&plan.0, plan.1)),
                    "individual": patient,
                    "consent": consent,
                }),
            );
        }
        out.plans.insert(plan);

        let Some(recorded) = recorded_occurrences(e, ctx.protocols, ctx.as_of) else {
            // A protocol version the log does not hold: nothing to place.
            continue;
        };
        for o in &recorded {
            let changed = occurrence_pos
                .get(&o.id)
                .copied()
                .unwrap_or(0)
                .max(pos)
                .max(output_pos.get(&o.id).copied().unwrap_or(0));
            let (status, business) = match Recorded::of(o) {
                Recorded::Done => ("completed", "on-time"),
                Recorded::Late => ("completed", "late"),
                Recorded::Cancelled => ("cancelled", "cancelled"),
                Recorded::Missed => ("failed", "missed"),
                Recorded::Open => ("ready", "open"),
            };
            let (kind, detail) = activity_codes(&o.kind);
            out.plans
                .insert((e.protocol_id.clone(), o.protocol_version));
            let id = ids::of(key, o.id);
            let in_zone = |t: Timestamp| instant(t, zoned(&o.zone, t).offset().seconds());
            push(
                Kind::Task,
                id.clone(),
                changed,
                json!({
                    "resourceType": "Task",
                    "id": id,
                    "extension": matches!(o.kind, ActivityKind::Practice { .. }).then(|| json!([{
                        "url": extension::target_minutes(),
                        "valueQuantity": quantity(f64::from(o.target_minutes), "min"),
                    }])),
                    "instantiatesCanonical": activity_canonical(&e.protocol_id, o.protocol_version, &o.activity_key),
                    "basedOn": [care_plan(e.id)],
                    "status": status,
                    "businessStatus": {"coding": [{"system": codes::TASK_BUSINESS_STATUS.url(), "code": business}]},
                    "intent": "plan",
                    "code": {"coding": [kind, detail]},
                    "for": patient,
                    "executionPeriod": o.completed_at.map(|c| json!({"end": in_zone(c)})),
                    "restriction": {"period": {"start": in_zone(o.at), "end": in_zone(o.closes_at)}},
                    "output": outputs.get(&o.id),
                }),
            );
        }
    }

    // Practice: entries as corrected; retracted ones as entered in error.
    // Never notes: no consent purpose shares them with clinicians.
    let Practised { log, entry_pos } = practised(history, upto);
    for entry in log.entries.values() {
        let c = &entry.current;
        let changed = entry_pos
            .get(&entry.entry_id)
            .copied()
            .unwrap_or(0)
            .max(linked_pos.get(&entry.entry_id).copied().unwrap_or(0));
        let end = tend_domain::time::shift(
            c.started_at,
            jiff::SignedDuration::from_mins(i64::from(c.minutes)),
        );
        let id = ids::of(key, entry.entry_id);
        push(
            Kind::Observation,
            id.clone(),
            changed,
            json!({
                "resourceType": "Observation",
                "id": id,
                "basedOn": completed_by.get(&entry.entry_id).map(|(e, _)| json!([care_plan(*e)])),
                "status": if entry.retracted_at.is_some() {
                    "entered-in-error"
                } else if entry.revision > 1 {
                    "amended"
                } else {
                    "final"
                },
                "category": [{"coding": [{"system": codes::OBSERVATION_CATEGORY, "code": "therapy"}]}],
                "code": {"coding": [{"system": codes::PRACTICE_KIND.url(), "code": c.kind}]},
                "subject": patient,
                "effectivePeriod": {
                    "start": instant(c.started_at, c.utc_offset_seconds),
                    "end": instant(end, c.utc_offset_seconds),
                },
                "valueQuantity": quantity(f64::from(c.minutes), "min"),
            }),
        );
    }

    // Assessments: the response as answered, and its scores with the
    // change from the baseline (the arc's baseline rule).
    let arc_start = current.map(|e| arc_enrollment(e).arc_start());
    for instrument_id in assessed.instruments() {
        // A new baseline or a rescoring changes every later comparison.
        let scores_pos = assessed.changed(instrument_id, timing_pos);
        let baseline = record.baseline(instrument_id, arc_start);
        for a in record.of(instrument_id) {
            let based_on = a
                .occurrence_id
                .and_then(|o| occurrence_enrollment.get(&o))
                .map(|e| json!([care_plan(*e)]));
            // Its CarePlan comes from the scheduler's events for its
            // occurrence, and its times from the participant's zone.
            let response_pos = a
                .occurrence_id
                .and_then(|o| occurrence_pos.get(&o))
                .copied()
                .unwrap_or(0)
                .max(zone_changed);
            let response_id = ids::of(key, a.assessment_id);
            out.questionnaires
                .insert((a.instrument_id.clone(), a.instrument_version));
            push(
                Kind::QuestionnaireResponse,
                response_id.clone(),
                response_pos.max(submitted_pos.get(&a.assessment_id).copied().unwrap_or(0)),
                json!({
                    "resourceType": "QuestionnaireResponse",
                    "id": response_id,
                    "basedOn": based_on,
                    "questionnaire": questionnaire_canonical(&a.instrument_id, a.instrument_version),
                    "status": "completed",
                    "subject": patient,
                    "authored": at(a.administered_at),
                    "item": a.answers.iter().map(|(n, answer)| json!({
                        "linkId": n.to_string(),
                        "answer": [{"valueCoding": {"system": codes::ANSWER.url(), "code": answer.to_string()}}],
                    })).collect::<Vec<_>>(),
                }),
            );
            if let Some(body) = score(key, a, baseline, ctx, &at, &patient, based_on.clone()) {
                push(
                    Kind::Observation,
                    ids::derived(key, a.assessment_id, "score"),
                    scores_pos.max(response_pos),
                    body,
                );
            }
        }
    }

    // Early warnings.
    struct Flag {
        kind: FlagKind,
        raised_at: Timestamp,
        cleared_at: Option<Timestamp>,
        pos: u64,
    }
    let mut flags: BTreeMap<Uuid, Flag> = BTreeMap::new();
    for (pos, e) in history.flags.iter().filter(|(p, _)| upto_filter(p)) {
        match e {
            FlagEvent::Raised(r) => {
                flags.entry(r.flag_id).or_insert(Flag {
                    kind: r.kind,
                    raised_at: r.raised_at,
                    cleared_at: None,
                    pos: *pos,
                });
            }
            FlagEvent::Cleared(c) => {
                if let Some(f) = flags.get_mut(&c.flag_id) {
                    f.cleared_at = Some(c.cleared_at);
                    f.pos = *pos;
                }
            }
        }
    }
    for (flag_id, f) in flags {
        let id = ids::of(key, flag_id);
        push(
            Kind::Flag,
            id.clone(),
            f.pos.max(zone_changed),
            json!({
                "resourceType": "Flag",
                "id": id,
                "status": if f.cleared_at.is_some() { "inactive" } else { "active" },
                "category": [{"coding": [{"system": codes::FLAG_CATEGORY, "code": codes::flag_category(f.kind)}]}],
                "code": {"coding": [{"system": codes::EARLY_WARNING.url(), "code": f.kind.name()}]},
                "subject": patient,
                "period": {"start": at(f.raised_at), "end": f.cleared_at.map(at)},
            }),
        );
    }
    Some(out)
}

/// An activity's codes: what it is, and which practice or instrument.
pub(crate) fn activity_codes(kind: &ActivityKind) -> (Value, Value) {
    let of = |code: &str| json!({"system": codes::ACTIVITY_KIND.url(), "code": code});
    match kind {
        ActivityKind::Practice { practice } => (
            of("practice"),
            json!({"system": codes::PRACTICE_KIND.url(), "code": practice}),
        ),
        ActivityKind::Assessment { instrument } => (
            of("assessment"),
            json!({"system": codes::INSTRUMENT.url(), "code": instrument}),
        ),
        ActivityKind::IntegrationSession => (of("integration-session"), Value::Null),
        ActivityKind::Task => (of("task"), Value::Null),
    }
}

/// An administration's scores as a survey Observation: the total, each
/// subscale, and the change from the baseline with its reliable change.
fn score(
    key: Uuid,
    a: &Assessment,
    baseline: Option<&Assessment>,
    ctx: &Context<'_>,
    at: &dyn Fn(Timestamp) -> String,
    patient: &Value,
    based_on: Option<Value>,
) -> Option<Value> {
    let scores = a.latest()?;
    let instrument = ctx
        .instruments
        .get(&a.instrument_id, scores.instrument_version);
    let is_baseline = baseline.is_some_and(|b| b.assessment_id == a.assessment_id);
    let report = match (baseline, instrument) {
        (Some(b), Some(i)) if !is_baseline => {
            assessment::compare(i, b, a, i.sd.as_ref(), i.reliability.as_ref()).ok()
        }
        _ => None,
    };
    let component_of = |system: String, code: &str, value: (&str, Value)| {
        let mut c = json!({
            "code": {"coding": [{"system": system, "code": code}]},
        });
        c[value.0] = value.1;
        c
    };
    let component =
        |code: &str, value: (&str, Value)| component_of(codes::SCORE_COMPONENT.url(), code, value);
    let score_quantity = |v: f64| quantity(v, "{score}");
    let mut components = vec![
        component(
            "total-exact",
            (
                "valueRatio",
                json!({
                    "numerator": {"value": scores.total.exact.num as f64},
                    "denominator": {"value": scores.total.exact.den as f64},
                }),
            ),
        ),
        component("baseline", ("valueBoolean", json!(is_baseline))),
    ];
    for s in &scores.subscales {
        components.push(component_of(
            codes::SUBSCALE.url(),
            &s.key,
            ("valueQuantity", score_quantity(s.score.value)),
        ));
    }
    if let Some(r) = &report {
        components.push(component(
            "change-from-baseline",
            ("valueQuantity", score_quantity(r.total.absolute.value)),
        ));
        if let Some(p) = r.total.percent.filter(|p| p.is_finite()) {
            components.push(component(
                "change-percent",
                ("valueQuantity", quantity(p, "%")),
            ));
        }
        if let Some(rc) = &r.total.reliable {
            if rc.rc.is_finite() {
                components.push(component(
                    "reliable-change-index",
                    ("valueQuantity", quantity(rc.rc, "1")),
                ));
            }
            components.push(component(
                "reliable-change",
                (
                    "valueCodeableConcept",
                    json!({"coding": [{"system": codes::RELIABLE_CHANGE.url(), "code": verdict(rc.verdict)}]}),
                ),
            ));
        }
    }
    let id = ids::derived(key, a.assessment_id, "score");
    Some(json!({
        "resourceType": "Observation",
        "id": id,
        "basedOn": based_on,
        "status": if a.scorings.len() > 1 { "amended" } else { "final" },
        "category": [{"coding": [{"system": codes::OBSERVATION_CATEGORY, "code": "survey"}]}],
        "code": {"coding": [{"system": codes::INSTRUMENT.url(), "code": a.instrument_id}]},
        "subject": patient,
        "effectiveDateTime": at(a.administered_at),
        "valueQuantity": score_quantity(scores.total.value),
        "interpretation": scores.band.as_ref().map(|b| json!([{"text": b}])),
        "derivedFrom": [link(Kind::QuestionnaireResponse, &ids::of(key, a.assessment_id))],
        "component": components,
    }))
}
