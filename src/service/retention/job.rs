//! The retention job: judges every patient of every tenant by the policy and purges those
//! a rule ends and no hold protects. One run at a time per database (a PostgreSQL
//! advisory lock; see [`crate::store::retention::try_lock_run`]). Each purge is one
//! transaction, so a run killed at any point leaves every patient either whole or purged,
//! and the next run carries on. A dry run writes nothing.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use super::RetentionService;
use super::policy::{PatientCategory, PatientFacts, age_on, facts_of};
use super::purge::{Purge, Purged};
use crate::domain::{Principal, PurposeOfUse, ResourceType, Role, TenantId};
use crate::service::keyring::DataKey;
use crate::service::{Caller, ServiceError};
use crate::store::DbConnection;
use crate::store::resources::CurrentRow;
use crate::store::retention::{self as rows, HoldRow, RunRow};

/// Patients judged per round trip.
const PAGE: i64 = 200;

/// What started a run; its actor in the ledger.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// The server's schedule.
    Schedule,
    /// `carevault retention run`, by this operator.
    Cli(String),
}

impl Trigger {
    fn kind(&self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Cli(_) => "cli",
        }
    }

    fn actor(&self) -> String {
        match self {
            Trigger::Schedule => "carevault:retention".to_owned(),
            Trigger::Cli(operator) => format!("cli:{operator}"),
        }
    }
}

/// What a run decided for one patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// A rule ends it and no hold protects it: purged (or, in a dry run, would be).
    Purge,
    /// Purged by this run.
    Purged,
    /// Protected by an active legal hold.
    Held,
    /// No rule ends it yet (or its category has no rule).
    Kept,
    /// It could not be judged (its record does not open); left as it is.
    Error,
}

/// One patient's verdict, as `carevault retention run` prints it (one JSON line each).
/// It names the patient by id and, for the operator, the day the rule ends it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub tenant: String,
    pub patient: String,
    pub decision: Decision,
    pub category: Option<String>,
    pub rule: Option<String>,
    /// The first day the rule ends the patient's records.
    pub qualifies_from: Option<String>,
    /// The active holds that protect the patient.
    pub holds: Vec<String>,
    /// Why, in words.
    pub why: String,
}

/// How a run went.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// `None` for a dry run, or when another run held the lock.
    pub run: Option<String>,
    pub dry_run: bool,
    /// Another run was going on: this one did nothing.
    pub skipped: bool,
    pub evaluated_at: String,
    pub patients: usize,
    pub purged: usize,
    pub held: usize,
    pub errors: usize,
    /// Stopped before judging every patient (the server was shutting down); the run's
    /// record keeps no finish time and the next run carries on.
    pub interrupted: bool,
}

/// The caller the job acts as in the ledger: an admin of `tenant` keeping records.
fn job_caller(tenant: TenantId, trigger: &Trigger, run: &str) -> Caller {
    Caller {
        principal: Principal { sub: trigger.actor(), tenant, roles: vec![Role::Admin], fhir_user: None, expires_at: None },
        break_glass: None,
        purpose: PurposeOfUse::parse("RECORDMGT").unwrap_or_default(),
        request_id: run.to_owned(),
        client: String::new(),
    }
}

fn day(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

impl RetentionService<'_> {
    /// Runs the job once, judging the rules at `now`; `seen` gets each patient's verdict
    /// as it is decided, and `stop` is asked before each patient whether to end early.
    /// Returns at once, doing nothing (`skipped`), while another run holds the lock. A dry
    /// run takes no lock and writes nothing.
    #[tracing::instrument(skip_all, fields(dry_run))]
    pub fn run(
        &self,
        trigger: &Trigger,
        now: DateTime<Utc>,
        dry_run: bool,
        seen: &mut dyn FnMut(&Verdict),
        stop: &dyn Fn() -> bool,
    ) -> Result<RunSummary, ServiceError> {
        let evaluated_at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut summary = RunSummary { dry_run, evaluated_at: evaluated_at.clone(), ..RunSummary::default() };
        if dry_run {
            self.judge_all(trigger, now, None, &mut summary, seen, stop)?;
            return Ok(summary);
        }
        let lock_store = self.services.store.dedicated()?;
        let mut lock = lock_store.conn()?;
        if !rows::try_lock_run(&mut lock)? {
            tracing::info!("retention run skipped: another run holds the lock");
            summary.skipped = true;
            return Ok(summary);
        }
        let run = RunRow {
            id: uuid::Uuid::new_v4().to_string(),
            trigger_kind: trigger.kind().to_owned(),
            evaluated_at,
            started_at: crate::service::audit::now(),
            finished_at: None,
            purged: 0,
        };
        let result = (|| {
            let mut conn = self.services.store.conn()?;
            rows::insert_run(&mut conn, &run)?;
            drop(conn);
            self.judge_all(trigger, now, Some(&run.id), &mut summary, seen, stop)?;
            if !summary.interrupted {
                let mut conn = self.services.store.conn()?;
                rows::finish_run(&mut conn, &run.id, &crate::service::audit::now(), i64::try_from(summary.purged).unwrap_or(i64::MAX))?;
            }
            Ok::<_, ServiceError>(())
        })();
        if let Err(e) = rows::unlock_run(&mut lock) {
            tracing::warn!(error = %e, "releasing the retention lock failed; it ends with its session");
        }
        result?;
        summary.run = Some(run.id);
        tracing::info!(purged = summary.purged, held = summary.held, errors = summary.errors, "retention run finished");
        Ok(summary)
    }

    /// Judges every patient of every tenant; purges the due ones when `run` is given.
    fn judge_all(
        &self,
        trigger: &Trigger,
        now: DateTime<Utc>,
        run: Option<&str>,
        summary: &mut RunSummary,
        seen: &mut dyn FnMut(&Verdict),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), ServiceError> {
        let mut conn = self.services.store.conn()?;
        for tenant in rows::tenants(&mut conn)? {
            let Ok(tenant_id) = TenantId::parse(&tenant) else {
                tracing::error!("a stored tenant id does not parse; its patients are not judged");
                summary.errors += 1;
                continue;
            };
            let caller = job_caller(tenant_id.clone(), trigger, run.unwrap_or("dry-run"));
            let holds = rows::active_holds(&mut conn, &tenant)?;
            let mut after = String::new();
            loop {
                let page = rows::patients_after(&mut conn, &tenant, &after, PAGE)?;
                let Some(last) = page.last() else { break };
                after = last.id.clone();
                let ids: Vec<String> = page.iter().map(|r| r.id.clone()).collect();
                let activity = rows::last_activity(&mut conn, &tenant, &ids)?;
                let owners: Vec<String> = ids.iter().map(|id| format!("Patient/{id}")).collect();
                let keys = self.services.codec.keys().data_keys(&tenant, &owners)?;
                for row in &page {
                    if stop() {
                        summary.interrupted = true;
                        return Ok(());
                    }
                    let (mut verdict, care_team) = self.judge(&mut conn, &tenant_id, row, &activity, &keys, &holds, now.date_naive());
                    summary.patients += 1;
                    if verdict.decision == Decision::Purge
                        && let Some(run) = run
                    {
                        let order = Purge {
                            caller: &caller,
                            patient: &row.id,
                            rule: verdict.rule.as_deref().unwrap_or_default(),
                            category: verdict.category.as_deref().unwrap_or_default(),
                            run,
                            care_team,
                        };
                        match self.purge(&mut conn, &order)? {
                            Purged::Done { records } => {
                                verdict.decision = Decision::Purged;
                                verdict.why = format!("{}; purged {records} records", verdict.why);
                            }
                            Purged::Held(ids) => {
                                verdict.decision = Decision::Held;
                                verdict.why = "a legal hold was placed while the run went on".to_owned();
                                verdict.holds = ids;
                            }
                            Purged::Gone => verdict.why = format!("{}; purged meanwhile by another run", verdict.why),
                        }
                    }
                    match verdict.decision {
                        Decision::Purged => summary.purged += 1,
                        Decision::Held => summary.held += 1,
                        Decision::Error => summary.errors += 1,
                        Decision::Purge | Decision::Kept => {}
                    }
                    seen(&verdict);
                }
            }
        }
        Ok(())
    }

    /// One patient's verdict, and its care team (for the feed to tell of its purge).
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        conn: &mut DbConnection,
        tenant: &TenantId,
        row: &CurrentRow,
        activity: &HashMap<String, chrono::NaiveDateTime>,
        keys: &HashMap<String, Result<DataKey, ServiceError>>,
        holds: &HashMap<String, Vec<HoldRow>>,
        today: NaiveDate,
    ) -> (Verdict, Vec<String>) {
        let mut verdict = Verdict {
            tenant: tenant.to_string(),
            patient: format!("Patient/{}", row.id),
            decision: Decision::Kept,
            category: None,
            rule: None,
            qualifies_from: None,
            holds: holds.get(&row.id).map(|h| h.iter().map(|h| h.id.clone()).collect()).unwrap_or_default(),
            why: String::new(),
        };
        let last_activity = activity.get(&row.id).copied().unwrap_or(row.last_updated).date();
        let opened = self.open_patient(conn, tenant, row, keys);
        let care_team = match &opened {
            Ok(patient) => care_team_of(patient),
            // The care team is not sealed by the default policy: read it from the row.
            Err(_) => serde_json::from_str(&row.content).ok().as_ref().map(care_team_of).unwrap_or_default(),
        };
        let (category, rule, from, why) = match opened {
            Ok(patient) => {
                let facts = facts_of(&patient, last_activity);
                let judgement = self.services.retention.judge(&facts);
                let Some((rule, from)) = judgement.due else {
                    verdict.category = Some(judgement.category.as_str().to_owned());
                    verdict.why = format!("no rule for {} patients", judgement.category.as_str());
                    return (self.held_or(verdict, Decision::Kept), care_team);
                };
                let why = self.explain(judgement.category, &facts, &rule, from);
                (judgement.category.as_str().to_owned(), rule, from, why)
            }
            Err(ServiceError::Erased) => {
                // Its key was destroyed earlier: by a purge that was stopped before it
                // finished (the key store kept the run's rule), or by crypto-shredding.
                // Nothing of it opens any more; its rows go like a purged patient's.
                let owner = format!("Patient/{}", row.id);
                let reason = self.services.codec.keys().destroyed_reason(tenant.as_str(), &owner).ok().flatten();
                match reason.as_deref().and_then(super::purge::parse_reason) {
                    Some((run, rule, category)) => (
                        category.to_owned(),
                        rule.to_owned(),
                        today,
                        format!("its key was destroyed by run {run}, which stopped before it finished; this run finishes the purge"),
                    ),
                    None => (
                        "crypto-shredded".to_owned(),
                        "data-key-destroyed".to_owned(),
                        today,
                        "its data key was destroyed earlier".to_owned(),
                    ),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "a patient record could not be opened for retention; left as it is");
                verdict.decision = Decision::Error;
                verdict.why = "its record could not be opened (see the server log)".to_owned();
                return (verdict, care_team);
            }
        };
        verdict.category = Some(category);
        verdict.rule = Some(rule);
        verdict.qualifies_from = Some(day(from));
        verdict.why = why;
        let decision = if from <= today { Decision::Purge } else { Decision::Kept };
        (self.held_or(verdict, decision), care_team)
    }

    fn held_or(&self, mut verdict: Verdict, decision: Decision) -> Verdict {
        verdict.decision = if verdict.holds.is_empty() { decision } else { Decision::Held };
        if !verdict.holds.is_empty() {
            verdict.why = format!("held by legal hold {}; {}", verdict.holds.join(", "), verdict.why);
        }
        verdict
    }

    fn explain(&self, category: PatientCategory, facts: &PatientFacts, rule: &str, from: NaiveDate) -> String {
        let policy = &self.services.retention;
        let basis = match category {
            PatientCategory::Adult => format!("adult, last activity {}", day(facts.last_activity)),
            PatientCategory::Minor => format!(
                "minor when last seen {} (age {}), majority at {}",
                day(facts.last_activity),
                facts.birth_date.map_or(0, |b| age_on(b, facts.last_activity)),
                policy.majority_age()
            ),
            PatientCategory::Deceased => match facts.death.flatten() {
                Some(died) => format!("deceased {}", day(died)),
                None => format!("deceased (date unknown), last activity {}", day(facts.last_activity)),
            },
        };
        format!("{basis}: rule {rule} ends the records from {}", day(from))
    }

    /// The patient's current content, or for a deleted patient its last live version.
    fn open_patient(
        &self,
        conn: &mut DbConnection,
        tenant: &TenantId,
        row: &CurrentRow,
        keys: &HashMap<String, Result<DataKey, ServiceError>>,
    ) -> Result<serde_json::Value, ServiceError> {
        let stored = if row.deleted == 0 {
            row.content.clone()
        } else {
            crate::store::resources::find_version(conn, tenant.as_str(), "Patient", &row.id, row.version_id - 1)?
                .and_then(|v| v.content)
                .ok_or(ServiceError::corrupt("a deleted patient's last version"))?
        };
        let owner = format!("Patient/{}", row.id);
        self.services.codec.open(tenant, ResourceType::Patient, &row.id, &stored, keys.get(&owner))
    }
}

/// `Practitioner/ID` references of a Patient's `generalPractitioner`.
fn care_team_of(patient: &serde_json::Value) -> Vec<String> {
    patient
        .get("generalPractitioner")
        .and_then(serde_json::Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("reference").and_then(serde_json::Value::as_str))
                .filter(|r| r.starts_with("Practitioner/"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}
