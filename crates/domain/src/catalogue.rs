//! Every stored event type the domain writes, with its schema versions and
//! the fields of its current body, taken from the types themselves: what
//! `docs/events.md` is checked against, so the catalogue cannot drift.

use serde::de::{self, DeserializeOwned, Visitor};

/// One stored event type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventType {
    /// The stored type name, e.g. `ParticipantEnrolled`.
    pub name: &'static str,
    /// The schema version written now.
    pub version: u32,
    /// The schema versions still read.
    pub reads: Vec<u32>,
    /// The top-level fields of the current body.
    pub fields: Vec<&'static str>,
}

/// Every event type, grouped by the module that writes it.
pub fn all() -> Vec<(&'static str, Vec<EventType>)> {
    vec![
        ("protocol", crate::protocol::catalogue()),
        ("enrollment", crate::enrollment::Event::catalogue()),
        ("practice", crate::practice::catalogue()),
        ("assessment", crate::assessment::Event::catalogue()),
        (
            "instrument",
            crate::assessment::InstrumentEvent::catalogue(),
        ),
        ("consent", crate::consent::DocumentEvent::catalogue()),
        ("arc", crate::arc::FlagEvent::catalogue()),
        ("webhook", crate::webhook::catalogue()),
    ]
}

/// The fields of the body a variant constructor takes.
pub(crate) fn fields_of<T: DeserializeOwned, E>(_variant: fn(T) -> E) -> Vec<&'static str> {
    fields::<T>()
}

/// The fields a struct declares to serde (its `#[serde(flatten)]` parts
/// excepted: those are added by the module that has them).
pub(crate) fn fields<T: DeserializeOwned>() -> Vec<&'static str> {
    let mut names = Names(None);
    let _ = T::deserialize(&mut names);
    names.0.unwrap_or_default().to_vec()
}

/// A deserializer that only listens for the field list serde's derive
/// passes to `deserialize_struct`, then stops.
struct Names(Option<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for &mut Names {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("fields only"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = Some(fields);
        Err(de::Error::custom("fields only"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_a_name_a_version_it_reads_and_fields() {
        let mut names = std::collections::HashSet::new();
        for (_, types) in all() {
            for t in types {
                assert!(names.insert(t.name), "{} twice", t.name);
                assert!(t.reads.contains(&t.version), "{t:?}");
                assert!(!t.fields.is_empty(), "{t:?}");
            }
        }
        assert!(names.len() >= 25, "{names:?}");
    }

    #[test]
    fn flattened_bodies_list_their_parts() {
        let practice = crate::practice::catalogue();
        let logged = practice
            .iter()
            .find(|t| t.name == "PracticeLogged")
            .unwrap();
        assert!(logged.fields.contains(&"entry_id"));
        assert!(logged.fields.contains(&"minutes"));
        let zone = crate::enrollment::Event::catalogue()
            .into_iter()
            .find(|t| t.name == "TimeZoneChanged")
            .unwrap();
        assert_eq!((zone.version, zone.reads.clone()), (2, vec![1, 2]));
        assert!(zone.fields.contains(&"session_time_zone"));
    }

    #[test]
    fn the_spelled_out_practice_fields_are_those_a_body_holds() {
        use crate::DomainEvent;
        use crate::practice::{Content, Event, PracticeCorrected, PracticeLogged, SealedNote};
        let content = Content {
            kind: "soothing-touch".into(),
            started_at: "2026-06-01T08:00:00Z".parse().unwrap(),
            utc_offset_seconds: 0,
            time_zone: Some(crate::time::Zone::new("UTC").unwrap()),
            minutes: 5,
            occurrence_id: Some(uuid::Uuid::nil()),
            note: Some(SealedNote {
                key_id: uuid::Uuid::nil(),
                nonce: String::new(),
                ciphertext: String::new(),
            }),
        };
        let bodies = [
            Event::Logged(PracticeLogged {
                entry_id: uuid::Uuid::nil(),
                content: content.clone(),
            }),
            Event::Corrected(PracticeCorrected {
                entry_id: uuid::Uuid::nil(),
                request_id: uuid::Uuid::nil(),
                content,
            }),
        ];
        let catalogue = crate::practice::catalogue();
        for body in bodies {
            let written: std::collections::BTreeSet<String> = body
                .to_payload()
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            let listed = &catalogue
                .iter()
                .find(|t| t.name == body.event_type())
                .unwrap()
                .fields;
            let listed: std::collections::BTreeSet<String> =
                listed.iter().map(|f| f.to_string()).collect();
            assert_eq!(written, listed, "{}", body.event_type());
        }
    }
}
