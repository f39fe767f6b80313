//! `POST /v1/services/{service}/clusters/{cluster}/rollback`: undo the latest
//! deployment of a target.

use crate::AppState;
use crate::auth::require_scope;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::routes::Answer;
use crate::routes::openapi::{PayloadTooLarge, UnsupportedMediaType};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use vesemir_core::access::Caller;
use vesemir_core::store::{Rollback, Undoable};
use vesemir_model::api::{ErrorBody, RollbackRequest};
use vesemir_model::deployment::{Deployment, is_version};

/// Roll back a target's latest deployment
///
/// Returns every host the target's latest deployment changed (that is not a rollback
/// itself nor already rolled back) to the version it had before, or every one of them
/// to `to`, with the service's zero-downtime playbook. The rollback is a deployment of
/// its own, with `rollback_of`; when it succeeds, the deployment it undid ends
/// `rolled_back`. A host with no earlier version on record is left as it is, and the
/// rollback's log says so.
#[utoipa::path(
    post, path = "/v1/services/{service}/clusters/{cluster}/rollback", operation_id = "rollBack", tag = "deployments",
    params(
        ("service" = String, Path, description = "A configured service."),
        ("cluster" = String, Path, description = "A configured cluster."),
    ),
    request_body = RollbackRequest,
    responses(
        (status = 202, description = "The rollback, `queued`, with `rollback_of` and its hosts, each with the version it returns to.", body = Deployment,
            headers(("Location" = String, description = "The rollback's URL."))),
        (status = 400, description = "malformed_json, invalid_body, or invalid_version (`to`).", body = ErrorBody),
        (status = 404, description = "The service or the cluster is not configured, or nothing was ever deployed there (code not_found).", body = ErrorBody),
        (status = 409, description = "A deployment of the target is queued or rolling out, the deployment is already being rolled back, or no host it changed has an earlier version (code conflict).", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
    )
)]
pub async fn roll_back(
    State(state): State<AppState>,
    caller: Caller,
    Path((service, cluster)): Path<(String, String)>,
    Json(body): Json<RollbackRequest>,
) -> Answer {
    let config = state.config();
    require_scope(&state, &caller, (&service, &cluster), "rolling back", None).await?;
    let Some(service_config) = config.services.get(&service) else {
        return Err(ApiError::NotFound(format!("service {service:?} is not configured")));
    };
    if !config.clusters.contains_key(&cluster) {
        return Err(ApiError::NotFound(format!("cluster {cluster:?} is not configured")));
    }
    if let Some(to) = &body.to
        && !is_version(to)
    {
        return Err(ApiError::bad_request(
            "invalid_version",
            "to must be 1 to 128 letters, digits or ._+-, starting with a letter or digit",
        ));
    }
    let (of, request) = match state.store.undoable(&service, &cluster).await? {
        Undoable::Deployment { id, request } => (id, request),
        Undoable::Busy { id } => {
            return Err(ApiError::Conflict(format!(
                "deployment {id} of {service} to {cluster} is queued or rolling out: let it end (or cancel it) first"
            )));
        }
        Undoable::Nothing => {
            return Err(ApiError::NotFound(format!("{service} was never deployed to {cluster}: nothing to roll back")));
        }
    };
    let targets = state.store.rollback_targets(of, None).await?;
    let strategy = request.strategy.unwrap_or(service_config.strategy);
    let rollback = Rollback::plan(of, &request, targets, body.to.as_deref(), strategy)
        .map_err(|nothing| ApiError::Conflict(format!("nothing to roll back: {nothing}")))?;
    let deployment = state.store.submit_rollback(&rollback, &caller.name).await?;
    let _ = state.nudge.try_send(deployment.id);
    tracing::info!(deployment = %deployment.id, rollback_of = %of, version = %deployment.version, "rollback accepted");
    let location = format!("/v1/deployments/{}", deployment.id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], axum::Json(deployment)).into_response())
}
