//! The built-in protocols, as data. Figures come from `shared/domain.md`
//! (the arc) and the MSC program's published structure (Neff & Germer:
//! eight weekly sessions, daily home practice, a half-day retreat).

use std::sync::LazyLock;

use super::{Activity, ActivityKind, Cadence, DaySpan, Protocol};
use crate::time::LocalTime;

static BUILT_INS: LazyLock<Vec<Protocol>> = LazyLock::new(|| vec![integration_arc(), msc()]);

/// Every built-in protocol, each at version 1 and published.
pub fn built_ins() -> &'static [Protocol] {
    &BUILT_INS
}

/// The built-in protocol with this id.
pub fn built_in(id: &str) -> Option<&'static Protocol> {
    BUILT_INS.iter().find(|p| p.id == id)
}

fn at(hhmm: &str) -> LocalTime {
    hhmm.parse().expect("built-in times are valid")
}

fn weeks(first: i32, last: i32) -> DaySpan {
    DaySpan::weeks(first, last).expect("built-in week ranges are valid")
}

fn day(d: i32) -> DaySpan {
    DaySpan { first: d, last: d }
}

fn practice(name: &str) -> ActivityKind {
    ActivityKind::Practice {
        practice: name.to_owned(),
    }
}

#[allow(clippy::too_many_arguments)]
fn activity(
    key: &str,
    kind: ActivityKind,
    span: DaySpan,
    cadence: Cadence,
    times: &[&str],
    target_minutes: u32,
    window_minutes: u32,
) -> Activity {
    Activity {
        key: key.to_owned(),
        kind,
        span,
        cadence,
        times: times.iter().map(|t| at(t)).collect(),
        target_minutes,
        window_minutes,
    }
}

const HOURS: u32 = 60;
const DAYS: u32 = 24 * HOURS;

/// Eight weeks around one dosing session: build the container in the four
/// weeks before, integrate in the four after.
fn integration_arc() -> Protocol {
    use Cadence::*;
    let scs_sf = || ActivityKind::Assessment {
        instrument: "scs-sf".to_owned(),
    };
    Protocol {
        id: "integration-arc-8w".to_owned(),
        version: 1,
        title: "Integration arc, 8 weeks around the session".to_owned(),
        weeks_before: 4,
        weeks_after: 4,
        required_purposes: Default::default(),
        activities: vec![
            // Before: build the container.
            activity(
                "baseline-scs-sf",
                scs_sf(),
                day(-28),
                Once,
                &["09:00"],
                10,
                7 * DAYS,
            ),
            activity(
                "support-person",
                ActivityKind::Task,
                day(-28),
                Once,
                &["09:00"],
                5,
                7 * DAYS,
            ),
            activity(
                "self-compassion-break",
                practice("self-compassion-break"),
                weeks(-4, -1),
                Daily,
                &["08:00"],
                10,
                14 * HOURS,
            ),
            // Twice daily; each window closes before the next one opens.
            activity(
                "soothing-touch",
                practice("soothing-touch"),
                weeks(-4, -1),
                Daily,
                &["08:00", "20:00"],
                2,
                4 * HOURS,
            ),
            activity(
                "journaling-reframe",
                practice("journaling-reframe"),
                weeks(-4, -1),
                Daily,
                &["19:00"],
                10,
                5 * HOURS,
            ),
            // After: the high-leverage window.
            activity(
                "daily-practice",
                practice("formal-meditation"),
                weeks(1, 1),
                Daily,
                &["08:00"],
                15,
                14 * HOURS,
            ),
            activity(
                "loving-kindness",
                practice("loving-kindness"),
                weeks(2, 2),
                Daily,
                &["08:00"],
                15,
                14 * HOURS,
            ),
            activity(
                "written-integration",
                practice("written-integration"),
                weeks(3, 3),
                Daily,
                &["19:00"],
                20,
                5 * HOURS,
            ),
            activity(
                "post-scs-sf",
                scs_sf(),
                day(22),
                Once,
                &["09:00"],
                10,
                7 * DAYS,
            ),
            activity(
                "continuation-plan",
                ActivityKind::Task,
                day(22),
                Once,
                &["09:00"],
                15,
                7 * DAYS,
            ),
            // Throughout the integration weeks: days 1, 8, 15 and 22.
            activity(
                "integration-session",
                ActivityKind::IntegrationSession,
                weeks(1, 4),
                Weekly,
                &["10:00"],
                60,
                3 * DAYS,
            ),
        ],
    }
}

/// The 8-week Mindful Self-Compassion program; day 0 is the first group
/// session.
fn msc() -> Protocol {
    use Cadence::*;
    Protocol {
        id: "msc-8w".to_owned(),
        version: 1,
        title: "Mindful Self-Compassion, 8 weeks".to_owned(),
        weeks_before: 0,
        weeks_after: 8,
        required_purposes: Default::default(),
        activities: vec![
            activity(
                "baseline-scs",
                ActivityKind::Assessment {
                    instrument: "scs".to_owned(),
                },
                day(0),
                Once,
                &["09:00"],
                10,
                2 * DAYS,
            ),
            // Sessions 1 to 8 on days 0, 7, .., 49.
            activity(
                "group-session",
                ActivityKind::IntegrationSession,
                DaySpan { first: 0, last: 49 },
                Weekly,
                &["18:00"],
                165,
                3 * HOURS,
            ),
            activity(
                "home-practice",
                practice("formal-meditation"),
                DaySpan { first: 1, last: 55 },
                Daily,
                &["08:00"],
                30,
                14 * HOURS,
            ),
            // Half a day between sessions 5 (day 28) and 7 (day 42).
            activity(
                "retreat",
                ActivityKind::IntegrationSession,
                day(38),
                Once,
                &["09:00"],
                240,
                5 * HOURS,
            ),
            activity(
                "post-scs",
                ActivityKind::Assessment {
                    instrument: "scs".to_owned(),
                },
                day(50),
                Once,
                &["09:00"],
                10,
                6 * DAYS,
            ),
        ],
    }
}
