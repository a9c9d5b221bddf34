//! The one place where this service's failures become gRPC statuses.

use tend_service_kit::status;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Export(#[from] tend_export::Error),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("the export's files could not be read back: {0}")]
    Staging(#[from] std::io::Error),
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        use tend_export::Error as E;
        match e {
            Error::Invalid { field, reason } => status::bad_request(field, &reason),
            Error::Export(E::UnknownRecipient(r)) => Status::not_found(format!(
                "recipient `{r}`: the tenant has no such recipient (ListRecipients)"
            )),
            Error::Export(e @ E::UnknownKey { .. }) => Status::not_found(e.to_string()),
            Error::Export(E::Cancelled) => Status::cancelled("the export was stopped"),
            Error::Export(e @ E::BeyondHead { .. }) => {
                status::bad_request("at_position", &e.to_string())
            }
            Error::Export(e @ E::SinceNotBefore { .. }) => {
                status::bad_request("since_position", &e.to_string())
            }
            Error::Export(e @ E::BadSd(_)) => status::bad_request("reference_sd", &e.to_string()),
            Error::Export(E::Database(e)) => status::store(e.into(), &CONFLICTS),
            Error::Export(e @ E::Decode(_)) => status::internal("an export's log read", &e),
            Error::Export(e @ (E::NotEmpty(_) | E::Output { .. } | E::Write(_))) => {
                status::internal("an export's temporary files", &e)
            }
            Error::Staging(e) => status::internal("an export's temporary files", &e),
        }
    }
}

const CONFLICTS: tend_service_kit::Conflicts = tend_service_kit::Conflicts {
    version: "the log changed; retry",
    idempotency: "retry",
};
