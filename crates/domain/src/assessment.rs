//! Questionnaires: instruments as versioned data (item numbers, keys,
//! scales and rules; never item wording), exact scoring, and reliable change
//! from baseline.
//!
//! Scores are computed in exact fractions and reported both as a fraction
//! and as the nearest double, so that a score never depends on the order in
//! which floating-point sums were taken.

mod builtin;
mod change;
mod instrument;
mod ratio;
mod record;
mod scoring;
mod tenant;

pub use builtin::{built_in, built_ins};
pub use change::{
    Change, ChangeReport, RELIABLE, ReliableChange, Verdict, change, compare, reliable_change,
    sample_sd,
};
pub use instrument::{
    Band, Instrument, Item, MAX_ITEMS, MAX_SUBSCALES, Method, SafetyRule, Sourced, Subscale,
};
pub use ratio::Ratio;
pub use record::{
    ADMINISTERED_SKEW, Aggregate, Assessment, AssessmentScored, AssessmentSubmitted,
    BaselineDesignated, Command, Event, Record, SafetySignalRaised, assessment_id_for_request,
    decide, evolve,
};
pub use scoring::{Score, Scores, SubscaleScore, check_answers, safety_signals, score};
pub use tenant::{InstrumentDefined, InstrumentEvent, Instruments, define};

#[cfg(test)]
mod tests;
