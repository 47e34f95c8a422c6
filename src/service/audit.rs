//! Audit entries for use cases: built from the caller, written to the ledger either inside
//! the change's own transaction (writes) or through the group-commit writer, which
//! commits them before any data is returned (reads, searches, denials): fail closed.

use crate::domain::{AuditAction, AuditOutcome};
use crate::ledger::entry::{Actor, Entry};
use crate::service::{Caller, ServiceError, Services};
use crate::store::DbConnection;

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Caller {
    /// An entry for this caller; `seq` is assigned on append. It carries no break-glass
    /// reason, even when the request had one: an access the caller's own scope allows is
    /// an ordinary access (see [`Self::break_glass_entry`]).
    pub fn entry(&self, action: AuditAction, resource: Option<String>, patient: Option<String>, outcome: AuditOutcome) -> Entry {
        Entry {
            seq: 0,
            time: now(),
            actor: Actor {
                sub: Some(self.principal.sub.clone()),
                roles: self.principal.roles.iter().map(|r| r.as_str().to_owned()).collect(),
                fhir_user: self.principal.fhir_user.as_ref().map(ToString::to_string),
            },
            tenant: Some(self.principal.tenant.to_string()),
            action,
            resource,
            patient,
            outcome,
            purpose_of_use: Some(self.purpose.as_str().to_owned()),
            break_glass: None,
            client: Some(self.client.clone()).filter(|c| !c.is_empty()),
            request_id: Some(self.request_id.clone()).filter(|r| !r.is_empty()),
        }
    }

    /// [`Self::entry`] with the caller's break-glass reason (if it gave one), for the two
    /// kinds of entry that name it: an access allowed only because the caller broke the
    /// glass (emergency access), and a refused attempt (outcome `denied`), so that a
    /// reviewer sees what was claimed.
    pub fn break_glass_entry(
        &self,
        action: AuditAction,
        resource: Option<String>,
        patient: Option<String>,
        outcome: AuditOutcome,
    ) -> Entry {
        Entry { break_glass: self.break_glass.clone(), ..self.entry(action, resource, patient, outcome) }
    }
}

/// Audit-ledger writes that failed in this process (each one failed its request closed).
static WRITE_FAILURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) fn count_write_failure() {
    WRITE_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Audit-ledger writes that failed in this process so far.
pub fn write_failures() -> u64 {
    WRITE_FAILURES.load(std::sync::atomic::Ordering::Relaxed)
}

pub(crate) fn ledger_failure(e: crate::ledger::log::LedgerError) -> ServiceError {
    tracing::error!(error = %e, "audit ledger write failed");
    count_write_failure();
    ServiceError::ledger_by("append")(e)
}

/// One log's state, for the health metrics.
#[derive(Debug, Clone)]
pub struct LogHealth {
    pub log: String,
    /// Entries in the log.
    pub entries: i64,
    /// Entries beyond its latest signed checkpoint.
    pub unsigned: i64,
    /// Seconds since its latest checkpoint was signed, or since the log began when none
    /// was: how long its unsigned entries may have waited.
    pub waiting_seconds: f64,
}

/// The audit ledger's health: every log's state, write failures and the group-commit queue.
#[derive(Debug, Clone)]
pub struct LedgerHealth {
    pub logs: Vec<LogHealth>,
    pub write_failures: u64,
    pub queue_depth: i64,
}

impl Services {
    /// The ledger's health as the metrics endpoint reports it.
    pub fn ledger_health(&self) -> Result<LedgerHealth, ServiceError> {
        use crate::store::ledger as rows;
        let mut conn = self.store.conn()?;
        let now = chrono::Utc::now();
        let mut logs = Vec::new();
        let since = |time: &str| {
            chrono::DateTime::parse_from_rfc3339(time)
                .map(|t| now.signed_duration_since(t.with_timezone(&chrono::Utc)).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0)
        };
        for (log, created_at) in rows::logs_created(&mut conn)? {
            let entries = rows::size(&mut conn, &log)?;
            let latest = rows::latest_checkpoint(&mut conn, &log)?;
            let waiting_seconds = since(latest.as_ref().map_or(created_at.as_str(), |c| c.timestamp.as_str()));
            let unsigned = entries - latest.map_or(0, |c| c.size);
            logs.push(LogHealth { log, entries, unsigned, waiting_seconds });
        }
        Ok(LedgerHealth { logs, write_failures: write_failures(), queue_depth: self.ledger_writer.queue_depth() })
    }
}

/// Appends entries, each to its tenant's log (or the platform log), inside an open write
/// transaction; each log's append lock is held until the transaction ends.
pub(crate) fn append_in(tx: &mut DbConnection, mut entries: Vec<Entry>) -> Result<(), ServiceError> {
    crate::ledger::log::append(tx, &mut entries).map_err(ledger_failure)
}

impl Services {
    /// Records a request whose token was missing or refused (`login`, `denied`). A token
    /// whose signature verified but whose claims were refused (`identity`) is recorded in
    /// its tenant's log, naming its subject, where that tenant's auditor sees it. Otherwise
    /// nothing in the token can be trusted: the actor and tenant stay empty and the entry
    /// goes to the platform log.
    pub fn record_rejected_token(
        &self,
        client: &str,
        request_id: &str,
        identity: Option<crate::auth::RefusedIdentity>,
    ) -> Result<(), ServiceError> {
        let (tenant, sub) = identity.map_or((None, None), |i| (Some(i.tenant.to_string()), i.sub));
        let entry = Entry {
            seq: 0,
            time: now(),
            actor: Actor { sub, roles: Vec::new(), fhir_user: None },
            tenant,
            action: AuditAction::Login,
            resource: None,
            patient: None,
            outcome: AuditOutcome::Denied,
            purpose_of_use: None,
            break_glass: None,
            client: Some(client.to_owned()).filter(|c| !c.is_empty()),
            request_id: Some(request_id.to_owned()).filter(|r| !r.is_empty()),
        };
        self.record(vec![entry])
    }

    /// Refuses a request with `X-Break-Glass` from a caller none of whose roles may break
    /// the glass (SPEC section 2: 403, whatever it asked for), after ledgering the attempt
    /// (`denied`, with the reason it gave). `action`, `resource` and `patient` say what the
    /// request was for, as far as its route tells.
    pub fn refuse_break_glass(
        &self,
        caller: &Caller,
        action: AuditAction,
        resource: Option<String>,
        patient: Option<String>,
    ) -> Result<(), ServiceError> {
        tracing::info!(action = action.as_str(), "break-glass refused: no role of the caller may break the glass");
        self.record(vec![caller.break_glass_entry(action, resource, patient, AuditOutcome::Denied)])
    }
}

/// Ledger reads for auditors (the `audit` capability).
pub mod queries {
    use crate::authz::Capability;
    use crate::domain::{AuditAction, AuditOutcome};
    use crate::fhir::{Issue, IssueCode};
    use crate::ledger::log::{self, DbNodes, LedgerError};
    use crate::ledger::merkle::{self, TreeError};
    use crate::service::export_format::ExportFormat;
    use crate::service::{Caller, ServiceError, Services};
    use crate::store::ledger::{self as rows, CheckpointRow, EntryFilter};

    /// Filters of `GET /audit/export` as the caller gave them.
    #[derive(Debug, Clone, Default)]
    pub struct ExportRequest {
        pub from: Option<String>,
        pub to: Option<String>,
        pub patient: Option<String>,
        pub actor: Option<String>,
    }

    /// One access to a patient's records, as the accounting of disclosures lists it.
    #[derive(Debug, Clone)]
    pub struct Disclosure {
        /// The log holding the entry: the tenant's, or the sealed legacy log for accesses
        /// recorded before logs were per tenant.
        pub log: String,
        pub seq: u64,
        pub date: String,
        pub recipient_sub: Option<String>,
        pub recipient_roles: Vec<String>,
        pub recipient_fhir_user: Option<String>,
        pub purpose: Option<String>,
        pub action: AuditAction,
        /// `Type/ID` (or `Type/ID/_history/N`); `None` for an access naming no one record.
        pub resource: Option<String>,
        pub break_glass: Option<String>,
    }

    /// How a streamed export ended: `complete` is false when a write failed or the reader
    /// went away before the end.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Exported {
        pub entries: u64,
        pub complete: bool,
    }

    /// An export checked, ledgered and pinned to a checkpoint, ready to stream.
    #[derive(Debug, Clone)]
    pub struct PreparedExport {
        pub filter: EntryFilter,
        pub checkpoint: CheckpointRow,
        /// The checkpoint's origin (the tenant log's).
        pub origin: String,
    }

    const EXPORT_BATCH: i64 = 1000;

    fn rfc3339(raw: &str, name: &str) -> Result<String, ServiceError> {
        chrono::DateTime::parse_from_rfc3339(raw)
            .map(|t| t.with_timezone(&chrono::Utc).to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .map_err(|_| range_error(&format!("{name} must be an RFC 3339 time")))
    }

    fn patient_ref(raw: &str) -> Result<String, ServiceError> {
        crate::domain::Reference::parse(raw)
            .ok()
            .filter(|r| r.resource_type == crate::domain::ResourceType::Patient)
            .map(|r| r.to_string())
            .ok_or_else(|| range_error("patient must be Patient/ID"))
    }

    /// The filter of an export of `log`, from the request as given.
    fn export_filter(log: &str, req: ExportRequest) -> Result<EntryFilter, ServiceError> {
        Ok(EntryFilter {
            log: log.to_owned(),
            tenant: None,
            time_from: req.from.as_deref().map(|t| rfc3339(t, "from")).transpose()?,
            time_to: req.to.as_deref().map(|t| rfc3339(t, "to")).transpose()?,
            patient: req.patient.as_deref().map(patient_ref).transpose()?,
            actor_sub: req.actor.filter(|a| !a.is_empty()),
            outcome: None,
        })
    }

    fn range_error(text: &str) -> ServiceError {
        ServiceError::BadRequest(vec![Issue::new(IssueCode::Value, None, text)])
    }

    fn read_failure(e: LedgerError) -> ServiceError {
        match e {
            LedgerError::Tree(TreeError::Range) => range_error("index or tree size out of range"),
            other => {
                tracing::error!(error = %other, "ledger read failed");
                ServiceError::ledger_by("read")(other)
            }
        }
    }

    impl Services {
        /// Lets auditors through; any other caller's attempt is ledgered as denied
        /// (`action`: `read` for the log itself, `export` for exports and disclosures)
        /// before the 403.
        pub(crate) fn auditor(&self, caller: &Caller, action: AuditAction) -> Result<(), ServiceError> {
            self.require_capability(caller, &[Capability::Audit], action, None, None)
        }

        /// The origin of `log`'s checkpoints.
        pub fn ledger_origin(&self, log: &str) -> String {
            log::origin(self.ledger_signer.origin(), log)
        }

        /// The latest signed checkpoint of the caller's tenant's log, signing one first if
        /// entries arrived since; with its origin.
        pub fn ledger_checkpoint(&self, caller: &Caller) -> Result<(String, CheckpointRow), ServiceError> {
            self.auditor(caller, AuditAction::Read)?;
            let log = caller.principal.tenant.as_str();
            let mut conn = self.store.conn()?;
            let row = log::checkpoint(&mut conn, &self.ledger_signer, log).map_err(read_failure)?;
            Ok((self.ledger_origin(log), row))
        }

        /// The caller's tenant's entries with `from <= seq < to` (at most `max`).
        /// Each entry as its JSON object with `leaf` (base64 canonical bytes) added; an
        /// entry whose stored leaf does not parse is an error, never left out.
        pub fn ledger_entries(&self, caller: &Caller, from: i64, to: i64, max: i64) -> Result<Vec<serde_json::Value>, ServiceError> {
            self.auditor(caller, AuditAction::Read)?;
            if from < 0 || to < from || to - from > max {
                return Err(range_error(&format!("need 0 <= from <= to with at most {max} entries")));
            }
            let mut conn = self.store.conn()?;
            rows::entries(&mut conn, caller.principal.tenant.as_str(), from, to)?
                .iter()
                .map(|row| {
                    let mut entry: serde_json::Value =
                        serde_json::from_str(&row.leaf).map_err(ServiceError::corrupt_by("ledger entry leaf"))?;
                    entry["leaf"] =
                        serde_json::json!(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, row.leaf.as_bytes()));
                    Ok(entry)
                })
                .collect()
        }

        /// `(leaf hash hex, audit path)` for entry `seq` in the tree of `size` of the
        /// caller's tenant's log.
        pub fn ledger_inclusion(&self, caller: &Caller, seq: u64, size: u64) -> Result<(String, Vec<String>), ServiceError> {
            self.auditor(caller, AuditAction::Read)?;
            let log = caller.principal.tenant.as_str();
            let mut conn = self.store.conn()?;
            let current = u64::try_from(rows::size(&mut conn, log)?).unwrap_or(0);
            if seq >= size || size > current {
                return Err(range_error("need seq < size <= the ledger's size"));
            }
            let seq_i = i64::try_from(seq).map_err(|_| range_error("seq out of range"))?;
            let entry = rows::entries(&mut conn, log, seq_i, seq_i + 1)?;
            let leaf_hash = entry.into_iter().next().ok_or(ServiceError::NotFound)?.leaf_hash;
            let path = merkle::inclusion_proof(&mut DbNodes::new(&mut conn, log), seq, size).map_err(|e| read_failure(e.into()))?;
            Ok((leaf_hash, path.iter().map(merkle::to_hex).collect()))
        }

        /// Checks and ledgers an export, and signs the checkpoint its proofs will refer to.
        pub fn prepare_export(&self, caller: &Caller, req: ExportRequest) -> Result<PreparedExport, ServiceError> {
            self.auditor(caller, AuditAction::Export)?;
            let filter = export_filter(caller.principal.tenant.as_str(), req)?;
            self.record(vec![caller.entry(AuditAction::Export, None, filter.patient.clone(), AuditOutcome::Success)])?;
            self.pin_export(filter)
        }

        /// Checks and ledgers an export of the platform log (entries with no trusted
        /// tenant) by an operator of the command line, `operator` naming them; the export
        /// is recorded in the platform log itself, and signs its checkpoint.
        pub fn prepare_platform_export(
            &self,
            operator: &str,
            request_id: &str,
            req: ExportRequest,
        ) -> Result<PreparedExport, ServiceError> {
            let filter = export_filter(log::PLATFORM_LOG, req)?;
            let entry = crate::ledger::entry::Entry {
                seq: 0,
                time: super::now(),
                actor: crate::ledger::entry::Actor { sub: Some(operator.to_owned()), roles: vec!["auditor".into()], fhir_user: None },
                tenant: None,
                action: AuditAction::Export,
                resource: None,
                patient: filter.patient.clone(),
                outcome: AuditOutcome::Success,
                purpose_of_use: Some("HCOMPL".into()),
                break_glass: None,
                client: Some("cli".into()),
                request_id: Some(request_id.to_owned()).filter(|r| !r.is_empty()),
            };
            self.record(vec![entry])?;
            self.pin_export(filter)
        }

        /// Signs the checkpoint of the export's log that its proofs will refer to.
        fn pin_export(&self, filter: EntryFilter) -> Result<PreparedExport, ServiceError> {
            let mut conn = self.store.conn()?;
            let checkpoint = log::checkpoint(&mut conn, &self.ledger_signer, &filter.log).map_err(read_failure)?;
            let origin = self.ledger_origin(&filter.log);
            Ok(PreparedExport { filter, checkpoint, origin })
        }

        /// Streams a prepared export: the head with the signed checkpoint (and public key),
        /// then one record per matching entry with its leaf bytes and inclusion proof against
        /// that checkpoint. `emit` returns false when its write failed or the reader went
        /// away: the export then stops and is reported incomplete, never as done. Entries
        /// are read in batches, so an export of any size never sits in memory.
        pub fn stream_export(
            &self,
            export: &PreparedExport,
            format: ExportFormat,
            mut emit: impl FnMut(Vec<u8>) -> bool,
        ) -> Result<Exported, ServiceError> {
            use crate::service::export_format::{Head, Record, head, record, tail};
            let cp = &export.checkpoint;
            let h = Head { origin: &export.origin, public_key: self.ledger_signer.public_key(), checkpoint: cp };
            if !emit(head(format, &h)?) {
                return Ok(Exported { entries: 0, complete: false });
            }
            let size = u64::try_from(cp.size).unwrap_or(0);
            let mut conn = self.store.conn()?;
            let (mut after, mut count) = (0i64, 0u64);
            loop {
                let batch = rows::filtered_entries(&mut conn, &export.filter, after, cp.size, EXPORT_BATCH)?;
                let Some(last) = batch.last() else { break };
                after = last.seq + 1;
                for row in &batch {
                    let seq = u64::try_from(row.seq).unwrap_or(0);
                    let path = merkle::inclusion_proof(&mut DbNodes::new(&mut conn, &export.filter.log), seq, size)
                        .map_err(|e| read_failure(e.into()))?;
                    let path: Vec<String> = path.iter().map(merkle::to_hex).collect();
                    let entry: crate::ledger::entry::Entry =
                        serde_json::from_str(&row.leaf).map_err(ServiceError::corrupt_by("ledger entry leaf"))?;
                    if !emit(record(format, &Record { entry: &entry, leaf: &row.leaf, size, path: &path }, count == 0)?) {
                        return Ok(Exported { entries: count, complete: false });
                    }
                    count += 1;
                }
            }
            let complete = emit(tail(format));
            Ok(Exported { entries: count, complete })
        }

        /// Accounting of disclosures (45 CFR 164.528) for one patient of the caller's
        /// tenant: every successful access to the patient's records, oldest first: those
        /// recorded in the sealed legacy log before logs were per tenant, then the tenant's.
        pub fn disclosures(&self, caller: &Caller, patient: &str) -> Result<Vec<Disclosure>, ServiceError> {
            self.auditor(caller, AuditAction::Export)?;
            let mut out = Vec::new();
            self.each_disclosure(caller.principal.tenant.as_str(), patient, None, &mut |d| out.push(d))?;
            Ok(out)
        }

        /// The accounting of disclosures of `patient` in `tenant`, one at a time, oldest
        /// first, restricted to entry times `[from, to)` (RFC 3339) when `period` is given.
        /// Read in batches: a long accounting never sits in memory. Callers check the
        /// caller's right first.
        pub(crate) fn each_disclosure(
            &self,
            tenant: &str,
            patient: &str,
            period: Option<(&str, &str)>,
            visit: &mut dyn FnMut(Disclosure),
        ) -> Result<(), ServiceError> {
            let filter = EntryFilter {
                log: log::LEGACY_LOG.to_owned(),
                tenant: Some(tenant.to_owned()),
                patient: Some(patient_ref(patient)?),
                outcome: Some(AuditOutcome::Success.as_str().to_owned()),
                time_from: period.map(|(from, _)| rfc3339(from, "from")).transpose()?,
                time_to: period.map(|(_, to)| rfc3339(to, "to")).transpose()?,
                ..EntryFilter::default()
            };
            let mut conn = self.store.conn()?;
            self.disclosures_in(&mut conn, &filter, visit)?;
            self.disclosures_in(&mut conn, &EntryFilter { log: tenant.to_owned(), tenant: None, ..filter }, visit)
        }

        fn disclosures_in(
            &self,
            conn: &mut crate::store::DbConnection,
            filter: &EntryFilter,
            visit: &mut dyn FnMut(Disclosure),
        ) -> Result<(), ServiceError> {
            let mut after = 0i64;
            loop {
                let batch = rows::filtered_entries(conn, filter, after, i64::MAX, EXPORT_BATCH)?;
                let Some(last) = batch.last() else { break };
                after = last.seq + 1;
                for row in batch.iter().filter(|r| r.action != AuditAction::Export.as_str()) {
                    let entry: crate::ledger::entry::Entry =
                        serde_json::from_str(&row.leaf).map_err(ServiceError::corrupt_by("ledger entry leaf"))?;
                    visit(Disclosure {
                        log: filter.log.clone(),
                        seq: entry.seq,
                        date: entry.time,
                        recipient_sub: entry.actor.sub,
                        recipient_roles: entry.actor.roles,
                        recipient_fhir_user: entry.actor.fhir_user,
                        purpose: entry.purpose_of_use,
                        action: entry.action,
                        resource: entry.resource,
                        break_glass: entry.break_glass,
                    });
                }
            }
            Ok(())
        }

        /// Consistency proof between the trees of `from` and `to` entries of the caller's
        /// tenant's log.
        pub fn ledger_consistency(&self, caller: &Caller, from: u64, to: u64) -> Result<Vec<String>, ServiceError> {
            self.auditor(caller, AuditAction::Read)?;
            let log = caller.principal.tenant.as_str();
            let mut conn = self.store.conn()?;
            let current = u64::try_from(rows::size(&mut conn, log)?).unwrap_or(0);
            if from > to || to > current {
                return Err(range_error("need from <= to <= the ledger's size"));
            }
            let proof = merkle::consistency_proof(&mut DbNodes::new(&mut conn, log), from, to).map_err(|e| read_failure(e.into()))?;
            Ok(proof.iter().map(merkle::to_hex).collect())
        }
    }
}
