//! Retention (SPEC section 7): legal holds, the retention job and its destruction
//! records. `policy` judges a patient by `policies/retention.toml`; `job` runs the rules
//! over every tenant and purges the patients they end (`purge`: one transaction per
//! patient that destroys the data key, deletes the rows, records the destruction, ledgers
//! it and emits the `purge` changes). Holds and runs are an admin's business (the
//! `legal_holds` capability); auditors may list them for their reviews. Patients are
//! named by id only.

pub mod job;
pub mod policy;
mod purge;

use serde::Serialize;

use crate::authz::Capability;
use crate::domain::{AuditAction, AuditOutcome, Reference, ResourceType};
use crate::fhir::{Issue, IssueCode};
use crate::service::audit::{append_in, now};
use crate::service::{Caller, ServiceError, Services};
use crate::store::retention::{self as rows, HoldRow};
use crate::store::write_transaction;

pub use job::{RunSummary, Trigger, Verdict};

/// Longest legal-hold reason accepted.
pub const MAX_REASON: usize = 1000;
/// Most runs `GET /admin/retention/runs` lists.
pub const MAX_RUNS: i64 = 100;

/// A legal hold as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    pub id: String,
    pub patient: String,
    pub reason: String,
    pub active: bool,
    pub created_by: String,
    pub created_at: String,
    pub released_by: Option<String>,
    pub released_at: Option<String>,
}

impl From<HoldRow> for Hold {
    fn from(row: HoldRow) -> Self {
        Self {
            id: row.id,
            patient: format!("Patient/{}", row.patient_id),
            reason: row.reason,
            active: row.released_at.is_none(),
            created_by: row.created_by,
            created_at: row.created_at,
            released_by: row.released_by,
            released_at: row.released_at,
        }
    }
}

/// One patient's destruction record.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Destruction {
    pub patient: String,
    pub rule: String,
    pub category: String,
    /// How many records of each type were purged.
    pub resources: serde_json::Value,
    pub destroyed_at: String,
}

/// A run of the retention job, with the caller's tenant's destruction records.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub id: String,
    pub trigger: String,
    /// The instant the rules were judged at.
    pub evaluated_at: String,
    pub started_at: String,
    /// `None` while the run goes on, or for a run that was interrupted (a later run
    /// finishes its work).
    pub finished_at: Option<String>,
    pub destructions: Vec<Destruction>,
}

/// Totals over every tenant, for the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetentionTotals {
    pub runs: i64,
    pub finished: i64,
    pub purged: i64,
}

pub struct RetentionService<'s> {
    services: &'s Services,
}

fn invalid(expression: &str, diagnostics: &str) -> ServiceError {
    ServiceError::Invalid(vec![Issue::new(IssueCode::Invalid, Some(expression.to_owned()), diagnostics)])
}

impl<'s> RetentionService<'s> {
    pub fn new(services: &'s Services) -> Self {
        Self { services }
    }

    /// Refuses (and ledgers as denied) a caller without any of `capabilities`.
    fn require(
        &self,
        caller: &Caller,
        capabilities: &[Capability],
        action: AuditAction,
        resource: Option<String>,
    ) -> Result<(), ServiceError> {
        self.services.require_capability(caller, capabilities, action, resource, None)
    }

    /// Places a legal hold on a patient of the caller's tenant (the `legal_holds`
    /// capability): from now on no rule purges it. The patient must exist and not have
    /// been purged. Ledgered as a `create` of `LegalHold/ID` naming the patient.
    #[tracing::instrument(skip_all)]
    pub fn create_hold(&self, caller: &Caller, patient: &str, reason: &str) -> Result<Hold, ServiceError> {
        self.require(caller, &[Capability::LegalHolds], AuditAction::Create, Some("LegalHold".to_owned()))?;
        let patient = match Reference::parse(patient) {
            Ok(r) if r.resource_type == ResourceType::Patient => r.id,
            _ => return Err(invalid("patient", "patient must be a reference of the form Patient/ID")),
        };
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_REASON {
            return Err(invalid("reason", "reason must be 1 to 1000 characters"));
        }
        let tenant = caller.principal.tenant.as_str();
        let row = HoldRow {
            id: uuid::Uuid::new_v4().to_string(),
            tenant: tenant.to_owned(),
            patient_id: patient.to_string(),
            reason: reason.to_owned(),
            created_by: caller.principal.sub.clone(),
            created_at: now(),
            released_by: None,
            released_at: None,
        };
        let entry = caller.entry(
            AuditAction::Create,
            Some(format!("LegalHold/{}", row.id)),
            Some(format!("Patient/{patient}")),
            AuditOutcome::Success,
        );
        let mut conn = self.services.store.conn()?;
        write_transaction(&mut conn, |tx| {
            // Under the patient's lock, so a purge in progress either finished before
            // (the patient is gone) or starts after and sees the hold.
            rows::lock_patient(tx, tenant, patient.as_str())?;
            if crate::store::resources::find_current(tx, tenant, "Patient", patient.as_str())?.is_none() {
                return Err(invalid("patient", "no such patient in this tenant (or it has been purged)"));
            }
            rows::insert_hold(tx, &row)?;
            append_in(tx, vec![entry])
        })?;
        tracing::info!(hold = %row.id, "legal hold placed");
        Ok(row.into())
    }

    /// Every legal hold of the caller's tenant, active and released, oldest first
    /// (`legal_holds` or `audit` capability).
    pub fn holds(&self, caller: &Caller) -> Result<Vec<Hold>, ServiceError> {
        self.require(caller, &[Capability::LegalHolds, Capability::Audit], AuditAction::Search, Some("LegalHold".to_owned()))?;
        let mut conn = self.services.store.conn()?;
        Ok(rows::holds(&mut conn, caller.principal.tenant.as_str())?.into_iter().map(Hold::from).collect())
    }

    /// Releases an active hold (`legal_holds` capability); the record of it stays.
    /// Ledgered as a `delete` of `LegalHold/ID`. `NotFound` for no active hold of that id.
    #[tracing::instrument(skip_all)]
    pub fn release_hold(&self, caller: &Caller, id: &str) -> Result<Hold, ServiceError> {
        let resource = format!("LegalHold/{id}");
        self.require(caller, &[Capability::LegalHolds], AuditAction::Delete, Some(resource.clone()))?;
        let tenant = caller.principal.tenant.as_str();
        let mut conn = self.services.store.conn()?;
        let released = write_transaction(&mut conn, |tx| {
            let Some(hold) = rows::find_hold(tx, tenant, id)? else { return Err(ServiceError::NotFound) };
            rows::lock_patient(tx, tenant, &hold.patient_id)?;
            if !rows::release_hold(tx, tenant, id, &caller.principal.sub, &now())? {
                return Err(ServiceError::NotFound);
            }
            let patient = Some(format!("Patient/{}", hold.patient_id));
            append_in(tx, vec![caller.entry(AuditAction::Delete, Some(resource.clone()), patient, AuditOutcome::Success)])?;
            rows::find_hold(tx, tenant, id)?.ok_or(ServiceError::NotFound)
        })?;
        tracing::info!(hold = %id, "legal hold released");
        Ok(released.into())
    }

    /// Runs started and finished, and patients purged, over every tenant.
    pub fn totals(&self) -> Result<RetentionTotals, ServiceError> {
        let mut conn = self.services.store.conn()?;
        let (runs, finished, purged) = rows::totals(&mut conn)?;
        Ok(RetentionTotals { runs, finished, purged })
    }

    /// The latest runs of the retention job, newest first, each with the caller's tenant's
    /// destruction records (`legal_holds` or `audit` capability).
    pub fn runs(&self, caller: &Caller) -> Result<Vec<Run>, ServiceError> {
        self.require(caller, &[Capability::LegalHolds, Capability::Audit], AuditAction::Search, Some("RetentionRun".to_owned()))?;
        let mut conn = self.services.store.conn()?;
        let runs = rows::runs(&mut conn, MAX_RUNS)?;
        let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
        let mut by_run: std::collections::HashMap<String, Vec<Destruction>> = std::collections::HashMap::new();
        for d in rows::destructions_of(&mut conn, caller.principal.tenant.as_str(), &ids)? {
            by_run.entry(d.run_id).or_default().push(Destruction {
                patient: format!("Patient/{}", d.patient_id),
                rule: d.rule,
                category: d.category,
                resources: serde_json::from_str(&d.resources).unwrap_or(serde_json::Value::Null),
                destroyed_at: d.destroyed_at,
            });
        }
        Ok(runs
            .into_iter()
            .map(|run| Run {
                destructions: by_run.remove(&run.id).unwrap_or_default(),
                id: run.id,
                trigger: run.trigger_kind,
                evaluated_at: run.evaluated_at,
                started_at: run.started_at,
                finished_at: run.finished_at,
            })
            .collect())
    }
}
