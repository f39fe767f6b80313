//! `vesemir-api`: validates and records deployment requests, hands their ids to the
//! queue, and serves their state and logs.
//!
//! A submit is answered only once the deployment and its outbox row are committed;
//! the [`outbox`] relay then publishes the id with publisher confirms and keeps
//! re-publishing until the broker confirms. The API keeps no state of its own.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auth;
pub mod error;
pub mod events;
pub mod extract;
pub mod limit;
pub mod outbox;
pub mod routes;
pub mod submitter;
pub mod tokens;
pub mod ui;
pub mod validate;
pub mod webhooks;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower_http::trace::TraceLayer;
use uuid::Uuid;
use vesemir_core::config::{Config, Live, Secret};
use vesemir_core::queue::Publisher;
use vesemir_core::store::{Store, StoreError};

/// Ids waiting for the relay; past this, the outbox sweep takes over.
const NUDGE_CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
pub struct AppState {
    /// The configuration in force; SIGHUP replaces it (see [`Live`]).
    pub live: Arc<Live>,
    pub store: Store,
    pub publisher: Arc<Publisher>,
    pub nudge: mpsc::Sender<Uuid>,
    pub submitter: submitter::Submitter,
    pub hub: Arc<events::Hub>,
    pub tokens: Arc<tokens::TokenCache>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("cannot build the webhook client: {0}")]
    WebhookClient(reqwest::Error),
}

impl AppState {
    /// The configuration in force now: a request keeps the one it started with.
    pub fn config(&self) -> Arc<Config> {
        self.live.get()
    }
}

/// A built API: bound, migrated, ready to serve.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    router: Router,
    relay: outbox::Relay,
    notifier: webhooks::Notifier,
    store: Store,
    publisher: Arc<Publisher>,
    hub: Arc<events::Hub>,
    tokens: Arc<tokens::TokenCache>,
    database_url: Secret,
    live: Arc<Live>,
}

impl App {
    /// Builds the API on the configuration in force in `live`; what it binds and
    /// connects to is read once, here.
    pub async fn build(live: Arc<Live>) -> Result<Self, StartError> {
        let config = live.get();
        let store = Store::connect(&config.database).await?;
        store.migrate().await?;
        let listener =
            TcpListener::bind(config.api.listen).await.map_err(|e| StartError::Listen(config.api.listen, e))?;
        let publisher = Arc::new(Publisher::new(config.queue.clone()));
        let (nudge, nudges) = mpsc::channel(NUDGE_CAPACITY);
        let relay = outbox::Relay {
            store: store.clone(),
            publisher: publisher.clone(),
            nudges,
            interval: Duration::from_millis(config.api.outbox_interval_ms),
            reap_after: Duration::from_secs(config.api.reap_after_seconds),
        };
        let max_body = config.api.max_body_bytes;
        let hub = events::Hub::new(store.clone());
        let database_url = config.database.url.clone();
        let notifier =
            webhooks::Notifier::new(store.clone(), live.clone(), Duration::from_millis(config.api.outbox_interval_ms))
                .map_err(StartError::WebhookClient)?;
        let tokens = Arc::new(tokens::TokenCache::default());
        let state = AppState {
            live: live.clone(),
            store: store.clone(),
            publisher: publisher.clone(),
            nudge,
            submitter: submitter::Submitter::start(store.clone()),
            hub: hub.clone(),
            tokens: tokens.clone(),
        };
        let router = router(state, max_body);
        Ok(Self { listener, router, relay, notifier, store, publisher, hub, tokens, database_url, live })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let (stop_tx, stop) = watch::channel(false);
        let relay = tokio::spawn(self.relay.run(stop.clone()));
        let notifier = tokio::spawn(self.notifier.run(stop.clone()));
        let reloader = tokio::spawn(vesemir_core::config::reload_on_hangup(self.live, |_| Ok(()), stop.clone()));
        let listener = tokio::spawn(self.hub.listen(self.database_url.expose().to_owned(), stop.clone()));
        let revocations = tokio::spawn(self.tokens.listen(self.database_url.expose().to_owned(), stop.clone()));
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            })
            .await;
        let _ = relay.await;
        let _ = notifier.await;
        let _ = reloader.await;
        let _ = listener.await;
        let _ = revocations.await;
        self.publisher.close().await;
        self.store.close().await;
        served
    }
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    use routes::{admin, deployments, health, inventory, openapi, rollback};
    Router::new()
        .route("/v1/deployments", get(deployments::list).post(deployments::submit))
        .route("/v1/deployments/{id}", get(deployments::get))
        .route("/v1/deployments/{id}/logs", get(deployments::logs))
        .route("/v1/deployments/{id}/events", get(events::events))
        .route("/v1/deployments/{id}/cancel", axum::routing::post(deployments::cancel))
        .route("/v1/deployments/{id}/retry", axum::routing::post(deployments::retry))
        .route("/v1/deployments/{id}/deliveries", get(deployments::deliveries))
        .route("/v1/services/{service}/clusters/{cluster}/hosts", get(inventory::hosts))
        .route("/v1/services/{service}/clusters/{cluster}/rollback", axum::routing::post(rollback::roll_back))
        .route("/v1/tokens", get(admin::list_tokens).post(admin::create_token))
        .route("/v1/tokens/{name}", axum::routing::delete(admin::revoke_token))
        .route("/v1/audit", get(admin::audit))
        .route("/v1/whoami", get(admin::whoami))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .merge(ui::router())
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state((state.clone(), max_body_bytes), limit::declared_length))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
