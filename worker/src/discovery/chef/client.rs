//! A signed HTTP client for a Chef server's API.

use super::sign::{SERVER_API_VERSION, SignError, Signer};
use crate::error_chain;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;
use vesemir_core::retry::Backoff;

/// The Chef client version this client claims; servers expect the header.
const CHEF_VERSION: &str = "18.0.0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChefError {
    #[error("Chef server configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error(
        "the Chef server refused client {client} (401: {message}). Check the worker's clock (Chef allows 15 minutes \
         of skew) and that the configured key is this client's"
    )]
    Unauthorized { client: String, message: String },
    #[error("the Chef server forbids client {client} this request (403: {message})")]
    Forbidden { client: String, message: String },
    #[error("the Chef server rejected the search query {query:?} (400: {message})")]
    BadQuery { query: String, message: String },
    #[error(
        "the Chef server has no {path} (404: {message}): check the search index and the organization in server_url"
    )]
    NotFound { path: String, message: String },
    #[error("the Chef server answered {status} to {path}: {message}")]
    Http { status: u16, path: String, message: String },
    #[error("cannot reach the Chef server at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("the Chef server's answer to {path} is not what a search returns: {message}")]
    Garbled { path: String, message: String },
}

#[derive(Debug)]
pub struct ChefClient {
    http: reqwest::Client,
    /// `https://host:port`, without a path.
    origin: String,
    /// The server URL's path (`/organizations/acme`), prefixed to every request.
    prefix: String,
    signer: Signer,
    retries: u32,
    /// Where request timestamps come from (replaceable to test a skewed clock).
    clock: fn() -> chrono::DateTime<chrono::Utc>,
}

impl ChefClient {
    pub fn new(
        server_url: &str,
        signer: Signer,
        timeout: Duration,
        retries: u32,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, ChefError> {
        let url = reqwest::Url::parse(server_url)
            .map_err(|e| ChefError::Config(format!("server_url {server_url:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ChefError::Config(format!("server_url {server_url:?} must be an http(s) URL")));
        }
        let origin = url.origin().ascii_serialization();
        let prefix = url.path().trim_end_matches('/').to_owned();
        let mut builder = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).no_proxy();
        if let Some(pem) = ca_pem {
            for cert in
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| ChefError::Config(format!("ca_file: {e}")))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| ChefError::Config(e.to_string()))?;
        Ok(Self { http, origin, prefix, signer, retries, clock: chrono::Utc::now })
    }

    pub fn with_clock(self, clock: fn() -> chrono::DateTime<chrono::Utc>) -> Self {
        Self { clock, ..self }
    }

    /// A signed request; retried on 5xx answers and connection errors.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        context: &str,
    ) -> Result<Value, ChefError> {
        let full_path = format!("{}{path}", self.prefix);
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default()).unwrap_or_default();
        let mut backoff = Backoff::new(Duration::from_millis(300), Duration::from_secs(5));
        loop {
            match self.send(&method, &full_path, query, &body, context).await {
                Err(e @ (ChefError::Unreachable { .. } | ChefError::Http { status: 500..=599, .. }))
                    if backoff.attempts() < self.retries =>
                {
                    tracing::warn!(error = %e, attempt = backoff.attempts() + 1, "Chef request failed; retrying");
                    backoff.sleep().await;
                }
                result => return result,
            }
        }
    }

    async fn send(
        &self,
        method: &Method,
        full_path: &str,
        query: &[(&str, String)],
        body: &[u8],
        context: &str,
    ) -> Result<Value, ChefError> {
        let timestamp = (self.clock)().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        // The signed path never includes the query string.
        let headers = self.signer.headers(method.as_str(), full_path, body, &timestamp)?;
        let url = format!("{}{full_path}", self.origin);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .query(query)
            .header("Accept", "application/json")
            .header("X-Chef-Version", CHEF_VERSION)
            .header("X-Ops-Server-API-Version", SERVER_API_VERSION);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if !body.is_empty() {
            request = request.header("Content-Type", "application/json").body(body.to_vec());
        }
        let response =
            request.send().await.map_err(|e| ChefError::Unreachable { url: url.clone(), message: error_chain(&e) })?;
        let status = response.status();
        let text =
            response.text().await.map_err(|e| ChefError::Unreachable { url: url.clone(), message: error_chain(&e) })?;
        if status.is_success() {
            if text.trim().is_empty() {
                // goiardi answers unknown paths (an organization it does not have) so.
                return Err(ChefError::Garbled {
                    path: full_path.to_owned(),
                    message: "an empty answer: is the organization in server_url right?".to_owned(),
                });
            }
            return serde_json::from_str(&text)
                .map_err(|e| ChefError::Garbled { path: full_path.to_owned(), message: e.to_string() });
        }
        let message = error_message(&text);
        let client = self.signer.user().to_owned();
        Err(match status {
            StatusCode::UNAUTHORIZED => ChefError::Unauthorized { client, message },
            StatusCode::FORBIDDEN => ChefError::Forbidden { client, message },
            StatusCode::BAD_REQUEST => ChefError::BadQuery { query: context.to_owned(), message },
            StatusCode::NOT_FOUND => ChefError::NotFound { path: full_path.to_owned(), message },
            _ => ChefError::Http { status: status.as_u16(), path: full_path.to_owned(), message },
        })
    }
}

/// Chef's error bodies: `{"error": ["..."]}`, sometimes `{"error": "..."}`.
pub fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = match parsed.as_ref().map(|v| &v["error"]) {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "),
        Some(Value::String(s)) => s.clone(),
        _ => body.chars().take(300).collect(),
    };
    message.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_in_both_shapes_are_read() {
        assert_eq!(error_message(r#"{"error": ["a", "b"]}"#), "a; b");
        assert_eq!(error_message(r#"{"error": "oops"}"#), "oops");
        assert_eq!(error_message("<html>bad gateway</html>"), "<html>bad gateway</html>");
    }
}
