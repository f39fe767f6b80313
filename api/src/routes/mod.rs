pub mod admin;
pub mod deployments;
pub mod health;
pub mod inventory;
pub mod openapi;
pub mod rollback;

use crate::error::ApiError;
use axum::response::Response;

/// What a handler answers: a response, or the API's error.
pub(crate) type Answer = Result<Response, ApiError>;

/// A page size from a query: `default` when absent, refused outside 1 to `max`.
pub(crate) fn page_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request("invalid_limit", format!("limit must be between 1 and {max}")))
    }
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".to_owned())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
