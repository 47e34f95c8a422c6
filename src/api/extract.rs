//! Extractors: the authenticated caller (token, rate limit, break-glass, purpose of use).
//! A caller whose roles may not break the glass and who sends `X-Break-Glass` is refused
//! here, for every route, and the attempt is ledgered.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use futures_util::future::LocalBoxFuture;

use crate::api::{ApiError, AppState};
use crate::auth::TokenError;
use crate::domain::AuditAction;
use crate::domain::{PurposeOfUse, ResourceId, ResourceType};
use crate::fhir::IssueCode;
use crate::service::{Caller, ServiceError};

/// The request id set by the request-context middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Shortest accepted break-glass reason, in characters.
const BREAK_GLASS_MIN: usize = 10;
const BREAK_GLASS_MAX: usize = 500;

fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(actix_web::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The `access_token` query parameter, accepted on the WebSocket endpoint only (browsers
/// cannot set headers on a WebSocket). The request log never records query strings.
fn query_token(req: &HttpRequest) -> Option<String> {
    if req.path() != "/sync" {
        return None;
    }
    web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()?
        .0
        .remove("access_token")
        .filter(|t| !t.is_empty())
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Result<Option<&'a str>, ApiError> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => {
            v.to_str().map(Some).map_err(|_| ApiError::bad_request(IssueCode::Value, format!("header {name} must be visible ASCII")))
        }
    }
}

fn caller(req: &HttpRequest) -> Result<Caller, ApiError> {
    let state = req.app_data::<web::Data<AppState>>().ok_or(ApiError::Internal)?;
    let token = bearer(req).map(str::to_owned).or_else(|| query_token(req)).ok_or(ApiError::Unauthorized(TokenError::Missing))?;
    let principal = state.verifier.verify(&token).map_err(|e| {
        tracing::info!(reason = %e, "token rejected");
        ApiError::Unauthorized(e)
    })?;
    state
        .limits
        .check_principal(principal.tenant.as_str(), &principal.sub)
        .map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })?;
    let break_glass = match header(req, "x-break-glass")? {
        None => None,
        // Refused whatever the reason says (see `from_request`); kept as given, within bounds,
        // for the ledger entry of the attempt.
        Some(reason) if !state.services.may_break_glass(&principal) => Some(reason.trim().chars().take(BREAK_GLASS_MAX).collect()),
        Some(reason) => {
            let reason = reason.trim();
            let n = reason.chars().count();
            if !(BREAK_GLASS_MIN..=BREAK_GLASS_MAX).contains(&n) {
                return Err(ApiError::bad_request(
                    IssueCode::Required,
                    format!("X-Break-Glass needs a reason of {BREAK_GLASS_MIN} to {BREAK_GLASS_MAX} characters"),
                ));
            }
            Some(reason.to_owned())
        }
    };
    let purpose = match header(req, "x-purpose-of-use")? {
        None => PurposeOfUse::default(),
        Some(code) => PurposeOfUse::parse(code)
            .ok_or_else(|| ApiError::bad_request(IssueCode::Value, "X-Purpose-Of-Use must be an HL7 PurposeOfUse code such as TREAT"))?,
    };
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    let client = req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
    Ok(Caller { principal, break_glass, purpose, request_id, client })
}

/// What a request asks for, as far as its route tells: the ledger action, and for a FHIR
/// record the `Type/ID` (`Type/ID/_history/N`) and its patient. Names only what parses as
/// a served type and a FHIR id.
fn attempt(req: &HttpRequest) -> (AuditAction, Option<String>, Option<String>) {
    let pattern = req.match_pattern().unwrap_or_default();
    let get = req.method() == actix_web::http::Method::GET;
    let action = match pattern.as_str() {
        "/fhir/{type}" if get => AuditAction::Search,
        "/fhir/{type}" => AuditAction::Create,
        "/fhir/{type}/_search" => AuditAction::Search,
        "/fhir/{type}/{id}" if get => AuditAction::Read,
        "/fhir/{type}/{id}" if req.method() == actix_web::http::Method::DELETE => AuditAction::Delete,
        "/fhir/{type}/{id}" => AuditAction::Update,
        "/fhir/{type}/{id}/_history" => AuditAction::History,
        "/fhir/{type}/{id}/_history/{vid}" => AuditAction::Vread,
        "/audit/export" => AuditAction::Export,
        p if p == "/sync" || p.starts_with("/sync/") => AuditAction::Sync,
        _ => AuditAction::Read,
    };
    let info = req.match_info();
    let record = info.get("type").and_then(ResourceType::from_name).zip(info.get("id").and_then(|id| ResourceId::parse(id).ok()));
    let Some((rtype, id)) = record else { return (action, None, None) };
    let resource = match info.get("vid").and_then(|v| v.parse::<i64>().ok()) {
        Some(version) => format!("{}/{id}/_history/{version}", rtype.name()),
        None => format!("{}/{id}", rtype.name()),
    };
    let patient = (rtype == ResourceType::Patient).then(|| format!("Patient/{id}"));
    (action, Some(resource), patient)
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    /// A missing or refused token is ledgered (`login`, `denied`) before the 401 goes out;
    /// so is `X-Break-Glass` from a caller whose roles may not break the glass, before its 403.
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let result = caller(req);
        if let (Ok(who), Some(state)) = (&result, req.app_data::<web::Data<AppState>>())
            && who.break_glass.is_some()
            && !state.services.may_break_glass(&who.principal)
        {
            let (services, caller) = (state.services.clone(), who.clone());
            let (action, resource, patient) = attempt(req);
            return Box::pin(async move {
                crate::api::blocking(move || Ok(services.refuse_break_glass(&caller, action, resource, patient)?)).await?;
                Err(ApiError::Service(ServiceError::BreakGlassRefused))
            });
        }
        let Err(ApiError::Unauthorized(reason)) = result else {
            return Box::pin(std::future::ready(result));
        };
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
        let client = req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
        let token = bearer(req).map(str::to_owned).or_else(|| query_token(req));
        Box::pin(async move {
            if let Some(state) = state {
                let services = state.services.clone();
                // A validly signed token refused for its claims is its tenant's business;
                // anything else has no tenant to trust (the platform log).
                let identity = token.and_then(|t| state.verifier.refused_identity(&t));
                let recorded = crate::api::blocking(move || Ok(services.record_rejected_token(&client, &request_id, identity)?)).await;
                if let Err(e) = recorded {
                    tracing::error!(error = %e, "could not ledger a rejected token");
                }
            }
            Err(ApiError::Unauthorized(reason))
        })
    }
}
