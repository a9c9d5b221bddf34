//! States folded from streams, kept in memory at the version they were
//! folded to, so that loading a stream again reads and folds only the
//! events appended since: what a participant's next command or scheduler
//! round costs then follows what changed, not the length of their history.
//!
//! A cache, never the truth. A state is kept only together with the stream
//! version it was folded to; a load reads every event after that version
//! (written by this server or any other), so a kept state can be behind,
//! never wrong. It lives in the process that folded it, so the code that
//! folded it is the code that reads it: a new build starts empty and
//! rebuilds each state from the events on first use. Missing (never
//! loaded, evicted, or taken by a concurrent load of the same stream), a
//! state is folded from the start.
//!
//! The store knows nothing of the states: each is kept under the type of
//! the fold that made it (`K`, a decider) and handed back only to it.

use std::any::{Any, TypeId};
use std::sync::Mutex;

use lru::LruCache;

use crate::{StreamId, TenantId};

type Key = (TypeId, TenantId, StreamId);

struct Slot {
    version: u64,
    state: Box<dyn Any + Send + Sync>,
}

struct Slots {
    lru: LruCache<Key, Slot>,
    /// Events folded into the kept states, which is what their size
    /// follows.
    events: usize,
}

/// The kept states of one store, shared by its clones.
pub struct Folds {
    slots: Mutex<Slots>,
    /// At most this many events folded into kept states, least recently
    /// used evicted first; 0 keeps nothing.
    budget: usize,
}

impl std::fmt::Debug for Folds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Folds")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl Folds {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            slots: Mutex::new(Slots {
                lru: LruCache::unbounded(),
                events: 0,
            }),
            budget,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        // A panic elsewhere while holding it leaves nothing half-done that
        // matters: at worst a count off, corrected as slots go.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the state fold `K` kept for the stream, and the version it
    /// was folded to. Taken, not copied: the caller folds what is new and
    /// gives it back with [`Folds::keep`].
    pub fn take<K: 'static, S: Send + Sync + 'static>(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> Option<(S, u64)> {
        let key = (TypeId::of::<K>(), tenant.clone(), stream.clone());
        let slot = {
            let mut slots = self.slots();
            let slot = slots.lru.pop(&key)?;
            slots.events = slots.events.saturating_sub(weight(slot.version));
            slot
        };
        let state = slot.state.downcast::<S>().ok()?;
        Some((*state, slot.version))
    }

    /// Keeps `state`, folded by `K` from the stream up to `version`, unless
    /// a state of a later version is kept already.
    pub fn keep<K: 'static, S: Send + Sync + 'static>(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        version: u64,
        state: S,
    ) {
        let events = weight(version);
        if events > self.budget {
            return;
        }
        let key = (TypeId::of::<K>(), tenant.clone(), stream.clone());
        let mut slots = self.slots();
        if let Some(kept) = slots.lru.peek(&key)
            && kept.version >= version
        {
            return;
        }
        let slot = Slot {
            version,
            state: Box::new(state),
        };
        if let Some(old) = slots.lru.put(key, slot) {
            slots.events = slots.events.saturating_sub(weight(old.version));
        }
        slots.events += events;
        while slots.events > self.budget {
            match slots.lru.pop_lru() {
                Some((_, old)) => slots.events = slots.events.saturating_sub(weight(old.version)),
                None => {
                    slots.events = 0;
                    break;
                }
            }
        }
    }

    /// How many states are kept, and the events folded into them.
    pub fn usage(&self) -> (usize, usize) {
        let slots = self.slots();
        (slots.lru.len(), slots.events)
    }
}

/// A stream at `version` has `version + 1` events.
fn weight(version: u64) -> usize {
    usize::try_from(version)
        .unwrap_or(usize::MAX)
        .saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct A;
    struct B;

    fn ids(n: usize) -> (TenantId, StreamId) {
        (
            TenantId::new("t").unwrap(),
            StreamId::new(format!("s-{n}")).unwrap(),
        )
    }

    #[test]
    fn a_state_is_handed_back_once_and_only_to_its_own_fold() {
        let folds = Folds::new(100);
        let (t, s) = ids(1);
        folds.keep::<A, _>(&t, &s, 4, vec![1u8, 2, 3]);
        assert!(folds.take::<B, Vec<u8>>(&t, &s).is_none());
        assert_eq!(folds.take::<A, Vec<u8>>(&t, &s), Some((vec![1, 2, 3], 4)));
        assert!(folds.take::<A, Vec<u8>>(&t, &s).is_none(), "taken");
        assert_eq!(folds.usage(), (0, 0));
    }

    #[test]
    fn an_older_state_never_replaces_a_newer_one() {
        let folds = Folds::new(100);
        let (t, s) = ids(1);
        folds.keep::<A, _>(&t, &s, 7, "seven");
        folds.keep::<A, _>(&t, &s, 3, "three");
        assert_eq!(folds.take::<A, &str>(&t, &s), Some(("seven", 7)));
    }

    #[test]
    fn the_least_recently_used_go_first_when_over_the_budget() {
        let folds = Folds::new(25);
        for n in 0..3 {
            let (t, s) = ids(n);
            folds.keep::<A, _>(&t, &s, 9, n); // 10 events each
        }
        assert_eq!(folds.usage(), (2, 20));
        let (t, s) = ids(0);
        assert!(folds.take::<A, usize>(&t, &s).is_none(), "evicted");
        let (t, s) = ids(2);
        assert_eq!(folds.take::<A, usize>(&t, &s), Some((2, 9)));
        // A stream longer than the whole budget is never kept.
        let (t, s) = ids(9);
        folds.keep::<A, _>(&t, &s, 30, 9usize);
        assert!(folds.take::<A, usize>(&t, &s).is_none());
        assert_eq!(Folds::new(0).usage(), (0, 0));
    }
}
