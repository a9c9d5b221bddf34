//! Protobuf to domain and back.

use std::collections::BTreeSet;

use jiff::Timestamp;
use tend_api::privacy::v1 as pb;
use tend_domain::consent::{
    Consent, ConsentRecorded, ConsentWithdrawn, DocumentVersionDefined, ErasureReason, Method,
    Purpose,
};
use tend_service_kit::instants;
use uuid::Uuid;

use crate::Error;

pub(crate) fn uuid(field: &str, s: &str) -> Result<Uuid, Error> {
    match Uuid::try_parse(s) {
        Ok(id) if !id.is_nil() => Ok(id),
        _ => Err(Error::invalid(field, "must be a UUID (not the nil UUID)")),
    }
}

pub(crate) fn purpose(field: &str, value: i32) -> Result<Purpose, Error> {
    Ok(match pb::ConsentPurpose::try_from(value) {
        Ok(pb::ConsentPurpose::Protocol) => Purpose::Protocol,
        Ok(pb::ConsentPurpose::PracticeNotes) => Purpose::PracticeNotes,
        Ok(pb::ConsentPurpose::Questionnaires) => Purpose::Questionnaires,
        Ok(pb::ConsentPurpose::ResearchSharing) => Purpose::ResearchSharing,
        Ok(pb::ConsentPurpose::ClinicianSharing) => Purpose::ClinicianSharing,
        Ok(pb::ConsentPurpose::Unspecified) | Err(_) => {
            return Err(Error::invalid(field, "is not a consent purpose"));
        }
    })
}

pub(crate) fn purposes(field: &str, values: &[i32]) -> Result<BTreeSet<Purpose>, Error> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| purpose(&format!("{field}[{i}]"), *v))
        .collect()
}

pub(crate) fn purpose_pb(p: Purpose) -> pb::ConsentPurpose {
    match p {
        Purpose::Protocol => pb::ConsentPurpose::Protocol,
        Purpose::PracticeNotes => pb::ConsentPurpose::PracticeNotes,
        Purpose::Questionnaires => pb::ConsentPurpose::Questionnaires,
        Purpose::ResearchSharing => pb::ConsentPurpose::ResearchSharing,
        Purpose::ClinicianSharing => pb::ConsentPurpose::ClinicianSharing,
    }
}

fn purposes_pb(p: &BTreeSet<Purpose>) -> Vec<i32> {
    p.iter().map(|p| purpose_pb(*p) as i32).collect()
}

pub(crate) fn method(value: i32) -> Result<Method, Error> {
    Ok(match pb::ConsentMethod::try_from(value) {
        Ok(pb::ConsentMethod::ElectronicSignature) => Method::ElectronicSignature,
        Ok(pb::ConsentMethod::Paper) => Method::Paper,
        Ok(pb::ConsentMethod::VerbalWithWitness) => Method::VerbalWithWitness,
        Ok(pb::ConsentMethod::Unspecified) => {
            return Err(Error::invalid("method", "is required"));
        }
        Err(_) => return Err(Error::invalid("method", "is not a consent method")),
    })
}

fn method_pb(m: Method) -> pb::ConsentMethod {
    match m {
        Method::ElectronicSignature => pb::ConsentMethod::ElectronicSignature,
        Method::Paper => pb::ConsentMethod::Paper,
        Method::VerbalWithWitness => pb::ConsentMethod::VerbalWithWitness,
    }
}

pub(crate) fn reason(value: i32) -> Result<ErasureReason, Error> {
    Ok(match pb::ErasureReason::try_from(value) {
        Ok(pb::ErasureReason::ParticipantRequest) => ErasureReason::ParticipantRequest,
        Ok(pb::ErasureReason::ConsentWithdrawn) => ErasureReason::ConsentWithdrawn,
        Ok(pb::ErasureReason::RetentionExpired) => ErasureReason::RetentionExpired,
        Ok(pb::ErasureReason::LegalObligation) => ErasureReason::LegalObligation,
        Ok(pb::ErasureReason::EnteredInError) => ErasureReason::EnteredInError,
        Ok(pb::ErasureReason::Unspecified) => {
            return Err(Error::invalid("reason", "is required"));
        }
        Err(_) => return Err(Error::invalid("reason", "is not an erasure reason")),
    })
}

pub(crate) fn document_pb(d: &DocumentVersionDefined) -> pb::ConsentDocumentVersion {
    pb::ConsentDocumentVersion {
        document_id: d.document_id.clone(),
        version: d.version,
        purposes: purposes_pb(&d.purposes),
        defined_at: Some(instants::to_pb(d.defined_at)),
    }
}

fn given_pb(r: &ConsentRecorded) -> pb::ConsentGiven {
    pb::ConsentGiven {
        consent_id: r.consent_id.to_string(),
        document_id: r.document_id.clone(),
        document_version: r.document_version,
        purposes: purposes_pb(&r.purposes),
        given_at: Some(instants::to_pb(r.given_at)),
        method: method_pb(r.method) as i32,
        evidence_sha256: r.evidence_sha256.clone(),
        recorded_at: Some(instants::to_pb(r.recorded_at)),
    }
}

fn withdrawal_pb(w: &ConsentWithdrawn) -> pb::ConsentWithdrawal {
    pb::ConsentWithdrawal {
        withdrawal_id: w.withdrawal_id.to_string(),
        purposes: purposes_pb(&w.purposes),
        withdrawn_at: Some(instants::to_pb(w.withdrawn_at)),
    }
}

/// The consent now and its history, oldest first (a withdrawal recorded at
/// the same instant as a consent comes after it).
pub(crate) fn consent_pb(participant_ref: &str, c: &Consent) -> pb::Consent {
    use pb::consent_change::Change;
    let mut history: Vec<(Timestamp, u8, Change)> = c
        .recorded
        .iter()
        .map(|r| (r.recorded_at, 0, Change::Given(given_pb(r))))
        .chain(
            c.withdrawn
                .iter()
                .map(|w| (w.withdrawn_at, 1, Change::Withdrawn(withdrawal_pb(w)))),
        )
        .collect();
    history.sort_by_key(|(at, order, _)| (*at, *order));
    pb::Consent {
        participant_ref: participant_ref.to_owned(),
        granted: c
            .granted
            .iter()
            .map(|(p, g)| pb::Grant {
                purpose: purpose_pb(*p) as i32,
                consent_id: g.consent_id.to_string(),
                document_id: g.document_id.clone(),
                document_version: g.document_version,
                given_at: Some(instants::to_pb(g.given_at)),
            })
            .collect(),
        history: history
            .into_iter()
            .map(|(_, _, change)| pb::ConsentChange {
                change: Some(change),
            })
            .collect(),
    }
}
