//! FHIR R4 end to end: `tend demo` fills a clinic, the real server serves
//! FHIR over HTTP beside gRPC, and a Bulk Data client written to the IG
//! (kick-off, poll honouring Retry-After, manifest, downloads) pulls it.
//! Every resource is validated by Medplum's validator from npm with our own
//! checks of bindings and codes (`tests/node/fhir-validate.mjs`); every
//! reference is followed, in the export and by single reads; `_since` is
//! compared with the difference of two full exports; tenants are kept
//! apart; a restart does not lose an export.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tend_api::assessment::v1 as apb;
use tend_api::assessment::v1::assessment_service_client::AssessmentServiceClient;
use tend_api::practice::v1::practice_log_service_client::PracticeLogServiceClient;
use tend_api::privacy::v1 as ppb;
use tend_api::privacy::v1::privacy_service_client::PrivacyServiceClient;
use tend_testkit::fresh_database;
use tend_tests::{TendProcess, channel, tend_binary};

const TOKEN: &str = "tend_test_token_for_fhir";
const OTHER_TOKEN: &str = "tend_test_token_for_fhir_other";
const PARTICIPANTS: usize = 30;

fn tokens() -> String {
    format!(
        "clinic={},other={}",
        tend_auth::TokenHash::of(TOKEN),
        tend_auth::TokenHash::of(OTHER_TOKEN)
    )
}

fn demo(url: &str) {
    let out = Command::new(tend_binary())
        .args(["demo", "--tenant", "clinic", "--participants"])
        .arg(PARTICIPANTS.to_string())
        .env("TEND_DATABASE_URL", url)
        .env("TEND_MASTER_KEYS", tend_tests::TEST_MASTER_KEYS)
        .env("TEND_LOG", "warn")
        .output()
        .expect("run tend demo");
    assert!(
        out.status.success(),
        "tend demo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn serve(url: &str) -> TendProcess {
    TendProcess::start(&[
        ("TEND_DATABASE_URL", url),
        ("TEND_AUTH_TOKENS", &tokens()),
        ("TEND_FHIR_LISTEN", "127.0.0.1:0"),
    ])
}

/// The FHIR base URL from the banner.
fn fhir_base(server: &TendProcess) -> String {
    server
        .banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("FHIR R4: "))
        .and_then(|l| l.split(' ').next())
        .expect("the banner names the FHIR endpoint")
        .to_owned()
}

/// A Bulk Data client, as the IG describes one.
struct Bulk {
    base: String,
    token: String,
    http: reqwest::Client,
    /// Whether a poll was ever answered "in progress".
    saw_progress: bool,
}

/// An export as downloaded.
#[derive(Debug, Default)]
struct Downloaded {
    manifest: Value,
    /// By (type, id).
    resources: BTreeMap<(String, String), Value>,
    /// What the manifest says must be deleted: "Type/id".
    deleted: BTreeSet<String>,
    /// NDJSON files as written.
    files: Vec<(String, String)>,
}

impl Downloaded {
    fn position(&self) -> u64 {
        self.manifest["extension"]["https://tend.dev/fhir/log-position"]
            .as_u64()
            .unwrap()
    }

    fn of_type(&self, t: &str) -> Vec<&Value> {
        self.resources
            .iter()
            .filter(|((ty, _), _)| ty == t)
            .map(|(_, v)| v)
            .collect()
    }
}

impl Bulk {
    fn new(base: &str, token: &str) -> Self {
        Self {
            base: base.to_owned(),
            token: token.to_owned(),
            http: client(),
            saw_progress: false,
        }
    }

    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.http
            .get(url)
            .header("authorization", format!("Bearer {}", self.token))
    }

    /// Kicks off an export (`path` after the base, with its query); the
    /// status URL.
    async fn kick_off(&self, path: &str) -> String {
        let r = self
            .get(&format!("{}/{path}", self.base))
            .header("accept", "application/fhir+json")
            .header("prefer", "respond-async")
            .send()
            .await
            .unwrap();
        let status = r.status();
        let location = r
            .headers()
            .get("content-location")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            status,
            202,
            "kick-off {path}: {}",
            r.text().await.unwrap_or_default()
        );
        location.expect("Content-Location")
    }

    /// Polls until the export is complete, as the IG asks: waiting as
    /// long as Retry-After says.
    async fn wait(&mut self, status_url: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = self.get(status_url).send().await.unwrap();
            match r.status().as_u16() {
                202 => {
                    self.saw_progress = true;
                    let progress = r.headers().get("x-progress").expect("X-Progress");
                    assert!(!progress.is_empty());
                    let retry: u64 = r
                        .headers()
                        .get("retry-after")
                        .expect("Retry-After")
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!(Instant::now() < deadline, "the export did not finish");
                    tokio::time::sleep(Duration::from_secs(retry)).await;
                }
                200 => {
                    assert_eq!(r.headers()["content-type"], "application/json");
                    assert!(r.headers().contains_key("expires"));
                    return json_of(r).await;
                }
                other => panic!("status {other}: {}", r.text().await.unwrap()),
            }
        }
    }

    async fn download(&self, manifest: Value) -> Downloaded {
        assert_eq!(manifest["requiresAccessToken"], true);
        let mut out = Downloaded::default();
        for part in ["output", "deleted"] {
            for file in manifest[part].as_array().unwrap() {
                let url = file["url"].as_str().unwrap();
                // Without the token: refused.
                let bare = self.http.get(url).send().await.unwrap();
                assert_eq!(bare.status(), 401);
                let r = self
                    .get(url)
                    .header("accept", "application/fhir+ndjson")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                assert_eq!(r.headers()["content-type"], "application/fhir+ndjson");
                let text = r.text().await.unwrap();
                let lines: Vec<Value> = text
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
                assert_eq!(lines.len() as u64, file["count"].as_u64().unwrap(), "{url}");
                for resource in lines {
                    assert_eq!(resource["resourceType"], file["type"]);
                    if part == "output" {
                        let key = (
                            resource["resourceType"].as_str().unwrap().to_owned(),
                            resource["id"].as_str().unwrap().to_owned(),
                        );
                        assert!(
                            out.resources.insert(key.clone(), resource).is_none(),
                            "{key:?} twice"
                        );
                    } else {
                        for e in resource["entry"].as_array().unwrap() {
                            assert_eq!(e["request"]["method"], "DELETE");
                            out.deleted
                                .insert(e["request"]["url"].as_str().unwrap().to_owned());
                        }
                    }
                }
                out.files.push((part.to_owned(), text));
            }
        }
        out.manifest = manifest;
        out
    }

    async fn export(&mut self, path: &str) -> Downloaded {
        let status = self.kick_off(path).await;
        let manifest = self.wait(&status).await;
        self.download(manifest).await
    }

    /// An OperationOutcome answer: its status and text.
    async fn problem(&self, r: reqwest::Response) -> (u16, String) {
        let status = r.status().as_u16();
        assert_eq!(r.headers()["content-type"], "application/fhir+json");
        let body = json_of(r).await;
        assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
        (
            status,
            body["issue"][0]["diagnostics"].as_str().unwrap().to_owned(),
        )
    }
}

/// An HTTP client (rustls with ring, as the server builds it).
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn json_of(r: reqwest::Response) -> Value {
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

/// Tend's code systems, LOINC and UCUM codes, for the validator.
fn codes_file(dir: &Path) -> std::path::PathBuf {
    let tend: serde_json::Map<String, Value> = tend_fhir::codes::SYSTEMS
        .iter()
        .map(|s| (s.url(), json!(s.codes)))
        .collect();
    let path = dir.join("codes.json");
    std::fs::write(
        &path,
        json!({
            "tend": tend,
            "loinc": [tend_fhir::codes::LOINC_PATIENT_CONSENT],
            "ucum": ["min", "d", "wk", "%", "1", "{score}"],
        })
        .to_string(),
    )
    .unwrap();
    path
}

/// Runs the validator on files; its summary and whether it passed.
fn validate(files: &[std::path::PathBuf], codes: &Path) -> (bool, Value, String) {
    let node = Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
    assert!(
        node.join("node_modules/@medplum/core").exists(),
        "run `npm ci` in {} first (.ci/run does)",
        node.display()
    );
    let out = Command::new("node")
        .arg(node.join("fhir-validate.mjs"))
        .arg(codes)
        .args(files)
        .env("ALL_ERRORS", "1")
        .output()
        .expect("run node");
    let summary = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        summary,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every `reference` in a resource, wherever it is.
fn references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "reference" {
                    out.push(v.as_str().unwrap().to_owned());
                } else {
                    references(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}

/// Every canonical a resource names (`url|version`, or `url` for any
/// version).
fn canonicals(r: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["instantiatesCanonical", "questionnaire"] {
        match &r[key] {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => out.extend(a.iter().map(|s| s.as_str().unwrap().to_owned())),
            _ => {}
        }
    }
    for action in r["action"].as_array().into_iter().flatten() {
        if let Some(c) = action["definitionCanonical"].as_str() {
            out.push(c.to_owned());
        }
    }
    for a in r["relatedArtifact"].as_array().into_iter().flatten() {
        out.push(a["resource"].as_str().unwrap().to_owned());
    }
    out
}

#[tokio::test]
async fn a_clinic_pulls_its_cohort_as_fhir_r4_that_validates_and_follows_every_reference() {
    let db = fresh_database().await;
    demo(&db.url);
    let server = serve(&db.url);
    let base = fhir_base(&server);
    let mut bulk = Bulk::new(&base, TOKEN);

    // The capability statement needs no token.
    let meta = json_of(
        client()
            .get(format!("{base}/metadata"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(meta["resourceType"], "CapabilityStatement");
    assert_eq!(meta["fhirVersion"], "4.0.1");

    let export = bulk
        .export("$export?_outputFormat=application%2Ffhir%2Bndjson")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (i, (part, text)) in export.files.iter().enumerate() {
        let p = dir.path().join(format!("{part}-{i}.ndjson"));
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let codes = codes_file(dir.path());
    let (ok, summary, errors) = validate(&paths, &codes);
    assert!(ok, "{summary}\n{errors}");
    let types: BTreeSet<&str> = export.resources.keys().map(|(t, _)| t.as_str()).collect();
    for t in [
        "Patient",
        "Consent",
        "ResearchSubject",
        "ResearchStudy",
        "CarePlan",
        "Procedure",
        "Task",
        "Observation",
        "QuestionnaireResponse",
        "PlanDefinition",
        "ActivityDefinition",
        "Questionnaire",
    ] {
        assert!(types.contains(t), "no {t} in {types:?}");
    }
    assert_eq!(
        summary["resources"].as_u64().unwrap(),
        export.resources.len() as u64
    );

    // The validator's own checks can fail: a Task that is "missed" (R4 has
    // no such status), a Tend code that is not in its system, an unknown
    // element.
    let task = export.of_type("Task")[0].clone();
    let mut missed = task.clone();
    missed["status"] = json!("missed");
    let mut wrong_code = task.clone();
    wrong_code["businessStatus"]["coding"][0]["code"] = json!("forgotten");
    let mut unknown = task.clone();
    unknown["mood"] = json!("calm");
    for (name, bad, expect) in [
        ("missed", missed, "task-status"),
        ("code", wrong_code, "task-business-status"),
        ("unknown", unknown, "mood"),
    ] {
        let p = dir.path().join(format!("bad-{name}.json"));
        std::fs::write(&p, bad.to_string()).unwrap();
        let (ok, _, errors) = validate(&[p], &codes);
        assert!(!ok && errors.contains(expect), "{name}: {errors}");
    }

    // Every reference resolves within the export, every canonical names a
    // definition in it, and the Patient's identifier is the partner's
    // reference (the one documented external id).
    let present: BTreeSet<String> = export
        .resources
        .keys()
        .map(|(t, id)| format!("{t}/{id}"))
        .collect();
    let mut versions: BTreeSet<String> = BTreeSet::new();
    for r in export.resources.values() {
        if let (Some(url), Some(v)) = (r["url"].as_str(), r["version"].as_str()) {
            versions.insert(format!("{url}|{v}"));
            versions.insert(url.to_owned());
        }
    }
    let mut followed = 0;
    for r in export.resources.values() {
        let mut refs = Vec::new();
        references(r, &mut refs);
        for reference in refs {
            assert!(present.contains(&reference), "{reference} from {r}");
            followed += 1;
        }
        for c in canonicals(r) {
            assert!(versions.contains(&c), "canonical {c} from {r}");
        }
    }
    assert!(followed > 1000, "{followed} references");
    let refs: BTreeSet<String> = export
        .of_type("Patient")
        .iter()
        .map(|p| {
            assert_eq!(
                p["identifier"][0]["system"],
                "https://tend.dev/fhir/sid/participant-ref"
            );
            p["identifier"][0]["value"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(refs.iter().all(|r| r.starts_with("demo-")));
    // Only those who share with their clinicians: the demo draws eight in
    // ten.
    assert!(
        refs.len() < PARTICIPANTS && refs.len() >= PARTICIPANTS / 2,
        "{}",
        refs.len()
    );

    // The scores are the assessment service's, to the last digit.
    let mut assessments = AssessmentServiceClient::new(channel(&server).await);
    let mut compared = 0;
    for participant in &refs {
        let list = assessments
            .list_assessments(tend_tests::bearer(
                TOKEN,
                apb::ListAssessmentsRequest {
                    participant_ref: participant.clone(),
                    instrument_id: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .assessments;
        for a in list {
            let total = a.scorings.last().unwrap().total.as_ref().unwrap().value;
            let score = export
                .of_type("Observation")
                .into_iter()
                .find(|o| {
                    o["id"].as_str().unwrap().ends_with(".score")
                        && o["derivedFrom"][0]["reference"]
                            .as_str()
                            .unwrap()
                            .ends_with(&tend_fhir::ids::short(a.assessment_id.parse().unwrap()))
                })
                .expect("a score Observation per assessment");
            assert_eq!(score["valueQuantity"]["value"].as_f64().unwrap(), total);
            compared += 1;
        }
    }
    assert!(compared > 10, "{compared}");
    // Never a note: practice Observations have no note or text.
    for o in export.of_type("Observation") {
        assert!(o.get("note").is_none() && o.get("text").is_none());
    }

    // Single reads answer what the export holds, for every type.
    let mut read_types = BTreeSet::new();
    for ((t, id), r) in &export.resources {
        if !read_types.insert(t.clone()) {
            continue;
        }
        let got = json_of(bulk.get(&format!("{base}/{t}/{id}")).send().await.unwrap()).await;
        assert_eq!(&got, r, "{t}/{id}");
    }
    assert_eq!(read_types.len(), types.len());

    // The other tenant: none of the clinic's resources, no view of its
    // exports, and an export of its own that is empty.
    let mut other = Bulk::new(&base, OTHER_TOKEN);
    for t in ["Patient", "CarePlan", "Task", "Observation", "Consent"] {
        let id = export.of_type(t)[0]["id"].as_str().unwrap().to_owned();
        let r = other.get(&format!("{base}/{t}/{id}")).send().await.unwrap();
        assert_eq!(other.problem(r).await.0, 404, "{t}/{id}");
    }
    let status_url = bulk.kick_off("Patient/$export").await;
    let r = other.get(&status_url).send().await.unwrap();
    assert_eq!(other.problem(r).await.0, 404);
    let r = other
        .http
        .delete(&status_url)
        .bearer_auth(OTHER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(other.problem(r).await.0, 404);
    let patient_level = bulk.wait(&status_url).await;
    let patient_level = bulk.download(patient_level).await;
    let file = export.manifest["output"][0]["url"].as_str().unwrap();
    let r = other.get(file).send().await.unwrap();
    assert_eq!(other.problem(r).await.0, 404);
    let theirs = other.export("$export").await;
    assert!(theirs.resources.is_empty());

    // Patient level: the participants' resources only; Group level: those
    // on one protocol.
    assert!(patient_level.resources.keys().all(|(t, _)| {
        ![
            "PlanDefinition",
            "ActivityDefinition",
            "Questionnaire",
            "ResearchStudy",
        ]
        .contains(&t.as_str())
    }));
    // Taken later (the running server's scheduler and arc may have written
    // since), it holds every participant resource the system export held.
    for (t, id) in export.resources.keys().filter(|(t, _)| {
        ![
            "PlanDefinition",
            "ActivityDefinition",
            "Questionnaire",
            "ResearchStudy",
        ]
        .contains(&t.as_str())
    }) {
        assert!(
            patient_level
                .resources
                .contains_key(&(t.clone(), id.clone())),
            "{t}/{id}"
        );
    }
    let group = bulk
        .export("Group/integration-arc-8w/$export?_type=CarePlan,Patient")
        .await;
    let plans = group.of_type("CarePlan");
    assert!(!plans.is_empty() && plans.len() < export.of_type("CarePlan").len());
    assert!(plans.iter().all(|p| {
        p["instantiatesCanonical"][0]
            .as_str()
            .unwrap()
            .contains("/PlanDefinition/integration-arc-8w|")
    }));
    assert_eq!(group.of_type("Patient").len(), plans.len());
    assert!(
        group
            .resources
            .keys()
            .all(|(t, _)| t == "CarePlan" || t == "Patient")
    );

    // Deleting an export: its status and files are gone.
    let r = bulk
        .http
        .delete(&status_url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = bulk.get(&status_url).send().await.unwrap();
    assert_eq!(bulk.problem(r).await.0, 404);
    let file = patient_level.manifest["output"][0]["url"].as_str().unwrap();
    let r = bulk.get(file).send().await.unwrap();
    assert_eq!(bulk.problem(r).await.0, 404);

    // Bad input: the OperationOutcome with the right status.
    let kick = |path: &str| {
        bulk.get(&format!("{base}/{path}"))
            .header("prefer", "respond-async")
            .header("accept", "application/fhir+json")
    };
    for (path, status, says) in [
        ("$export?_type=Encounter", 400, "_type `Encounter`"),
        ("$export?_type=Patient,Bogus", 400, "_type `Bogus`"),
        (
            "Patient/$export?_type=PlanDefinition",
            400,
            "Patient compartment",
        ),
        ("$export?_since=yesterday", 400, "_since `yesterday`"),
        (
            "$export?_since=2026-03-01T09:30:00",
            400,
            "is not a FHIR instant",
        ),
        ("$export?_outputFormat=text%2Fcsv", 400, "_outputFormat"),
        (
            "$export?_typeFilter=Task%3Fstatus%3Dready",
            400,
            "`_typeFilter`",
        ),
        ("$export?_type=Task&_type=Flag", 400, "more than once"),
        (
            "Group/no-such-protocol/$export",
            404,
            "Group/no-such-protocol",
        ),
        ("Observation", 400, "search is not supported"),
        ("Observation/nope", 404, "not known"),
        ("Encounter/abc", 400, "type `Encounter`"),
    ] {
        let r = kick(path).send().await.unwrap();
        let (got, text) = bulk.problem(r).await;
        assert_eq!(got, status, "{path}: {text}");
        assert!(text.contains(says), "{path}: {text}");
    }
    let r = bulk.get(&format!("{base}/$export")).send().await.unwrap();
    let (status, text) = bulk.problem(r).await;
    assert!(
        status == 400 && text.contains("Prefer: respond-async"),
        "{text}"
    );
    for id in ["not-a-uuid", &uuid::Uuid::new_v4().to_string()] {
        let r = bulk
            .get(&format!("{base}/$export-status/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(bulk.problem(r).await.0, 404);
    }
    let r = bulk
        .http
        .post(format!("{base}/Observation"))
        .bearer_auth(TOKEN)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(bulk.problem(r).await.0, 405);
    let r = client()
        .get(format!("{base}/$export"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(bulk.problem(r).await.0, 401);
    assert!(
        bulk.saw_progress,
        "no poll was ever answered 202 with X-Progress"
    );
}

#[tokio::test]
async fn an_export_since_a_transaction_time_holds_exactly_what_changed() {
    let db = fresh_database().await;
    demo(&db.url);
    let server = serve(&db.url);
    let base = fhir_base(&server);
    let mut bulk = Bulk::new(&base, TOKEN);
    let first = bulk.export("$export").await;
    let since = first.manifest["transactionTime"]
        .as_str()
        .unwrap()
        .to_owned();
    let patients: Vec<String> = first
        .of_type("Patient")
        .iter()
        .map(|p| p["identifier"][0]["value"].as_str().unwrap().to_owned())
        .collect();

    // One participant practises; another stops sharing with clinicians.
    let grpc = channel(&server).await;
    let mut practice = PracticeLogServiceClient::new(grpc.clone());
    practice
        .log_practice(tend_tests::bearer(
            TOKEN,
            tend_tests::practice_request(&patients[0]),
        ))
        .await
        .unwrap();
    // A questionnaire nobody answered before: its definition is new to the
    // reader too.
    AssessmentServiceClient::new(grpc.clone())
        .submit_responses(tend_tests::bearer(
            TOKEN,
            apb::SubmitResponsesRequest {
                participant_ref: patients[0].clone(),
                request_id: uuid::Uuid::new_v4().to_string(),
                instrument_id: "gad-7".into(),
                instrument_version: 0,
                answers: (1..=7)
                    .map(|item| apb::Answer { item, answer: 1 })
                    .collect(),
                administered_at: Some(prost_types::Timestamp {
                    seconds: jiff::Timestamp::now().as_second() - 60,
                    nanos: 0,
                }),
                occurrence_id: String::new(),
            },
        ))
        .await
        .unwrap();
    let mut privacy = PrivacyServiceClient::new(grpc);
    privacy
        .erase_participant(tend_tests::bearer(
            TOKEN,
            ppb::EraseParticipantRequest {
                participant_ref: patients[2].clone(),
                request_id: uuid::Uuid::new_v4().to_string(),
                reason: ppb::ErasureReason::ParticipantRequest as i32,
            },
        ))
        .await
        .unwrap();
    privacy
        .withdraw_consent(tend_tests::bearer(
            TOKEN,
            ppb::WithdrawConsentRequest {
                participant_ref: patients[1].clone(),
                request_id: uuid::Uuid::new_v4().to_string(),
                purposes: vec![ppb::ConsentPurpose::ClinicianSharing as i32],
            },
        ))
        .await
        .unwrap();

    // The export since the first one's transaction time, and a full one at
    // the same position (the running server's scheduler may write between
    // two kick-offs: then both are taken again).
    let (full, changed) = loop {
        let full = bulk.export("$export").await;
        let changed = bulk
            .export(&format!("$export?_since={}", since.replace('+', "%2B")))
            .await;
        if full.position() == changed.position() {
            break (full, changed);
        }
    };
    assert!(changed.position() > first.position());
    let expected: BTreeMap<&(String, String), &Value> = full
        .resources
        .iter()
        .filter(|(k, v)| first.resources.get(*k) != Some(*v))
        .collect();
    let got: BTreeMap<&(String, String), &Value> = changed.resources.iter().collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    assert_eq!(got, expected);
    assert!(
        got.keys().any(|(t, _)| t == "Observation"),
        "the new practice is there"
    );
    assert!(
        got.keys()
            .any(|(t, id)| t == "Questionnaire" && id == "gad-7.1"),
        "the newly named questionnaire is there"
    );
    let gone: BTreeSet<String> = first
        .resources
        .keys()
        .filter(|k| !full.resources.contains_key(*k))
        .map(|(t, id)| format!("{t}/{id}"))
        .collect();
    // Both the one who stopped sharing and the one erased.
    assert_eq!(gone.iter().filter(|g| g.starts_with("Patient/")).count(), 2);
    assert_eq!(changed.deleted, gone);

    // An instant that is not a transaction time: everything recorded after
    // it, maybe a little more, never less.
    let instant: jiff::Timestamp = since.parse().unwrap();
    let later = instant + jiff::SignedDuration::from_millis(1);
    let around = bulk
        .export(&format!(
            "$export?_type=Observation&_since={}",
            later.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        ))
        .await;
    let new_practice: Vec<&(String, String)> = got
        .keys()
        .copied()
        .filter(|(t, id)| {
            t == "Observation" && !first.resources.contains_key(&(t.clone(), id.clone()))
        })
        .collect();
    assert!(!new_practice.is_empty());
    for k in new_practice {
        assert!(around.resources.contains_key(k), "{k:?}");
    }
    for k in around.resources.keys() {
        assert!(
            full.resources.contains_key(k) || around.position() > full.position(),
            "{k:?}"
        );
    }
}

#[tokio::test]
async fn an_export_survives_its_server_being_killed_and_one_that_cannot_finish_is_reported_failed()
{
    let db = fresh_database().await;
    demo(&db.url);
    let server = serve(&db.url);
    let base = fhir_base(&server);
    let bulk = Bulk::new(&base, TOKEN);
    let status_url = bulk.kick_off("$export?_type=Task,Observation").await;
    let path = status_url.split("/fhir/").nth(1).unwrap().to_owned();
    server.signal("KILL");
    drop(server);

    // Another server on the database takes it over (the first one's lock
    // went with its connection) and answers for it.
    let server = TendProcess::start(&[
        ("TEND_DATABASE_URL", &db.url),
        ("TEND_AUTH_TOKENS", &tokens()),
        ("TEND_FHIR_LISTEN", "127.0.0.1:0"),
        ("OTEL_METRICS_EXPORTER", "prometheus"),
        ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
        ("OTEL_EXPORTER_PROMETHEUS_PORT", "0"),
    ]);
    let base = fhir_base(&server);
    let mut bulk = Bulk::new(&base, TOKEN);
    let manifest = bulk.wait(&format!("{base}/{path}")).await;
    let export = bulk.download(manifest).await;
    assert!(export.of_type("Task").len() > 100);
    assert!(export.of_type("Observation").len() > 100);

    // A job its servers kept dying under: after three starts it is failed,
    // with a reason, not retried for ever.
    let status_url = bulk.kick_off("$export?_type=Patient").await;
    let id: uuid::Uuid = status_url.rsplit('/').next().unwrap().parse().unwrap();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    // Wait for it to finish, then make it look like a third attempt died.
    let _ = bulk.wait(&status_url).await;
    sqlx::query("UPDATE fhir_exports SET status = 'running', attempts = 3 WHERE export_id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = bulk.get(&status_url).send().await.unwrap();
        if r.status() == 202 {
            assert!(Instant::now() < deadline, "never failed");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let (status, text) = bulk.problem(r).await;
        assert_eq!(status, 500);
        assert!(text.contains("started 3 times"), "{text}");
        break;
    }

    // Operators see both on the metrics: finished and failed exports, and
    // requests by route (never by id).
    let metrics = tend_tests::scrape(&tend_tests::metrics_addr(&server));
    let value = |series: &str, label: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(series) && l.contains(label))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} with {label} in:\n{metrics}"))
    };
    assert!(value("tend_fhir_exports_total", "tend_outcome=\"ok\"") >= 1.0);
    assert_eq!(
        value("tend_fhir_exports_total", "tend_outcome=\"error\""),
        1.0
    );
    assert!(value("tend_fhir_export_resources_total", "") > 200.0);
    assert!(value("tend_fhir_export_duration_seconds_count", "") >= 2.0);
    assert!(
        value(
            "tend_fhir_request_duration_seconds_count",
            "http_route=\"export-status\""
        ) >= 2.0
    );
    assert!(
        !metrics.contains(&id.to_string()),
        "an export id in the metrics"
    );
}

/// An HTTPS client trusting the test CA, with a client certificate for
/// `name` if one is given.
fn tls_client(pki: &tend_tests::pki::Pki, name: Option<&str>) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match name {
        None => builder.with_no_client_auth(),
        Some(name) => {
            let (cert, key, _) = pki.leaf(&[name], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
            builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap()
        }
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .build()
        .unwrap()
}

#[tokio::test]
async fn fhir_speaks_the_grpc_ports_tls_and_binds_tenants_to_their_client_certificates() {
    let db = fresh_database().await;
    let pki = tend_tests::pki::Pki::new();
    pki.write_server();
    let (cert, key, ca) = (pki.path("tls.crt"), pki.path("tls.key"), pki.path("ca.crt"));
    let server = TendProcess::start(&[
        ("TEND_DATABASE_URL", &db.url),
        ("TEND_AUTH_TOKENS", &tokens()),
        ("TEND_FHIR_LISTEN", "127.0.0.1:0"),
        ("TEND_TLS_CERT", cert.to_str().unwrap()),
        ("TEND_TLS_KEY", key.to_str().unwrap()),
        ("TEND_TLS_CLIENT_CA", ca.to_str().unwrap()),
        ("TEND_TLS_CLIENT_TENANTS", "clinic=portal.clinic.example"),
    ]);
    let base = fhir_base(&server);
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let base = base.replace("127.0.0.1", "localhost");
    let kick = |client: &reqwest::Client, token: &str| {
        client
            .get(format!("{base}/$export"))
            .bearer_auth(token)
            .header("prefer", "respond-async")
            .send()
    };

    // No client certificate: no connection at all.
    let none = tls_client(&pki, None);
    assert!(none.get(format!("{base}/metadata")).send().await.is_err());

    // The clinic's certificate and token: served, over HTTP/1.1, with
    // links under https.
    let portal = tls_client(&pki, Some("portal.clinic.example"));
    let r = portal.get(format!("{base}/metadata")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    let r = kick(&portal, TOKEN).await.unwrap();
    assert_eq!(r.status(), 202);
    assert!(
        r.headers()["content-location"]
            .to_str()
            .unwrap()
            .starts_with(&format!("{base}/$export-status/"))
    );

    // The clinic's token on someone else's certificate: refused, as gRPC
    // refuses it; the other tenant is not bound.
    let stranger = tls_client(&pki, Some("stranger.example"));
    let r = kick(&stranger, TOKEN).await.unwrap();
    assert_eq!(r.status(), 401);
    let text = r.text().await.unwrap();
    assert!(text.contains("bound to its client certificates"), "{text}");
    let r = kick(&stranger, OTHER_TOKEN).await.unwrap();
    assert_eq!(r.status(), 202);
}
