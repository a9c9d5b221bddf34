//! The one place where this service's failures become gRPC statuses.

use tend_event_store as store;
use tend_service_kit::{Conflicts, status};
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("stream not found")]
    StreamNotFound,
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("recipient_id: no such recipient or key in this tenant")]
    UnknownRecipient,
    /// The shared parts (the pseudonymous view) failed.
    #[error(transparent)]
    Kit(#[from] tend_service_kit::Error),
}

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

/// The service only reads: these cannot arise from its calls.
const CONFLICTS: Conflicts = Conflicts {
    version: "the stream changed concurrently; retry",
    idempotency: "an event id was already used for other content",
};

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument { field, reason } => status::bad_request(field, &reason),
            Error::StreamNotFound => Status::not_found("stream not found"),
            Error::Store(e) => status::store(e, &CONFLICTS),
            Error::UnknownRecipient => Status::not_found(
                "recipient_id: the tenant has no such recipient (or no such key of it); see PrivacyService.ListRecipients",
            ),
            Error::Kit(e) => e.into_status(&CONFLICTS),
        }
    }
}
