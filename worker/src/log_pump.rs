//! Batched log writing: lines from every host of a deployment go through one channel
//! to one task that writes them in batches, so a chatty install costs a few INSERTs
//! a second, not one per line.

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
    loop {
        // Block for the first line, then gather more for at most `wait`.
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + wait;
        while batch.len() < batch_lines {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(line)) => batch.push(line),
                Ok(None) | Err(_) => break,
            }
        }
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

    #[tokio::test(start_paused = true)]
    async fn lines_are_written_in_batches_of_at_most_batch_lines_and_a_lone_line_after_the_wait() {
        let ledger = Arc::new(MemoryLedger::new("worker-1", Vec::new()));
        let (sink, pump) = LogPump::start(ledger.clone(), Uuid::nil(), 3, Duration::from_millis(100));
        for i in 0..7 {
            sink.system(None, format!("line {i}")).await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(ledger.read().batches, [3, 3, 1], "full batches at once, the rest after the wait");

        sink.system(Some("vm-01"), "late").await;
        tokio::time::sleep(Duration::from_millis(99)).await;
        assert_eq!(ledger.read().batches.len(), 3, "a lone line waits for company");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(ledger.read().batches, [3, 3, 1, 1]);

        sink.system(None, "last").await;
        pump.finish(sink).await;
        let lines: Vec<String> = ledger.read().lines.iter().map(|l| l.line.clone()).collect();
        assert_eq!(lines.len(), 9, "finish flushes what is left: {lines:?}");
        assert_eq!(lines[..2], ["line 0", "line 1"], "in order");
    }
}
