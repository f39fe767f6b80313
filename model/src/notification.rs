//! Webhooks: what a receiver is sent when a deployment changes state, and the record
//! of each delivery.

use crate::deployment::{DeploymentState, string_enum};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

string_enum!(
    /// The changes a webhook is told of.
    NotificationEvent {
        /// A worker took the deployment and started its rollout.
        Started => "started",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
        /// It failed, and its rollback is queued (`deployment.rolled_back_by`).
        RollingBack => "rolling_back",
        /// Its rollback succeeded: every host it changed is back on its earlier version.
        RolledBack => "rolled_back",
    }
);

/// The deployment as it was when the event happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NotifiedDeployment {
    pub id: Uuid,
    pub service: String,
    pub cluster: String,
    pub version: String,
    pub state: DeploymentState,
    pub error: Option<String>,
    pub requested_by: String,
    pub retry_of: Option<Uuid>,
    pub rollback_of: Option<Uuid>,
}

/// The JSON body a webhook receives, signed (see the README's "Webhooks").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Notification {
    /// The delivery's id: the same on every attempt, so a receiver can drop a repeat.
    pub delivery: i64,
    pub event: NotificationEvent,
    /// When the change was committed.
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub at: DateTime<Utc>,
    pub deployment: NotifiedDeployment,
}

string_enum!(
    /// `pending` (being tried, with backoff) → `delivered` | `failed` (given up).
    DeliveryState {
        Pending => "pending",
        Delivered => "delivered",
        Failed => "failed",
    }
);

/// One event's delivery to one webhook, as the delivery log shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Delivery {
    pub id: i64,
    pub event: NotificationEvent,
    /// The webhook's place in the configuration, e.g. `services.payments-api.webhooks.chat`.
    pub webhook: String,
    pub url: String,
    pub state: DeliveryState,
    pub attempts: i32,
    /// The receiver's last HTTP status, if it answered.
    pub last_status: Option<i32>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due, while pending.
    #[serde(serialize_with = "crate::timestamp::optional::serialize")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::timestamp::optional::serialize")]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A deployment's webhook deliveries, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryLog {
    pub deliveries: Vec<Delivery>,
}
