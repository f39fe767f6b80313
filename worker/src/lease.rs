//! The lease: renewed in the background while a deployment runs; if a renewal finds
//! the claim gone, the rollout is told to stop.

use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;
use uuid::Uuid;
use vesemir_core::store::Store;

/// Renews the lease until dropped; the task dies with its owner.
#[derive(Debug)]
pub struct LeaseKeeper {
    handle: JoinHandle<()>,
    lost: watch::Receiver<bool>,
}

impl LeaseKeeper {
    pub fn start(store: Store, id: Uuid, token: String, lease_seconds: u64) -> Self {
        let (tx, lost) = watch::channel(false);
        let handle = tokio::spawn(async move {
            let lease = Duration::from_secs(lease_seconds);
            let every = lease.div_f64(3.0);
            let mut last_renewal = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(every).await;
                let renewal = tokio::time::timeout(every, store.renew_lease(id, &token, lease_seconds)).await;
                match renewal {
                    Ok(Ok(true)) => last_renewal = tokio::time::Instant::now(),
                    Ok(Ok(false)) => {
                        warn!(deployment = %id, "lease lost: another worker holds the deployment");
                        let _ = tx.send(true);
                        return;
                    }
                    Ok(Err(e)) => warn!(deployment = %id, error = %e, "renewing the lease failed"),
                    Err(_) => warn!(deployment = %id, "renewing the lease timed out"),
                }
                // Stop starting hosts well before another worker could take over.
                if last_renewal.elapsed() >= lease / 2 {
                    let _ = tx.send(true);
                    return;
                }
            }
        });
        Self { handle, lost }
    }

    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.handle.abort();
    }
}
