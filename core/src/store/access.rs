//! Tokens and the audit trail.

use super::{Store, StoreError, parse};
use crate::access::NewToken;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use sqlx::postgres::PgListener;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;
use vesemir_model::access::{AuditEntry, Role, Scope, TokenInfo};

/// Where a revocation is announced (the payload is the token's id), so that every
/// API process drops the token from its cache at once.
pub const TOKEN_REVOKED_CHANNEL: &str = "vesemir_token_revoked";
/// Where each token cache answers a revocation: `"<token id> <cache id>"`.
pub const TOKEN_DROPPED_CHANNEL: &str = "vesemir_token_dropped";
/// The `application_name` of a token cache's listening connection, before a space
/// and the cache's id: how a revocation knows whose answers to wait for.
pub const TOKEN_CACHE_NAME: &str = "vesemir-token-cache";
/// How long a revocation waits for the caches' answers before cutting off the silent ones.
const DROP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    name: String,
    role: String,
    services: Vec<String>,
    clusters: Vec<String>,
    created_by: String,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

macro_rules! token_columns {
    () => {
        "id, name, role, services, clusters, created_by, created_at, revoked_at"
    };
}
type AuditRow = (i64, DateTime<Utc>, String, String, Option<Uuid>, Value);

fn token_info(row: TokenRow) -> Result<TokenInfo, StoreError> {
    Ok(TokenInfo {
        id: row.id,
        name: row.name,
        role: parse(&row.role)?,
        scope: Scope { services: row.services, clusters: row.clusters },
        created_by: row.created_by,
        created_at: row.created_at,
        revoked_at: row.revoked_at,
    })
}

/// Appends to the audit trail, inside the caller's transaction.
pub(super) async fn audit(
    conn: &mut PgConnection,
    actor: &str,
    action: &str,
    deployment_id: Option<Uuid>,
    detail: Value,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO audit (actor, action, deployment_id, detail) VALUES ($1, $2, $3, $4)")
        .bind(actor)
        .bind(action)
        .bind(deployment_id)
        .bind(detail)
        .execute(conn)
        .await?;
    Ok(())
}

impl Store {
    /// Creates a token; returns it with its text, which is never stored.
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        scope: &Scope,
        actor: &str,
    ) -> Result<(TokenInfo, String), StoreError> {
        let token = NewToken::generate();
        let mut tx = self.pool.begin().await?;
        let row: Option<TokenRow> = sqlx::query_as(concat!(
            "INSERT INTO tokens (id, name, role, hash, created_by, services, clusters) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING RETURNING ",
            token_columns!()
        ))
        .bind(token.id)
        .bind(name)
        .bind(role.as_str())
        .bind(&token.hash)
        .bind(actor)
        .bind(&scope.services)
        .bind(&scope.clusters)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::Conflict(format!("a token named {name:?} exists")));
        };
        let detail =
            serde_json::json!({ "name": name, "role": role, "services": scope.services, "clusters": scope.clusters });
        audit(&mut tx, actor, "token.create", None, detail).await?;
        tx.commit().await?;
        Ok((token_info(row)?, token.text))
    }

    /// A token's record and stored hash, to check a presented token against.
    pub async fn token(&self, id: Uuid) -> Result<Option<(TokenInfo, String)>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct WithHash {
            #[sqlx(flatten)]
            row: TokenRow,
            hash: String,
        }
        let found: Option<WithHash> =
            sqlx::query_as(concat!("SELECT ", token_columns!(), ", hash FROM tokens WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        found.map(|f| Ok((token_info(f.row)?, f.hash))).transpose()
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let rows: Vec<TokenRow> = sqlx::query_as(concat!("SELECT ", token_columns!(), " FROM tokens ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(token_info).collect()
    }

    /// Records an action the API refused a caller (a 403), with why.
    pub async fn audit_refusal(
        &self,
        actor: &str,
        action: &str,
        deployment_id: Option<Uuid>,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        let detail = serde_json::json!({ "action": action, "reason": reason });
        audit(&mut conn, actor, "refused", deployment_id, detail).await
    }

    /// Revokes a token by name; false when there is no such live token.
    ///
    /// Returns only once every token cache that was listening has dropped the token,
    /// or has been cut off from the database (which empties it): a revoked token is
    /// refused by every API process before this returns.
    pub async fn revoke_token(&self, name: &str, actor: &str) -> Result<bool, StoreError> {
        // Listening first, so that no cache's answer can come before we hear.
        let mut answers = PgListener::connect_with(&self.pool).await?;
        answers.listen(TOKEN_DROPPED_CHANNEL).await?;
        let mut tx = self.pool.begin().await?;
        let revoked: Option<(Uuid, DateTime<Utc>)> = sqlx::query_as(
            "UPDATE tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL RETURNING id, revoked_at",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, revoked_at)) = revoked else { return Ok(false) };
        audit(&mut tx, actor, "token.revoke", None, serde_json::json!({ "name": name })).await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(TOKEN_REVOKED_CHANNEL)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.await_dropped(&mut answers, id, revoked_at).await?;
        Ok(true)
    }

    /// Waits until each cache listening since before `since` says it dropped `token`;
    /// cuts the connection of any that has not said so within [`DROP_TIMEOUT`].
    async fn await_dropped(
        &self,
        answers: &mut PgListener,
        token: Uuid,
        since: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let caches: Vec<(i32, String)> = sqlx::query_as(
            "SELECT pid, substr(application_name, length($1) + 2) FROM pg_stat_activity \
             WHERE datname = current_database() AND starts_with(application_name, $1 || ' ') \
                 AND backend_start < $2",
        )
        .bind(TOKEN_CACHE_NAME)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let mut waiting: HashMap<String, i32> = caches.into_iter().map(|(pid, cache)| (cache, pid)).collect();
        let token = token.to_string();
        let deadline = tokio::time::Instant::now() + DROP_TIMEOUT;
        while !waiting.is_empty() {
            let Ok(Ok(Some(answer))) = tokio::time::timeout_at(deadline, answers.try_recv()).await else { break };
            if let Some((dropped, cache)) = answer.payload().split_once(' ')
                && dropped == token
            {
                waiting.remove(cache);
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        let silent: Vec<i32> = waiting.into_values().collect();
        tracing::warn!(caches = silent.len(), "token caches did not confirm a revocation in time; cutting them off");
        // With a timeout, the call returns once each backend is gone, not merely
        // signalled: when the revoke returns, no silent cache is still listening.
        sqlx::query("SELECT pg_terminate_backend(pid, $2) FROM unnest($1::int4[]) AS pid")
            .bind(&silent)
            .bind(DROP_TIMEOUT.as_millis() as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The audit trail after an entry id, oldest first.
    pub async fn audit_log(&self, after: i64, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT id, at, actor, action, deployment_id, detail FROM audit WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, at, actor, action, deployment_id, detail)| AuditEntry {
                id,
                at,
                actor,
                action,
                deployment_id,
                detail,
            })
            .collect())
    }
}
