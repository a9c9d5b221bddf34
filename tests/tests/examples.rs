//! Every example the docs give, run as a partner would: the real `tend`
//! binary, the example script from `docs/` with the Python packages it
//! names, and its output checked for what the docs say it shows.

use std::path::{Path, PathBuf};
use std::process::Command;

use tend_testkit::fresh_database;
use tend_tests::{TEST_MASTER_KEYS, TendProcess, tend_binary};

const TOKENS: [(&str, &str); 8] = [
    ("hooks", "tend_test_token_webhooks_example"),
    ("agenda", "tend_test_token_agenda_example"),
    ("first", "tend_test_token_first_call"),
    ("enroll", "tend_test_token_enroll_example"),
    ("practice", "tend_test_token_practice_example"),
    ("assess", "tend_test_token_assessment_example"),
    ("privacy", "tend_test_token_privacy_example"),
    ("demo", "tend_test_token_arc_example"),
];

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

fn token(tenant: &str) -> &'static str {
    TOKENS.iter().find(|(t, _)| *t == tenant).unwrap().1
}

/// Runs `docs/<script>` against `server` and returns what it printed; a
/// failing script fails the test with its output.
fn run(server: &TendProcess, script: &str, tenant: &str, extra: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(docs().join(script))
        .arg(&server.addr)
        .arg(token(tenant))
        .args(extra)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn every_docs_example_runs_against_the_real_server() {
    let db = fresh_database().await;
    // `arc-example.py` reads a tenant that `tend demo` filled.
    let demo = Command::new(tend_binary())
        .args(["demo", "--tenant", "demo", "--participants", "12"])
        .env("TEND_DATABASE_URL", &db.url)
        .env("TEND_MASTER_KEYS", TEST_MASTER_KEYS)
        .env("TEND_LOG", "warn")
        .output()
        .expect("run tend demo");
    assert!(
        demo.status.success(),
        "tend demo: {}",
        String::from_utf8_lossy(&demo.stderr)
    );
    let tokens = TOKENS
        .iter()
        .map(|(tenant, token)| format!("{tenant}={}", tend_auth::TokenHash::of(token)))
        .collect::<Vec<_>>()
        .join(",");
    // Test key, in the test code only.
    let recipients = "privacy/analysts/k1:loMS65xAtKnxZMLG8jC4KL9ECPhDS6Z8PKznanE7Y8s=,\
                      demo/analysts/k1:W3NOPTYm1nVtoNgWYFKJEHFVKP+Vrq7nZVbhfnlSrO8=";
    let server = TendProcess::start(&[
        ("TEND_DATABASE_URL", db.url.as_str()),
        ("TEND_AUTH_TOKENS", tokens.as_str()),
        ("TEND_RECIPIENT_KEYS", recipients),
        // The webhooks example runs its receiver on this machine.
        ("TEND_WEBHOOK_ALLOW_HTTP_HOSTS", "127.0.0.1"),
        ("TEND_WEBHOOK_ALLOW_NETWORKS", "127.0.0.0/8"),
    ]);

    let out = run(&server, "first-call.py", "first", &[]);
    assert!(out.contains("health: SERVING"), "{out}");
    assert!(out.contains("tend.events.v1.EventStreamService"), "{out}");

    let out = run(&server, "enroll-example.py", "enroll", &[]);
    assert!(out.contains("integration-arc-8w v"), "{out}");
    assert!(out.contains("occurrences per arc week:"), "{out}");

    // Any hour of any day: the week it logs is always in the past.
    let out = run(&server, "practice-example.py", "practice", &[]);
    assert!(out.contains("sync 2: sent 14 entries"), "{out}");
    assert!(out.contains("kept: 14 entries"), "{out}");
    assert!(out.contains("after: NOT_FOUND"), "{out}");

    let out = run(&server, "agenda-example.py", "agenda", &[]);
    assert!(out.contains("Europe/Berlin) for example-"), "{out}");
    assert!(out.contains("next three days: "), "{out}");
    assert!(out.contains("integration-arc-8w, session"), "{out}");

    let out = run(&server, "webhooks-example.py", "hooks", &[]);
    assert!(out.contains("delivered and verified: webhook-id"), "{out}");
    assert!(
        out.contains("PracticeLogged on practice-..., 3 minutes"),
        "{out}"
    );
    assert!(out.contains("status: active"), "{out}");

    let out = run(&server, "assessment-example.py", "assess", &[]);
    assert!(out.contains("reliable change: RC"), "{out}");

    let out = run(&server, "privacy-example.py", "privacy", &[]);
    assert!(
        out.contains("enroll without consent: FAILED_PRECONDITION"),
        "{out}"
    );
    assert!(out.contains("pseudonymous stream for analysts"), "{out}");
    assert!(out.contains("up again: NOT_FOUND"), "{out}");

    let out = run(&server, "export-example.py", "demo", &["analysts"]);
    assert!(out.contains("each matching its SHA-256"), "{out}");
    assert!(out.contains("sharing for research"), "{out}");
    assert!(out.contains("adherence by arc week"), "{out}");

    let out = run(&server, "arc-example.py", "demo", &[]);
    assert!(out.contains("cohort on integration-arc-8w: "), "{out}");
    assert!(out.contains("arc projection: position"), "{out}");
}
