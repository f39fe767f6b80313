//! Liveness, readiness and metrics: the endpoints that need no token.

use crate::AppState;
use crate::error::ApiError;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Prometheus metrics (text format): deployments by state, the outbox backlog, hosts
/// in flight. Read from the database, so every replica reports the same.
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let gauges = state.store.gauges().await?;
    let mut out = String::new();
    out.push_str("# HELP vesemir_deployments Deployments by state.\n# TYPE vesemir_deployments gauge\n");
    for (deployment_state, n) in &gauges.deployments {
        out.push_str(&format!("vesemir_deployments{{state=\"{deployment_state}\"}} {n}\n"));
    }
    out.push_str(&format!(
        "# HELP vesemir_outbox_pending Accepted deployments whose id the broker has not confirmed yet.\n\
         # TYPE vesemir_outbox_pending gauge\nvesemir_outbox_pending {}\n\
         # HELP vesemir_hosts_running Hosts being deployed now.\n\
         # TYPE vesemir_hosts_running gauge\nvesemir_hosts_running {}\n",
        gauges.outbox_pending, gauges.hosts_running
    ));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// The process is up and serving.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The database and the broker are reachable: this replica can accept work. The
/// answer names what is down; the errors themselves go to the log, not to anyone who
/// asks.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let (database, broker) = tokio::join!(state.store.ping(), state.publisher.check());
    if let Err(e) = &database {
        tracing::warn!(error = %e, "not ready: the database is unreachable");
    }
    if let Err(e) = &broker {
        tracing::warn!(error = %e, "not ready: the broker is unreachable");
    }
    let up = |ok: bool| if ok { "up" } else { "down" };
    let (database, broker) = (database.is_ok(), broker.is_ok());
    let status = if database && broker { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if status == StatusCode::OK { "ready" } else { "unavailable" },
        "database": up(database),
        "broker": up(broker),
    });
    (status, Json(body)).into_response()
}
