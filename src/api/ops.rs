//! Operational endpoints: liveness, readiness, metrics, and the fallbacks for unknown
//! paths and methods.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::api::{ApiError, AppState, blocking};
use crate::service::Caller;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "Alive: `{\"status\":\"alive\"}`")))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "alive"}))
}

/// Ready when the database answers and the verification keys are loaded (they are
/// loaded before the server listens, so the database is what can change).
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Database and keys ready"),
        (status = 503, description = "Not ready (OperationOutcome)")))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let services = state.services.clone();
    let (db, keys) = blocking(move || Ok((services.ready(), services.keys_ready()))).await?;
    match (db, keys) {
        (Ok(()), Ok(())) => Ok(HttpResponse::Ok().json(json!({"status": "ready", "database": "ok", "keys": "ok"}))),
        (Err(e), _) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::Unavailable("database unavailable"))
        }
        // The key ring logged the provider's failure.
        (Ok(()), Err(_)) => Err(ApiError::Unavailable("encryption keys unavailable")),
    }
}

/// Prometheus text; needs the `metrics` capability.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition", content_type = "text/plain"),
        (status = 401, description = "No valid token (OperationOutcome)"),
        (status = 403, description = "Token lacks the metrics capability (OperationOutcome)")))]
pub async fn metrics(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    if !state.services.may_read_metrics(&caller) {
        return Err(ApiError::Forbidden);
    }
    let services = state.services.clone();
    let (health, retention) = crate::api::blocking(move || Ok((services.ledger_health()?, services.retention().totals()?))).await?;
    state.metrics.set_ledger(&health);
    state.metrics.set_retention(&retention);
    let text = state.metrics.render(state.services.pool_state()).map_err(|_| ApiError::Internal)?;
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(text))
}

pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such endpoint"))
}

/// `allow`: the path's methods, comma-separated, for the `Allow` header.
pub async fn method_not_allowed(allow: &'static str) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow })
}
