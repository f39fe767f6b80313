//! Submitting, reading and listing deployments.

use super::{Store, StoreError, parse};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::postgres::PgRow;
use std::collections::HashMap;
use uuid::Uuid;
use vesemir_model::access::Scope;
use vesemir_model::deployment::{
    Counters, Deployment, DeploymentRequest, DeploymentState, Host, HostState, Step, StoredRequest, Summary,
};

/// What the API asks the store to record.
#[derive(Debug)]
pub struct NewDeployment {
    pub request: DeploymentRequest,
    pub requested_by: String,
    pub idempotency_key: Option<String>,
    /// For a retry: the deployment it retries, and its attempt number.
    pub retry_of: Option<(Uuid, i32)>,
}

impl NewDeployment {
    fn attempt(&self) -> i32 {
        self.retry_of.map_or(1, |(_, attempt)| attempt)
    }

    /// The deployment as it is the moment it is recorded: everything it holds is
    /// known here, so it need not be read back.
    fn created(self, id: Uuid, created_at: DateTime<Utc>) -> Deployment {
        Deployment {
            id,
            service: self.request.service.clone(),
            cluster: self.request.cluster.clone(),
            version: self.request.version.clone(),
            state: DeploymentState::Queued,
            attempt: self.attempt(),
            requested_by: self.requested_by,
            cancelled_by: None,
            retry_of: self.retry_of.map(|(of, _)| of),
            rollback_of: None,
            rolled_back_by: None,
            created_at,
            started_at: None,
            finished_at: None,
            error: None,
            request: self.request,
            summary: Summary::default(),
            lb_errors: None,
            hosts: Some(Vec::new()),
        }
    }
}

/// A new deployment's columns, one array per column, for one `unnest` insert.
#[derive(Default)]
struct SubmitColumns {
    ids: Vec<Uuid>,
    services: Vec<String>,
    clusters: Vec<String>,
    versions: Vec<String>,
    requests: Vec<String>,
    requested_by: Vec<String>,
    idempotency_keys: Vec<Option<String>>,
    hashes: Vec<String>,
    retry_of: Vec<Option<Uuid>>,
    attempts: Vec<i32>,
}

impl SubmitColumns {
    fn of(news: &[NewDeployment]) -> Self {
        let mut columns = Self::default();
        for new in news {
            let request = &new.request;
            // Serializing the typed request gives one canonical form (fields in
            // declaration order, variables sorted, defaults explicit): it is both what
            // is stored and what the hash that tells a retried submit from a
            // conflicting one is taken of.
            let canonical = serde_json::to_string(request).unwrap_or_default();
            columns.hashes.push(Sha256::digest(canonical.as_bytes()).iter().map(|b| format!("{b:02x}")).collect());
            columns.requests.push(canonical);
            columns.ids.push(Uuid::now_v7());
            columns.services.push(request.service.clone());
            columns.clusters.push(request.cluster.clone());
            columns.versions.push(request.version.clone());
            columns.requested_by.push(new.requested_by.clone());
            columns.idempotency_keys.push(new.idempotency_key.clone());
            columns.retry_of.push(new.retry_of.map(|(of, _)| of));
            columns.attempts.push(new.attempt());
        }
        columns
    }
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

// A deployment's hosts and steps are read by column position, in the order their
// query selects them: on a thousand hosts, looking each column up by name in every
// row took a tenth of a `GET`'s CPU.

macro_rules! host_columns {
    () => {
        "name, address, version, wave, state, error, load_balancer, started_at, finished_at, lb_errors"
    };
}

struct HostRow {
    name: String,
    address: String,
    /// None when the host goes to its deployment's version; a rollback's hosts each have their own.
    version: Option<String>,
    wave: i32,
    state: String,
    error: Option<String>,
    load_balancer: Option<String>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    lb_errors: Option<sqlx::types::Json<Counters>>,
}

impl sqlx::FromRow<'_, PgRow> for HostRow {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            name: row.try_get(0)?,
            address: row.try_get(1)?,
            version: row.try_get(2)?,
            wave: row.try_get(3)?,
            state: row.try_get(4)?,
            error: row.try_get(5)?,
            load_balancer: row.try_get(6)?,
            started_at: row.try_get(7)?,
            finished_at: row.try_get(8)?,
            lb_errors: row.try_get(9)?,
        })
    }
}

macro_rules! step_columns {
    () => {
        "host, position, name, state, exit_code, output, started_at, finished_at"
    };
}

struct StepRow {
    host: String,
    position: i32,
    name: String,
    state: String,
    exit_code: Option<i32>,
    output: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl sqlx::FromRow<'_, PgRow> for StepRow {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            host: row.try_get(0)?,
            position: row.try_get(1)?,
            name: row.try_get(2)?,
            state: row.try_get(3)?,
            exit_code: row.try_get(4)?,
            output: row.try_get(5)?,
            started_at: row.try_get(6)?,
            finished_at: row.try_get(7)?,
        })
    }
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

    /// Records a deployment with its outbox row and its audit entry. With an
    /// Idempotency-Key that was seen before, returns the earlier deployment instead
    /// (or refuses, if the request differs).
    pub async fn submit(&self, new: NewDeployment) -> Result<Submitted, StoreError> {
        let answer = self.submit_many(vec![new]).await.into_iter().next();
        answer.unwrap_or_else(|| Err(StoreError::Corrupt("a submit got no answer".to_owned())))
    }

    /// Records deployments as [`Store::submit`] does, all in one statement: one round
    /// trip and one commit, however many there are. Each gets its own answer, in
    /// order. If the statement fails for a reason other than the database being
    /// unavailable, each is tried alone, so that one request cannot fail the others.
    pub async fn submit_many(&self, news: Vec<NewDeployment>) -> Vec<Result<Submitted, StoreError>> {
        let columns = SubmitColumns::of(&news);
        let inserted = match self.insert_submits(&columns).await {
            Ok(inserted) => inserted,
            Err(e) if news.len() == 1 => return vec![Err(e)],
            Err(e) if e.is_unavailable() => {
                let why = e.to_string();
                let mut answers = vec![Err(e)];
                answers.extend(news.iter().skip(1).map(|_| Err(StoreError::Unavailable(why.clone()))));
                return answers;
            }
            Err(e) => {
                tracing::warn!(error = %e, submits = news.len(), "a batch of submits failed; writing them one by one");
                let mut answers = Vec::with_capacity(news.len());
                for new in news {
                    answers.push(Box::pin(self.submit(new)).await);
                }
                return answers;
            }
        };
        let mut answers = Vec::with_capacity(news.len());
        for ((new, id), hash) in news.into_iter().zip(columns.ids).zip(&columns.hashes) {
            answers.push(match inserted.get(&id) {
                Some(&created_at) => Ok(Submitted::Created(new.created(id, created_at))),
                None => self.earlier_submit(&new, hash).await,
            });
        }
        answers
    }

    /// Inserts the deployments, their outbox rows and audit entries; returns when each
    /// one inserted was created. One whose Idempotency-Key its token used before is
    /// not inserted.
    async fn insert_submits(&self, c: &SubmitColumns) -> Result<HashMap<Uuid, DateTime<Utc>>, StoreError> {
        let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
            "WITH input AS ( \
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::text[], $8::text[], $9::uuid[], $10::int[]) \
                 AS i (id, service, cluster, version, request, requested_by, idempotency_key, request_hash, \
                     retry_of, attempt)), \
             deployment AS ( \
                 INSERT INTO deployments (id, service, cluster, version, request, requested_by, \
                     idempotency_key, request_hash, retry_of, attempt) \
                 SELECT id, service, cluster, version, request::jsonb, requested_by, idempotency_key, \
                     request_hash, retry_of, attempt FROM input \
                 ON CONFLICT (requested_by, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
                 RETURNING id, created_at), \
             queued AS (INSERT INTO outbox (deployment_id) SELECT id FROM deployment), \
             audited AS (INSERT INTO audit (actor, action, deployment_id, detail) \
                 SELECT i.requested_by, CASE WHEN i.retry_of IS NULL THEN 'submit' ELSE 'retry' END, i.id, \
                     jsonb_build_object('service', i.service, 'cluster', i.cluster, 'version', i.version) \
                 FROM input i JOIN deployment USING (id)) \
             SELECT id, created_at FROM deployment",
        )
        .bind(&c.ids)
        .bind(&c.services)
        .bind(&c.clusters)
        .bind(&c.versions)
        .bind(&c.requests)
        .bind(&c.requested_by)
        .bind(&c.idempotency_keys)
        .bind(&c.hashes)
        .bind(&c.retry_of)
        .bind(&c.attempts)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// The deployment an earlier submit with this one's Idempotency-Key created, if it
    /// asked for the same (its request's hash is `hash`).
    async fn earlier_submit(&self, new: &NewDeployment, hash: &str) -> Result<Submitted, StoreError> {
        // The conflicting insert waited for the first one to commit.
        let key = new.idempotency_key.as_deref().unwrap_or_default();
        let (id, stored_hash): (Uuid, String) =
            sqlx::query_as("SELECT id, request_hash FROM deployments WHERE requested_by = $2 AND idempotency_key = $1")
                .bind(key)
                .bind(&new.requested_by)
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

        let host_rows: Vec<HostRow> = sqlx::query_as(concat!(
            "SELECT ",
            host_columns!(),
            " FROM hosts WHERE deployment_id = $1 ORDER BY position"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        // Unordered: PostgreSQL sorting thousands of rows by a text column costs more
        // than the rest of the read, and an integer sort here is nearly free.
        let mut step_rows: Vec<StepRow> =
            sqlx::query_as(concat!("SELECT ", step_columns!(), " FROM steps WHERE deployment_id = $1"))
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        step_rows.sort_unstable_by_key(|s| s.position);

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
                version: h.version.unwrap_or_else(|| row.version.clone()),
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
