//! The consumer: takes deployment ids from the queue, claims each deployment, runs it,
//! and settles the message only once the outcome is stored.

use crate::deployment::{Disposition, Runner};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use std::time::Duration;
use tracing::{Instrument, info, info_span, warn};
use uuid::Uuid;
use vesemir_core::queue;
use vesemir_core::retry::Backoff;
use vesemir_core::store::Claim;

/// Waits before asking the database again after it failed: from about this…
const STORE_RETRY: Duration = Duration::from_secs(1);
/// …up to this.
const MAX_STORE_RETRY: Duration = Duration::from_secs(15);

/// Handles one delivery from start to acknowledgement.
pub async fn handle(runner: Runner, worker_id: String, delivery: Delivery) {
    let settle = match queue::deployment_id(&delivery.data) {
        None => {
            warn!(body = ?String::from_utf8_lossy(&delivery.data), "message is not a deployment id; dead-lettering it");
            Settle::DeadLetter
        }
        // Every line about the deployment, here and in what it starts, carries its id.
        Some(id) => process(&runner, &worker_id, id).instrument(info_span!("deployment", id = %id)).await,
    };
    let result = match settle {
        Settle::Ack => delivery.ack(BasicAckOptions::default()).await,
        Settle::Requeue => delivery.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await,
        Settle::DeadLetter => delivery.reject(BasicRejectOptions { requeue: false }).await,
    };
    if let Err(e) = result {
        // The channel is gone: the broker redelivers the message, and the claim makes
        // the second delivery harmless.
        warn!(error = %e, "settling a message failed");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Requeue,
    DeadLetter,
}

async fn process(runner: &Runner, worker_id: &str, id: Uuid) -> Settle {
    let token = format!("{worker_id}/{}", Uuid::now_v7());
    let lease = runner.config.worker.lease_seconds;
    let mut shutdown = runner.shutdown.clone();
    // The holder seen last time, to tell a live holder (it renews) from a dead one.
    let mut seen: Option<(String, chrono::DateTime<chrono::Utc>)> = None;
    let mut backoff = Backoff::new(STORE_RETRY, MAX_STORE_RETRY);
    loop {
        if *shutdown.borrow() {
            return Settle::Requeue;
        }
        let wait = match runner.store.claim(id, &token, lease).await {
            Ok(Claim::Claimed(claim)) => {
                info!(token = %token, "claimed");
                return match runner.run(*claim).await {
                    Disposition::Ack => Settle::Ack,
                    Disposition::Requeue => Settle::Requeue,
                };
            }
            Ok(Claim::Finished(state)) => {
                info!(%state, "already finished; acknowledging the leftover message");
                return Settle::Ack;
            }
            Ok(Claim::Waiting { behind }) => {
                // Its turn comes when `behind` ends: that outcome queues it again.
                info!(%behind, "waiting for an older deployment of the same service and cluster");
                return Settle::Ack;
            }
            Ok(Claim::Missing) => {
                warn!("no such deployment; dead-lettering the message");
                return Settle::DeadLetter;
            }
            Ok(Claim::HeldBy { token: holder, until, remaining }) => {
                if seen.as_ref().is_some_and(|(h, u)| *h == holder && until > *u) {
                    // The holder renewed its lease: it is alive and holds its own
                    // delivery of this id, so this one is a duplicate.
                    info!(holder = %holder, "held by a live worker; dropping the duplicate");
                    return Settle::Ack;
                }
                seen = Some((holder, until));
                remaining + Duration::from_millis(250)
            }
            Err(e) => {
                warn!(error = %e, "claiming failed; retrying");
                backoff.next_wait()
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return Settle::Requeue,
        }
    }
}
