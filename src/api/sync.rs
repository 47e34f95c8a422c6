//! Sync over REST: the change feed paged by an opaque cursor (the same sequence the
//! WebSocket `/sync` delivers), offline pushes and their conflicts.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{ApiError, AppState, blocking};
use crate::domain::ConflictStatus;
use crate::fhir::IssueCode;
use crate::service::Caller;
use crate::service::sync::{Change, Collision, Conflict, FeedFilter, Mutation, PushResult, Resolution, Resolved};

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
/// Most mutations in one push.
pub const MAX_MUTATIONS: usize = 500;

#[derive(Deserialize)]
pub struct ChangesQuery {
    since: Option<String>,
    limit: Option<i64>,
}

/// A cursor as a client sends it back: absent, empty or `null` for the beginning.
pub fn parse_cursor(raw: Option<&str>) -> Result<i64, &'static str> {
    match raw.filter(|s| !s.is_empty() && *s != "null") {
        None => Ok(0),
        Some(raw) => raw.parse::<i64>().ok().filter(|c| *c >= 0).ok_or("since must be a cursor from this server"),
    }
}

#[utoipa::path(get, path = "/sync/changes", tag = "sync",
    params(("since" = Option<String>, Query, description = "cursor from a previous answer; absent for the beginning"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100")),
    responses((status = 200, description = "`{changes: [change], cursor}`: changes the caller may read, in commit order"),
        (status = 400, description = "since is not a cursor from this server, or limit outside 1 to 1000 (OperationOutcome)"),
        (status = 503, description = "Database or ledger unavailable; retry (OperationOutcome)")))]
pub async fn changes(state: web::Data<AppState>, caller: Caller, q: web::Query<ChangesQuery>) -> Result<HttpResponse, ApiError> {
    let ChangesQuery { since, limit } = q.into_inner();
    let since = parse_cursor(since.as_deref()).map_err(|why| ApiError::bad_request(IssueCode::Value, why))?;
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(IssueCode::Value, "limit must be 1 to 1000"));
    }
    let services = state.services.clone();
    let page = blocking(move || Ok(services.sync().changes(&caller, since, limit, &FeedFilter::default())?)).await?;
    let changes: Vec<Value> = page.changes.iter().map(change_json).collect();
    Ok(HttpResponse::Ok().json(json!({ "changes": changes, "cursor": page.cursor.to_string() })))
}

/// What a push must look like; the only text a malformed push gets back (with the index
/// of the mutation at fault), so nothing the client sent, value or key, is repeated.
const PUSH_SHAPE: &str = "push must be {\"mutations\": [...]}, each mutation an object with only mutationId, op and resourceType (strings) and id, baseVersion (strings) and resource (an object) where the op needs them";

/// Parses a `push` body (REST or WebSocket message). Errors never quote submitted
/// values or keys: they name the mutation by its index and say what shape is expected.
pub fn parse_push(body: Value) -> Result<Vec<Mutation>, String> {
    let Value::Object(mut body) = body else { return Err(PUSH_SHAPE.into()) };
    if body.remove("type").is_some_and(|t| t != "push") {
        return Err("type must be push".into());
    }
    let Some(Value::Array(items)) = body.remove("mutations") else { return Err(PUSH_SHAPE.into()) };
    if !body.is_empty() {
        return Err(PUSH_SHAPE.into());
    }
    if items.len() > MAX_MUTATIONS {
        return Err(format!("at most {MAX_MUTATIONS} mutations per push"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| serde_json::from_value::<Mutation>(item).map_err(|_| format!("mutation {i}: {PUSH_SHAPE}")))
        .collect()
}

#[utoipa::path(post, path = "/sync/push", tag = "sync",
    request_body(description = "`{mutations: [{mutationId, op, resourceType, id, baseVersion, resource}]}`", content = Object),
    responses((status = 200, description = "`{type: push_result, results: [...]}`, one result per mutation, in order"),
        (status = 400, description = "Not a push body: not JSON, a duplicate key, U+0000 in a string, a wrong shape or more than 500 mutations (OperationOutcome)"),
        (status = 413, description = "Body over the body limit (OperationOutcome)"),
        (status = 415, description = "Body not application/json or application/fhir+json (OperationOutcome)"),
        (status = 503, description = "Database or ledger unavailable; the mutations applied so far answer duplicate when sent again (OperationOutcome)")))]
pub async fn push(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let body = crate::api::fhir::read_json(&req, payload, state.body_limit).await?;
    let mutations = parse_push(body).map_err(|why| ApiError::bad_request(IssueCode::Structure, why))?;
    let services = state.services.clone();
    let results = blocking(move || Ok(services.sync().push(&caller, mutations)?)).await?;
    Ok(HttpResponse::Ok().json(push_result_json(&results)))
}

// The `status` values, for the OpenAPI document only (a plain comment: a doc comment would
// become the schema's description): the handler reads the text itself, so that a wrong
// value gets a message naming the choices.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ConflictStatusName {
    Open,
    Resolved,
    All,
}

#[derive(Deserialize)]
pub struct ConflictsQuery {
    status: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/sync/conflicts", tag = "sync",
    params(("status" = inline(Option<ConflictStatusName>), Query, description = "open (default), resolved or all"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "1 to 500, default 100")),
    responses((status = 200, description = "`{conflicts: [...]}` with base, server and client values of each element, oldest first"),
        (status = 400, description = "Unknown status, or limit outside 1 to 500 (OperationOutcome)"),
        (status = 503, description = "Database or ledger unavailable; retry (OperationOutcome)")))]
pub async fn conflicts(state: web::Data<AppState>, caller: Caller, q: web::Query<ConflictsQuery>) -> Result<HttpResponse, ApiError> {
    let ConflictsQuery { status, limit } = q.into_inner();
    let status = match status.as_deref().unwrap_or("open") {
        "open" => Some(ConflictStatus::Open),
        "resolved" => Some(ConflictStatus::Resolved),
        "all" => None,
        _ => return Err(ApiError::bad_request(IssueCode::Value, "status must be open, resolved or all")),
    };
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=crate::service::sync::MAX_CONFLICTS).contains(&limit) {
        return Err(ApiError::bad_request(IssueCode::Value, "limit must be 1 to 500"));
    }
    let services = state.services.clone();
    let found = blocking(move || Ok(services.sync().conflicts(&caller, status, limit)?)).await?;
    let found: Vec<Value> = found.iter().map(conflict_json).collect();
    Ok(HttpResponse::Ok().json(json!({ "conflicts": found })))
}

#[utoipa::path(post, path = "/sync/conflicts/{id}/resolve", tag = "sync",
    params(("id" = String, Path, description = "conflictId")),
    request_body(description = "`{choose: server|client}` or `{resource: {...}}`", content = Object),
    responses((status = 200, description = "`{conflictId, status: resolved, versionId}`"),
        (status = 400, description = "Not a resolution: not JSON, a duplicate key, U+0000 in a string, or not one of the three shapes (OperationOutcome)"),
        (status = 403, description = "The caller may not write the record (OperationOutcome)"),
        (status = 404, description = "No such conflict the caller may see (OperationOutcome)"),
        (status = 409, description = "Already resolved (OperationOutcome)"),
        (status = 410, description = "The record was deleted and the client side holds no value to restore (OperationOutcome)"),
        (status = 413, description = "Body over the body limit (OperationOutcome)"),
        (status = 415, description = "Body not application/json or application/fhir+json (OperationOutcome)"),
        (status = 422, description = "The resulting resource is not valid FHIR R4 (OperationOutcome)"),
        (status = 503, description = "Database or ledger unavailable; retry (OperationOutcome)")))]
pub async fn resolve(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    if id.len() > 64 {
        return Err(ApiError::NotFound("no such conflict"));
    }
    let body = crate::api::fhir::read_json(&req, payload, state.body_limit).await?;
    let resolution = match (body.get("choose").and_then(Value::as_str), body.get("resource")) {
        (Some("server"), None) => Resolution::Server,
        (Some("client"), None) => Resolution::Client,
        (None, Some(resource)) => Resolution::Resource(resource.clone()),
        _ => {
            return Err(ApiError::bad_request(
                IssueCode::Structure,
                "resolve takes {\"choose\": \"server\"} or {\"choose\": \"client\"} or {\"resource\": {...}}",
            ));
        }
    };
    let services = state.services.clone();
    let done = blocking(move || Ok(services.sync().resolve(&caller, &id, resolution)?)).await?;
    Ok(HttpResponse::Ok().json(resolved_json(&done)))
}

/// A `change` message (SPEC section 6), the same over REST and the WebSocket.
/// A `change` message as the text sent on the WebSocket: [`change_json`] serialized
/// straight from the change, without copying its content into a new value first.
pub fn change_text(c: &Change) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Message<'a> {
        r#type: &'static str,
        cursor: String,
        op: &'static str,
        resource_type: &'static str,
        id: &'a str,
        version_id: String,
        resource: Option<&'a Value>,
    }
    let message = Message {
        r#type: "change",
        cursor: c.cursor.to_string(),
        op: c.op.as_str(),
        resource_type: c.resource_type.name(),
        id: c.id.as_str(),
        version_id: c.version_id.to_string(),
        resource: c.resource.as_deref(),
    };
    // Strings and a `Value` always serialize; the fallback only keeps this total.
    serde_json::to_string(&message).unwrap_or_else(|_| change_json(c).to_string())
}

pub fn change_json(c: &Change) -> Value {
    json!({
        "type": "change",
        "cursor": c.cursor.to_string(),
        "op": c.op.as_str(),
        "resourceType": c.resource_type.name(),
        "id": c.id.as_str(),
        "versionId": c.version_id.to_string(),
        "resource": c.resource.as_deref(),
    })
}

fn collision_json(c: &Collision) -> Value {
    json!({ "path": c.path, "base": c.base, "server": c.server, "client": c.client, "strategy": c.strategy.as_str() })
}

/// A `push_result` message, the same over REST and the WebSocket.
pub fn push_result_json(results: &[PushResult]) -> Value {
    let results: Vec<Value> = results
        .iter()
        .map(|r| {
            let mut out = json!({
                "mutationId": r.mutation_id,
                "status": r.status.as_str(),
                "versionId": r.version.map(|v| v.to_string()),
                "conflicts": r.collisions.iter().map(collision_json).collect::<Vec<_>>(),
            });
            if let Some(id) = &r.conflict_id {
                out["conflictId"] = json!(id);
            }
            if let Some(e) = &r.error {
                out["error"] = json!(e);
            }
            if let Some(first) = r.first_status {
                out["firstStatus"] = json!(first.as_str());
            }
            out
        })
        .collect();
    json!({ "type": "push_result", "results": results })
}

fn conflict_json(c: &Conflict) -> Value {
    json!({
        "conflictId": c.conflict_id,
        "resourceType": c.resource_type.name(),
        "id": c.id,
        "mutationId": c.mutation_id,
        "baseVersion": c.base_version.map(|v| v.to_string()),
        "serverVersion": c.server_version.to_string(),
        "strategy": c.strategy.as_str(),
        "status": c.status.as_str(),
        "createdBy": c.created_by,
        "createdAt": c.created_at,
        "resolvedBy": c.resolved_by,
        "resolvedAt": c.resolved_at,
        "resolvedVersion": c.resolved_version.map(|v| v.to_string()),
        "conflicts": c.collisions.iter().map(collision_json).collect::<Vec<_>>(),
    })
}

fn resolved_json(r: &Resolved) -> Value {
    json!({ "conflictId": r.conflict_id, "status": ConflictStatus::Resolved.as_str(), "versionId": r.version.to_string() })
}
