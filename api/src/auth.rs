//! Authentication: every endpoint but health needs `Authorization: Bearer <token>`.
//! A missing or bad token is a 401; a role that does not allow the action, a 403.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use vesemir_core::access::{self, Caller, Role};

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
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
        let (info, hash) = state.store.token(id).await?.ok_or_else(invalid)?;
        if info.revoked_at.is_some() || !access::verify(secret, &hash) {
            return Err(invalid());
        }
        Ok(Caller { name: info.name, role: info.role })
    }
}

/// Refuses a caller whose role is below `needed`.
pub fn require(caller: &Caller, needed: Role, action: &str) -> Result<(), ApiError> {
    if caller.role >= needed {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "{action} needs the {needed} role; token {} is a {}",
            caller.name, caller.role
        )))
    }
}
