//! Drives the real `tend` binary as a process, over real sockets, against
//! the run's real PostgreSQL. The tests live in `tests/tests/`.
//!
//! The binary is found beside the test executable (`target/<profile>/tend`),
//! or at `TEND_BIN`; `scripts/test` builds it before the tests run.

pub mod load;
pub mod pki;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The master keys every test server is given (unless a test gives its
/// own), so that replicas on one database open each other's directory.
/// A test key, in the test code only.
pub const TEST_MASTER_KEYS: &str = "test:F6VgXXlmho4GZ5p+4aiDIBjdPQTGMW6Vi23kdgv6wPo=";

/// A running `tend serve`.
#[derive(Debug)]
pub struct TendProcess {
    child: Child,
    pub addr: String,
    /// What it printed on standard output before it began serving.
    pub banner: Vec<String>,
}

/// The path of the `tend` binary under test.
pub fn tend_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TEND_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/tend
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("tend"))
        .expect("target directory");
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p tend`, which scripts/test does)",
        path.display()
    );
    path
}

impl TendProcess {
    /// Starts `tend serve` on a free loopback port with the given
    /// environment, and waits until it says it is serving.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(tend_binary());
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .env_remove("TEND_DATABASE_URL")
            .env_remove("TEND_AUTH_TOKENS")
            .env_remove("TEND_RECIPIENT_KEYS")
            .env("TEND_MASTER_KEYS", TEST_MASTER_KEYS)
            .env("TEND_LOG_FORMAT", "json")
            .env("TEND_LOG", "warn")
            .env("TEND_SHUTDOWN_GRACE_SECONDS", "10")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tend");
        let stdout = child.stdout.take().expect("stdout");
        // Read the banner on a thread so that a server that never prints
        // fails the test after a timeout instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut banner: Vec<String> = Vec::new();
            // The banner ends with an empty line.
            while let Some(Ok(line)) = lines.next() {
                if line.is_empty() && banner.iter().any(|l| l.starts_with("Tend is serving")) {
                    let _ = tx.send(banner);
                    break;
                }
                banner.push(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let banner = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("tend did not start serving within 60 s")
            });
        let addr = banner
            .iter()
            .find_map(|l| l.strip_prefix("Tend is serving gRPC on "))
            .expect("address line")
            .to_string();
        Self {
            child,
            addr,
            banner,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (for example "TERM") without waiting.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// Sends `signal` (for example "TERM") and waits for the process to end.
    pub fn stop_with(mut self, signal: &str, within: Duration) -> ExitStatus {
        self.signal(signal);
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tend did not exit within {within:?} of SIG{signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TendProcess {
    fn drop(&mut self) {
        // A failed test must not leave a server behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A gRPC channel to `server`, connected.
pub async fn channel(server: &TendProcess) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(server.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// `message` with `token` as its bearer token.
pub fn bearer<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

/// Creates `protocol` as the tenant of `token` and publishes it as its
/// version 1, as a partner does before enrolling anyone on it.
pub async fn publish_protocol(
    channel: tonic::transport::Channel,
    token: &str,
    protocol: tend_api::scheduler::v1::Protocol,
) {
    use tend_api::scheduler::v1 as pb;
    let mut client =
        pb::protocol_scheduler_service_client::ProtocolSchedulerServiceClient::new(channel);
    let protocol_id = protocol.protocol_id.clone();
    client
        .create_protocol(bearer(
            token,
            pb::CreateProtocolRequest {
                protocol: Some(protocol),
            },
        ))
        .await
        .expect("protocol created");
    client
        .publish_protocol(bearer(
            token,
            pb::PublishProtocolRequest {
                protocol_id,
                version: 1,
            },
        ))
        .await
        .expect("protocol published");
}

/// A practice entry for `participant`, an hour ago in UTC, with a fresh id.
pub fn practice_request(participant: &str) -> tend_api::practice::v1::LogPracticeRequest {
    practice_request_at(
        participant,
        jiff::SignedDuration::from_hours(1),
        "soothing-touch",
        5,
    )
}

/// A practice entry of `kind` for `participant`, started `ago` in UTC,
/// lasting `minutes`, with a fresh id.
pub fn practice_request_at(
    participant: &str,
    ago: jiff::SignedDuration,
    kind: &str,
    minutes: u32,
) -> tend_api::practice::v1::LogPracticeRequest {
    use tend_api::practice::v1 as pb;
    let started = (jiff::Timestamp::now() - ago)
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string();
    pb::LogPracticeRequest {
        participant_ref: participant.into(),
        entry_id: uuid::Uuid::new_v4().to_string(),
        practice: Some(pb::PracticeDetails {
            kind: kind.into(),
            started_at: started,
            time_zone: "UTC".into(),
            minutes,
            ..Default::default()
        }),
    }
}

/// The scrape endpoint's address, from the banner.
pub fn metrics_addr(server: &TendProcess) -> String {
    server
        .banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("metrics: http://"))
        .and_then(|l| l.strip_suffix("/metrics"))
        .expect("the banner names the metrics endpoint")
        .to_owned()
}

/// GET /metrics over a plain socket: the body.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("text/plain; version=0.0.4")
    );
    body.to_owned()
}

/// The arc projection's status once it has caught up with the log (up to
/// 60 s), asked with `token`.
pub async fn arc_caught_up(
    client: &mut tend_api::arc::v1::arc_service_client::ArcServiceClient<tonic::transport::Channel>,
    token: &str,
) -> tend_api::arc::v1::ProjectionStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = client
            .get_projection_status(bearer(
                token,
                tend_api::arc::v1::GetProjectionStatusRequest {},
            ))
            .await
            .expect("projection status")
            .into_inner()
            .projections
            .remove(0);
        if s.events_behind == 0 && s.position > 0 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the projection did not catch up: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the participant grants research sharing now, by GetConsent.
pub async fn shares_for_research(
    client: &mut tend_api::privacy::v1::privacy_service_client::PrivacyServiceClient<
        tonic::transport::Channel,
    >,
    token: &str,
    participant: &str,
) -> bool {
    use tend_api::privacy::v1 as pb;
    let consent = client
        .get_consent(bearer(
            token,
            pb::GetConsentRequest {
                participant_ref: participant.into(),
            },
        ))
        .await
        .expect("consent")
        .into_inner()
        .consent
        .expect("a consent");
    consent
        .granted
        .iter()
        .any(|g| g.purpose == pb::ConsentPurpose::ResearchSharing as i32)
}
