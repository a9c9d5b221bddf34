//! Protocols and instruments as definitional resources: a protocol version
//! is a PlanDefinition (the session its first action, every activity timed
//! from it) with an ActivityDefinition per activity and a ResearchStudy
//! that follows it; an instrument version is a Questionnaire of link ids,
//! answer options and scoring extensions, without item wording (partners
//! hold the licensed text).

use serde_json::{Value, json};
use tend_domain::assessment::Instrument;
use tend_domain::protocol::{Activity, Cadence, Protocol};

use crate::codes::{self, BASE, ORDINAL_VALUE, extension};
use crate::json::{clean, link, quantity};
use crate::participant::activity_codes;
use crate::{Kind, Resource, ids};

pub fn plan_id(protocol: &str, version: u32) -> String {
    ids::definition(&format!("{protocol}.{version}"))
}

pub fn plan_canonical(protocol: &str, version: u32) -> String {
    format!("{BASE}/PlanDefinition/{protocol}|{version}")
}

pub fn activity_id(protocol: &str, version: u32, activity: &str) -> String {
    ids::definition(&format!("{protocol}.{version}.{activity}"))
}

pub fn activity_canonical(protocol: &str, version: u32, activity: &str) -> String {
    format!("{BASE}/ActivityDefinition/{protocol}.{activity}|{version}")
}

pub fn questionnaire_id(instrument: &str, version: u32) -> String {
    ids::definition(&format!("{instrument}.{version}"))
}

pub fn questionnaire_canonical(instrument: &str, version: u32) -> String {
    format!("{BASE}/Questionnaire/{instrument}|{version}")
}

/// A protocol version's resources: its PlanDefinition, an
/// ActivityDefinition per activity and its ResearchStudy; `changed` is the
/// position that published it (0 for the built-ins).
pub fn protocol(p: &Protocol, changed: u64) -> Vec<Resource> {
    let plan = plan_id(&p.id, p.version);
    let mut actions = vec![json!({
        "id": "session",
        "code": [{"coding": [{"system": codes::ACTIVITY_KIND.url(), "code": "session"}]}],
    })];
    let mut out = Vec::new();
    for a in &p.activities {
        let (kind, detail) = activity_codes(&a.kind);
        // Days relative to the session; a span that starts before it and
        // ends after it is one range "after the start", from a negative day.
        let (relationship, low, high) = if a.span.last < 0 {
            ("before-start", -a.span.last, -a.span.first)
        } else {
            ("after-start", a.span.first, a.span.last)
        };
        let days = |d: i32| quantity(f64::from(d), "d");
        actions.push(json!({
            "id": a.key,
            "code": [{"coding": [kind.clone(), detail.clone()]}],
            "relatedAction": [{
                "actionId": "session",
                "relationship": relationship,
                "offsetRange": {"low": days(low), "high": days(high)},
            }],
            "timingTiming": timing(a),
            "definitionCanonical": activity_canonical(&p.id, p.version, &a.key),
        }));
        let id = activity_id(&p.id, p.version, &a.key);
        let questionnaire = match &a.kind {
            tend_domain::protocol::ActivityKind::Assessment { instrument } => Some(json!([{
                "type": "depends-on",
                "resource": format!("{BASE}/Questionnaire/{instrument}"),
            }])),
            _ => None,
        };
        out.push(Resource {
            kind: Kind::ActivityDefinition,
            id: id.clone(),
            changed,
            body: clean(json!({
                "resourceType": "ActivityDefinition",
                "id": id,
                "extension": [
                    (a.target_minutes > 0).then(|| json!({
                        "url": extension::target_minutes(),
                        "valueQuantity": quantity(f64::from(a.target_minutes), "min"),
                    })),
                    {
                        "url": extension::window_minutes(),
                        "valueQuantity": quantity(f64::from(a.window_minutes), "min"),
                    },
                ],
                "url": format!("{BASE}/ActivityDefinition/{}.{}", p.id, a.key),
                "version": p.version.to_string(),
                "status": "active",
                "relatedArtifact": questionnaire,
                "kind": "Task",
                "code": {"coding": [kind, detail]},
                "timingTiming": timing(a),
            })),
        });
    }
    out.push(Resource {
        kind: Kind::PlanDefinition,
        id: plan.clone(),
        changed,
        body: clean(json!({
            "resourceType": "PlanDefinition",
            "id": plan,
            "url": format!("{BASE}/PlanDefinition/{}", p.id),
            "version": p.version.to_string(),
            "title": p.title,
            "type": {"coding": [{"system": codes::PLAN_DEFINITION_TYPE, "code": "clinical-protocol"}]},
            "status": "active",
            "action": actions,
        })),
    });
    out.push(Resource {
        kind: Kind::ResearchStudy,
        id: plan.clone(),
        changed,
        body: clean(json!({
            "resourceType": "ResearchStudy",
            "id": plan,
            "title": p.title,
            "protocol": [link(Kind::PlanDefinition, &plan)],
            "status": "active",
        })),
    });
    out
}

/// When an activity happens on its days: FHIR's Timing, at its local times.
fn timing(a: &Activity) -> Value {
    let times: Vec<String> = a
        .times
        .iter()
        .map(|t| format!("{:02}:{:02}:00", t.hour(), t.minute()))
        .collect();
    let repeat = match a.cadence {
        Cadence::Once => json!({"count": 1, "timeOfDay": times}),
        Cadence::Daily => json!({
            "frequency": times.len(), "period": 1, "periodUnit": "d", "timeOfDay": times,
        }),
        Cadence::Weekly => json!({
            "frequency": times.len(), "period": 1, "periodUnit": "wk", "timeOfDay": times,
        }),
    };
    json!({"repeat": repeat})
}

/// An instrument version as a Questionnaire: every item a choice of the
/// scale's answers, each answer with the score it counts for.
pub fn instrument(i: &Instrument, changed: u64) -> Resource {
    let id = questionnaire_id(&i.id, i.version);
    let items: Vec<Value> = i
        .items
        .iter()
        .map(|item| {
            json!({
                "extension": [
                    item.subscale.as_ref().map(|s| json!({"url": extension::subscale(), "valueCode": s})),
                    item.reversed.then(|| json!({"url": extension::reversed(), "valueBoolean": true})),
                ],
                "linkId": item.number.to_string(),
                "type": "choice",
                "required": item.required,
                "answerOption": (i.min_answer..=i.max_answer).map(|answer| {
                    let scored = if item.reversed { i.min_answer + i.max_answer - answer } else { answer };
                    json!({"valueCoding": {
                        "extension": [{"url": ORDINAL_VALUE, "valueDecimal": scored}],
                        "system": codes::ANSWER.url(),
                        "code": answer.to_string(),
                    }})
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    Resource {
        kind: Kind::Questionnaire,
        id: id.clone(),
        changed,
        body: clean(json!({
            "resourceType": "Questionnaire",
            "id": id,
            "extension": [{"url": extension::scoring_method(), "valueCode": i.method.name()}],
            "url": format!("{BASE}/Questionnaire/{}", i.id),
            "version": i.version.to_string(),
            "title": i.title,
            "status": "active",
            "code": [{"system": codes::INSTRUMENT.url(), "code": i.id}],
            "item": items,
        })),
    }
}
