//! The outbox relay: publishes the id of every committed deployment, and keeps
//! re-publishing whatever the broker has not confirmed. A broker outage delays
//! deployments; it never loses one.
//!
//! The relay also runs the reaper (`Store::reap`): a message can vanish after it was
//! confirmed (a channel closed under a live holder that later died, a dead letter),
//! so every so often the deployments that no message would start are put back in
//! the outbox. Every API replica runs both; the database hands each row to one.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use uuid::Uuid;
use vesemir_core::queue::Publisher;
use vesemir_core::store::{Pending, Store};

const SWEEP_BATCH: i64 = 100;
/// Fresh ids published together at most.
const FRESH_BATCH: usize = 64;

#[derive(Debug)]
pub struct Relay {
    pub store: Store,
    pub publisher: Arc<Publisher>,
    pub nudges: mpsc::Receiver<Uuid>,
    pub interval: Duration,
    pub reap_after: Duration,
}

impl Relay {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut sweep = tokio::time::interval(self.interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Often enough that a reaped deployment waits at most 1.5 × `reap_after`.
        let mut reap = tokio::time::interval(self.reap_after / 2);
        reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fresh = Vec::with_capacity(FRESH_BATCH);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                n = self.nudges.recv_many(&mut fresh, FRESH_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    self.publish_fresh(&fresh).await;
                    fresh.clear();
                }
                _ = sweep.tick() => self.sweep().await,
                _ = reap.tick() => self.reap().await,
            }
        }
    }

    /// Deployments just committed by this replica: whatever piled up while the last
    /// batch was out goes in the next, so a busy API publishes and clears in batches.
    async fn publish_fresh(&self, ids: &[Uuid]) {
        match self.publisher.publish(ids).await {
            Ok(()) => {
                let rows: Vec<Pending> = ids.iter().copied().map(Pending::fresh).collect();
                if let Err(e) = self.store.outbox_confirmed(&rows).await {
                    // The sweep will publish them again: duplicates, which the claim absorbs.
                    warn!(deployments = ids.len(), error = %e, "clearing outbox rows failed");
                }
            }
            Err(e) => {
                warn!(deployments = ids.len(), error = %e, "publishing failed; the outbox will retry")
            }
        }
    }

    /// Rows older than one interval were not confirmed by the request that made them.
    async fn sweep(&self) {
        let min_age_ms = self.interval.as_millis() as i64;
        let mut batch = match self.store.outbox_batch(min_age_ms, SWEEP_BATCH).await {
            Ok(batch) if batch.pending.is_empty() => return,
            Ok(batch) => batch,
            Err(e) => {
                warn!(error = %e, "reading the outbox failed");
                return;
            }
        };
        let pending = std::mem::take(&mut batch.pending);
        let ids: Vec<Uuid> = pending.iter().map(|p| p.id).collect();
        let published = self.publisher.publish(&ids).await;
        let recorded = match &published {
            Ok(()) => batch.confirmed(&pending).await,
            Err(e) => {
                warn!(deployments = ids.len(), error = %e, "re-publishing failed; will retry");
                batch.failed(&pending, &e.to_string()).await
            }
        };
        if let Err(e) = recorded {
            warn!(error = %e, "updating the outbox failed");
        }
        match batch.commit().await {
            Err(e) => warn!(error = %e, "committing the outbox sweep failed"),
            Ok(()) if published.is_ok() => info!(published = ids.len(), "outbox: re-published unconfirmed deployments"),
            Ok(()) => {}
        }
    }

    /// Puts back in the outbox what no message would start; the next sweep publishes it.
    async fn reap(&self) {
        match self.store.reap(self.reap_after).await {
            Ok(reaped) => {
                for id in reaped {
                    info!(deployment = %id, "reaper: no live holder or no message; queued again");
                }
            }
            Err(e) => warn!(error = %e, "reaping failed"),
        }
    }
}
