//! The one place where this service's failures become gRPC statuses.

use tend_event_store as store;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("stream not found")]
    StreamNotFound,
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

fn bad_request(field: &str, reason: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {reason}"),
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument { field, reason } => bad_request(field, &reason),
            Error::StreamNotFound => Status::not_found("stream not found"),
            Error::Store(e) => match e {
                store::Error::InvalidInput { field, reason } => bad_request(field, &reason),
                store::Error::WrongExpectedVersion { .. } => Status::aborted(e.to_string()),
                store::Error::IdempotencyConflict { .. } => Status::already_exists(e.to_string()),
                e if e.is_unavailable() => {
                    tracing::warn!(error = %e, "event store unavailable");
                    Status::unavailable("the event store is unavailable; retry later")
                }
                e => {
                    tracing::error!(error = %e, "event store failure");
                    Status::internal("internal error")
                }
            },
        }
    }
}
