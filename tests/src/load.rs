//! Load generation for the benchmarks that drive the real `tend` binary:
//! `LogPractice` from concurrent clients (each its own connection, as
//! separate partner apps would be), and the server process's own CPU time,
//! which holds steady on a noisy machine where rates do not.

use std::time::{Duration, Instant};

use tend_api::practice::v1 as pb;
use tend_api::practice::v1::practice_log_service_client::PracticeLogServiceClient;
use tend_testkit::bench::quantile;
use tonic::Request;
use tonic::transport::Endpoint;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct Figures {
    pub calls_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub calls: usize,
}

/// User plus system CPU seconds a process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let fields = stat_fields(pid).ok_or("no such process, or a malformed stat")?;
    // utime and stime are fields 14 and 15 of the line: 12 and 13 here.
    let utime: f64 = fields.get(11).ok_or("no utime")?.parse()?;
    let stime: f64 = fields.get(12).ok_or("no stime")?.parse()?;
    Ok((utime + stime) / ticks_per_second()?)
}

/// The fields of /proc/<pid>/stat after the command name (which may hold
/// spaces, so they start after its last ')'): the state first, then the
/// parent's pid, and utime at index 11.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The clock ticks /proc counts CPU time in, per second (asked once).
pub fn ticks_per_second() -> Result<f64> {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    if let Some(t) = TICKS.get() {
        return Ok(*t);
    }
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()?;
    let ticks: f64 = String::from_utf8(out.stdout)?.trim().parse()?;
    Ok(*TICKS.get_or_init(|| ticks))
}

/// `clients` concurrent callers of `LogPractice` for `seconds`, each a new
/// entry of one of 100 participants per client.
pub async fn log_practice(
    endpoint: Endpoint,
    token: &str,
    clients: usize,
    seconds: f64,
) -> Result<Figures> {
    let mut tasks = Vec::new();
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    for c in 0..clients {
        let channel = endpoint.connect().await?;
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut client = PracticeLogServiceClient::new(channel);
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < until {
                let mut r: Request<pb::LogPracticeRequest> = Request::new(crate::practice_request(
                    &format!("participant-{c}-{}", n % 100),
                ));
                r.metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                let t = Instant::now();
                client.log_practice(r).await.map_err(|e| e.to_string())?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                n += 1;
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok(Figures {
        calls_per_second: all.len() as f64 / elapsed,
        p50_ms: quantile(&all, 0.5),
        p99_ms: quantile(&all, 0.99),
        calls: all.len(),
    })
}
