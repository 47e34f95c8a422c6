//! The compliance reviewer's report (SPEC section 5): one self-contained HTML page for a
//! tenant and a period, led by whether the tenant's log verified, then charts and tables
//! drawn from the log. The use case (`Services::audit_report`) checks the caller is an
//! auditor, ledgers the report as an `export`, signs the checkpoint that covers it, and
//! replays the log from its first entry up to that checkpoint: every leaf rehashed into
//! the root the checkpoint must sign ([`crate::ledger::replay`]), every entry handed to
//! [`aggregate`] on the way, so memory does not grow with the log. The retention tables
//! add the destruction records and legal holds, the accounting of disclosures its list for
//! one patient; [`html`] renders the page (the banner; `sections` the rest) and [`svg`] its charts. Patients appear by id, actors by
//! subject: the ledger holds no PHI values, and nothing else is read.

pub mod aggregate;
pub mod html;
mod sections;
pub mod svg;

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};

use crate::domain::{AuditAction, AuditOutcome, Reference, ResourceType};
use crate::fhir::{Issue, IssueCode};
use crate::ledger::checkpoint;
use crate::ledger::log as ledger_log;
use crate::ledger::merkle;
use crate::ledger::replay::{self, Anchor, Replayed};
use crate::service::{Caller, Disclosure, ServiceError, Services};
use crate::store::ledger::CheckpointRow;
use crate::store::retention::{DestructionRow, HoldRow};

use aggregate::{Aggregates, Capped, MAX_DAYS, MAX_ROWS, Period};

/// Longest checkpoint note accepted as `since_checkpoint`, in bytes.
pub const MAX_NOTE: usize = 4096;

/// What a report was asked for, as given.
#[derive(Debug, Clone, Default)]
pub struct ReportRequest {
    /// RFC 3339, inclusive.
    pub from: String,
    /// RFC 3339, exclusive.
    pub to: String,
    /// `Patient/ID`: adds that patient's view and accounting of disclosures.
    pub patient: Option<String>,
    /// The signed checkpoint note of a previous report, to check the log against.
    pub since_checkpoint: Option<String>,
}

/// The previous report's checkpoint, as given, and what became of it.
#[derive(Debug, Clone)]
pub struct Previous {
    pub note: String,
    /// `(size, root)` when the note verified under this log's origin and key.
    pub signed: Result<(u64, merkle::Hash), String>,
}

/// Whether the log verified, and the facts the banner states.
#[derive(Debug, Clone)]
pub struct Trust {
    pub tenant: String,
    pub origin: String,
    pub public_key: String,
    /// The checkpoint the report is pinned to (signed after the report was ledgered).
    pub checkpoint: CheckpointRow,
    /// The checkpoint note checked under the origin and public key: `(size, root)`.
    pub signature: Result<(u64, merkle::Hash), String>,
    pub replayed: Replayed,
    pub previous: Option<Previous>,
}

impl Trust {
    /// The recomputed root equals the one the checkpoint signs.
    pub fn root_matches(&self) -> bool {
        matches!((&self.signature, &self.replayed.root), (Ok((size, signed)), Some(root))
            if signed == root && *size == self.replayed.entries && self.checkpoint.root_hash == merkle::to_hex(root))
    }

    /// The previous checkpoint verified under this log's key and matched the entries.
    pub fn previous_ok(&self) -> Option<bool> {
        self.previous.as_ref().map(|p| p.signed.is_ok() && self.replayed.anchor_matched == Some(true))
    }

    /// Every check passed.
    pub fn verified(&self) -> bool {
        self.signature.is_ok() && self.replayed.first_mismatch.is_none() && self.root_matches() && self.previous_ok() != Some(false)
    }
}

/// Everything the page shows.
#[derive(Debug)]
pub struct ReportData {
    pub generated_at: String,
    pub generated_by: String,
    pub request_id: String,
    pub patient: Option<String>,
    pub trust: Trust,
    pub figures: Aggregates,
    pub destructions: Capped<DestructionRow>,
    pub holds: Capped<HoldRow>,
    /// The patient's accounting of disclosures in the period (with `patient` only).
    pub disclosures: Option<Capped<Disclosure>>,
}

/// A rendered report.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub html: String,
    /// The `Content-Security-Policy` the page carries in its own `<meta>` (inline style by
    /// its hash, nothing else), for the HTTP answer to repeat.
    pub content_security_policy: String,
    /// Whether the log verified.
    pub verified: bool,
    /// A file name for it: `carevault-report-TENANT-FROM-TO.html`.
    pub file_name: String,
}

fn bad_request(text: &str) -> ServiceError {
    ServiceError::BadRequest(vec![Issue::new(IssueCode::Value, None, text)])
}

fn instant(raw: &str, name: &str) -> Result<DateTime<Utc>, ServiceError> {
    DateTime::parse_from_rfc3339(raw).map(|t| t.with_timezone(&Utc)).map_err(|_| bad_request(&format!("{name} must be an RFC 3339 time")))
}

fn text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The checkpoint note in `text`: the note itself, the JSON of `GET /audit/checkpoint`, or
/// a previous report (its `<pre id="checkpoint-note">`). For `--since-checkpoint`, which
/// takes any of them from a file.
pub fn checkpoint_note_in(text: &str) -> String {
    const OPEN: &str = "<pre id=\"checkpoint-note\">";
    if let Some(start) = text.find(OPEN) {
        let rest = &text[start + OPEN.len()..];
        let inner = rest.split("</pre>").next().unwrap_or("");
        return html::unescape(inner);
    }
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(text)
        && let Some(serde_json::Value::String(note)) = map.get("note")
    {
        return note.clone();
    }
    text.to_owned()
}

impl Services {
    /// The reviewer's report of the caller's tenant for `[from, to)` (the `audit`
    /// capability; anyone else is refused and the attempt ledgered). Ledgered as an
    /// `export` (naming the patient when one was asked for) before the log is read, so the
    /// report covers its own making.
    #[tracing::instrument(skip_all)]
    pub fn audit_report(&self, caller: &Caller, req: ReportRequest) -> Result<Rendered, ServiceError> {
        self.auditor(caller, AuditAction::Export)?;
        let (from, to) = (instant(&req.from, "from")?, instant(&req.to, "to")?);
        if to <= from {
            return Err(bad_request("to must be after from"));
        }
        if to - from > chrono::Duration::days(MAX_DAYS) {
            return Err(bad_request(&format!("a report covers at most {MAX_DAYS} days")));
        }
        let patient = match req.patient.as_deref() {
            None => None,
            Some(p) => match Reference::parse(p) {
                Ok(r) if r.resource_type == ResourceType::Patient => Some(r.to_string()),
                _ => return Err(bad_request("patient must be Patient/ID")),
            },
        };
        let previous_note = match req.since_checkpoint {
            Some(note) if note.len() > MAX_NOTE => return Err(bad_request("since_checkpoint is too long for a checkpoint note")),
            Some(note) if note.trim().is_empty() => None,
            Some(note) => Some(note.replace("\r\n", "\n")),
            None => None,
        };
        let tenant = caller.principal.tenant.to_string();
        self.record(vec![caller.entry(AuditAction::Export, None, patient.clone(), AuditOutcome::Success)])?;

        let origin = self.ledger_origin(&tenant);
        let public_key = self.ledger_signer.public_key().to_vec();
        let mut conn = self.store.conn()?;
        let pinned = ledger_log::checkpoint(&mut conn, &self.ledger_signer, &tenant).map_err(ServiceError::ledger_by("checkpoint"))?;
        let signature = checkpoint::verify(&pinned.note, &origin, &public_key).map_err(|e| e.to_string());
        let previous = previous_note.map(|note| {
            let signed = checkpoint::verify(&note, &origin, &public_key).map_err(|e| e.to_string());
            Previous { note, signed }
        });
        let anchor = previous.as_ref().and_then(|p| p.signed.as_ref().ok()).map(|(size, root)| Anchor { size: *size, root: *root });

        let (from_text, to_text) = (text(&from), text(&to));
        let runs: HashSet<String> = crate::store::retention::run_ids_overlapping(&mut conn, &from_text, &to_text)?.into_iter().collect();
        let mut figures = Aggregates::new(Period::new(from, to), patient.clone(), runs);
        let size = u64::try_from(pinned.size).unwrap_or(0);
        let replayed = replay::replay(&mut conn, &tenant, &origin, &public_key, size, anchor, &mut |e| figures.add(e))
            .map_err(ServiceError::ledger_by("replay"))?;

        let limit = i64::try_from(MAX_ROWS).unwrap_or(500);
        let mut destructions = Capped::new(MAX_ROWS);
        destructions.rows = crate::store::retention::destructions_between(&mut conn, &tenant, &from_text, &to_text, limit)?;
        destructions.total =
            u64::try_from(crate::store::retention::count_destructions_between(&mut conn, &tenant, &from_text, &to_text)?).unwrap_or(0);
        let mut holds = Capped::new(MAX_ROWS);
        holds.rows = crate::store::retention::holds_overlapping(&mut conn, &tenant, &from_text, &to_text, limit)?;
        holds.total =
            u64::try_from(crate::store::retention::count_holds_overlapping(&mut conn, &tenant, &from_text, &to_text)?).unwrap_or(0);
        drop(conn);
        let disclosures = match &patient {
            None => None,
            Some(p) => {
                let mut list = Capped::new(MAX_ROWS);
                self.each_disclosure(&tenant, p, Some((&from_text, &to_text)), &mut |d| list.push(d))?;
                Some(list)
            }
        };

        let trust = Trust { tenant, origin, public_key: STANDARD.encode(&public_key), checkpoint: pinned, signature, replayed, previous };
        let data = ReportData {
            generated_at: crate::service::audit::now(),
            generated_by: caller.principal.sub.clone(),
            request_id: caller.request_id.clone(),
            patient,
            trust,
            figures,
            destructions,
            holds,
            disclosures,
        };
        let verified = data.trust.verified();
        if !verified {
            tracing::warn!(mismatch = ?data.trust.replayed.first_mismatch, "reviewer's report: the tenant's log did not verify");
        }
        let (html, content_security_policy) = html::page(&data);
        let file_name =
            format!("carevault-report-{}-{}-{}.html", data.trust.tenant, from.format("%Y%m%dT%H%M%SZ"), to.format("%Y%m%dT%H%M%SZ"));
        Ok(Rendered { html, content_security_policy, verified, file_name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTE: &str = "carevault.local/ledger/t\n3\nq83vEjsxE1c=\n\n\u{2014} carevault.local/ledger/t AAAA\n";

    #[test]
    fn a_previous_checkpoint_is_found_in_a_report_in_checkpoint_json_or_as_itself() {
        let page = format!("<html><body><pre id=\"checkpoint-note\">{}</pre></body></html>", html::escape(NOTE));
        assert_eq!(checkpoint_note_in(&page), NOTE);
        let json = serde_json::json!({"origin": "o", "size": 3, "note": NOTE}).to_string();
        assert_eq!(checkpoint_note_in(&json), NOTE);
        assert_eq!(checkpoint_note_in(NOTE), NOTE);
    }
}
