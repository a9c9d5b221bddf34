//! The built-in instruments, as data: scoring keys from `shared/instruments.md`
//! with their sources. No item wording: partners show their own licensed
//! text. Missing-answer limits are Tend's documented defaults (none is
//! published with the keys).

use std::sync::LazyLock;

use super::{Band, Instrument, Item, Method, SafetyRule, Sourced, Subscale};

static BUILT_INS: LazyLock<Vec<Instrument>> =
    LazyLock::new(|| vec![scs(), scs_sf(), phq9(), gad7(), ffmq15()]);

/// Every built-in instrument, each at version 1.
pub fn built_ins() -> &'static [Instrument] {
    &BUILT_INS
}

pub fn built_in(id: &str) -> Option<&'static Instrument> {
    BUILT_INS.iter().find(|i| i.id == id)
}

/// Items 1..=n, each in the subscale whose list holds it; `reversed` lists
/// the reversed ones.
fn items(n: u32, subscales: &[(&str, &[u32])], reversed: &[u32], required: &[u32]) -> Vec<Item> {
    (1..=n)
        .map(|number| Item {
            number,
            subscale: subscales
                .iter()
                .find(|(_, items)| items.contains(&number))
                .map(|(key, _)| (*key).to_owned()),
            reversed: reversed.contains(&number),
            required: required.contains(&number),
        })
        .collect()
}

fn subscale(
    key: &str,
    report_reversed: bool,
    higher_is_better: bool,
    max_missing: u32,
) -> Subscale {
    Subscale {
        key: key.to_owned(),
        report_reversed,
        higher_is_better,
        max_missing,
    }
}

fn bands(spec: &[(&str, f64, bool)]) -> Vec<Band> {
    spec.iter()
        .map(|(label, up_to, inclusive)| Band {
            label: (*label).to_owned(),
            up_to: *up_to,
            inclusive: *inclusive,
        })
        .collect()
}

const NEFF_2003: &str = "Neff 2003, Self and Identity 2:223-250";

/// The six SCS subscales: the positive ones as answered, the negative ones
/// reported as answered too (a high self-judgment score means more
/// self-judgment) and reversed only inside the total.
fn scs_subscales(max_missing: u32) -> Vec<Subscale> {
    vec![
        subscale("self-kindness", false, true, max_missing),
        subscale("self-judgment", false, false, max_missing),
        subscale("common-humanity", false, true, max_missing),
        subscale("isolation", false, false, max_missing),
        subscale("mindfulness", false, true, max_missing),
        subscale("over-identification", false, false, max_missing),
    ]
}

fn scs_bands() -> Vec<Band> {
    // Neff's rough guide: 1-2.5 low, 2.5-3.5 moderate, 3.5-5 high; a score
    // on a boundary takes the middle band.
    bands(&[
        ("low", 2.5, false),
        ("moderate", 3.5, true),
        ("high", 5.0, true),
    ])
}

fn scs() -> Instrument {
    let keys: &[(&str, &[u32])] = &[
        ("self-kindness", &[5, 12, 19, 23, 26]),
        ("self-judgment", &[1, 8, 11, 16, 21]),
        ("common-humanity", &[3, 7, 10, 15]),
        ("isolation", &[4, 13, 18, 25]),
        ("mindfulness", &[9, 14, 17, 22]),
        ("over-identification", &[2, 6, 20, 24]),
    ];
    let reversed: Vec<u32> = keys[1]
        .1
        .iter()
        .chain(keys[3].1)
        .chain(keys[5].1)
        .copied()
        .collect();
    Instrument {
        id: "scs".into(),
        version: 1,
        title: "Self-Compassion Scale".into(),
        min_answer: 1,
        max_answer: 5,
        items: items(26, keys, &reversed, &[]),
        subscales: scs_subscales(1),
        method: Method::MeanOfSubscaleMeans,
        max_missing: 6,
        bands: scs_bands(),
        safety: vec![],
        higher_is_better: true,
        reliability: Some(Sourced {
            value: 0.92,
            source: format!("Cronbach's alpha of the total, {NEFF_2003}"),
        }),
        sd: None,
        subscales_interpretable: true,
        source: format!(
            "{NEFF_2003}; total as the mean of the six subscale means (Neff's current key)"
        ),
    }
}

fn scs_sf() -> Instrument {
    let keys: &[(&str, &[u32])] = &[
        ("self-kindness", &[2, 6]),
        ("self-judgment", &[11, 12]),
        ("common-humanity", &[5, 10]),
        ("isolation", &[4, 8]),
        ("mindfulness", &[3, 7]),
        ("over-identification", &[1, 9]),
    ];
    Instrument {
        id: "scs-sf".into(),
        version: 1,
        title: "Self-Compassion Scale, short form".into(),
        min_answer: 1,
        max_answer: 5,
        items: items(12, keys, &[1, 4, 8, 9, 11, 12], &[]),
        subscales: scs_subscales(1),
        method: Method::MeanOfItems,
        max_missing: 1,
        bands: scs_bands(),
        safety: vec![],
        higher_is_better: true,
        reliability: Some(Sourced {
            value: 0.86,
            source:
                "Cronbach's alpha of the total (>= .86), Raes, Pommier, Neff & Van Gucht 2011, \
                     Clin Psychol Psychother 18:250-255"
                    .into(),
        }),
        sd: None,
        subscales_interpretable: false,
        source: "Raes, Pommier, Neff & Van Gucht 2011, Clin Psychol Psychother 18:250-255; \
                 total as the mean of the 12 items after reversing"
            .into(),
    }
}

fn phq9() -> Instrument {
    Instrument {
        id: "phq-9".into(),
        version: 1,
        title: "Patient Health Questionnaire-9".into(),
        min_answer: 0,
        max_answer: 3,
        // Item 9 is the safety item: it must be answered.
        items: items(9, &[], &[], &[9]),
        subscales: vec![],
        method: Method::Sum,
        max_missing: 1,
        bands: bands(&[
            ("minimal", 4.0, true),
            ("mild", 9.0, true),
            ("moderate", 14.0, true),
            ("moderately severe", 19.0, true),
            ("severe", 27.0, true),
        ]),
        safety: vec![SafetyRule { item: 9, above: 0 }],
        higher_is_better: false,
        reliability: None,
        sd: None,
        subscales_interpretable: true,
        source: "Kroenke, Spitzer & Williams 2001; public domain (Pfizer)".into(),
    }
}

fn gad7() -> Instrument {
    Instrument {
        id: "gad-7".into(),
        version: 1,
        title: "Generalized Anxiety Disorder-7".into(),
        min_answer: 0,
        max_answer: 3,
        items: items(7, &[], &[], &[]),
        subscales: vec![],
        method: Method::Sum,
        max_missing: 1,
        bands: bands(&[
            ("minimal", 4.0, true),
            ("mild", 9.0, true),
            ("moderate", 14.0, true),
            ("severe", 21.0, true),
        ]),
        safety: vec![],
        higher_is_better: false,
        reliability: None,
        sd: None,
        subscales_interpretable: true,
        source: "Spitzer, Kroenke, Williams & Lowe 2006; public domain (Pfizer)".into(),
    }
}

fn ffmq15() -> Instrument {
    let keys: &[(&str, &[u32])] = &[
        ("observe", &[1, 6, 11]),
        ("describe", &[2, 7, 12]),
        ("act-with-awareness", &[3, 8, 13]),
        ("nonjudge", &[4, 9, 14]),
        ("nonreact", &[5, 10, 15]),
    ];
    let facet = |key| subscale(key, true, true, 0);
    Instrument {
        id: "ffmq-15".into(),
        version: 1,
        title: "Five Facet Mindfulness Questionnaire, 15 items".into(),
        min_answer: 1,
        max_answer: 5,
        items: items(15, keys, &[7, 3, 8, 13, 4, 9, 14], &[]),
        subscales: keys.iter().map(|(k, _)| facet(k)).collect(),
        method: Method::Sum,
        max_missing: 0,
        bands: vec![],
        safety: vec![],
        higher_is_better: true,
        reliability: None,
        sd: None,
        subscales_interpretable: true,
        source: "Baer et al. 2012 (licensing unverified: confirm your licence); facets and \
                 total as sums after reversing"
            .into(),
    }
}
