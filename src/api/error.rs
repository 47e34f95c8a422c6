//! The one place where errors become HTTP responses. Every error body is a FHIR
//! OperationOutcome; internal causes are logged once and never sent.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde_json::{Value, json};

use crate::auth::TokenError;
use crate::fhir::{Issue, IssueCode};
use crate::service::ServiceError;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("authentication failed: {0}")]
    Unauthorized(TokenError),
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    #[error("request body too large")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// A PATCH body in another format than JSON Patch.
    #[error("unsupported patch media type")]
    UnsupportedPatchType,
    #[error("not acceptable")]
    NotAcceptable,
    #[error("bad request")]
    BadRequest(Vec<Issue>),
    #[error("not found")]
    NotFound(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("forbidden")]
    Forbidden,
    #[error("service unavailable")]
    Unavailable(&'static str),
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn bad_request(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        ApiError::BadRequest(vec![Issue::new(code, None, diagnostics)])
    }
}

/// An OperationOutcome with `error` issues.
pub fn outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = issues
        .iter()
        .map(|i| {
            let mut issue = json!({"severity": "error", "code": i.code.as_str(), "diagnostics": i.diagnostics});
            if let Some(path) = &i.expression {
                issue["expression"] = json!([path]);
            }
            issue
        })
        .collect();
    json!({"resourceType": "OperationOutcome", "issue": issues})
}

impl ApiError {
    pub(crate) fn issues(&self) -> Vec<Issue> {
        let one = |code, text: &str| vec![Issue::new(code, None, text)];
        match self {
            ApiError::Service(e) => e.outcome().1,
            ApiError::Unauthorized(TokenError::Missing) => one(IssueCode::Login, "a bearer token is required"),
            ApiError::Unauthorized(TokenError::Expired) => one(IssueCode::Login, "the bearer token has expired"),
            ApiError::Unauthorized(TokenError::Invalid) => one(IssueCode::Login, "the bearer token is not valid"),
            ApiError::Unauthorized(TokenError::NotYetValid) => {
                one(IssueCode::Login, "the bearer token is not valid yet (nbf or iat lies in the future)")
            }
            ApiError::Unauthorized(TokenError::TooLong) => one(IssueCode::Login, "the bearer token lives longer than this server accepts"),
            ApiError::RateLimited { .. } => one(IssueCode::Throttled, "too many requests"),
            ApiError::PayloadTooLarge { limit } => one(IssueCode::TooCostly, &format!("request body exceeds the limit of {limit} bytes")),
            ApiError::UnsupportedMediaType => {
                one(IssueCode::NotSupported, "request body must be application/fhir+json or application/json")
            }
            ApiError::UnsupportedPatchType => one(
                IssueCode::NotSupported,
                "a PATCH body must be a JSON Patch (application/json-patch+json); FHIRPath Patch is not supported",
            ),
            ApiError::NotAcceptable => {
                one(IssueCode::NotSupported, "only FHIR R4 (fhirVersion 4.0) in JSON (application/fhir+json) is served")
            }
            ApiError::BadRequest(issues) => issues.clone(),
            ApiError::NotFound(what) => one(IssueCode::NotFound, what),
            ApiError::MethodNotAllowed { .. } => one(IssueCode::NotSupported, "method not allowed on this path"),
            ApiError::Forbidden => one(IssueCode::Forbidden, "access denied"),
            ApiError::Unavailable(what) => one(IssueCode::Transient, what),
            ApiError::Internal => one(IssueCode::Exception, "internal error; quote the X-Request-Id response header when reporting it"),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Service(e) => StatusCode::from_u16(e.outcome().0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType | ApiError::UnsupportedPatchType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            // The cause chain, once; it holds no PHI (store errors carry no values).
            tracing::error!(error = %self, cause = ?std::error::Error::source(self).map(ToString::to_string), "request failed");
        }
        let mut response = HttpResponse::build(status);
        response.insert_header((header::CONTENT_TYPE, FHIR_JSON));
        match self {
            ApiError::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"carevault\"")));
            }
            ApiError::RateLimited { retry_after_secs } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            ApiError::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, *allow));
            }
            _ => {}
        }
        response.body(outcome(&self.issues()).to_string())
    }
}
