//! gRPC statuses for the failures services share, with the rich details
//! (bad-request and precondition violations) that tell a partner which
//! field was wrong and why. Only services' `error.rs` call these.

use tend_domain as domain;
use tend_event_store as store;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::Conflicts;

/// INVALID_ARGUMENT naming the field.
pub fn bad_request(field: &str, reason: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {reason}"),
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}

/// FAILED_PRECONDITION: well formed, but the state does not allow it.
pub fn precondition(field: &str, reason: &str) -> Status {
    Status::with_error_details(
        Code::FailedPrecondition,
        format!("{field}: {reason}"),
        ErrorDetails::with_precondition_failure_violation("STATE", field, reason),
    )
}

/// INTERNAL, with a generic message; the cause goes to the log.
pub fn internal(context: &'static str, error: &dyn std::error::Error) -> Status {
    tracing::error!(error = %error, "{context}");
    Status::internal("internal error")
}

pub fn domain(e: domain::Error) -> Status {
    match e {
        domain::Error::Invalid { field, reason } => bad_request(&field, &reason),
        domain::Error::Refused { field, reason } => precondition(&field, &reason),
        domain::Error::NotFound { what } => Status::not_found(format!("{what} not found")),
        domain::Error::AlreadyExists { field, reason } => {
            Status::already_exists(format!("{field}: {reason}"))
        }
    }
}

pub fn store(e: store::Error, conflicts: &Conflicts) -> Status {
    match e {
        store::Error::InvalidInput { field, reason } => bad_request(field, &reason),
        store::Error::WrongExpectedVersion { .. } => Status::aborted(conflicts.version),
        store::Error::IdempotencyConflict { .. } => Status::already_exists(conflicts.idempotency),
        e if e.is_unavailable() => {
            tracing::warn!(error = %e, "event store unavailable");
            Status::unavailable("the event store is unavailable; retry later")
        }
        e => internal("event store failure", &e),
    }
}

pub fn decode(e: &domain::DecodeError) -> Status {
    // The reason may quote stored content: only type and version.
    tracing::error!(event_type = %e.event_type, schema_version = e.schema_version, "unreadable stored event");
    Status::internal("internal error")
}

pub fn privacy(e: tend_privacy::Error, conflicts: &Conflicts) -> Status {
    match e {
        tend_privacy::Error::Erased => {
            precondition("participant_ref", "the participant was erased")
        }
        tend_privacy::Error::Database(e) => store(e.into(), conflicts),
        // Configuration or storage damage: never the sealed value itself.
        e @ (tend_privacy::Error::UnknownMasterKey(_) | tend_privacy::Error::Corrupt) => {
            internal("cannot open a participant's data key", &e)
        }
    }
}
