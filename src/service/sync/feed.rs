//! The change feed: what `GET /sync/changes` pages through and the WebSocket `/sync`
//! delivers, read from the change log at the subscriber's own cursor.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::SyncService;
use crate::authz::{Decision, Op};
use crate::domain::{AuditAction, AuditOutcome, Category, ChangeOp, Reference, ResourceId, ResourceType};
use crate::service::keyring::DataKey;
use crate::service::resources::{ResourceService, patient_of, version_ref};
use crate::service::{Caller, ServiceError, codec};
use crate::store::resources::{self as rows, CurrentRow};

/// Which changes a subscriber asked for, on top of what it may read.
#[derive(Debug, Clone, Default)]
pub struct FeedFilter {
    /// Only this patient's records (the Patient itself and its compartment).
    pub patient: Option<ResourceId>,
    /// Only these types; all when `None`. When they name a clinical type, a Patient's
    /// `revoke` passes too (see [`Admitted::RevokeOnly`]).
    pub types: Option<Vec<ResourceType>>,
}

/// How a filter admits a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admitted {
    /// Delivered as any change is: with content, as a revoke, or left out.
    Yes,
    /// Delivered only if it becomes a revoke: a Patient change for a subscriber whose
    /// `types` name clinical types but not Patient. Such a device holds records of
    /// patients' compartments, and their Patient's revoke is what tells it to drop them
    /// (the records themselves did not change, so nothing else would).
    RevokeOnly,
}

impl FeedFilter {
    fn admits(&self, change: &crate::store::changes::ChangeRow, rtype: ResourceType) -> Option<Admitted> {
        let admitted = match &self.types {
            Some(types) if !types.contains(&rtype) => {
                if rtype.category() == Category::Patient && types.iter().any(|t| t.category() == Category::Clinical) {
                    Admitted::RevokeOnly
                } else {
                    return None;
                }
            }
            _ => Admitted::Yes,
        };
        let patient = match &self.patient {
            None => true,
            Some(p) => match rtype.category() {
                Category::Practitioner => false,
                Category::Patient => change.resource_id == p.as_str(),
                Category::Clinical => change.patient_id.as_deref() == Some(p.as_str()),
            },
        };
        patient.then_some(admitted)
    }

    /// The filter from a subscription's `patient` (`Patient/ID`) and `types`.
    pub fn parse(patient: Option<&str>, types: Option<&[String]>) -> Result<Self, &'static str> {
        let patient = match patient {
            None => None,
            Some(raw) => match Reference::parse(raw) {
                Ok(r) if r.resource_type == ResourceType::Patient => Some(r.id),
                _ => return Err("patient must be a reference of the form Patient/ID"),
            },
        };
        let types = match types {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| ResourceType::from_name(n).ok_or("types may only name resource types this server serves"))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Self { patient, types })
    }
}

/// One change as a subscriber receives it.
#[derive(Debug, Clone)]
pub struct Change {
    pub cursor: i64,
    pub op: ChangeOp,
    pub resource_type: ResourceType,
    pub id: ResourceId,
    pub version_id: i64,
    /// The version's content; `None` for deletes, purges and revokes.
    pub resource: Option<Value>,
}

/// One read of the feed.
#[derive(Debug)]
pub struct ChangePage {
    /// Changes for the subscriber, in cursor order.
    pub changes: Vec<Change>,
    /// Where to resume: past every change read, including those filtered out.
    pub cursor: i64,
    /// How many change-log rows were read; fewer than the limit means the reader is at
    /// the head of the log as of this read.
    pub scanned: usize,
}

/// A change admitted by a filter, parsed: its row, type, id, op and how it was admitted.
type AdmittedChange<'a> = (&'a crate::store::changes::ChangeRow, ResourceType, ResourceId, ChangeOp, Admitted);

/// Opened versions of a batch's records, each opened at most once.
type Opened = HashMap<(String, String, i64), Option<Value>>;

impl SyncService<'_> {
    /// Changes of the caller's tenant after `since` that the filter admits, in cursor
    /// order. Each is judged by the decision a read would get *now* (the record's current
    /// relationship and the caller's current roles), never by the relationship the changed
    /// version carried. A change the caller may read now comes with that version's content
    /// (none for deletes); one it may no longer read, of a record whose version or the one
    /// before it stood in a relationship with the caller's `fhirUser`, comes as a
    /// content-free `revoke` (once per record per page) so the device drops its copy; any
    /// other is left out. Deliveries of content are ledgered (`sync`) before they return.
    #[tracing::instrument(skip_all)]
    pub fn changes(&self, caller: &Caller, since: i64, limit: i64, filter: &FeedFilter) -> Result<ChangePage, ServiceError> {
        let tenant = caller.principal.tenant.as_str();
        let mut conn = self.conn()?;
        let batch = crate::store::changes::since(&mut conn, tenant, since, limit)?;
        // A log row that does not parse is corrupt: an error, never a silently skipped change.
        let mut admitted: Vec<AdmittedChange<'_>> = Vec::new();
        for change in &batch {
            let rtype =
                ResourceType::from_name(&change.resource_type).ok_or(ServiceError::corrupt("change-log row names no served type"))?;
            let id = ResourceId::parse(&change.resource_id).map_err(ServiceError::corrupt_by("change-log row id"))?;
            let op = ChangeOp::parse(&change.op).ok_or(ServiceError::corrupt("change-log row op"))?;
            if let Some(how) = filter.admits(change, rtype) {
                admitted.push((change, rtype, id, op, how));
            }
        }
        // One round trip each for the batch's current rows, data keys and versions: the
        // version a change made and the one before it, and for a record deleted since, its
        // last live version (what access to it is judged by).
        let mut ids: Vec<String> = admitted.iter().map(|(c, ..)| c.resource_id.clone()).collect();
        ids.sort();
        ids.dedup();
        let mut types: Vec<&str> = admitted.iter().map(|(_, t, ..)| t.name()).collect();
        types.sort_unstable();
        types.dedup();
        let currents: HashMap<(String, String), CurrentRow> =
            rows::currents_of(&mut conn, tenant, &types, &ids)?.into_iter().map(|r| ((r.resource_type.clone(), r.id.clone()), r)).collect();
        let mut owners: Vec<String> = admitted
            .iter()
            .filter_map(|(c, t, id, ..)| codec::owner(*t, id.as_str(), c.patient_id.as_deref()))
            .chain(
                currents.values().filter_map(|r| codec::owner(ResourceType::from_name(&r.resource_type)?, &r.id, r.patient_id.as_deref())),
            )
            .collect();
        owners.sort();
        owners.dedup();
        let keys: HashMap<String, Result<DataKey, ServiceError>> = self.keys_of(caller, owners)?;
        // Clinical records are judged by their patient's care team as it stands now.
        let patients: Vec<String> = currents
            .values()
            .filter(|r| ResourceType::from_name(&r.resource_type).is_some_and(|t| t.category() == Category::Clinical))
            .filter_map(|r| r.patient_id.clone())
            .collect();
        let teams = self.care_teams(&mut conn, caller, &patients)?;
        let no_team = Vec::new();
        let mut versions: Vec<i64> = admitted
            .iter()
            .flat_map(|(c, ..)| [c.version_id, c.version_id - 1])
            .chain(currents.values().filter(|r| r.deleted != 0).map(|r| r.version_id - 1))
            .collect();
        versions.sort_unstable();
        versions.dedup();
        let stored: HashMap<(String, String, i64), Option<String>> = rows::versions_of(&mut conn, tenant, &types, &ids, &versions)?
            .into_iter()
            .map(|v| ((v.resource_type, v.id, v.version_id), v.content))
            .collect();
        let mut opened = Opened::new();
        let mut open =
            |rtype: ResourceType, id: &ResourceId, owner: Option<&String>, version: i64| -> Result<Option<Value>, ServiceError> {
                let key = (rtype.name().to_owned(), id.to_string(), version);
                if let Some(done) = opened.get(&key) {
                    return Ok(done.clone());
                }
                let content = match stored.get(&key).cloned().flatten() {
                    Some(sealed) => Some(self.open(caller, rtype, id.as_str(), &sealed, &keys, owner)?),
                    None => None,
                };
                opened.insert(key, content.clone());
                Ok(content)
            };
        let purged_teams = self.purged_teams(&mut conn, tenant, &admitted)?;
        let mut out = Vec::new();
        let mut entries = Vec::new();
        let mut revoked: HashSet<(ResourceType, String)> = HashSet::new();
        for (change, rtype, id, op, how) in admitted {
            if op == ChangeOp::Purge {
                // Nothing of a purged record is left to judge access by: the care team
                // its patient had at the purge (kept in the destruction record) decides
                // who is told, so devices that held it drop their copies. Content-free.
                let patient = change.patient_id.as_deref().and_then(|p| ResourceId::parse(p).ok());
                let team = change.patient_id.as_ref().and_then(|p| purged_teams.get(p)).unwrap_or(&no_team);
                let owner = patient.map(|p| Reference::new(ResourceType::Patient, p));
                let target = crate::authz::Target { category: rtype.category(), owner: owner.as_ref(), care_team: team };
                if how == Admitted::Yes && self.services.policy.decide(&caller.principal, Op::Read, &target, false) != Decision::Deny {
                    out.push(Change { cursor: change.cursor, op, resource_type: rtype, id, version_id: change.version_id, resource: None });
                }
                continue;
            }
            // A record purged since has nothing left to deliver.
            let Some(current) = currents.get(&(change.resource_type.clone(), change.resource_id.clone())) else { continue };
            // Each version opens with the key of the owner it was written for.
            let owner = codec::owner(rtype, id.as_str(), current.patient_id.as_deref());
            let sealed_by = codec::owner(rtype, id.as_str(), change.patient_id.as_deref());
            let judged =
                match open(rtype, &id, owner.as_ref(), if current.deleted == 0 { current.version_id } else { current.version_id - 1 }) {
                    Ok(basis) => basis,
                    // A shredded record's changes have nothing left to deliver.
                    Err(ServiceError::Erased) => continue,
                    Err(e) => return Err(e),
                };
            let team = current.patient_id.as_ref().and_then(|p| teams.get(p)).unwrap_or(&no_team);
            if self.decision(caller, Op::Read, rtype, &id, judged.as_ref(), team, false).0 == Decision::Deny {
                // The changed version, else the one before it (opened only when needed).
                let was_related = [change.version_id, change.version_id - 1].into_iter().try_fold(false, |found, v| {
                    Ok::<_, ServiceError>(
                        found || ResourceService::related(caller, rtype, &id, open(rtype, &id, sealed_by.as_ref(), v)?.as_ref(), team),
                    )
                })?;
                if was_related && revoked.insert((rtype, id.to_string())) {
                    out.push(Change {
                        cursor: change.cursor,
                        op: ChangeOp::Revoke,
                        resource_type: rtype,
                        id,
                        version_id: change.version_id,
                        resource: None,
                    });
                }
                continue;
            }
            if how == Admitted::RevokeOnly {
                continue;
            }
            let content = open(rtype, &id, sealed_by.as_ref(), change.version_id)?;
            let patient = patient_of(rtype, id.as_str(), change.patient_id.as_deref());
            entries.push(caller.entry(
                AuditAction::Sync,
                Some(version_ref(rtype, id.as_str(), change.version_id)),
                patient,
                AuditOutcome::Success,
            ));
            out.push(Change { cursor: change.cursor, op, resource_type: rtype, id, version_id: change.version_id, resource: content });
        }
        if !entries.is_empty() {
            self.services.record(entries)?;
        }
        let cursor = batch.last().map_or(since, |c| c.cursor);
        Ok(ChangePage { changes: out, cursor, scanned: batch.len() })
    }
}

impl SyncService<'_> {
    /// The care teams the patients of a batch's `purge` changes had when they were purged.
    fn purged_teams(
        &self,
        conn: &mut crate::store::DbConnection,
        tenant: &str,
        admitted: &[AdmittedChange<'_>],
    ) -> Result<HashMap<String, Vec<Reference>>, ServiceError> {
        let mut patients: Vec<String> =
            admitted.iter().filter(|(_, _, _, op, _)| *op == ChangeOp::Purge).filter_map(|(c, ..)| c.patient_id.clone()).collect();
        patients.sort();
        patients.dedup();
        let records = crate::store::retention::destructions_of_patients(conn, tenant, &patients)?;
        records
            .into_iter()
            .map(|d| {
                let refs: Vec<String> = serde_json::from_str(&d.care_team).map_err(ServiceError::corrupt_by("destruction record"))?;
                Ok((d.patient_id, refs.iter().filter_map(|r| Reference::parse(r).ok()).collect()))
            })
            .collect()
    }
}
