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
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(id) = self.nudges.recv() => self.publish_fresh(id).await,
                _ = sweep.tick() => self.sweep().await,
                _ = reap.tick() => self.reap().await,
            }
        }
    }

    /// A deployment just committed by this replica.
    async fn publish_fresh(&self, id: Uuid) {
        match self.publisher.publish(id).await {
            Ok(()) => {
                if let Err(e) = self.store.outbox_confirmed(Pending::fresh(id)).await {
                    // The sweep will publish it again: a duplicate, which the claim absorbs.
                    warn!(deployment = %id, error = %e, "clearing the outbox row failed");
                }
            }
            Err(e) => {
                warn!(deployment = %id, error = %e, "publishing failed; the outbox will retry")
            }
        }
    }

    /// Rows older than one interval were not confirmed by the request that made them.
    async fn sweep(&self) {
        let min_age_ms = self.interval.as_millis() as i64;
        let mut batch = match self.store.outbox_batch(min_age_ms, SWEEP_BATCH).await {
            Ok(batch) => batch,
            Err(e) => {
                warn!(error = %e, "reading the outbox failed");
                return;
            }
        };
        let mut published = 0;
        for row in batch.pending.clone() {
            let result = match self.publisher.publish(row.id).await {
                Ok(()) => {
                    published += 1;
                    batch.confirmed(row).await
                }
                Err(e) => {
                    warn!(deployment = %row.id, error = %e, "re-publishing failed; will retry");
                    // Stop here: the broker is likely down, and each attempt waits.
                    let _ = batch.failed(row, &e.to_string()).await;
                    break;
                }
            };
            if let Err(e) = result {
                warn!(deployment = %row.id, error = %e, "updating the outbox failed");
                break;
            }
        }
        if let Err(e) = batch.commit().await {
            warn!(error = %e, "committing the outbox sweep failed");
        } else if published > 0 {
            info!(published, "outbox: re-published unconfirmed deployments");
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
