//! Liveness and readiness.

use crate::AppState;
use crate::error::ApiError;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

/// The process is up and serving.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The database and the broker are reachable: this replica can accept work.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.store.ping().await.map_err(|e| ApiError::Unavailable(format!("database: {e}")))?;
    state.publisher.check().await.map_err(|e| ApiError::Unavailable(format!("broker: {e}")))?;
    Ok(Json(json!({ "status": "ready" })))
}
