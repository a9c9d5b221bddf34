//! Stream names: every category in one place, and how an entity's id
//! becomes its stream. A participant's streams share their opaque id (from
//! the directory, `tend_privacy`; never derived from the partner's
//! reference): `participant-<id>`, `practice-<id>`, `assessment-<id>`,
//! `arc-<id>`.

use tend_domain::{consent, protocol};
use tend_event_store::StreamId;
use uuid::Uuid;

use crate::Error;

/// Enrollments and what became of each occurrence.
pub const PARTICIPANT: &str = "participant";
/// Practice entries, beside the participant stream so that logging one
/// needs no read of the schedule.
pub const PRACTICE: &str = "practice";
/// Administrations and their scores.
pub const ASSESSMENT: &str = "assessment";
/// Early warnings raised and cleared by the arc projection.
pub const ARC: &str = "arc";
/// A partner protocol's versions: `protocol-<id>`.
pub const PROTOCOL: &str = "protocol";
/// A partner instrument's versions: `instrument-<id>`.
pub const INSTRUMENT: &str = "instrument";
/// A consent document's versions: `consent-<document id>`.
pub const CONSENT: &str = "consent";

/// A webhook endpoint: `webhook-<endpoint id>`.
pub const WEBHOOK: &str = "webhook";

/// The categories whose streams belong to one participant.
pub const PARTICIPANT_CATEGORIES: [&str; 4] = [PARTICIPANT, PRACTICE, ASSESSMENT, ARC];

fn entity(category: &str, key: Uuid) -> StreamId {
    StreamId::for_entity(category, key).expect("a fixed category and a uuid make a valid stream id")
}

/// A participant's stream of enrollments and consent, by their id.
pub fn participant(participant_id: Uuid) -> StreamId {
    entity(PARTICIPANT, participant_id)
}

/// A participant's practice stream, by their key.
pub fn practice(participant_id: Uuid) -> StreamId {
    entity(PRACTICE, participant_id)
}

/// A participant's assessment stream, by their key.
pub fn assessment(participant_id: Uuid) -> StreamId {
    entity(ASSESSMENT, participant_id)
}

/// A participant's arc stream, by their key.
pub fn arc(participant_id: Uuid) -> StreamId {
    entity(ARC, participant_id)
}

/// A webhook endpoint's stream.
pub fn webhook(endpoint_id: Uuid) -> StreamId {
    entity(WEBHOOK, endpoint_id)
}

/// The participant id a stream was named with, from any of their streams
/// (`participant-`, `practice-`, `assessment-`, `arc-`).
pub fn key_of(stream: &StreamId) -> Option<Uuid> {
    let (_, key) = stream.as_str().split_once('-')?;
    Uuid::try_parse(key).ok()
}

/// A partner protocol's stream; refuses an id that is not one.
pub fn protocol(protocol_id: &str) -> Result<StreamId, Error> {
    protocol::validate_id(protocol_id)?;
    Ok(StreamId::new(format!("{PROTOCOL}-{protocol_id}"))?)
}

/// A partner instrument's stream; refuses an id that cannot name a stream
/// (the id's own form is the assessment service's to check).
pub fn instrument(instrument_id: &str) -> Result<StreamId, Error> {
    Ok(StreamId::new(format!("{INSTRUMENT}-{instrument_id}"))?)
}

/// A consent document's stream; refuses an id that is not one.
pub fn consent_document(document_id: &str) -> Result<StreamId, Error> {
    consent::validate_document_id(document_id)?;
    Ok(StreamId::new(format!("{CONSENT}-{document_id}"))?)
}

/// The id in a `protocol-<id>` or `instrument-<id>` stream name.
pub fn id_in<'a>(category: &str, stream: &'a StreamId) -> Option<&'a str> {
    stream
        .as_str()
        .strip_prefix(category)
        .and_then(|s| s.strip_prefix('-'))
}
