//! The participant's assessments: the record, its events, and the decisions on them.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::instrument::Instrument;
use super::scoring::{Scores, check_answers, safety_signals, score};
use crate::Error;

/// How far in the future an administration may be dated (clock skew).
pub const ADMINISTERED_SKEW: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

/// The assessment id for a submission's request id: a retry is the same
/// assessment.
pub fn assessment_id_for_request(participant_key: Uuid, request_id: Uuid) -> Uuid {
    Uuid::new_v5(
        &participant_key,
        format!("assessment/{request_id}").as_bytes(),
    )
}

/// One administration, as submitted and as scored (the latest scoring
/// last).
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub assessment_id: Uuid,
    pub instrument_id: String,
    pub instrument_version: u32,
    pub answers: BTreeMap<u32, i32>,
    pub administered_at: Timestamp,
    pub occurrence_id: Option<Uuid>,
    pub scorings: Vec<Scores>,
    pub safety: Vec<(u32, i32)>,
    /// Its place among the participant's submissions: what breaks a tie
    /// between two administered at the same instant.
    pub seq: usize,
}

impl Assessment {
    pub fn latest(&self) -> Option<&Scores> {
        self.scorings.last()
    }
}

/// Every assessment of one participant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    pub assessments: BTreeMap<Uuid, Assessment>,
    /// Designated baselines by instrument.
    pub baselines: BTreeMap<String, Uuid>,
}

impl Record {
    /// The participant's administrations of an instrument, oldest first.
    pub fn of(&self, instrument_id: &str) -> Vec<&Assessment> {
        let mut list: Vec<&Assessment> = self
            .assessments
            .values()
            .filter(|a| a.instrument_id == instrument_id)
            .collect();
        list.sort_by_key(|a| (a.administered_at, a.seq));
        list
    }

    /// The baseline: the designated one, else the first administration at
    /// or after `arc_start` (the first ever without an arc).
    pub fn baseline(
        &self,
        instrument_id: &str,
        arc_start: Option<Timestamp>,
    ) -> Option<&Assessment> {
        if let Some(id) = self.baselines.get(instrument_id) {
            return self.assessments.get(id);
        }
        self.of(instrument_id)
            .into_iter()
            .find(|a| arc_start.is_none_or(|s| a.administered_at >= s))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Submitted(AssessmentSubmitted),
    Scored(AssessmentScored),
    SafetySignal(SafetySignalRaised),
    BaselineDesignated(BaselineDesignated),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssessmentSubmitted {
    pub assessment_id: Uuid,
    pub instrument_id: String,
    pub instrument_version: u32,
    /// Answers by item number.
    pub answers: BTreeMap<u32, i32>,
    pub administered_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurrence_id: Option<Uuid>,
}

/// Scores with the instrument version and method that made them. A
/// rescoring appends another; none is ever replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssessmentScored {
    pub assessment_id: Uuid,
    pub scores: Scores,
    #[serde(default)]
    pub rescored: bool,
}

/// An answer tripped a safety rule (PHQ-9 item 9 above 0): a clinician
/// should follow up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafetySignalRaised {
    pub assessment_id: Uuid,
    pub instrument_id: String,
    pub item: u32,
    pub answer: i32,
    pub administered_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineDesignated {
    pub instrument_id: String,
    pub assessment_id: Uuid,
}

event_codec! {
    for Event {
        Submitted => "AssessmentSubmitted",
        Scored => "AssessmentScored",
        SafetySignal => "SafetySignalRaised",
        BaselineDesignated => "BaselineDesignated",
    }
}

impl Event {
    /// The id to store the event under. A submission's events follow from
    /// the assessment id, so a retried submission is the same events;
    /// `None` for events decided on the record as read (a rescoring, a
    /// designation), which are guarded by the stream version instead and
    /// may legitimately repeat (designate A, then B, then A again).
    pub fn id(&self) -> Option<Uuid> {
        match self {
            Self::Submitted(e) => Some(e.assessment_id),
            Self::Scored(e) if !e.rescored => Some(Uuid::new_v5(
                &e.assessment_id,
                format!(
                    "scored/{}/{}",
                    e.scores.instrument_version,
                    e.scores.method.name()
                )
                .as_bytes(),
            )),
            Self::SafetySignal(e) => Some(Uuid::new_v5(
                &e.assessment_id,
                format!("safety/{}", e.item).as_bytes(),
            )),
            Self::Scored(_) | Self::BaselineDesignated(_) => None,
        }
    }
}

pub fn evolve(mut record: Record, event: &Event) -> Record {
    match event {
        Event::Submitted(e) => {
            let seq = record.assessments.len();
            record
                .assessments
                .entry(e.assessment_id)
                .or_insert_with(|| Assessment {
                    assessment_id: e.assessment_id,
                    instrument_id: e.instrument_id.clone(),
                    instrument_version: e.instrument_version,
                    answers: e.answers.clone(),
                    administered_at: e.administered_at,
                    occurrence_id: e.occurrence_id,
                    scorings: vec![],
                    safety: vec![],
                    seq,
                });
        }
        Event::Scored(e) => {
            if let Some(a) = record.assessments.get_mut(&e.assessment_id) {
                a.scorings.push(e.scores.clone());
            }
        }
        Event::SafetySignal(e) => {
            if let Some(a) = record.assessments.get_mut(&e.assessment_id) {
                a.safety.push((e.item, e.answer));
            }
        }
        Event::BaselineDesignated(e) => {
            record
                .baselines
                .insert(e.instrument_id.clone(), e.assessment_id);
        }
    }
    record
}

#[derive(Debug, Clone)]
pub enum Command {
    Submit {
        assessment_id: Uuid,
        instrument: Instrument,
        /// (item, answer) as sent.
        answers: Vec<(u32, i32)>,
        administered_at: Timestamp,
        occurrence_id: Option<Uuid>,
        now: Timestamp,
    },
    /// Scores every administration of `instrument.id` again with this
    /// version, where its latest scoring used another.
    Rescore {
        instrument: Instrument,
    },
    DesignateBaseline {
        assessment_id: Uuid,
    },
}

pub fn decide(record: &Record, command: Command) -> Result<Vec<Event>, Error> {
    match command {
        Command::Submit {
            assessment_id,
            instrument,
            answers,
            administered_at,
            occurrence_id,
            now,
        } => {
            let checked = check_answers(&instrument, &answers)?;
            if let Some(existing) = record.assessments.get(&assessment_id) {
                let same = existing.instrument_id == instrument.id
                    && existing.instrument_version == instrument.version
                    && existing.answers == checked
                    && existing.administered_at == administered_at
                    && existing.occurrence_id == occurrence_id;
                return if same {
                    Ok(vec![])
                } else {
                    Err(Error::already_exists(
                        "request_id",
                        "was already used for a different submission",
                    ))
                };
            }
            if administered_at > crate::time::shift(now, ADMINISTERED_SKEW) {
                return Err(Error::invalid("administered_at", "is in the future"));
            }
            let scores = score(&instrument, &checked);
            let mut events = vec![
                Event::Submitted(AssessmentSubmitted {
                    assessment_id,
                    instrument_id: instrument.id.clone(),
                    instrument_version: instrument.version,
                    answers: checked.clone(),
                    administered_at,
                    occurrence_id,
                }),
                Event::Scored(AssessmentScored {
                    assessment_id,
                    scores,
                    rescored: false,
                }),
            ];
            events.extend(safety_signals(&instrument, &checked).into_iter().map(
                |(item, answer)| {
                    Event::SafetySignal(SafetySignalRaised {
                        assessment_id,
                        instrument_id: instrument.id.clone(),
                        item,
                        answer,
                        administered_at,
                    })
                },
            ));
            Ok(events)
        }
        Command::Rescore { instrument } => Ok(record
            .of(&instrument.id)
            .into_iter()
            .filter(|a| {
                a.latest().is_none_or(|s| {
                    (s.instrument_version, s.method) != (instrument.version, instrument.method)
                })
            })
            .filter_map(|a| {
                let answers: Vec<(u32, i32)> = a.answers.iter().map(|(k, v)| (*k, *v)).collect();
                let checked = check_answers(&instrument, &answers).ok()?;
                Some(Event::Scored(AssessmentScored {
                    assessment_id: a.assessment_id,
                    scores: score(&instrument, &checked),
                    rescored: true,
                }))
            })
            .collect()),
        Command::DesignateBaseline { assessment_id } => {
            let a = record
                .assessments
                .get(&assessment_id)
                .ok_or_else(|| Error::not_found("assessment"))?;
            if record.baselines.get(&a.instrument_id) == Some(&assessment_id) {
                return Ok(vec![]);
            }
            Ok(vec![Event::BaselineDesignated(BaselineDesignated {
                instrument_id: a.instrument_id.clone(),
                assessment_id,
            })])
        }
    }
}

decider! {
    /// A participant's assessments as a decider.
    Aggregate: Record, Command => Event
}
