//! The outbox: a row per deployment id that must reach the broker, kept until the
//! broker confirmed it; and the reaper, which puts back in the outbox the deployments
//! that no message would otherwise ever start.

use super::{Store, StoreError};
use sqlx::{Postgres, Transaction};
use std::time::Duration;
use uuid::Uuid;

/// An outbox row as the relay publishes it: the id, at the generation it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub id: Uuid,
    pub generation: i64,
}

impl Pending {
    /// The row a submit creates: its first generation.
    pub fn fresh(id: Uuid) -> Self {
        Self { id, generation: 0 }
    }
}

/// Outbox rows locked for this relay (other relays skip them) until `commit`.
#[derive(Debug)]
pub struct OutboxBatch {
    tx: Transaction<'static, Postgres>,
    pub pending: Vec<Pending>,
}

impl OutboxBatch {
    /// The broker confirmed these ids: they no longer need relaying.
    pub async fn confirmed(&mut self, rows: &[Pending]) -> Result<(), StoreError> {
        confirm(&mut self.tx, rows).await
    }

    /// Publishing these failed: counted, with why, for whoever looks at the outbox.
    pub async fn failed(&mut self, rows: &[Pending], error: &str) -> Result<(), StoreError> {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        sqlx::query("UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE deployment_id = ANY($1)")
            .bind(&ids)
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

/// Deletes each row only at the generation that was published: an enqueue made since
/// (a wake-up, a release) moved the generation on and keeps the row for another publish.
async fn confirm(conn: &mut sqlx::PgConnection, rows: &[Pending]) -> Result<(), StoreError> {
    let (ids, generations): (Vec<Uuid>, Vec<i64>) = rows.iter().map(|r| (r.id, r.generation)).unzip();
    sqlx::query(
        "DELETE FROM outbox o USING unnest($1::uuid[], $2::int8[]) AS p (id, generation) \
         WHERE o.deployment_id = p.id AND o.generation = p.generation",
    )
    .bind(&ids)
    .bind(&generations)
    .execute(conn)
    .await?;
    Ok(())
}

impl Store {
    /// Locks up to `limit` outbox rows older than `min_age_ms` (younger ones are still
    /// being published by the request that made them).
    pub async fn outbox_batch(&self, min_age_ms: i64, limit: i64) -> Result<OutboxBatch, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT deployment_id, generation FROM outbox \
             WHERE created_at < now() - make_interval(secs => $1) \
             ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(min_age_ms as f64 / 1000.0)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let pending = rows.into_iter().map(|(id, generation)| Pending { id, generation }).collect();
        Ok(OutboxBatch { tx, pending })
    }

    /// The request that created the row published it: drop the row, unless it was
    /// enqueued again meanwhile.
    pub async fn outbox_confirmed(&self, rows: &[Pending]) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        confirm(&mut conn, rows).await
    }

    /// Queues `id` again through the outbox (an operator's or a test's nudge; the
    /// store's own wake-ups do the same inside their transactions).
    pub async fn enqueue(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query(concat!("INSERT INTO outbox (deployment_id) VALUES ($1) ", supersede!()))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn outbox_len(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox").fetch_one(&self.pool).await?;
        Ok(n)
    }

    /// The reaper: queues again, through the outbox, every deployment that no message
    /// may ever start, and returns their ids. That is a deployment in flight whose
    /// holder's lease expired more than `after` ago (the holder died and its message
    /// is gone: consumed as a duplicate, dead-lettered, or lost with a channel), and a
    /// queued one whose turn has come (its target is free and nothing submitted
    /// before it waits) for more than `after`. A deployment already in the outbox is
    /// left to it. Each reap of the same deployment waits twice as long as the one
    /// before (up to 64 × `after`) until a worker claims it, so that deployments
    /// waiting for a busy pool of workers do not pile duplicates onto the broker.
    /// Safe to run from every API replica at once: each deployment is reaped by one.
    pub async fn reap(&self, after: Duration) -> Result<Vec<Uuid>, StoreError> {
        let rows: Vec<(Uuid,)> = sqlx::query_as(concat!(
            "WITH due AS ( \
                 SELECT d.id FROM deployments d \
                 WHERE d.state IN ('queued', 'running', 'cancelling') \
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.deployment_id = d.id) \
                   AND (d.reaped_at IS NULL \
                        OR d.reaped_at < now() - make_interval(secs => $1 * power(2, LEAST(d.reaps, 6)))) \
                   AND CASE WHEN d.state = 'queued' THEN \
                         d.created_at < now() - make_interval(secs => $1) \
                         AND ((d.request->>'dry_run')::boolean IS TRUE OR NOT ",
            waits_behind!("d"),
            ") \
                       ELSE (d.worker_id IS NULL OR d.lease_expires_at < now()) \
                         AND COALESCE(d.lease_expires_at, d.created_at) < now() - make_interval(secs => $1) \
                       END \
                 ORDER BY d.queue_seq LIMIT 100 \
                 FOR UPDATE OF d SKIP LOCKED), \
             reaped AS ( \
                 UPDATE deployments SET reaped_at = now(), reaps = reaps + 1 \
                 FROM due WHERE deployments.id = due.id RETURNING deployments.id) \
             INSERT INTO outbox (deployment_id) SELECT id FROM reaped ",
            supersede!(),
            " RETURNING deployment_id"
        ))
        .bind(after.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }
}
