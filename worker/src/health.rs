//! The HTTP health check of a host, from the worker: a GET that must answer the
//! expected status, retried for a while.

use crate::error_chain;
use crate::executor::Journal;
use crate::executor::output::OutputTail;
use std::time::Duration;
use vesemir_core::config::HealthConfig;
use vesemir_core::retry::Backoff;
use vesemir_model::deployment::LogStream;

/// The wait before the first retry; later ones grow to the configured interval.
const FIRST_RETRY: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub struct HealthCheck {
    client: reqwest::Client,
}

/// Why a host is not healthy: the last answer, after every attempt.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HealthError {
    pub message: String,
}

impl HealthCheck {
    /// A client that never follows a redirect (a health endpoint could send the worker
    /// elsewhere) and never goes through a proxy named in the environment. When it
    /// cannot be built the worker does not start: no other client would keep to that.
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build()?;
        Ok(Self { client })
    }

    /// One GET, as the health check makes it: its answer, never a redirect's target.
    pub async fn probe(&self, url: &str, timeout: Duration) -> Result<reqwest::Response, reqwest::Error> {
        self.client.get(url).timeout(timeout).send().await
    }

    /// Polls `url` until it answers the expected status, or for as long as `retries`
    /// attempts `interval_ms` apart would take. Within that time it probes at once,
    /// then soon after and less and less often (up to `interval_ms` apart): a service
    /// that comes up a moment after its restart is seen a moment after, not an
    /// interval after.
    pub async fn wait_healthy(
        &self,
        url: &str,
        config: &HealthConfig,
        journal: &Journal,
        tail: &mut OutputTail,
    ) -> Result<(), HealthError> {
        let interval = Duration::from_millis(config.interval_ms);
        let patience = interval.saturating_mul(config.retries.max(1) - 1);
        let deadline = tokio::time::Instant::now() + patience;
        let mut pace = Backoff::new(FIRST_RETRY.min(interval), interval);
        let mut last = String::new();
        for attempt in 1.. {
            let answer = self.probe(url, Duration::from_millis(config.timeout_ms)).await;
            last = match answer {
                Ok(response) if response.status().as_u16() == config.expected_status => {
                    let line = format!("health check {url}: {} (attempt {attempt})", response.status());
                    tail.push(&line);
                    journal.log(LogStream::System, line).await;
                    return Ok(());
                }
                Ok(response) => format!("answered {}, expected {}", response.status(), config.expected_status),
                Err(e) if e.is_timeout() => format!("no answer within {} ms", config.timeout_ms),
                Err(e) => format!("request failed: {}", error_chain(&e)),
            };
            let line = format!("health check {url}: {last} (attempt {attempt})");
            tail.push(&line);
            journal.log(LogStream::System, line).await;
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            // The last attempt comes at the deadline, not a wait past it.
            tokio::time::sleep(pace.next_wait().min(deadline - now)).await;
        }
        let waited = patience.as_millis();
        Err(HealthError { message: format!("health check {url} failed for {waited} ms: {last}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback HTTP server that gives every request the same answer.
    async fn answering(answer: String) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0; 1024];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://{address}/health")
    }

    #[tokio::test]
    async fn a_redirect_is_the_answer_and_is_never_followed() {
        let target = answering("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()).await;
        let redirecting = answering(format!(
            "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ))
        .await;
        let health = HealthCheck::new().unwrap();
        let answer = health.probe(&redirecting, Duration::from_secs(5)).await.unwrap();
        assert_eq!(answer.status().as_u16(), 302);
    }
}
