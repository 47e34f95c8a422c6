//! HTTP edge: routes, the authentication extractor, request context middleware, FHIR
//! handlers and the mapping of errors to OperationOutcomes. Handlers parse, call one
//! service function off the async workers, and shape the response (the JSON of every
//! answer is built here, from the use cases' typed results). Uses `service`, `domain`,
//! `fhir`, `auth` and `authz` only: never the store, the ledger or the keys directly.

mod admin;
pub(crate) mod audit;
mod error;
mod extract;
mod fhir;
mod json;
mod metrics;
mod middleware;
mod openapi;
mod ops;
mod rate_limit;
mod smart;
pub(crate) mod sync;
mod sync_socket;

use std::sync::Arc;

use actix_web::web;

pub use error::{ApiError, outcome};
pub use extract::RequestId;
pub use metrics::Metrics;
pub use middleware::request_context;
pub use openapi::ApiDoc;
pub use rate_limit::RateLimits;
pub use sync_socket::{SocketSlots, SyncTiming};

use crate::auth::TokenVerifier;
use crate::service::Services;

/// Shared, read-only state of the HTTP layer.
pub struct AppState {
    pub services: Services,
    /// Public base URL without a trailing slash (`CAREVAULT_PUBLIC_URL`): the start of
    /// every absolute URL in a response.
    pub public_url: String,
    pub verifier: Arc<TokenVerifier>,
    pub limits: RateLimits,
    pub metrics: Metrics,
    pub body_limit: usize,
    /// Largest transaction or batch Bundle body.
    pub bundle_limit: usize,
    pub sync: SyncTiming,
    /// Open WebSocket connections per principal.
    pub sockets: SocketSlots,
    /// The authorization server SMART apps are sent to; `None`: SMART is not offered.
    pub smart: Option<crate::fhir::capability::SmartEndpoints>,
}

/// Runs blocking work (database, crypto) on the blocking pool, inside the caller's span.
pub async fn blocking<T, F>(work: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::Span::current();
    actix_web::rt::task::spawn_blocking(move || span.in_scope(work)).await.map_err(|_| ApiError::Internal)?
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    // 405 names the methods the path has (`Allow`), as RFC 9110 asks.
    let not_allowed = |allow: &'static str| web::to(move || ops::method_not_allowed(allow));
    cfg.service(web::resource("/healthz").route(web::get().to(ops::healthz)).default_service(not_allowed("GET")))
        .service(web::resource("/readyz").route(web::get().to(ops::readyz)).default_service(not_allowed("GET")))
        .service(web::resource("/metrics").route(web::get().to(ops::metrics)).default_service(not_allowed("GET")))
        .service(
            web::scope("/audit")
                .service(web::resource("/public-key").route(web::get().to(audit::public_key)).default_service(not_allowed("GET")))
                .service(web::resource("/checkpoint").route(web::get().to(audit::checkpoint)).default_service(not_allowed("GET")))
                .service(web::resource("/entries").route(web::get().to(audit::entries)).default_service(not_allowed("GET")))
                .service(web::resource("/proof/inclusion").route(web::get().to(audit::inclusion)).default_service(not_allowed("GET")))
                .service(web::resource("/proof/consistency").route(web::get().to(audit::consistency)).default_service(not_allowed("GET")))
                .service(web::resource("/export").route(web::get().to(audit::export)).default_service(not_allowed("GET")))
                .service(web::resource("/disclosures").route(web::get().to(audit::disclosures)).default_service(not_allowed("GET")))
                .service(web::resource("/report").route(web::get().to(audit::report)).default_service(not_allowed("GET"))),
        )
        .service(
            web::scope("/admin")
                .service(
                    web::resource("/legal-holds")
                        .route(web::get().to(admin::holds))
                        .route(web::post().to(admin::create_hold))
                        .default_service(not_allowed("GET, POST")),
                )
                .service(
                    web::resource("/legal-holds/{id}").route(web::delete().to(admin::release_hold)).default_service(not_allowed("DELETE")),
                )
                .service(web::resource("/retention/runs").route(web::get().to(admin::runs)).default_service(not_allowed("GET"))),
        )
        .service(web::resource("/sync").route(web::get().to(sync_socket::socket)).default_service(not_allowed("GET")))
        .service(
            web::scope("/sync")
                .service(web::resource("/changes").route(web::get().to(sync::changes)).default_service(not_allowed("GET")))
                .service(web::resource("/push").route(web::post().to(sync::push)).default_service(not_allowed("POST")))
                .service(web::resource("/conflicts").route(web::get().to(sync::conflicts)).default_service(not_allowed("GET")))
                .service(
                    web::resource("/conflicts/{id}/resolve").route(web::post().to(sync::resolve)).default_service(not_allowed("POST")),
                ),
        )
        .service(
            web::resource("/.well-known/smart-configuration")
                .route(web::get().to(smart::configuration))
                .default_service(not_allowed("GET")),
        )
        .service(web::resource("/openapi.json").route(web::get().to(openapi::openapi_json)).default_service(not_allowed("GET")))
        .service(
            web::scope("/fhir")
                .service(web::resource("/metadata").route(web::get().to(fhir::metadata)).default_service(not_allowed("GET")))
                // Before `/{type}/{id}`, which the path would match too.
                .service(
                    web::resource("/.well-known/smart-configuration")
                        .route(web::get().to(smart::configuration))
                        .default_service(not_allowed("GET")),
                )
                .service(web::resource(["", "/"]).route(web::post().to(fhir::bundle)).default_service(not_allowed("POST")))
                .service(
                    web::resource("/{type}")
                        .route(web::get().to(fhir::search))
                        .route(web::post().to(fhir::create))
                        .route(web::put().to(fhir::update_where))
                        .default_service(not_allowed("GET, POST, PUT")),
                )
                .service(web::resource("/{type}/_search").route(web::post().to(fhir::search_post)).default_service(not_allowed("POST")))
                .service(
                    web::resource("/{type}/{id}")
                        .route(web::get().to(fhir::read))
                        .route(web::put().to(fhir::update))
                        .route(web::delete().to(fhir::delete))
                        .route(web::patch().to(fhir::patch))
                        .default_service(not_allowed("GET, PUT, PATCH, DELETE")),
                )
                .service(web::resource("/{type}/{id}/_history").route(web::get().to(fhir::history)).default_service(not_allowed("GET")))
                .service(
                    web::resource("/{type}/{id}/$everything").route(web::get().to(fhir::everything)).default_service(not_allowed("GET")),
                )
                .service(
                    web::resource("/{type}/{id}/_history/{vid}").route(web::get().to(fhir::vread)).default_service(not_allowed("GET")),
                ),
        )
        .default_service(web::to(ops::not_found))
        .app_data(web::QueryConfig::default().error_handler(|_, _| {
            ApiError::bad_request(crate::fhir::IssueCode::Value, "query parameters are missing or not numbers").into()
        }));
}
