use super::*;
use crate::decider::spec;

fn now() -> Timestamp {
    "2026-11-01T12:00:00Z".parse().unwrap()
}

fn custom(id: &str) -> Protocol {
    let mut p = built_in("integration-arc-8w").unwrap().clone();
    p.id = id.to_owned();
    p.title = "Clinic arc".to_owned();
    p
}

fn check_invalid(edit: impl FnOnce(&mut Protocol), field: &str, reason_has: &str) {
    let mut p = custom("clinic-arc");
    edit(&mut p);
    match p.validate() {
        Err(Error::Invalid { field: f, reason }) => {
            assert_eq!(f, field, "{reason}");
            assert!(reason.contains(reason_has), "{reason}");
        }
        other => panic!("expected {field} to be refused, got {other:?}"),
    }
}

#[test]
fn built_in_protocols_are_valid() {
    for p in built_ins() {
        p.validate().unwrap_or_else(|e| panic!("{}: {e}", p.id));
    }
    assert!(built_in("integration-arc-8w").is_some());
    assert!(built_in("msc-8w").is_some());
}

#[test]
fn weeks_map_to_days_around_the_session() {
    assert_eq!(
        DaySpan::weeks(-4, -1).unwrap(),
        DaySpan {
            first: -28,
            last: -1
        }
    );
    assert_eq!(
        DaySpan::weeks(1, 4).unwrap(),
        DaySpan { first: 1, last: 28 }
    );
    assert_eq!(
        DaySpan::weeks(-1, 1).unwrap(),
        DaySpan { first: -7, last: 7 }
    );
    assert!(DaySpan::weeks(0, 2).is_err());
    assert!(DaySpan::weeks(3, 2).is_err());
    for (day, week) in [
        (-28, -4),
        (-22, -4),
        (-21, -3),
        (-8, -2),
        (-7, -1),
        (-1, -1),
        (0, 0),
        (1, 1),
        (7, 1),
        (8, 2),
        (28, 4),
    ] {
        assert_eq!(arc_week(day), week, "day {day}");
    }
}

#[test]
fn rejects_activities_outside_the_arc() {
    check_invalid(
        |p| p.activities[2].span = DaySpan::weeks(-5, -1).unwrap(),
        "activities[2].span",
        "outside the protocol's arc",
    );
    check_invalid(|p| p.weeks_after = 3, "activities[8].span", "outside");
}

#[test]
fn rejects_malformed_activities() {
    check_invalid(
        |p| p.activities[0].times.clear(),
        "activities[0].times",
        "at least one",
    );
    check_invalid(
        |p| p.activities[3].times.reverse(),
        "activities[3].times",
        "strictly increasing",
    );
    check_invalid(
        |p| p.activities[0].times.push("10:00".parse().unwrap()),
        "activities[0].times",
        "exactly one",
    );
    check_invalid(
        |p| p.activities[1].window_minutes = 0,
        "activities[1].window_minutes",
        "between",
    );
    check_invalid(
        |p| p.activities[3].window_minutes = 13 * 60,
        "activities[3].window_minutes",
        "runs into",
    );
    check_invalid(
        |p| p.activities[2].window_minutes = 25 * 60,
        "activities[2].window_minutes",
        "longer than",
    );
    check_invalid(
        |p| p.activities[4].key = "Bad Key".into(),
        "activities[4].key",
        "a-z",
    );
    check_invalid(
        |p| p.activities[4].key = p.activities[3].key.clone(),
        "activities[4].key",
        "earlier activity",
    );
    check_invalid(
        |p| p.activities[2].target_minutes = 601,
        "activities[2].target_minutes",
        "600",
    );
    check_invalid(|p| p.id = "X".into(), "protocol_id", "3 to 64");
    check_invalid(|p| p.title = " ".into(), "title", "1 to 200");
    check_invalid(|p| p.activities.clear(), "activities", "at least one");
}

#[test]
fn rejects_daily_windows_that_run_into_the_next_day() {
    check_invalid(
        |p| {
            let a = &mut p.activities[3];
            a.times = vec!["00:00".parse().unwrap(), "20:00".parse().unwrap()];
            a.window_minutes = 600;
        },
        "activities[3].window_minutes",
        "next day",
    );
}

#[test]
fn rejects_protocols_that_expand_beyond_the_bound() {
    check_invalid(
        |p| {
            p.weeks_before = 52;
            p.weeks_after = 52;
            let a = &mut p.activities[3];
            a.span = DaySpan::days(-364, 364).unwrap();
            a.window_minutes = 30;
            a.times = (0..12).map(|h| LocalTime::new(h * 2, 0).unwrap()).collect();
        },
        "activities",
        "at most 5000",
    );
}

// ---- The protocol aggregate, given / when / then. ----

fn drafted(version: u32) -> Event {
    let mut protocol = custom("clinic-arc");
    protocol.version = version;
    Event::Drafted(ProtocolDrafted {
        protocol,
        drafted_at: now(),
    })
}

fn published(version: u32) -> Event {
    Event::Published(ProtocolPublished {
        protocol_id: "clinic-arc".into(),
        version,
        published_at: now(),
    })
}

fn draft(protocol: Protocol) -> Command {
    Command::Draft {
        protocol,
        now: now(),
    }
}

fn publish(version: u32) -> Command {
    Command::Publish {
        version,
        now: now(),
    }
}

#[test]
fn a_first_draft_is_version_one() {
    spec::given::<Aggregate>(&[])
        .when(draft(custom("clinic-arc")))
        .then(&[drafted(1)]);
}

#[test]
fn drafting_after_publishing_opens_the_next_version() {
    let given = spec::given::<Aggregate>(&[drafted(1), published(1)]);
    given
        .clone()
        .when(draft(custom("clinic-arc")))
        .then(&[drafted(2)]);
    let state = given.and(draft(custom("clinic-arc"))).state;
    assert_eq!(state.latest_published().unwrap().protocol.version, 1);
    assert_eq!(state.latest().unwrap().published_at, None);
}

#[test]
fn drafting_again_replaces_the_open_draft_and_an_identical_draft_is_a_no_op() {
    let given = spec::given::<Aggregate>(&[drafted(1)]);
    given.when(draft(custom("clinic-arc"))).then_nothing();
    let mut other = custom("clinic-arc");
    other.title = "Renamed".into();
    let state = given.and(draft(other)).state;
    assert_eq!(state.versions.len(), 1);
    assert_eq!(state.latest().unwrap().protocol.title, "Renamed");
}

#[test]
fn publishing_is_final_and_idempotent() {
    spec::given::<Aggregate>(&[drafted(1)])
        .when(publish(1))
        .then(&[published(1)]);
    let published_once = spec::given::<Aggregate>(&[drafted(1), published(1)]);
    published_once.when(publish(1)).then_nothing();
    published_once
        .when(publish(2))
        .then_err(Error::not_found("protocol version"));
}

#[test]
fn refuses_to_shadow_a_built_in_protocol() {
    let err = spec::given::<Aggregate>(&[])
        .when(draft(custom("msc-8w")))
        .err();
    assert!(
        matches!(err, Error::AlreadyExists { ref field, .. } if field == "protocol.protocol_id"),
        "{err:?}"
    );
}

#[test]
fn refuses_an_invalid_draft_naming_the_field() {
    let mut p = custom("clinic-arc");
    p.activities[1].window_minutes = 0;
    let err = spec::given::<Aggregate>(&[]).when(draft(p)).err();
    assert!(
        matches!(err, Error::Invalid { ref field, .. } if field == "protocol.activities[1].window_minutes"),
        "{err:?}"
    );
}

#[test]
fn events_round_trip_through_their_stored_form() {
    for event in [drafted(3), published(3)] {
        let back = Event::from_stored(
            event.event_type(),
            event.schema_version(),
            &event.to_payload(),
        )
        .unwrap();
        assert_eq!(back, event);
    }
    assert!(Event::from_stored("ProtocolDrafted", 2, &serde_json::json!({})).is_err());
}
