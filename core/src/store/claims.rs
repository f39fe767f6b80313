//! The worker's side: claiming a deployment under a lease, storing its hosts, and
//! recording host and step progress.
//!
//! Every write that changes what happens next (starting a host, finishing the
//! deployment) is fenced by the claim token, so a worker that lost its lease cannot
//! act on a deployment another worker has taken over.

use super::{Store, StoreError, parse};
use crate::deployment::{DeploymentRequest, DeploymentState, HostState, StepState};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A deployment this worker now holds.
#[derive(Debug, Clone)]
pub struct ClaimedDeployment {
    pub id: Uuid,
    pub request: DeploymentRequest,
    /// Unique to this claim: two deliveries of one id in one worker are two claims.
    pub token: String,
}

#[derive(Debug)]
pub enum Claim {
    Claimed(Box<ClaimedDeployment>),
    /// Already in a final state: the message is a leftover.
    Finished(DeploymentState),
    /// Another claim holds a live lease.
    HeldBy {
        token: String,
        until: DateTime<Utc>,
    },
    /// No such deployment.
    Missing,
}

/// A discovered host with its place in the rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedHost {
    pub name: String,
    pub address: String,
    pub wave: i32,
}

/// A stored host as the rollout sees it when it (re)starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunHost {
    pub name: String,
    pub address: String,
    pub wave: i32,
    pub state: HostState,
}

impl Store {
    /// Takes the deployment if nobody holds a live lease on it.
    pub async fn claim(
        &self,
        id: Uuid,
        token: &str,
        lease_seconds: u64,
    ) -> Result<Claim, StoreError> {
        let claimed: Option<(sqlx::types::Json<DeploymentRequest>,)> = sqlx::query_as(
            "UPDATE deployments SET worker_id = $2, \
                 lease_expires_at = now() + make_interval(secs => $3), \
                 state = CASE WHEN state = 'queued' THEN 'running' ELSE state END, \
                 started_at = COALESCE(started_at, now()) \
             WHERE id = $1 AND state IN ('queued', 'running', 'cancelling') \
               AND (worker_id IS NULL OR lease_expires_at < now()) \
             RETURNING request",
        )
        .bind(id)
        .bind(token)
        .bind(lease_seconds as f64)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((request,)) = claimed {
            return Ok(Claim::Claimed(Box::new(ClaimedDeployment {
                id,
                request: request.0,
                token: token.to_owned(),
            })));
        }

        let row: Option<(String, Option<String>, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT state, worker_id, lease_expires_at FROM deployments WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => Claim::Missing,
            Some((state, holder, until)) => {
                let state: DeploymentState = parse(&state)?;
                match (holder, until) {
                    _ if state.is_final() => Claim::Finished(state),
                    (Some(token), Some(until)) => Claim::HeldBy { token, until },
                    // Released between the two statements: the caller tries again.
                    _ => Claim::HeldBy {
                        token: String::new(),
                        until: Utc::now(),
                    },
                }
            }
        })
    }

    /// Extends the lease; false when the claim was lost.
    pub async fn renew_lease(
        &self,
        id: Uuid,
        token: &str,
        lease_seconds: u64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE deployments SET lease_expires_at = now() + make_interval(secs => $3) \
             WHERE id = $1 AND worker_id = $2",
        )
        .bind(id)
        .bind(token)
        .bind(lease_seconds as f64)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the deployment up unfinished, so that another worker resumes it.
    pub async fn release(&self, id: Uuid, token: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE deployments SET worker_id = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND worker_id = $2",
        )
        .bind(id)
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the outcome and drops the claim; false when the claim was lost.
    pub async fn finish(
        &self,
        id: Uuid,
        token: &str,
        state: DeploymentState,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE deployments SET state = $3, error = $4, finished_at = now(), \
                 worker_id = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND worker_id = $2",
        )
        .bind(id)
        .bind(token)
        .bind(state.as_str())
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Stores the discovered hosts, unless an earlier claim already did (a resumed
    /// deployment keeps its hosts and their progress). Returns the stored hosts.
    pub async fn plan_hosts(
        &self,
        id: Uuid,
        hosts: &[PlannedHost],
    ) -> Result<Vec<RunHost>, StoreError> {
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        let addresses: Vec<&str> = hosts.iter().map(|h| h.address.as_str()).collect();
        let waves: Vec<i32> = hosts.iter().map(|h| h.wave).collect();
        let mut tx = self.pool.begin().await?;
        let (existing,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM hosts WHERE deployment_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        if existing == 0 {
            sqlx::query(
                "INSERT INTO hosts (deployment_id, name, address, wave, position) \
                 SELECT $1, t.name, t.address, t.wave, t.ord - 1 \
                 FROM unnest($2::text[], $3::text[], $4::int[]) WITH ORDINALITY AS t(name, address, wave, ord)",
            )
            .bind(id)
            .bind(&names)
            .bind(&addresses)
            .bind(&waves)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.run_hosts(id).await
    }

    /// The stored hosts of a deployment, in rollout order.
    pub async fn run_hosts(&self, id: Uuid) -> Result<Vec<RunHost>, StoreError> {
        let rows: Vec<(String, String, i32, String)> = sqlx::query_as(
            "SELECT name, address, wave, state FROM hosts WHERE deployment_id = $1 ORDER BY position",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(name, address, wave, state)| {
                Ok(RunHost {
                    name,
                    address,
                    wave,
                    state: parse(&state)?,
                })
            })
            .collect()
    }

    /// Marks a host running (again: a host interrupted mid-way starts over from its
    /// first step); false when the claim was lost.
    pub async fn start_host(&self, id: Uuid, token: &str, host: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let started = sqlx::query(
            "UPDATE hosts SET state = 'running', started_at = now(), finished_at = NULL, error = NULL \
             WHERE deployment_id = $1 AND name = $3 \
               AND EXISTS (SELECT 1 FROM deployments WHERE id = $1 AND worker_id = $2)",
        )
        .bind(id)
        .bind(token)
        .bind(host)
        .execute(&mut *tx)
        .await?;
        if started.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM steps WHERE deployment_id = $1 AND host = $2")
            .bind(id)
            .bind(host)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn finish_host(
        &self,
        id: Uuid,
        host: &str,
        state: HostState,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE hosts SET state = $3, error = $4, finished_at = now() \
             WHERE deployment_id = $1 AND name = $2",
        )
        .bind(id)
        .bind(host)
        .bind(state.as_str())
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks every host that never started `skipped`.
    pub async fn skip_pending_hosts(&self, id: Uuid) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE hosts SET state = 'skipped', finished_at = now() \
             WHERE deployment_id = $1 AND state = 'pending'",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn start_step(
        &self,
        id: Uuid,
        host: &str,
        position: i32,
        name: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO steps (deployment_id, host, position, name, state, started_at) \
             VALUES ($1, $2, $3, $4, 'running', now()) \
             ON CONFLICT (deployment_id, host, position) DO UPDATE \
             SET name = $4, state = 'running', started_at = now(), finished_at = NULL, \
                 exit_code = NULL, output = ''",
        )
        .bind(id)
        .bind(host)
        .bind(position)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn finish_step(
        &self,
        id: Uuid,
        host: &str,
        position: i32,
        state: StepState,
        exit_code: Option<i32>,
        output: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE steps SET state = $4, exit_code = $5, output = $6, finished_at = now() \
             WHERE deployment_id = $1 AND host = $2 AND position = $3",
        )
        .bind(id)
        .bind(host)
        .bind(position)
        .bind(state.as_str())
        .bind(exit_code)
        .bind(output.replace('\0', ""))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
