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

/// For a `timestamptz` column (which keeps microseconds) and an `integer`
/// of the nanoseconds beyond them (-999 to 999): exact, with
/// [`from_chrono_exact`].
pub fn to_chrono_exact(t: Timestamp) -> (DateTime<Utc>, i32) {
    let micros = t.as_microsecond();
    let rest = t.as_nanosecond() - i128::from(micros) * 1_000;
    (to_chrono(t), rest as i32)
}

/// From [`to_chrono_exact`]'s columns.
pub fn from_chrono_exact(t: DateTime<Utc>, nanos: i32) -> Timestamp {
    let exact = i128::from(t.timestamp_micros()) * 1_000 + i128::from(nanos);
    Timestamp::from_nanosecond(exact).unwrap_or_else(|_| from_chrono(t))
}

/// For a `date` column.
pub fn date_to_chrono(d: jiff::civil::Date) -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(
        i32::from(d.year()),
        d.month().unsigned_abs().into(),
        d.day().unsigned_abs().into(),
    )
    .unwrap_or_default()
}

/// From a `date` column; `None` outside jiff's years (-9999 to 9999).
pub fn date_from_chrono(d: chrono::NaiveDate) -> Option<jiff::civil::Date> {
    use chrono::Datelike;
    jiff::civil::Date::new(
        i16::try_from(d.year()).ok()?,
        i8::try_from(d.month()).ok()?,
        i8::try_from(d.day()).ok()?,
    )
    .ok()
}

/// A required instant from the wire, between the years 1900 and 9999.
pub fn from_pb(field: &str, t: Option<&prost_types::Timestamp>) -> Result<Timestamp, crate::Error> {
    let t = t.ok_or_else(|| crate::Error::invalid(field, "is required"))?;
    Timestamp::new(t.seconds, t.nanos)
        .ok()
        .filter(|t| (1900..=9999).contains(&t.to_zoned_datetime(jiff::tz::TimeZone::UTC).year()))
        .ok_or_else(|| crate::Error::invalid(field, "is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instant_keeps_its_nanoseconds_through_two_columns() {
        for t in [
            "2026-05-20T06:00:00.0000015Z",
            "2026-05-20T06:00:00.999999999Z",
            "1969-12-31T23:59:58.9999995Z",
            "1969-12-31T23:59:59.000000001Z",
            "1900-01-01T00:00:00Z",
        ] {
            let t: Timestamp = t.parse().unwrap();
            let (column, nanos) = to_chrono_exact(t);
            assert!((-999..=999).contains(&nanos), "{t}: {nanos}");
            assert_eq!(from_chrono_exact(column, nanos), t);
        }
    }
}
