//! Refusing a body that declares itself too large, in a way the client can read.
//!
//! Answering 413 and closing while the client is still sending makes the kernel reset
//! the connection, and a reset can destroy the answer before the client reads it. So a
//! body whose `Content-Length` is over the limit but within [`DRAIN_BYTES`] is read and
//! thrown away (for at most [`DRAIN_TIME`]) before the answer; anything larger is cut
//! off at once, since reading it would hand the client our bandwidth. The courtesy of
//! reading is for authenticated callers only: anyone else is cut off at once.

use crate::AppState;
use crate::auth::authenticate;
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::time::Duration;

/// The most a refused body is read for, so that its sender sees the 413.
const DRAIN_BYTES: u64 = 4 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Middleware: 413 for a declared length over `max_body_bytes`. Bodies without a
/// length (chunked) are still held to the limit by the JSON extractor.
pub async fn declared_length(
    State((state, max_body_bytes)): State<(AppState, usize)>,
    request: Request,
    next: Next,
) -> Response {
    let Some(length) = declared(&request) else {
        return next.run(request).await;
    };
    if length <= max_body_bytes as u64 {
        return next.run(request).await;
    }
    let too_large =
        ApiError::PayloadTooLarge(format!("the body is {length} bytes; the limit is {max_body_bytes} bytes"));
    if length > DRAIN_BYTES || authenticate(&state, request.headers()).await.is_err() {
        let mut response = too_large.into_response();
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let _ = tokio::time::timeout(DRAIN_TIME, discard(request.into_body())).await;
    too_large.into_response()
}

fn declared(request: &Request) -> Option<u64> {
    request.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

async fn discard(body: Body) {
    let mut stream = body.into_data_stream();
    while let Some(Ok(_)) = stream.next().await {}
}
