//! Submitting, reading and listing deployments.

use super::{Store, StoreError, parse};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use uuid::Uuid;
use vesemir_model::access::Scope;
use vesemir_model::deployment::{
    Counters, Deployment, DeploymentRequest, DeploymentState, Host, HostState, Step, StoredRequest, Summary,
};

/// What the API asks the store to record.
#[derive(Debug)]
pub struct NewDeployment<'a> {
    pub request: &'a DeploymentRequest,
    pub requested_by: &'a str,
    pub idempotency_key: Option<&'a str>,
    /// For a retry: the deployment it retries, and its attempt number.
    pub retry_of: Option<(Uuid, i32)>,
}

/// The answer to a submit: a new deployment, or the one an earlier submit with the same
/// Idempotency-Key created.
#[derive(Debug)]
pub enum Submitted {
    Created(Deployment),
    Existing(Deployment),
}

#[derive(Debug, Default)]
pub struct ListFilter {
    pub service: Option<String>,
    pub cluster: Option<String>,
    pub state: Option<DeploymentState>,
    /// Only deployments older than this one (ids are time-ordered).
    pub before: Option<Uuid>,
    pub limit: i64,
    /// Only deployments a scoped token may read.
    pub scope: Scope,
}

#[derive(sqlx::FromRow)]
struct DeploymentRow {
    id: Uuid,
    service: String,
    cluster: String,
    version: String,
    request: sqlx::types::Json<StoredRequest>,
    state: String,
    requested_by: String,
    cancelled_by: Option<String>,
    retry_of: Option<Uuid>,
    attempt: i32,
    rollback_of: Option<Uuid>,
    rolled_back_by: Option<Uuid>,
    error: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    lb_errors: Option<sqlx::types::Json<Counters>>,
}

macro_rules! deployment_columns {
    () => {
        "id, service, cluster, version, request, state, requested_by, cancelled_by, retry_of, attempt, rollback_of, \
         (SELECT r.id FROM deployments r WHERE r.rollback_of = deployments.id ORDER BY r.queue_seq DESC LIMIT 1) \
             AS rolled_back_by, \
         error, created_at, started_at, finished_at, lb_errors"
    };
}

impl DeploymentRow {
    fn into_deployment(self, summary: Summary, hosts: Option<Vec<Host>>) -> Result<Deployment, StoreError> {
        Ok(Deployment {
            id: self.id,
            service: self.service,
            cluster: self.cluster,
            version: self.version,
            state: parse(&self.state)?,
            requested_by: self.requested_by,
            cancelled_by: self.cancelled_by,
            retry_of: self.retry_of,
            attempt: self.attempt,
            rollback_of: self.rollback_of,
            rolled_back_by: self.rolled_back_by,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            error: self.error,
            request: self.request.0.0,
            summary,
            lb_errors: self.lb_errors.map(|c| c.0),
            hosts,
        })
    }
}

#[derive(sqlx::FromRow)]
struct HostRow {
    name: String,
    address: String,
    version: String,
    wave: i32,
    state: String,
    error: Option<String>,
    load_balancer: Option<String>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    lb_errors: Option<sqlx::types::Json<Counters>>,
}

#[derive(sqlx::FromRow)]
struct StepRow {
    host: String,
    name: String,
    state: String,
    exit_code: Option<i32>,
    output: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

/// The hash that tells a retried submit (same request) from a conflicting one.
fn request_hash(request: &DeploymentRequest) -> String {
    // Serializing the typed request gives one canonical form: fields in declaration
    // order, variables sorted, defaults made explicit.
    let canonical = serde_json::to_vec(request).unwrap_or_default();
    Sha256::digest(&canonical).iter().map(|b| format!("{b:02x}")).collect()
}

/// Scope globs as SQL LIKE patterns (`_` in a name is literal; `*` and `?` match).
fn like_patterns(globs: &[String]) -> Vec<String> {
    globs.iter().map(|g| g.replace('_', "\\_").replace('*', "%").replace('?', "_")).collect()
}

impl Store {
    /// The service and cluster of a deployment, to check a caller's scope against.
    pub async fn deployment_target(&self, id: Uuid) -> Result<Option<(String, String)>, StoreError> {
        Ok(sqlx::query_as("SELECT service, cluster FROM deployments WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Records a deployment and its outbox row in one transaction. With an
    /// Idempotency-Key that was seen before, returns the earlier deployment instead
    /// (or refuses, if the request differs).
    pub async fn submit(&self, new: NewDeployment<'_>) -> Result<Submitted, StoreError> {
        let hash = request_hash(new.request);
        let id = Uuid::now_v7();
        let action = if new.retry_of.is_some() { "retry" } else { "submit" };
        let detail = serde_json::json!({ "service": new.request.service, "cluster": new.request.cluster, "version": new.request.version });
        // The deployment, its outbox row and its audit entry in one statement: one
        // round trip and one commit, all or nothing.
        let inserted: Option<(DateTime<Utc>,)> = sqlx::query_as(
            "WITH deployment AS ( \
                 INSERT INTO deployments (id, service, cluster, version, request, requested_by, \
                     idempotency_key, request_hash, retry_of, attempt) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (requested_by, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
                 RETURNING id, created_at), \
             queued AS (INSERT INTO outbox (deployment_id) SELECT id FROM deployment), \
             audited AS (INSERT INTO audit (actor, action, deployment_id, detail) \
                 SELECT $6, $11, id, $12 FROM deployment) \
             SELECT created_at FROM deployment",
        )
        .bind(id)
        .bind(&new.request.service)
        .bind(&new.request.cluster)
        .bind(&new.request.version)
        .bind(sqlx::types::Json(new.request))
        .bind(new.requested_by)
        .bind(new.idempotency_key)
        .bind(&hash)
        .bind(new.retry_of.map(|(of, _)| of))
        .bind(new.retry_of.map_or(1, |(_, attempt)| attempt))
        .bind(action)
        .bind(detail)
        .fetch_optional(&self.pool)
        .await?;

        if let Some((created_at,)) = inserted {
            // Everything a new deployment holds is known here: no need to read it back.
            return Ok(Submitted::Created(Deployment {
                id,
                service: new.request.service.clone(),
                cluster: new.request.cluster.clone(),
                version: new.request.version.clone(),
                state: DeploymentState::Queued,
                requested_by: new.requested_by.to_owned(),
                cancelled_by: None,
                retry_of: new.retry_of.map(|(of, _)| of),
                attempt: new.retry_of.map_or(1, |(_, attempt)| attempt),
                rollback_of: None,
                rolled_back_by: None,
                created_at,
                started_at: None,
                finished_at: None,
                error: None,
                request: new.request.clone(),
                summary: Summary::default(),
                lb_errors: None,
                hosts: Some(Vec::new()),
            }));
        }

        // The key exists: the conflicting insert waited for the first one to commit.
        let key = new.idempotency_key.unwrap_or_default();
        let (id, stored_hash): (Uuid, String) =
            sqlx::query_as("SELECT id, request_hash FROM deployments WHERE requested_by = $2 AND idempotency_key = $1")
                .bind(key)
                .bind(new.requested_by)
                .fetch_one(&self.pool)
                .await?;
        if stored_hash != hash {
            return Err(StoreError::IdempotencyMismatch(key.to_owned()));
        }
        let deployment =
            self.deployment(id).await?.ok_or_else(|| StoreError::Corrupt(format!("deployment {id} vanished")))?;
        Ok(Submitted::Existing(deployment))
    }

    /// One deployment with its hosts and their steps.
    pub async fn deployment(&self, id: Uuid) -> Result<Option<Deployment>, StoreError> {
        let row: Option<DeploymentRow> =
            sqlx::query_as(concat!("SELECT ", deployment_columns!(), " FROM deployments WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else { return Ok(None) };

        let host_rows: Vec<HostRow> = sqlx::query_as(
            "SELECT h.name, h.address, COALESCE(h.version, d.version) AS version, h.wave, h.state, h.error, \
                 h.load_balancer, h.started_at, h.finished_at, h.lb_errors \
             FROM hosts h JOIN deployments d ON d.id = h.deployment_id \
             WHERE h.deployment_id = $1 ORDER BY h.position",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let step_rows: Vec<StepRow> = sqlx::query_as(
            "SELECT host, name, state, exit_code, output, started_at, finished_at \
             FROM steps WHERE deployment_id = $1 ORDER BY host, position",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;

        let mut steps: HashMap<String, Vec<Step>> = HashMap::new();
        for s in step_rows {
            steps.entry(s.host).or_default().push(Step {
                name: s.name,
                state: parse(&s.state)?,
                started_at: s.started_at,
                finished_at: s.finished_at,
                exit_code: s.exit_code,
                output: s.output,
            });
        }
        let mut summary = Summary::default();
        let mut hosts = Vec::with_capacity(host_rows.len());
        for h in host_rows {
            let state: HostState = parse(&h.state)?;
            summary.count(state);
            hosts.push(Host {
                steps: steps.remove(&h.name).unwrap_or_default(),
                name: h.name,
                address: h.address,
                version: h.version,
                wave: h.wave,
                state,
                started_at: h.started_at,
                finished_at: h.finished_at,
                error: h.error,
                load_balancer: h.load_balancer.as_deref().map(parse).transpose()?,
                lb_errors: h.lb_errors.map(|c| c.0),
            });
        }
        row.into_deployment(summary, Some(hosts)).map(Some)
    }

    /// Deployments newest first, without their hosts.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Deployment>, StoreError> {
        let rows: Vec<DeploymentRow> = sqlx::query_as(concat!(
            "SELECT ",
            deployment_columns!(),
            " FROM deployments \
             WHERE ($1::text IS NULL OR service = $1) \
               AND ($2::text IS NULL OR cluster = $2) \
               AND ($3::text IS NULL OR state = $3) \
               AND ($4::uuid IS NULL OR id < $4) \
               AND (cardinality($6::text[]) = 0 OR service LIKE ANY($6)) \
               AND (cardinality($7::text[]) = 0 OR cluster LIKE ANY($7)) \
             ORDER BY id DESC LIMIT $5"
        ))
        .bind(&filter.service)
        .bind(&filter.cluster)
        .bind(filter.state.map(DeploymentState::as_str))
        .bind(filter.before)
        .bind(filter.limit)
        .bind(like_patterns(&filter.scope.services))
        .bind(like_patterns(&filter.scope.clusters))
        .fetch_all(&self.pool)
        .await?;

        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let counts: Vec<(Uuid, String, i64)> = sqlx::query_as(
            "SELECT deployment_id, state, count(*) FROM hosts \
             WHERE deployment_id = ANY($1) GROUP BY deployment_id, state",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut summaries: HashMap<Uuid, Summary> = HashMap::new();
        for (id, state, n) in counts {
            let state: HostState = parse(&state)?;
            let summary = summaries.entry(id).or_default();
            for _ in 0..n {
                summary.count(state);
            }
        }
        rows.into_iter()
            .map(|row| {
                let summary = summaries.remove(&row.id).unwrap_or_default();
                row.into_deployment(summary, None)
            })
            .collect()
    }
}

impl Store {
    /// Only the state, for pollers.
    pub async fn deployment_state(&self, id: Uuid) -> Result<Option<DeploymentState>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT state FROM deployments WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.map(|(s,)| parse(&s)).transpose()
    }
}

/// What the metrics endpoint reports, read in one query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    pub deployments: Vec<(DeploymentState, i64)>,
    pub outbox_pending: i64,
    pub hosts_running: i64,
}

impl Store {
    pub async fn gauges(&self) -> Result<Gauges, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT 'deployments.' || state, count(*) FROM deployments GROUP BY state \
             UNION ALL SELECT 'outbox', count(*) FROM outbox \
             UNION ALL SELECT 'hosts_running', count(*) FROM hosts WHERE state = 'running'",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut gauges = Gauges::default();
        let mut by_state: HashMap<DeploymentState, i64> = HashMap::new();
        for (name, n) in rows {
            match name.as_str() {
                "outbox" => gauges.outbox_pending = n,
                "hosts_running" => gauges.hosts_running = n,
                other => {
                    let state = other.strip_prefix("deployments.").unwrap_or(other);
                    by_state.insert(parse(state)?, n);
                }
            }
        }
        gauges.deployments = DeploymentState::ALL.iter().map(|s| (*s, by_state.get(s).copied().unwrap_or(0))).collect();
        Ok(gauges)
    }
}
