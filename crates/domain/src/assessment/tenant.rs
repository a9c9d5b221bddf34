//! A tenant's own instruments: the versions it defines, as events.

use serde::{Deserialize, Serialize};

use super::builtin::built_in;
use super::instrument::Instrument;
use crate::Error;

#[derive(Debug, Clone, PartialEq)]
pub enum InstrumentEvent {
    Defined(InstrumentDefined),
}

/// A version of a tenant's instrument; versions never change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstrumentDefined {
    pub instrument: Instrument,
}

event_codec! {
    for InstrumentEvent {
        Defined => "InstrumentDefined",
    }
}

/// Adds a version of a tenant instrument given the versions it has.
/// Version 0 asks for the next one; defining the latest version again with
/// the same content is nothing new.
pub fn define(
    versions: &[Instrument],
    mut instrument: Instrument,
) -> Result<Vec<InstrumentEvent>, Error> {
    if built_in(&instrument.id).is_some() {
        return Err(Error::invalid(
            "instrument.instrument_id",
            "names a built-in instrument: choose another id",
        ));
    }
    let next = versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
    // "The next version" sent again with the latest's content is a retry.
    if instrument.version == 0
        && let Some(latest) = versions.iter().max_by_key(|v| v.version)
        && (Instrument {
            version: latest.version,
            ..instrument.clone()
        }) == *latest
    {
        return Ok(vec![]);
    }
    if let Some(same) = versions.iter().find(|v| v.version == instrument.version) {
        return if *same == instrument {
            Ok(vec![])
        } else {
            Err(Error::already_exists(
                "instrument.version",
                "this version exists with other content: versions never change",
            ))
        };
    }
    if instrument.version == 0 {
        instrument.version = next;
    }
    if instrument.version != next {
        return Err(Error::invalid(
            "instrument.version",
            format!("must be {next}, the next version (or 0)"),
        ));
    }
    instrument.validate().map_err(|e| e.within("instrument"))?;
    Ok(vec![InstrumentEvent::Defined(InstrumentDefined {
        instrument,
    })])
}

/// A tenant instrument's versions as a decider: the command is the
/// definition to add.
#[derive(Debug)]
pub enum Instruments {}

impl crate::Decider for Instruments {
    type State = Vec<Instrument>;
    type Command = Instrument;
    type Event = InstrumentEvent;

    fn decide(
        versions: &Vec<Instrument>,
        given: Instrument,
    ) -> Result<Vec<InstrumentEvent>, Error> {
        define(versions, given)
    }

    fn evolve(mut versions: Vec<Instrument>, event: &InstrumentEvent) -> Vec<Instrument> {
        let InstrumentEvent::Defined(d) = event;
        versions.push(d.instrument.clone());
        versions
    }
}
