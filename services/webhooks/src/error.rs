//! The one place where this service's failures become gRPC statuses.

use tend_service_kit::{Conflicts, status};
use tonic::Status;

use crate::target::Refused;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The domain refused, storage failed, a stored event could not be
    /// read, or other writers kept winning.
    #[error(transparent)]
    Kit(#[from] tend_service_kit::Error),
    /// The URL is not one webhooks may go to.
    #[error("url: {0}")]
    Url(#[from] Refused),
    /// A recipient the tenant does not have.
    #[error("recipient_id: no such recipient in this tenant")]
    UnknownRecipient,
    /// An endpoint whose secret is not stored (registered by a server that
    /// crashed between the two writes): registering again fixes it.
    #[error("the endpoint's secret is missing")]
    SecretMissing,
}

tend_service_kit::service_error!(Error);

const CONFLICTS: Conflicts = Conflicts {
    version: "the endpoint changed concurrently; retry",
    idempotency: "request_id: was already used for a different request",
};

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Kit(e) => e.into_status(&CONFLICTS),
            Error::Url(refused) => status::bad_request("url", &refused.to_string()),
            Error::UnknownRecipient => Status::not_found(
                "recipient_id: the tenant has no such recipient; see PrivacyService.ListRecipients",
            ),
            Error::SecretMissing => status::precondition(
                "endpoint_id",
                "the endpoint's secret is missing: rotate it (RotateSecret)",
            ),
        }
    }
}
