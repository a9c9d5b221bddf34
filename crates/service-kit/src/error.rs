//! The failures every service shares, and how they read as gRPC statuses.

use tend_domain as domain;
use tend_event_store as store;
use tonic::Status;

use crate::status;

/// A failure of the shared parts: the domain refused, storage failed, a
/// stored event could not be read, or other writers kept winning.
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
    /// The directory of participants failed or refused.
    #[error(transparent)]
    Privacy(#[from] tend_privacy::Error),
    /// Another writer changed the stream before every attempt's append.
    #[error("the stream changed concurrently on every attempt")]
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

/// What a service tells a partner about a conflict, in its own words.
#[derive(Debug, Clone, Copy)]
pub struct Conflicts {
    /// ABORTED: the stream changed under the call (after every retry).
    pub version: &'static str,
    /// ALREADY_EXISTS: the client's id was used before for other content.
    pub idempotency: &'static str,
}

impl Error {
    /// The status a partner receives: INVALID_ARGUMENT with the field,
    /// FAILED_PRECONDITION, NOT_FOUND, ALREADY_EXISTS, ABORTED for
    /// conflicts, UNAVAILABLE when the database is; INTERNAL (logged, never
    /// detailed) for the rest.
    pub fn into_status(self, conflicts: &Conflicts) -> Status {
        match self {
            Self::Domain(e) => status::domain(e),
            Self::Store(e) => status::store(e, conflicts),
            Self::Decode(e) => status::decode(&e),
            Self::Privacy(e) => status::privacy(e, conflicts),
            Self::Contended => Status::aborted(conflicts.version),
        }
    }
}

/// For a service's error enum with a `Kit(tend_service_kit::Error)`
/// variant: `?` on domain, store and decode errors, and the `invalid` and
/// `not_found` shorthands.
#[macro_export]
macro_rules! service_error {
    ($error:ident) => {
        impl From<$crate::__domain::Error> for $error {
            fn from(e: $crate::__domain::Error) -> Self {
                Self::Kit(e.into())
            }
        }

        impl From<$crate::__store::Error> for $error {
            fn from(e: $crate::__store::Error) -> Self {
                Self::Kit(e.into())
            }
        }

        impl From<$crate::__privacy::Error> for $error {
            fn from(e: $crate::__privacy::Error) -> Self {
                Self::Kit(e.into())
            }
        }

        impl From<$crate::__domain::DecodeError> for $error {
            fn from(e: $crate::__domain::DecodeError) -> Self {
                Self::Kit(e.into())
            }
        }

        #[allow(dead_code)]
        impl $error {
            pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
                Self::Kit($crate::Error::invalid(field, reason))
            }

            pub(crate) fn not_found(what: impl Into<String>) -> Self {
                Self::Kit($crate::Error::not_found(what))
            }
        }
    };
}
