//! `/v1/deployments`: submit, read, list, logs.

use crate::AppState;
use crate::auth::{refuse, require, require_scope, require_scope_of};
use crate::error::ApiError;
use crate::extract::{DeploymentId, Json, Query};
use crate::routes::openapi::{NotFound, PayloadTooLarge, UnsupportedMediaType};
use crate::routes::{Answer, page_limit};
use crate::validate;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;
use vesemir_core::access::Caller;
use vesemir_core::store::{Cancel, ListFilter, NewDeployment, RetryPlan, Submitted};
use vesemir_model::access::{Role, glob};
use vesemir_model::api::{DeploymentPage, ErrorBody, LogPage};
use vesemir_model::deployment::{Deployment, DeploymentRequest, DeploymentState, is_host_name, is_identifier};
use vesemir_model::notification::DeliveryLog;

const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 100;
const DEFAULT_LOG_LINES: i64 = 1000;
const MAX_LOG_LINES: i64 = 5000;

/// A name filter from a query string: anything but an identifier cannot match, and
/// some bytes (NUL) cannot even be sent to the database.
fn name_filter(field: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if !is_identifier(&v) => {
            Err(ApiError::bad_request("invalid_query", format!("{field} must match [a-z0-9][a-z0-9._-]{{0,62}}")))
        }
        other => Ok(other),
    }
}

/// Submit a deployment
///
/// Answered once the deployment and its outbox row are committed; the id is then
/// published to the queue.
#[utoipa::path(
    post, path = "/v1/deployments", operation_id = "submitDeployment", tag = "deployments",
    request_body = DeploymentRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried submit safe: the same key from the same token with the same body returns the first deployment (200); with another body, 422. A key belongs to the token that sent it: another token's use of it is a new submit.")),
    responses(
        (status = 200, description = "A repeat of an earlier submit with the same Idempotency-Key and body: that deployment, as it is now.", body = Deployment),
        (status = 202, description = "Accepted: recorded and queued; `state` is `queued` and `hosts` is empty.", body = Deployment,
            headers(("Location" = String, description = "The deployment's URL."))),
        (status = 400, description = "malformed_json, invalid_body (not an object, an unknown field, a wrong type), invalid_idempotency_key, or a refused value: unknown_service, unknown_cluster, unknown_host, invalid_version, invalid_hosts, invalid_selector, invalid_executor, invalid_concurrency, invalid_weight, invalid_sleep_seconds, invalid_vars, invalid_verify.", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "The Idempotency-Key was already used with a different request (code idempotency_key_reused).", body = ErrorBody),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(request): Json<DeploymentRequest>,
) -> Answer {
    require_scope(&state, &caller, (&request.service, &request.cluster), "deploying", None).await?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => {
            let key = value.to_str().map_err(|_| {
                ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key must be visible ASCII")
            })?;
            validate::idempotency_key(key)?;
            Some(key)
        }
    };
    validate::request(&state.config(), &request)?;

    let new = NewDeployment {
        request,
        requested_by: caller.name.clone(),
        idempotency_key: key.map(str::to_owned),
        retry_of: None,
    };
    let submitted = state.submitter.submit(new).await?;
    let (status, deployment) = match submitted {
        Submitted::Created(d) => {
            // Committed: now hand the id to the relay. If its queue is full or the
            // broker is down, the outbox sweep publishes it later.
            let _ = state.nudge.try_send(d.id);
            tracing::info!(deployment = %d.id, service = %d.service, cluster = %d.cluster, version = %d.version, "accepted");
            (StatusCode::ACCEPTED, d)
        }
        Submitted::Existing(d) => (StatusCode::OK, d),
    };
    let location = format!("/v1/deployments/{}", deployment.id);
    Ok((status, [(header::LOCATION, location)], axum::Json(deployment)).into_response())
}

/// A deployment with its summary, hosts and steps
#[utoipa::path(
    get, path = "/v1/deployments/{id}", operation_id = "getDeployment", tag = "deployments",
    params(DeploymentId),
    responses(
        (status = 200, description = "The deployment, with `hosts`.", body = Deployment),
        (status = 400, description = "invalid_id.", body = ErrorBody),
        (status = 404, response = NotFound),
    )
)]
pub async fn get(State(state): State<AppState>, caller: Caller, DeploymentId(id): DeploymentId) -> Answer {
    require_scope_of(&state, &caller, id, "reading a deployment").await?;
    match state.store.deployment(id).await? {
        Some(d) => Ok(axum::Json(d).into_response()),
        None => Err(ApiError::NotFound(format!("deployment {id} does not exist"))),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only this service's deployments.
    service: Option<String>,
    /// Only this cluster's.
    cluster: Option<String>,
    /// Only deployments in this state.
    #[param(value_type = Option<DeploymentState>)]
    state: Option<String>,
    /// Deployments per page.
    #[param(minimum = 1, maximum = 100, default = 20)]
    limit: Option<i64>,
    /// A `next_cursor` from an earlier page: deployments older than it.
    #[param(value_type = Option<Uuid>)]
    cursor: Option<String>,
}

/// List deployments, newest first
#[utoipa::path(
    get, path = "/v1/deployments", operation_id = "listDeployments", tag = "deployments",
    params(ListParams),
    responses(
        (status = 200, description = "A page of deployments, without their hosts.", body = DeploymentPage),
        (status = 400, description = "invalid_limit, invalid_state, invalid_cursor, or invalid_query (a filter that is not an identifier, an unknown or malformed parameter).", body = ErrorBody),
    )
)]
pub async fn list(State(state): State<AppState>, caller: Caller, Query(params): Query<ListParams>) -> Answer {
    let limit = page_limit(params.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let deployment_state = params
        .state
        .as_deref()
        .map(|s| {
            s.parse::<DeploymentState>().map_err(|_| {
                let known: Vec<&str> = DeploymentState::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::bad_request("invalid_state", format!("state must be one of {}", known.join(", ")))
            })
        })
        .transpose()?;
    let before = params
        .cursor
        .as_deref()
        .map(|c| {
            Uuid::parse_str(c).map_err(|_| ApiError::bad_request("invalid_cursor", "cursor is not one this API gave"))
        })
        .transpose()?;
    // A scoped token lists what its scope reaches; asking for more is refused.
    let filter = ListFilter {
        service: name_filter("service", params.service)?,
        cluster: name_filter("cluster", params.cluster)?,
        state: deployment_state,
        before,
        limit,
        scope: caller.scope.clone(),
    };
    let outside = |patterns: &[String], name: &Option<String>| {
        name.as_deref().is_some_and(|n| !patterns.is_empty() && !patterns.iter().any(|p| glob(p, n)))
    };
    if outside(&caller.scope.services, &filter.service) || outside(&caller.scope.clusters, &filter.cluster) {
        let message = format!("listing beyond the scope of token {}: {}", caller.name, caller.scope);
        return Err(refuse(&state, &caller, "listing deployments", None, message).await);
    }
    let deployments = state.store.list(&filter).await?;
    let next_cursor = (deployments.len() as i64 == limit).then(|| deployments.last().map(|d| d.id)).flatten();
    Ok(axum::Json(DeploymentPage { deployments, next_cursor }).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    /// Only lines with a greater `seq`.
    #[param(minimum = 0, default = 0)]
    after: Option<i64>,
    /// Only this host's lines.
    host: Option<String>,
    /// Lines per page.
    #[param(minimum = 1, maximum = 5000, default = 1000)]
    limit: Option<i64>,
}

/// Log lines after a sequence number
#[utoipa::path(
    get, path = "/v1/deployments/{id}/logs", operation_id = "getDeploymentLogs", tag = "deployments",
    params(DeploymentId, LogParams),
    responses(
        (status = 200, description = "The deployment's state and the lines after `after`, oldest first.", body = LogPage),
        (status = 400, description = "invalid_id, invalid_after, invalid_limit, or invalid_query (a bad host name, an unknown or malformed parameter).", body = ErrorBody),
        (status = 404, response = NotFound),
    )
)]
pub async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    DeploymentId(id): DeploymentId,
    Query(params): Query<LogParams>,
) -> Answer {
    require_scope_of(&state, &caller, id, "reading a deployment's log").await?;
    let after = params.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::bad_request("invalid_after", "after must be a sequence number, 0 or more"));
    }
    let limit = page_limit(params.limit, DEFAULT_LOG_LINES, MAX_LOG_LINES)?;
    let host = match params.host {
        Some(h) if !is_host_name(&h) => {
            return Err(ApiError::bad_request("invalid_query", "host must match [A-Za-z0-9][A-Za-z0-9._-]*"));
        }
        other => other,
    };
    // Read the state first: if it is final, every line was committed before it.
    let Some(deployment_state) = state.store.deployment_state(id).await? else {
        return Err(ApiError::NotFound(format!("deployment {id} does not exist")));
    };
    let lines = state.store.logs(id, after, host.as_deref(), limit).await?;
    let next_after = lines.last().map_or(after, |l| l.seq);
    Ok(axum::Json(LogPage { state: deployment_state, lines, next_after }).into_response())
}

/// Cancel a deployment
///
/// No new host starts; hosts in flight finish. A deployer cancels only deployments it
/// requested; an admin may cancel any. Records `cancelled_by`.
#[utoipa::path(
    post, path = "/v1/deployments/{id}/cancel", operation_id = "cancelDeployment", tag = "deployments",
    params(DeploymentId),
    responses(
        (status = 202, description = "The deployment, now `cancelled` (it was queued) or `cancelling` (running: no new host starts, hosts in flight finish, the rest are skipped). Also the answer when it was already cancelling.", body = Deployment),
        (status = 400, description = "invalid_id.", body = ErrorBody),
        (status = 403, description = "A deployer cancelling a deployment another token requested, or one outside the token's scope (code forbidden).", body = ErrorBody),
        (status = 404, response = NotFound),
        (status = 409, description = "The deployment is already over (code conflict).", body = ErrorBody),
    )
)]
pub async fn cancel(State(state): State<AppState>, caller: Caller, DeploymentId(id): DeploymentId) -> Answer {
    require_scope_of(&state, &caller, id, "cancelling").await?;
    match state.store.cancel(id, &caller).await? {
        Cancel::NotFound => return Err(ApiError::NotFound(format!("deployment {id} does not exist"))),
        Cancel::NotYours { requested_by } => {
            let message = format!(
                "deployment {id} was requested by {requested_by}: a deployer cancels only its own (an admin may cancel any)"
            );
            return Err(refuse(&state, &caller, "cancelling", Some(id), message).await);
        }
        Cancel::Final(done) => {
            return Err(ApiError::Conflict(format!("deployment {id} is already {done}: there is nothing to cancel")));
        }
        Cancel::Cancelled | Cancel::Cancelling => {}
    }
    let deployment = state.store.deployment(id).await?.ok_or_else(|| ApiError::NotFound(format!("deployment {id}")))?;
    Ok((StatusCode::ACCEPTED, axum::Json(deployment)).into_response())
}

/// Retry a deployment's failed, unreachable and skipped hosts (admin)
///
/// A new deployment of the same request, narrowed to the hosts that failed, were
/// unreachable or were skipped.
#[utoipa::path(
    post, path = "/v1/deployments/{id}/retry", operation_id = "retryDeployment", tag = "deployments",
    params(DeploymentId),
    responses(
        (status = 202, description = "The new deployment, `queued`, with `retry_of` and `attempt`.", body = Deployment,
            headers(("Location" = String, description = "The new deployment's URL."))),
        (status = 400, description = "invalid_id.", body = ErrorBody),
        (status = 404, response = NotFound),
        (status = 409, description = "Still running, a dry run, or no host failed, was unreachable or was skipped (code conflict).", body = ErrorBody),
    )
)]
pub async fn retry(State(state): State<AppState>, caller: Caller, DeploymentId(id): DeploymentId) -> Answer {
    require(&state, &caller, Role::Admin, "retrying a deployment").await?;
    require_scope_of(&state, &caller, id, "retrying").await?;
    let (mut request, hosts, attempt) = match state.store.retry_plan(id).await? {
        RetryPlan::NotFound => return Err(ApiError::NotFound(format!("deployment {id} does not exist"))),
        RetryPlan::Refused(why) => return Err(ApiError::Conflict(why)),
        RetryPlan::Hosts { request, hosts, attempt } => (request, hosts, attempt),
    };
    request.hosts = hosts;
    let new = NewDeployment {
        request: *request,
        requested_by: caller.name.clone(),
        idempotency_key: None,
        retry_of: Some((id, attempt)),
    };
    let Submitted::Created(deployment) = state.submitter.submit(new).await? else {
        return Err(ApiError::Conflict("the retry was not created".to_owned()));
    };
    let _ = state.nudge.try_send(deployment.id);
    let location = format!("/v1/deployments/{}", deployment.id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], axum::Json(deployment)).into_response())
}

/// A deployment's webhook deliveries
///
/// Every notification of the deployment's changes (started, succeeded, failed,
/// cancelled, rolling_back, rolled_back) to every webhook configured for its service
/// or cluster: pending ones with their next attempt, delivered ones, and those given
/// up, with the receiver's last answer.
#[utoipa::path(
    get, path = "/v1/deployments/{id}/deliveries", operation_id = "listDeliveries", tag = "deployments",
    params(DeploymentId),
    responses(
        (status = 200, description = "The deliveries, oldest first.", body = DeliveryLog),
        (status = 400, description = "invalid_id.", body = ErrorBody),
        (status = 404, response = NotFound),
    )
)]
pub async fn deliveries(State(state): State<AppState>, caller: Caller, DeploymentId(id): DeploymentId) -> Answer {
    require_scope_of(&state, &caller, id, "reading deliveries").await?;
    if state.store.deployment_state(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("deployment {id} does not exist")));
    }
    let deliveries = state.store.deliveries(id).await?;
    Ok(axum::Json(DeliveryLog { deliveries }).into_response())
}
