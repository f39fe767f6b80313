//! `GET /openapi.json`: the API's OpenAPI document. It is written by hand beside the
//! routes (`api/openapi.json`), and the tests check it against them: every documented
//! operation is routed, every route is documented, and the submit body lists exactly
//! the fields a submit accepts.

use axum::http::header;
use axum::response::IntoResponse;

const DOCUMENT: &str = include_str!("../../openapi.json");

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
