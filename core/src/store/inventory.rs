//! What runs where, read from the hosts' records: no separate table to keep in step.

use super::{Store, StoreError, parse};
use chrono::{DateTime, Utc};
use uuid::Uuid;
use vesemir_model::inventory::HostRecord;

#[derive(sqlx::FromRow)]
struct RecordRow {
    name: String,
    address: String,
    version: Option<String>,
    deployment_id: Option<Uuid>,
    deployed_at: Option<DateTime<Utc>>,
    last_deployment_id: Uuid,
    last_state: String,
    load_balancer: Option<String>,
}

impl Store {
    /// Every host a deployment of the target started on: the version of the last
    /// deployment that succeeded there, and the last deployment that started there,
    /// with how the host ended and where it left its server in the load balancers.
    pub async fn host_records(&self, service: &str, cluster: &str) -> Result<Vec<HostRecord>, StoreError> {
        let rows: Vec<RecordRow> = sqlx::query_as(
            "WITH started AS ( \
                 SELECT h.name, h.address, h.state, h.load_balancer, h.started_at, h.finished_at, \
                        d.id, COALESCE(h.version, d.version) AS version \
                 FROM deployments d JOIN hosts h ON h.deployment_id = d.id \
                 WHERE d.service = $1 AND d.cluster = $2 AND h.started_at IS NOT NULL), \
             latest AS (SELECT DISTINCT ON (name) * FROM started ORDER BY name, started_at DESC), \
             good AS ( \
                 SELECT DISTINCT ON (name) name, version, id, finished_at FROM started \
                 WHERE state = 'succeeded' ORDER BY name, finished_at DESC) \
             SELECT l.name, l.address, g.version, g.id AS deployment_id, g.finished_at AS deployed_at, \
                    l.id AS last_deployment_id, l.state AS last_state, l.load_balancer \
             FROM latest l LEFT JOIN good g ON g.name = l.name ORDER BY l.name",
        )
        .bind(service)
        .bind(cluster)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(HostRecord {
                    name: row.name,
                    address: row.address,
                    version: row.version,
                    deployment_id: row.deployment_id,
                    deployed_at: row.deployed_at,
                    last_deployment_id: Some(row.last_deployment_id),
                    last_state: Some(parse(&row.last_state)?),
                    load_balancer: row.load_balancer.as_deref().map(parse).transpose()?,
                    drift: false,
                })
            })
            .collect()
    }
}
