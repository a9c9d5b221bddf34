//! Conversions between protobuf messages and the domain. Parsing a request
//! field either yields a domain value or an error naming the field.

use jiff::Timestamp;
use tend_api::privacy::v1::ConsentPurpose;
use tend_api::scheduler::v1 as pb;
use tend_domain::enrollment::Enrollment;
use tend_domain::protocol::{self, Activity, ActivityKind, Cadence, DaySpan, Protocol};
use tend_domain::schedule::{Change, Occurrence, Status};
use tend_domain::time::LocalTime;
use uuid::Uuid;

use tend_service_kit::instants;

use crate::Error;

/// An activity kind as either of the two generated oneofs that carry it
/// (`Activity.kind`, `Occurrence.kind`): the same variants, distinct types.
macro_rules! kind_pb {
    ($kind:path, $value:expr) => {{
        use $kind as Kind;
        match $value {
            ActivityKind::Practice { practice } => Kind::Practice(pb::PracticeActivity {
                practice: practice.clone(),
            }),
            ActivityKind::Assessment { instrument } => Kind::Assessment(pb::AssessmentActivity {
                instrument: instrument.clone(),
            }),
            ActivityKind::IntegrationSession => {
                Kind::IntegrationSession(pb::IntegrationSessionActivity {})
            }
            ActivityKind::Task => Kind::Task(pb::TaskActivity {}),
        }
    }};
}

pub(crate) fn uuid(field: &str, s: &str) -> Result<Uuid, Error> {
    if s.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    Uuid::parse_str(s).map_err(|_| Error::invalid(field, "must be a UUID"))
}

/// Years 1900 to 9999: what every part of the system (PostgreSQL included)
/// can hold, and far wider than any schedule.
pub(crate) fn from_timestamp(field: &str, t: &prost_types::Timestamp) -> Result<Timestamp, Error> {
    const EARLIEST: i64 = -2_208_988_800; // 1900-01-01T00:00:00Z
    const LATEST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if !(EARLIEST..=LATEST).contains(&t.seconds) {
        return Err(Error::invalid(
            field,
            "must be between the years 1900 and 9999",
        ));
    }
    Timestamp::new(t.seconds, t.nanos)
        .map_err(|_| Error::invalid(field, "is not a valid timestamp"))
}

// ---- Protocols ----

pub(crate) fn protocol_from_pb(p: pb::Protocol) -> Result<Protocol, Error> {
    let activities = p
        .activities
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            activity_from_pb(a).map_err(|e| within(e, &format!("protocol.activities[{i}]")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let required_purposes = p
        .required_purposes
        .iter()
        .enumerate()
        .map(|(i, v)| {
            ConsentPurpose::try_from(*v)
                .ok()
                .and_then(|p| p.as_str_name().strip_prefix("CONSENT_PURPOSE_"))
                .and_then(|name| name.to_ascii_lowercase().parse().ok())
                .ok_or_else(|| {
                    Error::invalid(
                        format!("protocol.required_purposes[{i}]"),
                        "is not a consent purpose",
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(Protocol {
        id: p.protocol_id,
        version: 1,
        title: p.title,
        weeks_before: p.weeks_before,
        weeks_after: p.weeks_after,
        activities,
        required_purposes,
    })
}

fn within(e: Error, prefix: &str) -> Error {
    match e {
        Error::Kit(tend_service_kit::Error::Domain(d)) => Error::from(d.within(prefix)),
        other => other,
    }
}

fn activity_from_pb(a: pb::Activity) -> Result<Activity, Error> {
    use pb::activity::{Kind, Span};
    let kind = match a.kind {
        Some(Kind::Practice(p)) => ActivityKind::Practice {
            practice: p.practice,
        },
        Some(Kind::Assessment(p)) => ActivityKind::Assessment {
            instrument: p.instrument,
        },
        Some(Kind::IntegrationSession(_)) => ActivityKind::IntegrationSession,
        Some(Kind::Task(_)) => ActivityKind::Task,
        None => {
            return Err(Error::invalid(
                "kind",
                "is required: practice, assessment, integration_session or task",
            ));
        }
    };
    let span = match a.span {
        Some(Span::Weeks(w)) => DaySpan::weeks(w.first, w.last)?,
        Some(Span::Days(d)) => DaySpan::days(d.first, d.last)?,
        None => return Err(Error::invalid("span", "is required: weeks or days")),
    };
    let cadence = match pb::Cadence::try_from(a.cadence) {
        Ok(pb::Cadence::Once) => Cadence::Once,
        Ok(pb::Cadence::Daily) => Cadence::Daily,
        Ok(pb::Cadence::Weekly) => Cadence::Weekly,
        _ => return Err(Error::invalid("cadence", "must be ONCE, DAILY or WEEKLY")),
    };
    let times = a
        .times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.parse::<LocalTime>()
                .map_err(|why| Error::invalid(format!("times[{i}]"), why))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Activity {
        key: a.key,
        kind,
        span,
        cadence,
        times,
        target_minutes: a.target_minutes,
        window_minutes: a.window_minutes,
    })
}

pub(crate) fn protocol_to_pb(
    p: &Protocol,
    published_at: Option<Timestamp>,
    built_in: bool,
) -> pb::Protocol {
    let state = if built_in || published_at.is_some() {
        pb::ProtocolState::Published
    } else {
        pb::ProtocolState::Draft
    };
    pb::Protocol {
        protocol_id: p.id.clone(),
        version: p.version,
        title: p.title.clone(),
        weeks_before: p.weeks_before,
        weeks_after: p.weeks_after,
        activities: p.activities.iter().map(activity_to_pb).collect(),
        state: state as i32,
        published_at: published_at.map(instants::to_pb),
        built_in,
        required_purposes: p
            .required_purposes
            .iter()
            .filter_map(|p| {
                ConsentPurpose::from_str_name(&format!(
                    "CONSENT_PURPOSE_{}",
                    p.as_str().to_ascii_uppercase()
                ))
            })
            .map(|p| p as i32)
            .collect(),
    }
}

fn activity_to_pb(a: &Activity) -> pb::Activity {
    use pb::activity::Span;
    pb::Activity {
        key: a.key.clone(),
        kind: Some(kind_pb!(pb::activity::Kind, &a.kind)),
        span: Some(Span::Days(pb::DayRange {
            first: a.span.first,
            last: a.span.last,
        })),
        cadence: match a.cadence {
            Cadence::Once => pb::Cadence::Once,
            Cadence::Daily => pb::Cadence::Daily,
            Cadence::Weekly => pb::Cadence::Weekly,
        } as i32,
        times: a.times.iter().map(ToString::to_string).collect(),
        target_minutes: a.target_minutes,
        window_minutes: a.window_minutes,
    }
}

pub(crate) fn protocol_version_to_pb(v: &protocol::Version) -> pb::Protocol {
    protocol_to_pb(&v.protocol, v.published_at, false)
}

// ---- Enrollments and occurrences ----

pub(crate) fn enrollment_to_pb(
    e: &Enrollment,
    participant: Uuid,
    participant_ref: String,
) -> pb::Enrollment {
    let current = e.current();
    let state = if e.withdrawn_at.is_some() {
        pb::EnrollmentState::Withdrawn
    } else if e.is_paused() {
        pb::EnrollmentState::Paused
    } else {
        pb::EnrollmentState::Active
    };
    let (start, end) = e.arc_dates();
    pb::Enrollment {
        enrollment_id: e.id.to_string(),
        participant_ref,
        participant_id: participant.to_string(),
        protocol_id: e.protocol_id.clone(),
        protocol_version: current.protocol_version,
        session_local_time: current.session.to_string(),
        session_at: Some(instants::to_pb(e.session_instant())),
        time_zone: current.zone.name().to_owned(),
        session_time_zone: current.session_zone.name().to_owned(),
        state: state as i32,
        enrolled_at: Some(instants::to_pb(e.enrolled_at)),
        arc_start_date: start.to_string(),
        arc_end_date: end.to_string(),
    }
}

pub(crate) fn status_to_pb(s: Status) -> pb::OccurrenceStatus {
    match s {
        Status::Upcoming => pb::OccurrenceStatus::Upcoming,
        Status::Due => pb::OccurrenceStatus::Due,
        Status::Done => pb::OccurrenceStatus::Done,
        Status::Late => pb::OccurrenceStatus::Late,
        Status::Missed => pb::OccurrenceStatus::Missed,
        Status::Cancelled => pb::OccurrenceStatus::Cancelled,
    }
}

pub(crate) fn kind_to_pb(kind: &ActivityKind) -> pb::occurrence::Kind {
    kind_pb!(pb::occurrence::Kind, kind)
}

pub(crate) fn occurrence_to_pb(o: &Occurrence) -> pb::Occurrence {
    pb::Occurrence {
        occurrence_id: o.id.to_string(),
        enrollment_id: o.enrollment_id.to_string(),
        activity_key: o.activity_key.clone(),
        kind: Some(kind_to_pb(&o.kind)),
        day: o.day,
        arc_week: o.arc_week,
        local_date: o.local_date.to_string(),
        local_time: o.local_time.to_string(),
        time_zone: o.zone.name().to_owned(),
        scheduled_at: Some(instants::to_pb(o.at)),
        window_closes_at: Some(instants::to_pb(o.closes_at)),
        target_minutes: o.target_minutes,
        status: status_to_pb(o.status) as i32,
        completed_at: o.completed_at.map(instants::to_pb),
        protocol_version: o.protocol_version,
        participant_ref: String::new(),
        participant_id: String::new(),
    }
}

pub(crate) fn change_to_pb(c: &Change) -> pb::ScheduleChange {
    let ids = |v: &[Uuid]| v.iter().map(ToString::to_string).collect();
    pb::ScheduleChange {
        moved_occurrence_ids: ids(&c.moved),
        added_occurrence_ids: ids(&c.added),
        removed_occurrence_ids: ids(&c.removed),
        unchanged_count: c.unchanged as u32,
    }
}
