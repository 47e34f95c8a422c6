//! The change feed: what `GET /sync/changes` pages through and the WebSocket `/sync`
//! delivers, read from the change log at the subscriber's own cursor.

use std::collections::HashMap;

use serde_json::Value;

use super::{ResourceService, patient_of, rows, version_ref};
use crate::authz::{Decision, Op};
use crate::domain::{Category, Reference, ResourceId, ResourceType};
use crate::service::keyring::DataKey;
use crate::service::{Caller, ServiceError, codec};
use crate::store::DbConnection;

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
        let mut keys: HashMap<String, Result<DataKey, ServiceError>> = HashMap::new();
        let mut out = Vec::new();
        let mut entries = Vec::new();
        for change in &batch {
            let (Some(rtype), Ok(id)) = (ResourceType::from_name(&change.resource_type), ResourceId::parse(&change.resource_id)) else {
                continue;
            };
            if !filter.admits(change, rtype) {
                continue;
            }
            let owner = codec::owner(rtype, id.as_str(), change.patient_id.as_deref());
            if let Some(o) = owner.as_ref().filter(|o| !keys.contains_key(*o)) {
                keys.extend(self.keys_of(&mut conn, caller, vec![o.clone()])?);
            }
            let open = |conn: &mut DbConnection, version: i64| -> Result<Option<Value>, ServiceError> {
                match rows::find_version(conn, tenant, rtype.name(), id.as_str(), version)?.and_then(|v| v.content) {
                    Some(stored) => self.open(caller, rtype, id.as_str(), &stored, &keys, owner.as_ref()).map(Some),
                    None => Ok(None),
                }
            };
            let (content, basis) = match open(&mut conn, change.version_id) {
                Ok(Some(content)) => (Some(content.clone()), Some(content)),
                Ok(None) => (None, open(&mut conn, change.version_id - 1).ok().flatten()),
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
