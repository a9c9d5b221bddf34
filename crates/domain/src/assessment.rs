//! Questionnaires: instruments as versioned data (item numbers, keys,
//! scales and rules; never item wording), exact scoring, and reliable change
//! from baseline.
//!
//! Scores are computed in exact fractions and reported both as a fraction
//! and as the nearest double, so that a score never depends on the order in
//! which floating-point sums were taken.

mod builtin;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Error;

pub use builtin::{built_in, built_ins};

/// The largest instrument Tend accepts.
pub const MAX_ITEMS: u32 = 200;
/// The most subscales an instrument may have.
pub const MAX_SUBSCALES: usize = 10;
/// |RC| above this is reliable (Jacobson & Truax 1991: p < .05).
pub const RELIABLE: f64 = 1.96;

// ---- Exact arithmetic ----

/// A fraction in lowest terms, denominator positive. Wide enough for any
/// instrument Tend accepts (at most 200 items and 10 subscales); stored as
/// the string "num/den".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    pub num: i128,
    pub den: i128,
}

fn gcd(a: i128, b: i128) -> i128 {
    let (mut a, mut b) = (a.abs(), b.abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

impl Ratio {
    pub fn new(num: i128, den: i128) -> Self {
        let sign = if den < 0 { -1 } else { 1 };
        let g = gcd(num, den);
        Self {
            num: sign * num / g,
            den: sign * den / g,
        }
    }

    pub fn int(n: i128) -> Self {
        Self { num: n, den: 1 }
    }

    pub fn div_int(self, n: i128) -> Self {
        Self::new(self.num, self.den * n)
    }

    pub fn mul_int(self, n: i128) -> Self {
        Self::new(self.num * n, self.den)
    }

    pub fn value(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

impl std::str::FromStr for Ratio {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("not a fraction: {s}");
        let (num, den) = s.split_once('/').unwrap_or((s, "1"));
        let num: i128 = num.parse().map_err(|_| bad())?;
        let den: i128 = den.parse().map_err(|_| bad())?;
        if den == 0 {
            return Err(bad());
        }
        Ok(Self::new(num, den))
    }
}

impl Serialize for Ratio {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::ops::Add for Ratio {
    type Output = Self;

    fn add(self, o: Self) -> Self {
        Self::new(self.num * o.den + o.num * self.den, self.den * o.den)
    }
}

impl std::ops::Sub for Ratio {
    type Output = Self;

    fn sub(self, o: Self) -> Self {
        Self::new(self.num * o.den - o.num * self.den, self.den * o.den)
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

// ---- Definitions ----

/// How an instrument's total is made from its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Reverse the reversed items, take each subscale's mean, then the mean
    /// of those means (Neff's current SCS key).
    MeanOfSubscaleMeans,
    /// Reverse the reversed items, then the mean of all items.
    MeanOfItems,
    /// Reverse the reversed items, then their sum. With missing answers the
    /// sum is prorated: the mean of the answered items times the item count.
    Sum,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Self::MeanOfSubscaleMeans => "mean_of_subscale_means",
            Self::MeanOfItems => "mean_of_items",
            Self::Sum => "sum",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub number: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscale: Option<String>,
    /// Scored as `min + max - answer` wherever the instrument reverses it.
    #[serde(default)]
    pub reversed: bool,
    /// A safety item may not be left out.
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscale {
    pub key: String,
    /// Reported after reversing its reversed items (a facet scored in the
    /// positive direction), or as answered (SCS: a high self-judgment score
    /// means more self-judgment).
    pub report_reversed: bool,
    pub higher_is_better: bool,
    /// Most answers that may be missing before the subscale (and so the
    /// submission) cannot be scored.
    pub max_missing: u32,
}

/// A label for totals up to `up_to` (inclusive or not), in ascending order;
/// the last band takes everything above.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Band {
    pub label: String,
    pub up_to: f64,
    pub inclusive: bool,
}

/// An answer above `above` on `item` raises a safety signal at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafetyRule {
    pub item: u32,
    pub above: i32,
}

/// A figure with where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sourced {
    pub value: f64,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instrument {
    pub id: String,
    pub version: u32,
    pub title: String,
    pub min_answer: i32,
    pub max_answer: i32,
    pub items: Vec<Item>,
    pub subscales: Vec<Subscale>,
    pub method: Method,
    /// Most answers missing in all.
    pub max_missing: u32,
    pub bands: Vec<Band>,
    pub safety: Vec<SafetyRule>,
    pub higher_is_better: bool,
    /// Test-retest or internal-consistency reliability of the total, for
    /// the reliable change index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reliability: Option<Sourced>,
    /// A reference standard deviation of the total, for the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sd: Option<Sourced>,
    /// False when the authors advise against reading subscales on their own
    /// (SCS-SF): they are reported, marked as such.
    pub subscales_interpretable: bool,
    pub source: String,
}

impl Instrument {
    pub fn item(&self, number: u32) -> Option<&Item> {
        self.items.iter().find(|i| i.number == number)
    }

    fn scored(&self, item: &Item, answer: i32) -> i128 {
        if item.reversed {
            i128::from(self.min_answer + self.max_answer - answer)
        } else {
            i128::from(answer)
        }
    }

    /// Checks a definition: numbered items, known subscales, sane ranges.
    pub fn validate(&self) -> Result<(), Error> {
        crate::protocol::validate_slug("instrument_id", &self.id)?;
        if self.version == 0 {
            return Err(Error::invalid("version", "must be 1 or more"));
        }
        if self.title.trim().is_empty() || self.title.len() > 200 {
            return Err(Error::invalid("title", "must be 1 to 200 bytes"));
        }
        if self.min_answer >= self.max_answer || self.min_answer < -100 || self.max_answer > 100 {
            return Err(Error::invalid(
                "max_answer",
                "answers must range over at least two values within -100..100",
            ));
        }
        let n = self.items.len() as u32;
        if n == 0 || n > MAX_ITEMS {
            return Err(Error::invalid("items", "must hold 1 to 200 items"));
        }
        for (i, item) in self.items.iter().enumerate() {
            let field = format!("items[{i}]");
            if item.number != i as u32 + 1 {
                return Err(Error::invalid(
                    format!("{field}.number"),
                    "items are numbered 1, 2, 3… in order",
                ));
            }
            if let Some(s) = &item.subscale
                && !self.subscales.iter().any(|k| &k.key == s)
            {
                return Err(Error::invalid(
                    format!("{field}.subscale"),
                    "names no subscale of this instrument",
                ));
            }
        }
        if self.subscales.len() > MAX_SUBSCALES {
            return Err(Error::invalid("subscales", "must be at most 10"));
        }
        let mut keys = BTreeSet::new();
        for (i, s) in self.subscales.iter().enumerate() {
            crate::protocol::validate_slug(&format!("subscales[{i}].key"), &s.key)?;
            if !keys.insert(&s.key) {
                return Err(Error::invalid(
                    format!("subscales[{i}].key"),
                    "is used twice",
                ));
            }
            let size = self
                .items
                .iter()
                .filter(|it| it.subscale.as_ref() == Some(&s.key))
                .count() as u32;
            if size == 0 {
                return Err(Error::invalid(format!("subscales[{i}]"), "has no items"));
            }
            if s.max_missing >= size {
                return Err(Error::invalid(
                    format!("subscales[{i}].max_missing"),
                    "must leave at least one item answered",
                ));
            }
        }
        if self.method == Method::MeanOfSubscaleMeans
            && (self.subscales.is_empty() || self.items.iter().any(|i| i.subscale.is_none()))
        {
            return Err(Error::invalid(
                "method",
                "a mean of subscale means needs every item in a subscale",
            ));
        }
        if self.max_missing >= n {
            return Err(Error::invalid(
                "max_missing",
                "must leave at least one item answered",
            ));
        }
        let mut last = f64::NEG_INFINITY;
        for (i, b) in self.bands.iter().enumerate() {
            if !b.up_to.is_finite() || b.up_to <= last || b.label.trim().is_empty() {
                return Err(Error::invalid(
                    format!("bands[{i}]"),
                    "bands need labels and increasing bounds",
                ));
            }
            last = b.up_to;
        }
        if self.bands.len() > 20 {
            return Err(Error::invalid("bands", "must be at most 20"));
        }
        for (i, b) in self.bands.iter().enumerate() {
            if b.label.len() > 64 || b.label.chars().any(char::is_control) {
                return Err(Error::invalid(
                    format!("bands[{i}].label"),
                    "must be at most 64 bytes, without control characters",
                ));
            }
        }
        if self.source.len() > 500 || self.title.chars().any(char::is_control) {
            return Err(Error::invalid(
                "source",
                "source must be at most 500 bytes, and the title without control characters",
            ));
        }
        let mut watched = BTreeSet::new();
        for (i, rule) in self.safety.iter().enumerate() {
            if !watched.insert(rule.item) {
                return Err(Error::invalid(
                    format!("safety[{i}].item"),
                    "already has a safety rule: one rule per item",
                ));
            }
            if self.item(rule.item).is_none() {
                return Err(Error::invalid(
                    format!("safety[{i}].item"),
                    "names no item of this instrument",
                ));
            }
        }
        for (name, figure, ok) in [
            (
                "reliability",
                &self.reliability,
                (|v: f64| v > 0.0 && v < 1.0) as fn(f64) -> bool,
            ),
            ("sd", &self.sd, |v: f64| v > 0.0 && v.is_finite()),
        ] {
            if let Some(f) = figure
                && !ok(f.value)
            {
                return Err(Error::invalid(
                    format!("{name}.value"),
                    "is out of range (reliability in (0, 1), sd above 0)",
                ));
            }
        }
        Ok(())
    }
}

// ---- A tenant's own instruments ----

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

// ---- Scoring ----

/// One score, exact and as the nearest double.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub exact: Ratio,
    pub value: f64,
}

impl Score {
    fn of(r: Ratio) -> Self {
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

// ---- Change from baseline ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    ReliablyImproved,
    NoReliableChange,
    ReliablyWorse,
}

/// Jacobson & Truax's reliable change index for one score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliableChange {
    pub rc: f64,
    pub s_diff: f64,
    pub sd: Sourced,
    pub reliability: Sourced,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub baseline: Score,
    pub current: Score,
    pub absolute: Score,
    /// Percent of the baseline; `None` when the baseline is 0.
    pub percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reliable: Option<ReliableChange>,
}

/// RC = (x2 - x1) / S_diff, S_diff = SD * sqrt(2) * sqrt(1 - r); reliable
/// when |RC| > 1.96, in the direction the scale counts as better.
pub fn reliable_change(
    baseline: f64,
    current: f64,
    sd: &Sourced,
    reliability: &Sourced,
    higher_is_better: bool,
) -> ReliableChange {
    let s_diff = sd.value * 2f64.sqrt() * (1.0 - reliability.value).sqrt();
    let rc = (current - baseline) / s_diff;
    let verdict = if rc.abs() <= RELIABLE || !rc.is_finite() {
        Verdict::NoReliableChange
    } else if (rc > 0.0) == higher_is_better {
        Verdict::ReliablyImproved
    } else {
        Verdict::ReliablyWorse
    };
    ReliableChange {
        rc,
        s_diff,
        sd: sd.clone(),
        reliability: reliability.clone(),
        verdict,
    }
}

/// Absolute and percent change of a score, with reliable change when an SD
/// and a reliability are given.
pub fn change(
    baseline: Score,
    current: Score,
    rc: Option<(&Sourced, &Sourced)>,
    higher_is_better: bool,
) -> Change {
    let absolute = current.exact - baseline.exact;
    Change {
        baseline,
        current,
        absolute: Score::of(absolute),
        // Of the baseline's size, so that the sign is the direction of the
        // change even on a scale that runs below 0.
        percent: (baseline.exact.num != 0)
            .then(|| 100.0 * absolute.value() / baseline.exact.value().abs()),
        reliable: rc
            .map(|(sd, r)| reliable_change(baseline.value, current.value, sd, r, higher_is_better)),
    }
}

/// The sample standard deviation of `values` (n - 1), for an SD taken from
/// the tenant's own baselines.
pub fn sample_sd(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Some(var.sqrt())
}

// ---- The participant's assessments ----

/// How far in the future an administration may be dated (clock skew).
pub const ADMINISTERED_SKEW: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

/// The assessment id for a submission's request id: a retry is the same
/// assessment.
pub fn assessment_id_for_request(participant_key: Uuid, request_id: Uuid) -> Uuid {
    Uuid::new_v5(
        &participant_key,
        format!("assessment/{request_id}").as_bytes(),
    )
}

/// One administration, as submitted and as scored (the latest scoring
/// last).
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub assessment_id: Uuid,
    pub instrument_id: String,
    pub instrument_version: u32,
    pub answers: BTreeMap<u32, i32>,
    pub administered_at: Timestamp,
    pub occurrence_id: Option<Uuid>,
    pub scorings: Vec<Scores>,
    pub safety: Vec<(u32, i32)>,
    /// Its place among the participant's submissions: what breaks a tie
    /// between two administered at the same instant.
    pub seq: usize,
}

impl Assessment {
    pub fn latest(&self) -> Option<&Scores> {
        self.scorings.last()
    }
}

/// Every assessment of one participant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    pub assessments: BTreeMap<Uuid, Assessment>,
    /// Designated baselines by instrument.
    pub baselines: BTreeMap<String, Uuid>,
}

impl Record {
    /// The participant's administrations of an instrument, oldest first.
    pub fn of(&self, instrument_id: &str) -> Vec<&Assessment> {
        let mut list: Vec<&Assessment> = self
            .assessments
            .values()
            .filter(|a| a.instrument_id == instrument_id)
            .collect();
        list.sort_by_key(|a| (a.administered_at, a.seq));
        list
    }

    /// The baseline: the designated one, else the first administration at
    /// or after `arc_start` (the first ever without an arc).
    pub fn baseline(
        &self,
        instrument_id: &str,
        arc_start: Option<Timestamp>,
    ) -> Option<&Assessment> {
        if let Some(id) = self.baselines.get(instrument_id) {
            return self.assessments.get(id);
        }
        self.of(instrument_id)
            .into_iter()
            .find(|a| arc_start.is_none_or(|s| a.administered_at >= s))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Submitted(AssessmentSubmitted),
    Scored(AssessmentScored),
    SafetySignal(SafetySignalRaised),
    BaselineDesignated(BaselineDesignated),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssessmentSubmitted {
    pub assessment_id: Uuid,
    pub instrument_id: String,
    pub instrument_version: u32,
    /// Answers by item number.
    pub answers: BTreeMap<u32, i32>,
    pub administered_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurrence_id: Option<Uuid>,
}

/// Scores with the instrument version and method that made them. A
/// rescoring appends another; none is ever replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssessmentScored {
    pub assessment_id: Uuid,
    pub scores: Scores,
    #[serde(default)]
    pub rescored: bool,
}

/// An answer tripped a safety rule (PHQ-9 item 9 above 0): a clinician
/// should follow up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafetySignalRaised {
    pub assessment_id: Uuid,
    pub instrument_id: String,
    pub item: u32,
    pub answer: i32,
    pub administered_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineDesignated {
    pub instrument_id: String,
    pub assessment_id: Uuid,
}

event_codec! {
    for Event {
        Submitted => "AssessmentSubmitted",
        Scored => "AssessmentScored",
        SafetySignal => "SafetySignalRaised",
        BaselineDesignated => "BaselineDesignated",
    }
}

impl Event {
    /// The id to store the event under. A submission's events follow from
    /// the assessment id, so a retried submission is the same events;
    /// `None` for events decided on the record as read (a rescoring, a
    /// designation), which are guarded by the stream version instead and
    /// may legitimately repeat (designate A, then B, then A again).
    pub fn id(&self) -> Option<Uuid> {
        match self {
            Self::Submitted(e) => Some(e.assessment_id),
            Self::Scored(e) if !e.rescored => Some(Uuid::new_v5(
                &e.assessment_id,
                format!(
                    "scored/{}/{}",
                    e.scores.instrument_version,
                    e.scores.method.name()
                )
                .as_bytes(),
            )),
            Self::SafetySignal(e) => Some(Uuid::new_v5(
                &e.assessment_id,
                format!("safety/{}", e.item).as_bytes(),
            )),
            Self::Scored(_) | Self::BaselineDesignated(_) => None,
        }
    }
}

pub fn evolve(mut record: Record, event: &Event) -> Record {
    match event {
        Event::Submitted(e) => {
            let seq = record.assessments.len();
            record
                .assessments
                .entry(e.assessment_id)
                .or_insert_with(|| Assessment {
                    assessment_id: e.assessment_id,
                    instrument_id: e.instrument_id.clone(),
                    instrument_version: e.instrument_version,
                    answers: e.answers.clone(),
                    administered_at: e.administered_at,
                    occurrence_id: e.occurrence_id,
                    scorings: vec![],
                    safety: vec![],
                    seq,
                });
        }
        Event::Scored(e) => {
            if let Some(a) = record.assessments.get_mut(&e.assessment_id) {
                a.scorings.push(e.scores.clone());
            }
        }
        Event::SafetySignal(e) => {
            if let Some(a) = record.assessments.get_mut(&e.assessment_id) {
                a.safety.push((e.item, e.answer));
            }
        }
        Event::BaselineDesignated(e) => {
            record
                .baselines
                .insert(e.instrument_id.clone(), e.assessment_id);
        }
    }
    record
}

#[derive(Debug, Clone)]
pub enum Command {
    Submit {
        assessment_id: Uuid,
        instrument: Instrument,
        /// (item, answer) as sent.
        answers: Vec<(u32, i32)>,
        administered_at: Timestamp,
        occurrence_id: Option<Uuid>,
        now: Timestamp,
    },
    /// Scores every administration of `instrument.id` again with this
    /// version, where its latest scoring used another.
    Rescore {
        instrument: Instrument,
    },
    DesignateBaseline {
        assessment_id: Uuid,
    },
}

pub fn decide(record: &Record, command: Command) -> Result<Vec<Event>, Error> {
    match command {
        Command::Submit {
            assessment_id,
            instrument,
            answers,
            administered_at,
            occurrence_id,
            now,
        } => {
            let checked = check_answers(&instrument, &answers)?;
            if let Some(existing) = record.assessments.get(&assessment_id) {
                let same = existing.instrument_id == instrument.id
                    && existing.instrument_version == instrument.version
                    && existing.answers == checked
                    && existing.administered_at == administered_at
                    && existing.occurrence_id == occurrence_id;
                return if same {
                    Ok(vec![])
                } else {
                    Err(Error::already_exists(
                        "request_id",
                        "was already used for a different submission",
                    ))
                };
            }
            if administered_at > crate::time::shift(now, ADMINISTERED_SKEW) {
                return Err(Error::invalid("administered_at", "is in the future"));
            }
            let scores = score(&instrument, &checked);
            let mut events = vec![
                Event::Submitted(AssessmentSubmitted {
                    assessment_id,
                    instrument_id: instrument.id.clone(),
                    instrument_version: instrument.version,
                    answers: checked.clone(),
                    administered_at,
                    occurrence_id,
                }),
                Event::Scored(AssessmentScored {
                    assessment_id,
                    scores,
                    rescored: false,
                }),
            ];
            events.extend(safety_signals(&instrument, &checked).into_iter().map(
                |(item, answer)| {
                    Event::SafetySignal(SafetySignalRaised {
                        assessment_id,
                        instrument_id: instrument.id.clone(),
                        item,
                        answer,
                        administered_at,
                    })
                },
            ));
            Ok(events)
        }
        Command::Rescore { instrument } => Ok(record
            .of(&instrument.id)
            .into_iter()
            .filter(|a| {
                a.latest().is_none_or(|s| {
                    (s.instrument_version, s.method) != (instrument.version, instrument.method)
                })
            })
            .filter_map(|a| {
                let answers: Vec<(u32, i32)> = a.answers.iter().map(|(k, v)| (*k, *v)).collect();
                let checked = check_answers(&instrument, &answers).ok()?;
                Some(Event::Scored(AssessmentScored {
                    assessment_id: a.assessment_id,
                    scores: score(&instrument, &checked),
                    rescored: true,
                }))
            })
            .collect()),
        Command::DesignateBaseline { assessment_id } => {
            let a = record
                .assessments
                .get(&assessment_id)
                .ok_or_else(|| Error::not_found("assessment"))?;
            if record.baselines.get(&a.instrument_id) == Some(&assessment_id) {
                return Ok(vec![]);
            }
            Ok(vec![Event::BaselineDesignated(BaselineDesignated {
                instrument_id: a.instrument_id.clone(),
                assessment_id,
            })])
        }
    }
}

/// Change of the total and of each subscale between two scorings of the
/// same instrument version and method.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeReport {
    pub instrument_version: u32,
    pub method: Method,
    pub total: Change,
    pub subscales: Vec<(String, Change)>,
    /// Why there is no reliable change index, when there is none.
    pub reliable_missing: Option<String>,
}

/// Compares `current` with `baseline` (their latest scorings). `sd` and
/// `reliability` are the figures for the total, from wherever the caller
/// found them.
pub fn compare(
    instrument: &Instrument,
    baseline: &Assessment,
    current: &Assessment,
    sd: Option<&Sourced>,
    reliability: Option<&Sourced>,
) -> Result<ChangeReport, Error> {
    if (current.administered_at, current.seq) < (baseline.administered_at, baseline.seq) {
        return Err(Error::refused(
            "assessment_id",
            "was administered before the baseline: name a later one, or designate an earlier baseline",
        ));
    }
    let (Some(b), Some(c)) = (baseline.latest(), current.latest()) else {
        return Err(Error::refused("assessment_id", "has no scores"));
    };
    if (b.instrument_version, b.method) != (c.instrument_version, c.method) {
        return Err(Error::refused(
            "assessment_id",
            "baseline and current were scored by different instrument versions: rescore them first",
        ));
    }
    let rc = sd.zip(reliability);
    let reliable_missing = match (sd, reliability) {
        (Some(_), Some(_)) => None,
        (None, Some(_)) => Some("no standard deviation for this instrument: pass one".to_owned()),
        (Some(_), None) => Some("no reliability for this instrument: pass one".to_owned()),
        (None, None) => Some("no standard deviation or reliability for this instrument".to_owned()),
    };
    let subscales = c
        .subscales
        .iter()
        .filter_map(|cs| {
            let bs = b.subscales.iter().find(|x| x.key == cs.key)?;
            let better = instrument
                .subscales
                .iter()
                .find(|s| s.key == cs.key)
                .is_none_or(|s| s.higher_is_better);
            Some((cs.key.clone(), change(bs.score, cs.score, None, better)))
        })
        .collect();
    Ok(ChangeReport {
        instrument_version: c.instrument_version,
        method: c.method,
        total: change(b.total, c.total, rc, instrument.higher_is_better),
        subscales,
        reliable_missing,
    })
}

#[cfg(test)]
mod tests;
