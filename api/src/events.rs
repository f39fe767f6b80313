//! Live events: `GET /v1/deployments/{id}/events`, Server-Sent Events.
//!
//! A deployment's log lines are its ordered event stream (lines about changes carry
//! them as data); each SSE event's id is the line's sequence number, so a client that
//! reconnects with `Last-Event-ID` gets every later event exactly once. The stream
//! ends after the deployment's final state.
//!
//! Cost: one LISTEN connection per API process wakes a [`Feed`] per followed
//! deployment; a feed reads the new lines once per wake-up and hands them to all of
//! its followers. A follower queries on its own only to catch up (on connect, or when
//! it fell behind).

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{DeploymentId, Query};
use crate::routes::openapi::NotFound;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use uuid::Uuid;
use vesemir_core::access::Caller;
use vesemir_core::retry::Backoff;
use vesemir_core::store::{EVENTS_CHANNEL, Store, StoreError};
use vesemir_model::api::ErrorBody;
use vesemir_model::deployment::LogLine;
use vesemir_model::event::Event;

/// Lines read per query.
const PAGE: i64 = 1000;
/// A feed reads even without a notification this often (one may be lost while the
/// LISTEN connection reconnects).
const FALLBACK: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The followed deployments of this API process.
#[derive(Debug)]
pub struct Hub {
    store: Store,
    feeds: Mutex<HashMap<Uuid, Weak<Feed>>>,
}

/// One followed deployment: new lines, read once, for every follower.
#[derive(Debug)]
pub struct Feed {
    lines: broadcast::Sender<Arc<Vec<LogLine>>>,
    wake: Arc<Notify>,
}

impl Hub {
    pub fn new(store: Store) -> Arc<Self> {
        Arc::new(Self { store, feeds: Mutex::new(HashMap::new()) })
    }

    /// The feed of a deployment, started if nobody follows it yet.
    async fn feed(&self, id: Uuid) -> Result<Arc<Feed>, StoreError> {
        if let Some(feed) = self.lock().get(&id).and_then(Weak::upgrade) {
            return Ok(feed);
        }
        // Start at the current end: followers catch up on their own.
        let start = self.store.logs_end(id).await?;
        let mut feeds = self.lock();
        if let Some(feed) = feeds.get(&id).and_then(Weak::upgrade) {
            return Ok(feed);
        }
        let (lines, _) = broadcast::channel(64);
        let feed = Arc::new(Feed { lines, wake: Arc::new(Notify::new()) });
        feeds.insert(id, Arc::downgrade(&feed));
        tokio::spawn(read_feed(self.store.clone(), id, start, Arc::downgrade(&feed), feed.wake.clone()));
        Ok(feed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Weak<Feed>>> {
        self.feeds.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wake(&self, id: Option<Uuid>) {
        let mut feeds = self.lock();
        feeds.retain(|_, feed| feed.strong_count() > 0);
        for (feed_id, feed) in feeds.iter() {
            if id.is_none_or(|id| id == *feed_id)
                && let Some(feed) = feed.upgrade()
            {
                feed.wake.notify_one();
            }
        }
    }

    /// Listens for appended lines until shutdown, reconnecting as needed.
    pub async fn listen(self: Arc<Self>, database_url: String, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            let listener = async {
                let mut listener = sqlx::postgres::PgListener::connect(&database_url).await?;
                listener.listen(EVENTS_CHANNEL).await?;
                // Anything appended while not listening is read now.
                self.wake(None);
                backoff.reset();
                loop {
                    let notification = listener.recv().await?;
                    self.wake(Uuid::parse_str(notification.payload()).ok());
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                result = listener => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "listening for events failed; reconnecting");
                    }
                }
            }
            if !backoff.wait(&mut shutdown).await {
                return;
            }
        }
    }
}

async fn read_feed(store: Store, id: Uuid, mut last: i64, feed: Weak<Feed>, wake: Arc<Notify>) {
    loop {
        let Some(live) = feed.upgrade() else { return };
        loop {
            match store.logs(id, last, None, PAGE).await {
                Ok(batch) if !batch.is_empty() => {
                    last = batch.last().map_or(last, |l| l.seq);
                    let full = batch.len() as i64 == PAGE;
                    let _ = live.lines.send(Arc::new(batch));
                    if !full {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(deployment = %id, error = %e, "reading events failed");
                    break;
                }
            }
        }
        drop(live);
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(FALLBACK) => {}
        }
    }
}

fn is_final(line: &LogLine) -> bool {
    line.event.as_ref().is_some_and(Event::is_final)
}

fn to_event(line: &LogLine) -> SseEvent {
    let kind = line.event.as_ref().map_or("log", Event::kind);
    let data = serde_json::to_string(line).unwrap_or_default();
    SseEvent::default().id(line.seq.to_string()).event(kind).data(data)
}

/// Where a follower is, and whether it is done.
enum Follow {
    More,
    Done,
}

struct Follower {
    store: Store,
    id: Uuid,
    after: i64,
    out: mpsc::Sender<Result<SseEvent, Infallible>>,
}

impl Follower {
    async fn send(&mut self, lines: &[LogLine]) -> Follow {
        for line in lines {
            if line.seq <= self.after {
                continue;
            }
            if self.out.send(Ok(to_event(line))).await.is_err() {
                return Follow::Done;
            }
            self.after = line.seq;
            if is_final(line) {
                return Follow::Done;
            }
        }
        Follow::More
    }

    /// Reads what it missed straight from the database.
    async fn catch_up(&mut self) -> Follow {
        loop {
            let Ok(lines) = self.store.logs(self.id, self.after, None, PAGE).await else { return Follow::Done };
            if let Follow::Done = self.send(&lines).await {
                return Follow::Done;
            }
            if (lines.len() as i64) < PAGE {
                break;
            }
        }
        // A deployment that ended before final states were events ends here.
        match self.store.deployment_state(self.id).await {
            Ok(Some(state))
                if state.is_final() && self.store.logs_end(self.id).await.is_ok_and(|end| end <= self.after) =>
            {
                Follow::Done
            }
            _ => Follow::More,
        }
    }

    async fn run(mut self, feed: Arc<Feed>, mut lines: broadcast::Receiver<Arc<Vec<LogLine>>>) {
        if let Follow::Done = self.catch_up().await {
            return;
        }
        loop {
            let step = match lines.recv().await {
                Ok(batch) => {
                    let behind = batch.first().is_some_and(|l| l.seq > self.after + 1);
                    if behind && let Follow::Done = self.catch_up().await {
                        return;
                    }
                    self.send(&batch).await
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up().await,
                Err(broadcast::error::RecvError::Closed) => Follow::Done,
            };
            if let Follow::Done = step {
                drop(feed);
                return;
            }
        }
    }
}

/// `Last-Event-ID` (a reconnecting client) or `?after=` (a first connection).
fn resume_point(headers: &HeaderMap, after: Option<i64>) -> Result<i64, ApiError> {
    let header = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let after = match header {
        Some(text) => text
            .trim()
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request("invalid_last_event_id", "Last-Event-ID must be an event id"))?,
        None => after.unwrap_or(0),
    };
    if after < 0 {
        return Err(ApiError::bad_request("invalid_last_event_id", "an event id is 0 or more"));
    }
    Ok(after)
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// Start after this sequence number.
    #[param(minimum = 0, default = 0)]
    after: Option<i64>,
}

/// Live events (Server-Sent Events)
///
/// A client that reconnects with `Last-Event-ID` (or first connects with `?after=SEQ`)
/// gets every later event exactly once.
#[utoipa::path(
    get, path = "/v1/deployments/{id}/events", operation_id = "streamDeploymentEvents", tag = "deployments",
    params(
        DeploymentId,
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0, description = "The last event id received; takes precedence over `after`."),
        EventParams,
    ),
    responses(
        (status = 200, description = "An event stream: every log line, host result, step change and state change, in order. Each event has `id` = the line's `seq`, `event` = `log`, `step`, `host`, `rotation` or `state` (the line's event type, `log` for a plain line), and `data` = the LogLine as JSON. Keep-alive comments every 15 s; the stream ends after the final state.", body = String, content_type = "text/event-stream"),
        (status = 400, description = "invalid_id, invalid_last_event_id (also for a negative `after`), or invalid_query.", body = ErrorBody),
        (status = 404, response = NotFound),
    )
)]
pub async fn events(
    axum::extract::State(state): axum::extract::State<AppState>,
    caller: Caller,
    DeploymentId(id): DeploymentId,
    Query(params): Query<EventParams>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let after = resume_point(&headers, params.after)?;
    crate::auth::require_scope_of(&state, &caller, id, "following a deployment").await?;
    if state.store.deployment_state(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("deployment {id} does not exist")));
    }
    let feed = state.hub.feed(id).await?;
    // Subscribed before catching up: nothing committed in between is missed.
    let lines = feed.lines.subscribe();
    let (out, mut events) = mpsc::channel(256);
    let follower = Follower { store: state.store.clone(), id, after, out };
    tokio::spawn(follower.run(feed, lines));
    let stream = futures_util::stream::poll_fn(move |cx| events.poll_recv(cx));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
