//! The one shape every aggregate of the domain takes, and (in tests) the one
//! given/when/then harness that exercises it.
//!
//! A decider is a pair of pure functions: `decide` turns a command and the
//! current state into the events it causes, or the reason it is refused;
//! `evolve` folds one event into state. The shell (`tend-service-kit`'s
//! executor) loads a stream, folds it with `evolve`, decides, appends at the
//! version it read and decides again when another writer got there first.

use crate::{DomainEvent, Error};

pub trait Decider {
    /// Folded from the stream's events; the default is the empty stream.
    type State: Default + Clone;
    /// Everything the decision needs from outside arrives in the command:
    /// the instant, ids, protocol versions.
    type Command;
    type Event: DomainEvent;

    fn decide(state: &Self::State, command: Self::Command) -> Result<Vec<Self::Event>, Error>;

    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// `events` folded onto `state` in order.
    fn fold<'a>(
        state: Self::State,
        events: impl IntoIterator<Item = &'a Self::Event>,
    ) -> Self::State
    where
        Self::Event: 'a,
    {
        events.into_iter().fold(state, Self::evolve)
    }
}

/// Given past events (or a state), when a command, then these events or
/// this refusal: every domain module's tests are written through this.
#[cfg(test)]
pub(crate) mod spec {
    use std::fmt::Debug;

    use super::Decider;
    use crate::Error;

    /// The state a scenario starts from.
    pub(crate) struct Given<D: Decider> {
        pub(crate) state: D::State,
    }

    impl<D: Decider> Clone for Given<D> {
        fn clone(&self) -> Self {
            Self {
                state: self.state.clone(),
            }
        }
    }

    /// The state after `events`.
    pub(crate) fn given<D: Decider>(events: &[D::Event]) -> Given<D> {
        Given {
            state: D::fold(D::State::default(), events),
        }
    }

    /// A scenario that starts from a state built some other way.
    pub(crate) fn given_state<D: Decider>(state: D::State) -> Given<D> {
        Given { state }
    }

    impl<D: Decider> Given<D> {
        /// What `command` decides from here.
        pub(crate) fn when(&self, command: D::Command) -> Then<D> {
            Then {
                outcome: D::decide(&self.state, command),
            }
        }

        /// Folds the events `command` must cause; panics if it is refused.
        pub(crate) fn and(self, command: D::Command) -> Self
        where
            D::Event: Debug,
        {
            let events = self.when(command).events();
            self.and_events(&events)
        }

        /// Folds more past events.
        pub(crate) fn and_events(self, events: &[D::Event]) -> Self {
            Self {
                state: D::fold(self.state, events),
            }
        }
    }

    /// The outcome of a decision, to be checked.
    #[must_use]
    pub(crate) struct Then<D: Decider> {
        pub(crate) outcome: Result<Vec<D::Event>, Error>,
    }

    impl<D: Decider> Then<D>
    where
        D::Event: Debug,
    {
        /// Exactly these events.
        pub(crate) fn then(self, expected: &[D::Event])
        where
            D::Event: PartialEq,
        {
            assert_eq!(self.events(), expected);
        }

        /// Nothing new: the command was accepted and changes nothing.
        pub(crate) fn then_nothing(self) {
            let events = self.events();
            assert!(events.is_empty(), "expected no events, got {events:?}");
        }

        /// Exactly this refusal.
        pub(crate) fn then_err(self, expected: Error) {
            assert_eq!(self.err(), expected);
        }

        /// The events, for checks of their own; panics on a refusal.
        pub(crate) fn events(self) -> Vec<D::Event> {
            match self.outcome {
                Ok(events) => events,
                Err(e) => panic!("expected the command to be accepted, it was refused: {e}"),
            }
        }

        /// The refusal, for checks of its own; panics if accepted.
        pub(crate) fn err(self) -> Error {
            match self.outcome {
                Ok(events) => panic!("expected a refusal, got events {events:?}"),
                Err(e) => e,
            }
        }
    }
}
