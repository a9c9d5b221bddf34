//! `docs/events.md` against the code: every stored event type, its schema
//! version, the versions still read and the fields of its current body.
//! A type, version or field added to the code and not to the catalogue (or
//! the other way round) fails here.

use std::collections::{BTreeMap, BTreeSet};

use tend_domain::catalogue;

/// What the catalogue says of one type.
#[derive(Debug, Default)]
struct Documented {
    version: Option<u32>,
    reads: Vec<u32>,
    fields: BTreeSet<String>,
}

fn documented() -> BTreeMap<String, Documented> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/events.md");
    let text = std::fs::read_to_string(path).expect("docs/events.md");
    let mut types: BTreeMap<String, Documented> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("### `") {
            let name = rest.split('`').next().unwrap().to_owned();
            assert!(
                types.insert(name.clone(), Documented::default()).is_none(),
                "{name} is documented twice"
            );
            current = Some(name);
            continue;
        }
        if line.starts_with("## ") {
            current = None;
        }
        let Some(name) = &current else { continue };
        let doc = types.get_mut(name).unwrap();
        // "Schema version 2 (reads 1, 2)." or "Schema version 1."
        if let Some(rest) = line.strip_prefix("Schema version ") {
            let (version, reads) = match rest.split_once(" (reads ") {
                Some((v, reads)) => (
                    v,
                    reads
                        .trim_end_matches(").")
                        .split(", ")
                        .map(|r| r.parse().expect("a version number"))
                        .collect(),
                ),
                None => (rest.trim_end_matches('.'), vec![]),
            };
            let version: u32 = version.parse().expect("a version number");
            doc.version = Some(version);
            doc.reads = if reads.is_empty() {
                vec![version]
            } else {
                reads
            };
        }
        // "| `field` | type | unit | meaning |"
        if let Some(rest) = line.strip_prefix("| `") {
            doc.fields
                .insert(rest.split('`').next().unwrap().to_owned());
        }
    }
    types
}

#[test]
fn the_catalogue_lists_every_event_type_with_its_versions_and_fields() {
    let documented = documented();
    let mut in_code = BTreeSet::new();
    for (_, types) in catalogue::all() {
        for t in types {
            in_code.insert(t.name.to_owned());
            let doc = documented
                .get(t.name)
                .unwrap_or_else(|| panic!("docs/events.md has no section for {}", t.name));
            assert_eq!(doc.version, Some(t.version), "{}: schema version", t.name);
            assert_eq!(doc.reads, t.reads, "{}: versions read", t.name);
            let fields: BTreeSet<String> = t.fields.iter().map(|f| f.to_string()).collect();
            assert_eq!(doc.fields, fields, "{}: fields", t.name);
        }
    }
    let extra: Vec<_> = documented
        .keys()
        .filter(|name| !in_code.contains(*name))
        .collect();
    assert!(
        extra.is_empty(),
        "documented but not in the code: {extra:?}"
    );
}
