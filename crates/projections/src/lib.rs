//! Projection machinery: read models that follow the event log.
//!
//! A [`Projection`] folds events into its own tables. The machinery around
//! it guarantees what every read model needs:
//! - *no skipped event*: it reads the log by position after its checkpoint
//!   (positions are in commit order, so nothing commits behind it);
//! - *rows and checkpoint agree*: a batch's rows and the new checkpoint are
//!   written in one transaction;
//! - *one writer*: only the holder of the projection's lease writes, and
//!   its transactions check the lease (a holder that stalled past its lease
//!   cannot write over its successor); another server takes over when the
//!   lease expires;
//! - *safe rebuilds*: [`rebuild`] fills the next *generation* beside the one
//!   queries read, and switches them over in the transaction that writes its
//!   last batch, so a query sees the old model or the new one, never half
//!   of one.
//!
//! It is not a scheduler of projections: each server runs one [`Runner`]
//! per projection, and the lease decides which of them works.

mod runner;

use std::future::Future;

use sqlx::{PgConnection, PgPool};
use tend_event_store::{Filter, RecordedEvent};

pub use runner::{
    RebuildOptions, RebuildReport, Runner, RunnerOptions, Status, Step, rebuild, status,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] tend_event_store::Error),
    #[error("the projection lease was lost")]
    LeaseLost,
    #[error("another process is rebuilding projection {0}")]
    RebuildRunning(String),
    #[error("unknown projection {0}")]
    Unknown(String),
    #[error("projection {name}: {source}")]
    Projection {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A read model. The machinery calls `fold` with events in log order and
/// `flush` inside the transaction that also moves the checkpoint; between
/// them the projection keeps its working set in memory.
pub trait Projection: Send {
    /// The name in the checkpoint and lease tables, and for `tend
    /// projections rebuild NAME`.
    fn name(&self) -> &'static str;

    /// The events it reads.
    fn filter(&self) -> Filter;

    /// Folds events (in position order) into the working set, reading what
    /// it needs of `generation`'s rows.
    fn fold(
        &mut self,
        pool: &PgPool,
        generation: i32,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Writes the working set's changes to `generation`.
    fn flush(
        &mut self,
        tx: &mut PgConnection,
        generation: i32,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// After a flush committed, in the live runner only: the place for side
    /// effects, such as appending events the model decided. `caught_up`
    /// says whether the batch reached the head of the log (a model catching
    /// up on a backlog has not seen the present yet).
    fn committed(&mut self, caught_up: bool) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = caught_up;
        async { Ok(()) }
    }

    /// Called by the live runner while it is caught up, at most every
    /// [`RunnerOptions::sweep`], holding the lease: for what time alone
    /// causes, with no event to fold.
    fn sweep(
        &mut self,
        pool: &PgPool,
        generation: i32,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = (pool, generation);
        async { Ok(()) }
    }

    /// Forgets the working set (after a failed transaction, or to bound
    /// memory); the next fold reads rows again.
    fn reset(&mut self);

    /// Called after each committed batch. The working set then holds
    /// exactly what was written, and the lease is still this runner's, so
    /// a projection may keep it for the next batch (folding only new
    /// events onto it); by default it forgets it.
    fn batch_done(&mut self) {
        self.reset();
    }

    /// Tells the projection that `generation` holds no rows yet, so that
    /// its first folds need not look for any (a rebuild from scratch).
    fn starting_empty(&mut self) {}

    /// Deletes a generation's rows.
    fn drop_generation(
        &self,
        tx: &mut PgConnection,
        generation: i32,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}
