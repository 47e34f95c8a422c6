//! FHIR REST handlers.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use crate::api::error::FHIR_JSON;
use crate::api::json::JsonError;
use crate::api::{ApiError, AppState, blocking};
use crate::domain::{ResourceId, ResourceType};
use crate::fhir::bundle::{self, HistoryEntry, Link};
use crate::fhir::{IssueCode, capability};
use crate::service::Caller;
use crate::service::MAX_OFFSET;
use crate::service::resources::{BundleKind, BundleResult, Conditional, Page, Versioned};
use crate::service::search_params::{self, Handling};

fn resource_type(name: &str) -> Result<ResourceType, ApiError> {
    ResourceType::from_name(name).ok_or(ApiError::NotFound("resource type not supported"))
}

fn resource_id(raw: &str) -> Result<ResourceId, ApiError> {
    ResourceId::parse(raw).map_err(|_| ApiError::Service(crate::service::ServiceError::NotFound))
}

/// The FHIR base from the configured public URL, never from `Host` or forwarding
/// headers a client controls.
fn base_url(state: &AppState) -> String {
    format!("{}/fhir", state.public_url)
}

fn is_json_type(media: &str) -> bool {
    let media = media.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    matches!(media.as_str(), "application/fhir+json" | "application/json" | "json" | "application/json+fhir")
}

/// Refuses requests that want something other than JSON, or another FHIR version than R4.
fn negotiate(req: &HttpRequest) -> Result<(), ApiError> {
    if let Some(format) = query_pairs(req)?.iter().find(|(k, _)| k == "_format").map(|(_, v)| v.clone())
        && !(is_json_type(&format) && r4_or_unversioned(&format))
    {
        return Err(ApiError::NotAcceptable);
    }
    if let Some(accept) = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        let ok = accept.split(',').any(|range| {
            let m = range.split(';').next().unwrap_or("").trim();
            (is_json_type(m) || m == "*/*" || m == "application/*") && r4_or_unversioned(range)
        });
        if !ok {
            return Err(ApiError::NotAcceptable);
        }
    }
    Ok(())
}

fn query_pairs(req: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|_| ApiError::bad_request(IssueCode::Structure, "query string is not well-formed"))
}

fn content_type(req: &HttpRequest) -> &str {
    req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Reads a body of at most `limit` bytes, whether or not its length is declared.
async fn read_body(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::bad_request(IssueCode::Structure, "request body could not be read"))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads a JSON body of at most `limit` bytes (strictly: see [`crate::api::json`]).
pub(crate) async fn read_json(req: &HttpRequest, payload: web::Payload, limit: usize) -> Result<Value, ApiError> {
    let media = content_type(req);
    if !is_json_type(media) || media.trim().eq_ignore_ascii_case("json") {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = read_body(req, payload, limit).await?;
    crate::api::json::parse(&body).map_err(|e| {
        let code = if e == JsonError::Nul { IssueCode::Value } else { IssueCode::Structure };
        ApiError::bad_request(code, e.to_string())
    })
}

fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// `W/"3"` or `"3"` → 3.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(None) };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|v| *v > 0)
        .map(Some)
        .ok_or_else(|| ApiError::bad_request(IssueCode::Value, "If-Match must be a version ETag such as W/\"1\""))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Prefer {
    Representation,
    Minimal,
    OperationOutcome,
}

fn prefer(headers: &HeaderMap) -> Prefer {
    let value = headers.get("prefer").and_then(|v| v.to_str().ok()).unwrap_or("");
    if value.contains("return=minimal") {
        Prefer::Minimal
    } else if value.contains("return=OperationOutcome") {
        Prefer::OperationOutcome
    } else {
        Prefer::Representation
    }
}

fn http_date(v: &Versioned) -> String {
    v.last_updated.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn resource_response(req: &HttpRequest, status: StatusCode, v: &Versioned, with_location: bool) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    response.insert_header((header::ETAG, etag(v.version_id)));
    response.insert_header((header::LAST_MODIFIED, http_date(v)));
    if with_location {
        let location = format!("/fhir/{}/{}/_history/{}", v.resource_type.name(), v.id, v.version_id);
        response.insert_header((header::LOCATION, location));
    }
    let body = match prefer(req.headers()) {
        Prefer::Minimal if with_location => return response.finish(),
        Prefer::OperationOutcome if with_location => serde_json::json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": "success"}]
        }),
        _ => v.resource.clone().unwrap_or(Value::Null),
    };
    response.insert_header((header::CONTENT_TYPE, FHIR_JSON)).body(body.to_string())
}

fn bundle_response(body: Value) -> HttpResponse {
    HttpResponse::Ok().insert_header((header::CONTENT_TYPE, FHIR_JSON)).body(body.to_string())
}

fn encode(v: &str) -> String {
    utf8_percent_encode(v, NON_ALPHANUMERIC).to_string()
}

/// `self`, `previous` and `next` links for an offset-paged result. Every offset in a link
/// is one the server accepts (0 to `MAX_OFFSET`): there is no `next` past it.
fn page_links<T>(url: &str, page: &Page<T>) -> Vec<Link> {
    let with = |offset: i64| {
        let mut query: Vec<String> = page.echo.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
        query.push(format!("_count={}", page.count));
        query.push(format!("_offset={offset}"));
        format!("{url}?{}", query.join("&"))
    };
    let offset = page.offset.clamp(0, MAX_OFFSET);
    let mut links = vec![Link { relation: "self", url: with(offset) }];
    if offset > 0 {
        links.push(Link { relation: "previous", url: with(offset.saturating_sub(page.count).max(0)) });
    }
    let next = offset.saturating_add(page.count);
    if page.count > 0 && next < page.total && next <= MAX_OFFSET {
        links.push(Link { relation: "next", url: with(next) });
    }
    links
}

pub async fn metadata(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    negotiate(&req)?;
    let body = capability::capability_statement(&base_url(&state), env!("CARGO_PKG_VERSION"), "2026-11-22", state.smart.as_ref());
    Ok(bundle_response(body))
}

pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let rtype = resource_type(&path)?;
    negotiate(&req)?;
    // Search criteria in a create's query string are a conditional create, like
    // `If-None-Exist` (what fhirpy's get_or_create sends): never ignored, never a duplicate.
    let in_query = query_pairs(&req)?.iter().any(|(k, _)| !search_params::IGNORED.contains(&k.as_str()));
    let criteria =
        match (req.headers().get("if-none-exist"), in_query) {
            (Some(_), true) => {
                return Err(ApiError::bad_request(
                    IssueCode::NotSupported,
                    "give conditional-create criteria either in If-None-Exist or in the query string, not both",
                ));
            }
            (None, true) => Some(req.query_string().to_owned()),
            (None, false) => None,
            (Some(v), false) => Some(v.to_str().map(str::to_owned).map_err(|_| {
                ApiError::bad_request(IssueCode::Value, "If-None-Exist must be search criteria such as identifier=sys|123")
            })?),
        };
    let body = read_json(&req, payload, state.body_limit).await?;
    let services = state.services.clone();
    match criteria {
        None => {
            let created = blocking(move || Ok(services.resources().create(&caller, rtype, body)?)).await?;
            Ok(resource_response(&req, StatusCode::CREATED, &created, true))
        }
        Some(criteria) => match blocking(move || Ok(services.resources().create_unless_exists(&caller, rtype, body, &criteria)?)).await? {
            Conditional::Created(created) => Ok(resource_response(&req, StatusCode::CREATED, &created, true)),
            Conditional::Existing(found) => Ok(resource_response(&req, StatusCode::OK, &found, false)),
        },
    }
}

pub async fn read(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (rtype, id) = (resource_type(&path.0)?, resource_id(&path.1)?);
    negotiate(&req)?;
    let elements = elements_query(&req, rtype, "read")?;
    let services = state.services.clone();
    let mut found = blocking(move || Ok(services.resources().read(&caller, rtype, &id)?)).await?;
    subset_of(&mut found, elements.as_deref());
    Ok(resource_response(&req, StatusCode::OK, &found, false))
}

pub async fn vread(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (rtype, id) = (resource_type(&path.0)?, resource_id(&path.1)?);
    let version = path.2.parse::<i64>().map_err(|_| ApiError::NotFound("version not found"))?;
    negotiate(&req)?;
    let elements = elements_query(&req, rtype, "vread")?;
    let services = state.services.clone();
    let mut found = blocking(move || Ok(services.resources().vread(&caller, rtype, &id, version)?)).await?;
    subset_of(&mut found, elements.as_deref());
    Ok(resource_response(&req, StatusCode::OK, &found, false))
}

pub async fn update(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (rtype, id) = (resource_type(&path.0)?, resource_id(&path.1)?);
    negotiate(&req)?;
    only_query(&req, rtype, "update", &[])?;
    let expected = if_match(req.headers())?;
    let body = read_json(&req, payload, state.body_limit).await?;
    let services = state.services.clone();
    let updated = blocking(move || Ok(services.resources().update(&caller, rtype, &id, expected, body)?)).await?;
    Ok(resource_response(&req, StatusCode::OK, &updated, true))
}

pub async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (rtype, id) = (resource_type(&path.0)?, resource_id(&path.1)?);
    only_query(&req, rtype, "delete", &[])?;
    let services = state.services.clone();
    blocking(move || Ok(services.resources().delete(&caller, rtype, &id)?)).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn history(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (rtype, id) = (resource_type(&path.0)?, resource_id(&path.1)?);
    negotiate(&req)?;
    let params = only_query(&req, rtype, "history", &["_count", "_offset"])?;
    let services = state.services.clone();
    let rid = id.clone();
    let page = blocking(move || Ok(services.resources().history(&caller, rtype, &rid, &params)?)).await?;
    let base = base_url(&state);
    let full_url = format!("{base}/{}/{id}", rtype.name());
    let links = page_links(&format!("{full_url}/_history"), &page);
    let entries = page
        .items
        .iter()
        .map(|v| HistoryEntry {
            full_url: full_url.clone(),
            resource: v.resource.clone(),
            method: match (v.resource.is_some(), v.version_id) {
                (false, _) => "DELETE",
                (true, 1) => "POST",
                (true, _) => "PUT",
            },
            request_url: if v.version_id == 1 { rtype.name().to_owned() } else { format!("{}/{id}", rtype.name()) },
            status: match (v.resource.is_some(), v.version_id) {
                (false, _) => "204 No Content",
                (true, 1) => "201 Created",
                (true, _) => "200 OK",
            },
            etag: etag(v.version_id),
            last_modified: v.last_updated.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        })
        .collect();
    Ok(bundle_response(bundle::history(page.total, &links, entries)))
}

async fn run_search(
    state: web::Data<AppState>,
    caller: Caller,
    rtype: ResourceType,
    params: Vec<(String, String)>,
    handling: Handling,
) -> Result<HttpResponse, ApiError> {
    let services = state.services.clone();
    let results = blocking(move || Ok(services.resources().search_with(&caller, rtype, &params, handling)?)).await?;
    let page = &results.page;
    let base = base_url(&state);
    let mut links = page_links(&format!("{base}/{}", rtype.name()), page);
    if results.count_only {
        // A count has no pages to turn.
        links.retain(|l| l.relation == "self");
    }
    let entries = (!results.count_only)
        .then(|| page.items.iter().filter_map(|v| v.resource.clone().map(|r| (format!("{base}/{}/{}", rtype.name(), v.id), r))).collect());
    let outcome = search_outcome(&state, page, &results.ignored);
    Ok(bundle_response(bundle::searchset_with(results.total, &links, entries, outcome)))
}

/// The OperationOutcome a page carries when some of its matches could not be read.
fn unreadable_outcome(state: &AppState, page: &Page<Versioned>) -> Option<Value> {
    (!page.unreadable.is_empty()).then(|| {
        state.metrics.unreadable_records.inc_by(page.unreadable.len() as u64);
        // Ids only: which matches could not be returned, never anything of their content.
        serde_json::json!({
            "resourceType": "OperationOutcome",
            "issue": page.unreadable.iter().map(|r| serde_json::json!({
                "severity": "error",
                "code": "exception",
                "diagnostics": format!("{r} matched but could not be read (its stored form failed an integrity check); it is left out of this page"),
            })).collect::<Vec<_>>(),
        })
    })
}

/// `GET /fhir/Patient/{id}/$everything`: the Patient and its compartment, paged.
pub async fn everything(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (type_name, raw_id) = path.into_inner();
    if resource_type(&type_name)? != ResourceType::Patient {
        return Err(ApiError::bad_request(crate::fhir::IssueCode::NotSupported, "$everything is served for Patient only"));
    }
    let id = resource_id(&raw_id)?;
    negotiate(&req)?;
    let params = query_pairs(&req)?;
    let services = state.services.clone();
    let page_of = id.clone();
    let page = blocking(move || Ok(services.resources().everything(&caller, &page_of, &params)?)).await?;
    let base = base_url(&state);
    let links = page_links(&format!("{base}/Patient/{id}/$everything"), &page);
    let entries =
        page.items.iter().filter_map(|v| v.resource.clone().map(|r| (format!("{base}/{}/{}", v.resource_type.name(), v.id), r))).collect();
    let outcome = unreadable_outcome(&state, &page);
    Ok(bundle_response(bundle::searchset(page.total, &links, entries, outcome)))
}

pub async fn search(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let rtype = resource_type(&path)?;
    negotiate(&req)?;
    let params = query_pairs(&req)?;
    let handling = handling(&req);
    run_search(state, caller, rtype, params, handling).await
}

/// `POST /fhir/{type}/_search` with a form body keeps search values out of URLs and
/// access logs of intermediaries.
pub async fn search_post(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let rtype = resource_type(&path)?;
    negotiate(&req)?;
    if !content_type(&req).starts_with("application/x-www-form-urlencoded") {
        return Err(ApiError::UnsupportedMediaType);
    }
    let form = read_body(&req, payload, state.body_limit).await?;
    let text = std::str::from_utf8(&form).map_err(|_| ApiError::bad_request(IssueCode::Structure, "form body is not UTF-8"))?;
    if crate::api::middleware::has_control(text) {
        return Err(crate::api::middleware::control_refused());
    }
    let mut params = query_pairs(&req)?;
    params.extend(
        web::Query::<Vec<(String, String)>>::from_query(text)
            .map_err(|_| ApiError::bad_request(IssueCode::Structure, "form body is not well-formed"))?
            .into_inner(),
    );
    let handling = handling(&req);
    run_search(state, caller, rtype, params, handling).await
}

/// Whether a media type's `fhirVersion` parameter, if it has one, names R4 (`4.0`, `4.0.1`).
fn r4_or_unversioned(media: &str) -> bool {
    media.split(';').skip(1).filter_map(|p| p.split_once('=')).filter(|(k, _)| k.trim().eq_ignore_ascii_case("fhirVersion")).all(
        |(_, v)| {
            let v = v.trim().trim_matches('"');
            v == "4.0" || v.starts_with("4.0.")
        },
    )
}

/// Refuses any query parameter but `_format`, `_pretty` and `accepted`: a parameter an
/// interaction does not act on is never ignored silently (a client that sent search
/// parameters with a create expects them to matter). Only a name the server defines is
/// repeated in the refusal.
fn only_query(req: &HttpRequest, rtype: ResourceType, interaction: &str, accepted: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let pairs = query_pairs(req)?;
    if let Some((name, _)) = pairs.iter().find(|(k, _)| !search_params::IGNORED.contains(&k.as_str()) && !accepted.contains(&k.as_str())) {
        let allowed: Vec<&str> = accepted.iter().chain(search_params::IGNORED).copied().collect();
        return Err(ApiError::bad_request(
            IssueCode::NotSupported,
            format!("{interaction} takes no query parameters but {}; {} was sent", allowed.join(", "), search_params::shown(rtype, name)),
        ));
    }
    Ok(pairs)
}

/// The `_elements` of a read or vread (the only query parameter they take besides
/// `_format` and `_pretty`).
fn elements_query(req: &HttpRequest, rtype: ResourceType, interaction: &str) -> Result<Option<Vec<String>>, ApiError> {
    let pairs = only_query(req, rtype, interaction, &["_elements"])?;
    let mut values = pairs.iter().filter(|(k, _)| k == "_elements");
    let Some((_, value)) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ApiError::bad_request(IssueCode::NotSupported, "_elements may be given once"));
    }
    Ok(Some(search_params::elements(value)?))
}

fn subset_of(found: &mut Versioned, elements: Option<&[String]>) {
    if let (Some(elements), Some(resource)) = (elements, found.resource.as_mut()) {
        search_params::subset(found.resource_type, resource, elements);
    }
}

/// `Prefer: handling=lenient` or `handling=strict` (the default); the first `handling`
/// preference counts (RFC 7240).
fn handling(req: &HttpRequest) -> Handling {
    let first = req
        .headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("handling"));
    match first {
        Some((_, v)) if v.trim().trim_matches('"').eq_ignore_ascii_case("lenient") => Handling::Lenient,
        _ => Handling::Strict,
    }
}

/// The OperationOutcome of a search page: parameters ignored under lenient handling
/// (warnings) and matches that could not be read (errors).
fn search_outcome(state: &AppState, page: &Page<Versioned>, ignored: &[String]) -> Option<Value> {
    let mut issues: Vec<Value> = ignored
        .iter()
        .map(|diagnostics| serde_json::json!({"severity": "warning", "code": "not-supported", "diagnostics": diagnostics}))
        .collect();
    if let Some(unreadable) = unreadable_outcome(state, page) {
        issues.extend(unreadable["issue"].as_array().cloned().unwrap_or_default());
    }
    (!issues.is_empty()).then(|| serde_json::json!({"resourceType": "OperationOutcome", "issue": issues}))
}

/// `PUT /fhir/{type}?criteria`: conditional update (create when nothing matches).
pub async fn update_where(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let rtype = resource_type(&path)?;
    negotiate(&req)?;
    let criteria = req.query_string().to_owned();
    if criteria.is_empty() {
        return Err(ApiError::MethodNotAllowed { allow: "GET, POST" });
    }
    let expected = if_match(req.headers())?;
    let body = read_json(&req, payload, state.body_limit).await?;
    let services = state.services.clone();
    let (written, created) = blocking(move || Ok(services.resources().update_where(&caller, rtype, &criteria, expected, body)?)).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(resource_response(&req, status, &written, true))
}

/// `PATCH /fhir/{type}/{id}` with a JSON Patch (`application/json-patch+json`).
pub async fn patch(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (rtype, id) = (resource_type(&path.0)?, resource_id(&path.1)?);
    only_query(&req, rtype, "patch", &[])?;
    negotiate(&req)?;
    let media = content_type(&req).split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media != "application/json-patch+json" {
        return Err(ApiError::UnsupportedPatchType);
    }
    let expected = if_match(req.headers())?;
    let body = read_body(&req, payload, state.body_limit).await?;
    let patch = crate::api::json::parse(&body).map_err(|e| {
        let code = if e == JsonError::Nul { IssueCode::Value } else { IssueCode::Structure };
        ApiError::bad_request(code, e.to_string())
    })?;
    let services = state.services.clone();
    let patched = blocking(move || Ok(services.resources().patch(&caller, rtype, &id, expected, patch)?)).await?;
    Ok(resource_response(&req, StatusCode::OK, &patched, true))
}

/// `POST /fhir` with a `transaction` or `batch` Bundle.
pub async fn bundle(state: web::Data<AppState>, req: HttpRequest, caller: Caller, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    negotiate(&req)?;
    if !req.query_string().is_empty() {
        return Err(ApiError::bad_request(IssueCode::NotSupported, "POST /fhir takes no query parameters"));
    }
    let body = read_json(&req, payload, state.bundle_limit).await?;
    let services = state.services.clone();
    let result = blocking(move || Ok(services.resources().bundle(&caller, body)?)).await?;
    Ok(bundle_response(response_bundle(&base_url(&state), &result)))
}

/// A `transaction-response` or `batch-response` Bundle: one entry per request entry, in
/// order, with its status, location, ETag and the resource written or read.
fn response_bundle(base: &str, result: &BundleResult) -> Value {
    let kind = match result.kind {
        BundleKind::Transaction => "transaction-response",
        BundleKind::Batch => "batch-response",
    };
    let status_line = |status: u16| {
        let reason = StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
        format!("{status} {reason}").trim_end().to_owned()
    };
    let entries: Vec<Value> = result
        .entries
        .iter()
        .map(|entry| {
            let mut response = serde_json::json!({ "status": status_line(entry.status) });
            let mut out = serde_json::Map::new();
            if let Some(v) = &entry.version {
                response["location"] = Value::String(format!("{}/{}/_history/{}", v.resource_type.name(), v.id, v.version_id));
                response["etag"] = Value::String(etag(v.version_id));
                response["lastModified"] = Value::String(v.last_updated.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
                if let Some(resource) = &v.resource {
                    out.insert("fullUrl".into(), Value::String(format!("{base}/{}/{}", v.resource_type.name(), v.id)));
                    out.insert("resource".into(), resource.clone());
                }
            }
            if let Some(issues) = &entry.outcome {
                response["outcome"] = crate::api::error::outcome(issues);
            }
            out.insert("response".into(), response);
            Value::Object(out)
        })
        .collect();
    serde_json::json!({ "resourceType": "Bundle", "type": kind, "entry": entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(offset: i64, count: i64, total: i64) -> Vec<(&'static str, i64)> {
        let page = Page::<()> { items: Vec::new(), total, count, offset, echo: Vec::new(), unreadable: Vec::new() };
        page_links("https://ehr.example.test/fhir/Patient", &page)
            .iter()
            .map(|l| (l.relation, l.url.rsplit_once("_offset=").unwrap().1.parse().unwrap()))
            .collect()
    }

    #[test]
    fn page_links_never_overflow_nor_leave_the_accepted_offsets() {
        assert_eq!(offsets(50, 100, 1000), [("self", 50), ("previous", 0), ("next", 150)]);
        assert_eq!(offsets(0, 0, 1000), [("self", 0)]);
        let below = MAX_OFFSET - 100;
        assert_eq!(offsets(below, 100, i64::MAX), [("self", below), ("previous", below - 100), ("next", MAX_OFFSET)]);
        assert_eq!(offsets(MAX_OFFSET, 100, i64::MAX), [("self", MAX_OFFSET), ("previous", below)]);
        assert_eq!(offsets(i64::MAX, 100, i64::MAX), [("self", MAX_OFFSET), ("previous", below)]);
        assert_eq!(offsets(i64::MAX, i64::MAX, i64::MAX), [("self", MAX_OFFSET), ("previous", 0)]);
    }

    #[test]
    fn only_r4_is_served() {
        for ok in ["application/fhir+json", "application/fhir+json; fhirVersion=4.0", "application/fhir+json;fhirversion=\"4.0.1\"", "*/*"]
        {
            assert!(r4_or_unversioned(ok), "{ok}");
        }
        for refused in
            ["application/fhir+json; fhirVersion=3.0", "application/fhir+json; fhirVersion=4.3", "application/json;fhirVersion=5.0"]
        {
            assert!(!r4_or_unversioned(refused), "{refused}");
        }
        let accept = |value: &str| negotiate(&actix_web::test::TestRequest::default().insert_header(("accept", value)).to_http_request());
        assert!(accept("application/fhir+json; fhirVersion=4.0").is_ok());
        assert!(matches!(accept("application/fhir+json; fhirVersion=3.0"), Err(ApiError::NotAcceptable)));
        assert!(accept("application/fhir+json; fhirVersion=3.0, application/fhir+json; fhirVersion=4.0").is_ok());
    }

    #[test]
    fn prefer_handling_takes_the_first_handling_preference() {
        let of = |values: &[&str]| {
            let mut req = actix_web::test::TestRequest::default();
            for v in values {
                req = req.append_header(("prefer", *v));
            }
            handling(&req.to_http_request())
        };
        assert_eq!(of(&[]), Handling::Strict);
        assert_eq!(of(&["handling=lenient"]), Handling::Lenient);
        assert_eq!(of(&["return=minimal, Handling=Lenient"]), Handling::Lenient);
        assert_eq!(of(&["handling=strict", "handling=lenient"]), Handling::Strict);
        assert_eq!(of(&["handling=strict"]), Handling::Strict);
        assert_eq!(of(&["respond-async; handling=lenient"]), Handling::Lenient);
    }
}
