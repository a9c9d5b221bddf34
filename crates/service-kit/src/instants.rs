//! Instants across the boundaries every service has: jiff in the domain,
//! chrono in sqlx's PostgreSQL columns, protobuf's `Timestamp` on the wire.

use chrono::{DateTime, Utc};
use jiff::Timestamp;

/// For the wire.
pub fn to_pb(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

/// For a `timestamptz` column (microseconds, as PostgreSQL keeps them).
pub fn to_chrono(t: Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.as_microsecond()).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// From a `timestamptz` column.
pub fn from_chrono(t: DateTime<Utc>) -> Timestamp {
    Timestamp::from_microsecond(t.timestamp_micros()).unwrap_or(Timestamp::MAX)
}

/// A required instant from the wire, between the years 1900 and 9999.
pub fn from_pb(field: &str, t: Option<&prost_types::Timestamp>) -> Result<Timestamp, crate::Error> {
    let t = t.ok_or_else(|| crate::Error::invalid(field, "is required"))?;
    Timestamp::new(t.seconds, t.nanos)
        .ok()
        .filter(|t| (1900..=9999).contains(&t.to_zoned_datetime(jiff::tz::TimeZone::UTC).year()))
        .ok_or_else(|| crate::Error::invalid(field, "is out of range"))
}
