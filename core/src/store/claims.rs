//! The worker's side: claiming a deployment under a lease, storing its hosts, and
//! recording host and step progress.
//!
//! Every write that changes what happens next (starting a host, finishing the
//! deployment) is fenced by the claim token, so a worker that lost its lease cannot
//! act on a deployment another worker has taken over.

use super::{NewLogLine, Rollback};
use super::{Store, StoreError, is_unique_violation, parse};
use chrono::{DateTime, Utc};
use std::time::Duration;
use uuid::Uuid;
use vesemir_model::deployment::{
    AdminState, Counters, DeploymentRequest, DeploymentState, HostState, LogStream, StepState, StoredRequest,
};
use vesemir_model::event::Event;

/// A deployment this worker now holds.
#[derive(Debug, Clone)]
pub struct ClaimedDeployment {
    pub id: Uuid,
    pub request: DeploymentRequest,
    /// The deployment this one rolls back.
    pub rollback_of: Option<Uuid>,
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
        /// How long the lease still runs, by the database's clock.
        remaining: Duration,
    },
    /// Queued behind an older deployment of the same service to the same cluster.
    /// When that one ends, the store queues this one again (see [`Store::finish`]).
    Waiting {
        behind: Uuid,
    },
    /// No such deployment.
    Missing,
}

/// A host to roll, with its place in the rollout (see [`crate::plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedHost {
    pub name: String,
    pub address: String,
    pub wave: i32,
    /// The version it goes to, when not the deployment's (a rollback's hosts each
    /// return to their own).
    pub version: Option<String>,
}

impl PlannedHost {
    /// A host in the first wave, to the deployment's version.
    pub fn new(name: &str, address: &str) -> Self {
        Self { name: name.to_owned(), address: address.to_owned(), wave: 0, version: None }
    }
}

/// A stored host as the rollout sees it when it (re)starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunHost {
    pub name: String,
    pub address: String,
    pub wave: i32,
    pub state: HostState,
    /// The version it goes to, when not the deployment's.
    pub version: Option<String>,
    /// Where Vesemir last meant the host's server to be in the load balancers
    /// recorded before each change; None if untouched. A host found `running` by a
    /// new holder may be out of rotation by this much.
    pub load_balancer: Option<AdminState>,
}

impl Store {
    /// Takes the deployment if nobody holds a live lease on it and, for a queued
    /// deployment, if its target is free and no deployment of that target was
    /// submitted before it and still waits.
    pub async fn claim(&self, id: Uuid, token: &str, lease_seconds: u64) -> Result<Claim, StoreError> {
        let claimed = sqlx::query_as::<_, (sqlx::types::Json<StoredRequest>, Option<Uuid>)>(concat!(
            "UPDATE deployments SET worker_id = $2, \
                 lease_expires_at = now() + make_interval(secs => $3), \
                 state = CASE WHEN state = 'queued' THEN 'running' ELSE state END, \
                 started_at = COALESCE(started_at, now()), reaps = 0 \
             WHERE id = $1 AND state IN ('queued', 'running', 'cancelling') \
               AND (worker_id IS NULL OR lease_expires_at < now()) \
               AND NOT (state = 'queued' AND (request->>'dry_run')::boolean IS NOT TRUE AND ",
            waits_behind!("deployments"),
            ") RETURNING request, rollback_of",
        ))
        .bind(id)
        .bind(token)
        .bind(lease_seconds as f64)
        .fetch_optional(&self.pool)
        .await;
        match claimed {
            Ok(Some((request, rollback_of))) => {
                return Ok(Claim::Claimed(Box::new(ClaimedDeployment {
                    id,
                    request: request.0.0,
                    rollback_of,
                    token: token.to_owned(),
                })));
            }
            Ok(None) => {}
            // Two claims of one target raced past the check: the index let one through.
            Err(e) if is_unique_violation(&e, "deployments_one_rollout_per_target") => {}
            Err(e) => return Err(e.into()),
        }

        // The remaining lease is computed by the database, whose clock set it.
        type Row = (String, Option<String>, Option<DateTime<Utc>>, Option<f64>, Option<Uuid>);
        let row: Option<Row> = sqlx::query_as(concat!(
            "SELECT state, worker_id, lease_expires_at, \
                    GREATEST(EXTRACT(EPOCH FROM lease_expires_at - now()), 0)::float8, \
                    (SELECT other.id FROM deployments other \
                     WHERE other.service = d.service AND other.cluster = d.cluster AND other.id <> d.id AND ",
            blocks_target!("other"),
            " AND (other.state <> 'queued' OR other.queue_seq < d.queue_seq) \
                     ORDER BY other.state = 'queued', other.queue_seq LIMIT 1) \
             FROM deployments d WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => Claim::Missing,
            Some((state, holder, until, remaining, behind)) => {
                let state: DeploymentState = parse(&state)?;
                let remaining = Duration::from_secs_f64(remaining.unwrap_or(0.0));
                match (holder, until) {
                    _ if state.is_rolled_out() => Claim::Finished(state),
                    (None, _) if state == DeploymentState::Queued && behind.is_some() => {
                        Claim::Waiting { behind: behind.unwrap_or_default() }
                    }
                    (Some(token), Some(until)) => Claim::HeldBy { token, until, remaining },
                    // Released between the two statements: the caller tries again.
                    _ => Claim::HeldBy { token: String::new(), until: Utc::now(), remaining: Duration::ZERO },
                }
            }
        })
    }

    /// Extends the lease; false when the claim was lost.
    pub async fn renew_lease(&self, id: Uuid, token: &str, lease_seconds: u64) -> Result<bool, StoreError> {
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

    /// Gives the deployment up unfinished and, in the same statement, queues its id
    /// again through the outbox, so another worker resumes it even if this worker's
    /// message cannot be requeued (a dead channel, a delivery limit). Returns false
    /// when the claim was already gone.
    pub async fn release(&self, id: Uuid, token: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(concat!(
            "WITH released AS ( \
                 UPDATE deployments SET worker_id = NULL, lease_expires_at = now() \
                 WHERE id = $1 AND worker_id = $2 RETURNING id) \
             INSERT INTO outbox (deployment_id) SELECT id FROM released ",
            supersede!(),
        ))
        .bind(id)
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the outcome and drops the claim; false when the claim was lost. In the
    /// same transaction, the next deployment waiting for the same target (the first
    /// queued one) is queued again through the outbox: a wake-up that cannot be lost.
    ///
    /// A deployment whose cancel was accepted ends `cancelled`, whatever its rollout
    /// concluded: a cancel that lands after the rollout's last look still wins, so
    /// the final state always agrees with `cancelled_by`.
    ///
    /// A failed deployment given a `rollback` ends `rolling_back`, and the rollback is
    /// stored and queued in the same transaction, first in its target's queue. A
    /// rollback that ends settles the deployment it undid: `rolled_back` when it
    /// succeeded, else an automatic one's `failed`.
    pub async fn finish(
        &self,
        id: Uuid,
        token: &str,
        state: DeploymentState,
        error: Option<&str>,
        rollback: Option<&Rollback>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        type Ended = (String, String, String, Option<String>, String, i64, Option<Uuid>);
        let ended: Option<Ended> = sqlx::query_as(
            "UPDATE deployments SET \
                 state = CASE WHEN state = 'cancelling' AND $3 <> 'planned' THEN 'cancelled' \
                              WHEN $3 = 'failed' AND $5 THEN 'rolling_back' ELSE $3 END, \
                 error = CASE WHEN state = 'cancelling' AND $3 NOT IN ('cancelled', 'planned') \
                     THEN 'cancelled by ' || cancelled_by || COALESCE('; ' || $4, ' after every host had finished') \
                     ELSE $4 END, \
                 finished_at = now(), worker_id = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND worker_id = $2 \
             RETURNING service, cluster, state, error, requested_by, queue_seq, rollback_of",
        )
        .bind(id)
        .bind(token)
        .bind(state.as_str())
        .bind(error)
        .bind(rollback.is_some())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((service, cluster, state, error, requested_by, queue_seq, rollback_of)) = ended else {
            return Ok(false);
        };
        let state: DeploymentState = parse(&state)?;
        // The last event of the stream, committed with the state it announces.
        let mut line = match &error {
            Some(error) => format!("deployment {state}: {error}"),
            None => format!("deployment {state}"),
        };
        if let (DeploymentState::RollingBack, Some(rollback)) = (state, rollback) {
            let by = super::rollback::insert(&mut tx, rollback, &requested_by, Some(queue_seq)).await?;
            line.push_str(&format!("; rolled back by deployment {by}"));
            let detail =
                serde_json::json!({ "rollback_of": id, "version": rollback.request.version, "automatic": true });
            super::access::audit(&mut tx, &requested_by, "rollback", Some(by), detail).await?;
        }
        let event = Event::State { state, error: error.clone() };
        let last = NewLogLine { host: None, stream: LogStream::System, line, at: Utc::now(), event: Some(event) };
        super::logs::append(&mut tx, id, &[last]).await?;
        if let Some(undone) = rollback_of {
            settle_undone(&mut tx, undone, id, state).await?;
        }
        wake_next(&mut tx, &service, &cluster).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Stores the discovered hosts, unless an earlier claim already did (a resumed
    /// deployment keeps its hosts and their progress). Returns the stored hosts.
    pub async fn plan_hosts(&self, id: Uuid, hosts: &[PlannedHost]) -> Result<Vec<RunHost>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (existing,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM hosts WHERE deployment_id = $1").bind(id).fetch_one(&mut *tx).await?;
        if existing == 0 {
            insert_hosts(&mut tx, id, hosts).await?;
        }
        tx.commit().await?;
        self.run_hosts(id).await
    }

    /// The stored hosts of a deployment, in rollout order.
    pub async fn run_hosts(&self, id: Uuid) -> Result<Vec<RunHost>, StoreError> {
        type Row = (String, String, i32, String, Option<String>, Option<String>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT name, address, wave, state, version, load_balancer FROM hosts \
             WHERE deployment_id = $1 ORDER BY position",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(name, address, wave, state, version, load_balancer)| {
                let load_balancer = load_balancer.as_deref().map(parse).transpose()?;
                Ok(RunHost { name, address, wave, state: parse(&state)?, version, load_balancer })
            })
            .collect()
    }

    /// Marks a host running (again: a host interrupted mid-way starts over from its
    /// first step); false when the claim was lost.
    pub async fn start_host(&self, id: Uuid, token: &str, host: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let started = sqlx::query(concat!(
            "UPDATE hosts SET state = 'running', started_at = now(), finished_at = NULL, error = NULL \
             WHERE deployment_id = $1 AND name = $3 AND ",
            live_claim!()
        ))
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

    /// Records a host's outcome; false when the claim was lost (the host's result
    /// then belongs to whoever took over).
    pub async fn finish_host(
        &self,
        id: Uuid,
        token: &str,
        host: &str,
        state: HostState,
        error: Option<&str>,
        load_balancer: Option<AdminState>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE hosts SET state = $4, error = $5, finished_at = now(), \
                 load_balancer = COALESCE($6, load_balancer) \
             WHERE deployment_id = $1 AND name = $3 \
               AND EXISTS (SELECT 1 FROM deployments WHERE id = $1 AND worker_id = $2)",
        )
        .bind(id)
        .bind(token)
        .bind(host)
        .bind(state.as_str())
        .bind(error)
        .bind(load_balancer.map(AdminState::as_str))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records where the host's server is meant to be in the load balancers, while the
    /// claim's lease is live; false when it is not (the change must then not be made).
    pub async fn record_load_balancer(
        &self,
        id: Uuid,
        token: &str,
        host: &str,
        state: AdminState,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(concat!(
            "UPDATE hosts SET load_balancer = $4 WHERE deployment_id = $1 AND name = $3 AND ",
            live_claim!()
        ))
        .bind(id)
        .bind(token)
        .bind(host)
        .bind(state.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The backend's error counters recorded for the deployment so far.
    pub async fn lb_errors(&self, id: Uuid) -> Result<Option<Counters>, StoreError> {
        let row: Option<(Option<sqlx::types::Json<Counters>>,)> =
            sqlx::query_as("SELECT lb_errors FROM deployments WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(counters,)| counters).map(|c| c.0))
    }

    /// Records the backend's error counters of a window as each of `hosts`' (none
    /// when hosts' windows overlap) and the deployment's running total, in one
    /// statement; false when the claim was lost.
    pub async fn record_lb_errors(
        &self,
        id: Uuid,
        token: &str,
        hosts: &[&str],
        window: &Counters,
        total: &Counters,
    ) -> Result<bool, StoreError> {
        let recorded: Option<(Uuid,)> = sqlx::query_as(
            "WITH windows AS ( \
                 UPDATE hosts SET lb_errors = $4 WHERE deployment_id = $1 AND name = ANY($3) \
                   AND EXISTS (SELECT 1 FROM deployments WHERE id = $1 AND worker_id = $2)) \
             UPDATE deployments SET lb_errors = $5 WHERE id = $1 AND worker_id = $2 RETURNING id",
        )
        .bind(id)
        .bind(token)
        .bind(hosts)
        .bind(sqlx::types::Json(window))
        .bind(sqlx::types::Json(total))
        .fetch_optional(&self.pool)
        .await?;
        Ok(recorded.is_some())
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
        token: &str,
        host: &str,
        position: i32,
        name: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO steps (deployment_id, host, position, name, state, started_at) \
             SELECT $1, $3, $4, $5, 'running', now() \
             WHERE EXISTS (SELECT 1 FROM deployments WHERE id = $1 AND worker_id = $2) \
             ON CONFLICT (deployment_id, host, position) DO UPDATE \
             SET name = $5, state = 'running', started_at = now(), finished_at = NULL, \
                 exit_code = NULL, output = ''",
        )
        .bind(id)
        .bind(token)
        .bind(host)
        .bind(position)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)] // One column each; a struct would only rename them.
    pub async fn finish_step(
        &self,
        id: Uuid,
        token: &str,
        host: &str,
        position: i32,
        state: StepState,
        exit_code: Option<i32>,
        output: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE steps SET state = $5, exit_code = $6, output = $7, finished_at = now() \
             WHERE deployment_id = $1 AND host = $3 AND position = $4 \
               AND EXISTS (SELECT 1 FROM deployments WHERE id = $1 AND worker_id = $2)",
        )
        .bind(id)
        .bind(token)
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

/// Stores a deployment's planned hosts, in their rollout order.
pub(super) async fn insert_hosts(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
    hosts: &[PlannedHost],
) -> Result<(), StoreError> {
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    let addresses: Vec<&str> = hosts.iter().map(|h| h.address.as_str()).collect();
    let waves: Vec<i32> = hosts.iter().map(|h| h.wave).collect();
    let versions: Vec<Option<&str>> = hosts.iter().map(|h| h.version.as_deref()).collect();
    sqlx::query(
        "INSERT INTO hosts (deployment_id, name, address, wave, version, position) \
         SELECT $1, t.name, t.address, t.wave, t.version, t.ord - 1 \
         FROM unnest($2::text[], $3::text[], $4::int[], $5::text[]) WITH ORDINALITY AS t(name, address, wave, version, ord)",
    )
    .bind(id)
    .bind(&names)
    .bind(&addresses)
    .bind(&waves)
    .bind(&versions)
    .execute(conn)
    .await?;
    Ok(())
}

/// Ends the deployment a rollback undid, as the rollback ended: `rolled_back` when it
/// succeeded; otherwise an automatic rollback's deployment ends `failed`, and one a
/// person asked for stays as it was.
async fn settle_undone(
    conn: &mut sqlx::PgConnection,
    undone: Uuid,
    rollback: Uuid,
    ended: DeploymentState,
) -> Result<(), StoreError> {
    let settled: Option<(String, Option<String>)> = sqlx::query_as(
        "UPDATE deployments SET \
             state = CASE WHEN $3 = 'succeeded' THEN 'rolled_back' ELSE 'failed' END, \
             error = CASE WHEN $3 = 'succeeded' THEN error \
                          ELSE COALESCE(error || '; ', '') || 'its rollback ' || $2 || ' ended ' || $3 END \
         WHERE id = $1 AND (state = 'rolling_back' OR ($3 = 'succeeded' AND state IN ('succeeded', 'failed', 'cancelled'))) \
         RETURNING state, error",
    )
    .bind(undone)
    .bind(rollback.to_string())
    .bind(ended.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some((state, error)) = settled else { return Ok(()) };
    let state: DeploymentState = parse(&state)?;
    let line = match state {
        DeploymentState::RolledBack => format!("deployment rolled_back: deployment {rollback} returned its hosts"),
        _ => format!("deployment {state}: {}", error.clone().unwrap_or_default()),
    };
    let event = Event::State { state, error };
    let last = NewLogLine { host: None, stream: LogStream::System, line, at: Utc::now(), event: Some(event) };
    super::logs::append(conn, undone, &[last]).await
}

/// Queues again the oldest deployment waiting for a target, inside the caller's
/// transaction (the one that frees the target), so the wake-up cannot be lost.
pub(super) async fn wake_next(conn: &mut sqlx::PgConnection, service: &str, cluster: &str) -> Result<(), StoreError> {
    sqlx::query(concat!(
        "INSERT INTO outbox (deployment_id) \
         SELECT id FROM deployments d WHERE service = $1 AND cluster = $2 AND ",
        blocks_target!("d"),
        " AND state = 'queued' ORDER BY queue_seq LIMIT 1 ",
        supersede!(),
    ))
    .bind(service)
    .bind(cluster)
    .execute(conn)
    .await?;
    Ok(())
}
