//! The API client: typed errors that say whether the API was unreachable or refused.

use serde_json::Value;
use std::time::Duration;

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
}

impl Api {
    pub(crate) fn new(base: &str, token: Option<&str>) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(value) = token.and_then(|t| reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).ok()) {
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self { base: base.trim_end_matches('/').to_owned(), client }
    }

    pub(crate) async fn submit(&self, body: &Value, idempotency_key: Option<&str>) -> Result<Value, ApiError> {
        let mut request = self.client.post(self.url("/v1/deployments")).json(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request).await
    }

    pub(crate) async fn post(&self, path: &str) -> Result<Value, ApiError> {
        self.send(self.client.post(self.url(path))).await
    }

    pub(crate) async fn deployment(&self, id: &str) -> Result<Value, ApiError> {
        self.send(self.client.get(self.url(&format!("/v1/deployments/{id}")))).await
    }

    pub(crate) async fn logs(&self, id: &str, after: i64, host: Option<&str>) -> Result<Value, ApiError> {
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
    ) -> Result<Value, ApiError> {
        let mut query = vec![("limit", limit.to_string())];
        for (name, value) in [("service", service), ("cluster", cluster), ("state", state)] {
            if let Some(value) = value {
                query.push((name, value.to_owned()));
            }
        }
        self.send(self.client.get(self.url("/v1/deployments")).query(&query)).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ApiError> {
        let response = request
            .send()
            .await
            .map_err(|e| ApiError::Unreachable { url: self.base.clone(), message: error_chain(&e) })?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| ApiError::Garbled(e.to_string()))?;
        if status.is_success() {
            return Ok(body);
        }
        Err(ApiError::Refused {
            status: status.as_u16(),
            code: body["error"]["code"].as_str().unwrap_or("unknown").to_owned(),
            message: body["error"]["message"].as_str().unwrap_or("no message").to_owned(),
        })
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
