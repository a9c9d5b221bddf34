//! The datasets every export holds, column by column. Column names and
//! types are a contract with analysts' scripts: add columns at the end,
//! never rename or retype one (docs/exports.md).

use std::collections::BTreeSet;

use crate::table::{Column, Schema, Type};

pub const PHASES: &[(&str, &str)] = &[
    ("not_enrolled", "no enrollment"),
    ("before_session", "enrolled, before the session day"),
    ("session_day", "on the session's local date"),
    (
        "integration",
        "after the session day, to the end of the arc",
    ),
    ("complete", "the arc has ended"),
    ("paused", "the enrollment is paused"),
    ("withdrawn", "the enrollment was withdrawn"),
];

pub const ENROLLMENT_STATUSES: &[(&str, &str)] = &[
    ("active", "scheduled activities are asked for"),
    ("paused", "paused: nothing is asked for until it resumes"),
    ("withdrawn", "withdrawn: nothing more is asked for"),
];

pub const ACTIVITY_KINDS: &[(&str, &str)] = &[
    (
        "practice",
        "a self-compassion practice the participant logs",
    ),
    ("assessment", "a questionnaire administration"),
    (
        "integration_session",
        "a session with the integration practitioner",
    ),
    ("task", "something done once and ticked off"),
];

pub const OCCURRENCE_STATUSES: &[(&str, &str)] = &[
    ("open", "came due; not completed, and no miss recorded yet"),
    ("done", "completed within its window"),
    ("late", "completed after its window closed"),
    (
        "missed",
        "its window closed without completion (recorded after the grace period)",
    ),
    (
        "cancelled",
        "came due, then a pause or withdrawal took it off the schedule before it was completed",
    ),
];

pub const METHODS: &[(&str, &str)] = &[
    (
        "mean_of_subscale_means",
        "reversed items reversed, each subscale's mean, then the mean of those means (Neff 2003's SCS key)",
    ),
    (
        "mean_of_items",
        "reversed items reversed, then the mean of all items (Raes et al. 2011's SCS-SF key)",
    ),
    (
        "sum",
        "reversed items reversed, then their sum, prorated over answered items when some are missing",
    ),
];

pub const VERDICTS: &[(&str, &str)] = &[
    ("reliably_improved", "|RCI| > 1.96 in the better direction"),
    ("no_reliable_change", "|RCI| <= 1.96"),
    ("reliably_worse", "|RCI| > 1.96 in the worse direction"),
];

pub const FLAG_KINDS: &[(&str, &str)] = &[
    (
        "critic_returns",
        "practice minutes per day in weeks +2 and +3 fell below a share of the pre-session rate",
    ),
    (
        "subscale_rise",
        "a negative subscale mean rose by more than its threshold from baseline",
    ),
    (
        "missed_in_a_row",
        "several consecutive occurrences were missed",
    ),
    ("safety_signal", "an answer above a safety item's threshold"),
];

pub const CLEAR_REASONS: &[(&str, &str)] = &[
    ("resolved", "the condition no longer holds"),
    ("arc_ended", "the arc ended with the flag open"),
];

const PARTICIPANT: &str = "The participant's pseudonym for this recipient.";
const DAY: &str = "Days from the session's local date (0: the session day, negative before), on the participant's calendar; empty without an enrollment.";
const WEEK: &str = "Arc week of `day`: -1 is days -7..-1, 1 is days 1..7, 0 the session day; empty without an enrollment.";
const SHIFTED: &str = " Empty when dates are shifted.";

fn c(name: &str, ty: Type, unit: &'static str, meaning: &str) -> Column {
    Column::new(name, ty, unit, meaning)
}

fn shifted(name: &str, ty: Type, meaning: &str) -> Column {
    Column::new(name, ty, "", &format!("{meaning}{SHIFTED}")).nullable()
}

pub fn participants() -> Schema {
    Schema {
        name: "participants".into(),
        meaning: "One row per participant who shares their data for research: their current enrollment (the latest), as the log stood at the export's position.".into(),
        columns: vec![
            c("participant", Type::Pseudonym, "", PARTICIPANT),
            c("erased", Type::Boolean, "", "The person was erased: what is left of them is numbers (they shared for research when erased)."),
            c("enrollment", Type::Pseudonym, "", "The current enrollment's pseudonym; empty when never enrolled.").nullable(),
            c("protocol", Type::Code, "", "The protocol's id; empty when never enrolled.").nullable(),
            c("protocol_version", Type::Integer, "", "The protocol version the enrollment follows now.").nullable(),
            shifted("session_date", Type::Date, "The session's local date (where the session takes place)."),
            c("time_zone", Type::Code, "", "The participant's IANA time zone, whose wall clock their activities follow.").nullable(),
            c("arc_first_day", Type::Integer, "days", "The arc's first day, relative to the session.").nullable(),
            c("arc_last_day", Type::Integer, "days", "The arc's last day, relative to the session.").nullable(),
            c("enrollment_status", Type::Enum(ENROLLMENT_STATUSES), "", "The current enrollment's status; empty when never enrolled.").nullable(),
            c("phase", Type::Enum(PHASES), "", "Where the participant stands in the arc at the export's instant (`as_of` in the codebook)."),
            c("consent_protocol", Type::Boolean, "", "Consent to take part in the protocol, granted now."),
            c("consent_practice_notes", Type::Boolean, "", "Consent to keep practice notes, granted now."),
            c("consent_questionnaires", Type::Boolean, "", "Consent to answer questionnaires, granted now."),
            c("consent_research_sharing", Type::Boolean, "", "Consent to share pseudonymous data for research, granted now (false only for an erased person)."),
            c("consent_clinician_sharing", Type::Boolean, "", "Consent to share with the participant's clinicians, granted now."),
        ],
    }
}

pub fn occurrences() -> Schema {
    Schema {
        name: "occurrences".into(),
        meaning: "One row per scheduled occurrence that came due (or was completed), of every enrollment: what the arc's adherence counts. Adherence = (done + late) / rows.".into(),
        columns: vec![
            c("participant", Type::Pseudonym, "", PARTICIPANT),
            c("enrollment", Type::Pseudonym, "", "The enrollment's pseudonym (participants.enrollment is the current one)."),
            c("occurrence", Type::Pseudonym, "", "The occurrence's pseudonym; practice.occurrence names it."),
            c("activity", Type::Code, "", "The activity's key in the protocol."),
            c("kind", Type::Enum(ACTIVITY_KINDS), "", "What the activity asks for."),
            c("practice_or_instrument", Type::Code, "", "For a practice: which one; for an assessment: the instrument's id; else empty.").nullable(),
            shifted("local_date", Type::Date, "The local date its window opens on."),
            c("day", Type::Integer, "days", "Days from its enrollment's session date (the current one: the arc's own count) to `local_date`."),
            c("arc_week", Type::Integer, "", WEEK),
            c("local_time", Type::Time, "", "The local time its window opens, as the protocol sets it."),
            shifted("window_opens_at", Type::Instant, "When its window opens."),
            shifted("window_closes_at", Type::Instant, "When its window closes."),
            c("time_zone", Type::Code, "", "The IANA zone the window's wall-clock times are in."),
            c("target_minutes", Type::Integer, "minutes", "Planned minutes of a practice; 0 for anything else."),
            c("status", Type::Enum(OCCURRENCE_STATUSES), "", "Its state at the export's position."),
            shifted("completed_at", Type::Instant, "When it was completed; empty when not."),
            c("completed_day", Type::Integer, "days", "Days from the session's date to the completion's local date; empty when not completed.").nullable(),
            c("protocol_version", Type::Integer, "", "The protocol version that placed it."),
        ],
    }
}

pub fn practice() -> Schema {
    Schema {
        name: "practice".into(),
        meaning: "One row per practice entry, as it stands after corrections. Retracted entries only when asked for (and always in an incremental export), marked. Notes are never exported.".into(),
        columns: vec![
            c("participant", Type::Pseudonym, "", PARTICIPANT),
            c("entry", Type::Pseudonym, "", "The entry's pseudonym."),
            c("kind", Type::Code, "", "The practice, e.g. `self-compassion-break`."),
            shifted("started_at", Type::Instant, "When it started, with the participant's offset then."),
            shifted("local_date", Type::Date, "Its local date."),
            c("local_time", Type::Time, "", "Its local start time."),
            c("day", Type::Integer, "days", DAY).nullable(),
            c("arc_week", Type::Integer, "", WEEK).nullable(),
            c("minutes", Type::Integer, "minutes", "How long, as logged (or corrected)."),
            c("occurrence", Type::Pseudonym, "", "The scheduled occurrence it completed; empty when none.").nullable(),
            c("corrected", Type::Boolean, "", "Corrected at least once since it was logged."),
            c("retracted", Type::Boolean, "", "Retracted: it no longer counts."),
        ],
    }
}

pub fn assessments() -> Schema {
    Schema {
        name: "assessments".into(),
        meaning: "One row per scored administration and scale: `total`, then each subscale. Scores are exact: `score` is the nearest decimal of score_numerator / score_denominator. Change is from the instrument's baseline (the designated one, else the first administration from the start of the current arc).".into(),
        columns: vec![
            c("participant", Type::Pseudonym, "", PARTICIPANT),
            c("assessment", Type::Pseudonym, "", "The administration's pseudonym."),
            c("instrument", Type::Code, "", "The instrument's id, e.g. `scs`, `scs-sf`."),
            c("instrument_version", Type::Integer, "", "The instrument version it was scored by."),
            c("method", Type::Enum(METHODS), "", "How the total is made from the items."),
            shifted("administered_at", Type::Instant, "When it was administered."),
            c("day", Type::Integer, "days", DAY).nullable(),
            c("arc_week", Type::Integer, "", WEEK).nullable(),
            c("baseline", Type::Boolean, "", "This administration is the instrument's baseline."),
            c("scale", Type::Code, "", "`total`, or a subscale's key."),
            c("score", Type::Decimal, "points", "The score on the instrument's answer scale (a mean) or in points (a sum)."),
            c("score_numerator", Type::Integer, "", "The exact score's numerator."),
            c("score_denominator", Type::Integer, "", "The exact score's denominator (positive, in lowest terms)."),
            c("band", Type::Code, "", "The total's band as the instrument defines it; empty for subscales or without bands.").nullable(),
            c("subscale_interpretable", Type::Boolean, "", "False when the instrument's authors advise against reading subscales alone (SCS-SF); true for the total."),
            c("change", Type::Decimal, "points", "score minus the baseline's; empty for the baseline, before it, or without one.").nullable(),
            c("change_numerator", Type::Integer, "", "The exact change's numerator.").nullable(),
            c("change_denominator", Type::Integer, "", "The exact change's denominator.").nullable(),
            c("change_percent", Type::Decimal, "percent", "change as a percent of the baseline's size; empty when the baseline is 0.").nullable(),
            c("reliable_change_index", Type::Decimal, "", "Jacobson & Truax's RCI of the total: change / (SD * sqrt(2) * sqrt(1 - r)), with the instrument's reliability and its reference SD (given for the export, else the instrument's own; the codebook says which); empty without them, for subscales, and for the baseline.").nullable(),
            c("reliable_change", Type::Enum(VERDICTS), "", "The RCI's verdict (|RCI| > 1.96, in the direction the scale counts as better).").nullable(),
        ],
    }
}

pub fn flags() -> Schema {
    Schema {
        name: "flags".into(),
        meaning: "One row per early warning raised, with its clearing when it was cleared.".into(),
        columns: vec![
            c("participant", Type::Pseudonym, "", PARTICIPANT),
            c("flag", Type::Pseudonym, "", "The flag's pseudonym."),
            c("kind", Type::Enum(FLAG_KINDS), "", "The rule that raised it."),
            c("enrollment", Type::Pseudonym, "", "The enrollment it was raised in; empty when none.").nullable(),
            shifted("raised_at", Type::Instant, "When it was raised."),
            c("raised_day", Type::Integer, "days", DAY).nullable(),
            shifted("cleared_at", Type::Instant, "When it was cleared; empty while open."),
            c("cleared_day", Type::Integer, "days", "Days from the session's date to the clearing; empty while open or without an enrollment.").nullable(),
            c("clear_reason", Type::Enum(CLEAR_REASONS), "", "Why it was cleared; empty while open.").nullable(),
        ],
    }
}

/// The wave names of a wide table: `baseline`, then `t1`, `t2`, ...
pub fn wave(i: usize) -> String {
    if i == 0 {
        "baseline".into()
    } else {
        format!("t{i}")
    }
}

/// The wide table of one instrument: a participant per row, the baseline
/// and each later administration side by side.
pub fn wide(instrument: &str, waves: usize, subscales: &BTreeSet<String>) -> Schema {
    let mut columns = vec![c("participant", Type::Pseudonym, "", PARTICIPANT)];
    for i in 0..waves {
        let w = wave(i);
        let which = if i == 0 {
            "the baseline".to_owned()
        } else {
            format!("administration {i} after the baseline")
        };
        columns.push(shifted(
            &format!("{w}_administered_at"),
            Type::Instant,
            &format!("When {which} was administered; empty when there was none."),
        ));
        columns.push(
            c(
                &format!("{w}_day"),
                Type::Integer,
                "days",
                &format!("Days from the session's date to {which}."),
            )
            .nullable(),
        );
        columns.push(
            c(
                &format!("{w}_total"),
                Type::Decimal,
                "points",
                &format!("The total of {which}."),
            )
            .nullable(),
        );
        for s in subscales {
            columns.push(
                c(
                    &format!("{w}_{s}"),
                    Type::Decimal,
                    "points",
                    &format!("Subscale `{s}` of {which}."),
                )
                .nullable(),
            );
        }
    }
    Schema {
        name: format!("wide_{}", file_safe(instrument)),
        meaning: format!(
            "Instrument `{instrument}`, wide: one row per participant with a baseline; the baseline and each later administration side by side, oldest first (administrations before a designated baseline are in `assessments` only)."
        ),
        columns,
    }
}

/// An instrument id as part of a file name (ids are slugs; anything else
/// becomes `_`).
pub fn file_safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The long datasets, in the order their files are written.
pub fn long() -> [Schema; 5] {
    [
        participants(),
        occurrences(),
        practice(),
        assessments(),
        flags(),
    ]
}
