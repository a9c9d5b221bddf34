//! The one place where this service's failures become gRPC statuses.

use tend_service_kit::Conflicts;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The domain refused, storage failed, a stored event could not be
    /// read, or other writers kept winning.
    #[error(transparent)]
    Kit(#[from] tend_service_kit::Error),
}

tend_service_kit::service_error!(Error);

const CONFLICTS: Conflicts = Conflicts {
    version: "the participant's consent changed concurrently; retry",
    idempotency: "request_id: was already used for a different request",
};

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Kit(e) => e.into_status(&CONFLICTS),
        }
    }
}
