//! The one place where this service's failures become gRPC statuses.

use tend_domain as domain;
use tend_event_store as store;
use tonic::Status;

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
    /// Reading a participant's schedule failed.
    #[error(transparent)]
    Schedule(#[from] tend_protocol_scheduler::Error),
    /// Another writer kept changing the stream; the caller may retry.
    #[error("the participant's assessments changed concurrently; retry")]
    Contended,
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Domain(domain::Error::invalid(field, reason))
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            // Domain, storage and decoding failures read the same here as
            // in the scheduler: one mapping for both.
            Error::Domain(e) => tend_protocol_scheduler::Error::Domain(e).into(),
            Error::Store(store::Error::IdempotencyConflict { .. }) => {
                Status::already_exists("request_id: was already used for a different request")
            }
            Error::Store(store::Error::WrongExpectedVersion { .. }) | Error::Contended => {
                Status::aborted("the participant's assessments changed concurrently; retry")
            }
            Error::Store(e) => tend_protocol_scheduler::Error::Store(e).into(),
            Error::Decode(e) => tend_protocol_scheduler::Error::Decode(e).into(),
            Error::Schedule(e) => e.into(),
        }
    }
}
