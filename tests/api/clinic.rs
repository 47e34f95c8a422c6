//! The synthetic clinic of `tests/fixtures/clinic.json` (who is in it, and on which dates:
//! `tests/fixtures/README.md`), for the clinical tests: [`load_clinic`] creates it over the
//! HTTP API, each record with the token the access policy wants for it, and returns the
//! ids the server assigned by the fixture's entry labels. Also checks that the fixture is
//! valid R4 and self-consistent, and that `carevault seed` loads it once and only once.

use std::collections::{BTreeMap, HashMap, HashSet};

use carevault::cli::seed::{Author, CLINIC, Fixture, LABEL_SYSTEM, rewrite_references};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

/// The practitioner whose patients are Juniper, Otto and Priya.
pub const SYNTHWELL: &str = "practitioner-synthwell";
/// The practitioner whose patient is Tobias.
pub const TESTCASE: &str = "practitioner-testcase";
pub const JUNIPER: &str = "patient-juniper";
pub const OTTO: &str = "patient-otto";
pub const PRIYA: &str = "patient-priya";
pub const TOBIAS: &str = "patient-tobias";

/// The MRN system of the clinic's patients.
pub const MRN_SYSTEM: &str = "urn:oid:2.16.840.1.113883.19.5";

/// The clinic as created on one server: every entry by its label
/// (`patient-juniper`, `vitals-juniper-bp-2024-02-13`, ...; see the fixture's README).
pub struct Clinic {
    /// label → `Type/id`
    refs: BTreeMap<String, String>,
    /// patient label → the label of its (first) general practitioner
    gps: BTreeMap<String, String>,
}

impl Clinic {
    /// `Type/id` of the entry labelled `label`.
    pub fn reference(&self, label: &str) -> &str {
        self.refs.get(label).unwrap_or_else(|| panic!("the clinic has no entry labelled {label}"))
    }

    /// The server's id of the entry labelled `label`.
    pub fn id(&self, label: &str) -> &str {
        self.reference(label).rsplit_once('/').map(|(_, id)| id).unwrap_or_default()
    }

    /// The labels that start with `prefix` (`"vitals-juniper-"`, `"lab-"`), sorted.
    pub fn labels(&self, prefix: &str) -> Vec<&str> {
        self.refs.keys().filter(|l| l.starts_with(prefix)).map(String::as_str).collect()
    }

    /// How many records the clinic has.
    pub fn count(&self) -> usize {
        self.refs.len()
    }

    /// The label of a patient's general practitioner.
    pub fn gp_of(&self, patient: &str) -> &str {
        self.gps.get(patient).unwrap_or_else(|| panic!("{patient} is no patient of the clinic"))
    }

    /// A clinician token acting as the practitioner labelled `practitioner`.
    pub fn clinician(&self, app: &TestApp, practitioner: &str) -> Who {
        app.clinician(self.id(practitioner))
    }

    /// A clinician token of `patient`'s general practitioner (in a care relationship with it).
    pub fn gp_token(&self, app: &TestApp, patient: &str) -> Who {
        self.clinician(app, self.gp_of(patient))
    }

    /// A clinician token of the practitioner who is *not* `patient`'s general practitioner.
    pub fn other_clinician(&self, app: &TestApp, patient: &str) -> Who {
        let other = if self.gp_of(patient) == SYNTHWELL { TESTCASE } else { SYNTHWELL };
        self.clinician(app, other)
    }
}

/// Creates the clinic on `app` (tenant [`TENANT`]) over HTTP: Practitioners as an admin,
/// Patients as the front desk, clinical records as the patient's general practitioner;
/// each `urn:uuid:` reference rewritten to the id created for it. Fails the test unless
/// every create answers 201.
pub async fn load_clinic(app: &TestApp) -> Clinic {
    let fixture = Fixture::clinic().expect("the clinic fixture reads");
    let (admin, front_desk) = (app.admin(), app.front_desk());
    let mut created: HashMap<String, String> = HashMap::new();
    let mut clinicians: HashMap<String, Who> = HashMap::new();
    let mut refs = BTreeMap::new();
    for entry in &fixture.entries {
        let who = match fixture.author(entry).expect("every entry has an author") {
            Author::Admin => admin.clone(),
            Author::FrontDesk => front_desk.clone(),
            Author::Clinician(gp) => {
                let id = created[&gp].rsplit_once('/').expect("Type/id").1.to_owned();
                clinicians.entry(gp).or_insert_with(|| app.clinician(&id)).clone()
            }
        };
        let body = rewrite_references(&entry.resource, &created).expect("references resolve");
        let id = app.create(&who, &body).await;
        let reference = format!("{}/{id}", entry.resource_type);
        created.insert(entry.full_url.clone(), reference.clone());
        refs.insert(entry.label().expect("every entry has a label").to_owned(), reference);
    }
    let gps = fixture
        .entries
        .iter()
        .filter(|e| e.resource_type == "Patient")
        .map(|p| {
            let gp = fixture.entry(p.first_gp().expect("a GP")).expect("the GP is an entry");
            (p.label().unwrap().to_owned(), gp.label().unwrap().to_owned())
        })
        .collect();
    Clinic { refs, gps }
}

/// Every `reference` string in a resource.
fn references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match v {
                    Value::String(s) if key == "reference" => out.push(s.clone()),
                    other => references(other, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}

/// The dates a clinical record is about (`YYYY...`), for the spread checks.
fn clinical_dates(resource: &Value) -> Vec<String> {
    ["effectiveDateTime", "authoredOn", "onsetDateTime", "recordedDate"]
        .iter()
        .filter_map(|k| resource.get(*k))
        .chain(resource.get("period").and_then(|p| p.get("start")))
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_clinic_fixture_is_valid_r4_and_self_consistent() {
    let bundle: Value = serde_json::from_str(CLINIC).unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "collection");
    let entries = bundle["entry"].as_array().unwrap();
    assert!((60..=90).contains(&entries.len()), "a small clinic: {} entries", entries.len());
    let validator = carevault::fhir::FhirValidator::for_definitions(&[
        "Patient",
        "Practitioner",
        "Encounter",
        "Observation",
        "Condition",
        "AllergyIntolerance",
        "MedicationRequest",
    ])
    .unwrap();
    let bogus = serde_json::json!({"resourceType": "Observation", "status": "bogus", "code": {}});
    assert!(validator.validate_schema("Observation", &bogus).is_err(), "the validator judges clinical types");

    let mut types: HashMap<String, &Value> = HashMap::new();
    let mut labels = HashSet::new();
    for entry in entries {
        let full_url = entry["fullUrl"].as_str().unwrap();
        let uuid = full_url.strip_prefix("urn:uuid:").unwrap_or_else(|| panic!("{full_url} is a urn:uuid"));
        uuid::Uuid::parse_str(uuid).unwrap();
        let resource = &entry["resource"];
        let rtype = resource["resourceType"].as_str().unwrap();
        assert!(resource.get("id").is_none(), "{full_url}: the server assigns ids");
        if let Err(issues) = validator.validate_schema(rtype, resource) {
            panic!("{full_url} ({rtype}) is not valid FHIR R4: {issues:?}");
        }
        let profiles = resource["meta"]["profile"].as_array().unwrap_or_else(|| panic!("{full_url} names its US Core profile"));
        assert!(profiles.iter().all(|p| p.as_str().unwrap().starts_with("http://hl7.org/fhir/us/core/StructureDefinition/us-core-")));
        let label = resource["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["system"] == LABEL_SYSTEM)
            .and_then(|i| i["value"].as_str())
            .unwrap_or_else(|| panic!("{full_url} has a label"));
        assert!(labels.insert(label.to_owned()), "label {label} is used twice");
        assert!(types.insert(full_url.to_owned(), resource).is_none(), "fullUrl {full_url} is used twice");
    }

    // Every reference is a urn:uuid: of an entry, of the type the element allows.
    for (full_url, resource) in &types {
        let mut refs = Vec::new();
        references(resource, &mut refs);
        for r in refs {
            assert!(types.contains_key(&r), "{full_url} refers to {r}, which is no entry");
            assert_ne!(&r, full_url, "{full_url} refers to itself");
        }
        for element in ["subject", "patient"] {
            if let Some(r) = resource.get(element) {
                assert_eq!(types[r["reference"].as_str().unwrap()]["resourceType"], "Patient", "{full_url}.{element}");
            }
        }
        for element in ["requester", "recorder"] {
            if let Some(r) = resource.get(element) {
                assert_eq!(types[r["reference"].as_str().unwrap()]["resourceType"], "Practitioner", "{full_url}.{element}");
            }
        }
        if let Some(r) = resource.get("encounter") {
            let encounter = types[r["reference"].as_str().unwrap()];
            assert_eq!(encounter["resourceType"], "Encounter", "{full_url}.encounter");
            assert_eq!(encounter["subject"], resource["subject"], "{full_url}: its encounter is its patient's");
        }
    }

    // The shape the README describes.
    let of = |t: &str| types.values().filter(|r| r["resourceType"] == t).collect::<Vec<_>>();
    let counts: BTreeMap<&str, usize> =
        ["Practitioner", "Patient", "Encounter", "Observation", "Condition", "AllergyIntolerance", "MedicationRequest"]
            .into_iter()
            .map(|t| (t, of(t).len()))
            .collect();
    assert_eq!(
        counts,
        [
            ("AllergyIntolerance", 4),
            ("Condition", 6),
            ("Encounter", 12),
            ("MedicationRequest", 8),
            ("Observation", 33),
            ("Patient", 4),
            ("Practitioner", 2)
        ]
        .into()
    );
    let mut patients_per_gp: BTreeMap<String, usize> = BTreeMap::new();
    for patient in of("Patient") {
        let gp = patient["generalPractitioner"][0]["reference"].as_str().unwrap();
        *patients_per_gp.entry(gp.to_owned()).or_default() += 1;
    }
    let mut spread: Vec<usize> = patients_per_gp.values().copied().collect();
    spread.sort();
    assert_eq!(spread, [1, 3], "three patients with one practitioner, one with the other");
    for (patient_url, _) in types.iter().filter(|(_, r)| r["resourceType"] == "Patient") {
        let own: Vec<&&Value> = types
            .values()
            .filter(|r| [&r["subject"], &r["patient"]].iter().any(|x| x["reference"].as_str() == Some(patient_url)))
            .collect();
        let encounters = own.iter().filter(|r| r["resourceType"] == "Encounter").count();
        assert!((2..=3).contains(&encounters), "{patient_url}: {encounters} encounters");
        let years: HashSet<String> = own.iter().flat_map(|r| clinical_dates(r)).map(|d| d[..4].to_owned()).collect();
        for year in ["2024", "2025", "2026"] {
            assert!(years.contains(year), "{patient_url} has records in {year}: {years:?}");
        }
        for t in ["Observation", "Condition", "AllergyIntolerance", "MedicationRequest"] {
            assert!(own.iter().any(|r| r["resourceType"] == t), "{patient_url} has a {t}");
        }
    }
    let statuses: HashSet<&str> = of("Observation").iter().map(|o| o["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["final", "amended"].into());
    let intents: HashSet<&str> = of("MedicationRequest").iter().map(|m| m["intent"].as_str().unwrap()).collect();
    assert_eq!(intents, ["order", "plan"].into());

    // The reader `seed` and `load_clinic` use accepts it, with an author for every entry.
    let fixture = Fixture::clinic().unwrap();
    assert_eq!(fixture.entries.len(), entries.len());
    assert!(fixture.entries.iter().all(|e| fixture.author(e).is_ok()));
}

/// The `Practitioner/ID` that the token line of `sub` in `seed`'s summary names.
fn seeded_practitioner(summary: &str, sub: &str) -> String {
    let line =
        summary.lines().find(|l| l.contains(&format!("--sub {sub} "))).unwrap_or_else(|| panic!("no token line for {sub}: {summary}"));
    line.rsplit(' ').next().unwrap().to_owned()
}

#[tokio::test]
async fn seed_loads_the_clinic_once_and_its_patients_read_back_as_their_gp() {
    let app = spawn_app().await;
    let (ok, summary) = app.cli(&["seed", "--tenant", TENANT]);
    assert!(ok, "{summary}");
    assert!(summary.contains("69 resources"), "{summary}");
    let synthwell = seeded_practitioner(&summary, SYNTHWELL);
    let testcase = seeded_practitioner(&summary, TESTCASE);
    assert!(synthwell.starts_with("Practitioner/") && testcase.starts_with("Practitioner/"), "{summary}");
    let gp = app.clinician(synthwell.trim_start_matches("Practitioner/"));

    let found = app.get(&gp, &format!("/fhir/Patient?identifier={MRN_SYSTEM}%7C100001")).await;
    assert_eq!(found.status(), StatusCode::OK);
    let found: Value = found.json().await.unwrap();
    let ids = entry_ids(&found);
    assert_eq!(ids.len(), 1, "{found}");
    let read = app.get(&gp, &format!("/fhir/Patient/{}", ids[0])).await;
    assert_eq!(read.status(), StatusCode::OK);
    let patient: Value = read.json().await.unwrap();
    assert_eq!(patient["name"][0]["family"], "Fixture");
    assert_eq!(patient["generalPractitioner"][0]["reference"], synthwell.as_str());
    // Tobias's practitioner is not Juniper's.
    let other = app.clinician(testcase.trim_start_matches("Practitioner/"));
    expect_outcome(app.get(&other, &format!("/fhir/Patient/{}", ids[0])).await, StatusCode::FORBIDDEN).await;

    // Every write took the normal path: ledgered as the seeding principal, in the role
    // the policy wants for it.
    let writes: Vec<(String, String)> = ledger_entries(&app)
        .await
        .iter()
        .filter(|e| e["action"] == "create")
        .map(|e| {
            assert_eq!(e["actor"]["sub"], "carevault-seed");
            (e["actor"]["roles"][0].as_str().unwrap().to_owned(), e["resource"].as_str().unwrap().split('/').next().unwrap().to_owned())
        })
        .collect();
    assert_eq!(writes.len(), 69);
    for (role, rtype) in &writes {
        let expected = match rtype.as_str() {
            "Practitioner" => "admin",
            "Patient" => "front_desk",
            _ => "clinician",
        };
        assert_eq!(role, expected, "{rtype} written as {role}");
    }

    let (again, refused) = app.cli(&["seed", "--tenant", TENANT]);
    assert!(!again, "a second seed must fail: {refused}");
    assert!(refused.contains("already has a Practitioner"), "{refused}");
    let practitioners: Value = app.get(&app.admin(), "/fhir/Practitioner").await.json().await.unwrap();
    assert_eq!(practitioners["total"], 2, "nothing was written the second time");
    let patients: Value = app.get(&app.front_desk(), "/fhir/Patient").await.json().await.unwrap();
    assert_eq!(patients["total"], 4);

    // A broken fixture writes nothing either, in another tenant.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    let text = CLINIC.replacen("\"gender\": \"female\"", "\"gender\": \"feminine\"", 1);
    std::fs::write(&broken, text).unwrap();
    let (ok, message) = app.cli(&["seed", "--tenant", "clinic-b", "--file", broken.to_str().unwrap()]);
    assert!(!ok && message.contains("nothing was written"), "{message}");
    let (ok, message) = app.cli(&["seed", "--tenant", "clinic-b"]);
    assert!(ok, "the tenant the broken file left empty seeds: {message}");
}

#[tokio::test]
async fn load_clinic_creates_every_record_over_http() {
    let app = spawn_app().await;
    let clinic = load_clinic(&app).await;
    assert_eq!(clinic.count(), 69);
    assert_eq!(clinic.labels("patient-").len(), 4);
    for patient in [JUNIPER, OTTO, PRIYA, TOBIAS] {
        let gp = clinic.gp_token(&app, patient);
        let read = app.get(&gp, &format!("/fhir/{}", clinic.reference(patient))).await;
        assert_eq!(read.status(), StatusCode::OK, "{patient} as its GP");
        let body: Value = read.json().await.unwrap();
        assert_eq!(body["generalPractitioner"][0]["reference"], clinic.reference(clinic.gp_of(patient)));
        expect_outcome(
            app.get(&clinic.other_clinician(&app, patient), &format!("/fhir/{}", clinic.reference(patient))).await,
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    assert_eq!(clinic.gp_of(TOBIAS), TESTCASE);
    let bp = clinic.reference("vitals-juniper-bp-2024-02-13");
    let read = app.get(&clinic.gp_token(&app, JUNIPER), &format!("/fhir/{bp}")).await;
    assert_eq!(read.status(), StatusCode::OK);
    let observation: Value = read.json().await.unwrap();
    assert_eq!(observation["subject"]["reference"], clinic.reference(JUNIPER));
    assert_eq!(observation["encounter"]["reference"], clinic.reference("encounter-juniper-2024-02-13"));
    let metformin = app.get(&clinic.gp_token(&app, JUNIPER), &format!("/fhir/{}", clinic.reference("medication-juniper-metformin"))).await;
    let metformin: Value = metformin.json().await.unwrap();
    assert_eq!(metformin["requester"]["reference"], clinic.reference(SYNTHWELL));
    assert_eq!(metformin["reasonReference"][0]["reference"], clinic.reference("condition-juniper-diabetes"));

    // The README's tables are what searches find.
    let juniper = clinic.reference(JUNIPER);
    for (query, expected) in [
        (format!("/fhir/Encounter?patient={juniper}"), 3),
        (format!("/fhir/Observation?patient={juniper}&category=vital-signs"), 8),
        (format!("/fhir/Observation?patient={juniper}&date=2024"), 7),
        (format!("/fhir/Observation?patient={juniper}&date=ge2025-01-01"), 5),
        (format!("/fhir/MedicationRequest?patient={juniper}&status=active"), 2),
    ] {
        let response = app.get(&clinic.gp_token(&app, JUNIPER), &query).await;
        assert_eq!(response.status(), StatusCode::OK, "{query}");
        let bundle: Value = response.json().await.unwrap();
        assert_eq!(entry_ids(&bundle).len(), expected, "{query}: {bundle}");
    }
}
