//! The OpenAPI document for the endpoints outside `/fhir` (the FHIR API is described by
//! its CapabilityStatement at `/fhir/metadata`).

use actix_web::HttpResponse;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::api::{ApiError, audit, ops, sync, sync_socket};
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
        sync::changes,
        sync::push,
        sync::conflicts,
        sync::resolve,
        sync_socket::socket
    ),
    modifiers(&BearerJwt),
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
