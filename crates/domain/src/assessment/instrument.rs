//! Instrument definitions as data (items, subscales, bands, safety rules), and their validation.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The largest instrument Tend accepts.
pub const MAX_ITEMS: u32 = 200;
/// The most subscales an instrument may have.
pub const MAX_SUBSCALES: usize = 10;

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

    pub(super) fn scored(&self, item: &Item, answer: i32) -> i128 {
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
