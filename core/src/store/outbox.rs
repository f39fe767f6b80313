//! The outbox: a row per accepted deployment whose id the broker has not yet confirmed.

use super::{Store, StoreError};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// Outbox rows locked for this relay (other relays skip them) until `commit`.
#[derive(Debug)]
pub struct OutboxBatch {
    tx: Transaction<'static, Postgres>,
    pub ids: Vec<Uuid>,
}

impl OutboxBatch {
    /// The broker confirmed this id: it no longer needs relaying.
    pub async fn confirmed(&mut self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM outbox WHERE deployment_id = $1").bind(id).execute(&mut *self.tx).await?;
        Ok(())
    }

    pub async fn failed(&mut self, id: Uuid, error: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE deployment_id = $1")
            .bind(id)
            .bind(error)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// Locks up to `limit` outbox rows older than `min_age_ms` (younger ones are still
    /// being published by the request that made them).
    pub async fn outbox_batch(&self, min_age_ms: i64, limit: i64) -> Result<OutboxBatch, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT deployment_id FROM outbox \
             WHERE created_at < now() - make_interval(secs => $1) \
             ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(min_age_ms as f64 / 1000.0)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        Ok(OutboxBatch { tx, ids: rows.into_iter().map(|(id,)| id).collect() })
    }

    /// The request that created the row published it: drop the row.
    pub async fn outbox_confirmed(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM outbox WHERE deployment_id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn outbox_len(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox").fetch_one(&self.pool).await?;
        Ok(n)
    }
}
