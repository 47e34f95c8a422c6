//! Request context: a request id on every log line (taken from a well-formed
//! `X-Request-Id` or generated), the per-address rate limit, metrics by route pattern,
//! and one completion log line. Only the method, the route pattern and the status are
//! logged: paths and query strings can carry identifiers and search values.

use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, ResponseError, web};
use tracing::Instrument;

use crate::api::{ApiError, AppState, RequestId};

fn well_formed(id: &str) -> bool {
    (8..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
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
    let span = tracing::info_span!("request", request_id = %request_id, method = %method);
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let started = Instant::now();

    let limited = match (&state, req.peer_addr()) {
        (Some(state), Some(peer)) => state.limits.check_address(peer.ip()).err(),
        _ => None,
    };
    let mut response = match limited {
        Some(retry_after_secs) => {
            let _enter = span.enter();
            req.into_response(ApiError::RateLimited { retry_after_secs }.error_response()).map_into_right_body()
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
    tracing::info!(parent: &span, route = %route, status, latency_ms = seconds * 1000.0, "request finished");
    Ok(response)
}
