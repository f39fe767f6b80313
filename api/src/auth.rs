//! Authentication: every endpoint but health needs `Authorization: Bearer <token>`.
//! A missing or bad token is a 401; a role or a scope that does not allow the action,
//! a 403, recorded in the audit trail.

use crate::AppState;
use crate::error::ApiError;
use crate::tokens::Known;
use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use uuid::Uuid;
use vesemir_core::access::{self, Caller};
use vesemir_model::access::Role;

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(state, &parts.headers).await
    }
}

/// The caller a request's `Authorization` header names, or a 401 that says why not.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let header = headers
        .get("authorization")
        .ok_or_else(|| ApiError::Unauthorized("this endpoint needs Authorization: Bearer <token>".to_owned()))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be Bearer <token>".to_owned()))?;
    let invalid = || ApiError::Unauthorized("the token is not valid, or was revoked".to_owned());
    let (id, secret) = access::parse(token).ok_or_else(invalid)?;
    let known = match state.tokens.get(id) {
        Some(known) => known,
        None => {
            let ticket = state.tokens.ticket();
            let (info, hash) = state.store.token(id).await?.ok_or_else(invalid)?;
            if info.revoked_at.is_some() {
                return Err(invalid());
            }
            let known = Known { hash, caller: Caller { name: info.name, role: info.role, scope: info.scope } };
            state.tokens.remember(ticket, id, known.clone());
            known
        }
    };
    // A wrong secret for a known id is refused like an unknown one.
    if !access::verify(secret, &known.hash) {
        return Err(invalid());
    }
    Ok(known.caller)
}

/// Refuses (403) a caller whose role is below `needed`.
pub async fn require(state: &AppState, caller: &Caller, needed: Role, action: &str) -> Result<(), ApiError> {
    if caller.role >= needed {
        return Ok(());
    }
    let message = format!("{action} needs the {needed} role; token {} is a {}", caller.name, caller.role);
    Err(refuse(state, caller, action, None, message).await)
}

/// Refuses (403) anything but an admin token without a scope: what reaches beyond
/// deployments (tokens, the audit trail) is not for a token limited to some of them.
pub async fn require_unscoped_admin(state: &AppState, caller: &Caller, action: &str) -> Result<(), ApiError> {
    require(state, caller, Role::Admin, action).await?;
    if caller.scope.is_unrestricted() {
        return Ok(());
    }
    let message =
        format!("{action} needs an admin token without a scope; token {} is limited to {}", caller.name, caller.scope);
    Err(refuse(state, caller, action, None, message).await)
}

/// Refuses (403) a caller whose scope does not reach `service` on `cluster`.
pub async fn require_scope(
    state: &AppState,
    caller: &Caller,
    (service, cluster): (&str, &str),
    action: &str,
    deployment: Option<Uuid>,
) -> Result<(), ApiError> {
    if caller.scope.allows(service, cluster) {
        return Ok(());
    }
    let message =
        format!("{action} of {service} on {cluster} is outside the scope of token {}: {}", caller.name, caller.scope);
    Err(refuse(state, caller, action, deployment, message).await)
}

/// [`require_scope`] for an existing deployment: a 404 when there is none.
pub async fn require_scope_of(state: &AppState, caller: &Caller, id: Uuid, action: &str) -> Result<(), ApiError> {
    if caller.scope.is_unrestricted() {
        return Ok(());
    }
    let Some((service, cluster)) = state.store.deployment_target(id).await? else {
        return Err(ApiError::NotFound(format!("deployment {id} does not exist")));
    };
    require_scope(state, caller, (&service, &cluster), action, Some(id)).await
}

/// A 403, recorded in the audit trail first.
pub async fn refuse(
    state: &AppState,
    caller: &Caller,
    action: &str,
    deployment: Option<Uuid>,
    message: String,
) -> ApiError {
    if let Err(e) = state.store.audit_refusal(&caller.name, action, deployment, &message).await {
        tracing::warn!(error = %e, actor = %caller.name, action, "recording a refusal in the audit trail failed");
    }
    ApiError::Forbidden(message)
}
