//! Batched log writing: lines from every host of a deployment go through one channel
//! to one task that writes them in batches, so a chatty install costs a few INSERTs
//! a second, not one per line.
//!
//! Batching costs latency, which a follower sees, so it is done only under load: while
//! lines come at most [`SPARSE_RATE`] a second, a line is written after a short
//! [`LINGER`]; above that rate, a batch gathers for the full wait (or until it is full),
//! so a busy deployment costs the database no more writes than before.

use crate::ledger::Ledger;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, warn};
use uuid::Uuid;
use vesemir_core::retry::Backoff;
use vesemir_core::store::NewLogLine;
use vesemir_model::deployment::LogStream;
use vesemir_model::event::Event;

/// Lines waiting to be written; a full channel slows the readers down.
const CHANNEL_CAPACITY: usize = 10_000;
/// Lines a second up to which a stream is sparse: each batch waits only [`LINGER`].
pub const SPARSE_RATE: f64 = 25.0;
/// How long a batch of a sparse stream waits for company.
pub const LINGER: Duration = Duration::from_millis(10);
/// A batch is retried for about a minute of database trouble before it is given up.
const WRITE_ATTEMPTS: u32 = 30;

/// Where a deployment's log lines go. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogSink {
    tx: mpsc::Sender<NewLogLine>,
}

impl LogSink {
    pub async fn line(&self, host: Option<&str>, stream: LogStream, line: impl Into<String>) {
        self.send(host, stream, line.into(), None).await;
    }

    /// A line from Vesemir about a change, with the change as structured data.
    pub async fn event(&self, host: Option<&str>, line: impl Into<String>, event: Event) {
        self.send(host, LogStream::System, line.into(), Some(event)).await;
    }

    async fn send(&self, host: Option<&str>, stream: LogStream, line: String, event: Option<Event>) {
        let line = NewLogLine { host: host.map(str::to_owned), stream, line, at: Utc::now(), event };
        // Fails only once the pump has stopped, when nobody is left to read the line.
        let _ = self.tx.send(line).await;
    }

    /// A line from Vesemir itself, about one host or (without a host) the deployment.
    pub async fn system(&self, host: Option<&str>, line: impl Into<String>) {
        self.line(host, LogStream::System, line).await;
    }
}

/// The writing task; `finish` flushes what is left.
#[derive(Debug)]
pub struct LogPump {
    handle: JoinHandle<()>,
}

impl LogPump {
    pub fn start(ledger: Arc<dyn Ledger>, id: Uuid, batch_lines: usize, batch_wait: Duration) -> (LogSink, LogPump) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let handle = tokio::spawn(pump(ledger, id, rx, batch_lines.max(1), batch_wait).in_current_span());
        (LogSink { tx }, LogPump { handle })
    }

    /// Waits until every line sent before every sink was dropped is written.
    pub async fn finish(self, sink: LogSink) {
        drop(sink);
        if let Err(e) = self.handle.await {
            warn!(error = %e, "log pump task failed");
        }
    }
}

async fn pump(
    ledger: Arc<dyn Ledger>,
    id: Uuid,
    mut rx: mpsc::Receiver<NewLogLine>,
    batch_lines: usize,
    wait: Duration,
) {
    let mut batch = Vec::with_capacity(batch_lines);
    // The previous batch: when its first line came, and how many lines it held.
    let mut previous: Option<(tokio::time::Instant, usize)> = None;
    loop {
        // Block for the first line, then gather more: briefly while the stream is
        // sparse, for the full wait under load.
        let Some(first) = rx.recv().await else { break };
        let arrived = tokio::time::Instant::now();
        batch.push(first);
        let busy = previous.is_some_and(|(at, lines)| {
            let elapsed = (arrived - at).as_secs_f64();
            elapsed <= 0.0 || lines as f64 / elapsed > SPARSE_RATE
        });
        let deadline = arrived + if busy { wait } else { LINGER.min(wait) };
        while batch.len() < batch_lines {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(line)) => batch.push(line),
                Ok(None) | Err(_) => break,
            }
        }
        previous = Some((arrived, batch.len()));
        write(ledger.as_ref(), id, &batch).await;
        batch.clear();
    }
}

async fn write(ledger: &dyn Ledger, id: Uuid, batch: &[NewLogLine]) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    for attempt in 1..=WRITE_ATTEMPTS {
        match ledger.append_logs(id, batch).await {
            Ok(()) => return,
            Err(e) if attempt < WRITE_ATTEMPTS => {
                warn!(error = %e, attempt, "writing log lines failed; retrying");
                backoff.sleep().await;
            }
            Err(e) => warn!(error = %e, lines = batch.len(), "log lines lost"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::memory::MemoryLedger;

    fn pump(batch_lines: usize) -> (Arc<MemoryLedger>, LogSink, LogPump) {
        let ledger = Arc::new(MemoryLedger::new("worker-1", Vec::new()));
        let (sink, pump) = LogPump::start(ledger.clone(), Uuid::nil(), batch_lines, Duration::from_millis(200));
        (ledger, sink, pump)
    }

    #[tokio::test(start_paused = true)]
    async fn a_sparse_stream_is_written_line_by_line_within_the_linger() {
        let (ledger, sink, pump) = pump(500);
        for i in 0..10 {
            sink.system(None, format!("tick {i}")).await;
            tokio::time::sleep(LINGER + Duration::from_millis(1)).await;
            assert_eq!(ledger.read().lines.len(), i + 1, "tick {i} is written within the linger");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pump.finish(sink).await;
        assert!(ledger.read().batches.iter().all(|n| *n == 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_stream_is_batched_for_the_full_wait_and_by_size() {
        let (ledger, sink, pump) = pump(100);
        // A thousand lines a second for a second.
        for i in 0..1000 {
            sink.system(None, format!("line {i}")).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        pump.finish(sink).await;
        let batches = ledger.read().batches.clone();
        assert_eq!(batches.iter().sum::<usize>(), 1000, "every line, once");
        assert!(batches.len() <= 12, "about one write per full wait, not one per line: {batches:?}");
        assert!(batches.iter().all(|n| *n <= 100), "never more than batch_lines: {batches:?}");
        let lines: Vec<String> = ledger.read().lines.iter().map(|l| l.line.clone()).collect();
        assert_eq!(lines[..2], ["line 0", "line 1"], "in order");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_cut_at_batch_lines_and_a_quiet_spell_makes_the_stream_sparse_again() {
        let (ledger, sink, pump) = pump(3);
        for i in 0..7 {
            sink.system(None, format!("line {i}")).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(ledger.read().batches, [3, 3, 1], "full batches at once, the rest after the wait");
        tokio::time::sleep(Duration::from_secs(1)).await;
        sink.system(Some("vm-01"), "after a quiet second").await;
        tokio::time::sleep(LINGER + Duration::from_millis(1)).await;
        assert_eq!(ledger.read().batches, [3, 3, 1, 1], "written at once again");
        pump.finish(sink).await;
    }
}
