//! Audit export formats. Each writes a head (carrying the signed checkpoint), one record
//! per entry (with its leaf bytes and inclusion proof) and a tail; all stream.

use crate::domain::{AuditAction, AuditOutcome};
use crate::service::ServiceError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::ledger::entry::Entry;
use crate::store::ledger::CheckpointRow;

/// Extension URLs for the proof material carried in FHIR exports.
const EXT_CHECKPOINT: &str = "https://carevault.dev/fhir/StructureDefinition/ledger-checkpoint";
const EXT_PROOF: &str = "https://carevault.dev/fhir/StructureDefinition/ledger-inclusion-proof";
const EXT_BREAK_GLASS: &str = "https://carevault.dev/fhir/StructureDefinition/break-glass-reason";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Ndjson,
    Csv,
    Fhir,
}

impl ExportFormat {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "ndjson" => Some(Self::Ndjson),
            "csv" => Some(Self::Csv),
            "fhir" => Some(Self::Fhir),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Ndjson => "application/x-ndjson",
            Self::Csv => "text/csv; charset=utf-8",
            Self::Fhir => "application/fhir+json",
        }
    }
}

/// The checkpoint an export is pinned to, and who signed it.
pub struct Head<'a> {
    pub origin: &'a str,
    pub public_key: &'a [u8],
    pub checkpoint: &'a CheckpointRow,
}

/// One entry with its proof.
pub struct Record<'a> {
    pub entry: &'a Entry,
    pub leaf: &'a str,
    pub size: u64,
    pub path: &'a [String],
}

const CSV_COLUMNS: [&str; 23] = [
    "record",
    "seq",
    "time",
    "tenant",
    "actor_sub",
    "actor_roles",
    "actor_fhir_user",
    "action",
    "resource",
    "patient",
    "outcome",
    "purpose_of_use",
    "break_glass",
    "client",
    "request_id",
    "leaf",
    "tree_size",
    "audit_path",
    "origin",
    "public_key",
    "root_hash",
    "timestamp",
    "note",
];

/// A cell that a spreadsheet would not run as a formula (CWE-1236): text starting with
/// `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'`, which spreadsheets
/// show as text. Ledger values such as a break-glass reason are free text.
fn csv_cell(value: &str) -> std::borrow::Cow<'_, str> {
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{value}").into() } else { value.into() }
}

fn csv_row(fields: &[String]) -> Result<Vec<u8>, ServiceError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(fields).map_err(ServiceError::corrupt_by("csv export row"))?;
    w.into_inner().map_err(|e| ServiceError::corrupt_by("csv export row")(e.into_error()))
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_default()
}

pub fn head(format: ExportFormat, h: &Head<'_>) -> Result<Vec<u8>, ServiceError> {
    let cp = h.checkpoint;
    let key = STANDARD.encode(h.public_key);
    match format {
        ExportFormat::Ndjson => {
            let mut line = json!({
                "type": "checkpoint", "origin": h.origin, "public_key": key, "size": cp.size,
                "root_hash": cp.root_hash, "timestamp": cp.timestamp, "note": cp.note,
            })
            .to_string()
            .into_bytes();
            line.push(b'\n');
            Ok(line)
        }
        ExportFormat::Csv => {
            let mut out = csv_row(&CSV_COLUMNS.map(str::to_owned))?;
            let mut row = vec![String::new(); CSV_COLUMNS.len()];
            row[0] = "checkpoint".into();
            row[16] = cp.size.to_string();
            row[18] = h.origin.to_owned();
            row[19] = key;
            row[20] = cp.root_hash.clone();
            row[21] = cp.timestamp.clone();
            row[22] = cp.note.clone();
            out.extend(csv_row(&row)?);
            Ok(out)
        }
        ExportFormat::Fhir => {
            let bundle = json!({
                "resourceType": "Bundle",
                "type": "collection",
                "timestamp": cp.timestamp,
                "meta": {"extension": [{"url": EXT_CHECKPOINT, "extension": [
                    {"url": "origin", "valueString": h.origin},
                    {"url": "publicKey", "valueBase64Binary": key},
                    {"url": "size", "valueString": cp.size.to_string()},
                    {"url": "rootHash", "valueString": cp.root_hash},
                    {"url": "note", "valueString": cp.note},
                ]}]},
            })
            .to_string();
            // Open the entry array: records follow, the tail closes it.
            let mut out = bundle.as_bytes()[..bundle.len() - 1].to_vec();
            out.extend_from_slice(b",\"entry\":[");
            Ok(out)
        }
    }
}

pub fn record(format: ExportFormat, r: &Record<'_>, first: bool) -> Result<Vec<u8>, ServiceError> {
    let e = r.entry;
    match format {
        // The entry object itself (SPEC section 5), with its leaf bytes and proof added; no
        // `type`, which tells the checkpoint line apart.
        ExportFormat::Ndjson => {
            let mut entry: Value = serde_json::from_str(r.leaf).map_err(ServiceError::corrupt_by("ledger entry leaf"))?;
            let fields = entry.as_object_mut().ok_or(ServiceError::corrupt("ledger entry leaf"))?;
            fields.insert("leaf".into(), json!(STANDARD.encode(r.leaf.as_bytes())));
            fields.insert("leaf_index".into(), json!(e.seq));
            fields.insert("tree_size".into(), json!(r.size));
            fields.insert("audit_path".into(), json!(r.path));
            let mut line = entry.to_string().into_bytes();
            line.push(b'\n');
            Ok(line)
        }
        // The entry's own fields can carry what a client sent (a break-glass reason, a
        // token's subject): those cells are neutralised. The proof columns are the
        // server's base64 and hex, and stay exact for offline verification.
        ExportFormat::Csv => csv_row(&[
            "entry".into(),
            e.seq.to_string(),
            e.time.clone(),
            csv_cell(&opt(&e.tenant)).into_owned(),
            csv_cell(&opt(&e.actor.sub)).into_owned(),
            csv_cell(&e.actor.roles.join(" ")).into_owned(),
            csv_cell(&opt(&e.actor.fhir_user)).into_owned(),
            e.action.as_str().to_owned(),
            csv_cell(&opt(&e.resource)).into_owned(),
            csv_cell(&opt(&e.patient)).into_owned(),
            e.outcome.as_str().to_owned(),
            csv_cell(&opt(&e.purpose_of_use)).into_owned(),
            csv_cell(&opt(&e.break_glass)).into_owned(),
            csv_cell(&opt(&e.client)).into_owned(),
            csv_cell(&opt(&e.request_id)).into_owned(),
            STANDARD.encode(r.leaf.as_bytes()),
            r.size.to_string(),
            r.path.join(" "),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]),
        ExportFormat::Fhir => {
            let mut out = if first { Vec::new() } else { b",".to_vec() };
            let resource = audit_event(r);
            out.extend(json!({"fullUrl": format!("urn:uuid:{}", uuid_for(e.seq)), "resource": resource}).to_string().into_bytes());
            Ok(out)
        }
    }
}

pub fn tail(format: ExportFormat) -> Vec<u8> {
    match format {
        ExportFormat::Fhir => b"]}".to_vec(),
        _ => Vec::new(),
    }
}

/// A stable UUID per ledger entry, for Bundle `fullUrl`s.
fn uuid_for(seq: u64) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("carevault-ledger-{seq}").as_bytes());
    let b = digest.as_ref();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&b[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x50;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(bytes).to_string()
}

/// An R4 AuditEvent following the IHE BALP pattern: RESTful operation type, the FHIR
/// interaction as subtype, the CRUDE action, the agent, the observer, the entities.
fn audit_event(r: &Record<'_>) -> Value {
    let e = r.entry;
    let (subtype, action) = match e.action {
        AuditAction::Create => ("create", "C"),
        AuditAction::Read => ("read", "R"),
        AuditAction::Vread => ("vread", "R"),
        AuditAction::History => ("history-instance", "R"),
        AuditAction::Search => ("search-type", "E"),
        AuditAction::Update => ("update", "U"),
        AuditAction::Delete => ("delete", "D"),
        other => (other.as_str(), "E"),
    };
    let outcome = match e.outcome {
        AuditOutcome::Success => "0",
        AuditOutcome::Denied => "4",
        AuditOutcome::Error => "8",
    };
    let event_type = if e.action == AuditAction::Login {
        json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114", "display": "User Authentication"})
    } else {
        json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"})
    };
    let mut agent = json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
        "requestor": true,
        "role": e.actor.roles.iter().map(|r| json!({"text": r})).collect::<Vec<_>>(),
    });
    let mut who = serde_json::Map::new();
    if let Some(sub) = &e.actor.sub {
        who.insert("identifier".into(), json!({"value": sub}));
    }
    if let Some(user) = &e.actor.fhir_user {
        who.insert("reference".into(), json!(user));
    }
    if !who.is_empty() {
        agent["who"] = Value::Object(who);
    }
    if let Some(client) = &e.client {
        agent["network"] = json!({"address": client, "type": "2"});
    }
    let mut entities = Vec::new();
    if let Some(resource) = &e.resource {
        entities.push(json!({"what": {"reference": resource},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"}}));
    }
    if let Some(patient) = &e.patient {
        entities.push(json!({"what": {"reference": patient},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}}));
    }
    let mut extensions = vec![json!({"url": EXT_PROOF, "extension": [
        {"url": "leafIndex", "valueString": e.seq.to_string()},
        {"url": "treeSize", "valueString": r.size.to_string()},
        {"url": "leaf", "valueBase64Binary": STANDARD.encode(r.leaf.as_bytes())},
        {"url": "auditPath", "valueString": r.path.join(" ")},
    ]})];
    if let Some(reason) = &e.break_glass {
        extensions.push(json!({"url": EXT_BREAK_GLASS, "valueString": reason}));
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": format!("ledger-{}", e.seq),
        "extension": extensions,
        "type": event_type,
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype}],
        "action": action,
        "recorded": e.time,
        "outcome": outcome,
        "agent": [agent],
        "source": {"observer": {"display": "CareVault audit ledger"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}]},
    });
    let mut purposes = Vec::new();
    if let Some(p) = &e.purpose_of_use {
        purposes.push(json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p}]}));
    }
    if e.break_glass.is_some() {
        purposes.push(json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG"}]}));
    }
    if !purposes.is_empty() {
        event["purposeOfEvent"] = json!(purposes);
    }
    if !entities.is_empty() {
        event["entity"] = json!(entities);
    }
    event
}
