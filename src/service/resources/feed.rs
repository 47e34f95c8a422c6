//! The change feed: what `GET /sync/changes` pages through and the WebSocket `/sync`
//! delivers, read from the change log at the subscriber's own cursor.

use std::collections::HashMap;

use serde_json::Value;

use super::{ResourceService, patient_of, rows, version_ref};
use crate::authz::{Decision, Op};
use crate::domain::{Category, Reference, ResourceId, ResourceType};
use crate::service::keyring::DataKey;
use crate::service::{Caller, ServiceError, codec};

/// Which changes a subscriber asked for, on top of what it may read.
#[derive(Debug, Clone, Default)]
pub struct FeedFilter {
    /// Only this patient's records (the Patient itself and its compartment).
    pub patient: Option<ResourceId>,
    /// Only these types; all when `None`.
    pub types: Option<Vec<ResourceType>>,
}

impl FeedFilter {
    fn admits(&self, change: &crate::store::changes::ChangeRow, rtype: ResourceType) -> bool {
        if let Some(types) = &self.types
            && !types.contains(&rtype)
        {
            return false;
        }
        match &self.patient {
            None => true,
            Some(p) => match rtype.category() {
                Category::Practitioner => false,
                Category::Patient => change.resource_id == p.as_str(),
                Category::Clinical => change.patient_id.as_deref() == Some(p.as_str()),
            },
        }
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

/// One read of the feed.
#[derive(Debug)]
pub struct ChangePage {
    /// `change` messages, in cursor order.
    pub changes: Vec<Value>,
    /// Where to resume: past every change read, including those filtered out.
    pub cursor: i64,
    /// How many change-log rows were read; fewer than the limit means the reader is at
    /// the head of the log as of this read.
    pub scanned: usize,
}

impl ResourceService<'_> {
    /// Changes of the caller's tenant after `since` that the caller may read and the
    /// filter admits, in cursor order, with each version's content (none for deletes).
    /// Deliveries are ledgered (`sync`) before they are returned.
    #[tracing::instrument(skip_all)]
    pub fn changes(&self, caller: &Caller, since: i64, limit: i64, filter: &FeedFilter) -> Result<ChangePage, ServiceError> {
        let tenant = caller.principal.tenant.as_str();
        let mut conn = self.conn()?;
        let batch = crate::store::changes::since(&mut conn, tenant, since, limit)?;
        let admitted: Vec<_> = batch
            .iter()
            .filter_map(|change| {
                let rtype = ResourceType::from_name(&change.resource_type)?;
                let id = ResourceId::parse(&change.resource_id).ok()?;
                filter.admits(change, rtype).then_some((change, rtype, id))
            })
            .collect();
        // One round trip each for the batch's data keys and versions (the version a change
        // made, and for a delete the last live one, which access is judged by).
        let mut owners: Vec<String> = admitted.iter().filter_map(|(c, t, id)| codec::owner(*t, id.as_str(), c.patient_id.as_deref())).collect();
        owners.sort();
        owners.dedup();
        let keys: HashMap<String, Result<DataKey, ServiceError>> = self.keys_of(&mut conn, caller, owners)?;
        let mut ids: Vec<String> = admitted.iter().map(|(c, ..)| c.resource_id.clone()).collect();
        ids.sort();
        ids.dedup();
        let mut versions: Vec<i64> = admitted.iter().flat_map(|(c, ..)| [c.version_id, c.version_id - 1]).collect();
        versions.sort_unstable();
        versions.dedup();
        let mut types: Vec<&str> = admitted.iter().map(|(_, t, _)| t.name()).collect();
        types.sort_unstable();
        types.dedup();
        let stored: HashMap<(String, String, i64), Option<String>> = rows::versions_of(&mut conn, tenant, &types, &ids, &versions)?
            .into_iter()
            .map(|v| ((v.resource_type, v.id, v.version_id), v.content))
            .collect();
        let mut out = Vec::new();
        let mut entries = Vec::new();
        for (change, rtype, id) in admitted {
            let owner = codec::owner(rtype, id.as_str(), change.patient_id.as_deref());
            let open = |version: i64| -> Result<Option<Value>, ServiceError> {
                match stored.get(&(change.resource_type.clone(), change.resource_id.clone(), version)).cloned().flatten() {
                    Some(sealed) => self.open(caller, rtype, id.as_str(), &sealed, &keys, owner.as_ref()).map(Some),
                    None => Ok(None),
                }
            };
            let (content, basis) = match open(change.version_id) {
                Ok(Some(content)) => (Some(content.clone()), Some(content)),
                Ok(None) => (None, open(change.version_id - 1).ok().flatten()),
                // A shredded record's changes have nothing left to deliver.
                Err(ServiceError::Erased) => continue,
                Err(e) => return Err(e),
            };
            if self.decision(caller, Op::Read, rtype, &id, basis.as_ref(), false).0 == Decision::Deny {
                continue;
            }
            let patient = patient_of(rtype, id.as_str(), change.patient_id.as_deref());
            entries.push(caller.entry("sync", Some(version_ref(rtype, id.as_str(), change.version_id)), patient, "success"));
            out.push(serde_json::json!({
                "type": "change",
                "cursor": change.cursor.to_string(),
                "op": change.op,
                "resourceType": rtype.name(),
                "id": id.as_str(),
                "versionId": change.version_id.to_string(),
                "resource": content,
            }));
        }
        if !entries.is_empty() {
            self.services.record(entries)?;
        }
        let cursor = batch.last().map_or(since, |c| c.cursor);
        Ok(ChangePage { changes: out, cursor, scanned: batch.len() })
    }
}
