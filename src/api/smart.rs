//! SMART App Launch discovery: `/.well-known/smart-configuration`, at the server root and
//! under the FHIR base, without a token (apps read it before they have one). Served only
//! when an authorization server is configured; otherwise a 404 OperationOutcome, and the
//! CapabilityStatement claims no SMART either.

use actix_web::{HttpResponse, web};

use crate::api::{ApiError, AppState};
use crate::fhir::capability;

/// The discovery document (`application/json`, as SMART App Launch 2.x gives it).
pub async fn configuration(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let smart = state.smart.as_ref().ok_or(ApiError::NotFound("SMART on FHIR is not offered: no authorization server is configured"))?;
    Ok(HttpResponse::Ok().json(capability::smart_configuration(smart)))
}
