//! `GET /v1/services/{service}/clusters/{cluster}/hosts`: what runs where.

use crate::AppState;
use crate::auth::require_scope;
use crate::error::ApiError;
use crate::extract::Path;
use crate::routes::Answer;
use axum::extract::State;
use axum::response::IntoResponse;
use vesemir_core::access::Caller;
use vesemir_model::api::ErrorBody;
use vesemir_model::inventory::{HostRecord, Inventory};

/// What runs where
///
/// Every host of the service on the cluster that a deployment started on (and, for a
/// static cluster, every listed host): the version of the last deployment that
/// succeeded on it, the last deployment that started on it and how the host ended
/// there, and where Vesemir left its server in the load balancers. Hosts off the
/// version most hosts run are marked `drift`.
#[utoipa::path(
    get, path = "/v1/services/{service}/clusters/{cluster}/hosts", operation_id = "listHosts", tag = "hosts",
    params(
        ("service" = String, Path, description = "A configured service."),
        ("cluster" = String, Path, description = "A configured cluster."),
    ),
    responses(
        (status = 200, description = "The target's hosts, by name.", body = Inventory),
        (status = 404, description = "The service or the cluster is not configured (code not_found).", body = ErrorBody),
    )
)]
pub async fn hosts(
    State(state): State<AppState>,
    caller: Caller,
    Path((service, cluster)): Path<(String, String)>,
) -> Answer {
    let config = state.config();
    require_scope(&state, &caller, (&service, &cluster), "reading hosts", None).await?;
    if !config.services.contains_key(&service) {
        return Err(ApiError::NotFound(format!("service {service:?} is not configured")));
    }
    let Some(listed) = config.clusters.get(&cluster) else {
        return Err(ApiError::NotFound(format!("cluster {cluster:?} is not configured")));
    };
    let mut records = state.store.host_records(&service, &cluster).await?;
    for host in &listed.hosts {
        if !records.iter().any(|r| r.name == host.name) {
            records.push(HostRecord::unrecorded(&host.name, &host.address));
        }
    }
    Ok(axum::Json(Inventory::new(service, cluster, records)).into_response())
}
