//! The purge of one patient: one transaction, under the patient's lock, that destroys the
//! patient's data key (crypto-shredding: every copy of its sealed elements, backups
//! included, stops opening), deletes its compartment's rows (current rows, history,
//! search tokens, offline mutation records, conflicts, the change-log rows that named
//! them), records the destruction, ledgers one `purge` entry per record and appends one
//! `purge` change per record. Nothing of it is ever half done: the transaction commits
//! all of it or none.

use std::collections::BTreeMap;

use super::RetentionService;
use crate::domain::{AuditAction, AuditOutcome};
use crate::service::audit::{append_in, now};
use crate::service::{Caller, ServiceError};
use crate::store::changes::{self, ChangeRow};
use crate::store::retention::{self as rows, DestructionRow};
use crate::store::{DbConnection, write_transaction};

/// What to purge, and why.
pub(super) struct Purge<'a> {
    /// The job acting in the patient's tenant.
    pub caller: &'a Caller,
    pub patient: &'a str,
    pub rule: &'a str,
    pub category: &'a str,
    pub run: &'a str,
    /// `Practitioner/ID` references the feed tells of the purge.
    pub care_team: Vec<String>,
}

pub(super) enum Purged {
    Done {
        records: usize,
    },
    /// A hold was placed meanwhile (its ids): nothing was done.
    Held(Vec<String>),
    /// Nothing was left (another run purged it meanwhile).
    Gone,
}

/// Why a purge destroyed a key, as the key store keeps it: `retention RUN RULE CATEGORY`.
pub(super) fn reason(run: &str, rule: &str, category: &str) -> String {
    format!("retention {run} {rule} {category}")
}

/// The run, rule and category of a key destroyed by [`reason`].
pub(super) fn parse_reason(reason: &str) -> Option<(&str, &str, &str)> {
    let mut parts = reason.strip_prefix("retention ")?.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(run), Some(rule), Some(category), None) => Some((run, rule, category)),
        _ => None,
    }
}

impl RetentionService<'_> {
    pub(super) fn purge(&self, conn: &mut DbConnection, order: &Purge<'_>) -> Result<Purged, ServiceError> {
        let tenant = order.caller.principal.tenant.as_str();
        let patient_ref = format!("Patient/{}", order.patient);
        let (purged, cursor) = write_transaction(conn, |tx| {
            rows::lock_patient(tx, tenant, order.patient)?;
            let holds = rows::active_holds_of(tx, tenant, order.patient)?;
            if !holds.is_empty() {
                return Ok((Purged::Held(holds.into_iter().map(|h| h.id).collect()), None));
            }
            let records = rows::compartment_records(tx, tenant, order.patient)?;
            if records.is_empty() {
                return Ok((Purged::Gone, None));
            }
            // The key goes first, committed in the key store at once (under this
            // transaction's patient lock, so no hold can slip in between): from here on
            // nothing of the patient opens, in these rows or any copy of them. Killed after
            // this and before the commit below, the patient is unreadable with its rows
            // still there; the next run finds its key destroyed, reads the reason, and
            // finishes.
            self.services.codec.keys().destroy(tenant, &patient_ref, &reason(order.run, order.rule, order.category))?;
            rows::delete_compartment(tx, tenant, order.patient, &records)?;
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for (rtype, ..) in &records {
                *counts.entry(rtype.as_str()).or_default() += 1;
            }
            let at = now();
            rows::insert_destruction(
                tx,
                &DestructionRow {
                    tenant: tenant.to_owned(),
                    patient_id: order.patient.to_owned(),
                    run_id: order.run.to_owned(),
                    rule: order.rule.to_owned(),
                    category: order.category.to_owned(),
                    resources: serde_json::to_string(&counts).map_err(ServiceError::corrupt_by("destruction record"))?,
                    care_team: serde_json::to_string(&order.care_team).map_err(ServiceError::corrupt_by("destruction record"))?,
                    destroyed_at: at.clone(),
                },
            )?;
            // The ledger append takes the tenant log's lock before the change rows take the
            // change log's, as every writer does.
            let entries = records
                .iter()
                .map(|(rtype, id, _)| {
                    order.caller.entry(AuditAction::Purge, Some(format!("{rtype}/{id}")), Some(patient_ref.clone()), AuditOutcome::Success)
                })
                .collect();
            append_in(tx, entries)?;
            let mut cursor = 0;
            for (rtype, id, version) in &records {
                cursor = changes::append(
                    tx,
                    ChangeRow {
                        cursor: 0,
                        tenant: tenant.to_owned(),
                        resource_type: rtype.clone(),
                        resource_id: id.clone(),
                        version_id: *version,
                        op: crate::domain::ChangeOp::Purge.as_str().to_owned(),
                        patient_id: Some(order.patient.to_owned()),
                        committed_at: at.clone(),
                    },
                )?;
            }
            Ok::<_, ServiceError>((Purged::Done { records: records.len() }, Some(cursor)))
        })?;
        if let Some(cursor) = cursor {
            self.services.changes.advance(tenant, cursor);
            tracing::warn!(rule = order.rule, "patient purged by retention (data key destroyed, rows deleted)");
        }
        Ok(purged)
    }
}
