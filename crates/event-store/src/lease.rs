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

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// What [`Lease::hold`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Held without a break since this holder's previous successful
    /// `hold`: nobody else can have had it in between.
    Still,
    /// Held now, but it may have been another's since this holder last
    /// had it (or this is the first time).
    Anew,
    /// Another holder has it.
    Not,
}

impl Held {
    pub fn is_held(self) -> bool {
        self != Held::Not
    }
}

/// One holder's claim on one named lease. Not `Clone`: two tasks with one
/// claim would both count as its holder.
#[derive(Debug)]
pub struct Lease {
    name: String,
    holder: Uuid,
    ttl: Duration,
    /// When the last renewal by `hold` that succeeded was sent: the row
    /// then expires no sooner than `ttl` after it.
    renewed: Mutex<Option<Instant>>,
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
            renewed: Mutex::new(None),
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

    /// Holds the lease like [`Lease::acquire`], but asks the database only
    /// once a third of its life has passed since the last renewal: a job
    /// that checks before every batch would otherwise write the lease row
    /// (and wait for its commit) as often as it writes its own. Until then
    /// the row is surely still this holder's, since only an expired lease
    /// changes hands; and every write is fenced all the same.
    pub async fn hold(&self, pool: &PgPool) -> Result<Held, sqlx::Error> {
        let last = *self.renewed();
        if last.is_some_and(|at| at.elapsed() < self.ttl / 3) {
            return Ok(Held::Still);
        }
        let sent = Instant::now();
        let acquired = self.acquire(pool).await;
        let mut renewed = self.renewed();
        match acquired {
            Ok(true) => {
                // Answered before the last renewal could expire: the row was
                // this holder's, unexpired, when the renewal ran.
                let still = last.is_some_and(|at| at.elapsed() < self.ttl);
                *renewed = Some(sent);
                Ok(if still { Held::Still } else { Held::Anew })
            }
            Ok(false) => {
                *renewed = None;
                Ok(Held::Not)
            }
            Err(e) => {
                *renewed = None;
                Err(e)
            }
        }
    }

    fn renewed(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // Only an `Option<Instant>` inside: a panic cannot leave it torn.
        self.renewed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives the lease up, if this holder has it, so that another server
    /// takes over at once instead of after the expiry.
    pub async fn release(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        *self.renewed() = None;
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
        if held.is_none() {
            // Lost after all (the holder stalled past the expiry): the next
            // `hold` must ask.
            *self.renewed() = None;
        }
        Ok(held.is_some())
    }
}
