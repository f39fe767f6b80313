//! The API client: typed errors that say whether the API was unreachable or refused.

use serde::de::DeserializeOwned;
use std::time::Duration;
use vesemir_model::api::{DeploymentPage, ErrorBody, LogPage, RollbackRequest};
use vesemir_model::deployment::{Deployment, DeploymentRequest};
use vesemir_model::inventory::Inventory;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("cannot reach the Vesemir API at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("the API refused the request ({status}, {code}): {message}")]
    Refused { status: u16, code: String, message: String },
    #[error("the API answered something that is not JSON: {0}")]
    Garbled(String),
}

#[derive(Debug)]
pub(crate) struct Api {
    base: String,
    client: reqwest::Client,
    /// The same, without an overall request timeout.
    streaming: reqwest::Client,
}

impl Api {
    pub(crate) fn new(base: &str, token: Option<&str>) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(mut value) = token.and_then(|t| reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).ok())
        {
            // Sensitive: never printed by Debug.
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let builder =
            || reqwest::Client::builder().default_headers(headers.clone()).connect_timeout(Duration::from_secs(5));
        let client = builder().timeout(Duration::from_secs(30)).build().unwrap_or_default();
        // A stream's keep-alives come every 15 s: a minute without a byte is a dead link.
        let streaming = builder().read_timeout(Duration::from_secs(60)).build().unwrap_or_default();
        Self { base: base.trim_end_matches('/').to_owned(), client, streaming }
    }

    pub(crate) async fn submit(
        &self,
        body: &DeploymentRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Deployment, ApiError> {
        let mut request = self.client.post(self.url("/v1/deployments")).json(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request).await
    }

    pub(crate) async fn post(&self, path: &str) -> Result<Deployment, ApiError> {
        self.send(self.client.post(self.url(path))).await
    }

    /// Opens the deployment's event stream, resuming after `last_event_id`.
    pub(crate) async fn events(&self, id: &str, last_event_id: Option<&str>) -> Result<reqwest::Response, ApiError> {
        // No overall timeout: the stream lasts as long as the deployment.
        let mut request = self.streaming.get(self.url(&format!("/v1/deployments/{id}/events")));
        if let Some(last) = last_event_id {
            request = request.header("Last-Event-ID", last);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ApiError::Unreachable { url: self.base.clone(), message: error_chain(&e) })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap_or_default();
        Err(refused(status, &body))
    }

    /// Starts a rollback of the target's latest deployment.
    pub(crate) async fn rollback(
        &self,
        service: &str,
        cluster: &str,
        body: &RollbackRequest,
    ) -> Result<Deployment, ApiError> {
        let path = format!("/v1/services/{service}/clusters/{cluster}/rollback");
        self.send(self.client.post(self.url(&path)).json(body)).await
    }

    /// What runs where: every host of a service on a cluster.
    pub(crate) async fn inventory(&self, service: &str, cluster: &str) -> Result<Inventory, ApiError> {
        self.send(self.client.get(self.url(&format!("/v1/services/{service}/clusters/{cluster}/hosts")))).await
    }

    pub(crate) async fn deployment(&self, id: &str) -> Result<Deployment, ApiError> {
        self.send(self.client.get(self.url(&format!("/v1/deployments/{id}")))).await
    }

    pub(crate) async fn logs(&self, id: &str, after: i64, host: Option<&str>) -> Result<LogPage, ApiError> {
        let mut query = vec![("after", after.to_string())];
        if let Some(host) = host {
            query.push(("host", host.to_owned()));
        }
        self.send(self.client.get(self.url(&format!("/v1/deployments/{id}/logs"))).query(&query)).await
    }

    pub(crate) async fn list(
        &self,
        service: Option<&str>,
        cluster: Option<&str>,
        state: Option<&str>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<DeploymentPage, ApiError> {
        let mut query = vec![("limit", limit.to_string())];
        for (name, value) in [("service", service), ("cluster", cluster), ("state", state), ("cursor", cursor)] {
            if let Some(value) = value {
                query.push((name, value.to_owned()));
            }
        }
        self.send(self.client.get(self.url("/v1/deployments")).query(&query)).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T, ApiError> {
        let response = request
            .send()
            .await
            .map_err(|e| ApiError::Unreachable { url: self.base.clone(), message: error_chain(&e) })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| ApiError::Garbled(e.to_string()))?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| ApiError::Garbled(e.to_string()));
        }
        Err(refused(status.as_u16(), &body))
    }
}

/// A refusal: the API's `{"error": {"code", "message"}}`, or what a proxy in between
/// said instead.
fn refused(status: u16, body: &[u8]) -> ApiError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => ApiError::Refused { status, code: error.code, message: error.message },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let message =
                if text.trim().is_empty() { "no message".to_owned() } else { text.chars().take(200).collect() };
            ApiError::Refused { status, code: "unknown".to_owned(), message }
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let causes: Vec<String> = std::iter::successors(Some(error), |e| e.source()).map(ToString::to_string).collect();
    causes.join(": ")
}
