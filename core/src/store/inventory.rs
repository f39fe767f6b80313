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
    asked_state: Option<String>,
    asked_output: Option<String>,
    verified_at: Option<DateTime<Utc>>,
    verified_by: Option<Uuid>,
}

/// The step a verification runs on each host (the service's `version_command`).
pub const VERSION_STEP: &str = "version";

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
                 WHERE d.service = $1 AND d.cluster = $2 AND h.started_at IS NOT NULL \
                   AND (d.request->>'dry_run')::boolean IS NOT TRUE), \
             latest AS (SELECT DISTINCT ON (name) * FROM started ORDER BY name, started_at DESC), \
             good AS ( \
                 SELECT DISTINCT ON (name) name, version, id, finished_at FROM started \
                 WHERE state = 'succeeded' ORDER BY name, finished_at DESC), \
             asked AS ( \
                 SELECT DISTINCT ON (s.host) s.host AS name, s.state, s.output, s.finished_at, d.id \
                 FROM deployments d JOIN steps s ON s.deployment_id = d.id \
                 WHERE d.service = $1 AND d.cluster = $2 AND (d.request->>'verify')::boolean IS TRUE \
                   AND s.name = $3 AND s.finished_at IS NOT NULL \
                 ORDER BY s.host, s.finished_at DESC) \
             SELECT l.name, l.address, g.version, g.id AS deployment_id, g.finished_at AS deployed_at, \
                    l.id AS last_deployment_id, l.state AS last_state, l.load_balancer, \
                    a.state AS asked_state, a.output AS asked_output, a.finished_at AS verified_at, \
                    a.id AS verified_by \
             FROM latest l LEFT JOIN good g ON g.name = l.name LEFT JOIN asked a ON a.name = l.name \
             ORDER BY l.name",
        )
        .bind(service)
        .bind(cluster)
        .bind(VERSION_STEP)
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
                    reported_version: match row.asked_state.as_deref() {
                        Some("succeeded") => row.asked_output.as_deref().and_then(last_line),
                        _ => None,
                    },
                    verified_at: row.verified_at,
                    verified_by: row.verified_by,
                    disagrees: false,
                })
            })
            .collect()
    }
}

/// What a version command answered: its last non-empty line.
fn last_line(output: &str) -> Option<String> {
    output.lines().map(str::trim).rfind(|line| !line.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_answer_is_the_last_line_printed() {
        assert_eq!(super::last_line("checking\n1.2.3\n\n").as_deref(), Some("1.2.3"));
        assert_eq!(super::last_line("  \n"), None);
    }
}
