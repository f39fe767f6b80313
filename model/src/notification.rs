//! Webhooks: what a receiver is sent when a deployment changes state, and the record
//! of each delivery.

use crate::deployment::DeploymentState;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// The changes a webhook is told of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NotificationEvent {
    /// A worker took the deployment and started its rollout.
    Started,
    Succeeded,
    Failed,
    Cancelled,
    /// It failed, and its rollback is queued (`deployment.rolled_back_by`).
    RollingBack,
    /// Its rollback succeeded: every host it changed is back on its earlier version.
    RolledBack,
}

impl NotificationEvent {
    pub const ALL: [Self; 6] =
        [Self::Started, Self::Succeeded, Self::Failed, Self::Cancelled, Self::RollingBack, Self::RolledBack];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::RollingBack => "rolling_back",
            Self::RolledBack => "rolled_back",
        }
    }
}

impl fmt::Display for NotificationEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NotificationEvent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|e| e.as_str() == s).ok_or_else(|| format!("unknown event {s:?}"))
    }
}

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
    pub at: DateTime<Utc>,
    pub deployment: NotifiedDeployment,
}

/// `pending` (being tried, with backoff) → `delivered` | `failed` (given up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

impl std::str::FromStr for DeliveryState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown delivery state {s:?}"))
    }
}

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
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A deployment's webhook deliveries, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryLog {
    pub deliveries: Vec<Delivery>,
}
