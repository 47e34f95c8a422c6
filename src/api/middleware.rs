//! Request context: a request id on every log line (taken from a well-formed
//! `X-Request-Id` or generated), the per-address rate limit, the refusal of control
//! characters in paths and query strings, metrics by route pattern, and one completion
//! log line. Only the method, the route pattern and the status are logged: paths and
//! query strings can carry identifiers and search values.

use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, ResponseError, web};
use tracing::Instrument;

use crate::api::{ApiError, AppState, RequestId};
use crate::fhir::IssueCode;

fn well_formed(id: &str) -> bool {
    (8..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A C0 control character or DEL, raw or percent-encoded, in a URL part or form body. None
/// has a meaning in an id, a search value or a filter, and U+0000 cannot even be stored as
/// PostgreSQL text: such a request is refused before any handler sees it.
pub(crate) fn has_control(raw: &str) -> bool {
    percent_encoding::percent_decode_str(raw).any(|b| b.is_ascii_control())
}

pub(crate) fn control_refused() -> ApiError {
    ApiError::bad_request(IssueCode::Value, "the request path, query string or form contains a control character (such as U+0000)")
}

pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| well_formed(v))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let method = req.method().to_string();
    // At ERROR level, so that the span (and the request id) is there whatever level the
    // log is filtered to: an `info` span vanishes under `RUST_LOG=warn` with its fields.
    let span = tracing::error_span!("request", request_id = %request_id, method = %method);
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let started = Instant::now();

    let limited = match (&state, req.peer_addr()) {
        (Some(state), Some(peer)) => state.limits.check_address(peer.ip()).err(),
        _ => None,
    };
    let refused = match limited {
        Some(retry_after_secs) => Some(ApiError::RateLimited { retry_after_secs }),
        None if has_control(req.path()) || has_control(req.query_string()) => Some(control_refused()),
        None => None,
    };
    let mut response = match refused {
        Some(error) => {
            let _enter = span.enter();
            req.into_response(error.error_response()).map_into_right_body()
        }
        None => next.call(req).instrument(span.clone()).await?.map_into_left_body(),
    };

    let route = response.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    if let Some(state) = &state {
        state.metrics.observe(&method, &route, status, seconds);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(HeaderName::from_static("x-request-id"), value);
    }
    // Inside the span rather than naming it as `parent:`: the log's span list follows the
    // span entered, and would be empty for this line otherwise.
    span.in_scope(|| tracing::info!(route = %route, status, latency_ms = seconds * 1000.0, "request finished"));
    Ok(response)
}
