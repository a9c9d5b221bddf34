//! FHIR R4 views of a tenant's log, for clinics' records and integration
//! engines: each participant's events folded by the domain's own deciders
//! into Patient, Consent, CarePlan, Task, Observation and the rest
//! (`participant`, pure), protocols and instruments as definitions
//! (`definitions`), and the NDJSON of a Bulk Data export read in one
//! snapshot a chunk of participants at a time (`bulk`). `docs/fhir.md`
//! maps every element.

pub mod bulk;
pub mod codes;
pub mod definitions;
mod error;
pub mod ids;
mod json;
pub mod participant;
pub mod read;

pub use error::Error;

/// The resource types Tend serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Patient,
    Consent,
    ResearchSubject,
    CarePlan,
    Procedure,
    Task,
    Observation,
    QuestionnaireResponse,
    Flag,
    PlanDefinition,
    ActivityDefinition,
    ResearchStudy,
    Questionnaire,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Patient,
        Kind::Consent,
        Kind::ResearchSubject,
        Kind::CarePlan,
        Kind::Procedure,
        Kind::Task,
        Kind::Observation,
        Kind::QuestionnaireResponse,
        Kind::Flag,
        Kind::PlanDefinition,
        Kind::ActivityDefinition,
        Kind::ResearchStudy,
        Kind::Questionnaire,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Patient => "Patient",
            Kind::Consent => "Consent",
            Kind::ResearchSubject => "ResearchSubject",
            Kind::CarePlan => "CarePlan",
            Kind::Procedure => "Procedure",
            Kind::Task => "Task",
            Kind::Observation => "Observation",
            Kind::QuestionnaireResponse => "QuestionnaireResponse",
            Kind::Flag => "Flag",
            Kind::PlanDefinition => "PlanDefinition",
            Kind::ActivityDefinition => "ActivityDefinition",
            Kind::ResearchStudy => "ResearchStudy",
            Kind::Questionnaire => "Questionnaire",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the type belongs to a participant (FHIR's Patient
    /// compartment); the others are the tenant's definitions.
    pub fn of_participant(self) -> bool {
        !matches!(
            self,
            Kind::PlanDefinition
                | Kind::ActivityDefinition
                | Kind::ResearchStudy
                | Kind::Questionnaire
        )
    }
}

/// One resource, with the position of the last event that changed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub kind: Kind,
    pub id: String,
    pub changed: u64,
    pub body: serde_json::Value,
}
