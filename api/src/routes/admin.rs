//! Admin endpoints: tokens and the audit trail.

use crate::AppState;
use crate::auth::require_unscoped_admin;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::routes::page_limit;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use vesemir_core::access::{Caller, Scope};
use vesemir_model::access::Role;
use vesemir_model::deployment::is_identifier;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
    role: Role,
    /// Exact names or globs; none: any.
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    clusters: Vec<String>,
}

pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewToken>,
) -> Result<Response, ApiError> {
    require_unscoped_admin(&state, &caller, "creating a token").await?;
    if !is_identifier(&new.name) {
        return Err(ApiError::bad_request("invalid_name", "a token name must match [a-z0-9][a-z0-9._-]{0,62}"));
    }
    let scope = Scope { services: new.services, clusters: new.clusters };
    scope.validate().map_err(|e| ApiError::bad_request("invalid_scope", e))?;
    let (info, token) = state.store.create_token(&new.name, new.role, &scope, &caller.name).await?;
    // The only time the token is shown: it is not stored.
    Ok((StatusCode::CREATED, axum::Json(json!({ "token": token, "info": info }))).into_response())
}

pub async fn list_tokens(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    require_unscoped_admin(&state, &caller, "listing tokens").await?;
    Ok(axum::Json(json!({ "tokens": state.store.tokens().await? })).into_response())
}

pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    require_unscoped_admin(&state, &caller, "revoking a token").await?;
    if state.store.revoke_token(&name, &caller.name).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound(format!("no live token named {name:?}")))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    after: Option<i64>,
    limit: Option<i64>,
}

pub async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<AuditParams>,
) -> Result<Response, ApiError> {
    require_unscoped_admin(&state, &caller, "reading the audit trail").await?;
    let limit = page_limit(params.limit, 100, 1000)?;
    let entries = state.store.audit_log(params.after.unwrap_or(0), limit).await?;
    Ok(axum::Json(json!({ "entries": entries })).into_response())
}
