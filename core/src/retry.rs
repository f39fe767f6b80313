//! How every retry loop waits: exponential backoff with jitter, capped, and cut short
//! by shutdown.
//!
//! Jitter keeps many workers that lost the same dependency at the same moment from
//! coming back at the same moment too. Each wait is drawn from the upper half of the
//! exponential step (so it never collapses to nothing).

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Waits start around `base` and double after each failure, up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max, attempt: 0 }
    }

    /// Failures since the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// After a success: the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The wait after one more failure: random in [step/2, step], where step is
    /// `base * 2^failures`, at most `max`.
    pub fn next_wait(&mut self) -> Duration {
        let step = self.base.saturating_mul(1 << self.attempt.min(16)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        half + half.mul_f64(random_fraction())
    }

    /// Sleeps the next wait; false when `shutdown` came first (or had already come).
    pub async fn wait(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        if *shutdown.borrow() {
            return false;
        }
        let wait = self.next_wait();
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = shutdown.changed() => false,
        }
    }

    /// Sleeps the next wait (for loops that stop by other means).
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.next_wait()).await;
    }
}

/// A fraction in [0, 1) from the standard library's randomly seeded hasher: enough to
/// spread retries, and no generator to carry.
fn random_fraction() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().build_hasher().finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_within_their_jitter_and_stop_at_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let steps = [100, 200, 400, 800, 1000, 1000];
        for step in steps {
            let wait = backoff.next_wait();
            let step = Duration::from_millis(step);
            assert!(wait >= step / 2 && wait <= step, "{wait:?} outside [{:?}, {step:?}]", step / 2);
        }
        assert_eq!(backoff.attempts(), 6);
        backoff.reset();
        assert!(backoff.next_wait() <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_wait_ends_early_on_shutdown() {
        let (stop, mut shutdown) = watch::channel(false);
        let mut backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let waiting = tokio::spawn(async move { backoff.wait(&mut shutdown).await });
        stop.send(true).unwrap();
        assert!(!waiting.await.unwrap());
    }
}
