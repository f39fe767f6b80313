//! PostgreSQL, the source of truth for deployments, hosts, steps and logs.
//!
//! - `deployments`: submitting (with its outbox row), reading and listing;
//! - `claims`: claiming under a lease, planning hosts, recording hosts and steps,
//!   the final state;
//! - `control`: cancel and retry;
//! - `inventory`: what runs where, from the hosts' records;
//! - `outbox`: what the relay publishes, and the reaper;
//! - `logs`: log lines and the events they carry;
//! - `access`: tokens, scopes and the audit trail.
//!
//! Queries are checked at run time (`query_as` with `FromRow`), so building never needs
//! a database; every statement is exercised by the end-to-end tests against a real one.

/// SQL shared by several modules, as macros so that `concat!` can splice it.
///
/// An enqueue of an id that already waits in the outbox: the row's generation moves
/// on, so the relay, which deletes only the generation it published, publishes again.
macro_rules! supersede {
    () => {
        "ON CONFLICT (deployment_id) DO UPDATE SET generation = outbox.generation + 1"
    };
}

/// A deployment that holds or waits for its target (service and cluster): any state
/// but final, except dry runs, which touch no host.
macro_rules! blocks_target {
    ($alias:literal) => {
        concat!(
            $alias,
            ".state IN ('queued', 'running', 'cancelling') AND (",
            $alias,
            ".request->>'dry_run')::boolean IS NOT TRUE"
        )
    };
}

/// A queued deployment `$alias` that must wait: its target is held (a deployment
/// running or cancelling on it), or a deployment submitted before it still waits.
/// Dry runs neither hold nor wait. Two probes of an index each, so a long queue on
/// one target costs each question no more than a short one.
macro_rules! waits_behind {
    ($alias:literal) => {
        concat!(
            "(EXISTS (SELECT 1 FROM deployments other WHERE other.service = ",
            $alias,
            ".service AND other.cluster = ",
            $alias,
            ".cluster AND other.state IN ('running', 'cancelling') \
                 AND (other.request->>'dry_run')::boolean IS NOT TRUE) \
             OR EXISTS (SELECT 1 FROM deployments other WHERE other.service = ",
            $alias,
            ".service AND other.cluster = ",
            $alias,
            ".cluster AND other.state = 'queued' AND other.queue_seq < ",
            $alias,
            ".queue_seq AND (other.request->>'dry_run')::boolean IS NOT TRUE))"
        )
    };
}

/// The claim `$2` holds deployment `$1` with a live lease: the condition of every
/// write that starts or prepares an action on a host.
macro_rules! live_claim {
    () => {
        "EXISTS (SELECT 1 FROM deployments WHERE id = $1 AND worker_id = $2 AND lease_expires_at > now())"
    };
}

mod access;
mod claims;
mod control;
mod deployments;
mod inventory;
mod logs;
mod outbox;
mod rollback;
mod webhooks;

pub use access::{TOKEN_CACHE_NAME, TOKEN_DROPPED_CHANNEL, TOKEN_REVOKED_CHANNEL};
pub use claims::{Claim, ClaimedDeployment, PlannedHost, RunHost};
pub use control::{Cancel, RetryPlan};
pub use deployments::{Gauges, ListFilter, NewDeployment, Submitted};
pub use inventory::VERSION_STEP;
pub use logs::{EVENTS_CHANNEL, NewLogLine};
pub use outbox::{OutboxBatch, Pending};
pub use rollback::{NothingToRollBack, Rollback, RollbackTarget, Undoable};
pub use webhooks::{Attempt, DueDelivery};

use crate::config::DatabaseConfig;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The Idempotency-Key was used before with a different request.
    #[error("Idempotency-Key {0:?} was already used with a different request")]
    IdempotencyMismatch(String),
    /// The thing to create exists already.
    #[error("{0}")]
    Conflict(String),
    /// A stored value that this version does not understand (a newer writer, or damage).
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    /// The database could not take a batch of writes this one was part of; the
    /// batch's first answer carries the database's own error.
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// The database cannot be reached or is not accepting work right now (down,
    /// restarting, pool exhausted): a client may try again, nothing is wrong with it.
    pub fn is_unavailable(&self) -> bool {
        let error = match self {
            Self::Database(error) => error,
            Self::Unavailable(_) => return true,
            _ => return false,
        };
        match error {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                true
            }
            // Class 08: connection exception; class 57P: operator intervention
            // (shutdown, crash recovery, "cannot connect now").
            sqlx::Error::Database(e) => e.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        }
    }
}

/// Whether `error` is a unique violation of `constraint`.
fn is_unique_violation(error: &sqlx::Error, constraint: &str) -> bool {
    error.as_database_error().is_some_and(|e| e.is_unique_violation() && e.constraint() == Some(constraint))
}

/// A handle on the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, StoreError> {
        // No JIT: every statement here is short, and PostgreSQL's cost estimate for
        // the reaper's scan of a long queue crosses the JIT threshold, where compiling
        // took 20 to 45 ms of a 4 ms query, and over a second under load.
        let options = PgConnectOptions::from_str(config.url.expose())?.options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("../migrations").run(&self.pool).await?;
        Ok(())
    }

    /// Readiness: the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn parse<T: FromStr<Err = String>>(text: &str) -> Result<T, StoreError> {
    text.parse().map_err(StoreError::Corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_store_never_prints_the_database_password() {
        let pool = PgPoolOptions::new().connect_lazy("postgres://vesemir:hunter2@127.0.0.1:1/vesemir").unwrap();
        let printed = format!("{:?}", Store::from_pool(pool));
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}
