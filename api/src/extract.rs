//! Extractors whose rejections are [`ApiError`]s, so malformed input always gets the
//! API's JSON error body.

use crate::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts};

#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);
