//! The participant's arc: where they are in their weeks around the session,
//! how much of what was asked they did, how their scores moved, and the
//! early warnings a practitioner wants to see.
//!
//! [`ArcState`] is folded from the participant's enrollment, practice,
//! assessment and arc (flag) events, in log order; [`ArcState::view`] reads
//! it at an instant (phase, current week and streak depend on the clock,
//! the rest only on events). [`decide_flags`] compares the state with the
//! warning [`Rules`] and says which flags to raise or clear: flags are
//! events, so partners hear of them on the stream, and a rebuilt arc folds
//! the same flags instead of deciding them again.

mod cohort;
mod flags;
mod fold;
mod state;
mod stats;
mod view;
mod warnings;

pub use cohort::{Cohort, CohortMember, MSC_BENCHMARK_PERCENT, WeekSpread, cohort};
pub use flags::{ArcFlagCleared, ArcFlagRaised, ClearReason, Evidence, FlagEvent, FlagKind, Rise};
pub use fold::{Input, SlotCache};
pub use state::{
    Administered, ArcEnrollment, ArcState, Bounds, Occ, OccState, Phase, PracticeDay, Practised,
};
pub use stats::{MeanCi, mean_ci, quantile, t_975};
pub use view::{
    Adherence, ArcView, AssessmentView, Delta, EnrollmentView, SCS_INSTRUMENTS, ScoreChange,
};
pub use warnings::{CheckFlags, Flags, NEGATIVE_SUBSCALES, Rules, decide_flags};

#[cfg(test)]
mod tests;
