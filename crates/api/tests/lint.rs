//! The protos follow buf's DEFAULT lint rules (the naming ones), checked
//! here on the compiled descriptor set so that no tool outside cargo is
//! needed: a new proto that breaks one fails the test suite.

use std::collections::HashMap;

use prost::Message;
use prost_types::FileDescriptorSet;

fn is_pascal(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase()) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

fn is_lower_snake(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_upper_snake(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// `OccurrenceStatus` -> `OCCURRENCE_STATUS`.
fn upper_snake(pascal: &str) -> String {
    let mut out = String::new();
    for (i, c) in pascal.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn check_enum(e: &prost_types::EnumDescriptorProto, at: &str, problems: &mut Vec<String>) {
    let name = e.name();
    if !is_pascal(name) {
        problems.push(format!("{at}{name}: enum names are PascalCase"));
    }
    let prefix = format!("{}_", upper_snake(name));
    for (i, v) in e.value.iter().enumerate() {
        if !is_upper_snake(v.name()) || !v.name().starts_with(&prefix) {
            problems.push(format!(
                "{at}{name}.{}: values are UPPER_SNAKE_CASE prefixed {prefix}",
                v.name()
            ));
        }
        if i == 0 && (v.number() != 0 || v.name() != format!("{prefix}UNSPECIFIED")) {
            problems.push(format!("{at}{name}: the zero value is {prefix}UNSPECIFIED"));
        }
    }
}

fn check_message(m: &prost_types::DescriptorProto, at: &str, problems: &mut Vec<String>) {
    let name = m.name();
    if !is_pascal(name) {
        problems.push(format!("{at}{name}: message names are PascalCase"));
    }
    for f in &m.field {
        if !is_lower_snake(f.name()) {
            problems.push(format!(
                "{at}{name}.{}: field names are lower_snake_case",
                f.name()
            ));
        }
    }
    for (i, o) in m.oneof_decl.iter().enumerate() {
        // `optional` fields make synthetic oneofs, which buf does not lint.
        let synthetic = m
            .field
            .iter()
            .any(|f| f.oneof_index == Some(i as i32) && f.proto3_optional());
        if !synthetic && !is_lower_snake(o.name()) {
            problems.push(format!(
                "{at}{name}.{}: oneof names are lower_snake_case",
                o.name()
            ));
        }
    }
    let inner = format!("{at}{name}.");
    for nested in &m.nested_type {
        check_message(nested, &inner, problems);
    }
    for e in &m.enum_type {
        check_enum(e, &inner, problems);
    }
}

#[test]
fn protos_follow_buf_default_naming_rules() {
    let set = FileDescriptorSet::decode(tend_api::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in set.file.iter().filter(|f| f.package().starts_with("tend.")) {
        checked += 1;
        let package = file.package();
        let path = file.name();
        let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
        if dir != package.replace('.', "/") {
            problems.push(format!(
                "{path}: the directory must match package {package}"
            ));
        }
        let version = package.rsplit('.').next().unwrap_or_default();
        if !(version.starts_with('v') && version[1..].chars().all(|c| c.is_ascii_digit())) {
            problems.push(format!(
                "{path}: package {package} must end in a version (.v1)"
            ));
        }
        let file_name = path
            .rsplit('/')
            .next()
            .unwrap_or(path)
            .trim_end_matches(".proto");
        if !is_lower_snake(file_name) {
            problems.push(format!("{path}: file names are lower_snake_case"));
        }
        for m in &file.message_type {
            check_message(m, "", &mut problems);
        }
        for e in &file.enum_type {
            check_enum(e, "", &mut problems);
        }
        let mut used: HashMap<String, String> = HashMap::new();
        for s in &file.service {
            if !is_pascal(s.name()) || !s.name().ends_with("Service") {
                problems.push(format!(
                    "{}: service names are PascalCase ending in Service",
                    s.name()
                ));
            }
            for rpc in &s.method {
                let name = rpc.name();
                if !is_pascal(name) {
                    problems.push(format!("{}.{name}: rpc names are PascalCase", s.name()));
                }
                let input = rpc.input_type().rsplit('.').next().unwrap_or_default();
                let output = rpc.output_type().rsplit('.').next().unwrap_or_default();
                if input != format!("{name}Request") || output != format!("{name}Response") {
                    problems.push(format!(
                        "{}.{name}: takes {name}Request and returns {name}Response",
                        s.name()
                    ));
                }
                for t in [rpc.input_type(), rpc.output_type()] {
                    if let Some(other) = used.insert(t.to_owned(), name.to_owned()) {
                        problems.push(format!("{t}: used by both {other} and {name}"));
                    }
                }
            }
        }
    }
    assert!(checked >= 2, "the Tend protos are in the descriptor set");
    assert!(
        problems.is_empty(),
        "buf DEFAULT rules broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_lint_catches_what_it_should() {
    // The helpers behind the rules, on names that break them.
    assert!(!is_pascal("occurrenceStatus") && is_pascal("OccurrenceStatus"));
    assert!(!is_lower_snake("sessionAt") && is_lower_snake("session_local_time"));
    assert_eq!(upper_snake("OccurrenceStatus"), "OCCURRENCE_STATUS");
    let mut problems = Vec::new();
    let bad = prost_types::EnumDescriptorProto {
        name: Some("Cadence".into()),
        value: vec![prost_types::EnumValueDescriptorProto {
            name: Some("DAILY".into()),
            number: Some(0),
            ..Default::default()
        }],
        ..Default::default()
    };
    check_enum(&bad, "", &mut problems);
    assert_eq!(problems.len(), 2, "{problems:?}");
}
