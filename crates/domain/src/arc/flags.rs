//! The flag events: early warnings raised and cleared on the participant's arc stream.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagKind {
    CriticReturns,
    SubscaleRise,
    MissedInARow,
    SafetySignal,
}

impl FlagKind {
    pub const ALL: [FlagKind; 4] = [
        FlagKind::CriticReturns,
        FlagKind::SubscaleRise,
        FlagKind::MissedInARow,
        FlagKind::SafetySignal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FlagKind::CriticReturns => "critic_returns",
            FlagKind::SubscaleRise => "subscale_rise",
            FlagKind::MissedInARow => "missed_in_a_row",
            FlagKind::SafetySignal => "safety_signal",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FlagEvent {
    Raised(ArcFlagRaised),
    Cleared(ArcFlagCleared),
}

/// An early warning was raised. Evidence holds numbers and ids only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArcFlagRaised {
    pub flag_id: Uuid,
    pub kind: FlagKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_id: Option<Uuid>,
    pub raised_at: Timestamp,
    pub evidence: Evidence,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArcFlagCleared {
    pub flag_id: Uuid,
    pub kind: FlagKind,
    pub cleared_at: Timestamp,
    pub reason: ClearReason,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Evidence {
    CriticReturns {
        /// Practice minutes per day over the pre-session weeks.
        pre_minutes_per_day: f64,
        /// Practice minutes per day over the days of weeks +2 and +3 so far.
        post_minutes_per_day: f64,
        post_days: u32,
    },
    SubscaleRise {
        instrument_id: String,
        from_assessment: Uuid,
        to_assessment: Uuid,
        rises: Vec<Rise>,
    },
    MissedInARow {
        count: u32,
        /// The missed occurrences, oldest first.
        occurrences: Vec<Uuid>,
    },
    SafetySignal {
        assessment_id: Uuid,
        instrument_id: String,
        items: Vec<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rise {
    pub subscale: String,
    pub from: f64,
    pub to: f64,
    /// The reliable-change threshold the rise exceeded.
    pub threshold: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClearReason {
    /// The rule no longer holds: practice recovered, a later assessment is
    /// back within the threshold, an occurrence was done.
    Resolved,
    /// The arc ended or the enrollment was withdrawn.
    ArcEnded,
}

event_codec! {
    for FlagEvent {
        Raised => "ArcFlagRaised",
        Cleared => "ArcFlagCleared",
    }
}
