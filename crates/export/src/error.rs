use std::path::Path;

/// Why an export could not be made. Nothing is left half-written: the files
/// go to a temporary directory that is renamed into place only when whole.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tenant has no such recipient (or no key for it).
    #[error(
        "the tenant has no recipient `{0}`: list them with ListRecipients, or configure it in TEND_RECIPIENT_KEYS"
    )]
    UnknownRecipient(String),
    /// The recipient has no key of that id.
    #[error("recipient `{recipient}` has no key `{key_id}`")]
    UnknownKey { recipient: String, key_id: String },
    /// Stopped before it finished (the caller went away, or a signal).
    #[error("the export was stopped before it finished")]
    Cancelled,
    #[error("position {asked} is beyond the log's head ({head})")]
    BeyondHead { asked: u64, head: u64 },
    #[error("since_position {since} must be below the export's position {at}")]
    SinceNotBefore { since: u64, at: u64 },
    #[error("the SD given for `{0}` must be a number above 0")]
    BadSd(String),
    /// The output directory exists and holds files.
    #[error("{0} exists and is not empty: name a new or empty directory")]
    NotEmpty(String),
    #[error("{path}: {reason}")]
    Output { path: String, reason: String },
    #[error("writing the export failed: {0}")]
    Write(String),
    /// A stored event this build cannot read (the reason names no data).
    #[error("the log cannot be read: {0}")]
    Decode(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl Error {
    pub(crate) fn io(path: &Path, e: std::io::Error) -> Self {
        Error::Output {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }

    pub(crate) fn csv(path: &Path, e: csv::Error) -> Self {
        Error::Output {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}
