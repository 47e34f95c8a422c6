//! `carevault seed`: loads a synthetic clinic (by default `tests/fixtures/clinic.json`,
//! built in) into a tenant through the use cases, so that every record takes the normal
//! write path (validated, sealed, ledgered, in the change feed). Owns reading a fixture
//! Bundle ([`Fixture`]: `urn:uuid:` entries in write order, who writes each one) and
//! rewriting its `urn:uuid:` references to the ids the server assigned; the HTTP loader of
//! the integration tests reuses both.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;

use serde_json::Value;

use super::fail;
use crate::config::{Environment, Settings};
use crate::domain::{Principal, PurposeOfUse, Reference, ResourceType, Role, TenantId};
use crate::service::{Caller, ServiceError, Services};

/// The synthetic clinic (see `tests/fixtures/README.md`).
pub const CLINIC: &str = include_str!("../../tests/fixtures/clinic.json");
/// The tenant `seed` fills when none is named: the development tenant the README and the
/// server's development hint use.
pub const DEFAULT_TENANT: &str = "demo";
/// The token subject every seeding write is made (and ledgered) as.
pub const SEED_SUB: &str = "carevault-seed";
/// NPI identifiers: a tenant that already has a Practitioner with one of the fixture's
/// NPIs is not seeded again.
pub const NPI_SYSTEM: &str = "http://hl7.org/fhir/sid/us-npi";
/// The identifier system of the fixture's stable entry names (`patient-juniper`, ...).
pub const LABEL_SYSTEM: &str = "https://carevault.example.org/fhir/fixture-label";

/// One entry of a fixture Bundle.
#[derive(Debug, Clone)]
pub struct FixtureEntry {
    /// `urn:uuid:...`
    pub full_url: String,
    pub resource_type: String,
    /// As written in the fixture: `urn:uuid:` references, no id.
    pub resource: Value,
}

impl FixtureEntry {
    /// The entry's stable name: the value of its [`LABEL_SYSTEM`] identifier, if any.
    pub fn label(&self) -> Option<&str> {
        identifiers(&self.resource).find(|(system, _)| *system == LABEL_SYSTEM).map(|(_, value)| value)
    }

    /// The `urn:uuid:` patient whose compartment a clinical record is in (`subject`, or
    /// `patient` for an AllergyIntolerance).
    pub fn patient(&self) -> Option<&str> {
        ["subject", "patient"]
            .iter()
            .find_map(|element| self.resource.get(*element).and_then(|r| r.get("reference")).and_then(Value::as_str))
    }

    /// The `urn:uuid:` of a Patient's first `generalPractitioner`.
    pub fn first_gp(&self) -> Option<&str> {
        self.resource.get("generalPractitioner")?.get(0)?.get("reference")?.as_str()
    }
}

/// `(system, value)` of each identifier of a resource.
fn identifiers(resource: &Value) -> impl Iterator<Item = (&str, &str)> {
    resource
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| Some((i.get("system").and_then(Value::as_str).unwrap_or(""), i.get("value").and_then(Value::as_str)?)))
}

/// Who writes an entry, so that each write is one the access policy allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Author {
    /// Practitioners: the directory is an admin's to write.
    Admin,
    /// Patients: registration, by the front desk.
    FrontDesk,
    /// Clinical records: a clinician acting as this Practitioner (`urn:uuid:` of the
    /// entry), the first general practitioner of the record's patient, so that the care
    /// relationship holds.
    Clinician(String),
}

/// A fixture Bundle of type `collection`, its entries in write order: Practitioners, then
/// Patients, then everything else, each group in the order of the file. Every `urn:uuid:`
/// reference resolves to an entry written before the one that holds it.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub entries: Vec<FixtureEntry>,
    by_url: HashMap<String, usize>,
}

fn write_rank(resource_type: &str) -> u8 {
    match resource_type {
        "Practitioner" => 0,
        "Patient" => 1,
        _ => 2,
    }
}

/// Every `reference` string in `value`.
pub fn references(value: &Value) -> Vec<&str> {
    let mut out = Vec::new();
    fn walk<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match v {
                        Value::String(s) if key == "reference" => out.push(s),
                        other => walk(other, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(value, &mut out);
    out
}

impl Fixture {
    /// The built-in clinic.
    pub fn clinic() -> Result<Self, String> {
        Self::parse(CLINIC)
    }

    /// Reads and checks a fixture: a `collection` Bundle whose entries each have a
    /// `urn:uuid:` fullUrl (no two alike) and a resource without an id, whose `urn:uuid:`
    /// references all resolve to entries written earlier.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bundle: Value = serde_json::from_str(text).map_err(|e| format!("the fixture is not JSON: {e}"))?;
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err("the fixture must be a FHIR Bundle".into());
        }
        if bundle.get("type").and_then(Value::as_str) != Some("collection") {
            return Err("the fixture Bundle must be of type 'collection'".into());
        }
        let raw = bundle.get("entry").and_then(Value::as_array).ok_or("the fixture Bundle has no entries")?;
        let mut entries = Vec::with_capacity(raw.len());
        for (i, entry) in raw.iter().enumerate() {
            let full_url = entry.get("fullUrl").and_then(Value::as_str).unwrap_or("");
            let uuid_ok = full_url.strip_prefix("urn:uuid:").is_some_and(|u| uuid::Uuid::parse_str(u).is_ok());
            if !uuid_ok {
                return Err(format!("entry {i}: fullUrl must be urn:uuid:<uuid>"));
            }
            let resource =
                entry.get("resource").filter(|r| r.is_object()).ok_or_else(|| format!("entry {i} ({full_url}) has no resource"))?;
            let resource_type = resource
                .get("resourceType")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("entry {i} ({full_url}): resourceType is missing"))?;
            if resource.get("id").is_some() {
                return Err(format!("entry {i} ({full_url}): the server assigns ids; leave 'id' out"));
            }
            entries.push(FixtureEntry {
                full_url: full_url.to_owned(),
                resource_type: resource_type.to_owned(),
                resource: resource.clone(),
            });
        }
        entries.sort_by_key(|e| write_rank(&e.resource_type));
        let mut by_url = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            if by_url.insert(entry.full_url.clone(), i).is_some() {
                return Err(format!("{} is the fullUrl of more than one entry", entry.full_url));
            }
        }
        for (i, entry) in entries.iter().enumerate() {
            for target in references(&entry.resource).into_iter().filter(|r| r.starts_with("urn:")) {
                match by_url.get(target) {
                    None => return Err(format!("{} ({}) refers to {target}, which is no entry", entry.full_url, entry.resource_type)),
                    Some(j) if *j >= i => {
                        return Err(format!(
                            "{} ({}) refers to {target} ({}), which is written after it (Practitioners, then Patients, then the rest in file order)",
                            entry.full_url, entry.resource_type, entries[*j].resource_type
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(Self { entries, by_url })
    }

    pub fn entry(&self, full_url: &str) -> Option<&FixtureEntry> {
        self.by_url.get(full_url).map(|i| &self.entries[*i])
    }

    /// Who writes `entry`: see [`Author`].
    pub fn author(&self, entry: &FixtureEntry) -> Result<Author, String> {
        match entry.resource_type.as_str() {
            "Practitioner" => Ok(Author::Admin),
            "Patient" => Ok(Author::FrontDesk),
            _ => {
                let patient = entry.patient().and_then(|p| self.entry(p)).filter(|p| p.resource_type == "Patient").ok_or_else(|| {
                    format!("{} ({}) names no Patient entry as its subject or patient", entry.full_url, entry.resource_type)
                })?;
                let gp =
                    patient.first_gp().and_then(|gp| self.entry(gp)).filter(|gp| gp.resource_type == "Practitioner").ok_or_else(|| {
                        format!("{} (Patient) has no Practitioner entry as its first generalPractitioner", patient.full_url)
                    })?;
                Ok(Author::Clinician(gp.full_url.clone()))
            }
        }
    }

    /// The NPIs of the fixture's Practitioners.
    pub fn npis(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|e| e.resource_type == "Practitioner")
            .flat_map(|e| identifiers(&e.resource).filter(|(system, _)| *system == NPI_SYSTEM).map(|(_, value)| value))
            .collect()
    }

    /// How many entries of each type, in write order.
    pub fn counts(&self) -> Vec<(&str, usize)> {
        let mut out: Vec<(&str, usize)> = Vec::new();
        for entry in &self.entries {
            match out.iter_mut().find(|(t, _)| *t == entry.resource_type) {
                Some((_, n)) => *n += 1,
                None => out.push((&entry.resource_type, 1)),
            }
        }
        out
    }
}

/// `resource` with each `urn:uuid:` reference replaced by the `Type/id` that `created`
/// maps it to; fails on one not (yet) created.
pub fn rewrite_references(resource: &Value, created: &HashMap<String, String>) -> Result<Value, String> {
    let mut out = resource.clone();
    rewrite_in_place(&mut out, created)?;
    Ok(out)
}

fn rewrite_in_place(value: &mut Value, created: &HashMap<String, String>) -> Result<(), String> {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    Value::String(s) if key == "reference" && s.starts_with("urn:") => {
                        *s = created.get(s.as_str()).cloned().ok_or_else(|| format!("{s} has not been created"))?;
                    }
                    other => rewrite_in_place(other, created)?,
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|v| rewrite_in_place(v, created)),
        _ => Ok(()),
    }
}

/// The caller of a seeding write: `sub` [`SEED_SUB`], one role, the purpose of use that
/// role writes for.
fn caller(tenant: &TenantId, role: Role, fhir_user: Option<Reference>, request_id: &str) -> Caller {
    let purpose = match role {
        Role::Admin => "HSYSADMIN",
        Role::FrontDesk => "PATADMIN",
        _ => "TREAT",
    };
    Caller {
        principal: Principal { sub: SEED_SUB.to_owned(), tenant: tenant.clone(), roles: vec![role], fhir_user, expires_at: None },
        break_glass: None,
        purpose: PurposeOfUse::parse(purpose).unwrap_or_default(),
        request_id: request_id.to_owned(),
        client: "cli".into(),
    }
}

/// A use-case error with its issues (element paths and server-written text only).
fn describe(error: &ServiceError) -> String {
    match error {
        ServiceError::Invalid(issues) | ServiceError::BadRequest(issues) => {
            let shown: Vec<String> = issues
                .iter()
                .map(|i| match &i.expression {
                    Some(path) => format!("{path}: {}", i.diagnostics),
                    None => i.diagnostics.clone(),
                })
                .collect();
            format!("{error}: {}", shown.join("; "))
        }
        other => other.to_string(),
    }
}

/// How an entry is named in messages: its label, else its fullUrl.
fn name_of(entry: &FixtureEntry) -> String {
    format!("{} {}", entry.resource_type, entry.label().unwrap_or(&entry.full_url))
}

/// `Dr. Rowan Synthwell`: prefix, given names and family of the first name.
fn display_name(resource: &Value) -> Option<String> {
    let name = resource.get("name")?.get(0)?;
    let words = |element: &str| -> Vec<String> {
        name.get(element).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
    };
    let mut parts = words("prefix");
    parts.extend(words("given"));
    parts.extend(name.get("family").and_then(Value::as_str).map(str::to_owned));
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// A `--sub` for a practitioner's token that pastes safely into a shell.
fn token_sub(entry: &FixtureEntry, id: &str) -> String {
    match entry.label() {
        Some(label) if !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) => {
            label.to_owned()
        }
        _ => format!("practitioner-{id}"),
    }
}

/// Everything that can be checked before anything is written: every type is served, every
/// resource is valid FHIR R4 for it, and every entry has an author.
fn check(fixture: &Fixture) -> Result<Vec<(ResourceType, Author)>, String> {
    let validator = crate::fhir::FhirValidator::new()?;
    fixture
        .entries
        .iter()
        .map(|entry| {
            let rtype = ResourceType::from_name(&entry.resource_type)
                .ok_or_else(|| format!("{}: this server does not serve {} resources", name_of(entry), entry.resource_type))?;
            validator
                .validate(rtype, &entry.resource)
                .map_err(|issues| describe(&ServiceError::Invalid(issues)))
                .map_err(|e| format!("{}: {e}", name_of(entry)))?;
            Ok((rtype, fixture.author(entry)?))
        })
        .collect()
}

/// `carevault seed`: see the module documentation. Refused in production, and for a
/// tenant that already holds a Practitioner with one of the fixture's NPIs; nothing is
/// written unless every entry passes [`check`].
pub fn seed(settings: &Settings, tenant: &str, file: Option<&std::path::Path>) -> ExitCode {
    if settings.env == Environment::Production {
        return fail("`seed` loads synthetic records and is refused in production");
    }
    let tenant = match TenantId::parse(tenant) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let (source, fixture) = match file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => (path.display().to_string(), Fixture::parse(&text)),
            Err(e) => return fail(format!("{}: {e}", path.display())),
        },
        None => ("the built-in clinic".to_owned(), Fixture::clinic()),
    };
    let fixture = match fixture {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let plan = match check(&fixture) {
        Ok(p) => p,
        Err(e) => return fail(format!("{source}: {e}; nothing was written")),
    };
    let services = match crate::startup::services(settings, 2) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let request_id = uuid::Uuid::new_v4().to_string();
    if let Err(e) = refuse_a_second_seeding(&services, &tenant, &fixture, &request_id) {
        return fail(e);
    }
    let created = match write(&services, &tenant, &fixture, &plan, &request_id) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    println!("seeded tenant {tenant} from {source}: {} resources", fixture.entries.len());
    for (resource_type, n) in fixture.counts() {
        println!("  {resource_type:<20} {n:>3}");
    }
    println!("a clinician token for each practitioner (it reads and writes the records of that practitioner's patients):");
    for entry in fixture.entries.iter().filter(|e| e.resource_type == "Practitioner") {
        let reference = &created[&entry.full_url];
        let id = reference.rsplit('/').next().unwrap_or_default();
        let patients = fixture.entries.iter().filter(|p| p.resource_type == "Patient" && p.first_gp() == Some(&entry.full_url)).count();
        let name = display_name(&entry.resource).unwrap_or_else(|| reference.clone());
        println!("  # {name}, general practitioner of {patients} patient(s)");
        println!("  carevault token --sub {} --tenant {tenant} --role clinician --fhir-user {reference}", token_sub(entry, id));
    }
    ExitCode::SUCCESS
}

/// Err when the tenant already has a Practitioner with one of the fixture's NPIs.
fn refuse_a_second_seeding(services: &Services, tenant: &TenantId, fixture: &Fixture, request_id: &str) -> Result<(), String> {
    let npis = fixture.npis();
    if npis.is_empty() {
        return Ok(());
    }
    let escape = |v: &str| v.replace('\\', "\\\\").replace(',', "\\,");
    let wanted: Vec<String> = npis.iter().map(|npi| format!("{}|{}", escape(NPI_SYSTEM), escape(npi))).collect();
    let params = [("identifier".to_owned(), wanted.join(",")), ("_count".to_owned(), "1".to_owned())];
    let admin = caller(tenant, Role::Admin, None, request_id);
    let found = services.resources().search(&admin, ResourceType::Practitioner, &params).map_err(|e| describe(&e))?;
    if found.total > 0 {
        return Err(format!(
            "tenant {tenant} already has a Practitioner with one of the fixture's NPIs ({}): it has been seeded before; nothing was written",
            npis.join(", ")
        ));
    }
    Ok(())
}

/// Creates every entry in order; returns each fullUrl's `Type/id`.
fn write(
    services: &Services,
    tenant: &TenantId,
    fixture: &Fixture,
    plan: &[(ResourceType, Author)],
    request_id: &str,
) -> Result<HashMap<String, String>, String> {
    let resources = services.resources();
    let mut created: HashMap<String, String> = HashMap::new();
    let admin = caller(tenant, Role::Admin, None, request_id);
    let front_desk = caller(tenant, Role::FrontDesk, None, request_id);
    let mut clinicians: BTreeMap<String, Caller> = BTreeMap::new();
    for (n, (entry, (rtype, author))) in fixture.entries.iter().zip(plan).enumerate() {
        let partial = |e: String| format!("{} failed: {e}; the {n} resource(s) written before it stay in tenant {tenant}", name_of(entry));
        let who = match author {
            Author::Admin => &admin,
            Author::FrontDesk => &front_desk,
            Author::Clinician(practitioner) => {
                if !clinicians.contains_key(practitioner) {
                    let me = created
                        .get(practitioner)
                        .and_then(|r| Reference::parse(r).ok())
                        .ok_or_else(|| partial(format!("{practitioner} was not created")))?;
                    clinicians.insert(practitioner.clone(), caller(tenant, Role::Clinician, Some(me), request_id));
                }
                &clinicians[practitioner]
            }
        };
        let body = rewrite_references(&entry.resource, &created).map_err(partial)?;
        let written = resources.create(who, *rtype, body).map_err(|e| partial(describe(&e)))?;
        created.insert(entry.full_url.clone(), format!("{}/{}", rtype.name(), written.id));
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle(entries: Value) -> String {
        json!({"resourceType": "Bundle", "type": "collection", "entry": entries}).to_string()
    }

    const P1: &str = "urn:uuid:00000000-0000-4000-8000-000000000001";
    const P2: &str = "urn:uuid:00000000-0000-4000-8000-000000000002";
    const P3: &str = "urn:uuid:00000000-0000-4000-8000-000000000003";

    #[test]
    fn the_clinic_parses_in_write_order_with_an_author_for_every_entry() {
        let clinic = Fixture::clinic().unwrap();
        let ranks: Vec<u8> = clinic.entries.iter().map(|e| write_rank(&e.resource_type)).collect();
        assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "practitioners, then patients, then the rest");
        assert_eq!(clinic.npis().len(), 2);
        for entry in &clinic.entries {
            let author = clinic.author(entry).unwrap();
            if let Author::Clinician(gp) = author {
                assert_eq!(clinic.entry(&gp).unwrap().resource_type, "Practitioner");
            }
            assert!(entry.label().is_some(), "{} has a label", entry.full_url);
        }
    }

    #[test]
    fn entries_are_ordered_and_references_rewritten() {
        let text = bundle(json!([
            {"fullUrl": P3, "resource": {"resourceType": "Observation", "subject": {"reference": P2}}},
            {"fullUrl": P2, "resource": {"resourceType": "Patient", "generalPractitioner": [{"reference": P1}]}},
            {"fullUrl": P1, "resource": {"resourceType": "Practitioner", "identifier": [{"system": NPI_SYSTEM, "value": "9990000017"}]}},
        ]));
        let fixture = Fixture::parse(&text).unwrap();
        let order: Vec<&str> = fixture.entries.iter().map(|e| e.resource_type.as_str()).collect();
        assert_eq!(order, ["Practitioner", "Patient", "Observation"]);
        assert_eq!(fixture.author(&fixture.entries[2]).unwrap(), Author::Clinician(P1.to_owned()));
        assert_eq!(fixture.counts(), [("Practitioner", 1), ("Patient", 1), ("Observation", 1)]);
        let created: HashMap<String, String> = [(P2.to_owned(), "Patient/abc".to_owned())].into();
        let rewritten = rewrite_references(&fixture.entries[2].resource, &created).unwrap();
        assert_eq!(rewritten["subject"]["reference"], "Patient/abc");
        assert!(rewrite_references(&fixture.entries[1].resource, &created).is_err(), "P1 is not created yet");
    }

    #[test]
    fn broken_fixtures_are_refused() {
        let dangling =
            bundle(json!([{"fullUrl": P1, "resource": {"resourceType": "Patient", "generalPractitioner": [{"reference": P2}]}}]));
        assert!(Fixture::parse(&dangling).unwrap_err().contains("no entry"));
        let twice = bundle(json!([
            {"fullUrl": P1, "resource": {"resourceType": "Patient"}},
            {"fullUrl": P1, "resource": {"resourceType": "Patient"}},
        ]));
        assert!(Fixture::parse(&twice).unwrap_err().contains("more than one"));
        let forward = bundle(json!([
            {"fullUrl": P1, "resource": {"resourceType": "Observation", "hasMember": [{"reference": P2}]}},
            {"fullUrl": P2, "resource": {"resourceType": "Observation"}},
        ]));
        assert!(Fixture::parse(&forward).unwrap_err().contains("written after"));
        let not_urn = bundle(json!([{"fullUrl": "Patient/1", "resource": {"resourceType": "Patient"}}]));
        assert!(Fixture::parse(&not_urn).is_err());
        let with_id = bundle(json!([{"fullUrl": P1, "resource": {"resourceType": "Patient", "id": "x"}}]));
        assert!(Fixture::parse(&with_id).unwrap_err().contains("ids"));
        let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": []}).to_string();
        assert!(Fixture::parse(&transaction).is_err());
        let orphan = bundle(json!([{"fullUrl": P1, "resource": {"resourceType": "Observation"}}]));
        let fixture = Fixture::parse(&orphan).unwrap();
        assert!(fixture.author(&fixture.entries[0]).is_err(), "a clinical record needs a patient with a GP");
    }

    #[test]
    fn practitioner_names_and_token_subjects() {
        let clinic = Fixture::clinic().unwrap();
        let first = &clinic.entries[0];
        assert_eq!(display_name(&first.resource).as_deref(), Some("Dr. Rowan Synthwell"));
        assert_eq!(token_sub(first, "x"), "practitioner-synthwell");
        let unlabelled = FixtureEntry { full_url: P1.into(), resource_type: "Practitioner".into(), resource: json!({}) };
        assert_eq!(token_sub(&unlabelled, "abc"), "practitioner-abc");
    }
}
