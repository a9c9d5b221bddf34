//! Exports end to end: `tend demo` fills a tenant, the real server runs on
//! it, `tend export` (and ExportService over a socket) write CSV and
//! Parquet, and the files are read back with pandas, pyarrow and DuckDB
//! (`tests/analysis/read_export.py`) and compared with GetArc and
//! ListAssessments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tend_api::arc::v1 as apb;
use tend_api::arc::v1::arc_service_client::ArcServiceClient;
use tend_api::assessment::v1 as spb;
use tend_api::assessment::v1::assessment_service_client::AssessmentServiceClient;
use tend_api::exports::v1 as pb;
use tend_api::exports::v1::export_service_client::ExportServiceClient;
use tend_api::practice::v1::practice_log_service_client::PracticeLogServiceClient;
use tend_api::privacy::v1::privacy_service_client::PrivacyServiceClient;
use tend_api::scheduler::v1 as schpb;
use tend_api::scheduler::v1::protocol_scheduler_service_client::ProtocolSchedulerServiceClient;
use tend_privacy::Recipients;
use tend_testkit::fresh_database;
use tend_tests::{TendProcess, channel, tend_binary};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use uuid::Uuid;

const TOKEN: &str = "tend_test_token_for_exports";
const OTHER_TOKEN: &str = "tend_test_token_for_exports_other";
const PARTICIPANTS: usize = 30;

fn authed<T>(message: T) -> tonic::Request<T> {
    tend_tests::bearer(TOKEN, message)
}

fn tokens() -> String {
    format!(
        "clinic={},other={}",
        tend_auth::TokenHash::of(TOKEN),
        tend_auth::TokenHash::of(OTHER_TOKEN)
    )
}

fn field(status: &tonic::Status) -> String {
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

/// Two recipients of the clinic and one of the other tenant, with fresh keys.
fn recipient_keys() -> String {
    [
        ("clinic", "analysts", "k1"),
        ("clinic", "sponsor", "s1"),
        ("other", "registry", "r1"),
    ]
    .iter()
    .map(|(t, r, k)| Recipients::generate_entry(t, r, k).unwrap())
    .collect::<Vec<_>>()
    .join(",")
}

/// Runs a `tend` subcommand against the database; its output.
fn tend(url: &str, keys: &str, args: &[&str]) -> std::process::Output {
    Command::new(tend_binary())
        .args(args)
        .env("TEND_DATABASE_URL", url)
        .env("TEND_MASTER_KEYS", tend_tests::TEST_MASTER_KEYS)
        .env("TEND_RECIPIENT_KEYS", keys)
        .env("TEND_LOG", "warn")
        .env("TEND_LOG_FORMAT", "json")
        .output()
        .expect("run tend")
}

fn export(url: &str, keys: &str, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "export",
        "--tenant",
        "clinic",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = tend(url, keys, &args);
    assert!(
        o.status.success(),
        "tend {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What `read_export.py` made of an export.
fn analyse(dir: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("analysis/read_export.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(dir)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "read_export.py {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Every pseudonym in the export's text columns, by dataset and column.
fn pseudonym_columns(analysed: &serde_json::Value) -> Vec<(String, BTreeSet<String>)> {
    let book: BTreeSet<&str> = [
        "participant",
        "enrollment",
        "occurrence",
        "entry",
        "assessment",
        "flag",
    ]
    .into_iter()
    .collect();
    let mut out = Vec::new();
    for (dataset, columns) in analysed["text"].as_object().unwrap() {
        for (column, values) in columns.as_object().unwrap() {
            if book.contains(column.as_str()) {
                out.push((
                    format!("{dataset}.{column}"),
                    values
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_owned())
                        .collect(),
                ));
            }
        }
    }
    out
}

async fn projection_position(client: &mut ArcServiceClient<Channel>) -> u64 {
    tend_tests::arc_caught_up(client, TOKEN).await.position
}

/// Every demo participant's arc, read while the log stood still at the
/// position answered (the running server's scheduler writes due and missed
/// events on the hour; a read that straddles one is read again).
async fn arcs_at_rest(client: &mut ArcServiceClient<Channel>) -> (u64, Vec<apb::Arc>) {
    for _ in 0..20 {
        let before = projection_position(client).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if projection_position(client).await != before {
            continue;
        }
        let mut arcs = Vec::new();
        for i in 0..PARTICIPANTS {
            arcs.push(
                client
                    .get_arc(authed(apb::GetArcRequest {
                        participant_ref: format!("demo-{i:05}"),
                    }))
                    .await
                    .unwrap()
                    .into_inner()
                    .arc
                    .unwrap(),
            );
        }
        if projection_position(client).await == before {
            return (before, arcs);
        }
    }
    panic!("the log never stood still for 2 s");
}

#[tokio::test]
async fn an_analyst_exports_the_demo_cohort_and_reads_it_with_pandas_pyarrow_and_duckdb() {
    let db = fresh_database().await;
    let keys = recipient_keys();
    let out = tend(
        &db.url,
        &keys,
        &[
            "demo",
            "--tenant",
            "clinic",
            "--participants",
            &PARTICIPANTS.to_string(),
            "--seed",
            "11",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = TendProcess::start(&[
        ("TEND_DATABASE_URL", &db.url),
        ("TEND_AUTH_TOKENS", &tokens()),
        ("TEND_RECIPIENT_KEYS", &keys),
    ]);
    let ch = channel(&server).await;
    let mut arc = ArcServiceClient::new(ch.clone());
    let mut assessments = AssessmentServiceClient::new(ch.clone());
    let mut privacy = PrivacyServiceClient::new(ch.clone());
    let mut practice = PracticeLogServiceClient::new(ch.clone());

    // A note that must never leave: logged for the first few participants.
    let marker = format!("NOTE-MARKER-{}", Uuid::new_v4().simple());
    for i in 0..3 {
        let mut r = tend_tests::practice_request(&format!("demo-{i:05}"));
        r.practice.as_mut().unwrap().note = marker.as_bytes().to_vec();
        practice.log_practice(authed(r)).await.unwrap();
    }

    // A practice that completes a missed occurrence after its window: a
    // late completion, for someone who shares.
    let mut scheduler = ProtocolSchedulerServiceClient::new(ch.clone());
    let late = 'found: {
        for i in 0..PARTICIPANTS {
            let reference = format!("demo-{i:05}");
            if !tend_tests::shares_for_research(&mut privacy, TOKEN, &reference).await {
                continue;
            }
            let enrollments = scheduler
                .list_enrollments(authed(schpb::ListEnrollmentsRequest {
                    participant_ref: reference.clone(),
                }))
                .await
                .unwrap()
                .into_inner()
                .enrollments;
            let now = jiff::Timestamp::now();
            for e in enrollments {
                let schedule = scheduler
                    .get_schedule(authed(schpb::GetScheduleRequest {
                        enrollment_id: e.enrollment_id.clone(),
                        from: Some(prost_types::Timestamp {
                            seconds: now.as_second() - 4 * 86_400,
                            nanos: 0,
                        }),
                        to: None,
                    }))
                    .await
                    .unwrap()
                    .into_inner();
                let missed = schedule.occurrences.iter().find(|o| {
                    o.status == schpb::OccurrenceStatus::Missed as i32
                        && matches!(o.kind, Some(schpb::occurrence::Kind::Practice(_)))
                        && o.window_closes_at.as_ref().unwrap().seconds < now.as_second() - 7200
                });
                if let Some(o) = missed {
                    let Some(schpb::occurrence::Kind::Practice(p)) = &o.kind else {
                        unreachable!()
                    };
                    let started = jiff::Timestamp::from_second(
                        o.window_closes_at.as_ref().unwrap().seconds + 1800,
                    )
                    .unwrap();
                    let mut r = tend_tests::practice_request(&reference);
                    let details = r.practice.as_mut().unwrap();
                    details.kind = p.practice.clone();
                    details.started_at = started.strftime("%Y-%m-%dT%H:%M:%S").to_string();
                    details.occurrence_id = o.occurrence_id.clone();
                    practice.log_practice(authed(r)).await.unwrap();
                    break 'found (reference, o.occurrence_id.clone());
                }
            }
        }
        panic!("no one who shares has a missed practice in the last four days");
    };
    // The scheduler links it within a tick or so.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = arc
            .get_arc(authed(apb::GetArcRequest {
                participant_ref: late.0.clone(),
            }))
            .await;
        // NOT_FOUND until the projection has reached the participant: on a
        // loaded machine it may still be folding the demo cohort.
        let late_seen = match got {
            Ok(r) => r
                .into_inner()
                .arc
                .unwrap()
                .weeks
                .iter()
                .any(|w| w.adherence.as_ref().unwrap().late > 0),
            Err(s) if s.code() == Code::NotFound => false,
            Err(s) => panic!("GetArc: {s}"),
        };
        if late_seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the late completion never reached the arc"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (position, arcs) = arcs_at_rest(&mut arc).await;
    let work = tempfile::tempdir().unwrap();
    let dir = |name: &str| work.path().join(name);
    let at = position.to_string();
    let printed = export(
        &db.url,
        &keys,
        &dir("csv"),
        &["--recipient", "analysts", "--at-position", &at],
    );
    assert!(
        printed.contains(&format!("at position {position}")),
        "{printed}"
    );
    assert!(printed.contains("peak memory"), "{printed}");
    export(
        &db.url,
        &keys,
        &dir("parquet"),
        &[
            "--recipient",
            "analysts",
            "--format",
            "parquet",
            "--at-position",
            &at,
        ],
    );
    export(
        &db.url,
        &keys,
        &dir("sponsor"),
        &["--recipient", "sponsor", "--at-position", &at],
    );
    export(
        &db.url,
        &keys,
        &dir("shifted"),
        &[
            "--recipient",
            "analysts",
            "--shift-dates",
            "--at-position",
            &at,
        ],
    );

    // Read back with pandas, pyarrow and DuckDB: the checks against the
    // codebook are the script's; both formats say the same.
    let csv = analyse(&dir("csv"));
    let parquet = analyse(&dir("parquet"));
    assert_eq!(csv["adherence"], parquet["adherence"]);
    assert_eq!(csv["scores"], parquet["scores"]);
    assert_eq!(csv["text"], parquet["text"]);
    let dtypes = &parquet["datasets"]["occurrences"]["dtypes"];
    assert_eq!(dtypes["window_opens_at"], "datetime64[us, UTC]");
    assert_eq!(dtypes["status"], "category");
    assert_eq!(dtypes["day"], "int64");
    assert_eq!(csv["datasets"]["assessments"]["dtypes"]["score"], "float64");

    // Who is in it: exactly those who share for research, under the
    // analysts' pseudonyms.
    let recipients: Recipients = keys.parse().unwrap();
    let analysts = recipients
        .pseudonymizer("clinic", "analysts", None)
        .unwrap();
    let in_export: BTreeSet<String> = csv["text"]["participants"]["participant"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let adherence = csv["adherence"].as_array().unwrap();
    let scores = csv["scores"].as_array().unwrap();
    let (mut shared, mut compared_weeks, mut compared_scores) = (0, 0, 0);
    for a in &arcs {
        let id: Uuid = a.participant_id.parse().unwrap();
        let pseudonym = analysts.pseudonym(id).to_string();
        let shares = tend_tests::shares_for_research(&mut privacy, TOKEN, &a.participant_ref).await;
        assert_eq!(
            in_export.contains(&pseudonym),
            shares,
            "{}",
            a.participant_ref
        );
        if !shares {
            continue;
        }
        shared += 1;
        // Adherence by week: GetArc's, counted by DuckDB from the rows.
        for w in &a.weeks {
            let ad = w.adherence.as_ref().unwrap();
            let row = adherence
                .iter()
                .find(|r| r["participant"] == pseudonym.as_str() && r["arc_week"] == w.arc_week);
            let got = row.map_or((0, 0, 0, 0), |r| {
                (
                    r["due"].as_u64().unwrap() as u32,
                    r["done"].as_u64().unwrap() as u32,
                    r["late"].as_u64().unwrap() as u32,
                    r["missed"].as_u64().unwrap() as u32,
                )
            });
            assert_eq!(
                got,
                (ad.due, ad.done, ad.late, ad.missed),
                "{} week {}",
                a.participant_ref,
                w.arc_week
            );
            compared_weeks += 1;
        }
        // Scores: the assessment service's, exactly.
        let listed = assessments
            .list_assessments(authed(spb::ListAssessmentsRequest {
                participant_ref: a.participant_ref.clone(),
                instrument_id: String::new(),
            }))
            .await
            .unwrap()
            .into_inner()
            .assessments;
        for s in listed {
            let latest = s.scorings.last().unwrap();
            let pseudonym = analysts
                .pseudonym(s.assessment_id.parse().unwrap())
                .to_string();
            let mut expected = vec![("total".to_owned(), latest.total.clone().unwrap())];
            expected.extend(
                latest
                    .subscales
                    .iter()
                    .map(|x| (x.key.clone(), x.score.clone().unwrap())),
            );
            for (scale, score) in expected {
                let row = scores
                    .iter()
                    .find(|r| r["assessment"] == pseudonym.as_str() && r["scale"] == scale.as_str())
                    .unwrap_or_else(|| panic!("no row for {scale} of {}", s.assessment_id));
                let exact = format!(
                    "{}/{}",
                    row["numerator"].as_i64().unwrap(),
                    row["denominator"].as_i64().unwrap()
                );
                assert_eq!(exact.trim_end_matches("/1"), score.exact, "{scale}");
                assert_eq!(row["score"].as_f64().unwrap(), score.value, "{scale}");
                compared_scores += 1;
            }
        }
    }
    assert!(
        shared > 0 && shared < PARTICIPANTS,
        "{shared} of {PARTICIPANTS} share"
    );
    assert!(
        adherence.iter().any(|r| r["late"].as_u64().unwrap() > 0),
        "the late completion of {} is in the export",
        late.1
    );
    assert!(
        compared_weeks > 100 && compared_scores > 50,
        "{compared_weeks} weeks, {compared_scores} scores"
    );
    assert_eq!(
        parquet["datasets"]["participants"]["rows"]
            .as_u64()
            .unwrap() as usize,
        shared
    );

    // No reference, note or opaque id anywhere: the text of every file,
    // and every text value pyarrow reads from the Parquet files.
    let mut secrets: BTreeSet<String> = BTreeSet::from([marker.clone(), "demo-0".to_owned()]);
    let payloads: Vec<String> =
        sqlx::query_scalar("SELECT payload::text FROM events WHERE tenant_id = 'clinic'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    for p in &payloads {
        // Every UUID in a stored body: opaque ids, enrollment, entry,
        // assessment and occurrence ids.
        for (i, _) in p.match_indices('"') {
            if let Some(candidate) = p.get(i + 1..i + 37)
                && Uuid::parse_str(candidate).is_ok()
            {
                secrets.insert(candidate.to_owned());
            }
        }
    }
    let participant_ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT participant_id FROM participants WHERE tenant_id = 'clinic'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    secrets.extend(participant_ids.iter().map(Uuid::to_string));
    assert!(secrets.len() > 1000, "{} ids found", secrets.len());
    for name in ["csv", "parquet", "sponsor", "shifted"] {
        for (file, bytes) in files_of(&dir(name)) {
            let text = String::from_utf8_lossy(&bytes);
            for s in &secrets {
                assert!(!text.contains(s.as_str()), "{name}/{file} holds {s}");
            }
        }
    }
    for (_, values) in parquet["text"].as_object().unwrap() {
        for (_, list) in values.as_object().unwrap() {
            for v in list.as_array().unwrap() {
                assert!(!secrets.contains(v.as_str().unwrap()));
            }
        }
    }

    // Two recipients' files share no identifier.
    let sponsor = analyse(&dir("sponsor"));
    let theirs: BTreeSet<String> = pseudonym_columns(&sponsor)
        .into_iter()
        .flat_map(|(_, v)| v)
        .collect();
    let ours = pseudonym_columns(&csv);
    assert!(
        ours.len() >= 8,
        "{:?}",
        ours.iter().map(|(c, _)| c).collect::<Vec<_>>()
    );
    for (column, values) in ours {
        assert!(
            !values.is_empty() || column.starts_with("flags"),
            "{column}"
        );
        assert!(
            values.is_disjoint(&theirs),
            "{column} joins the sponsor's files"
        );
    }
    assert_eq!(
        sponsor["datasets"]["participants"]["rows"],
        csv["datasets"]["participants"]["rows"]
    );

    // Shifted dates: every date and instant empty, the days kept.
    let shifted = analyse(&dir("shifted"));
    let book: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir("shifted").join("codebook.json")).unwrap())
            .unwrap();
    assert_eq!(book["dates_shifted"], true);
    let shifted_occurrences =
        std::fs::read_to_string(dir("shifted").join("occurrences.csv")).unwrap();
    let header: Vec<&str> = shifted_occurrences
        .lines()
        .next()
        .unwrap()
        .split(',')
        .collect();
    let opens = header.iter().position(|c| *c == "window_opens_at").unwrap();
    let day = header.iter().position(|c| *c == "day").unwrap();
    for line in shifted_occurrences.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells[opens], "", "{line}");
        assert!(cells[day].parse::<i32>().is_ok(), "{line}");
    }
    assert_eq!(shifted["adherence"], csv["adherence"]);

    // Reproducible: the log moves on, and the same position gives the same
    // bytes, in both formats.
    practice
        .log_practice(authed(tend_tests::practice_request("demo-00003")))
        .await
        .unwrap();
    export(
        &db.url,
        &keys,
        &dir("csv-again"),
        &["--recipient", "analysts", "--at-position", &at],
    );
    export(
        &db.url,
        &keys,
        &dir("parquet-again"),
        &[
            "--recipient",
            "analysts",
            "--format",
            "parquet",
            "--at-position",
            &at,
        ],
    );
    assert_eq!(files_of(&dir("csv")), files_of(&dir("csv-again")));
    assert_eq!(files_of(&dir("parquet")), files_of(&dir("parquet-again")));

    // Incremental: after the position, the one new entry (its participant
    // shares or not: then nothing).
    let printed = export(
        &db.url,
        &keys,
        &dir("since"),
        &["--recipient", "analysts", "--since-position", &at],
    );
    let since = analyse(&dir("since"));
    let new_entries = since["datasets"]["practice"]["rows"].as_u64().unwrap();
    let demo3 = arcs
        .iter()
        .find(|a| a.participant_ref == "demo-00003")
        .unwrap();
    let demo3_shares = in_export.contains(
        &analysts
            .pseudonym(demo3.participant_id.parse().unwrap())
            .to_string(),
    );
    assert_eq!(new_entries, u64::from(demo3_shares), "{printed}");
    assert_eq!(
        since["datasets"]["participants"]["rows"],
        csv["datasets"]["participants"]["rows"]
    );
    assert!(
        since["datasets"]["occurrences"]["rows"].as_u64().unwrap()
            < csv["datasets"]["occurrences"]["rows"].as_u64().unwrap()
    );

    // ExportService streams the same files for the same position.
    let mut client = ExportServiceClient::new(ch.clone());
    let mut stream = client
        .export(authed(pb::ExportRequest {
            recipient_id: "analysts".into(),
            format: pb::ExportFormat::Parquet as i32,
            at_position: position,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut started = None;
    let mut finished = None;
    while let Some(m) = stream.message().await.unwrap() {
        match m.part.unwrap() {
            pb::export_response::Part::Started(s) => started = Some(s),
            pb::export_response::Part::Chunk(c) => {
                let f = files.entry(c.file).or_default();
                assert_eq!(c.offset, f.len() as u64);
                f.extend_from_slice(&c.data);
            }
            pb::export_response::Part::Finished(f) => finished = Some(f),
        }
    }
    assert_eq!(started.unwrap().position, position);
    for f in finished.unwrap().files {
        assert_eq!(
            hex::encode(Sha256::digest(&files[&f.file])),
            f.sha256,
            "{}",
            f.file
        );
    }
    assert_eq!(files, files_of(&dir("parquet")));
}

#[tokio::test]
async fn bad_exports_are_refused_clearly_and_leave_nothing_behind() {
    let db = fresh_database().await;
    let keys = recipient_keys();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let refused = |args: &[&str]| {
        let mut all = vec!["export", "--tenant", "clinic"];
        all.extend_from_slice(args);
        let o = tend(&db.url, &keys, &all);
        assert!(!o.status.success(), "{all:?} succeeded");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let out_s = out.to_str().unwrap();
    // Unknown recipient, another tenant's recipient.
    let e = refused(&["--recipient", "nobody", "--out", out_s]);
    assert!(e.contains("no recipient `nobody`"), "{e}");
    let e = refused(&["--recipient", "registry", "--out", out_s]);
    assert!(e.contains("no recipient `registry`"), "{e}");
    // A position beyond the head.
    let e = refused(&[
        "--recipient",
        "analysts",
        "--out",
        out_s,
        "--at-position",
        "999999",
    ]);
    assert!(e.contains("beyond the log's head"), "{e}");
    // An existing directory with files in it.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let e = refused(&["--recipient", "analysts", "--out", out_s]);
    assert!(e.contains("is not empty"), "{e}");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
    // A directory that cannot be made (its parent is a file).
    let under_file = work.path().join("keep.txt/export");
    std::fs::write(work.path().join("keep.txt"), "a file").unwrap();
    let e = refused(&[
        "--recipient",
        "analysts",
        "--out",
        under_file.to_str().unwrap(),
    ]);
    assert!(e.contains("keep.txt"), "{e}");
    // A bad SD.
    let e = refused(&[
        "--recipient",
        "analysts",
        "--out",
        work.path().join("new").to_str().unwrap(),
        "--sd",
        "scs=-1",
    ]);
    assert!(e.contains("SD given for `scs`"), "{e}");
    // Nothing half-written anywhere.
    let left: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left.iter().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from(["out".to_owned(), "keep.txt".to_owned()]),
    );
    // An empty directory is fine, and an empty tenant exports empty files.
    std::fs::remove_file(out.join("keep.txt")).unwrap();
    export(&db.url, &keys, &out, &["--recipient", "analysts"]);
    let analysed = analyse(&out);
    assert_eq!(analysed["datasets"]["participants"]["rows"], 0);

    // Over gRPC: the field and the reason, scoped to the caller's tenant.
    let server = TendProcess::start(&[
        ("TEND_DATABASE_URL", &db.url),
        ("TEND_AUTH_TOKENS", &tokens()),
        ("TEND_RECIPIENT_KEYS", &keys),
    ]);
    let mut client = ExportServiceClient::new(channel(&server).await);
    let ok = pb::ExportRequest {
        recipient_id: "analysts".into(),
        format: pb::ExportFormat::Csv as i32,
        ..Default::default()
    };
    for (request, code, name) in [
        (
            pb::ExportRequest {
                recipient_id: "registry".into(),
                ..ok.clone()
            },
            Code::NotFound,
            "",
        ),
        (
            pb::ExportRequest {
                recipient_id: String::new(),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "recipient_id",
        ),
        (
            pb::ExportRequest {
                format: 0,
                ..ok.clone()
            },
            Code::InvalidArgument,
            "format",
        ),
        (
            pb::ExportRequest {
                at_position: 1 << 40,
                ..ok.clone()
            },
            Code::InvalidArgument,
            "at_position",
        ),
        (
            pb::ExportRequest {
                at_position: 5,
                since_position: 5,
                ..ok.clone()
            },
            Code::InvalidArgument,
            "since_position",
        ),
        (
            pb::ExportRequest {
                reference_sd: [("scs".to_owned(), 0.0)].into(),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "reference_sd",
        ),
    ] {
        let e = client.export(authed(request.clone())).await.unwrap_err();
        assert_eq!(e.code(), code, "{request:?}: {e:?}");
        assert_eq!(field(&e), name, "{e:?}");
    }
    // The other tenant has its own recipient, and its own (empty) data.
    let mut other = client
        .export(tend_tests::bearer(
            OTHER_TOKEN,
            pb::ExportRequest {
                recipient_id: "registry".into(),
                ..ok.clone()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut chunks = 0;
    while let Some(m) = other.message().await.unwrap() {
        chunks += usize::from(matches!(m.part, Some(pb::export_response::Part::Chunk(_))));
    }
    assert!(chunks >= 7, "{chunks}");
    let e = client
        .export(tonic::Request::new(ok.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}
