//! Conversions between the wire and the domain: ids, starts with their
//! offsets or zones, entries, page tokens.

use jiff::Timestamp;
use jiff::tz::{Offset, TimeZone};
use tend_api::practice::v1::{NoteState, PracticeEntry};
use tend_domain::practice::{Content, Entry};
use tend_domain::time::{Zone, parse_local_date_time, resolve_date_time};
use tend_service_kit::instants;
use uuid::Uuid;

use crate::Error;

pub(crate) fn parse_uuid(field: &str, s: &str) -> Result<Uuid, Error> {
    match Uuid::try_parse(s) {
        Ok(id) if !id.is_nil() => Ok(id),
        _ => Err(Error::invalid(field, "must be a UUID (not the nil UUID)")),
    }
}

/// The start as an instant, the participant's UTC offset then, and their
/// zone if given. Either an RFC 3339 time with its offset, or a local
/// date-time with `time_zone`.
pub(crate) fn parse_start(
    started_at: &str,
    time_zone: &str,
) -> Result<(Timestamp, i32, Option<Zone>), Error> {
    const FIELD: &str = "practice.started_at";
    let zone = match time_zone {
        "" => None,
        name => Some(Zone::new(name).map_err(|e| e.within("practice"))?),
    };
    if started_at.is_empty() {
        return Err(Error::invalid(FIELD, "is required"));
    }
    let (local, offset) = split_offset(started_at)?;
    let local = parse_local_date_time(FIELD, local).map_err(Error::from)?;
    match (offset, &zone) {
        (Some(offset), _) => {
            let at = offset
                .to_timestamp(local)
                .map_err(|_| Error::invalid(FIELD, "is out of range"))?;
            if let Some(zone) = &zone
                && zone.tz().to_offset(at) != offset
            {
                return Err(Error::invalid(
                    "practice.time_zone",
                    "does not have the offset given in started_at at that time",
                ));
            }
            Ok((at, offset.seconds(), zone))
        }
        (None, Some(z)) => {
            let at = resolve_date_time(z, local);
            Ok((at, z.tz().to_offset(at).seconds(), zone))
        }
        (None, None) => Err(Error::invalid(
            FIELD,
            "has no UTC offset: give one (\"2026-12-01T08:05:00-05:00\") or set time_zone",
        )),
    }
}

/// Splits `…Z` or `…±HH:MM` off a date-time.
fn split_offset(s: &str) -> Result<(&str, Option<Offset>), Error> {
    const FIELD: &str = "practice.started_at";
    if let Some(local) = s.strip_suffix(['Z', 'z']) {
        return Ok((local, Some(Offset::UTC)));
    }
    let b = s.as_bytes();
    if b.len() > 16 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':' {
        let (local, offset) = s.split_at(s.len() - 6);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let hours: i32 = offset[1..3]
            .parse()
            .map_err(|_| Error::invalid(FIELD, "has a malformed UTC offset"))?;
        let minutes: i32 = offset[4..6]
            .parse()
            .map_err(|_| Error::invalid(FIELD, "has a malformed UTC offset"))?;
        if hours > 18 || minutes > 59 || (hours == 18 && minutes > 0) {
            return Err(Error::invalid(
                FIELD,
                "has a UTC offset outside -18:00..+18:00",
            ));
        }
        let offset = Offset::from_seconds(sign * (hours * 3600 + minutes * 60))
            .map_err(|_| Error::invalid(FIELD, "has a malformed UTC offset"))?;
        return Ok((local, Some(offset)));
    }
    Ok((s, None))
}

fn format_start(content: &Content) -> String {
    let offset = Offset::from_seconds(content.utc_offset_seconds).unwrap_or(Offset::UTC);
    content
        .started_at
        .to_zoned_datetime(TimeZone::fixed(offset))
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

pub(crate) fn from_timestamp_pb(
    field: &str,
    t: &prost_types::Timestamp,
) -> Result<Timestamp, Error> {
    Timestamp::new(t.seconds, t.nanos).map_err(|_| Error::invalid(field, "is out of range"))
}

pub(crate) fn entry_pb(entry: &Entry, note: String, state: NoteState) -> PracticeEntry {
    let c = &entry.current;
    PracticeEntry {
        entry_id: entry.entry_id.to_string(),
        kind: c.kind.clone(),
        started_at: format_start(c),
        time_zone: c
            .time_zone
            .as_ref()
            .map(|z| z.name().to_owned())
            .unwrap_or_default(),
        minutes: c.minutes,
        occurrence_id: c.occurrence_id.map(|o| o.to_string()).unwrap_or_default(),
        note,
        note_state: state.into(),
        revision: entry.revision,
        retracted_at: entry.retracted_at.map(instants::to_pb),
    }
}

/// The position of an entry in a listing, for page tokens.
pub(crate) fn page_key(e: &Entry) -> (i64, Uuid) {
    (e.current.started_at.as_microsecond(), e.entry_id)
}

pub(crate) fn parse_page_token(token: &str) -> Result<Option<(i64, Uuid)>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token", "is not a token this service issued");
    let (micros, id) = token.split_once('.').ok_or_else(bad)?;
    Ok(Some((
        micros.parse().map_err(|_| bad())?,
        Uuid::try_parse(id).map_err(|_| bad())?,
    )))
}

#[cfg(test)]
mod tests {
    use tend_domain::Error as DomainError;

    use super::*;

    fn start(s: &str, zone: &str) -> Result<(String, i32), String> {
        parse_start(s, zone)
            .map(|(t, o, _)| (t.to_string(), o))
            .map_err(|e| match e {
                Error::Kit(tend_service_kit::Error::Domain(DomainError::Invalid {
                    field, ..
                })) => field,
                other => format!("{other:?}"),
            })
    }

    #[test]
    fn reads_a_start_with_an_offset_or_a_zone() {
        assert_eq!(
            start("2026-12-01T08:05:00-05:00", ""),
            Ok(("2026-12-01T13:05:00Z".into(), -5 * 3600))
        );
        assert_eq!(
            start("2026-12-01T08:05:00Z", ""),
            Ok(("2026-12-01T08:05:00Z".into(), 0))
        );
        assert_eq!(
            start("2026-12-01T08:05", "Asia/Kolkata"),
            Ok(("2026-12-01T02:35:00Z".into(), 19800))
        );
        assert_eq!(
            start("2026-12-01T08:05:00-05:00", "America/New_York"),
            Ok(("2026-12-01T13:05:00Z".into(), -5 * 3600))
        );
    }

    #[test]
    fn refuses_starts_without_an_offset_or_with_a_disagreeing_zone() {
        assert_eq!(
            start("2026-12-01T08:05", ""),
            Err("practice.started_at".into())
        );
        assert_eq!(
            start("2026-12-01T08:05:00-04:00", "America/New_York"),
            Err("practice.time_zone".into())
        );
        assert_eq!(
            start("2026-12-01T08:05:00+19:00", ""),
            Err("practice.started_at".into())
        );
        assert_eq!(start("yesterday", ""), Err("practice.started_at".into()));
        assert_eq!(start("", "UTC"), Err("practice.started_at".into()));
        assert_eq!(
            start("2026-12-01T08:05", "Mars/Olympus"),
            Err("practice.time_zone".into())
        );
    }

    #[test]
    fn formats_the_start_with_the_participants_offset() {
        let (at, offset, _) = parse_start("2026-12-01T08:05:00-05:00", "").unwrap();
        let c = Content {
            kind: "soothing-touch".into(),
            started_at: at,
            utc_offset_seconds: offset,
            time_zone: None,
            minutes: 2,
            occurrence_id: None,
            note: None,
        };
        assert_eq!(format_start(&c), "2026-12-01T08:05:00-05:00");
    }
}
