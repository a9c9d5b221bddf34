//! The one place where this service's failures become gRPC statuses.

use tend_domain as domain;
use tend_event_store as store;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::keys;

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
    #[error(transparent)]
    Keys(#[from] keys::Error),
    /// Another writer kept changing the stream; the caller may retry.
    #[error("the participant's practice log changed concurrently; retry")]
    Contended,
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Domain(domain::Error::invalid(field, reason))
    }
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
            // Domain, storage and decoding failures read the same here as
            // in the scheduler: one mapping for both.
            Error::Domain(e) => tend_protocol_scheduler::Error::Domain(e).into(),
            Error::Store(store::Error::IdempotencyConflict { .. }) => {
                Status::already_exists("entry_id: was already used for a different entry")
            }
            Error::Store(store::Error::WrongExpectedVersion { .. }) | Error::Contended => {
                Status::aborted("the participant's practice log changed concurrently; retry")
            }
            Error::Store(e) => tend_protocol_scheduler::Error::Store(e).into(),
            Error::Decode(e) => tend_protocol_scheduler::Error::Decode(e).into(),
            Error::Schedule(e) => e.into(),
            Error::Keys(e) => match e {
                keys::Error::NoMasterKey => precondition(
                    "note",
                    "this server has no master key configured (TEND_MASTER_KEYS), so it keeps \
                     no notes; send the entry without one",
                ),
                keys::Error::Forgotten => precondition(
                    "note",
                    "the participant's notes were erased at their request: no new notes are kept",
                ),
                keys::Error::Database(e) => tend_protocol_scheduler::Error::Store(e.into()).into(),
                e @ (keys::Error::UnknownMasterKey(_) | keys::Error::Corrupt) => {
                    // Configuration or storage damage: never the note itself.
                    tracing::error!(error = %e, "cannot open a participant's data key");
                    Status::internal("internal error")
                }
            },
        }
    }
}
