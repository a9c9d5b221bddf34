//! `docs/fhir.md` says what the code does: every resource type has its
//! section, every code system of Tend's is listed with all its codes, every
//! extension and LOINC code is named.

use tend_fhir::Kind;
use tend_fhir::codes;

fn doc() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/fhir.md");
    std::fs::read_to_string(path).expect("docs/fhir.md")
}

#[test]
fn every_resource_type_has_its_section() {
    let doc = doc();
    for kind in Kind::ALL {
        let heading = format!("### {}", kind.name());
        assert!(
            doc.lines()
                .any(|l| l == heading || l.starts_with(&format!("{heading} ("))),
            "docs/fhir.md has no section {heading}"
        );
    }
}

#[test]
fn every_code_system_is_listed_with_its_codes() {
    let doc = doc();
    for system in codes::SYSTEMS {
        let url = system.url();
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{url}` |")))
            .unwrap_or_else(|| panic!("docs/fhir.md does not list {url}"));
        if system.codes.is_empty() {
            assert!(row.contains("open"), "{url} is open: {row}");
        }
        for code in system.codes {
            assert!(
                row.contains(&format!("`{code}`")),
                "{url}: `{code}` missing in {row}"
            );
        }
        // Nothing listed that the code does not have.
        let listed = row.split('|').nth(2).unwrap_or_default();
        if !system.codes.is_empty() {
            let n = listed.matches('`').count() / 2;
            assert_eq!(n, system.codes.len(), "{url}: {row}");
        }
    }
}

#[test]
fn extensions_loinc_and_the_base_are_named() {
    let doc = doc();
    for url in [
        codes::extension::subscale(),
        codes::extension::reversed(),
        codes::extension::scoring_method(),
        codes::extension::target_minutes(),
        codes::extension::window_minutes(),
        codes::participant_ref_system(),
    ] {
        assert!(doc.contains(&format!("`{url}`")), "{url}");
    }
    assert!(doc.contains(&format!("`{}`", codes::LOINC_PATIENT_CONSENT)));
    assert!(doc.contains(&format!("`{}`", codes::BASE)));
}
