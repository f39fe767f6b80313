//! Tokens and the audit trail (admin), and who a token is (anyone).

use crate::AppState;
use crate::auth::require_unscoped_admin;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::routes::openapi::{PayloadTooLarge, UnsupportedMediaType};
use crate::routes::{Answer, page_limit};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use utoipa::IntoParams;
use vesemir_core::access::Caller;
use vesemir_model::access::Scope;
use vesemir_model::api::{AuditPage, CreatedToken, ErrorBody, NewToken, TokenList, Whoami};
use vesemir_model::deployment::is_identifier;

/// Create a token (admin)
#[utoipa::path(
    post, path = "/v1/tokens", operation_id = "createToken", tag = "admin",
    request_body = NewToken,
    responses(
        (status = 201, description = "The token, shown only this once, and its record.", body = CreatedToken),
        (status = 400, description = "malformed_json, invalid_body, invalid_name or invalid_scope.", body = ErrorBody),
        (status = 409, description = "A live token has this name (code conflict).", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
    )
)]
pub async fn create_token(State(state): State<AppState>, caller: Caller, Json(new): Json<NewToken>) -> Answer {
    require_unscoped_admin(&state, &caller, "creating a token").await?;
    if !is_identifier(&new.name) {
        return Err(ApiError::bad_request("invalid_name", "a token name must match [a-z0-9][a-z0-9._-]{0,62}"));
    }
    let scope = Scope { services: new.services, clusters: new.clusters };
    scope.validate().map_err(|e| ApiError::bad_request("invalid_scope", e))?;
    let (info, token) = state.store.create_token(&new.name, new.role, &scope, &caller.name).await?;
    // The only time the token is shown: it is not stored.
    Ok((StatusCode::CREATED, axum::Json(CreatedToken { token, info })).into_response())
}

/// List tokens (admin)
#[utoipa::path(
    get, path = "/v1/tokens", operation_id = "listTokens", tag = "admin",
    responses(
        (status = 200, description = "Every token, by name; never a secret.", body = TokenList),
    )
)]
pub async fn list_tokens(State(state): State<AppState>, caller: Caller) -> Answer {
    require_unscoped_admin(&state, &caller, "listing tokens").await?;
    Ok(axum::Json(TokenList { tokens: state.store.tokens().await? }).into_response())
}

/// Revoke a token (admin)
#[utoipa::path(
    delete, path = "/v1/tokens/{name}", operation_id = "revokeToken", tag = "admin",
    params(("name" = String, Path, description = "The token's name.")),
    responses(
        (status = 204, description = "Revoked."),
        (status = 404, description = "No live token has this name (code not_found).", body = ErrorBody),
    )
)]
pub async fn revoke_token(State(state): State<AppState>, caller: Caller, Path(name): Path<String>) -> Answer {
    require_unscoped_admin(&state, &caller, "revoking a token").await?;
    if state.store.revoke_token(&name, &caller.name).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound(format!("no live token named {name:?}")))
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only entries with a greater `id`.
    #[param(minimum = 0, default = 0)]
    after: Option<i64>,
    /// Entries per page.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<i64>,
}

/// Read the audit trail (admin)
#[utoipa::path(
    get, path = "/v1/audit", operation_id = "readAudit", tag = "admin",
    params(AuditParams),
    responses(
        (status = 200, description = "Entries after `after`, oldest first.", body = AuditPage),
        (status = 400, description = "invalid_limit, or invalid_query (an unknown or malformed parameter).", body = ErrorBody),
    )
)]
pub async fn audit(State(state): State<AppState>, caller: Caller, Query(params): Query<AuditParams>) -> Answer {
    require_unscoped_admin(&state, &caller, "reading the audit trail").await?;
    let limit = page_limit(params.limit, 100, 1000)?;
    let entries = state.store.audit_log(params.after.unwrap_or(0), limit).await?;
    Ok(axum::Json(AuditPage { entries }).into_response())
}

/// Who this token is
///
/// Its name, role and scope: what the web view offers depends on them.
#[utoipa::path(
    get, path = "/v1/whoami", operation_id = "whoami", tag = "admin",
    responses((status = 200, description = "The caller.", body = Whoami))
)]
pub async fn whoami(caller: Caller) -> Answer {
    Ok(axum::Json(Whoami { name: caller.name, role: caller.role, scope: caller.scope }).into_response())
}
