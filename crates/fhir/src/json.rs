//! Building FHIR JSON: references, quantities, dates and instants, and the
//! rule that absent things are left out (FHIR JSON allows neither `null`
//! nor empty arrays or objects).

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::Offset;
use serde_json::{Value, json};

use crate::Kind;
use crate::codes::UCUM;

pub(crate) fn link(kind: Kind, id: &str) -> Value {
    json!({"reference": format!("{}/{id}", kind.name())})
}

/// A UCUM quantity.
pub(crate) fn quantity(value: f64, unit: &str) -> Value {
    json!({"value": value, "unit": unit, "system": UCUM, "code": unit})
}

pub(crate) fn date(d: Date) -> String {
    d.to_string()
}

/// An instant with the offset it was local to, in whole minutes (FHIR's
/// offsets have no seconds; the civil time moves with it, so the instant
/// is the same).
pub(crate) fn instant(at: Timestamp, offset_seconds: i32) -> String {
    let minutes = offset_seconds / 60;
    let offset = Offset::from_seconds(minutes * 60).unwrap_or(Offset::UTC);
    let civil = offset.to_datetime(at);
    let sign = if minutes < 0 { '-' } else { '+' };
    let m = minutes.unsigned_abs();
    format!(
        "{}T{}{sign}{:02}:{:02}",
        civil.date(),
        civil.time(),
        m / 60,
        m % 60
    )
}

/// Leaves out nulls, empty arrays and empty objects, at every depth (in
/// place: no tree is built again).
pub(crate) fn clean(mut v: Value) -> Value {
    prune(&mut v);
    v
}

fn prune(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.values_mut().for_each(prune);
            map.retain(|_, v| !is_empty(v));
        }
        Value::Array(items) => {
            items.iter_mut().for_each(prune);
            items.retain(|v| !is_empty(v));
        }
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_keep_their_local_offset() {
        let at: Timestamp = "2026-03-29T00:30:00Z".parse().unwrap();
        assert_eq!(instant(at, 3600), "2026-03-29T01:30:00+01:00");
        assert_eq!(
            instant(at, -5 * 3600 - 30 * 60),
            "2026-03-28T19:00:00-05:30"
        );
        assert_eq!(instant(at, 0), "2026-03-29T00:30:00+00:00");
        let fraction: Timestamp = "2026-03-29T00:30:00.25Z".parse().unwrap();
        assert_eq!(instant(fraction, 0), "2026-03-29T00:30:00.25+00:00");
    }

    #[test]
    fn absent_things_are_left_out() {
        let v = clean(
            json!({"a": null, "b": [], "c": [null, {"d": null}], "e": {"f": []}, "g": 0, "h": [1]}),
        );
        assert_eq!(v, json!({"g": 0, "h": [1]}));
    }
}
