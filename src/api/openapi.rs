//! The OpenAPI document for the endpoints outside `/fhir` (the FHIR API is described by
//! its CapabilityStatement at `/fhir/metadata`).

use actix_web::HttpResponse;
use utoipa::OpenApi;
use utoipa::openapi::Response;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};

use crate::api::{ApiError, admin, audit, ops, sync, sync_socket};
use crate::service::Caller;

struct BearerJwt;

impl utoipa::Modify for BearerJwt {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// Answers that come from the edge rather than from a handler, added to every operation
/// that does not describe them itself, so that none can forget them: 400 (the request
/// context refuses control characters in paths and query strings; the query and header
/// extractors refuse malformed values), 401 wherever a token is needed, and 429 (the
/// per-address limit applies to every request, the per-principal one to every token).
struct EdgeResponses;

impl utoipa::Modify for EdgeResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let none = SecurityRequirement::default();
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                let public = operation.security.as_ref().is_some_and(|s| s.iter().all(|r| *r == none));
                let mut edge = vec![
                    (
                        "400",
                        "Malformed request: a control character (such as U+0000) in the path or query string, or a query parameter or header outside its constraints (OperationOutcome)",
                    ),
                    ("429", "Too many requests from this address or principal; see Retry-After (OperationOutcome)"),
                ];
                if !public {
                    edge.push(("401", "Missing, expired or invalid bearer token (OperationOutcome)"));
                }
                for (status, description) in edge {
                    operation.responses.responses.entry(status.to_owned()).or_insert_with(|| Response::new(description).into());
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "CareVault operations API",
        description = "Endpoints outside the FHIR base. Errors are FHIR OperationOutcomes. The FHIR R4 API is described by GET /fhir/metadata."
    ),
    paths(
        ops::healthz,
        ops::readyz,
        ops::metrics,
        openapi_json,
        audit::public_key,
        audit::checkpoint,
        audit::entries,
        audit::inclusion,
        audit::consistency,
        audit::export,
        audit::disclosures,
        audit::report,
        sync::changes,
        sync::push,
        sync::conflicts,
        sync::resolve,
        sync_socket::socket,
        admin::create_hold,
        admin::holds,
        admin::release_hold,
        admin::runs
    ),
    modifiers(&BearerJwt, &EdgeResponses),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses(
        (status = 200, description = "OpenAPI 3.1 document", content_type = "application/json"),
        (status = 401, description = "No valid token (OperationOutcome)")))]
pub async fn openapi_json(_caller: Caller) -> Result<HttpResponse, ApiError> {
    let body = ApiDoc::openapi().to_json().map_err(|_| ApiError::Internal)?;
    Ok(HttpResponse::Ok().content_type("application/json").body(body))
}
