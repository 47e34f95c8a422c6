//! Retention administration (SPEC section 7): legal holds and the retention job's runs
//! with their destruction records.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use crate::api::{ApiError, AppState, blocking};
use crate::fhir::IssueCode;
use crate::service::Caller;

/// What a hold request must look like; the only text a malformed one gets back, so
/// nothing the client sent is repeated.
const HOLD_SHAPE: &str = "a legal hold is {\"patient\": \"Patient/ID\", \"reason\": \"...\"} (both strings, nothing else)";

#[utoipa::path(post, path = "/admin/legal-holds", tag = "retention",
    request_body(description = "`{patient: \"Patient/ID\", reason}`", content = Object),
    responses((status = 201, description = "`{id, patient, reason, active, createdBy, createdAt, releasedBy, releasedAt}`: the hold, placed"),
        (status = 400, description = "Not a hold: not JSON, a duplicate key, U+0000 in a string, or not the shape {patient, reason} (OperationOutcome)"),
        (status = 403, description = "The caller lacks the legal_holds capability (OperationOutcome)"),
        (status = 413, description = "Body over the body limit (OperationOutcome)"),
        (status = 415, description = "Body not application/json (OperationOutcome)"),
        (status = 422, description = "patient is not Patient/ID of a patient of this tenant, or reason is empty or over 1000 characters (OperationOutcome)"),
        (status = 503, description = "Database or ledger unavailable; retry (OperationOutcome)")))]
pub async fn create_hold(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let body = crate::api::fhir::read_json(&req, payload, state.body_limit).await?;
    let (patient, reason) = match &body {
        Value::Object(map) if map.len() == 2 => match (map.get("patient"), map.get("reason")) {
            (Some(Value::String(p)), Some(Value::String(r))) => (p.clone(), r.clone()),
            _ => return Err(ApiError::bad_request(IssueCode::Structure, HOLD_SHAPE)),
        },
        _ => return Err(ApiError::bad_request(IssueCode::Structure, HOLD_SHAPE)),
    };
    let services = state.services.clone();
    let hold = blocking(move || Ok(services.retention().create_hold(&caller, &patient, &reason)?)).await?;
    let location = format!("{}/admin/legal-holds/{}", state.public_url, hold.id);
    Ok(HttpResponse::Created().insert_header(("Location", location)).json(hold))
}

#[utoipa::path(get, path = "/admin/legal-holds", tag = "retention",
    responses((status = 200, description = "`{holds: [...]}`: every hold of the tenant, active and released, oldest first"),
        (status = 403, description = "The caller lacks the legal_holds and audit capabilities (OperationOutcome)"),
        (status = 503, description = "Database or ledger unavailable; retry (OperationOutcome)")))]
pub async fn holds(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let services = state.services.clone();
    let holds = blocking(move || Ok(services.retention().holds(&caller)?)).await?;
    Ok(HttpResponse::Ok().json(json!({ "holds": holds })))
}

#[utoipa::path(delete, path = "/admin/legal-holds/{id}", tag = "retention",
    params(("id" = String, Path, description = "the hold's id")),
    responses((status = 200, description = "The hold, released (its record stays, listed as inactive)"),
        (status = 403, description = "The caller lacks the legal_holds capability (OperationOutcome)"),
        (status = 404, description = "No active hold of that id in this tenant (OperationOutcome)"),
        (status = 503, description = "Database or ledger unavailable; retry (OperationOutcome)")))]
pub async fn release_hold(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    if id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(ApiError::NotFound("no such legal hold"));
    }
    let services = state.services.clone();
    let hold = blocking(move || Ok(services.retention().release_hold(&caller, &id)?)).await?;
    Ok(HttpResponse::Ok().json(hold))
}

#[utoipa::path(get, path = "/admin/retention/runs", tag = "retention",
    responses((status = 200, description = "`{runs: [{id, trigger, evaluatedAt, startedAt, finishedAt, destructions: [{patient, rule, category, resources, destroyedAt}]}]}`: the latest 100 runs, newest first, with this tenant's destruction records"),
        (status = 403, description = "The caller lacks the legal_holds and audit capabilities (OperationOutcome)"),
        (status = 503, description = "Database or ledger unavailable; retry (OperationOutcome)")))]
pub async fn runs(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let services = state.services.clone();
    let runs = blocking(move || Ok(services.retention().runs(&caller)?)).await?;
    Ok(HttpResponse::Ok().json(json!({ "runs": runs })))
}
