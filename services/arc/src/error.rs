//! The one place where this service's failures become gRPC statuses.

use tend_domain as domain;
use tend_event_store as store;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Domain(#[from] domain::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A stored arc this build cannot read.
    #[error("cannot read a stored arc: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Projection(#[from] tend_projections::Error),
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Domain(domain::Error::invalid(field, reason))
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            // Field errors and storage failures read as in the other
            // services: one mapping for all.
            Error::Domain(e) => tend_protocol_scheduler::Error::Domain(e).into(),
            Error::Store(e) | Error::Projection(tend_projections::Error::Store(e)) => {
                tend_protocol_scheduler::Error::Store(e).into()
            }
            Error::Corrupt(_) | Error::Projection(_) => {
                // The detail may quote stored content: it goes to the log,
                // not to the caller.
                tracing::error!(error = %e, "arc read failed");
                Status::internal("cannot read the arc projection")
            }
        }
    }
}
