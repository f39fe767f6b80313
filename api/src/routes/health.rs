//! Liveness, readiness and metrics: the endpoints that need no token.

use crate::AppState;
use crate::error::ApiError;
use crate::routes::openapi::{Internal, Unavailable};
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::Ordering;
use vesemir_model::api::{Health, Readiness, ReadyState};

/// Prometheus metrics
///
/// Deployments by state, the outbox backlog, hosts in flight: read from the database,
/// so every replica reports the same. Then this replica's own counters of submits
/// and the statements that wrote them.
#[utoipa::path(
    get, path = "/metrics", operation_id = "metrics", tag = "health", security(()),
    responses(
        (status = 200, description = "Prometheus text format (`text/plain; version=0.0.4`): `vesemir_deployments{state}`, `vesemir_outbox_pending`, `vesemir_hosts_running`; and this replica's counters `vesemir_submits_total`, `vesemir_submit_statements_total`.", body = String, content_type = "text/plain"),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
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
    let written = state.submitter.written();
    out.push_str(&format!(
        "# HELP vesemir_submits_total Submits and retries this replica passed to the database.\n\
         # TYPE vesemir_submits_total counter\nvesemir_submits_total {}\n\
         # HELP vesemir_submit_statements_total Statements those took: submits that arrive together are written together.\n\
         # TYPE vesemir_submit_statements_total counter\nvesemir_submit_statements_total {}\n",
        written.submits.load(Ordering::Relaxed),
        written.statements.load(Ordering::Relaxed)
    ));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// Liveness
#[utoipa::path(
    get, path = "/healthz", operation_id = "healthz", tag = "health", security(()),
    responses((status = 200, description = "The process is up and serving.", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".to_owned() })
}

/// Readiness
///
/// The database and the broker are reachable: this replica can accept work. The answer
/// names what is down; the errors themselves go to the log, not to anyone who asks.
#[utoipa::path(
    get, path = "/readyz", operation_id = "readyz", tag = "health", security(()),
    responses(
        (status = 200, description = "The database and the broker are reachable.", body = Readiness),
        (status = 503, description = "The database or the broker is not reachable: the body says which.", body = Readiness),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let (database, broker) = tokio::join!(state.store.ping(), state.publisher.check());
    if let Err(e) = &database {
        tracing::warn!(error = %e, "not ready: the database is unreachable");
    }
    if let Err(e) = &broker {
        tracing::warn!(error = %e, "not ready: the broker is unreachable");
    }
    let (database, broker) = (database.is_ok(), broker.is_ok());
    let (status, ready) = if database && broker {
        (StatusCode::OK, ReadyState::Ready)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, ReadyState::Unavailable)
    };
    let body = Readiness { status: ready, database: database.into(), broker: broker.into() };
    (status, Json(body)).into_response()
}
