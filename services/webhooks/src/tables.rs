//! What stays out of the log: endpoints' secrets (sealed) and where their
//! deliveries stand.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tend_event_store::TenantId;
use tend_privacy::{MasterKeys, SealedSecret};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::sign;

/// What a secret is for, bound into its sealing.
const PURPOSE: &str = "webhook-secret";

fn owner(tenant: &TenantId, endpoint: Uuid) -> String {
    format!("{}/{endpoint}", tenant.as_str())
}

/// Where one endpoint's deliveries stand.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct DeliveryRow {
    pub delivered_position: i64,
    pub restart_event: i64,
    pub failing_position: Option<i64>,
    pub failing_since: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_total: i64,
    pub failed_total: i64,
}

/// A failed attempt, as recorded.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub position: u64,
    pub since: DateTime<Utc>,
    pub attempts: u32,
    pub next_at: Option<DateTime<Utc>>,
    pub status: Option<u16>,
    pub error: &'static str,
}

#[derive(Debug, Clone)]
pub(crate) struct Tables {
    pool: PgPool,
    keys: MasterKeys,
}

impl Tables {
    pub(crate) fn new(pool: PgPool, keys: MasterKeys) -> Self {
        Self { pool, keys }
    }

    /// The endpoint's secret, made and stored on first call (a retried
    /// registration gets the same one).
    pub(crate) async fn create_secret(
        &self,
        tenant: &TenantId,
        endpoint: Uuid,
    ) -> Result<Zeroizing<Vec<u8>>, crate::Error> {
        let fresh = sign::generate();
        let sealed = self
            .keys
            .seal_secret(PURPOSE, &owner(tenant, endpoint), &fresh);
        sqlx::query(
            "INSERT INTO webhook_secrets (tenant_id, endpoint_id, master_key_id, sealed)
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, endpoint_id) DO NOTHING",
        )
        .bind(tenant.as_str())
        .bind(endpoint)
        .bind(&sealed.master_key_id)
        .bind(&sealed.sealed)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        let mut secrets = self.secrets(tenant, endpoint, Utc::now()).await?;
        if secrets.is_empty() {
            return Err(crate::Error::SecretMissing);
        }
        Ok(secrets.swap_remove(0))
    }

    /// The secrets that sign now: the current one, and the previous one
    /// while a rotation's overlap lasts.
    pub(crate) async fn secrets(
        &self,
        tenant: &TenantId,
        endpoint: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Vec<Zeroizing<Vec<u8>>>, crate::Error> {
        type Row = (
            String,
            Vec<u8>,
            Option<String>,
            Option<Vec<u8>>,
            Option<DateTime<Utc>>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT master_key_id, sealed, previous_master_key_id, previous_sealed, previous_until
             FROM webhook_secrets WHERE tenant_id = $1 AND endpoint_id = $2",
        )
        .bind(tenant.as_str())
        .bind(endpoint)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        let Some((key_id, sealed, previous_key_id, previous, until)) = row else {
            return Ok(vec![]);
        };
        let owner = owner(tenant, endpoint);
        let open = |master_key_id: String, sealed: Vec<u8>| {
            self.keys.open_secret(
                PURPOSE,
                &owner,
                &SealedSecret {
                    master_key_id,
                    sealed,
                },
            )
        };
        let mut out = vec![open(key_id, sealed)?];
        if let (Some(k), Some(s), Some(until)) = (previous_key_id, previous, until)
            && until > now
        {
            out.push(open(k, s)?);
        }
        Ok(out)
    }

    /// A new current secret; the old one signs beside it until `until`.
    pub(crate) async fn rotate(
        &self,
        tenant: &TenantId,
        endpoint: Uuid,
        until: DateTime<Utc>,
    ) -> Result<Zeroizing<Vec<u8>>, crate::Error> {
        let fresh = sign::generate();
        let sealed = self
            .keys
            .seal_secret(PURPOSE, &owner(tenant, endpoint), &fresh);
        let updated = sqlx::query(
            "UPDATE webhook_secrets SET
                previous_master_key_id = master_key_id, previous_sealed = sealed,
                previous_until = $5, master_key_id = $3, sealed = $4
             WHERE tenant_id = $1 AND endpoint_id = $2",
        )
        .bind(tenant.as_str())
        .bind(endpoint)
        .bind(&sealed.master_key_id)
        .bind(&sealed.sealed)
        .bind(until)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        if updated.rows_affected() == 0 {
            return Err(crate::Error::SecretMissing);
        }
        Ok(fresh)
    }

    pub(crate) async fn delivery(
        &self,
        tenant: &TenantId,
        endpoint: Uuid,
    ) -> Result<Option<DeliveryRow>, crate::Error> {
        use sqlx::Row;
        let row = sqlx::query(
            "SELECT delivered_position, restart_event, failing_position, failing_since, attempts,
                    next_attempt_at, last_attempt_at, last_status, last_error,
                    delivered_total, failed_total
             FROM webhook_deliveries WHERE tenant_id = $1 AND endpoint_id = $2",
        )
        .bind(tenant.as_str())
        .bind(endpoint)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        let Some(r) = row else { return Ok(None) };
        let read = || -> Result<DeliveryRow, sqlx::Error> {
            Ok(DeliveryRow {
                delivered_position: r.try_get(0)?,
                restart_event: r.try_get(1)?,
                failing_position: r.try_get(2)?,
                failing_since: r.try_get(3)?,
                attempts: r.try_get(4)?,
                next_attempt_at: r.try_get(5)?,
                last_attempt_at: r.try_get(6)?,
                last_status: r.try_get(7)?,
                last_error: r.try_get(8)?,
                delivered_total: r.try_get(9)?,
                failed_total: r.try_get(10)?,
            })
        };
        read().map(Some).map_err(store_error)
    }

    /// Obeys a restart instruction (registration, enabling, redelivery)
    /// once: the cursor moves to `after` if `restart_event` is newer than
    /// the last one obeyed. Returns where deliveries continue.
    pub(crate) async fn restart(
        &self,
        tenant: &TenantId,
        endpoint: Uuid,
        after: u64,
        restart_event: u64,
    ) -> Result<u64, crate::Error> {
        let position: i64 = sqlx::query_scalar(
            "INSERT INTO webhook_deliveries (tenant_id, endpoint_id, delivered_position, restart_event)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id, endpoint_id) DO UPDATE SET
                delivered_position = CASE WHEN webhook_deliveries.restart_event < EXCLUDED.restart_event
                    THEN EXCLUDED.delivered_position ELSE webhook_deliveries.delivered_position END,
                failing_position = CASE WHEN webhook_deliveries.restart_event < EXCLUDED.restart_event
                    THEN NULL ELSE webhook_deliveries.failing_position END,
                failing_since = CASE WHEN webhook_deliveries.restart_event < EXCLUDED.restart_event
                    THEN NULL ELSE webhook_deliveries.failing_since END,
                attempts = CASE WHEN webhook_deliveries.restart_event < EXCLUDED.restart_event
                    THEN 0 ELSE webhook_deliveries.attempts END,
                next_attempt_at = CASE WHEN webhook_deliveries.restart_event < EXCLUDED.restart_event
                    THEN NULL ELSE webhook_deliveries.next_attempt_at END,
                restart_event = GREATEST(webhook_deliveries.restart_event, EXCLUDED.restart_event),
                updated_at = now()
             RETURNING delivered_position",
        )
        .bind(tenant.as_str())
        .bind(endpoint)
        .bind(after as i64)
        .bind(restart_event as i64)
        .fetch_one(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(position as u64)
    }

    /// Everything up to `position` delivered (`delivered` more events).
    pub(crate) async fn progress(
        &self,
        tenant: &TenantId,
        endpoint: Uuid,
        restart_event: u64,
        position: u64,
        delivered: u64,
        status: Option<u16>,
    ) -> Result<(), crate::Error> {
        sqlx::query(
            "UPDATE webhook_deliveries SET
                delivered_position = GREATEST(delivered_position, $3),
                delivered_total = delivered_total + $4,
                failing_position = NULL, failing_since = NULL, attempts = 0,
                next_attempt_at = NULL, last_error = NULL,
                last_status = coalesce($5, last_status),
                last_attempt_at = CASE WHEN $4 > 0 THEN now() ELSE last_attempt_at END,
                updated_at = now()
             WHERE tenant_id = $1 AND endpoint_id = $2 AND restart_event = $6",
        )
        .bind(tenant.as_str())
        .bind(endpoint)
        .bind(position as i64)
        .bind(delivered as i64)
        .bind(status.map(i32::from))
        .bind(restart_event as i64)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    pub(crate) async fn failure(
        &self,
        tenant: &TenantId,
        endpoint: Uuid,
        restart_event: u64,
        f: &Failure,
    ) -> Result<(), crate::Error> {
        sqlx::query(
            "UPDATE webhook_deliveries SET
                failing_position = $3, failing_since = $4, attempts = $5, next_attempt_at = $6,
                last_attempt_at = now(), last_status = $7, last_error = $8,
                failed_total = failed_total + 1, updated_at = now()
             WHERE tenant_id = $1 AND endpoint_id = $2 AND restart_event = $9",
        )
        .bind(tenant.as_str())
        .bind(endpoint)
        .bind(f.position as i64)
        .bind(f.since)
        .bind(f.attempts as i32)
        .bind(f.next_at)
        .bind(f.status.map(i32::from))
        .bind(f.error)
        .bind(restart_event as i64)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }
}

fn store_error(e: sqlx::Error) -> crate::Error {
    crate::Error::from(tend_event_store::Error::from(e))
}
