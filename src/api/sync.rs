//! The change feed over REST (`GET /sync/changes`): the same sequence the WebSocket feed
//! delivers, paged by an opaque cursor.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::api::{ApiError, AppState, blocking};
use crate::fhir::IssueCode;
use crate::service::Caller;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

#[derive(Deserialize)]
pub struct ChangesQuery {
    since: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/sync/changes", tag = "sync",
    params(("since" = Option<String>, Query, description = "cursor from a previous answer; absent for the beginning"),
        ("limit" = Option<i64>, Query, description = "1 to 1000, default 100")),
    responses((status = 200, description = "`{changes: [change], cursor}`: changes the caller may read, in commit order")))]
pub async fn changes(state: web::Data<AppState>, caller: Caller, q: web::Query<ChangesQuery>) -> Result<HttpResponse, ApiError> {
    let ChangesQuery { since, limit } = q.into_inner();
    let since = match since.as_deref().filter(|s| !s.is_empty() && *s != "null") {
        None => 0,
        Some(raw) => raw.parse::<i64>().ok().filter(|c| *c >= 0).ok_or_else(|| ApiError::bad_request(IssueCode::Value, "since must be a cursor from this server"))?,
    };
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(IssueCode::Value, "limit must be 1 to 1000"));
    }
    let services = state.services.clone();
    let (changes, cursor) = blocking(move || Ok(services.resources().changes(&caller, since, limit)?)).await?;
    Ok(HttpResponse::Ok().json(json!({ "changes": changes, "cursor": cursor.to_string() })))
}
