//! The one place where this service's failures become gRPC statuses.

use tend_domain as domain;
use tend_event_store as store;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The domain refused the command.
    #[error(transparent)]
    Domain(#[from] domain::Error),
    /// Storage failed, or refused at its level.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A stored event this build cannot read.
    #[error(transparent)]
    Decode(#[from] domain::DecodeError),
    /// This server no longer holds the scheduler lease.
    #[error("the scheduler lease passed to another server")]
    LeaseLost,
    /// The scheduler decided events the stream already holds: a fault in
    /// the rules, reported rather than retried.
    #[error("the scheduler decided events the stream already holds")]
    Redecided,
    /// Another writer kept changing the stream; the caller may retry.
    #[error("the participant's schedule changed concurrently; retry")]
    Contended,
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Domain(domain::Error::invalid(field, reason))
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::Domain(domain::Error::not_found(what))
    }
}

fn bad_request(field: &str, reason: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {reason}"),
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}

fn precondition(field: &str, reason: &str) -> Status {
    Status::with_error_details(
        Code::FailedPrecondition,
        format!("{field}: {reason}"),
        ErrorDetails::with_precondition_failure_violation("STATE", field, reason),
    )
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Domain(e) => match e {
                domain::Error::Invalid { field, reason } => bad_request(&field, &reason),
                domain::Error::Refused { field, reason } => precondition(&field, &reason),
                domain::Error::NotFound { what } => Status::not_found(format!("{what} not found")),
                domain::Error::AlreadyExists { field, reason } => {
                    Status::already_exists(format!("{field}: {reason}"))
                }
            },
            Error::Contended => Status::aborted(e.to_string()),
            Error::LeaseLost => Status::unavailable(e.to_string()),
            Error::Redecided => {
                tracing::error!(error = %e, "scheduler fault");
                Status::internal("internal error")
            }
            Error::Store(e) => match e {
                store::Error::InvalidInput { field, reason } => bad_request(field, &reason),
                store::Error::WrongExpectedVersion { .. } => {
                    Status::aborted("the participant's schedule changed concurrently; retry")
                }
                store::Error::IdempotencyConflict { .. } => {
                    Status::already_exists("request_id: was already used for a different request")
                }
                e if e.is_unavailable() => {
                    tracing::warn!(error = %e, "event store unavailable");
                    Status::unavailable("the event store is unavailable; retry later")
                }
                e => {
                    tracing::error!(error = %e, "event store failure");
                    Status::internal("internal error")
                }
            },
            Error::Decode(e) => {
                // The reason may quote stored content: only type and version.
                tracing::error!(event_type = %e.event_type, schema_version = e.schema_version, "unreadable stored event");
                Status::internal("internal error")
            }
        }
    }
}
