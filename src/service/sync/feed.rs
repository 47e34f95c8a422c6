//! The change feed: what `GET /sync/changes` pages through and the WebSocket `/sync`
//! delivers, read from the change log at each subscriber's own cursor. Subscribers of one
//! tenant that read at the same time read together ([`SyncService::pages`], fed by
//! [`super::fanout`]): what is the same for all of them is read and opened once, the
//! access decision stays each one's own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use super::SyncService;
use crate::authz::{Decision, Op};
use crate::domain::{AuditAction, AuditOutcome, Category, ChangeOp, Reference, ResourceId, ResourceType};
use crate::ledger::entry::Entry;
use crate::service::keyring::DataKey;
use crate::service::resources::{ResourceService, patient_of, version_ref};
use crate::service::{Caller, ServiceError, codec};
use crate::store::changes::ChangeRow;
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
    fn admits(&self, change: &ChangeRow, rtype: ResourceType) -> Option<Admitted> {
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
    /// The version's content; `None` for deletes, purges and revokes. Shared by every
    /// subscriber of a round that receives it.
    pub resource: Option<Arc<Value>>,
}

/// One read of the feed.
#[derive(Debug)]
pub struct ChangePage {
    /// Changes for the subscriber, in cursor order.
    pub changes: Vec<Change>,
    /// Where to resume: past every change read, including those filtered out.
    pub cursor: i64,
    /// How many change-log rows were read.
    pub scanned: usize,
    /// Fewer rows than the limit were read: the reader is at the head of the log as of
    /// this read.
    pub at_head: bool,
}

/// One subscriber's read in a round: who asks, after which cursor, at most how many
/// change-log rows, and what it subscribed to. Every ask of a round is of one tenant.
pub(crate) struct Ask<'a> {
    pub caller: &'a Caller,
    pub since: i64,
    pub limit: i64,
    pub filter: &'a FeedFilter,
}

/// A change-log row, parsed.
struct Logged {
    row: ChangeRow,
    rtype: ResourceType,
    id: ResourceId,
    op: ChangeOp,
}

impl Logged {
    /// A log row that does not parse is corrupt: an error, never a silently skipped change.
    fn parse(row: ChangeRow) -> Result<Self, ServiceError> {
        let rtype = ResourceType::from_name(&row.resource_type).ok_or(ServiceError::corrupt("change-log row names no served type"))?;
        let id = ResourceId::parse(&row.resource_id).map_err(ServiceError::corrupt_by("change-log row id"))?;
        let op = ChangeOp::parse(&row.op).ok_or(ServiceError::corrupt("change-log row op"))?;
        Ok(Self { row, rtype, id, op })
    }
}

/// About how many `sync` entries one ledger commit of a round takes. A round of a thousand
/// subscribers commits a few batches and answers each as it commits, so the first pages
/// are sent while the later entries are written.
const LEDGER_BATCH: usize = 256;

/// Answers one ledger batch's pages: as judged if its entries committed; if not, those
/// that were to carry content with the ledger's error (fail closed), the others as judged.
fn answer_batch(
    batch: Vec<(usize, Result<ChangePage, ServiceError>, bool)>,
    recorded: Result<(), ServiceError>,
    answer: &mut impl FnMut(usize, Result<ChangePage, ServiceError>),
) {
    let mut failed = recorded.err();
    let ledgered = batch.iter().filter(|(_, _, l)| *l).count();
    if ledgered > 1
        && let Some(e) = &failed
    {
        tracing::error!(error = %e, cause = ?std::error::Error::source(e).map(ToString::to_string), subscribers = ledgered, "feed deliveries were not ledgered");
    }
    for (i, page, ledgered_here) in batch {
        match &mut failed {
            Some(_) if ledgered_here && ledgered == 1 => answer(i, Err(failed.take().unwrap_or(ServiceError::ledger("sync deliveries")))),
            Some(_) if ledgered_here => answer(i, Err(ServiceError::ledger("sync deliveries"))),
            _ => answer(i, page),
        }
    }
}

/// Whether a read of at most `limit` log rows that returned `log` reached the log's head
/// (it returned fewer rows than it could).
fn reached_head(log: &[Logged], limit: i64) -> bool {
    i64::try_from(log.len()).unwrap_or(i64::MAX) < limit
}

/// `(type, id, version)` of a stored version.
type VersionKey = (String, String, i64);

fn version_key(rtype: ResourceType, id: &str, version: i64) -> VersionKey {
    (rtype.name().to_owned(), id.to_owned(), version)
}

/// What every subscriber of a round is judged against, read once for the round: the
/// records' current rows, their patients' care teams, the care teams of purged patients,
/// and the versions opened so far (each opened at most once per round).
struct Shared<'a> {
    currents: HashMap<(String, String), CurrentRow>,
    teams: HashMap<String, Vec<Reference>>,
    purged_teams: HashMap<String, Vec<Reference>>,
    opener: Opener<'a>,
}

/// Opens the round's versions, each at most once, with data keys read for this round.
struct Opener<'a> {
    service: &'a SyncService<'a>,
    caller: &'a Caller,
    keys: HashMap<String, Result<DataKey, ServiceError>>,
    stored: HashMap<VersionKey, Option<Arc<str>>>,
    opened: HashMap<VersionKey, Option<Arc<Value>>>,
}

impl Opener<'_> {
    fn open(
        &mut self,
        rtype: ResourceType,
        id: &ResourceId,
        owner: Option<&String>,
        version: i64,
    ) -> Result<Option<Arc<Value>>, ServiceError> {
        let key = version_key(rtype, id.as_str(), version);
        if let Some(done) = self.opened.get(&key) {
            return Ok(done.clone());
        }
        let content = match self.stored.get(&key).cloned().flatten() {
            Some(sealed) => Some(Arc::new(self.service.open(self.caller, rtype, id.as_str(), &sealed, &self.keys, owner)?)),
            None => None,
        };
        self.opened.insert(key, content.clone());
        Ok(content)
    }
}

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
        let ask = Ask { caller, since, limit, filter };
        let mut page = None;
        self.pages(std::slice::from_ref(&ask), |_, p| page = Some(p))?;
        page.unwrap_or(Err(ServiceError::corrupt("feed round answered no page")))
    }

    /// The pages of several subscribers of one tenant, read together ([`Self::changes`]
    /// for each), each handed to `answer` with its index in `asks`: the change-log rows
    /// after each distinct cursor, the records' current rows, their owners' data keys, the
    /// care teams and the versions are read once for all of them, and each version is
    /// opened once; the access decision, revokes and filters are each subscriber's own.
    /// The `sync` entries of the deliveries go to the ledger in batches of subscribers
    /// (about [`LEDGER_BATCH`] entries; one batch for one subscriber's page), and a page is
    /// answered only once its batch has committed: if that fails, every page of the batch
    /// that carried content fails with it (fail closed). An error reading what all share
    /// is the round's (returned before any page is answered); one of a single
    /// subscriber's judgement is that page's.
    pub(crate) fn pages(
        &self,
        asks: &[Ask<'_>],
        mut answer: impl FnMut(usize, Result<ChangePage, ServiceError>),
    ) -> Result<(), ServiceError> {
        let Some(first) = asks.first() else { return Ok(()) };
        let tenant = first.caller.principal.tenant.as_str();
        if asks.iter().any(|a| a.caller.principal.tenant.as_str() != tenant) {
            return Err(ServiceError::corrupt("a feed round mixed tenants"));
        }
        let mut conn = self.conn()?;
        let mut logs: HashMap<(i64, i64), Vec<Logged>> = HashMap::new();
        for ask in asks {
            if let std::collections::hash_map::Entry::Vacant(slot) = logs.entry((ask.since, ask.limit)) {
                let rows = crate::store::changes::since(&mut conn, tenant, ask.since, ask.limit)?;
                slot.insert(rows.into_iter().map(Logged::parse).collect::<Result<_, _>>()?);
            }
        }
        let admitted: Vec<Vec<(&Logged, Admitted)>> = asks
            .iter()
            .map(|ask| {
                logs.get(&(ask.since, ask.limit))
                    .map(|log| log.iter().filter_map(|l| ask.filter.admits(&l.row, l.rtype).map(|how| (l, how))).collect())
                    .unwrap_or_default()
            })
            .collect();
        let union: BTreeMap<i64, &Logged> = admitted.iter().flatten().map(|(l, _)| (l.row.cursor, *l)).collect();
        // Only a round that reached the head of the log keeps what it read: those are the
        // versions the next live rounds may need again; a replay far behind would only
        // churn the cache.
        let live = asks.iter().any(|a| logs.get(&(a.since, a.limit)).is_some_and(|l| reached_head(l, a.limit)));
        let mut shared = self.shared(&mut conn, first.caller, &union, live)?;
        drop(conn);

        let mut judged = Vec::with_capacity(asks.len());
        for (ask, admitted) in asks.iter().zip(admitted) {
            let log = logs.get(&(ask.since, ask.limit)).map_or(&[][..], Vec::as_slice);
            judged.push(self.judge(ask.caller, admitted, &mut shared).map(|(changes, entries)| {
                let cursor = log.last().map_or(ask.since, |l| l.row.cursor);
                let at_head = reached_head(log, ask.limit);
                (ChangePage { changes, cursor, scanned: log.len(), at_head }, entries)
            }));
        }
        drop(shared);
        // The entries go to the ledger in batches of about LEDGER_BATCH, each answered as
        // soon as it commits: the next batch is written while the first pages are sent.
        let mut batch: Vec<(usize, Result<ChangePage, ServiceError>, bool)> = Vec::new();
        let mut entries = Vec::new();
        let last = judged.len().saturating_sub(1);
        for (i, page) in judged.into_iter().enumerate() {
            match page {
                Ok((page, mut delivered)) => {
                    let ledgered = !delivered.is_empty();
                    entries.append(&mut delivered);
                    batch.push((i, Ok(page), ledgered));
                }
                Err(e) => batch.push((i, Err(e), false)),
            }
            if entries.len() >= LEDGER_BATCH || i == last {
                let recorded = if entries.is_empty() { Ok(()) } else { self.services.record(std::mem::take(&mut entries)) };
                answer_batch(std::mem::take(&mut batch), recorded, &mut answer);
            }
        }
        Ok(())
    }

    /// Reads what every subscriber of a round is judged against (see [`Shared`]), for
    /// the changes any of them admits, in one round trip each: current rows, data keys,
    /// care teams, versions (those not already in hand as a current row or in the sealed
    /// cache), and the care teams of purged patients.
    fn shared<'a>(
        &'a self,
        conn: &mut crate::store::DbConnection,
        caller: &'a Caller,
        union: &BTreeMap<i64, &Logged>,
        keep: bool,
    ) -> Result<Shared<'a>, ServiceError> {
        let tenant = caller.principal.tenant.as_str();
        let mut ids: Vec<String> = union.values().map(|l| l.row.resource_id.clone()).collect();
        ids.sort();
        ids.dedup();
        let mut types: Vec<&str> = union.values().map(|l| l.rtype.name()).collect();
        types.sort_unstable();
        types.dedup();
        let currents: HashMap<(String, String), CurrentRow> =
            rows::currents_of(conn, tenant, &types, &ids)?.into_iter().map(|r| ((r.resource_type.clone(), r.id.clone()), r)).collect();
        let mut owners: Vec<String> = union
            .values()
            .filter_map(|l| codec::owner(l.rtype, l.id.as_str(), l.row.patient_id.as_deref()))
            .chain(
                currents.values().filter_map(|r| codec::owner(ResourceType::from_name(&r.resource_type)?, &r.id, r.patient_id.as_deref())),
            )
            .collect();
        owners.sort();
        owners.dedup();
        // Read from the key store for every round, never kept: a key destroyed by any
        // process stops every later round from opening what it sealed, cached or not.
        let keys = self.keys_of(caller, owners)?;
        // Clinical records are judged by their patient's care team as it stands now.
        let patients: Vec<String> = currents
            .values()
            .filter(|r| ResourceType::from_name(&r.resource_type).is_some_and(|t| t.category() == Category::Clinical))
            .filter_map(|r| r.patient_id.clone())
            .collect();
        let teams = self.care_teams(conn, caller, &patients)?;
        // The version a change made and the one before it, and for a record deleted since,
        // its last live version (what access to it is judged by).
        let mut stored: HashMap<VersionKey, Option<Arc<str>>> = HashMap::new();
        let mut fresh: Vec<(VersionKey, Arc<str>)> = Vec::new();
        for r in currents.values().filter(|r| r.deleted == 0) {
            let sealed: Arc<str> = Arc::from(r.content.as_str());
            let key = (r.resource_type.clone(), r.id.clone(), r.version_id);
            if keep {
                fresh.push((key.clone(), sealed.clone()));
            }
            stored.insert(key, Some(sealed));
        }
        let mut wanted: Vec<VersionKey> = union
            .values()
            .flat_map(|l| [l.row.version_id, l.row.version_id - 1].map(|v| version_key(l.rtype, l.id.as_str(), v)))
            .chain(currents.values().filter(|r| r.deleted != 0).map(|r| (r.resource_type.clone(), r.id.clone(), r.version_id - 1)))
            .filter(|k| k.2 > 0 && !stored.contains_key(k))
            .collect();
        wanted.sort();
        wanted.dedup();
        let sealed = &self.services.feed.sealed;
        for (key, content) in sealed.get_all(tenant, &wanted) {
            stored.insert(key, Some(content));
        }
        wanted.retain(|k| !stored.contains_key(k));
        if !wanted.is_empty() {
            let mut ids: Vec<String> = wanted.iter().map(|k| k.1.clone()).collect();
            ids.sort();
            ids.dedup();
            let mut types: Vec<&str> = wanted.iter().map(|k| k.0.as_str()).collect();
            types.sort_unstable();
            types.dedup();
            let mut versions: Vec<i64> = wanted.iter().map(|k| k.2).collect();
            versions.sort_unstable();
            versions.dedup();
            for v in rows::versions_of(conn, tenant, &types, &ids, &versions)? {
                let content: Option<Arc<str>> = v.content.map(Arc::from);
                let key = (v.resource_type, v.id, v.version_id);
                if let Some(c) = content.as_ref().filter(|_| keep) {
                    fresh.push((key.clone(), c.clone()));
                }
                stored.entry(key).or_insert(content);
            }
        }
        if keep {
            sealed.put_all(tenant, fresh);
        }
        let purged_teams = self.purged_teams(conn, tenant, union)?;
        Ok(Shared { currents, teams, purged_teams, opener: Opener { service: self, caller, keys, stored, opened: HashMap::new() } })
    }

    /// One subscriber's part of a round: its decision on each change it admits, its
    /// revokes, and the `sync` entries of the content it is to receive.
    fn judge(
        &self,
        caller: &Caller,
        admitted: Vec<(&Logged, Admitted)>,
        shared: &mut Shared<'_>,
    ) -> Result<(Vec<Change>, Vec<Entry>), ServiceError> {
        let no_team = Vec::new();
        let mut out = Vec::new();
        let mut entries = Vec::new();
        let mut revoked: HashSet<(ResourceType, &str)> = HashSet::new();
        for (logged, how) in admitted {
            let Logged { row: change, rtype, id, op } = logged;
            let (rtype, op) = (*rtype, *op);
            if op == ChangeOp::Purge {
                // Nothing of a purged record is left to judge access by: the care team
                // its patient had at the purge (kept in the destruction record) decides
                // who is told, so devices that held it drop their copies. Content-free.
                let patient = change.patient_id.as_deref().and_then(|p| ResourceId::parse(p).ok());
                let team = change.patient_id.as_ref().and_then(|p| shared.purged_teams.get(p)).unwrap_or(&no_team);
                let owner = patient.map(|p| Reference::new(ResourceType::Patient, p));
                let target = crate::authz::Target { category: rtype.category(), owner: owner.as_ref(), care_team: team };
                if how == Admitted::Yes && self.services.policy.decide(&caller.principal, Op::Read, &target, false) != Decision::Deny {
                    out.push(Change {
                        cursor: change.cursor,
                        op,
                        resource_type: rtype,
                        id: id.clone(),
                        version_id: change.version_id,
                        resource: None,
                    });
                }
                continue;
            }
            // A record purged since has nothing left to deliver.
            let Some(current) = shared.currents.get(&(change.resource_type.clone(), change.resource_id.clone())) else { continue };
            // Each version opens with the key of the owner it was written for.
            let owner = codec::owner(rtype, id.as_str(), current.patient_id.as_deref());
            let sealed_by = codec::owner(rtype, id.as_str(), change.patient_id.as_deref());
            let basis = if current.deleted == 0 { current.version_id } else { current.version_id - 1 };
            let judged = match shared.opener.open(rtype, id, owner.as_ref(), basis) {
                Ok(basis) => basis,
                // A shredded record's changes have nothing left to deliver.
                Err(ServiceError::Erased) => continue,
                Err(e) => return Err(e),
            };
            let team = current.patient_id.as_ref().and_then(|p| shared.teams.get(p)).unwrap_or(&no_team);
            if self.decision(caller, Op::Read, rtype, id, judged.as_deref(), team, false).0 == Decision::Deny {
                // The changed version, else the one before it (opened only when needed).
                let mut was_related = false;
                for v in [change.version_id, change.version_id - 1] {
                    let content = shared.opener.open(rtype, id, sealed_by.as_ref(), v)?;
                    if ResourceService::related(caller, rtype, id, content.as_deref(), team) {
                        was_related = true;
                        break;
                    }
                }
                if was_related && revoked.insert((rtype, id.as_str())) {
                    out.push(Change {
                        cursor: change.cursor,
                        op: ChangeOp::Revoke,
                        resource_type: rtype,
                        id: id.clone(),
                        version_id: change.version_id,
                        resource: None,
                    });
                }
                continue;
            }
            if how == Admitted::RevokeOnly {
                continue;
            }
            let content = shared.opener.open(rtype, id, sealed_by.as_ref(), change.version_id)?;
            let patient = patient_of(rtype, id.as_str(), change.patient_id.as_deref());
            entries.push(caller.entry(
                AuditAction::Sync,
                Some(version_ref(rtype, id.as_str(), change.version_id)),
                patient,
                AuditOutcome::Success,
            ));
            out.push(Change {
                cursor: change.cursor,
                op,
                resource_type: rtype,
                id: id.clone(),
                version_id: change.version_id,
                resource: content,
            });
        }
        Ok((out, entries))
    }
}

impl SyncService<'_> {
    /// The care teams the patients of a batch's `purge` changes had when they were purged.
    fn purged_teams(
        &self,
        conn: &mut crate::store::DbConnection,
        tenant: &str,
        union: &BTreeMap<i64, &Logged>,
    ) -> Result<HashMap<String, Vec<Reference>>, ServiceError> {
        let mut patients: Vec<String> =
            union.values().filter(|l| l.op == ChangeOp::Purge).filter_map(|l| l.row.patient_id.clone()).collect();
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
