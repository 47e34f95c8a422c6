//! Conditional writes: create unless a match exists (`If-None-Exist`), update whatever one
//! record matches (`PUT /fhir/{type}?criteria`). The criteria are searched tenant-wide
//! through the blind index inside the write's own transaction, after a lock on the
//! criteria, so two concurrent conditional creates of one identifier make one record.

use serde_json::{Map, Value};

use super::{Current, ResourceService, Versioned, resource_ref, success_entry, write::Write};
use crate::authz::Op;
use crate::domain::{AuditAction, ResourceId, ResourceType};
use crate::fhir::{Issue, IssueCode};
use crate::service::search_params::{self, ParsedSearch};
use crate::service::{Caller, ServiceError};
use crate::store::DbConnection;
use crate::store::resources::{self as rows, CurrentRow, Order, SearchQuery};

/// What conditional criteria matched.
pub(in crate::service) enum Match {
    None,
    One(Box<CurrentRow>),
    Several,
}

/// The outcome of a conditional create.
#[derive(Debug)]
pub enum Conditional {
    /// Nothing matched: the record was created (201).
    Created(Versioned),
    /// One record matched and is returned as it stands (200); nothing was written.
    Existing(Versioned),
}

fn criteria_refused(diagnostics: &str) -> ServiceError {
    ServiceError::BadRequest(vec![Issue::new(IssueCode::Invalid, None, diagnostics)])
}

/// Parses conditional criteria (a query string such as `identifier=sys|123`).
pub(in crate::service) fn parse_criteria(query: &str) -> Result<Vec<(String, String)>, ServiceError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|_| criteria_refused("conditional criteria are not a well-formed query string"))?;
    if pairs.is_empty() {
        return Err(criteria_refused("conditional criteria are empty; give at least one search parameter"));
    }
    Ok(pairs)
}

impl ResourceService<'_> {
    /// The records of `rtype` in the caller's tenant matching `criteria`, whatever the
    /// caller's scope (a conditional write must not duplicate a record the caller cannot
    /// see). Only criteria matched in SQL are accepted: tokens, identifiers, `_id`,
    /// `patient`, `_lastUpdated`. Takes the criteria's lock first; call inside the write
    /// transaction.
    pub(in crate::service) fn conditional_match(
        &self,
        tx: &mut DbConnection,
        caller: &Caller,
        rtype: ResourceType,
        criteria: &[(String, String)],
    ) -> Result<Match, ServiceError> {
        let tenant = caller.principal.tenant.as_str();
        let parsed = search_params::parse(rtype, criteria)?;
        let ParsedSearch { ids, patients, criteria, dates, last_updated, sort, offset, .. } = parsed;
        if !dates.is_empty() || !sort.is_empty() || offset != 0 {
            return Err(criteria_refused(
                "conditional criteria may use token, identifier, reference, _id and _lastUpdated parameters only",
            ));
        }
        if ids.is_none() && patients.is_none() && criteria.is_empty() && last_updated.is_empty() {
            return Err(criteria_refused("conditional criteria are empty; give at least one search parameter"));
        }
        let codec = &self.services.codec;
        let tenant_keys = codec.keys().tenant(tenant)?;
        let criteria: Vec<(String, Vec<String>)> = criteria
            .into_iter()
            .map(|(param, tokens)| {
                let mut stored: Vec<String> = tokens.iter().map(|t| codec.token(&tenant_keys, rtype, &param, t)).collect();
                stored.sort();
                (param, stored)
            })
            .collect();
        let mut key = format!("{}|{}", rtype.name(), tenant);
        for (param, tokens) in &criteria {
            key.push_str(&format!("|{param}={}", tokens.join(",")));
        }
        rows::lock_for_condition(tx, &key)?;
        let query = SearchQuery {
            tenant: tenant.to_owned(),
            resource_type: rtype.name().to_owned(),
            ids,
            patients,
            last_updated: last_updated.iter().map(super::search::instant_range).collect(),
            order: Order::Id,
            criteria,
            restrictions: None,
            limit: 2,
            offset: 0,
        };
        let (mut found, total) = rows::search(tx, &query)?;
        Ok(match total {
            0 => Match::None,
            1 => Match::One(Box::new(found.remove(0))),
            _ => Match::Several,
        })
    }

    /// The record a conditional write found, as the caller may read it: its read is
    /// ledgered once the transaction ended; a caller who may not read it is refused.
    fn existing(&self, tx: &mut DbConnection, caller: &Caller, rtype: ResourceType, row: &CurrentRow) -> Result<Versioned, ServiceError> {
        let id = ResourceId::parse(&row.id).map_err(ServiceError::corrupt_by("resource row"))?;
        let Current { row, content, basis, team, .. } = self.load_current(tx, caller, rtype, &id)?;
        let decision = self.authorize(caller, Op::Read, AuditAction::Read, rtype, &id, basis.as_ref(), &team)?;
        let patient = super::patient_of(rtype, id.as_str(), row.patient_id.as_deref());
        self.record_or_defer(success_entry(caller, decision, AuditAction::Read, Some(resource_ref(rtype, id.as_str())), patient), false)?;
        Ok(Versioned { resource_type: rtype, id, version_id: row.version_id, last_updated: row.last_updated.and_utc(), resource: content })
    }

    /// `POST /fhir/{type}` with `If-None-Exist`: creates `body` unless `criteria` match:
    /// one match is returned as it stands, several are 412.
    #[tracing::instrument(skip_all, fields(resource_type = rtype.name()))]
    pub fn create_unless_exists(
        &self,
        caller: &Caller,
        rtype: ResourceType,
        body: Value,
        criteria: &str,
    ) -> Result<Conditional, ServiceError> {
        let criteria = parse_criteria(criteria)?;
        let resource = self.parse_body(rtype, body, None)?;
        let id = ResourceId::generate();
        let mut conn = self.conn()?;
        self.in_transaction(&mut conn, caller, |tx| self.create_unless_exists_in(tx, caller, rtype, &id, resource, &criteria))
    }

    /// The conditional create inside the caller's transaction (also a Bundle entry's).
    pub(in crate::service) fn create_unless_exists_in(
        &self,
        tx: &mut DbConnection,
        caller: &Caller,
        rtype: ResourceType,
        id: &ResourceId,
        resource: Map<String, Value>,
        criteria: &[(String, String)],
    ) -> Result<(Conditional, Option<i64>), ServiceError> {
        match self.conditional_match(tx, caller, rtype, criteria)? {
            Match::Several => Err(ServiceError::PreconditionFailed("the If-None-Exist criteria match more than one record")),
            Match::One(row) => Ok((Conditional::Existing(self.existing(tx, caller, rtype, &row)?), None)),
            Match::None => {
                let write = self.first_version(tx, caller, rtype, id, resource)?;
                let cursor = self.apply_in(tx, caller, &write)?;
                tracing::info!(resource_id = %id, "resource created (conditional)");
                Ok((Conditional::Created(write.into_versioned(rtype, id)), cursor))
            }
        }
    }

    /// `PUT /fhir/{type}?criteria`: updates the one record the criteria match, creates
    /// `body` when none does (its `id` must then be absent: ids are the server's), and is
    /// 412 when several do. Returns whether it created.
    #[tracing::instrument(skip_all, fields(resource_type = rtype.name()))]
    pub fn update_where(
        &self,
        caller: &Caller,
        rtype: ResourceType,
        criteria: &str,
        if_match: Option<i64>,
        body: Value,
    ) -> Result<(Versioned, bool), ServiceError> {
        let criteria = parse_criteria(criteria)?;
        let mut conn = self.conn()?;
        self.in_transaction(&mut conn, caller, |tx| self.update_where_in(tx, caller, rtype, &criteria, if_match, body))
    }

    /// The conditional update inside the caller's transaction (also a Bundle entry's).
    pub(in crate::service) fn update_where_in(
        &self,
        tx: &mut DbConnection,
        caller: &Caller,
        rtype: ResourceType,
        criteria: &[(String, String)],
        if_match: Option<i64>,
        body: Value,
    ) -> Result<((Versioned, bool), Option<i64>), ServiceError> {
        match self.conditional_match(tx, caller, rtype, criteria)? {
            Match::Several => Err(ServiceError::PreconditionFailed("the conditional update's criteria match more than one record")),
            Match::None => {
                if body.get("id").is_some() {
                    return Err(ServiceError::BadRequest(vec![Issue::new(
                        IssueCode::NotSupported,
                        Some(format!("{}.id", rtype.name())),
                        "no record matches and ids are assigned by the server: leave id out to create",
                    )]));
                }
                let resource = self.parse_body(rtype, body, None)?;
                let id = ResourceId::generate();
                let write = self.first_version(tx, caller, rtype, &id, resource)?;
                let cursor = self.apply_in(tx, caller, &write)?;
                Ok(((write.into_versioned(rtype, &id), true), cursor))
            }
            Match::One(row) => {
                let id = ResourceId::parse(&row.id).map_err(ServiceError::corrupt_by("resource row"))?;
                let mut body = body;
                if let Value::Object(map) = &mut body
                    && !map.contains_key("id")
                {
                    map.insert("id".into(), Value::String(id.to_string()));
                }
                let resource = self.parse_body(rtype, body, Some(&id))?;
                let (write, cursor) = self.update_in(tx, caller, rtype, &id, if_match, resource)?;
                Ok(((write.into_versioned(rtype, &id), false), Some(cursor)))
            }
        }
    }

    /// Writes the next version of `id` with `resource` inside the caller's transaction:
    /// authorized as an update, `If-Match` checked (412 when stale).
    pub(in crate::service) fn update_in(
        &self,
        tx: &mut DbConnection,
        caller: &Caller,
        rtype: ResourceType,
        id: &ResourceId,
        if_match: Option<i64>,
        resource: Map<String, Value>,
    ) -> Result<(Write, i64), ServiceError> {
        let Current { row: current, content, basis, team, .. } = self.load_current(tx, caller, rtype, id)?;
        self.authorize(caller, Op::Write, AuditAction::Update, rtype, id, basis.as_ref(), &team)?;
        if content.is_none() {
            return Err(ServiceError::Gone);
        }
        if let Some(expected) = if_match
            && expected != current.version_id
        {
            return Err(ServiceError::VersionConflict { current: Some(current.version_id) });
        }
        let write = self.next_version(caller, rtype, id, &current, Some(resource))?;
        // Inside the transaction nobody else can have advanced the record.
        let cursor = self.apply_in(tx, caller, &write)?.ok_or(ServiceError::VersionConflict { current: None })?;
        Ok((write, cursor))
    }
}
