//! `GET /openapi.json`: the API's OpenAPI document, generated from the handlers'
//! annotations and the model's types, so it cannot drift from what the API does. The
//! end-to-end contract test calls every endpoint and checks each answer against it.

use axum::http::header;
use axum::response::IntoResponse;
use std::sync::OnceLock;
use utoipa::openapi::Ref;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToResponse};
use vesemir_model::api::ErrorBody;

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Vesemir API",
        version = "1",
        description = "Submit deployments, follow their hosts, steps and logs, cancel and retry them; manage tokens and read the audit trail.\n\n\
            Every endpoint but /healthz, /readyz, /metrics and /openapi.json needs `Authorization: Bearer <token>`. \
            Every refusal is a 4xx with `{\"error\": {\"code\", \"message\"}}`: an unknown path is a 404 and a wrong method a 405 with that body, \
            and any request declaring a body over `api.max_body_bytes` is a 413 (read and discarded first for an authenticated caller, so it can read the answer; cut off at once otherwise). \
            A token may carry a scope (services and clusters): every action on a deployment outside it, and every token or audit request by a scoped token, \
            is a 403 that names the scope; every 403 is in the audit trail. While the database is unreachable, endpoints that need it answer 503."
    ),
    paths(
        super::deployments::list,
        super::deployments::submit,
        super::deployments::get,
        super::deployments::logs,
        crate::events::events,
        super::deployments::cancel,
        super::deployments::retry,
        super::deployments::deliveries,
        super::rollback::roll_back,
        super::inventory::hosts,
        super::admin::list_tokens,
        super::admin::create_token,
        super::admin::revoke_token,
        super::admin::audit,
        super::admin::whoami,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        openapi,
    ),
    components(responses(Unauthorized, Forbidden, NotFound, PayloadTooLarge, UnsupportedMediaType, Unavailable, Internal)),
    modifiers(&BearerAuth, &CommonRefusals),
    security(("bearerAuth" = [])),
    tags(
        (name = "deployments", description = "Submit, read, follow, cancel, retry and roll back deployments."),
        (name = "hosts", description = "What runs where: each host's version and load-balancer state."),
        (name = "admin", description = "Tokens and the audit trail: admin tokens without a scope only; and who a token is, for any."),
        (name = "health", description = "Probes and metrics: no token needed."),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = Http::builder()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("A token from `vesemir-api token create` or `POST /v1/tokens`: `vsm_<id>_<secret>`."))
            .build();
        components.add_security_scheme("bearerAuth", SecurityScheme::Http(scheme));
    }
}

/// Every operation that needs a token may answer 401, 403 (role or scope), 500 and
/// 503: documented once here rather than on each handler, which lists only its own.
struct CommonRefusals;

impl Modify for CommonRefusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let common = [("401", "Unauthorized"), ("403", "Forbidden"), ("500", "Internal"), ("503", "Unavailable")];
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.post, &mut item.delete];
            // Public operations say so with their own (empty) security requirement.
            for operation in operations.into_iter().flatten().filter(|o| o.security.is_none()) {
                for (status, name) in common {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| Ref::from_response_name(name).into());
                }
            }
        }
    }
}

/// The document as JSON, generated once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| ApiDoc::openapi().to_pretty_json().unwrap_or_default())
}

/// This document.
#[utoipa::path(
    get, path = "/openapi.json", operation_id = "openapi", tag = "health", security(()),
    responses((status = 200, description = "The API's OpenAPI document.", body = Object))
)]
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document())
}

/// No token, not `Bearer <token>`, or a token that is not valid or was revoked (code
/// `unauthorized`; the answer carries `WWW-Authenticate: Bearer`).
#[derive(Debug, ToResponse)]
pub struct Unauthorized(pub ErrorBody);

/// The token's role or scope does not allow this (code `forbidden`); a scope refusal
/// names the scope. Recorded in the audit trail.
#[derive(Debug, ToResponse)]
pub struct Forbidden(pub ErrorBody);

/// The deployment does not exist (code `not_found`).
#[derive(Debug, ToResponse)]
pub struct NotFound(pub ErrorBody);

/// The body is over `api.max_body_bytes` (code `payload_too_large`). The connection is
/// closed after this answer.
#[derive(Debug, ToResponse)]
pub struct PayloadTooLarge(pub ErrorBody);

/// The body is not sent with `Content-Type: application/json` (code
/// `unsupported_media_type`).
#[derive(Debug, ToResponse)]
pub struct UnsupportedMediaType(pub ErrorBody);

/// The database is unreachable; try again shortly (code `unavailable`).
#[derive(Debug, ToResponse)]
pub struct Unavailable(pub ErrorBody);

/// A bug or an unexpected database failure; details are logged only (code `internal`).
#[derive(Debug, ToResponse)]
pub struct Internal(pub ErrorBody);
