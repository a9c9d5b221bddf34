//! A server that says when it cannot serve: start-up errors that name
//! their cause within seconds, a signal during start-up that stops it at
//! once, and health that follows the database while the process stays up.
//! The real binary, and a PostgreSQL cluster of the test's own that it
//! stops and starts.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tend_api::practice::v1 as ppb;
use tend_api::practice::v1::practice_log_service_client::PracticeLogServiceClient;
use tend_testkit::fresh_database;
use tend_tests::{TEST_MASTER_KEYS, TendProcess, channel, tend_binary};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TOKEN: &str = "tend_test_token_for_startup";

fn tokens() -> String {
    format!("clinic={}", tend_auth::TokenHash::of(TOKEN))
}

/// Runs `tend serve` with `env` until it exits (at most 30 s): its exit
/// success, standard error, and how long it took.
fn serve_until_exit(
    env: &[(&str, &str)],
    signal_after: Option<Duration>,
) -> (bool, String, Duration) {
    let mut cmd = Command::new(tend_binary());
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("TEND_DATABASE_URL")
        .env_remove("TEND_AUTH_TOKENS")
        .env_remove("TEND_MASTER_KEYS")
        .env("TEND_LOG_FORMAT", "text")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn tend");
    if let Some(after) = signal_after {
        std::thread::sleep(after);
        let sent = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("tend did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.success(), stderr, took)
}

fn external(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TEND_DATABASE_URL", url.to_owned()),
        ("TEND_AUTH_TOKENS", tokens()),
        ("TEND_MASTER_KEYS", TEST_MASTER_KEYS.to_owned()),
    ]
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The test cluster's URL with another user or database.
fn with(url: &str, user: Option<&str>, database: Option<&str>) -> String {
    let mut url = url.to_owned();
    if let Some(user) = user {
        url = url.replacen("postgres://postgres@", &format!("postgres://{user}@"), 1);
    }
    if let Some(database) = database {
        let (before, after) = url.split_once('?').unwrap();
        let base = before.rsplit_once('/').unwrap().0;
        url = format!("{base}/{database}?{after}");
    }
    url
}

#[tokio::test]
async fn start_up_errors_name_their_cause_within_seconds() {
    let db = fresh_database().await;
    assert!(
        db.url.starts_with("postgres://postgres@"),
        "the test cluster's URL changed shape: {}",
        db.url
    );
    // A port nothing listens on.
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let cases = [
        (
            format!("postgres://tend:secret@127.0.0.1:{port}/tend"),
            "connection refused",
        ),
        (
            "postgres://tend:secret@no-such-host.invalid/tend".to_owned(),
            "unknown host",
        ),
        (
            with(&db.url, Some("nobody_here"), None),
            "authentication failed",
        ),
        (
            with(&db.url, None, Some("no_such_database")),
            "database missing",
        ),
    ];
    for (url, cause) in cases {
        let env = external(&url);
        let (ok, stderr, took) = serve_until_exit(&refs(&env), None);
        assert!(!ok, "{url}: started");
        assert!(stderr.contains(cause), "{url}: {stderr}");
        assert!(
            !stderr.contains("secret"),
            "the password was printed: {stderr}"
        );
        assert!(took < Duration::from_secs(8), "{url}: {took:?}");
    }
}

#[test]
fn settings_are_checked_before_any_connection() {
    // A database that accepts connections and never answers: anything
    // that waited for it would take seconds.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "postgres://tend@127.0.0.1:{}/tend",
        silent.local_addr().unwrap().port()
    );
    for (drop_key, expected) in [
        ("TEND_AUTH_TOKENS", "TEND_AUTH_TOKENS is not set"),
        ("TEND_MASTER_KEYS", "TEND_MASTER_KEYS is required"),
    ] {
        let env: Vec<_> = external(&url)
            .into_iter()
            .filter(|(k, _)| *k != drop_key)
            .collect();
        let (ok, stderr, took) = serve_until_exit(&refs(&env), None);
        assert!(!ok && stderr.contains(expected), "{stderr}");
        // Well under the 5 s a silent database would take.
        assert!(took < Duration::from_secs(4), "{took:?}");
    }
    // ... and with every setting right, a silent database is named within
    // the connect timeout.
    let env = external(&url);
    let (ok, stderr, took) = serve_until_exit(&refs(&env), None);
    assert!(!ok && stderr.contains("no answer within 5 s"), "{stderr}");
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn a_signal_during_start_up_stops_the_server_promptly() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "postgres://tend@127.0.0.1:{}/tend",
        silent.local_addr().unwrap().port()
    );
    let env = external(&url);
    let (ok, stderr, took) = serve_until_exit(&refs(&env), Some(Duration::from_millis(500)));
    assert!(ok, "a requested stop is a clean exit: {stderr}");
    assert!(stderr.contains("stopped during start-up"), "{stderr}");
    assert!(took < Duration::from_secs(4), "{took:?}");
}

/// `tend-local-postgres`, beside `tend`.
fn local_postgres(args: &[&str]) -> String {
    let binary = tend_binary().with_file_name("tend-local-postgres");
    let out = Command::new(binary).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tend-local-postgres {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn health_becomes(health: &mut HealthClient<tonic::transport::Channel>, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: "tend.practice.v1.PracticeLogService".into(),
            })
            .await
            .expect("health answers while the database is down")
            .into_inner()
            .status;
        if status == want as i32 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health still {status}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn health_follows_the_database_and_the_process_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    // PostgreSQL runs as `postgres` when the tests run as root.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let pg = dir.path().join("pg");
    let pg = pg.to_str().unwrap();
    let url = local_postgres(&["start", pg, "--throwaway"]);
    let env = external(&url);
    let server = TendProcess::start(&refs(&env));
    let channel = channel(&server).await;
    let mut health = HealthClient::new(channel.clone());
    health_becomes(&mut health, ServingStatus::Serving).await;

    local_postgres(&["stop", pg]);
    health_becomes(&mut health, ServingStatus::NotServing).await;
    // A call meanwhile says to come back, and does not hang.
    let mut practice = PracticeLogServiceClient::new(channel.clone());
    let log = || {
        tend_tests::bearer(
            TOKEN,
            ppb::LogPracticeRequest {
                participant_ref: "p-1".into(),
                entry_id: "0b5c8f4e-7f43-4a53-9d0c-6a1c1f0f2b11".into(),
                practice: Some(ppb::PracticeDetails {
                    kind: "soothing-touch".into(),
                    started_at: (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1))
                        .strftime("%Y-%m-%dT%H:%M:%S")
                        .to_string(),
                    time_zone: "UTC".into(),
                    minutes: 5,
                    ..Default::default()
                }),
            },
        )
    };
    let down = tokio::time::timeout(Duration::from_secs(30), practice.log_practice(log()))
        .await
        .expect("a call while the database is down answers");
    assert_eq!(down.unwrap_err().code(), tonic::Code::Unavailable);

    local_postgres(&["start", pg, "--throwaway"]);
    health_becomes(&mut health, ServingStatus::Serving).await;
    let entry = practice.log_practice(log()).await.unwrap().into_inner();
    assert!(entry.entry.is_some());

    let status =
        tokio::task::spawn_blocking(move || server.stop_with("TERM", Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(status.success(), "{status:?}");
    local_postgres(&["stop", pg]);
}
