//! Transaction and batch Bundles (`POST /fhir`). A `transaction` runs every entry in one
//! database transaction through the one write path (`write::apply_in`), so its versions,
//! search tokens, data keys, ledger entries and change-log rows commit together or not at
//! all; `urn:uuid:` references between entries become the created records' ids. A
//! `batch` runs each entry as its own request.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use super::conditional::{Conditional, parse_criteria};
use super::{Current, ResourceService, Versioned};
use crate::authz::Op;
use crate::domain::{AuditAction, Category, ResourceId, ResourceType};
use crate::fhir::{Issue, IssueCode};
use crate::service::{Caller, ServiceError};
use crate::store::DbConnection;

/// The most entries one Bundle may hold.
pub const MAX_ENTRIES: usize = 500;

/// What kind of Bundle was posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    Transaction,
    Batch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

/// One entry's request, parsed.
#[derive(Debug)]
struct EntryRequest {
    method: Method,
    rtype: ResourceType,
    id: Option<ResourceId>,
    version: Option<i64>,
    criteria: Option<String>,
    if_match: Option<i64>,
    if_none_exist: Option<String>,
    resource: Option<Value>,
    full_url: Option<String>,
}

/// What one entry answered.
#[derive(Debug)]
pub struct EntryResult {
    pub status: u16,
    /// The version written or read (its resource for the entry's `resource`).
    pub version: Option<Versioned>,
    /// Why a batch entry failed.
    pub outcome: Option<Vec<Issue>>,
}

impl EntryResult {
    fn of(status: u16, version: Versioned) -> Self {
        Self { status, version: Some(version), outcome: None }
    }
}

/// The answer to a Bundle: one result per entry, in the Bundle's order.
#[derive(Debug)]
pub struct BundleResult {
    pub kind: BundleKind,
    pub entries: Vec<EntryResult>,
}

fn bad(diagnostics: impl Into<String>) -> ServiceError {
    ServiceError::BadRequest(vec![Issue::new(IssueCode::Invalid, None, diagnostics)])
}

fn parse_if_match(raw: &str) -> Result<i64, ServiceError> {
    raw.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| bad("request.ifMatch must be a version ETag such as W/\"1\""))
}

fn parse_entry(entry: &Value) -> Result<EntryRequest, ServiceError> {
    let request = entry.get("request").ok_or_else(|| bad("entry.request is required"))?;
    let method = match request.get("method").and_then(Value::as_str) {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some("PATCH") => Method::Patch,
        Some("DELETE") => Method::Delete,
        _ => return Err(bad("request.method must be GET, POST, PUT, PATCH or DELETE")),
    };
    let url = request.get("url").and_then(Value::as_str).ok_or_else(|| bad("request.url is required"))?;
    let url = url.strip_prefix('/').unwrap_or(url);
    let (path, criteria) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (url, None),
    };
    let parts: Vec<&str> = path.split('/').collect();
    let rtype = ResourceType::from_name(parts[0])
        .ok_or_else(|| bad("request.url must start with a resource type this server serves (relative URLs only)"))?;
    let id = |raw: &str| ResourceId::parse(raw).map_err(|_| bad("request.url holds an id that is not a FHIR id"));
    let (id, version) = match parts.as_slice() {
        [_] => (None, None),
        [_, raw] => (Some(id(raw)?), None),
        [_, raw, "_history", v] if method == Method::Get => {
            (Some(id(raw)?), Some(v.parse::<i64>().map_err(|_| bad("request.url holds a version that is not a number"))?))
        }
        _ => return Err(bad("request.url must be [type], [type]/[id] or [type]?[criteria]")),
    };
    let shape_ok = match method {
        Method::Post => id.is_none() && criteria.is_none(),
        Method::Put => id.is_some() != criteria.is_some(),
        Method::Patch | Method::Delete => id.is_some() && criteria.is_none(),
        Method::Get => id.is_some() && criteria.is_none(),
    };
    if !shape_ok {
        return Err(bad(match method {
            Method::Post => "a POST entry's url is the type alone (criteria go in request.ifNoneExist)",
            Method::Put => "a PUT entry's url is [type]/[id] or [type]?[criteria]",
            Method::Get => {
                "a GET entry reads one record: [type]/[id] or [type]/[id]/_history/[version] (searches are not supported in Bundles)"
            }
            Method::Patch | Method::Delete => "a PATCH or DELETE entry's url is [type]/[id] (conditional deletes are not supported)",
        }));
    }
    let resource = entry.get("resource").cloned();
    if matches!(method, Method::Post | Method::Put | Method::Patch) && resource.is_none() {
        return Err(bad("entry.resource is required for POST, PUT and PATCH"));
    }
    Ok(EntryRequest {
        method,
        rtype,
        id,
        version,
        criteria,
        if_match: request.get("ifMatch").and_then(Value::as_str).map(parse_if_match).transpose()?,
        if_none_exist: request.get("ifNoneExist").and_then(Value::as_str).map(str::to_owned),
        resource,
        full_url: entry.get("fullUrl").and_then(Value::as_str).map(str::to_owned),
    })
}

/// A PATCH entry carries its JSON Patch as a Binary (`contentType`
/// `application/json-patch+json`, `data` base64).
fn patch_of(resource: &Value) -> Result<Value, ServiceError> {
    let is_patch = resource.get("resourceType").and_then(Value::as_str) == Some("Binary")
        && resource.get("contentType").and_then(Value::as_str).is_some_and(|c| c.starts_with("application/json-patch+json"));
    let data = resource.get("data").and_then(Value::as_str).filter(|_| is_patch);
    let data = data.ok_or_else(|| bad("a PATCH entry's resource is a Binary with contentType application/json-patch+json and data"))?;
    let bytes = STANDARD.decode(data).map_err(|_| bad("the PATCH entry's Binary data is not base64"))?;
    serde_json::from_slice(&bytes).map_err(|_| bad("the PATCH entry's Binary data is not a JSON Patch"))
}

/// The order entries of a transaction are processed in (FHIR: deletes, creates, updates,
/// reads); creates go by type so that a record is created before those referencing it:
/// practitioners, patients, encounters, then the other clinical records.
fn rank(request: &EntryRequest) -> (u8, u8) {
    let method = match request.method {
        Method::Delete => 0,
        Method::Post => 1,
        Method::Put | Method::Patch => 2,
        Method::Get => 3,
    };
    let rtype = match (request.rtype, request.rtype.category()) {
        (_, Category::Practitioner) => 0,
        (_, Category::Patient) => 1,
        (ResourceType::Encounter, _) => 2,
        (ResourceType::Observation, _) => 4,
        _ => 3,
    };
    (method, rtype)
}

/// Replaces every `reference` naming a mapped `urn:uuid:` with the record it became.
/// A `urn:uuid:` left over names no record: refused.
fn resolve_references(value: &mut Value, map: &HashMap<String, String>) -> Result<(), ServiceError> {
    match value {
        Value::Object(members) => {
            for (key, member) in members.iter_mut() {
                if key == "reference"
                    && let Value::String(reference) = member
                    && reference.starts_with("urn:uuid:")
                {
                    *reference = map
                        .get(reference.as_str())
                        .cloned()
                        .ok_or_else(|| bad("a urn:uuid: reference names no entry of the Bundle created before it"))?;
                } else {
                    resolve_references(member, map)?;
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|item| resolve_references(item, map)),
        _ => Ok(()),
    }
}

impl ResourceService<'_> {
    /// Runs a transaction or batch Bundle.
    #[tracing::instrument(skip_all)]
    pub fn bundle(&self, caller: &Caller, bundle: Value) -> Result<BundleResult, ServiceError> {
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(super::structure(Some("resourceType".into()), "POST /fhir takes a Bundle"));
        }
        let kind = match bundle.get("type").and_then(Value::as_str) {
            Some("transaction") => BundleKind::Transaction,
            Some("batch") => BundleKind::Batch,
            _ => return Err(super::structure(Some("Bundle.type".into()), "Bundle.type must be transaction or batch")),
        };
        let entries = match bundle.get("entry") {
            None => Vec::new(),
            Some(Value::Array(entries)) => entries.clone(),
            Some(_) => return Err(super::structure(Some("Bundle.entry".into()), "Bundle.entry must be an array")),
        };
        if entries.len() > MAX_ENTRIES {
            return Err(ServiceError::BadRequest(vec![Issue::new(
                IssueCode::TooCostly,
                Some("Bundle.entry".into()),
                format!("a Bundle may hold at most {MAX_ENTRIES} entries"),
            )]));
        }
        match kind {
            BundleKind::Transaction => self.transaction(caller, &entries),
            BundleKind::Batch => Ok(BundleResult { kind, entries: entries.iter().map(|e| self.batch_entry(caller, e)).collect() }),
        }
    }

    fn transaction(&self, caller: &Caller, entries: &[Value]) -> Result<BundleResult, ServiceError> {
        let at = |index: usize| move |e: ServiceError| ServiceError::InEntry { index, source: Box::new(e) };
        let mut requests = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let request = parse_entry(entry).map_err(at(index))?;
            if request.method == Method::Get {
                return Err(at(index)(bad("a transaction holds writes only (POST, PUT, PATCH, DELETE); send reads in a batch")));
            }
            requests.push(request);
        }
        // Ids of unconditional creates are known up front; a conditional create's once it
        // ran (it may resolve to an existing record).
        let mut ids: Vec<Option<ResourceId>> = Vec::with_capacity(requests.len());
        let mut map = HashMap::new();
        for (index, request) in requests.iter().enumerate() {
            let id = (request.method == Method::Post).then(ResourceId::generate);
            if let (Some(id), Some(full_url), None) = (&id, &request.full_url, &request.if_none_exist)
                && full_url.starts_with("urn:uuid:")
                && map.insert(full_url.clone(), format!("{}/{id}", request.rtype.name())).is_some()
            {
                return Err(at(index)(bad("two entries share one fullUrl")));
            }
            ids.push(id);
        }
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by_key(|i| rank(&requests[*i]));
        let mut conn = self.conn()?;
        let results = self.in_transaction(&mut conn, caller, |tx| {
            let mut results: Vec<Option<EntryResult>> = (0..requests.len()).map(|_| None).collect();
            let mut last = None;
            for index in order {
                let request = &mut requests[index];
                if let Some(resource) = request.resource.as_mut() {
                    resolve_references(resource, &map).map_err(at(index))?;
                }
                let (result, cursor) = self.transaction_entry(tx, caller, request, ids[index].as_ref()).map_err(at(index))?;
                if let (Some(full_url), Some(v)) = (&request.full_url, &result.version)
                    && request.method == Method::Post
                    && full_url.starts_with("urn:uuid:")
                {
                    map.insert(full_url.clone(), format!("{}/{}", v.resource_type.name(), v.id));
                }
                last = cursor.or(last).max(last);
                results[index] = Some(result);
            }
            Ok((results, last))
        })?;
        tracing::info!(entries = results.len(), "transaction committed");
        Ok(BundleResult { kind: BundleKind::Transaction, entries: results.into_iter().flatten().collect() })
    }

    /// One write of a transaction, inside its database transaction.
    fn transaction_entry(
        &self,
        tx: &mut DbConnection,
        caller: &Caller,
        request: &EntryRequest,
        new_id: Option<&ResourceId>,
    ) -> Result<(EntryResult, Option<i64>), ServiceError> {
        let rtype = request.rtype;
        match request.method {
            Method::Post => {
                let id = new_id.cloned().unwrap_or_else(ResourceId::generate);
                let resource = self.parse_body(rtype, request.resource.clone().unwrap_or(Value::Null), None)?;
                match &request.if_none_exist {
                    Some(criteria) => {
                        let (outcome, cursor) =
                            self.create_unless_exists_in(tx, caller, rtype, &id, resource, &parse_criteria(criteria)?)?;
                        Ok(match outcome {
                            Conditional::Created(v) => (EntryResult::of(201, v), cursor),
                            Conditional::Existing(v) => (EntryResult::of(200, v), None),
                        })
                    }
                    None => {
                        let write = self.first_version(tx, caller, rtype, &id, resource)?;
                        let cursor = self.apply_in(tx, caller, &write)?;
                        Ok((EntryResult::of(201, write.into_versioned(rtype, &id)), cursor))
                    }
                }
            }
            Method::Put => {
                let body = request.resource.clone().unwrap_or(Value::Null);
                match (&request.id, &request.criteria) {
                    (Some(id), _) => {
                        let resource = self.parse_body(rtype, body, Some(id))?;
                        let (write, cursor) = self.update_in(tx, caller, rtype, id, request.if_match, resource)?;
                        Ok((EntryResult::of(200, write.into_versioned(rtype, id)), Some(cursor)))
                    }
                    (None, Some(criteria)) => {
                        let ((v, created), cursor) =
                            self.update_where_in(tx, caller, rtype, &parse_criteria(criteria)?, request.if_match, body)?;
                        Ok((EntryResult::of(if created { 201 } else { 200 }, v), cursor))
                    }
                    (None, None) => Err(bad("a PUT entry's url is [type]/[id] or [type]?[criteria]")),
                }
            }
            Method::Patch => {
                let id = request.id.as_ref().ok_or_else(|| bad("a PATCH entry's url is [type]/[id]"))?;
                let patch = patch_of(request.resource.as_ref().unwrap_or(&Value::Null))?;
                let (write, cursor) = self.patch_in(tx, caller, rtype, id, request.if_match, patch)?;
                Ok((EntryResult::of(200, write.into_versioned(rtype, id)), Some(cursor)))
            }
            Method::Delete => {
                let id = request.id.as_ref().ok_or_else(|| bad("a DELETE entry's url is [type]/[id]"))?;
                let Current { row: current, content, basis, team, .. } = self.load_current(tx, caller, rtype, id)?;
                self.authorize(caller, Op::Write, AuditAction::Delete, rtype, id, basis.as_ref(), &team)?;
                if content.is_none() {
                    return Ok((EntryResult { status: 204, version: None, outcome: None }, None));
                }
                let write = self.next_version(caller, rtype, id, &current, None)?;
                let cursor = self.apply_in(tx, caller, &write)?.ok_or(ServiceError::VersionConflict { current: None })?;
                Ok((EntryResult { status: 204, version: None, outcome: None }, Some(cursor)))
            }
            Method::Get => Err(bad("a transaction holds writes only")),
        }
    }

    /// A JSON Patch applied to the current version inside the caller's transaction.
    pub(in crate::service) fn patch_in(
        &self,
        tx: &mut DbConnection,
        caller: &Caller,
        rtype: ResourceType,
        id: &ResourceId,
        if_match: Option<i64>,
        patch: Value,
    ) -> Result<(super::write::Write, i64), ServiceError> {
        let current = self.load_current(tx, caller, rtype, id)?;
        let content = current.content.clone().ok_or(ServiceError::Gone)?;
        let patched = super::crud::apply_patch(content, patch)?;
        let resource: Map<String, Value> = self.parse_body(rtype, patched, Some(id))?;
        self.update_in(tx, caller, rtype, id, if_match, resource)
    }

    /// One entry of a batch, run as its own request; a failure is that entry's answer.
    fn batch_entry(&self, caller: &Caller, entry: &Value) -> EntryResult {
        let outcome = parse_entry(entry).and_then(|request| self.batch_request(caller, request));
        outcome.unwrap_or_else(|e| {
            let (status, issues) = e.outcome();
            EntryResult { status, version: None, outcome: Some(issues) }
        })
    }

    fn batch_request(&self, caller: &Caller, request: EntryRequest) -> Result<EntryResult, ServiceError> {
        let rtype = request.rtype;
        let body = || request.resource.clone().unwrap_or(Value::Null);
        match (request.method, &request.id, &request.criteria) {
            (Method::Get, Some(id), _) => match request.version {
                Some(version) => Ok(EntryResult::of(200, self.vread(caller, rtype, id, version)?)),
                None => Ok(EntryResult::of(200, self.read(caller, rtype, id)?)),
            },
            (Method::Post, ..) => match &request.if_none_exist {
                Some(criteria) => Ok(match self.create_unless_exists(caller, rtype, body(), criteria)? {
                    Conditional::Created(v) => EntryResult::of(201, v),
                    Conditional::Existing(v) => EntryResult::of(200, v),
                }),
                None => Ok(EntryResult::of(201, self.create(caller, rtype, body())?)),
            },
            (Method::Put, Some(id), _) => Ok(EntryResult::of(200, self.update(caller, rtype, id, request.if_match, body())?)),
            (Method::Put, None, Some(criteria)) => {
                let (v, created) = self.update_where(caller, rtype, criteria, request.if_match, body())?;
                Ok(EntryResult::of(if created { 201 } else { 200 }, v))
            }
            (Method::Patch, Some(id), _) => {
                let patch = patch_of(request.resource.as_ref().unwrap_or(&Value::Null))?;
                Ok(EntryResult::of(200, self.patch(caller, rtype, id, request.if_match, patch)?))
            }
            (Method::Delete, Some(id), _) => {
                self.delete(caller, rtype, id)?;
                Ok(EntryResult { status: 204, version: None, outcome: None })
            }
            _ => Err(bad("request.url does not fit request.method")),
        }
    }
}
