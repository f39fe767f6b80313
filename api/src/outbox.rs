//! The outbox relay: publishes the id of every committed deployment, and keeps
//! re-publishing whatever the broker has not confirmed. A broker outage delays
//! deployments; it never loses one.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use uuid::Uuid;
use vesemir_core::queue::Publisher;
use vesemir_core::store::Store;

const SWEEP_BATCH: i64 = 100;

#[derive(Debug)]
pub struct Relay {
    pub store: Store,
    pub publisher: Arc<Publisher>,
    pub nudges: mpsc::Receiver<Uuid>,
    pub interval: Duration,
}

impl Relay {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut sweep = tokio::time::interval(self.interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(id) = self.nudges.recv() => self.publish_fresh(id).await,
                _ = sweep.tick() => self.sweep().await,
            }
        }
    }

    /// A deployment just committed by this replica.
    async fn publish_fresh(&self, id: Uuid) {
        match self.publisher.publish(id).await {
            Ok(()) => {
                if let Err(e) = self.store.outbox_confirmed(id).await {
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
        for id in batch.ids.clone() {
            let result = match self.publisher.publish(id).await {
                Ok(()) => {
                    published += 1;
                    batch.confirmed(id).await
                }
                Err(e) => {
                    warn!(deployment = %id, error = %e, "re-publishing failed; will retry");
                    // Stop here: the broker is likely down, and each attempt waits.
                    let _ = batch.failed(id, &e.to_string()).await;
                    break;
                }
            };
            if let Err(e) = result {
                warn!(deployment = %id, error = %e, "updating the outbox failed");
                break;
            }
        }
        if let Err(e) = batch.commit().await {
            warn!(error = %e, "committing the outbox sweep failed");
        } else if published > 0 {
            info!(published, "outbox: re-published unconfirmed deployments");
        }
    }
}
