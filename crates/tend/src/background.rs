//! Background work (the scheduler and the arc projection) runs on a
//! runtime of its own: one thread, with connections of its own,
//! and optionally a lower priority than the calls' threads
//! (`TEND_BACKGROUND_NICE`).
//!
//! On the calls' runtime a scheduler batch or a projection flush held one
//! of its worker threads for milliseconds at a time, and calls queued
//! behind it on that thread. With background work on a thread of its own,
//! the kernel shares the cores between the two instead.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use tend_event_store::EventStore;
use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

use crate::Result;

/// Connections background work may hold at once: the scheduler's batch
/// transaction and reads, and the projection's.
const CONNECTIONS: u32 = 6;

pub(crate) struct Background {
    /// Taken only on drop.
    runtime: Option<Runtime>,
    handle: Handle,
    /// The server's store, its reads and transactions on the background's
    /// own pool.
    pub store: EventStore,
}

impl Background {
    pub(crate) fn start(store: &EventStore, nice: i32) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tend-background")
            .on_thread_start(move || lower_priority(nice))
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the background runtime: {e}"))?;
        // A connection is driven by the runtime that opened it: opened here
        // (lazily, by background tasks), none of the calls' connections
        // waits on the background's thread, nor the other way round.
        let pool = {
            let _entered = runtime.enter();
            PgPoolOptions::new()
                .max_connections(CONNECTIONS)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy_with(store.pool().connect_options().as_ref().clone())
        };
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            store: store.reading_through(pool),
        })
    }

    pub(crate) fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }

    /// Closes the background's connections, then stops its runtime; its
    /// tasks have ended.
    pub(crate) async fn close(self) {
        self.store.pool().close().await;
    }
}

impl Drop for Background {
    /// Stops the runtime without waiting: dropping a runtime would block,
    /// which is not allowed on the calls' runtime (a start-up error after
    /// `start` drops it there too).
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Sets the calling thread's nice value. On Linux the nice value belongs
/// to a thread, so this leaves the calls' threads as they are.
#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    if let Err(e) = rustix::process::setpriority_process(None, nice) {
        tracing::warn!(error = %e, nice, "cannot lower the background thread's priority");
    }
}

/// Elsewhere a nice value may be the whole process's: left alone.
#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {}
