//! The one place where this service's failures become gRPC statuses.

use tend_service_kit::Conflicts;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The domain refused, or storage failed.
    #[error(transparent)]
    Kit(#[from] tend_service_kit::Error),
    /// A stored arc this build cannot read.
    #[error("cannot read a stored arc: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Projection(#[from] tend_projections::Error),
}

tend_service_kit::service_error!(Error);

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::from(tend_event_store::Error::from(e))
    }
}

/// The service only reads: these cannot arise from its calls.
const CONFLICTS: Conflicts = Conflicts {
    version: "the arc changed concurrently; retry",
    idempotency: "was already used for a different request",
};

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Kit(e) => e.into_status(&CONFLICTS),
            Error::Projection(tend_projections::Error::Store(e)) => {
                tend_service_kit::Error::Store(e).into_status(&CONFLICTS)
            }
            // The detail may quote stored content: it goes to the log, not
            // to the caller.
            Error::Corrupt(_) | Error::Projection(_) => {
                tracing::error!(error = %e, "arc read failed");
                Status::internal("cannot read the arc projection")
            }
        }
    }
}
