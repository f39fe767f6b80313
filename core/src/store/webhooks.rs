//! Webhook notifications and their deliveries.
//!
//! A notification is written by a trigger in the transaction that changes a
//! deployment's state (migration 0009). An API replica routes it to the webhooks the
//! configuration names ([`Store::route_notifications`]), then takes due deliveries
//! ([`Store::due_deliveries`]), sends them and records each attempt
//! ([`Store::record_delivery`]). `SKIP LOCKED` hands each row to one replica.

use super::{Store, StoreError, parse};
use chrono::{DateTime, Utc};
use std::time::Duration;
use uuid::Uuid;
use vesemir_model::notification::{Delivery, DeliveryState, Notification, NotificationEvent, NotifiedDeployment};

/// A delivery to attempt now.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub webhook: String,
    pub url: String,
    /// Attempts made before this one.
    pub attempts: i32,
    /// The body to send; `notification.delivery` is this delivery's id.
    pub notification: Notification,
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered 2xx.
    Delivered { status: u16 },
    /// It did not; tried again after `retry_in`, or never again when None.
    Failed { status: Option<u16>, error: String, retry_in: Option<Duration> },
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: i64,
    event: String,
    webhook: String,
    url: String,
    state: String,
    attempts: i32,
    last_status: Option<i32>,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    next_attempt_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Routes up to `limit` new notifications: one delivery for each webhook `route`
    /// names (its place in the configuration and its URL), given the deployment's
    /// service, cluster and the event. Returns how many notifications were routed.
    pub async fn route_notifications(
        &self,
        limit: i64,
        route: impl Fn(&str, &str, NotificationEvent) -> Vec<(String, String)>,
    ) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i64, Uuid, String, String, String)> = sqlx::query_as(
            "SELECT id, deployment_id, event, deployment->>'service', deployment->>'cluster' FROM notifications \
             WHERE NOT routed ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let (mut notifications, mut deployments, mut webhooks, mut urls) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, deployment, event, service, cluster) in &rows {
            for (webhook, url) in route(service, cluster, parse(event)?) {
                notifications.push(*id);
                deployments.push(*deployment);
                webhooks.push(webhook);
                urls.push(url);
            }
        }
        sqlx::query(
            "INSERT INTO deliveries (notification_id, deployment_id, webhook, url) \
             SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[])",
        )
        .bind(&notifications)
        .bind(&deployments)
        .bind(&webhooks)
        .bind(&urls)
        .execute(&mut *tx)
        .await?;
        let routed: Vec<i64> = rows.iter().map(|(id, ..)| *id).collect();
        sqlx::query("UPDATE notifications SET routed = true WHERE id = ANY($1)")
            .bind(&routed)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Takes up to `limit` due deliveries for `lease` (no replica takes them again
    /// before it runs out). A deployment's events reach each webhook in order: a
    /// delivery waits while an earlier one to the same webhook for the same
    /// deployment is still pending.
    pub async fn due_deliveries(&self, limit: i64, lease: Duration) -> Result<Vec<DueDelivery>, StoreError> {
        type Row = (i64, String, String, i32, String, sqlx::types::Json<NotifiedDeployment>, DateTime<Utc>);
        let rows: Vec<Row> = sqlx::query_as(
            "UPDATE deliveries d SET next_attempt_at = now() + make_interval(secs => $2) \
             FROM notifications n \
             WHERE n.id = d.notification_id AND d.id IN ( \
                 SELECT x.id FROM deliveries x WHERE x.state = 'pending' AND x.next_attempt_at <= now() \
                   AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.deployment_id = x.deployment_id \
                                   AND e.webhook = x.webhook AND e.state = 'pending' AND e.id < x.id) \
                 ORDER BY x.id LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING d.id, d.webhook, d.url, d.attempts, n.event, n.deployment, n.created_at",
        )
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, webhook, url, attempts, event, deployment, at)| {
                let notification = Notification { delivery: id, event: parse(&event)?, at, deployment: deployment.0 };
                Ok(DueDelivery { webhook, url, attempts, notification })
            })
            .collect()
    }

    /// Records one attempt of delivery `id`.
    pub async fn record_delivery(&self, id: i64, attempt: &Attempt) -> Result<(), StoreError> {
        let (state, status, error, retry_in) = match attempt {
            Attempt::Delivered { status } => (DeliveryState::Delivered, Some(*status), None, None),
            Attempt::Failed { status, error, retry_in: Some(wait) } => {
                (DeliveryState::Pending, *status, Some(error.as_str()), Some(wait.as_secs_f64()))
            }
            Attempt::Failed { status, error, retry_in: None } => {
                (DeliveryState::Failed, *status, Some(error.as_str()), None)
            }
        };
        sqlx::query(
            "UPDATE deliveries SET attempts = attempts + 1, state = $2, last_status = $3, last_error = $4, \
                 next_attempt_at = CASE WHEN $5::float8 IS NULL THEN next_attempt_at \
                                        ELSE now() + make_interval(secs => $5) END, \
                 delivered_at = CASE WHEN $2 = 'delivered' THEN now() END \
             WHERE id = $1",
        )
        .bind(id)
        .bind(state.as_str())
        .bind(status.map(i32::from))
        .bind(error)
        .bind(retry_in)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A deployment's deliveries, oldest first.
    pub async fn deliveries(&self, deployment: Uuid) -> Result<Vec<Delivery>, StoreError> {
        let rows: Vec<DeliveryRow> = sqlx::query_as(
            "SELECT d.id, n.event, d.webhook, d.url, d.state, d.attempts, d.last_status, d.last_error, \
                    d.created_at, d.next_attempt_at, d.delivered_at \
             FROM deliveries d JOIN notifications n ON n.id = d.notification_id \
             WHERE d.deployment_id = $1 ORDER BY d.id",
        )
        .bind(deployment)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let state: DeliveryState = parse(&row.state)?;
                Ok(Delivery {
                    id: row.id,
                    event: parse(&row.event)?,
                    webhook: row.webhook,
                    url: row.url,
                    state,
                    attempts: row.attempts,
                    last_status: row.last_status,
                    last_error: row.last_error,
                    created_at: row.created_at,
                    next_attempt_at: (state == DeliveryState::Pending).then_some(row.next_attempt_at),
                    delivered_at: row.delivered_at,
                })
            })
            .collect()
    }
}
