//! The one place where this service's failures become gRPC statuses.

use tend_service_kit::{Conflicts, status};
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The domain refused, storage failed, a stored event could not be
    /// read, or other writers kept winning.
    #[error(transparent)]
    Kit(#[from] tend_service_kit::Error),
    /// This server no longer holds the scheduler lease.
    #[error("the scheduler lease passed to another server")]
    LeaseLost,
    /// The scheduler decided events the stream already holds: a fault in
    /// the rules, reported rather than retried.
    #[error("the scheduler decided events the stream already holds")]
    Redecided,
}

tend_service_kit::service_error!(Error);

const CONFLICTS: Conflicts = Conflicts {
    version: "the participant's schedule changed concurrently; retry",
    idempotency: "request_id: was already used for a different request",
};

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Kit(e) => e.into_status(&CONFLICTS),
            Error::LeaseLost => Status::unavailable(e.to_string()),
            Error::Redecided => status::internal("scheduler fault", &e),
        }
    }
}
