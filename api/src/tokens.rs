//! Verified tokens, kept in memory so that a request costs no database round trip
//! to authenticate.
//!
//! Revocation stays immediate: the cache listens on its own connection for
//! revocations, drops the token and answers that it did; the revoke waits for every
//! listening cache's answer (see `Store::revoke_token`). The cache serves only while
//! it listens: when its connection drops it empties and stops remembering until it
//! listens again, since a revocation could pass unheard meanwhile.

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;
use vesemir_core::access::Caller;
use vesemir_core::retry::Backoff;
use vesemir_core::store::{TOKEN_CACHE_NAME, TOKEN_DROPPED_CHANNEL, TOKEN_REVOKED_CHANNEL};

/// What the cache knows of a live token: the hash its secret must match, and who it is.
#[derive(Debug, Clone)]
pub struct Known {
    pub hash: String,
    pub caller: Caller,
}

#[derive(Debug, Default)]
struct Entries {
    listening: bool,
    /// Moves on at every drop and every change of `listening`: a lookup that began
    /// before one may have read what was true before it, and is not remembered.
    generation: u64,
    known: HashMap<Uuid, Known>,
}

/// Taken before reading a token from the database; remembering needs it unexpired.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(Option<u64>);

#[derive(Debug)]
pub struct TokenCache {
    /// Names this cache in the answers it gives and on its connection.
    id: Uuid,
    entries: Mutex<Entries>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self { id: Uuid::new_v4(), entries: Mutex::default() }
    }
}

impl TokenCache {
    fn entries(&self) -> MutexGuard<'_, Entries> {
        // The map holds no invariant a panic could break halfway: keep using it.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The token `id`, if it is known and the cache is listening.
    pub fn get(&self, id: Uuid) -> Option<Known> {
        let entries = self.entries();
        entries.listening.then(|| entries.known.get(&id).cloned()).flatten()
    }

    pub fn ticket(&self) -> Ticket {
        let entries = self.entries();
        Ticket(entries.listening.then_some(entries.generation))
    }

    /// Remembers a token read from the database after `ticket` was taken, unless a
    /// revocation or a gap in listening came in between.
    pub fn remember(&self, ticket: Ticket, id: Uuid, known: Known) {
        let mut entries = self.entries();
        if entries.listening && ticket.0 == Some(entries.generation) {
            entries.known.insert(id, known);
        }
    }

    fn drop_token(&self, id: Uuid) {
        let mut entries = self.entries();
        entries.generation += 1;
        entries.known.remove(&id);
    }

    fn set_listening(&self, listening: bool) {
        let mut entries = self.entries();
        entries.generation += 1;
        entries.listening = listening;
        entries.known.clear();
    }

    /// Listens for revocations until shutdown, reconnecting as needed.
    pub async fn listen(self: Arc<Self>, database_url: String, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                result = self.listen_once(&database_url, &mut backoff) => {
                    self.set_listening(false);
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "listening for token revocations failed; not caching tokens until it works again");
                    }
                }
            }
            if !backoff.wait(&mut shutdown).await {
                break;
            }
        }
        self.set_listening(false);
    }

    /// One connection's worth of listening; returns when it is lost.
    async fn listen_once(&self, database_url: &str, backoff: &mut Backoff) -> Result<(), sqlx::Error> {
        let name = format!("{TOKEN_CACHE_NAME} {}", self.id);
        let options = PgConnectOptions::from_str(database_url)?.application_name(&name);
        let pool = PgPoolOptions::new().max_connections(1).idle_timeout(None).max_lifetime(None);
        let mut listener = PgListener::connect_with(&pool.connect_with(options).await?).await?;
        // A reconnection made inside the listener would not carry our name, nor
        // would we know of it: a lost connection ends this one instead.
        listener.eager_reconnect(false);
        listener.listen(TOKEN_REVOKED_CHANNEL).await?;
        self.set_listening(true);
        backoff.reset();
        while let Some(revoked) = listener.try_recv().await? {
            let Ok(token) = Uuid::parse_str(revoked.payload()) else { continue };
            self.drop_token(token);
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(TOKEN_DROPPED_CHANNEL)
                .bind(format!("{token} {}", self.id))
                .execute(&mut listener)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vesemir_model::access::{Role, Scope};

    fn known(name: &str) -> Known {
        Known {
            hash: "h".to_owned(),
            caller: Caller { name: name.to_owned(), role: Role::Deployer, scope: Scope::default() },
        }
    }

    fn listening() -> TokenCache {
        let cache = TokenCache::default();
        cache.set_listening(true);
        cache
    }

    #[test]
    fn a_token_read_while_listening_is_served_from_memory() {
        let cache = listening();
        let id = Uuid::new_v4();
        cache.remember(cache.ticket(), id, known("ci"));
        assert_eq!(cache.get(id).map(|k| k.caller.name), Some("ci".to_owned()));
    }

    #[test]
    fn nothing_is_remembered_or_served_while_not_listening() {
        let cache = TokenCache::default();
        let id = Uuid::new_v4();
        cache.remember(cache.ticket(), id, known("ci"));
        assert!(cache.get(id).is_none());

        let cache = listening();
        cache.remember(cache.ticket(), id, known("ci"));
        cache.set_listening(false);
        assert!(cache.get(id).is_none(), "a lost connection empties the cache");
    }

    #[test]
    fn a_read_that_a_revocation_overtook_is_not_remembered() {
        let cache = listening();
        let (id, other) = (Uuid::new_v4(), Uuid::new_v4());
        let ticket = cache.ticket();
        // The database said "live"; then the revocation of any token arrived.
        cache.drop_token(other);
        cache.remember(ticket, id, known("ci"));
        assert!(cache.get(id).is_none());
    }

    #[test]
    fn a_read_that_began_before_listening_resumed_is_not_remembered() {
        let cache = TokenCache::default();
        let id = Uuid::new_v4();
        let ticket = cache.ticket();
        cache.set_listening(true);
        cache.remember(ticket, id, known("ci"));
        assert!(cache.get(id).is_none());
    }

    #[test]
    fn a_revoked_token_is_forgotten() {
        let cache = listening();
        let id = Uuid::new_v4();
        cache.remember(cache.ticket(), id, known("ci"));
        cache.drop_token(id);
        assert!(cache.get(id).is_none());
    }
}
