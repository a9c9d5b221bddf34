//! Change from baseline: percent change, reliable change, comparing two administrations.

use serde::{Deserialize, Serialize};

use super::instrument::{Instrument, Method, Sourced};
use super::record::Assessment;
use super::scoring::Score;
use crate::Error;

/// |RC| above this is reliable (Jacobson & Truax 1991: p < .05).
pub const RELIABLE: f64 = 1.96;

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
