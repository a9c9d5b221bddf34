//! Readiness: health says NOT_SERVING while the database does not answer,
//! and SERVING again when it does, so that a load balancer sends calls to
//! replicas that can serve them. The process stays up meanwhile: calls
//! fail with UNAVAILABLE, and the background work retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How often the database is asked, and how long an answer may take.
const EVERY: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the database every second on a connection of its own (not the
/// pool's: a pool busy serving is not a database that is down) and turns
/// health with the answer, until `shutdown`. Once `stopping` is set, only
/// shutdown speaks for health.
pub(crate) async fn watch(
    connect: PgConnectOptions,
    health: HealthReporter,
    stopping: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut connection: Option<PgConnection> = None;
    let mut up = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let answer = probe(&connect, &mut connection).await;
        if answer.is_ok() == up || stopping.load(Ordering::SeqCst) {
            continue;
        }
        up = answer.is_ok();
        match answer {
            Ok(()) => {
                tracing::info!("the database answers again: health says SERVING");
                crate::serve::set_health(&health, ServingStatus::Serving).await;
            }
            Err(cause) => {
                tracing::warn!(%cause, "the database does not answer: health says NOT_SERVING until it does");
                crate::serve::set_health(&health, ServingStatus::NotServing).await;
            }
        }
    }
    if let Some(c) = connection {
        let _ = c.close().await;
    }
}

/// `SELECT 1`, connecting first if need be; a failure drops the connection.
async fn probe(
    connect: &PgConnectOptions,
    connection: &mut Option<PgConnection>,
) -> Result<(), String> {
    let asked = tokio::time::timeout(TIMEOUT, async {
        if connection.is_none() {
            *connection = Some(connect.connect().await?);
        }
        let c = connection.as_mut().expect("connected above");
        sqlx::query("SELECT 1").execute(c).await.map(|_| ())
    })
    .await;
    let result = match asked {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(crate::database::cause(&e)),
        Err(_) => Err(format!("no answer within {} s", TIMEOUT.as_secs())),
    };
    if result.is_err() {
        *connection = None;
    }
    result
}
