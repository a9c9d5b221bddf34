//! Protocols: versioned definitions of what a participant is asked to do,
//! and when, relative to their session (day 0).
//!
//! A protocol version is a draft until it is published; a published version
//! never changes, so an arc enrolled on it is never changed by a later
//! version. Partners' protocols live in the event store, one stream per
//! protocol; the built-in ones are data in this module and exist in every
//! tenant.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::consent::Purpose;
use crate::time::LocalTime;
use crate::{DomainEvent, Error};

mod builtin;

pub use builtin::{built_in, built_ins};

/// The most activities one protocol may hold.
pub const MAX_ACTIVITIES: usize = 64;
/// The most occurrences one arc may expand to, so that a schedule is always
/// a bounded answer.
pub const MAX_OCCURRENCES: usize = 5000;
/// The longest arc side, in weeks.
pub const MAX_WEEKS: u32 = 52;

/// A protocol version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protocol {
    pub id: String,
    pub version: u32,
    pub title: String,
    /// Weeks of the arc before the session (days `-7 * weeks_before ..= -1`).
    pub weeks_before: u32,
    /// Weeks of the arc after the session (days `1 ..= 7 * weeks_after`).
    pub weeks_after: u32,
    pub activities: Vec<Activity>,
    /// The consent purposes enrolling needs; withdrawing one of them stops
    /// the schedule. Absent from versions stored before consent existed.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub required_purposes: BTreeSet<Purpose>,
}

/// One thing a protocol asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// Stable within the protocol across versions: occurrence ids are made
    /// from it.
    pub key: String,
    pub kind: ActivityKind,
    pub span: DaySpan,
    pub cadence: Cadence,
    /// Local times of day, strictly increasing; one for `Once` and `Weekly`.
    pub times: Vec<LocalTime>,
    pub target_minutes: u32,
    /// How long after its local time an occurrence counts as done.
    pub window_minutes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ActivityKind {
    /// A practice the participant logs, such as `self-compassion-break`.
    Practice { practice: String },
    /// An administration of an instrument, such as `scs-sf`.
    Assessment { instrument: String },
    /// A session with the integration practitioner.
    IntegrationSession,
    /// Anything done once and ticked off, such as naming a support person.
    Task,
}

/// Days relative to the session, inclusive; negative before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaySpan {
    pub first: i32,
    pub last: i32,
}

impl DaySpan {
    /// The days of arc weeks `first..=last`. Week -1 is days -7..-1, week 1
    /// is days 1..7: day 0, the session, belongs to no week.
    pub fn weeks(first: i32, last: i32) -> Result<Self, Error> {
        if first == 0 || last == 0 {
            return Err(Error::invalid(
                "weeks",
                "week 0 does not exist: week -1 ends the day before the session, \
                 week 1 starts the day after; give days to include day 0",
            ));
        }
        if first > last {
            return Err(Error::invalid("weeks", "first must not be after last"));
        }
        let bound = MAX_WEEKS as i32;
        if first < -bound || last > bound {
            return Err(Error::invalid("weeks", "must lie within -52..52"));
        }
        Ok(Self {
            first: week_first_day(first),
            last: week_first_day(last) + 6,
        })
    }

    pub fn days(first: i32, last: i32) -> Result<Self, Error> {
        if first > last {
            return Err(Error::invalid("days", "first must not be after last"));
        }
        let bound = 7 * MAX_WEEKS as i32;
        if first < -bound || last > bound {
            return Err(Error::invalid("days", "must lie within -364..364"));
        }
        Ok(Self { first, last })
    }
}

/// The first day of arc week `week` (never 0).
pub fn week_first_day(week: i32) -> i32 {
    if week < 0 {
        7 * week
    } else {
        7 * (week - 1) + 1
    }
}

/// The arc week a day belongs to; 0 for the session day.
pub fn arc_week(day: i32) -> i32 {
    match day {
        0 => 0,
        d if d < 0 => -((-d - 1) / 7 + 1),
        d => (d - 1) / 7 + 1,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cadence {
    /// On the first day of the span.
    Once,
    /// Every day of the span, at each of the times: "n times a day".
    Daily,
    /// Every seventh day from the first day of the span.
    Weekly,
}

impl Activity {
    /// The days this activity happens on.
    pub fn days(&self) -> impl Iterator<Item = i32> + '_ {
        let step = match self.cadence {
            Cadence::Once => usize::MAX,
            Cadence::Daily => 1,
            Cadence::Weekly => 7,
        };
        (self.span.first..=self.span.last).step_by(step)
    }

    fn occurrence_count(&self) -> usize {
        self.days().count() * self.times.len()
    }
}

impl Protocol {
    /// Checks every rule a protocol must satisfy; the error names the first
    /// offending field.
    pub fn validate(&self) -> Result<(), Error> {
        validate_id(&self.id)?;
        if self.version == 0 {
            return Err(Error::invalid("version", "must be at least 1"));
        }
        if self.title.trim().is_empty() || self.title.chars().count() > 200 {
            return Err(Error::invalid("title", "must be 1 to 200 characters"));
        }
        if self.title.chars().any(char::is_control) {
            return Err(Error::invalid(
                "title",
                "must not contain control characters",
            ));
        }
        if self.weeks_before > MAX_WEEKS {
            return Err(Error::invalid("weeks_before", "must be at most 52"));
        }
        if self.weeks_after > MAX_WEEKS {
            return Err(Error::invalid("weeks_after", "must be at most 52"));
        }
        if self.activities.is_empty() {
            return Err(Error::invalid(
                "activities",
                "at least one activity is required",
            ));
        }
        if self.activities.len() > MAX_ACTIVITIES {
            return Err(Error::invalid("activities", "at most 64 activities"));
        }
        let mut total = 0;
        for (i, activity) in self.activities.iter().enumerate() {
            let at = format!("activities[{i}]");
            self.validate_activity(activity)
                .map_err(|e| e.within(&at))?;
            if self.activities[..i].iter().any(|a| a.key == activity.key) {
                return Err(Error::invalid(
                    format!("{at}.key"),
                    "is used by an earlier activity",
                ));
            }
            total += activity.occurrence_count();
        }
        if total > MAX_OCCURRENCES {
            return Err(Error::invalid(
                "activities",
                format!("expand to {total} occurrences; at most {MAX_OCCURRENCES} per arc"),
            ));
        }
        Ok(())
    }

    fn validate_activity(&self, a: &Activity) -> Result<(), Error> {
        validate_slug("key", &a.key)?;
        match &a.kind {
            ActivityKind::Practice { practice } => validate_slug("kind.practice", practice)?,
            ActivityKind::Assessment { instrument } => {
                validate_slug("kind.instrument", instrument)?
            }
            ActivityKind::IntegrationSession | ActivityKind::Task => {}
        }
        let (earliest, latest) = (-7 * self.weeks_before as i32, 7 * self.weeks_after as i32);
        if a.span.first > a.span.last {
            return Err(Error::invalid("span", "first must not be after last"));
        }
        if a.span.first < earliest || a.span.last > latest {
            return Err(Error::invalid(
                "span",
                format!(
                    "days {}..{} lie outside the protocol's arc, days {earliest}..{latest} \
                     ({} weeks before, {} after)",
                    a.span.first, a.span.last, self.weeks_before, self.weeks_after
                ),
            ));
        }
        match (a.cadence, a.times.len()) {
            (_, 0) => {
                return Err(Error::invalid(
                    "times",
                    "at least one time of day is required",
                ));
            }
            (Cadence::Once | Cadence::Weekly, n) if n > 1 => {
                return Err(Error::invalid(
                    "times",
                    "once and weekly activities take exactly one time of day",
                ));
            }
            (Cadence::Daily, n) if n > 12 => {
                return Err(Error::invalid("times", "at most 12 times a day"));
            }
            _ => {}
        }
        if a.times.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::invalid("times", "must be strictly increasing"));
        }
        if a.target_minutes > 600 {
            return Err(Error::invalid("target_minutes", "must be at most 600"));
        }
        if a.window_minutes == 0 || a.window_minutes > 14 * 24 * 60 {
            return Err(Error::invalid(
                "window_minutes",
                "must be between 1 and 20160 (14 days)",
            ));
        }
        // Two windows of one activity must not overlap, or one practice
        // could complete either: neither within a day nor from the last time
        // of a day into the first of the next. (A 23-hour spring-forward day
        // can still shorten the gap by the DST shift.)
        let minutes = |t: LocalTime| t.hour() as u32 * 60 + t.minute() as u32;
        if let Some(w) = a
            .times
            .windows(2)
            .find(|w| minutes(w[1]) - minutes(w[0]) < a.window_minutes)
        {
            return Err(Error::invalid(
                "window_minutes",
                format!("the window after {} runs into the one at {}", w[0], w[1]),
            ));
        }
        if let (Cadence::Daily, [first, .., last]) = (a.cadence, a.times.as_slice())
            && a.span.first != a.span.last
            && 24 * 60 - (minutes(*last) - minutes(*first)) < a.window_minutes
        {
            return Err(Error::invalid(
                "window_minutes",
                format!("the window after {last} runs into the next day's at {first}"),
            ));
        }
        let period = match a.cadence {
            Cadence::Once => None,
            Cadence::Daily if a.times.len() == 1 => Some(24 * 60),
            Cadence::Daily => None,
            Cadence::Weekly => Some(7 * 24 * 60),
        };
        if let Some(period) = period
            && a.window_minutes > period
            && a.span.first != a.span.last
        {
            return Err(Error::invalid(
                "window_minutes",
                "must not be longer than the time between two occurrences",
            ));
        }
        Ok(())
    }

    pub fn activity(&self, key: &str) -> Option<&Activity> {
        self.activities.iter().find(|a| a.key == key)
    }

    /// The first and last day of the arc.
    pub fn arc_days(&self) -> (i32, i32) {
        (-7 * self.weeks_before as i32, 7 * self.weeks_after as i32)
    }
}

/// Protocol ids: 3 to 64 of a-z, 0-9 and '-', starting with a letter.
pub fn validate_id(id: &str) -> Result<(), Error> {
    let ok = (3..=64).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "protocol_id",
            "must be 3 to 64 characters of a-z, 0-9 and '-', starting with a letter",
        ))
    }
}

pub(crate) fn validate_slug(field: &str, s: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            "must be 1 to 64 characters of a-z, 0-9 and '-'",
        ))
    }
}

// ---- The protocol aggregate: one stream per partner protocol. ----

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Drafted(ProtocolDrafted),
    Published(ProtocolPublished),
}

/// A draft version was saved (a new version, or a new text of the draft).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtocolDrafted {
    pub protocol: Protocol,
    pub drafted_at: Timestamp,
}

/// A draft became final.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtocolPublished {
    pub protocol_id: String,
    pub version: u32,
    pub published_at: Timestamp,
}

impl DomainEvent for Event {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Drafted(_) => "ProtocolDrafted",
            Self::Published(_) => "ProtocolPublished",
        }
    }

    fn to_payload(&self) -> serde_json::Value {
        match self {
            Self::Drafted(e) => crate::to_payload(e),
            Self::Published(e) => crate::to_payload(e),
        }
    }

    fn from_stored(
        event_type: &str,
        schema_version: u32,
        payload: &serde_json::Value,
    ) -> Result<Self, crate::DecodeError> {
        use crate::decode;
        Ok(match (event_type, schema_version) {
            ("ProtocolDrafted", 1) => Self::Drafted(decode(event_type, payload)?),
            ("ProtocolPublished", 1) => Self::Published(decode(event_type, payload)?),
            _ => return Err(crate::DecodeError::unknown(event_type, schema_version)),
        })
    }
}

/// The protocol types for the event catalogue.
pub fn catalogue() -> Vec<crate::catalogue::EventType> {
    use crate::catalogue::{EventType, fields_of};
    vec![
        EventType {
            name: "ProtocolDrafted",
            version: 1,
            reads: vec![1],
            fields: fields_of(Event::Drafted),
        },
        EventType {
            name: "ProtocolPublished",
            version: 1,
            reads: vec![1],
            fields: fields_of(Event::Published),
        },
    ]
}

/// Every version of one protocol.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    pub versions: Vec<Version>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub protocol: Protocol,
    pub published_at: Option<Timestamp>,
}

impl History {
    pub fn latest(&self) -> Option<&Version> {
        self.versions.last()
    }

    pub fn version(&self, version: u32) -> Option<&Version> {
        self.versions.iter().find(|v| v.protocol.version == version)
    }

    pub fn latest_published(&self) -> Option<&Version> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.published_at.is_some())
    }
}

pub fn evolve(mut state: History, event: &Event) -> History {
    match event {
        Event::Drafted(e) => {
            let version = Version {
                protocol: e.protocol.clone(),
                published_at: None,
            };
            match state.versions.last_mut() {
                Some(last) if last.protocol.version == e.protocol.version => *last = version,
                _ => state.versions.push(version),
            }
        }
        Event::Published(e) => {
            if let Some(v) = state
                .versions
                .iter_mut()
                .find(|v| v.protocol.version == e.version)
            {
                v.published_at = Some(e.published_at);
            }
        }
    }
    state
}

#[derive(Debug, Clone)]
pub enum Command {
    /// Saves `protocol` (its `version` is ignored) as the draft: a new
    /// version after a published one, or the new text of the open draft.
    Draft {
        protocol: Protocol,
        now: Timestamp,
    },
    Publish {
        version: u32,
        now: Timestamp,
    },
}

pub fn decide(state: &History, command: Command) -> Result<Vec<Event>, Error> {
    match command {
        Command::Draft { mut protocol, now } => {
            if built_in(&protocol.id).is_some() {
                return Err(Error::already_exists(
                    "protocol.protocol_id",
                    "is the id of a built-in protocol",
                ));
            }
            protocol.version = match state.latest() {
                Some(v) if v.published_at.is_none() => v.protocol.version,
                Some(v) => v.protocol.version + 1,
                None => 1,
            };
            protocol.validate().map_err(|e| e.within("protocol"))?;
            if state
                .latest()
                .is_some_and(|v| v.published_at.is_none() && v.protocol == protocol)
            {
                return Ok(vec![]);
            }
            Ok(vec![Event::Drafted(ProtocolDrafted {
                protocol,
                drafted_at: now,
            })])
        }
        Command::Publish { version, now } => {
            if state.versions.is_empty() {
                return Err(Error::not_found("protocol"));
            }
            let Some(v) = state.version(version) else {
                return Err(Error::not_found("protocol version"));
            };
            if v.published_at.is_some() {
                return Ok(vec![]);
            }
            Ok(vec![Event::Published(ProtocolPublished {
                protocol_id: v.protocol.id.clone(),
                version,
                published_at: now,
            })])
        }
    }
}

decider! {
    /// A protocol's versions as a decider: drafts and publications.
    Aggregate: History, Command => Event
}

/// Looks up protocol versions (built in or a partner's).
pub trait Protocols {
    fn get(&self, protocol_id: &str, version: u32) -> Option<&Protocol>;
}

/// A set of protocol versions, with the built-ins always present.
#[derive(Debug, Clone, Default)]
pub struct ProtocolSet {
    versions: BTreeMap<(String, u32), Protocol>,
}

impl ProtocolSet {
    pub fn insert(&mut self, protocol: Protocol) {
        self.versions
            .insert((protocol.id.clone(), protocol.version), protocol);
    }

    pub fn contains(&self, protocol_id: &str, version: u32) -> bool {
        self.get(protocol_id, version).is_some()
    }
}

impl Protocols for ProtocolSet {
    fn get(&self, protocol_id: &str, version: u32) -> Option<&Protocol> {
        match built_in(protocol_id) {
            Some(p) if p.version == version => Some(p),
            Some(_) => None,
            None => self.versions.get(&(protocol_id.to_owned(), version)),
        }
    }
}

#[cfg(test)]
mod tests;
