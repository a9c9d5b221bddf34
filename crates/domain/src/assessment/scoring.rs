//! Scoring: checking answers against an instrument, exact scores, bands and safety signals.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::instrument::{Band, Instrument, Item, Method};
use super::ratio::Ratio;
use crate::Error;

/// One score, exact and as the nearest double.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub exact: Ratio,
    pub value: f64,
}

impl Score {
    pub(super) fn of(r: Ratio) -> Self {
        Self {
            exact: r,
            value: r.value(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscaleScore {
    pub key: String,
    pub score: Score,
    pub answered: u32,
    pub items: u32,
    pub reversed: bool,
}

/// Everything a scoring produced, with how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub instrument_id: String,
    pub instrument_version: u32,
    pub method: Method,
    pub total: Score,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band: Option<String>,
    pub subscales: Vec<SubscaleScore>,
    pub subscales_interpretable: bool,
    /// Items left unanswered; when any, means cover the answered items and
    /// a sum is prorated.
    pub missing: Vec<u32>,
}

/// Checks answers against an instrument: every item known and answered
/// once, every answer in range, missing answers within the rules.
/// `answers` are (item, answer) pairs as sent.
pub fn check_answers(
    instrument: &Instrument,
    answers: &[(u32, i32)],
) -> Result<BTreeMap<u32, i32>, Error> {
    let mut map = BTreeMap::new();
    for (i, &(item, answer)) in answers.iter().enumerate() {
        if instrument.item(item).is_none() {
            return Err(Error::invalid(
                format!("answers[{i}].item"),
                format!(
                    "{} has no item {item} (items 1 to {})",
                    instrument.id,
                    instrument.items.len()
                ),
            ));
        }
        if !(instrument.min_answer..=instrument.max_answer).contains(&answer) {
            return Err(Error::invalid(
                format!("answers[{i}].answer"),
                format!(
                    "item {item}: {answer} is outside the scale {}..{}",
                    instrument.min_answer, instrument.max_answer
                ),
            ));
        }
        if map.insert(item, answer).is_some() {
            return Err(Error::invalid(
                format!("answers[{i}].item"),
                format!("item {item} is answered twice"),
            ));
        }
    }
    let missing: Vec<u32> = instrument
        .items
        .iter()
        .map(|i| i.number)
        .filter(|n| !map.contains_key(n))
        .collect();
    // An item a safety rule reads is required whatever its flag says: a
    // signal must never be missed for want of an answer.
    if let Some(required) = instrument.items.iter().find(|i| {
        (i.required || instrument.safety.iter().any(|r| r.item == i.number))
            && !map.contains_key(&i.number)
    }) {
        return Err(Error::invalid(
            "answers",
            format!(
                "item {} is a safety item and must be answered",
                required.number
            ),
        ));
    }
    if missing.len() as u32 > instrument.max_missing {
        return Err(Error::invalid(
            "answers",
            format!(
                "{} answers are missing (items {}); {} allows at most {}",
                missing.len(),
                list(&missing),
                instrument.id,
                instrument.max_missing
            ),
        ));
    }
    for s in &instrument.subscales {
        let gone: Vec<u32> = missing
            .iter()
            .copied()
            .filter(|n| {
                instrument
                    .item(*n)
                    .is_some_and(|i| i.subscale.as_ref() == Some(&s.key))
            })
            .collect();
        if gone.len() as u32 > s.max_missing {
            return Err(Error::invalid(
                "answers",
                format!(
                    "{} answers of subscale {} are missing (items {}); at most {} may be",
                    gone.len(),
                    s.key,
                    list(&gone),
                    s.max_missing
                ),
            ));
        }
    }
    Ok(map)
}

fn list(items: &[u32]) -> String {
    items
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Scores checked answers (see `check_answers`).
pub fn score(instrument: &Instrument, answers: &BTreeMap<u32, i32>) -> Scores {
    let answered = |filter: &dyn Fn(&Item) -> bool, reversed: bool| {
        let mut sum = 0i128;
        let mut count = 0i128;
        for item in instrument.items.iter().filter(|i| filter(i)) {
            if let Some(&a) = answers.get(&item.number) {
                sum += if reversed {
                    instrument.scored(item, a)
                } else {
                    i128::from(a)
                };
                count += 1;
            }
        }
        (sum, count)
    };
    let mut subscales = Vec::new();
    let mut means = Vec::new();
    for s in &instrument.subscales {
        let in_s = |i: &Item| i.subscale.as_ref() == Some(&s.key);
        let size = instrument.items.iter().filter(|i| in_s(i)).count() as i128;
        let (reported_sum, count) = answered(&in_s, s.report_reversed);
        let (scored_sum, _) = answered(&in_s, true);
        let count = count.max(1);
        let reported = match instrument.method {
            Method::Sum => Ratio::new(reported_sum * size, count),
            _ => Ratio::new(reported_sum, count),
        };
        means.push(Ratio::new(scored_sum, count));
        subscales.push(SubscaleScore {
            key: s.key.clone(),
            score: Score::of(reported),
            answered: count as u32,
            items: size as u32,
            reversed: s.report_reversed,
        });
    }
    let n = instrument.items.len() as i128;
    let (sum, count) = answered(&|_| true, true);
    let count = count.max(1);
    let total = match instrument.method {
        Method::MeanOfSubscaleMeans => means
            .iter()
            .fold(Ratio::int(0), |acc, m| acc + *m)
            .div_int(means.len().max(1) as i128),
        Method::MeanOfItems => Ratio::new(sum, count),
        Method::Sum => Ratio::new(sum, count).mul_int(n),
    };
    let missing = instrument
        .items
        .iter()
        .map(|i| i.number)
        .filter(|n| !answers.contains_key(n))
        .collect();
    Scores {
        instrument_id: instrument.id.clone(),
        instrument_version: instrument.version,
        method: instrument.method,
        total: Score::of(total),
        band: band(&instrument.bands, total.value()),
        subscales,
        subscales_interpretable: instrument.subscales_interpretable,
        missing,
    }
}

fn band(bands: &[Band], value: f64) -> Option<String> {
    bands
        .iter()
        .find(|b| {
            if b.inclusive {
                value <= b.up_to
            } else {
                value < b.up_to
            }
        })
        .or(bands.last())
        .map(|b| b.label.clone())
}

/// The safety rules the answers trip: (item, answer).
pub fn safety_signals(instrument: &Instrument, answers: &BTreeMap<u32, i32>) -> Vec<(u32, i32)> {
    instrument
        .safety
        .iter()
        .filter_map(|r| {
            answers
                .get(&r.item)
                .filter(|&&a| a > r.above)
                .map(|&a| (r.item, a))
        })
        .collect()
}
