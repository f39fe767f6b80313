//! Extractors whose rejections are [`ApiError`]s, so malformed input always gets the
//! API's JSON error body.

use crate::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use utoipa::IntoParams;
use uuid::Uuid;

#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// The `{id}` of a deployment's path: a UUID, else 400 `invalid_id`.
#[derive(Debug, Clone, Copy, IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
pub struct DeploymentId(
    /// A deployment id (else 400 invalid_id).
    pub Uuid,
);

impl<S: Send + Sync> FromRequestParts<S> for DeploymentId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state).await?;
        Uuid::parse_str(&text)
            .map(DeploymentId)
            .map_err(|_| ApiError::bad_request("invalid_id", format!("{text:?} is not a deployment id (a UUID)")))
    }
}
