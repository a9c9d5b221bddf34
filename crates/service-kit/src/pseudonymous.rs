//! The pseudonymous view of a tenant's log for one recipient (the event
//! stream's `Pseudonymous` mode, a webhook endpoint tied to a recipient): only participants who granted
//! research sharing, while they grant it; every id replaced by the
//! recipient's pseudonym of it; no reference, note or actor; optionally
//! times as days from the session.
//!
//! Whether a participant shares is decided per event, from their
//! participant stream as it stands once that event is applied: the consent
//! that grants research sharing is the first event delivered, the
//! withdrawal (or erasure) the first left out. A subscription that starts
//! mid-log reads each participant's stream up to its position once.

use std::collections::HashMap;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use serde_json::Value;
use tend_domain::DomainEvent;
use tend_domain::consent::Purpose;
use tend_domain::enrollment;
use tend_domain::time::Zone;
use tend_event_store::{Direction, EventStore, RecordedEvent, StreamId, TenantId};
use tend_privacy::Pseudonymizer;
use uuid::Uuid;

use crate::Error;
use crate::streams;

/// Fields never delivered: a reference written by an earlier release,
/// sealed notes (useless without the key, and their length is a hint), and
/// the hash a partner files consent evidence under (the same in every
/// recipient's data, so it would link them).
const DROPPED_FIELDS: [&str; 3] = ["participant_ref", "note", "evidence_sha256"];
/// Events read per statement when a participant is first seen.
const PAGE: usize = 1000;

/// What the stream knows of one participant.
#[derive(Debug, Default)]
struct Participant {
    state: enrollment::Participant,
}

impl Participant {
    fn shares(&self) -> bool {
        self.state.erased.is_none() && self.state.consent.grants(Purpose::ResearchSharing)
    }

    /// The session an event's times count from: its enrollment's, or the
    /// latest enrollment's.
    fn session(&self, payload: &Value) -> Option<(DateTime, Zone)> {
        let named = payload
            .get("enrollment_id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::try_parse(s).ok())
            .and_then(|id| self.state.enrollment(id));
        let e = named.or_else(|| self.state.enrollments.iter().max_by_key(|e| e.enrolled_at))?;
        Some((e.current().session, e.current().zone.clone()))
    }
}

/// One pseudonymous subscription's state.
#[derive(Debug)]
pub struct Pseudonymous {
    store: EventStore,
    tenant: TenantId,
    pseudonyms: Pseudonymizer,
    relative_days: bool,
    participants: HashMap<Uuid, Participant>,
}

impl Pseudonymous {
    pub fn new(
        store: EventStore,
        tenant: TenantId,
        pseudonyms: Pseudonymizer,
        relative_days: bool,
    ) -> Self {
        Self {
            store,
            tenant,
            pseudonyms,
            relative_days,
            participants: HashMap::new(),
        }
    }

    pub fn key_id(&self) -> &str {
        self.pseudonyms.key_id()
    }

    pub fn relative_days(&self) -> bool {
        self.relative_days
    }

    /// The event as the recipient receives it, or `None` when it is left
    /// out.
    pub async fn transform(
        &mut self,
        mut event: RecordedEvent,
    ) -> Result<Option<RecordedEvent>, Error> {
        let category = event.stream_id.category().to_owned();
        let owner = streams::PARTICIPANT_CATEGORIES
            .contains(&category.as_str())
            .then(|| streams::key_of(&event.stream_id))
            .flatten();
        let Some(participant) = owner else {
            // The tenant's own definitions (protocols, instruments, consent
            // documents): no one's data, delivered with ids replaced.
            self.replace(&mut event.payload, None);
            return Ok(Some(self.finish(event, &category, None)));
        };
        if !self.participants.contains_key(&participant) {
            let loaded = self.load(participant, event.position).await?;
            self.participants.insert(participant, loaded);
        }
        if category == streams::PARTICIPANT {
            let decoded = enrollment::Event::from_stored(
                &event.event_type,
                event.schema_version,
                &event.payload,
            )
            .map_err(Error::Decode)?;
            let p = self.participants.entry(participant).or_default();
            p.state = enrollment::evolve(std::mem::take(&mut p.state), &decoded);
        }
        let p = &self.participants[&participant];
        if !p.shares() {
            return Ok(None);
        }
        let session = self
            .relative_days
            .then(|| p.session(&event.payload))
            .flatten();
        let days = self.relative_days.then_some(session);
        self.replace(&mut event.payload, days.as_ref().map(Option::as_ref));
        Ok(Some(self.finish(event, &category, Some(participant))))
    }

    /// The participant's state from their stream, before `position`.
    async fn load(&self, participant: Uuid, position: u64) -> Result<Participant, Error> {
        let stream = streams::participant(participant);
        let mut state = enrollment::Participant::default();
        let mut from = None;
        loop {
            let slice = self
                .store
                .read_stream(&self.tenant, &stream, Direction::Forwards, from, PAGE)
                .await?;
            for e in &slice.events {
                if e.position >= position {
                    return Ok(Participant { state });
                }
                let decoded =
                    enrollment::Event::from_stored(&e.event_type, e.schema_version, &e.payload)
                        .map_err(Error::Decode)?;
                state = enrollment::evolve(state, &decoded);
            }
            match slice.events.last() {
                Some(last) if !slice.end_of_stream => from = Some(last.stream_version + 1),
                _ => return Ok(Participant { state }),
            }
        }
    }

    fn finish(
        &self,
        mut event: RecordedEvent,
        category: &str,
        owner: Option<Uuid>,
    ) -> RecordedEvent {
        if let Some(participant) = owner {
            event.stream_id =
                StreamId::for_entity(category, self.pseudonyms.pseudonym(participant))
                    .unwrap_or(event.stream_id);
        }
        event.id = self.pseudonyms.pseudonym(event.id);
        let m = &mut event.metadata;
        m.correlation_id = m.correlation_id.map(|id| self.pseudonyms.pseudonym(id));
        m.causation_id = m.causation_id.map(|id| self.pseudonyms.pseudonym(id));
        // Free text a partner chose, and trace context that links to its
        // own systems: neither goes to a recipient.
        m.actor = None;
        m.traceparent = None;
        m.tracestate = None;
        event
    }

    /// Replaces every id in a body by its pseudonym, drops the fields no
    /// recipient receives, and with `days` (the session, when known) turns
    /// every date and instant into whole days from the session.
    fn replace(&self, value: &mut Value, days: Option<Option<&(DateTime, Zone)>>) {
        match value {
            Value::Object(map) => {
                for field in DROPPED_FIELDS {
                    map.remove(field);
                }
                for v in map.values_mut() {
                    self.replace(v, days);
                }
            }
            Value::Array(items) => {
                for v in items {
                    self.replace(v, days);
                }
            }
            Value::String(s) => {
                if let Ok(id) = Uuid::try_parse(s) {
                    *s = self.pseudonyms.pseudonym(id).to_string();
                } else if let Some(session) = days
                    && let Some(date) = date_of(s, session.map(|(_, zone)| zone))
                {
                    *value = match session {
                        Some((at, _)) => Value::from(days_between(at.date(), date)),
                        None => Value::Null,
                    };
                }
            }
            _ => {}
        }
    }
}

/// The local date a stored time names: an instant (in the session's zone),
/// a local date-time, or a date. Anything else is not a time.
fn date_of(s: &str, zone: Option<&Zone>) -> Option<Date> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Some(match zone {
            Some(z) => z.tz().to_datetime(t).date(),
            None => jiff::tz::TimeZone::UTC.to_datetime(t).date(),
        });
    }
    if let Ok(dt) = s.parse::<DateTime>() {
        return Some(dt.date());
    }
    s.parse::<Date>().ok()
}

fn days_between(session: Date, date: Date) -> i64 {
    date.since(session)
        .map(|span| i64::from(span.get_days()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_instants_count_from_the_session_day_in_its_zone() {
        let zone = Zone::new("America/New_York").unwrap();
        let session: DateTime = "2026-12-15T10:00".parse().unwrap();
        let day = |s: &str| date_of(s, Some(&zone)).map(|d| days_between(session.date(), d));
        assert_eq!(day("2026-12-15T10:00:00"), Some(0));
        assert_eq!(day("2026-12-08"), Some(-7));
        // 03:00 UTC on the 16th is still the 15th in New York.
        assert_eq!(day("2026-12-16T03:00:00Z"), Some(0));
        assert_eq!(day("2026-12-16T06:00:00Z"), Some(1));
        assert_eq!(day("formal-meditation"), None);
        assert_eq!(day("08:00"), None);
    }
}
