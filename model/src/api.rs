//! The bodies the REST API answers with, beyond the resources themselves: pages,
//! errors, created tokens and health.

use crate::access::{AuditEntry, Role, TokenInfo};
use crate::deployment::{Deployment, DeploymentState, LogLine};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A page of deployments, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentPage {
    /// Without their hosts: fetch one deployment for those.
    pub deployments: Vec<Deployment>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<Uuid>,
}

/// A deployment's log lines after a sequence number.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogPage {
    /// The deployment's state when the lines were read: once it is final, no line follows.
    pub state: DeploymentState,
    pub lines: Vec<LogLine>,
    /// Pass as `after` to read on.
    pub next_after: i64,
}

/// A token to create. Empty scope lists: any service, any cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// An identifier, unique among live tokens.
    pub name: String,
    pub role: Role,
    /// Service names or globs (`*`, `?`) the token may act on.
    #[serde(default)]
    pub services: Vec<String>,
    /// Cluster names or globs the token may act on.
    #[serde(default)]
    pub clusters: Vec<String>,
}

/// A created token: the only time its text is shown, since only a hash is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedToken {
    pub token: String,
    pub info: TokenInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// Audit entries after a sequence number, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
}

/// Every refusal and failure: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable and machine-readable, such as `invalid_body` or `forbidden`.
    pub code: String,
    /// For people: says what was wrong and what would be accepted.
    pub message: String,
}

/// `GET /healthz`: the process is up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// `GET /readyz`: whether this replica can accept work, and what is down if not.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Readiness {
    pub status: ReadyState,
    pub database: Reachability,
    pub broker: Reachability,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReadyState {
    Ready,
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    Up,
    Down,
}

impl From<bool> for Reachability {
    fn from(up: bool) -> Self {
        if up { Reachability::Up } else { Reachability::Down }
    }
}

/// The body of a rollback: which version the hosts return to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Every host to this version; absent, each host to the version it had before
    /// the deployment rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// Who the token is: what the web view needs to know which actions to offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Whoami {
    pub name: String,
    pub role: Role,
    pub scope: crate::access::Scope,
}
