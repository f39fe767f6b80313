//! Rollbacks: which hosts a deployment changed and the version each had before it, and
//! the rollback deployment that returns them there.
//!
//! A rollback is a deployment like any other (one per target at a time, the same
//! playbook, its own hosts, steps and logs), linked to the one it undoes by
//! `rollback_of`. Its hosts are planned when it is created, each with its own version,
//! so a worker runs it as it would resume any deployment.

use super::{NewLogLine, PlannedHost, Store, StoreError, logs};
use crate::plan;
use chrono::Utc;
use std::collections::BTreeMap;
use uuid::Uuid;
use vesemir_model::deployment::{Deployment, DeploymentRequest, LogStream, OnFailure, StoredRequest, Strategy};

/// A host a deployment changed, with the version it had before (if any is on record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackTarget {
    pub name: String,
    pub address: String,
    /// The version the deployment put there (or tried to).
    pub current: String,
    /// The version of the last deployment that succeeded on the host before this one.
    pub previous: Option<String>,
}

/// A rollback ready to be stored.
#[derive(Debug, Clone)]
pub struct Rollback {
    pub of: Uuid,
    /// The undone deployment's request, to the version most hosts return to, never
    /// rolled back itself.
    pub request: DeploymentRequest,
    /// Each host to the version it returns to, in rollout order.
    pub hosts: Vec<PlannedHost>,
    /// What the rollback's log says first: which hosts are left as they are, and why.
    pub notes: Vec<String>,
}

/// Why there is nothing to roll back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NothingToRollBack(pub String);

impl Rollback {
    /// Returns every target to `to`, or else to its own previous version; a target with
    /// neither is left as it is, and the rollback's log says so.
    pub fn plan(
        of: Uuid,
        original: &DeploymentRequest,
        targets: Vec<RollbackTarget>,
        to: Option<&str>,
        strategy: Strategy,
    ) -> Result<Self, NothingToRollBack> {
        if targets.is_empty() {
            return Err(NothingToRollBack(format!("deployment {of} changed no host")));
        }
        let mut notes = Vec::new();
        let mut hosts = Vec::new();
        for target in targets {
            match to.map(str::to_owned).or(target.previous) {
                Some(version) => hosts
                    .push(PlannedHost { version: Some(version), ..PlannedHost::new(&target.name, &target.address) }),
                None => notes.push(format!(
                    "{}: no earlier version on record, left on {} as it is",
                    target.name, target.current
                )),
            }
        }
        let Some(version) = most_common(hosts.iter().filter_map(|h| h.version.as_deref())) else {
            return Err(NothingToRollBack(format!("no host deployment {of} changed has an earlier version on record")));
        };
        let request = DeploymentRequest {
            version,
            hosts: hosts.iter().map(|h| h.name.clone()).collect(),
            on_failure: Some(OnFailure::Stop),
            canary: false,
            dry_run: false,
            ..original.clone()
        };
        let hosts = plan::plan(hosts, strategy, request.concurrency, false);
        notes.insert(
            0,
            format!("rollback of deployment {of}: {} hosts return to the version each had before it", hosts.len()),
        );
        Ok(Self { of, request, hosts, notes })
    }
}

/// The value that occurs most often, the smallest of those tied.
fn most_common<'a>(values: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    let top = counts.values().copied().max()?;
    counts.into_iter().find(|(_, n)| *n == top).map(|(v, _)| v.to_owned())
}

/// What `vesemir rollback` would undo on a target.
#[derive(Debug)]
pub enum Undoable {
    /// The latest deployment that ended and is not a rollback nor rolled back.
    Deployment { id: Uuid, request: Box<DeploymentRequest> },
    /// A deployment of the target is queued or rolling out: it must end first.
    Busy { id: Uuid },
    /// Nothing was ever deployed there.
    Nothing,
}

impl Store {
    /// The hosts deployment `of` changed, each with the version it had before: those
    /// that succeeded, and those that failed after starting one of `changing_steps`
    /// (any step, when None).
    pub async fn rollback_targets(
        &self,
        of: Uuid,
        changing_steps: Option<&[String]>,
    ) -> Result<Vec<RollbackTarget>, StoreError> {
        let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT h.name, h.address, COALESCE(h.version, d.version), \
                 (SELECT COALESCE(p.version, pd.version) FROM hosts p JOIN deployments pd ON pd.id = p.deployment_id \
                  WHERE pd.service = d.service AND pd.cluster = d.cluster AND p.name = h.name \
                    AND p.state = 'succeeded' AND p.deployment_id <> d.id AND p.finished_at < h.started_at \
                    AND (pd.request->>'dry_run')::boolean IS NOT TRUE \
                  ORDER BY p.finished_at DESC LIMIT 1) \
             FROM hosts h JOIN deployments d ON d.id = h.deployment_id \
             WHERE h.deployment_id = $1 AND (h.state = 'succeeded' OR (h.state IN ('failed', 'unreachable') \
                 AND EXISTS (SELECT 1 FROM steps s WHERE s.deployment_id = h.deployment_id AND s.host = h.name \
                             AND ($2::text[] IS NULL OR s.name = ANY($2))))) \
             ORDER BY h.position",
        )
        .bind(of)
        .bind(changing_steps)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(name, address, current, previous)| RollbackTarget { name, address, current, previous })
            .collect())
    }

    /// The deployment a rollback of the target would undo.
    pub async fn undoable(&self, service: &str, cluster: &str) -> Result<Undoable, StoreError> {
        let busy: Option<(Uuid,)> = sqlx::query_as(concat!(
            "SELECT id FROM deployments d WHERE service = $1 AND cluster = $2 AND ",
            blocks_target!("d"),
            " ORDER BY queue_seq LIMIT 1"
        ))
        .bind(service)
        .bind(cluster)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((id,)) = busy {
            return Ok(Undoable::Busy { id });
        }
        let latest: Option<(Uuid, sqlx::types::Json<StoredRequest>)> = sqlx::query_as(
            "SELECT id, request FROM deployments \
             WHERE service = $1 AND cluster = $2 AND rollback_of IS NULL \
               AND state IN ('succeeded', 'failed', 'cancelled') \
             ORDER BY queue_seq DESC LIMIT 1",
        )
        .bind(service)
        .bind(cluster)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match latest {
            Some((id, request)) => Undoable::Deployment { id, request: Box::new(request.0.0) },
            None => Undoable::Nothing,
        })
    }

    /// Records a rollback someone asked for, queued like any submit. Refused while
    /// another rollback of the same deployment is queued or rolling out.
    pub async fn submit_rollback(&self, rollback: &Rollback, requested_by: &str) -> Result<Deployment, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The lock orders two rollbacks of one deployment asked for at once.
        sqlx::query("SELECT 1 FROM deployments WHERE id = $1 FOR UPDATE").bind(rollback.of).execute(&mut *tx).await?;
        let pending: Option<(Uuid,)> = sqlx::query_as(
            "SELECT id FROM deployments WHERE rollback_of = $1 AND state IN ('queued', 'running', 'cancelling')",
        )
        .bind(rollback.of)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((other,)) = pending {
            return Err(StoreError::Conflict(format!(
                "deployment {} is already being rolled back by {other}",
                rollback.of
            )));
        }
        let id = insert(&mut tx, rollback, requested_by, None).await?;
        sqlx::query("INSERT INTO outbox (deployment_id) VALUES ($1)").bind(id).execute(&mut *tx).await?;
        let detail = serde_json::json!({ "rollback_of": rollback.of, "version": rollback.request.version });
        super::access::audit(&mut tx, requested_by, "rollback", Some(id), detail).await?;
        tx.commit().await?;
        self.deployment(id).await?.ok_or_else(|| StoreError::Corrupt(format!("deployment {id} vanished")))
    }
}

/// Stores a rollback deployment with its planned hosts and its first log lines, inside
/// the caller's transaction, which also queues it. `queue_seq` puts it in the undone
/// deployment's place in the target's queue (an automatic rollback goes before
/// anything submitted after the deployment it undoes, and the finish that frees the
/// target wakes it as the next in line).
pub(super) async fn insert(
    conn: &mut sqlx::PgConnection,
    rollback: &Rollback,
    requested_by: &str,
    queue_seq: Option<i64>,
) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    let request = &rollback.request;
    sqlx::query(
        "INSERT INTO deployments (id, service, cluster, version, request, requested_by, request_hash, rollback_of, \
             queue_seq) OVERRIDING SYSTEM VALUE \
         VALUES ($1, $2, $3, $4, $5, $6, '', $7, \
             COALESCE($8, nextval(pg_get_serial_sequence('deployments', 'queue_seq'))))",
    )
    .bind(id)
    .bind(&request.service)
    .bind(&request.cluster)
    .bind(&request.version)
    .bind(sqlx::types::Json(request))
    .bind(requested_by)
    .bind(rollback.of)
    .bind(queue_seq)
    .execute(&mut *conn)
    .await?;
    super::claims::insert_hosts(&mut *conn, id, &rollback.hosts).await?;
    let now = Utc::now();
    let lines: Vec<NewLogLine> = rollback
        .notes
        .iter()
        .map(|line| NewLogLine { host: None, stream: LogStream::System, line: line.clone(), at: now, event: None })
        .collect();
    logs::append(&mut *conn, id, &lines).await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, previous: Option<&str>) -> RollbackTarget {
        RollbackTarget {
            name: name.into(),
            address: "10.0.0.1".into(),
            current: "2.0".into(),
            previous: previous.map(str::to_owned),
        }
    }

    fn request() -> DeploymentRequest {
        serde_json::from_value(serde_json::json!({
            "service": "s", "cluster": "c", "version": "2.0", "concurrency": 2, "canary": true,
            "on_failure": "rollback"
        }))
        .unwrap()
    }

    #[test]
    fn each_host_returns_to_its_own_version_and_one_without_any_is_left_and_said() {
        let targets =
            vec![target("c", Some("1.0")), target("a", Some("1.1")), target("b", None), target("d", Some("1.0"))];
        let rollback = Rollback::plan(Uuid::nil(), &request(), targets, None, Strategy::Waves).unwrap();
        let planned: Vec<(&str, i32, Option<&str>)> =
            rollback.hosts.iter().map(|h| (h.name.as_str(), h.wave, h.version.as_deref())).collect();
        assert_eq!(planned, [("a", 0, Some("1.1")), ("c", 0, Some("1.0")), ("d", 1, Some("1.0"))]);
        assert_eq!(rollback.request.version, "1.0", "most hosts return to 1.0");
        assert_eq!(rollback.request.on_failure, Some(OnFailure::Stop), "a rollback is never rolled back");
        assert!(!rollback.request.canary);
        assert!(rollback.notes.iter().any(|n| n == "b: no earlier version on record, left on 2.0 as it is"));
    }

    #[test]
    fn a_version_asked_for_applies_to_every_host() {
        let targets = vec![target("a", Some("1.1")), target("b", None)];
        let rollback = Rollback::plan(Uuid::nil(), &request(), targets, Some("0.9"), Strategy::Waves).unwrap();
        assert!(rollback.hosts.iter().all(|h| h.version.as_deref() == Some("0.9")));
        assert_eq!((rollback.hosts.len(), rollback.request.version.as_str()), (2, "0.9"));
    }

    #[test]
    fn nothing_to_return_to_is_an_error_that_says_so() {
        let none = Rollback::plan(Uuid::nil(), &request(), vec![target("a", None)], None, Strategy::Waves);
        assert!(none.unwrap_err().0.contains("earlier version"));
        let empty = Rollback::plan(Uuid::nil(), &request(), Vec::new(), None, Strategy::Waves);
        assert!(empty.unwrap_err().0.contains("changed no host"));
    }
}
