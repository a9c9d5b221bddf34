//! A lease: the right of one server at a time to do a job (schedule,
//! run a projection, rebuild one), held as a row in `leases`.
//!
//! Every server may try; the holder renews by acquiring again before the
//! lease expires, and a server that stops renewing loses it `ttl` later.
//! Holding the lease is not enough to write safely: a holder that stalls
//! past its expiry would write over its successor. So every write of the
//! job's own rows happens in a transaction that first `fence`s: a share
//! lock on the lease row, taken only while it is still this holder's. A
//! taker must update the row, which waits until that transaction ends, and
//! the holder's own transactions still run side by side.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// One holder's claim on one named lease. Not `Clone`: two tasks with one
/// claim would both count as its holder.
#[derive(Debug)]
pub struct Lease {
    name: String,
    holder: Uuid,
    ttl: Duration,
}

impl Lease {
    /// A claim on `name` by a new holder, lasting `ttl` unrenewed. Names are
    /// one namespace: `scheduler`, each projection's name, and
    /// `<projection>#rebuild`.
    pub fn new(name: impl Into<String>, ttl: Duration) -> Self {
        Self {
            name: name.into(),
            holder: Uuid::new_v4(),
            ttl,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Who this claim is: stable for its lifetime, random per claim.
    pub fn holder(&self) -> Uuid {
        self.holder
    }

    /// Takes the lease if it is free or expired, or renews it if it is
    /// already this holder's; false while another holder has it.
    pub async fn acquire(&self, pool: &PgPool) -> Result<bool, sqlx::Error> {
        let ttl_ms = self.ttl.as_millis().min(i64::MAX as u128) as i64;
        let row: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO leases (name, holder, expires_at)
             VALUES ($1, $2, clock_timestamp() + $3 * interval '1 millisecond')
             ON CONFLICT (name) DO UPDATE
                SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                WHERE leases.holder = EXCLUDED.holder
                   OR leases.expires_at < clock_timestamp()
             RETURNING holder",
        )
        .bind(&self.name)
        .bind(self.holder)
        .bind(ttl_ms)
        .fetch_optional(pool)
        .await?;
        Ok(row.is_some())
    }

    /// Gives the lease up, if this holder has it, so that another server
    /// takes over at once instead of after the expiry.
    pub async fn release(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(&self.name)
            .bind(self.holder)
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Within a transaction: holds the lease for the rest of it if it is
    /// still this holder's and unexpired (true), or reports that it is not
    /// (false: write nothing).
    pub async fn fence(&self, tx: &mut PgConnection) -> Result<bool, sqlx::Error> {
        let held: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM leases
             WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp()
             FOR SHARE",
        )
        .bind(&self.name)
        .bind(self.holder)
        .fetch_optional(&mut *tx)
        .await?;
        Ok(held.is_some())
    }
}
