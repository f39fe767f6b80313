//! The web view, under `/ui/`: one HTML shell and its script and style, compiled into
//! the binary. Pages are drawn in the browser from the same REST API and event stream
//! the CLI uses, with the same bearer token.
//!
//! The token is kept in the tab's `sessionStorage` and sent as an `Authorization`
//! header, never as a cookie: the browser attaches nothing on its own to a request,
//! so a page elsewhere cannot make one on the user's behalf (no CSRF to defend), and
//! the token is gone when the tab closes. The price is that a script injected into
//! the page could read it, which is why the Content-Security-Policy allows only this
//! origin's own script, and every value is put in the page as text, never as markup.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const SHELL: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/app.css");

/// No inline script or style, no other origin, no framing, no form posting elsewhere.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                      img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { axum::response::Redirect::permanent("/ui/") }))
        .route("/ui/", get(shell))
        .route("/ui/deployments/{id}", get(shell))
        .route("/ui/assets/app.js", get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }))
        .route("/ui/assets/app.css", get(|| async { asset(STYLE, "text/css; charset=utf-8") }))
}

async fn shell() -> Response {
    asset(SHELL, "text/html; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
