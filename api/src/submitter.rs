//! Submits that arrive together are written together.
//!
//! A submit is one statement and one commit; under load, the commits are most of what
//! the database does. So a submit waits while the database is busy with earlier ones,
//! and the submits that gathered meanwhile go in one statement: one round trip and one
//! commit for all of them. Alone, a submit is written at once: it never waits for
//! company, only for the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Semaphore, mpsc, oneshot};
use vesemir_core::store::{NewDeployment, Store, StoreError, Submitted};

/// Submits written together, at most.
const MAX_BATCH: usize = 64;
/// Batches being written at once: a few, so that the database overlaps one commit's
/// flush with the next statement, and submits never take the whole pool.
const IN_FLIGHT: usize = 4;

type Answer = Result<Submitted, StoreError>;

#[derive(Debug)]
struct Job {
    new: NewDeployment,
    answer: oneshot::Sender<Answer>,
}

/// The way into the store for new deployments; cheap to clone.
#[derive(Debug, Clone)]
pub struct Submitter {
    jobs: mpsc::Sender<Job>,
    written: Arc<Written>,
}

/// What this process has written since it started: the submits, and the statements
/// they took (their ratio is the mean batch).
#[derive(Debug, Default)]
pub struct Written {
    pub submits: AtomicU64,
    pub statements: AtomicU64,
}

impl Submitter {
    /// Starts the batching task. It ends when the last `Submitter` is dropped, once
    /// the batches in flight are written.
    pub fn start(store: Store) -> Self {
        let (jobs, queue) = mpsc::channel(MAX_BATCH * IN_FLIGHT);
        let written = Arc::new(Written::default());
        tokio::spawn(batch(store, queue, written.clone()));
        Self { jobs, written }
    }

    pub fn written(&self) -> &Written {
        &self.written
    }

    /// Records `new` (see [`Store::submit`]), with whatever submits arrive alongside.
    pub async fn submit(&self, new: NewDeployment) -> Answer {
        let (answer, answered) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the API is shutting down".to_owned());
        self.jobs.send(Job { new, answer }).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

async fn batch(store: Store, mut queue: mpsc::Receiver<Job>, written: Arc<Written>) {
    let writers = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    loop {
        // Wait for a free writer first: meanwhile, submits gather in the queue.
        let Ok(writer) = writers.clone().acquire_owned().await else { return };
        if queue.recv_many(&mut jobs, MAX_BATCH).await == 0 {
            return;
        }
        let (news, answers): (Vec<_>, Vec<_>) = jobs.drain(..).map(|job| (job.new, job.answer)).unzip();
        written.submits.fetch_add(news.len() as u64, Ordering::Relaxed);
        written.statements.fetch_add(1, Ordering::Relaxed);
        let store = store.clone();
        tokio::spawn(async move {
            let written = store.submit_many(news).await;
            for (answer, result) in answers.into_iter().zip(written) {
                // A caller that went away does not undo the write; nobody to tell.
                let _ = answer.send(result);
            }
            drop(writer);
        });
    }
}
