//! The code systems and identifiers Tend's resources use: FHIR's own and
//! LOINC where they have the concept, Tend's (under [`BASE`]) where they
//! do not. `docs/fhir.md` lists each, and a test holds it to this file.

use tend_domain::arc::FlagKind;

/// Tend's canonical base: its code systems, extensions and definitions'
/// canonical URLs live under it.
pub const BASE: &str = "https://tend.dev/fhir";

pub const LOINC: &str = "http://loinc.org";
pub const UCUM: &str = "http://unitsofmeasure.org";
pub const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
pub const CONSENT_SCOPE: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub const PLAN_DEFINITION_TYPE: &str = "http://terminology.hl7.org/CodeSystem/plan-definition-type";
pub const FLAG_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/flag-category";
/// R4's standard extension for an answer's score.
pub const ORDINAL_VALUE: &str = "http://hl7.org/fhir/StructureDefinition/ordinalValue";

/// LOINC 59284-0, "Patient Consent": the document class FHIR's own
/// Consent examples use for a patient's consent.
pub const LOINC_PATIENT_CONSENT: &str = "59284-0";

/// One of Tend's code systems.
#[derive(Debug, Clone, Copy)]
pub struct System {
    /// The last part of its URL.
    pub name: &'static str,
    pub meaning: &'static str,
    /// Its codes, or none when they are the tenant's configuration keys
    /// (practice kinds, instruments).
    pub codes: &'static [&'static str],
}

impl System {
    pub fn url(&self) -> String {
        format!("{BASE}/CodeSystem/{}", self.name)
    }
}

macro_rules! systems {
    ($($id:ident = $name:literal, $meaning:literal, [$($code:literal),*];)*) => {
        $(pub const $id: System = System { name: $name, meaning: $meaning, codes: &[$($code),*] };)*
        /// Every code system of Tend's.
        pub const SYSTEMS: &[System] = &[$($id),*];
    };
}

systems! {
    ACTIVITY_KIND = "activity-kind", "What a protocol activity asks for.",
        ["practice", "assessment", "integration-session", "task", "session"];
    PRACTICE_KIND = "practice-kind", "A practice's key as the protocol names it (such as self-compassion-break): open, the tenant's own keys.", [];
    INSTRUMENT = "instrument", "An instrument's key (such as scs-sf): open, the built-ins and the tenant's own.", [];
    TASK_BUSINESS_STATUS = "task-business-status", "How an occurrence stands within its window, beside R4's Task.status (which has no missed or late).",
        ["open", "on-time", "late", "missed", "cancelled"];
    CONSENT_PURPOSE = "consent-purpose", "What a participant consents to.",
        ["protocol", "practice_notes", "questionnaires", "research_sharing", "clinician_sharing"];
    SUBSCALE = "subscale", "A subscale's key as its instrument names it (such as self-kindness): open, the built-ins' and the tenant's own.", [];
    SCORE_COMPONENT = "score-component", "The parts of an instrument's score Observation besides its total and subscales.",
        ["total-exact", "baseline", "change-from-baseline", "change-percent", "reliable-change-index", "reliable-change"];
    RELIABLE_CHANGE = "reliable-change", "Jacobson and Truax's verdict on a change.",
        ["reliably_improved", "no_reliable_change", "reliably_worse"];
    EARLY_WARNING = "early-warning", "An early warning the arc raises.",
        ["critic_returns", "subscale_rise", "missed_in_a_row", "safety_signal"];
    ANSWER = "answer", "A Likert answer's position on its scale, as a number (the item's text is the partner's).", [];
    SCORING_METHOD = "scoring-method", "How an instrument's total is made.",
        ["mean_of_subscale_means", "mean_of_items", "sum"];
}

/// Tend's extensions.
pub mod extension {
    use super::BASE;

    /// On a Questionnaire item: the subscale it counts towards.
    pub fn subscale() -> String {
        format!("{BASE}/StructureDefinition/subscale")
    }
    /// On a Questionnaire item: scored as `min + max - answer`.
    pub fn reversed() -> String {
        format!("{BASE}/StructureDefinition/reversed")
    }
    /// On a Questionnaire: how its total is made.
    pub fn scoring_method() -> String {
        format!("{BASE}/StructureDefinition/scoring-method")
    }
    /// On an ActivityDefinition or Task: minutes of practice asked for.
    pub fn target_minutes() -> String {
        format!("{BASE}/StructureDefinition/target-minutes")
    }
    /// On a Task: minutes after its time that it counts as done.
    pub fn window_minutes() -> String {
        format!("{BASE}/StructureDefinition/window-minutes")
    }
}

/// The identifier system of partners' participant references.
pub fn participant_ref_system() -> String {
    format!("{BASE}/sid/participant-ref")
}

pub fn flag_category(kind: FlagKind) -> &'static str {
    match kind {
        FlagKind::SafetySignal => "safety",
        FlagKind::MissedInARow => "behavioral",
        FlagKind::CriticReturns | FlagKind::SubscaleRise => "clinical",
    }
}

#[cfg(test)]
mod tests {
    use tend_domain::consent::Purpose;

    use super::*;

    #[test]
    fn the_domain_codes_are_in_their_systems() {
        for p in Purpose::ALL {
            assert!(CONSENT_PURPOSE.codes.contains(&p.as_str()), "{p:?}");
        }
        for k in FlagKind::ALL {
            assert!(EARLY_WARNING.codes.contains(&k.name()), "{k:?}");
        }
        let names: std::collections::BTreeSet<_> = SYSTEMS.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), SYSTEMS.len(), "names are unique");
    }
}
