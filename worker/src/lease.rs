//! The lease and the fence.
//!
//! The [`LeaseKeeper`] renews the claim's lease in the background. The [`Fence`] is
//! what every remote action asks first: it holds only while the last successful
//! renewal is recent enough that no other worker can have taken the deployment over.
//! It is judged on this worker's own monotonic clock, at every ask, so a worker cut
//! off from the database, or one that was stalled, stops acting by itself, whether or
//! not the renewal task ran meanwhile.

use crate::ledger::{Holder, Ledger};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, warn};
use uuid::Uuid;

/// The claim as this worker can vouch for it.
#[derive(Debug, Clone)]
pub struct Fence {
    /// When the last successful renewal was sent: the lease runs from no earlier.
    renewed: Arc<Mutex<Instant>>,
    /// How long after a renewal this worker still acts: half the lease, so that the
    /// worker stops well before the database lets another claim in.
    margin: Duration,
    /// Set when the database said the claim is gone.
    gone: watch::Receiver<bool>,
}

/// Why a fenced action was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this worker lost its claim on the deployment: no further action on the host")]
pub struct ClaimLost;

impl Fence {
    fn new(margin: Duration, gone: watch::Receiver<bool>) -> Self {
        Self { renewed: Arc::new(Mutex::new(Instant::now())), margin, gone }
    }

    /// A fence that always holds, for callers outside any claim (unit tests).
    pub fn unfenced() -> Self {
        let (_, gone) = watch::channel(false);
        Self::new(Duration::MAX / 4, gone)
    }

    fn deadline(&self) -> Instant {
        let renewed = *self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        renewed + self.margin
    }

    pub fn held(&self) -> bool {
        !*self.gone.borrow() && Instant::now() < self.deadline()
    }

    /// Ok while the claim holds: ask before every remote action.
    pub fn check(&self) -> Result<(), ClaimLost> {
        if self.held() { Ok(()) } else { Err(ClaimLost) }
    }

    /// Resolves once the claim no longer holds: race a long action against it.
    pub async fn lost(&self) {
        let mut gone = self.gone.clone();
        loop {
            if !self.held() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(self.deadline()) => {}
                changed = gone.changed() => {
                    if changed.is_err() {
                        // The keeper is gone, and with it any renewal: wait out the margin.
                        tokio::time::sleep_until(self.deadline()).await;
                        return;
                    }
                }
            }
        }
    }

    fn renewed_at(&self, at: Instant) {
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }
}

/// Renews the lease until dropped; the task dies with its owner.
#[derive(Debug)]
pub struct LeaseKeeper {
    handle: JoinHandle<()>,
    fence: Fence,
}

impl LeaseKeeper {
    /// Starts renewing a claim just taken (its lease runs from about now).
    pub fn start(ledger: Arc<dyn Ledger>, id: Uuid, token: String, lease_seconds: u64) -> Self {
        let (gone_tx, gone) = watch::channel(false);
        let lease = Duration::from_secs(lease_seconds);
        let fence = Fence::new(lease / 2, gone);
        let keeper = fence.clone();
        let handle = tokio::spawn(
            async move {
                let every = lease.div_f64(3.0);
                loop {
                    tokio::time::sleep(every).await;
                    let sent = Instant::now();
                    let renewal =
                        tokio::time::timeout(every, ledger.renew_lease(Holder { id, token: &token }, lease_seconds))
                            .await;
                    match renewal {
                        Ok(Ok(true)) => keeper.renewed_at(sent),
                        Ok(Ok(false)) => {
                            warn!("lease lost: another worker holds the deployment");
                            let _ = gone_tx.send(true);
                            return;
                        }
                        Ok(Err(e)) => warn!(error = %e, "renewing the lease failed"),
                        Err(_) => warn!("renewing the lease timed out"),
                    }
                    if !keeper.held() {
                        warn!("no renewal for half the lease: this worker stops acting on the deployment");
                        let _ = gone_tx.send(true);
                        return;
                    }
                }
            }
            .in_current_span(),
        );
        Self { handle, fence }
    }

    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::memory::MemoryLedger;

    const LEASE_SECONDS: u64 = 30;

    fn keeper(ledger: &Arc<MemoryLedger>) -> LeaseKeeper {
        LeaseKeeper::start(ledger.clone(), Uuid::nil(), "worker-1".to_owned(), LEASE_SECONDS)
    }

    #[tokio::test(start_paused = true)]
    async fn a_fence_falls_half_a_lease_after_the_last_renewal_and_not_before() {
        let (_tx, gone) = watch::channel(false);
        let fence = Fence::new(Duration::from_secs(15), gone);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let renewed = Instant::now();
        fence.renewed_at(renewed);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(fence.held(), "a renewal moved the deadline");
        fence.lost().await;
        assert_eq!(renewed.elapsed(), Duration::from_secs(15), "exactly when the margin ran out");
        assert_eq!(fence.check(), Err(ClaimLost));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fence_falls_at_once_when_the_database_says_the_claim_is_gone() {
        let (tx, gone) = watch::channel(false);
        let fence = Fence::new(Duration::from_secs(3600), gone);
        let waiter = tokio::spawn({
            let fence = fence.clone();
            async move { fence.lost().await }
        });
        let start = Instant::now();
        tx.send(true).unwrap();
        waiter.await.unwrap();
        assert!(!fence.held());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_lease_is_renewed_every_third_of_it_and_holds_for_as_long_as_renewals_do() {
        let ledger = Arc::new(MemoryLedger::new("worker-1", Vec::new()));
        let keeper = keeper(&ledger);
        tokio::time::sleep(Duration::from_secs(10 * LEASE_SECONDS + 5)).await;
        assert!(keeper.fence().held());
        assert_eq!(ledger.read().renewals, 30, "one renewal each 10 s of 305 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_renewal_drops_the_fence_at_that_renewal() {
        let ledger = Arc::new(MemoryLedger::new("worker-1", Vec::new()));
        let keeper = keeper(&ledger);
        let start = Instant::now();
        ledger.take_over("worker-2");
        keeper.fence().lost().await;
        assert_eq!(start.elapsed(), Duration::from_secs(10), "the first renewal is refused");
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_that_never_answer_drop_the_fence_half_a_lease_after_the_last_one_that_did() {
        let ledger = Arc::new(MemoryLedger::new("worker-1", Vec::new()));
        let keeper = keeper(&ledger);
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(25)).await;
        ledger.read().stalled = true;
        keeper.fence().lost().await;
        // Renewed at 10 s and 20 s; the one at 30 s hangs: the fence falls at 20 + 15 s.
        assert_eq!(start.elapsed(), Duration::from_secs(35));
    }
}
