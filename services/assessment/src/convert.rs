//! Proto <-> domain conversions.

use tend_api::assessment::v1 as pb;
use tend_domain::assessment::{
    Assessment, Band, Change, Instrument, Item, Method, ReliableChange, SafetyRule, Score, Scores,
    Sourced, Subscale, Verdict,
};

use crate::Error;
use tend_service_kit::instants;

pub(crate) fn method_pb(m: Method) -> pb::ScoringMethod {
    match m {
        Method::MeanOfSubscaleMeans => pb::ScoringMethod::MeanOfSubscaleMeans,
        Method::MeanOfItems => pb::ScoringMethod::MeanOfItems,
        Method::Sum => pb::ScoringMethod::Sum,
    }
}

fn method(m: i32) -> Result<Method, Error> {
    match pb::ScoringMethod::try_from(m) {
        Ok(pb::ScoringMethod::MeanOfSubscaleMeans) => Ok(Method::MeanOfSubscaleMeans),
        Ok(pb::ScoringMethod::MeanOfItems) => Ok(Method::MeanOfItems),
        Ok(pb::ScoringMethod::Sum) => Ok(Method::Sum),
        _ => Err(Error::invalid(
            "instrument.method",
            "must be a scoring method (MEAN_OF_SUBSCALE_MEANS, MEAN_OF_ITEMS or SUM)",
        )),
    }
}

fn sourced_pb(s: &Sourced) -> pb::SourcedFigure {
    pb::SourcedFigure {
        value: s.value,
        source: s.source.clone(),
    }
}

pub(crate) fn sourced(
    field: &str,
    s: Option<&pb::SourcedFigure>,
) -> Result<Option<Sourced>, Error> {
    let Some(s) = s else {
        return Ok(None);
    };
    if s.source.trim().is_empty() || s.source.len() > 500 {
        return Err(Error::invalid(
            format!("{field}.source"),
            "say where the figure comes from (1 to 500 bytes)",
        ));
    }
    if !s.value.is_finite() {
        return Err(Error::invalid(format!("{field}.value"), "must be a number"));
    }
    Ok(Some(Sourced {
        value: s.value,
        source: s.source.clone(),
    }))
}

pub(crate) fn instrument_pb(i: &Instrument) -> pb::Instrument {
    pb::Instrument {
        instrument_id: i.id.clone(),
        version: i.version,
        title: i.title.clone(),
        min_answer: i.min_answer,
        max_answer: i.max_answer,
        items: i
            .items
            .iter()
            .map(|it| pb::Item {
                number: it.number,
                subscale: it.subscale.clone().unwrap_or_default(),
                reversed: it.reversed,
                required: it.required,
            })
            .collect(),
        subscales: i
            .subscales
            .iter()
            .map(|s| pb::Subscale {
                key: s.key.clone(),
                report_reversed: s.report_reversed,
                higher_is_better: s.higher_is_better,
                max_missing: s.max_missing,
            })
            .collect(),
        method: method_pb(i.method).into(),
        max_missing: i.max_missing,
        bands: i
            .bands
            .iter()
            .map(|b| pb::Band {
                label: b.label.clone(),
                up_to: b.up_to,
                inclusive: b.inclusive,
            })
            .collect(),
        safety_rules: i
            .safety
            .iter()
            .map(|r| pb::SafetyRule {
                item: r.item,
                above: r.above,
            })
            .collect(),
        higher_is_better: i.higher_is_better,
        reliability: i.reliability.as_ref().map(sourced_pb),
        sd: i.sd.as_ref().map(sourced_pb),
        subscales_interpretable: i.subscales_interpretable,
        source: i.source.clone(),
        built_in: tend_domain::assessment::built_in(&i.id).is_some(),
    }
}

/// A partner's definition; the domain validates the rest.
pub(crate) fn instrument(i: pb::Instrument) -> Result<Instrument, Error> {
    Ok(Instrument {
        method: method(i.method)?,
        reliability: sourced("instrument.reliability", i.reliability.as_ref())?,
        sd: sourced("instrument.sd", i.sd.as_ref())?,
        id: i.instrument_id,
        version: i.version,
        title: i.title,
        min_answer: i.min_answer,
        max_answer: i.max_answer,
        items: i
            .items
            .into_iter()
            .map(|it| Item {
                number: it.number,
                subscale: (!it.subscale.is_empty()).then_some(it.subscale),
                reversed: it.reversed,
                required: it.required,
            })
            .collect(),
        subscales: i
            .subscales
            .into_iter()
            .map(|s| Subscale {
                key: s.key,
                report_reversed: s.report_reversed,
                higher_is_better: s.higher_is_better,
                max_missing: s.max_missing,
            })
            .collect(),
        max_missing: i.max_missing,
        bands: i
            .bands
            .into_iter()
            .map(|b| Band {
                label: b.label,
                up_to: b.up_to,
                inclusive: b.inclusive,
            })
            .collect(),
        safety: i
            .safety_rules
            .into_iter()
            .map(|r| SafetyRule {
                item: r.item,
                above: r.above,
            })
            .collect(),
        higher_is_better: i.higher_is_better,
        subscales_interpretable: i.subscales_interpretable,
        source: i.source,
    })
}

fn score_pb(s: &Score) -> pb::Score {
    pb::Score {
        value: s.value,
        exact: s.exact.to_string(),
    }
}

fn scores_pb(s: &Scores) -> pb::Scores {
    pb::Scores {
        instrument_version: s.instrument_version,
        method: method_pb(s.method).into(),
        total: Some(score_pb(&s.total)),
        band: s.band.clone().unwrap_or_default(),
        subscales: s
            .subscales
            .iter()
            .map(|x| pb::SubscaleScore {
                key: x.key.clone(),
                score: Some(score_pb(&x.score)),
                answered: x.answered,
                items: x.items,
                reversed: x.reversed,
            })
            .collect(),
        subscales_interpretable: s.subscales_interpretable,
        missing_items: s.missing.clone(),
    }
}

pub(crate) fn assessment_pb(a: &Assessment) -> pb::Assessment {
    pb::Assessment {
        assessment_id: a.assessment_id.to_string(),
        instrument_id: a.instrument_id.clone(),
        instrument_version: a.instrument_version,
        answers: a
            .answers
            .iter()
            .map(|(item, answer)| pb::Answer {
                item: *item,
                answer: *answer,
            })
            .collect(),
        administered_at: Some(instants::to_pb(a.administered_at)),
        occurrence_id: a.occurrence_id.map(|o| o.to_string()).unwrap_or_default(),
        scorings: a.scorings.iter().map(scores_pb).collect(),
        safety_signals: a
            .safety
            .iter()
            .map(|(item, answer)| pb::SafetySignal {
                item: *item,
                answer: *answer,
            })
            .collect(),
    }
}

fn reliable_pb(r: &ReliableChange) -> pb::ReliableChange {
    pb::ReliableChange {
        rc: r.rc,
        s_diff: r.s_diff,
        sd: Some(sourced_pb(&r.sd)),
        reliability: Some(sourced_pb(&r.reliability)),
        verdict: match r.verdict {
            Verdict::ReliablyImproved => pb::Verdict::ReliablyImproved,
            Verdict::NoReliableChange => pb::Verdict::NoReliableChange,
            Verdict::ReliablyWorse => pb::Verdict::ReliablyWorse,
        }
        .into(),
    }
}

pub(crate) fn change_pb(c: &Change) -> pb::Change {
    pb::Change {
        baseline: Some(score_pb(&c.baseline)),
        current: Some(score_pb(&c.current)),
        absolute: Some(score_pb(&c.absolute)),
        percent: c.percent,
        reliable_change: c.reliable.as_ref().map(reliable_pb),
    }
}
