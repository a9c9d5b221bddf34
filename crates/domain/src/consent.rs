//! Consent: the documents a tenant asks participants to agree to, and what
//! each participant has granted, when, how, and under which version.
//!
//! A consent document is versioned data in its own stream
//! (`consent-<document id>`): each version lists the purposes it covers.
//! What a participant granted or withdrew lives in their participant stream
//! (see `enrollment`), beside the enrollments it gates, so that enrolling
//! and withdrawing are checked against one versioned state.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Error;

/// How far ahead of the server's clock a consent may be dated: clocks of a
/// partner's tablet and of Tend's servers differ by this much at most.
pub const CLOCK_SKEW: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

/// What a participant can consent to. Tend acts on two: a protocol names
/// the purposes enrolling needs (and withdrawing one stops the schedule),
/// and only participants who granted `ResearchSharing` appear in
/// pseudonymous outputs. The others are recorded for the partner to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Taking part in the protocol.
    Protocol,
    /// Keeping practice notes.
    PracticeNotes,
    /// Answering questionnaires.
    Questionnaires,
    /// Sharing pseudonymous data for research.
    ResearchSharing,
    /// Sharing with the participant's clinicians.
    ClinicianSharing,
}

impl Purpose {
    pub const ALL: [Purpose; 5] = [
        Purpose::Protocol,
        Purpose::PracticeNotes,
        Purpose::Questionnaires,
        Purpose::ResearchSharing,
        Purpose::ClinicianSharing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Protocol => "protocol",
            Purpose::PracticeNotes => "practice_notes",
            Purpose::Questionnaires => "questionnaires",
            Purpose::ResearchSharing => "research_sharing",
            Purpose::ClinicianSharing => "clinician_sharing",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Purpose {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|p| p.as_str() == s).ok_or(())
    }
}

/// How consent was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    ElectronicSignature,
    Paper,
    VerbalWithWitness,
}

// ---- Documents ----

/// One version of a consent document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentVersionDefined {
    pub document_id: String,
    pub version: u32,
    pub purposes: BTreeSet<Purpose>,
    pub defined_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DocumentEvent {
    Defined(DocumentVersionDefined),
}

event_codec! {
    for DocumentEvent {
        Defined => "ConsentDocumentVersionDefined",
    }
}

/// Every version of one document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Document {
    pub versions: BTreeMap<u32, DocumentVersionDefined>,
}

#[derive(Debug, Clone)]
pub enum DocumentCommand {
    Define {
        document_id: String,
        version: u32,
        purposes: BTreeSet<Purpose>,
        now: Timestamp,
    },
}

pub fn validate_document_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "document_id",
            "must be 1 to 64 characters of a-z, 0-9, '-' or '_'",
        ))
    }
}

fn decide(state: &Document, command: DocumentCommand) -> Result<Vec<DocumentEvent>, Error> {
    let DocumentCommand::Define {
        document_id,
        version,
        purposes,
        now,
    } = command;
    validate_document_id(&document_id)?;
    if version == 0 {
        return Err(Error::invalid("version", "must be 1 or more"));
    }
    if purposes.is_empty() {
        return Err(Error::invalid("purposes", "must name at least one purpose"));
    }
    if let Some(existing) = state.versions.get(&version) {
        return if existing.purposes == purposes {
            Ok(vec![])
        } else {
            Err(Error::already_exists(
                "version",
                format!(
                    "version {version} of `{document_id}` is already defined with other purposes; define a new version"
                ),
            ))
        };
    }
    Ok(vec![DocumentEvent::Defined(DocumentVersionDefined {
        document_id,
        version,
        purposes,
        defined_at: now,
    })])
}

fn evolve(mut state: Document, event: &DocumentEvent) -> Document {
    let DocumentEvent::Defined(e) = event;
    state.versions.entry(e.version).or_insert_with(|| e.clone());
    state
}

decider! {
    /// A consent document's versions as a decider.
    Documents: Document, DocumentCommand => DocumentEvent
}

// ---- A participant's consent ----

/// A consent given, as recorded in the participant's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecorded {
    pub consent_id: Uuid,
    pub document_id: String,
    pub document_version: u32,
    pub purposes: BTreeSet<Purpose>,
    pub given_at: Timestamp,
    pub method: Method,
    /// Lower-case hex SHA-256 of the signed document, which the partner
    /// keeps: it proves which document this was without Tend holding it.
    pub evidence_sha256: String,
    pub recorded_at: Timestamp,
}

/// Purposes withdrawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentWithdrawn {
    pub withdrawal_id: Uuid,
    pub purposes: BTreeSet<Purpose>,
    pub withdrawn_at: Timestamp,
}

/// A purpose granted now, and by which consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub consent_id: Uuid,
    pub document_id: String,
    pub document_version: u32,
    pub given_at: Timestamp,
}

/// What a participant has consented to, now and over time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Consent {
    pub granted: BTreeMap<Purpose, Grant>,
    pub recorded: Vec<ConsentRecorded>,
    pub withdrawn: Vec<ConsentWithdrawn>,
}

impl Consent {
    pub fn grants(&self, purpose: Purpose) -> bool {
        self.granted.contains_key(&purpose)
    }

    /// The first of `required` not granted.
    pub fn missing(&self, required: &BTreeSet<Purpose>) -> Option<Purpose> {
        required.iter().copied().find(|p| !self.grants(*p))
    }

    pub(crate) fn apply_recorded(&mut self, e: &ConsentRecorded) {
        if self.recorded.iter().any(|r| r.consent_id == e.consent_id) {
            return;
        }
        for p in &e.purposes {
            self.granted.insert(
                *p,
                Grant {
                    consent_id: e.consent_id,
                    document_id: e.document_id.clone(),
                    document_version: e.document_version,
                    given_at: e.given_at,
                },
            );
        }
        self.recorded.push(e.clone());
    }

    pub(crate) fn apply_withdrawn(&mut self, e: &ConsentWithdrawn) {
        if self
            .withdrawn
            .iter()
            .any(|w| w.withdrawal_id == e.withdrawal_id)
        {
            return;
        }
        for p in &e.purposes {
            self.granted.remove(p);
        }
        self.withdrawn.push(e.clone());
    }

    /// Checks a consent to record against the document version it names
    /// (`None`: no such version); `Ok(false)` when it was recorded before.
    pub(crate) fn check_record(
        &self,
        e: &ConsentRecorded,
        document: Option<&DocumentVersionDefined>,
        now: Timestamp,
    ) -> Result<bool, Error> {
        if let Some(before) = self.recorded.iter().find(|r| r.consent_id == e.consent_id) {
            let same = ConsentRecorded {
                recorded_at: before.recorded_at,
                ..e.clone()
            };
            return if *before == same {
                Ok(false)
            } else {
                Err(Error::already_exists(
                    "request_id",
                    "was already used for a different consent",
                ))
            };
        }
        let Some(document) = document else {
            return Err(Error::invalid(
                "document_version",
                format!(
                    "`{}` has no version {}: define it first",
                    e.document_id, e.document_version
                ),
            ));
        };
        if e.purposes.is_empty() {
            return Err(Error::invalid("purposes", "must name at least one purpose"));
        }
        if let Some(p) = e.purposes.iter().find(|p| !document.purposes.contains(p)) {
            return Err(Error::invalid(
                "purposes",
                format!(
                    "`{p}` is not a purpose of `{}` version {}",
                    e.document_id, e.document_version
                ),
            ));
        }
        if e.given_at > crate::time::shift(now, CLOCK_SKEW) {
            return Err(Error::invalid("given_at", "must not be in the future"));
        }
        validate_evidence(&e.evidence_sha256)?;
        Ok(true)
    }

    /// Checks a withdrawal; `Ok(false)` when it was recorded before.
    /// Empty `purposes` means everything granted now.
    pub(crate) fn check_withdraw(
        &self,
        withdrawal_id: Uuid,
        purposes: &BTreeSet<Purpose>,
    ) -> Result<Option<BTreeSet<Purpose>>, Error> {
        if let Some(before) = self
            .withdrawn
            .iter()
            .find(|w| w.withdrawal_id == withdrawal_id)
        {
            return if purposes.is_empty() || before.purposes == *purposes {
                Ok(None)
            } else {
                Err(Error::already_exists(
                    "request_id",
                    "was already used for a different withdrawal",
                ))
            };
        }
        if purposes.is_empty() {
            if self.granted.is_empty() {
                return Err(Error::refused(
                    "purposes",
                    "nothing is granted: there is nothing to withdraw",
                ));
            }
            return Ok(Some(self.granted.keys().copied().collect()));
        }
        if let Some(p) = purposes.iter().find(|p| !self.grants(**p)) {
            return Err(Error::invalid(
                "purposes",
                format!("`{p}` is not granted, so it cannot be withdrawn"),
            ));
        }
        Ok(Some(purposes.clone()))
    }
}

pub fn validate_evidence(hex: &str) -> Result<(), Error> {
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(Error::invalid(
            "evidence_sha256",
            "must be the SHA-256 of the evidence as 64 lower-case hex digits",
        ))
    }
}

/// Why a participant was erased: a code, never free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErasureReason {
    /// The participant asked to be forgotten.
    ParticipantRequest,
    /// Consent was withdrawn and the study's rules say erase.
    ConsentWithdrawn,
    /// The retention period ended.
    RetentionExpired,
    /// A legal or regulatory obligation.
    LegalObligation,
    /// Enrolled by mistake (wrong person, duplicate).
    EnteredInError,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decider;
    use crate::decider::spec;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn define(version: u32, purposes: &[Purpose]) -> DocumentCommand {
        DocumentCommand::Define {
            document_id: "main-consent".into(),
            version,
            purposes: purposes.iter().copied().collect(),
            now: ts("2026-01-01T00:00:00Z"),
        }
    }

    #[test]
    fn a_document_version_is_defined_once_and_again_only_with_the_same_purposes() {
        let events = spec::given::<Documents>(&[])
            .when(define(1, &[Purpose::Protocol]))
            .events();
        assert_eq!(events.len(), 1);
        spec::given::<Documents>(&events)
            .when(define(1, &[Purpose::Protocol]))
            .then_nothing();
        let err = spec::given::<Documents>(&events)
            .when(define(1, &[Purpose::Protocol, Purpose::ResearchSharing]))
            .err();
        assert_eq!(err.field(), Some("version"));
        assert_eq!(
            spec::given::<Documents>(&[])
                .when(define(1, &[]))
                .err()
                .field(),
            Some("purposes")
        );
        assert_eq!(
            spec::given::<Documents>(&[])
                .when(define(0, &[Purpose::Protocol]))
                .err()
                .field(),
            Some("version")
        );
        let state = Documents::fold(Document::default(), &events);
        assert!(state.versions[&1].purposes.contains(&Purpose::Protocol));
    }

    #[test]
    fn purposes_read_and_print_by_their_names() {
        for p in Purpose::ALL {
            assert_eq!(p.as_str().parse::<Purpose>(), Ok(p));
            assert_eq!(
                serde_json::to_value(p).unwrap(),
                serde_json::Value::String(p.as_str().into())
            );
        }
        assert!("everything".parse::<Purpose>().is_err());
    }
}
