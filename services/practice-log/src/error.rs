//! The one place where this service's failures become gRPC statuses.

use tend_service_kit::{Conflicts, status};
use tonic::Status;

use crate::keys;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The domain refused, storage failed, a stored event could not be
    /// read, or other writers kept winning.
    #[error(transparent)]
    Kit(#[from] tend_service_kit::Error),
    #[error(transparent)]
    Keys(#[from] keys::Error),
}

tend_service_kit::service_error!(Error);

const CONFLICTS: Conflicts = Conflicts {
    version: "the participant's practice log changed concurrently; retry",
    idempotency: "entry_id: was already used for a different entry",
};

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Kit(e) => e.into_status(&CONFLICTS),
            Error::Keys(e) => match e {
                keys::Error::NoMasterKey => status::precondition(
                    "note",
                    "this server has no master key configured (TEND_MASTER_KEYS), so it keeps \
                     no notes; send the entry without one",
                ),
                keys::Error::Forgotten => status::precondition(
                    "note",
                    "the participant's notes were erased at their request: no new notes are kept",
                ),
                keys::Error::Database(e) => {
                    tend_service_kit::Error::Store(e.into()).into_status(&CONFLICTS)
                }
                // Configuration or storage damage: never the note itself.
                e @ (keys::Error::UnknownMasterKey(_) | keys::Error::Corrupt) => {
                    status::internal("cannot open a participant's data key", &e)
                }
            },
        }
    }
}
