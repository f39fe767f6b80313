pub mod admin;
pub mod deployments;
pub mod health;
pub mod openapi;

use crate::error::ApiError;

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".to_owned())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
