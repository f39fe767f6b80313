//! The notifier: routes each deployment notification to its webhooks and delivers it,
//! signed, retrying with backoff until the receiver takes it.
//!
//! It runs in every API replica, never in a worker, so a receiver that is slow or down
//! costs a rollout nothing. A delivery has one id on every attempt (`Vesemir-Delivery`)
//! so a receiver can drop the repeat that an answer lost on the way back causes.

use chrono::Utc;
use futures_util::future::join_all;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};
use vesemir_core::config::Live;
use vesemir_core::store::{Attempt, DueDelivery, Store};
use vesemir_core::telemetry::error_chain;

/// Notifications routed, and deliveries attempted, per round.
const BATCH: i64 = 32;
/// No other replica takes a delivery this long after one took it.
const LEASE: Duration = Duration::from_secs(90);
/// Attempts before a delivery is given up (about two hours of backoff).
pub const MAX_ATTEMPTS: i32 = 20;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(600);

/// How long to wait before attempt `attempts + 1`: doubling from a second, at most
/// ten minutes; None once `MAX_ATTEMPTS` were made.
pub fn retry_in(attempts: i32) -> Option<Duration> {
    if attempts >= MAX_ATTEMPTS {
        return None;
    }
    let doubled = FIRST_RETRY.saturating_mul(1 << (attempts - 1).clamp(0, 20));
    Some(doubled.min(LONGEST_RETRY))
}

/// The `Vesemir-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of
/// "<t>.<body>" under the webhook's secret>`. Signing the time with the body lets a
/// receiver refuse a replay.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC takes a key of any length.
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

#[derive(Debug)]
pub struct Notifier {
    pub store: Store,
    pub live: Arc<Live>,
    pub client: reqwest::Client,
    pub interval: Duration,
}

impl Notifier {
    /// A notifier with its own HTTP client: no redirects (the answer is the
    /// receiver's), no proxy from the environment.
    pub fn new(store: Store, live: Arc<Live>, interval: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("vesemir/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { store, live, client, interval })
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => self.round().await,
            }
        }
    }

    async fn round(&self) {
        let config = self.live.get();
        let route = |service: &str, cluster: &str, event| {
            config
                .webhooks_of(service, cluster)
                .into_iter()
                .filter(|(_, hook)| hook.wants(event))
                .map(|(name, hook)| (name, hook.url.clone()))
                .collect()
        };
        if let Err(e) = self.store.route_notifications(BATCH, route).await {
            warn!(error = %e, "routing notifications failed");
        }
        let due = match self.store.due_deliveries(BATCH, LEASE).await {
            Ok(due) => due,
            Err(e) => {
                warn!(error = %e, "reading due deliveries failed");
                return;
            }
        };
        // Each attempt is bounded by its webhook's timeout, so one round is too.
        join_all(due.into_iter().map(|delivery| self.deliver(delivery))).await;
    }

    async fn deliver(&self, due: DueDelivery) {
        let id = due.notification.delivery;
        let deployment = &due.notification.deployment;
        let config = self.live.get();
        let hooks = config.webhooks_of(&deployment.service, &deployment.cluster);
        let attempt = match hooks.iter().find(|(name, _)| *name == due.webhook) {
            None => Attempt::Failed {
                status: None,
                error: format!("{} is no longer in the configuration", due.webhook),
                retry_in: None,
            },
            Some((_, hook)) => {
                let body = serde_json::to_vec(&due.notification).unwrap_or_default();
                let signed = signature(hook.secret.expose().as_bytes(), Utc::now().timestamp(), &body);
                let sent = self
                    .client
                    .post(&due.url)
                    .timeout(Duration::from_millis(hook.timeout_ms))
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header("Vesemir-Event", due.notification.event.as_str())
                    .header("Vesemir-Delivery", id.to_string())
                    .header("Vesemir-Signature", signed)
                    .body(body)
                    .send()
                    .await;
                let retry = retry_in(due.attempts + 1);
                match sent {
                    Ok(answer) if answer.status().is_success() => {
                        Attempt::Delivered { status: answer.status().as_u16() }
                    }
                    Ok(answer) => Attempt::Failed {
                        status: Some(answer.status().as_u16()),
                        error: format!("the receiver answered {}", answer.status()),
                        retry_in: retry,
                    },
                    Err(e) => Attempt::Failed { status: None, error: error_chain(&e), retry_in: retry },
                }
            }
        };
        match &attempt {
            Attempt::Delivered { .. } => info!(delivery = id, webhook = %due.webhook, "webhook delivered"),
            Attempt::Failed { error, retry_in, .. } => {
                warn!(delivery = id, webhook = %due.webhook, %error, retry_in = ?retry_in, "webhook delivery failed")
            }
        }
        if let Err(e) = self.store.record_delivery(id, &attempt).await {
            // The lease runs out and the delivery is attempted again: a repeat, which
            // the receiver can tell by its id.
            warn!(delivery = id, error = %e, "recording a delivery failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_time_and_the_body() {
        // Computed independently: printf '1700000000.{}' | openssl dgst -sha256 -hmac 0123456789abcdef
        let signed = signature(b"0123456789abcdef", 1_700_000_000, b"{}");
        assert_eq!(signed, "t=1700000000,v1=e4f8e2ecae2295b2ddb2f0b5584c8275e226c0ebe9b3b819e70156bb67122e3e");
        assert_ne!(signed, signature(b"0123456789abcdef", 1_700_000_001, b"{}"));
        assert_ne!(signed, signature(b"0123456789abcdef", 1_700_000_000, b"[]"));
    }

    #[test]
    fn retries_double_from_a_second_up_to_ten_minutes_then_stop() {
        assert_eq!(retry_in(1), Some(Duration::from_secs(1)));
        assert_eq!(retry_in(2), Some(Duration::from_secs(2)));
        assert_eq!(retry_in(5), Some(Duration::from_secs(16)));
        assert_eq!(retry_in(15), Some(LONGEST_RETRY));
        assert_eq!(retry_in(MAX_ATTEMPTS), None);
    }
}
