//! Following the global log: catch up from a position, then live.
//!
//! A subscription only ever reads the database, a page at a time, and asks
//! for the next page when its consumer has taken the last one. A slow
//! consumer therefore costs one page of memory and is never dropped: it
//! simply reads further behind the head. Positions are commit ordered (see
//! the writer), so reading `position > checkpoint` never skips an event.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::{Error, EventStore, Filter, RecordedEvent};

/// What a subscription delivers next.
// Deliveries are handed over one at a time, never stored in bulk: boxing
// the event would only add an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Event(RecordedEvent),
    /// Everything up to this position has been delivered or filtered out.
    Checkpoint(u64),
}

/// A live, ordered reader of the log. See [`EventStore::subscribe`].
#[derive(Debug)]
pub struct Subscription {
    store: EventStore,
    filter: Filter,
    position: u64,
    page: VecDeque<RecordedEvent>,
    /// Where the last page's scan ended, past its last matching event.
    scanned_through: u64,
    head: watch::Receiver<u64>,
    /// At most one read per this, once caught up (see `paced`).
    every: Duration,
    /// When the last read that reached the head was sent.
    caught_up_at: Option<Instant>,
}

impl Subscription {
    pub(crate) fn new(store: EventStore, filter: Filter, after: u64) -> Self {
        let head = store.head_watch();
        Self {
            store,
            filter,
            position: after,
            page: VecDeque::new(),
            scanned_through: after,
            head,
            every: Duration::ZERO,
            caught_up_at: None,
        }
    }

    /// Once caught up, reads at most once per `every`, however often the
    /// log moves: for a consumer that need not hear of each commit at once
    /// and mostly filters everything out (each read is a query, and a busy
    /// log commits hundreds of times a second). A backlog is read without
    /// waiting.
    pub fn paced(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// The last position delivered (as an event or a checkpoint).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next event or checkpoint, waiting for new commits when caught up.
    /// Fails with [`Error::ShuttingDown`] when the store stops.
    pub async fn next(&mut self) -> Result<Delivery, Error> {
        loop {
            if let Some(event) = self.page.pop_front() {
                self.position = event.position;
                return Ok(Delivery::Event(event));
            }
            if self.scanned_through > self.position {
                self.position = self.scanned_through;
                return Ok(Delivery::Checkpoint(self.position));
            }
            self.wait_for_commits_after(self.position).await?;
            if let Some(at) = self.caught_up_at {
                let wait = self.every.saturating_sub(at.elapsed());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            let sent = Instant::now();
            let page = self
                .store
                .read_log(
                    &self.filter,
                    self.position,
                    self.store.inner.options.page_size,
                )
                .await?;
            if page.events.is_empty() && page.scanned_through <= self.position {
                // Our view of the head ran ahead of what this connection
                // sees; wait for the next commit rather than spin.
                self.head.changed().await.map_err(|_| Error::ShuttingDown)?;
            }
            // Reached the head as known (a filtered read that scanned its
            // window without a match is not caught up).
            let caught_up = page.scanned_through >= *self.head.borrow();
            self.caught_up_at = (!self.every.is_zero() && caught_up).then_some(sent);
            self.scanned_through = page.scanned_through;
            self.page.extend(page.events);
        }
    }

    async fn wait_for_commits_after(&mut self, position: u64) -> Result<(), Error> {
        loop {
            if *self.head.borrow_and_update() > position {
                return Ok(());
            }
            self.head.changed().await.map_err(|_| Error::ShuttingDown)?;
        }
    }
}
