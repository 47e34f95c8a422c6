//! The audit ledger over HTTP (SPEC section 5): the public key, signed checkpoints,
//! entries with their leaf bytes, and inclusion and consistency proofs. Auditor role
//! (the `audit` capability, checked by the use cases) except for the public key. Entries
//! checkpoints and proofs are those of the caller's tenant's own log (origin
//! `BASE/TENANT`), so an auditor recomputes every root from the entries it may see.

use actix_web::{HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::json;

use crate::api::{ApiError, AppState, blocking};
use crate::service::Caller;
use crate::service::export_format::ExportFormat;

/// Most entries one `/audit/entries` call returns.
const MAX_ENTRIES: i64 = 1000;

#[utoipa::path(get, path = "/audit/public-key", tag = "audit", security(()),
    responses((status = 200, description = "`{origin, algorithm: \"Ed25519\", public_key: base64}`")))]
pub async fn public_key(state: web::Data<AppState>) -> HttpResponse {
    let (origin, key) = state.services.ledger_public_key();
    HttpResponse::Ok().json(json!({
        "origin": origin,
        "algorithm": "Ed25519",
        "public_key": STANDARD.encode(key),
    }))
}

#[utoipa::path(get, path = "/audit/checkpoint", tag = "audit",
    responses((status = 200, description = "`{origin, size, root_hash, timestamp, note}`; note is a C2SP signed note"),
        (status = 403, description = "Not an auditor (OperationOutcome)"),
        (status = 503, description = "Database or ledger unavailable; retry (OperationOutcome)")))]
pub async fn checkpoint(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let services = state.services.clone();
    let (origin, row) = blocking(move || Ok(services.ledger_checkpoint(&caller)?)).await?;
    Ok(HttpResponse::Ok().json(json!({
        "origin": origin,
        "size": row.size,
        "root_hash": row.root_hash,
        "timestamp": row.timestamp,
        "note": row.note,
    })))
}

#[derive(Deserialize)]
pub struct Range {
    from: i64,
    to: i64,
}

#[utoipa::path(get, path = "/audit/entries", tag = "audit",
    params(("from" = i64, Query, minimum = 0, description = "first seq"),
        ("to" = i64, Query, minimum = 0, description = "end seq, exclusive; from <= to <= from + 1000")),
    responses((status = 200, description = "`{entries: [entry + leaf (base64 canonical bytes)]}` of the caller's tenant"),
        (status = 400, description = "Missing or non-numeric from/to, or a range outside 0 <= from <= to <= from + 1000 (OperationOutcome)"),
        (status = 403, description = "Not an auditor (OperationOutcome)"),
        (status = 503, description = "Database unavailable; retry (OperationOutcome)")))]
pub async fn entries(state: web::Data<AppState>, caller: Caller, range: web::Query<Range>) -> Result<HttpResponse, ApiError> {
    let Range { from, to } = range.into_inner();
    let services = state.services.clone();
    let entries = blocking(move || Ok(services.ledger_entries(&caller, from, to, MAX_ENTRIES)?)).await?;
    Ok(HttpResponse::Ok().json(json!({ "entries": entries })))
}

#[derive(Deserialize)]
pub struct InclusionQuery {
    seq: u64,
    size: u64,
}

#[utoipa::path(get, path = "/audit/proof/inclusion", tag = "audit",
    params(("seq" = u64, Query, minimum = 0, description = "leaf index, below size"),
        ("size" = u64, Query, minimum = 1, description = "tree size, at most the ledger's size")),
    responses((status = 200, description = "`{leaf_index, tree_size, leaf_hash, audit_path}` (RFC 9162)"),
        (status = 400, description = "Missing or non-numeric seq/size, or not seq < size <= the ledger's size (OperationOutcome)"),
        (status = 403, description = "Not an auditor (OperationOutcome)"),
        (status = 404, description = "No entry with this seq in the caller's tenant (OperationOutcome)"),
        (status = 503, description = "Database or ledger unavailable; retry (OperationOutcome)")))]
pub async fn inclusion(state: web::Data<AppState>, caller: Caller, q: web::Query<InclusionQuery>) -> Result<HttpResponse, ApiError> {
    let InclusionQuery { seq, size } = q.into_inner();
    let services = state.services.clone();
    let (leaf_hash, path) = blocking(move || Ok(services.ledger_inclusion(&caller, seq, size)?)).await?;
    Ok(HttpResponse::Ok().json(json!({
        "leaf_index": seq,
        "tree_size": size,
        "leaf_hash": leaf_hash,
        "audit_path": path,
    })))
}

#[derive(Deserialize)]
pub struct ConsistencyQuery {
    from: u64,
    to: u64,
}

#[utoipa::path(get, path = "/audit/proof/consistency", tag = "audit",
    params(("from" = u64, Query, minimum = 0, description = "older tree size, at most to"),
        ("to" = u64, Query, minimum = 0, description = "newer tree size, at most the ledger's size")),
    responses((status = 200, description = "`{first, second, proof}` (RFC 9162)"),
        (status = 400, description = "Missing or non-numeric from/to, or not from <= to <= the ledger's size (OperationOutcome)"),
        (status = 403, description = "Not an auditor (OperationOutcome)"),
        (status = 503, description = "Database or ledger unavailable; retry (OperationOutcome)")))]
pub async fn consistency(state: web::Data<AppState>, caller: Caller, q: web::Query<ConsistencyQuery>) -> Result<HttpResponse, ApiError> {
    let ConsistencyQuery { from, to } = q.into_inner();
    let services = state.services.clone();
    let proof = blocking(move || Ok(services.ledger_consistency(&caller, from, to)?)).await?;
    Ok(HttpResponse::Ok().json(json!({
        "first": from,
        "second": to,
        "proof": proof,
    })))
}

// The `format` values, for the OpenAPI document only (a plain comment: a doc comment would
// become the schema's description): the handler reads the text itself, so that a wrong
// value gets a message naming the choices.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ExportFormatName {
    Ndjson,
    Csv,
    Fhir,
}

#[derive(Deserialize)]
pub struct ExportQuery {
    from: Option<String>,
    to: Option<String>,
    patient: Option<String>,
    actor: Option<String>,
    format: Option<String>,
}

/// `GET /audit/export`: ndjson, csv or fhir (a Bundle of AuditEvent), streamed through a
/// bounded channel (backpressure), led by the signed checkpoint that every entry's
/// inclusion proof refers to.
#[utoipa::path(get, path = "/audit/export", tag = "audit",
    params(("from" = Option<String>, Query, format = DateTime, description = "RFC 3339, inclusive"),
        ("to" = Option<String>, Query, format = DateTime, description = "RFC 3339, exclusive"),
        ("patient" = Option<String>, Query, pattern = r"^Patient/[A-Za-z0-9.\-]{1,64}$", description = "Patient/ID"),
        ("actor" = Option<String>, Query, description = "token subject"),
        ("format" = inline(Option<ExportFormatName>), Query, description = "ndjson (default), csv or fhir")),
    responses((status = 200, description = "Streamed export led by a signed checkpoint, each entry with its inclusion proof",
            content(("application/x-ndjson"), ("text/csv"), ("application/fhir+json"))),
        (status = 400, description = "from/to not RFC 3339, patient not Patient/ID, or an unknown format (OperationOutcome)"),
        (status = 403, description = "Not an auditor (OperationOutcome)"),
        (status = 503, description = "Database or ledger unavailable; retry (OperationOutcome)")))]
pub async fn export(state: web::Data<AppState>, caller: Caller, q: web::Query<ExportQuery>) -> Result<HttpResponse, ApiError> {
    let ExportQuery { from, to, patient, actor, format } = q.into_inner();
    let format = ExportFormat::parse(format.as_deref().unwrap_or("ndjson"))
        .ok_or_else(|| ApiError::bad_request(crate::fhir::IssueCode::Value, "format must be ndjson, csv or fhir"))?;
    let services = state.services.clone();
    let request = crate::service::ExportRequest { from, to, patient, actor };
    let prepared = blocking(move || Ok(services.prepare_export(&caller, request)?)).await?;
    // A failure mid-stream aborts the response (the client sees a broken transfer, never
    // a short export that looks complete).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<web::Bytes, std::io::Error>>(16);
    let services = state.services.clone();
    let span = tracing::Span::current();
    actix_web::rt::task::spawn_blocking(move || {
        span.in_scope(|| {
            let sent = services.stream_export(&prepared, format, |chunk| tx.blocking_send(Ok(web::Bytes::from(chunk))).is_ok());
            match sent {
                Ok(done) if done.complete => tracing::info!(entries = done.entries, "audit export streamed"),
                Ok(done) => tracing::info!(entries = done.entries, "audit export stopped: the reader went away"),
                Err(e) => {
                    tracing::error!(error = %e, cause = ?std::error::Error::source(&e).map(ToString::to_string), "audit export failed");
                    // The reader may be gone already; then there is nobody left to tell.
                    let _ = tx.blocking_send(Err(std::io::Error::other("audit export failed")));
                }
            }
        })
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok(HttpResponse::Ok().content_type(format.content_type()).streaming(body))
}

#[derive(Deserialize)]
pub struct DisclosureQuery {
    patient: String,
}

/// `GET /audit/disclosures?patient=Patient/ID`.
#[utoipa::path(get, path = "/audit/disclosures", tag = "audit",
    params(("patient" = String, Query, pattern = r"^Patient/[A-Za-z0-9.\-]{1,64}$", description = "Patient/ID")),
    responses((status = 200, description = "Accounting of disclosures (45 CFR 164.528): date, recipient, purpose, description"),
        (status = 400, description = "patient missing or not Patient/ID (OperationOutcome)"),
        (status = 403, description = "Not an auditor (OperationOutcome)"),
        (status = 503, description = "Database unavailable; retry (OperationOutcome)")))]
pub async fn disclosures(state: web::Data<AppState>, caller: Caller, q: web::Query<DisclosureQuery>) -> Result<HttpResponse, ApiError> {
    let patient = q.into_inner().patient;
    let services = state.services.clone();
    let shown = patient.clone();
    let list = blocking(move || Ok(services.disclosures(&caller, &patient)?)).await?;
    let list: Vec<serde_json::Value> = list.iter().map(disclosure_json).collect();
    Ok(HttpResponse::Ok().json(json!({ "patient": shown, "disclosures": list })))
}

/// One line of the accounting of disclosures (45 CFR 164.528).
fn disclosure_json(d: &crate::service::Disclosure) -> serde_json::Value {
    json!({
        "date": d.date,
        "recipient": {"sub": d.recipient_sub, "roles": d.recipient_roles, "fhirUser": d.recipient_fhir_user},
        "purpose": d.purpose,
        "description": format!("{} of {}", d.action, d.resource.as_deref().unwrap_or("records")),
        "breakGlass": d.break_glass,
        "log": d.log,
        "seq": d.seq,
    })
}

#[derive(Deserialize)]
pub struct ReportQuery {
    from: String,
    to: String,
    patient: Option<String>,
    since_checkpoint: Option<String>,
}

/// A checkpoint note as a query parameter: base64 of its bytes (standard or URL-safe
/// alphabet, padding optional), since a query string may not carry the note's newlines.
fn note_parameter(raw: &str) -> Result<String, ApiError> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = raw.trim().trim_end_matches('=');
    let bytes = STANDARD_NO_PAD.decode(trimmed).or_else(|_| URL_SAFE_NO_PAD.decode(trimmed));
    bytes
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::bad_request(crate::fhir::IssueCode::Value, "since_checkpoint must be the base64 of a checkpoint note"))
}

/// `GET /audit/report`: the reviewer's report, one self-contained HTML page (inline style
/// and SVG, no script, nothing fetched), with a Content-Security-Policy allowing only its
/// own inline style.
#[utoipa::path(get, path = "/audit/report", tag = "audit",
    params(("from" = String, Query, format = DateTime, description = "RFC 3339, inclusive"),
        ("to" = String, Query, format = DateTime, description = "RFC 3339, exclusive; after from, at most 366 days later"),
        ("patient" = Option<String>, Query, pattern = r"^Patient/[A-Za-z0-9.\-]{1,64}$", description = "Patient/ID: adds who accessed that patient, and its accounting of disclosures"),
        ("since_checkpoint" = Option<String>, Query, max_length = 5464, description = "base64 of the signed checkpoint note of a previous report (at most 4096 bytes): the report says whether the log is still consistent with it")),
    responses((status = 200, description = "The report: one HTML page, led by whether the tenant's log verified (a log that does not verify is reported, not refused; header X-Ledger-Verified: true or false)",
            content_type = "text/html"),
        (status = 400, description = "from/to missing or not RFC 3339, to not after from or over 366 days later, patient not Patient/ID, or since_checkpoint not base64 of a note of at most 4096 bytes (OperationOutcome)"),
        (status = 403, description = "Not an auditor (OperationOutcome)"),
        (status = 503, description = "Database or ledger unavailable; retry (OperationOutcome)")))]
pub async fn report(state: web::Data<AppState>, caller: Caller, q: web::Query<ReportQuery>) -> Result<HttpResponse, ApiError> {
    let ReportQuery { from, to, patient, since_checkpoint } = q.into_inner();
    let since_checkpoint = since_checkpoint.filter(|s| !s.trim().is_empty()).map(|s| note_parameter(&s)).transpose()?;
    let services = state.services.clone();
    let request = crate::service::ReportRequest { from, to, patient, since_checkpoint };
    let report = blocking(move || Ok(services.audit_report(&caller, request)?)).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", report.content_security_policy))
        .insert_header(("Content-Disposition", format!("inline; filename=\"{}\"", report.file_name)))
        .insert_header(("X-Ledger-Verified", if report.verified { "true" } else { "false" }))
        .body(report.html))
}
