use uuid::Uuid;

use crate::{ExpectedVersion, StreamId};

/// Why the store refused or failed an operation. Refusals (the first four)
/// are the caller's to fix; the last two are the store's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is malformed.
    #[error("{field}: {reason}")]
    InvalidInput { field: &'static str, reason: String },

    /// Optimistic concurrency: the stream moved since the writer read it.
    #[error("stream {stream} is at version {}, expected {expected}", .actual.map_or("none (no stream)".to_string(), |v| v.to_string()))]
    WrongExpectedVersion {
        stream: StreamId,
        expected: ExpectedVersion,
        actual: Option<u64>,
    },

    /// An event id already stored with other content, or a retry that
    /// matches only part of an earlier append.
    #[error("event {event_id} was already appended with different content")]
    IdempotencyConflict { event_id: Uuid },

    /// The store is shutting down and takes no more appends.
    #[error("the event store is shutting down")]
    ShuttingDown,

    /// The database could not be reached or was overloaded while this
    /// append waited in a batch. If the connection failed as it committed,
    /// the append may be stored: retrying with the same event ids is safe.
    #[error("database unavailable: {0}")]
    Unavailable(String),

    /// Other servers kept writing the same streams while this append was
    /// decided again and again; nothing of it was written.
    #[error("too many concurrent writes to the same stream; retry")]
    Contended,

    /// PostgreSQL failed or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// A stored row could not be read back (corruption or a schema drift).
    #[error("stored event at position {position} is unreadable: {reason}")]
    Corrupt { position: u64, reason: String },
}

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidInput {
            field,
            reason: reason.into(),
        }
    }

    /// True for the refusals: the caller's input or expectation, not a
    /// failure of the store.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::InvalidInput { .. }
                | Self::WrongExpectedVersion { .. }
                | Self::IdempotencyConflict { .. }
        )
    }

    /// True when the failure is transient (the database was unreachable or
    /// overloaded) and the same call may succeed later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::ShuttingDown | Self::Unavailable(_) | Self::Contended => true,
            Self::Database(e) => sqlx_is_unavailable(e),
            _ => false,
        }
    }
}

fn sqlx_is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
    ) || e
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| {
            // Class 08 connection exceptions, 53 insufficient resources,
            // 57P0x operator intervention (shutdown), 57014 cancelled
            // (statement timeout), 55P03 lock not available, 40001
            // serialization failure, 40P01 deadlock.
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || ["57014", "55P03", "40001", "40P01"].contains(&c.as_ref())
        })
}
