//! Acting on a deployment from outside: cancel and retry.

use super::{Store, StoreError, access, parse};
use crate::access::Caller;
use uuid::Uuid;
use vesemir_model::access::Role;
use vesemir_model::deployment::{DeploymentRequest, DeploymentState, HostState, StoredRequest};
use vesemir_model::event::Event;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// It had not started: it never will.
    Cancelled,
    /// It is rolling out: no new host starts, hosts in flight finish.
    Cancelling,
    /// Already over.
    Final(DeploymentState),
    /// A deployer may cancel only what it requested; this one is someone else's.
    NotYours {
        requested_by: String,
    },
    NotFound,
}

/// What a retry would run again.
#[derive(Debug, Clone)]
pub enum RetryPlan {
    /// The original request narrowed to these hosts, and the next attempt number.
    Hosts {
        request: Box<DeploymentRequest>,
        hosts: Vec<String>,
        attempt: i32,
    },
    /// Still running, or nothing failed, was unreachable or was skipped.
    Refused(String),
    NotFound,
}

impl Store {
    /// Cancels a deployment on behalf of `actor`. A queued one ends at once (and the
    /// next deployment waiting for its target is woken); a running one is marked
    /// `cancelling`, which its worker sees before starting each wave.
    pub async fn cancel(&self, id: Uuid, caller: &Caller) -> Result<Cancel, StoreError> {
        let actor = caller.name.as_str();
        let mut tx = self.pool.begin().await?;
        // The row lock orders this against a worker's claim of the same deployment.
        let row: Option<(String, String, String, String)> =
            sqlx::query_as("SELECT state, service, cluster, requested_by FROM deployments WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((state, service, cluster, requested_by)) = row else { return Ok(Cancel::NotFound) };
        if caller.role < Role::Admin && requested_by != actor {
            return Ok(Cancel::NotYours { requested_by });
        }
        let outcome = match parse::<DeploymentState>(&state)? {
            DeploymentState::Queued => {
                sqlx::query(
                    "UPDATE deployments SET state = 'cancelled', cancelled_by = $2, finished_at = now(), \
                         error = 'cancelled before it started by ' || $2 \
                     WHERE id = $1",
                )
                .bind(id)
                .bind(actor)
                .execute(&mut *tx)
                .await?;
                let event = Event::State {
                    state: DeploymentState::Cancelled,
                    error: Some(format!("cancelled before it started by {actor}")),
                };
                let line = super::NewLogLine {
                    host: None,
                    stream: vesemir_model::deployment::LogStream::System,
                    line: format!("deployment cancelled before it started by {actor}"),
                    at: chrono::Utc::now(),
                    event: Some(event),
                };
                super::logs::append(&mut tx, id, &[line]).await?;
                super::claims::wake_next(&mut tx, &service, &cluster).await?;
                Cancel::Cancelled
            }
            DeploymentState::Running => {
                sqlx::query("UPDATE deployments SET state = 'cancelling', cancelled_by = $2 WHERE id = $1")
                    .bind(id)
                    .bind(actor)
                    .execute(&mut *tx)
                    .await?;
                let line = super::NewLogLine {
                    host: None,
                    stream: vesemir_model::deployment::LogStream::System,
                    line: format!("cancel requested by {actor}: no new host starts"),
                    at: chrono::Utc::now(),
                    event: Some(Event::State { state: DeploymentState::Cancelling, error: None }),
                };
                super::logs::append(&mut tx, id, &[line]).await?;
                Cancel::Cancelling
            }
            // A cancel that changes nothing is still in the audit trail.
            repeated => {
                let detail = serde_json::json!({ "state": state });
                access::audit(&mut tx, actor, "cancel.repeated", Some(id), detail).await?;
                tx.commit().await?;
                return Ok(match repeated {
                    DeploymentState::Cancelling => Cancel::Cancelling,
                    done => Cancel::Final(done),
                });
            }
        };
        access::audit(&mut tx, actor, "cancel", Some(id), serde_json::json!({ "from": state })).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// The hosts a retry of `id` would deploy to: those that failed, were unreachable
    /// or were skipped.
    pub async fn retry_plan(&self, id: Uuid) -> Result<RetryPlan, StoreError> {
        let row: Option<(String, sqlx::types::Json<StoredRequest>, i32)> =
            sqlx::query_as("SELECT state, request, attempt FROM deployments WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let Some((state, request, attempt)) = row else { return Ok(RetryPlan::NotFound) };
        let state: DeploymentState = parse(&state)?;
        if !state.is_final() {
            return Ok(RetryPlan::Refused(format!("deployment {id} is still {state}: cancel it or let it end first")));
        }
        if matches!(state, DeploymentState::RolledBack) {
            return Ok(RetryPlan::Refused(format!(
                "deployment {id} was rolled back: submit its version again if you still want it"
            )));
        }
        if state == DeploymentState::Planned {
            return Ok(RetryPlan::Refused(format!("deployment {id} is a dry run: submit it for real instead")));
        }
        let hosts: Vec<(String, String)> =
            sqlx::query_as("SELECT name, state FROM hosts WHERE deployment_id = $1 ORDER BY position")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        let mut again = Vec::new();
        for (name, host_state) in hosts {
            let host_state: HostState = parse(&host_state)?;
            if matches!(host_state, HostState::Failed | HostState::Unreachable | HostState::Skipped) {
                again.push(name);
            }
        }
        if again.is_empty() {
            return Ok(RetryPlan::Refused(format!(
                "deployment {id} has no host that failed, was unreachable or was skipped: nothing to retry"
            )));
        }
        Ok(RetryPlan::Hosts { request: Box::new(request.0.0), hosts: again, attempt: attempt + 1 })
    }

    /// Whether someone asked to cancel the deployment (read by its worker).
    pub async fn cancel_requested(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT state, cancelled_by FROM deployments WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.filter(|(state, _)| state == "cancelling").map(|(_, by)| by.unwrap_or_default()))
    }
}
