//! Wall-clock time in a participant's zone, and the one rule that turns it
//! into an instant.
//!
//! An occurrence is an intention on the participant's wall clock ("08:00 on
//! the third day after the session"). It becomes an instant only through the
//! zone's rules, by [`resolve`]:
//! - a local time that does not exist (the clock jumps forward over it) is
//!   moved forward by the length of the jump: 02:30 in a 02:00→03:00 gap is
//!   03:30, and in Lord Howe's 30-minute gap 02:15 is 02:45;
//! - a local time that happens twice (the clock falls back over it) is the
//!   first of the two, the one before the change.
//!
//! This is RFC 5545's rule and Temporal's `compatible` disambiguation.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// An IANA time zone, such as `Europe/London`. Fixed offsets and POSIX
/// strings are not zones: a participant lives in a place, not an offset.
#[derive(Clone)]
pub struct Zone {
    name: String,
    tz: TimeZone,
}

impl Zone {
    pub fn new(name: &str) -> Result<Self, Error> {
        const FIELD: &str = "time_zone";
        if name.is_empty() {
            return Err(Error::invalid(
                FIELD,
                "is required: an IANA time zone such as Europe/London",
            ));
        }
        if name.len() > 64 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Error::invalid(FIELD, "is not an IANA time zone name"));
        }
        let tz = TimeZone::get(name).map_err(|_| {
            Error::invalid(
                FIELD,
                "is not a time zone in the IANA database (for example America/New_York)",
            )
        })?;
        // The database answers for links too ("US/Eastern"); keep the name
        // as given, which is what the partner will compare with.
        Ok(Self {
            name: name.to_owned(),
            tz,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Zone {}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({})", self.name)
    }
}

impl Serialize for Zone {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Zone::new(&name).map_err(serde::de::Error::custom)
    }
}

/// A time of day on the participant's wall clock, to the minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalTime {
    hour: u8,
    minute: u8,
}

impl LocalTime {
    pub fn new(hour: u8, minute: u8) -> Option<Self> {
        (hour < 24 && minute < 60).then_some(Self { hour, minute })
    }

    pub fn hour(self) -> u8 {
        self.hour
    }

    pub fn minute(self) -> u8 {
        self.minute
    }

    pub fn civil(self) -> Time {
        Time::constant(self.hour as i8, self.minute as i8, 0, 0)
    }
}

impl fmt::Display for LocalTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

impl FromStr for LocalTime {
    type Err = &'static str;

    /// Exactly `HH:MM`, 24-hour clock.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHY: &str = "must be a 24-hour local time HH:MM, such as 08:00";
        let b = s.as_bytes();
        if b.len() != 5 || b[2] != b':' || ![0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_digit()) {
            return Err(WHY);
        }
        let hour = (b[0] - b'0') * 10 + (b[1] - b'0');
        let minute = (b[3] - b'0') * 10 + (b[4] - b'0');
        Self::new(hour, minute).ok_or(WHY)
    }
}

impl Serialize for LocalTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LocalTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a local date-time such as `2026-12-05T10:00` (seconds optional),
/// refusing anything that carries an offset or zone: the zone is given
/// separately, by name, so that the wall-clock intention is never confused
/// with an instant.
pub fn parse_local_date_time(field: &str, s: &str) -> Result<DateTime, Error> {
    const WHY: &str = "must be a local date-time YYYY-MM-DDTHH:MM[:SS] without an offset; \
                       the zone goes in time_zone";
    if s.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    let b = s.as_bytes();
    let shape_ok = (b.len() == 16 || b.len() == 19)
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b' ')
        && b[13] == b':'
        && (b.len() == 16 || b[16] == b':')
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10 | 13 | 16) || c.is_ascii_digit());
    if !shape_ok {
        return Err(Error::invalid(field, WHY));
    }
    let dt: DateTime = s
        .replacen(' ', "T", 1)
        .parse()
        .map_err(|_| Error::invalid(field, "is not a valid calendar date and time"))?;
    if dt.year() < 2000 || dt.year() > 2200 {
        return Err(Error::invalid(
            field,
            "must be between the years 2000 and 2200",
        ));
    }
    Ok(dt)
}

/// The instant of a wall-clock time in `zone`, by the gap and overlap rule in
/// this module's documentation.
pub fn resolve(zone: &Zone, date: Date, time: LocalTime) -> Timestamp {
    resolve_date_time(zone, date.to_datetime(time.civil()))
}

/// [`resolve`] for a full date-time.
pub fn resolve_date_time(zone: &Zone, dt: DateTime) -> Timestamp {
    zone.tz()
        .to_ambiguous_timestamp(dt)
        .compatible()
        // Only out-of-range dates fail, and parsing bounds the years.
        .unwrap_or(Timestamp::MAX)
}

/// An instant as seen on the wall clock of `zone`.
pub fn zoned(zone: &Zone, at: Timestamp) -> ZonedDateTime {
    at.to_zoned_datetime(zone.tz().clone())
}

/// `t + d`, held at the ends of the representable range.
pub fn shift(t: Timestamp, d: jiff::SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(if d.is_negative() {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn check(zone: &str, local: &str, expected_utc: &str) {
        let zone = Zone::new(zone).unwrap();
        let dt = parse_local_date_time("t", local).unwrap();
        let at = resolve_date_time(&zone, dt);
        assert_eq!(at.to_string(), expected_utc, "{local} in {}", zone.name());
    }

    #[test]
    fn times_in_a_spring_forward_gap_move_forward_by_the_gap() {
        check(
            "America/New_York",
            "2026-03-08T02:30",
            "2026-03-08T07:30:00Z",
        );
        check("Europe/London", "2026-03-29T01:15", "2026-03-29T01:15:00Z");
        // Lord Howe moves 30 minutes: 02:15 does not exist, 02:45 does.
        check(
            "Australia/Lord_Howe",
            "2026-10-04T02:15",
            "2026-10-03T15:45:00Z",
        );
    }

    #[test]
    fn times_in_a_fall_back_overlap_take_the_first_occurrence() {
        check(
            "America/New_York",
            "2026-11-01T01:30",
            "2026-11-01T05:30:00Z",
        );
        check("Europe/London", "2026-10-25T01:30", "2026-10-25T00:30:00Z");
        // Lord Howe's 01:30–02:00 repeats: the first is still at +11:00.
        check(
            "Australia/Lord_Howe",
            "2026-04-05T01:45",
            "2026-04-04T14:45:00Z",
        );
    }

    #[test]
    fn zones_without_dst_are_plain_offsets() {
        check("Asia/Kolkata", "2026-03-08T02:30", "2026-03-07T21:00:00Z");
        check("UTC", "2026-03-08T02:30", "2026-03-08T02:30:00Z");
    }

    #[test]
    fn rejects_date_times_with_offsets_or_zones() {
        for bad in [
            "2026-03-08T02:30Z",
            "2026-03-08T02:30:00+01:00",
            "2026-03-08T02:30-05:00",
            "2026-03-08T02:30[Europe/London]",
            "2026-03-08",
            "08:00",
            "2026-02-30T08:00",
            "",
        ] {
            assert!(parse_local_date_time("session_at", bad).is_err(), "{bad}");
        }
        assert!(parse_local_date_time("session_at", "2026-03-08 02:30:15").is_ok());
    }

    #[test]
    fn rejects_unknown_zones_and_offsets() {
        for bad in [
            "",
            "Mars/Olympus",
            "+05:00",
            "EST5EDT,M3.2.0,M11.1.0",
            "Europe/ London",
        ] {
            assert!(Zone::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Zone::new("Europe/London").unwrap().name(), "Europe/London");
    }

    #[test]
    fn local_times_are_strict_hh_mm() {
        assert_eq!("08:05".parse::<LocalTime>().unwrap().to_string(), "08:05");
        for bad in ["8:05", "24:00", "08:60", "08:05:00", "0805"] {
            assert!(bad.parse::<LocalTime>().is_err(), "{bad}");
        }
        let _ = date(2026, 1, 1);
    }
}
