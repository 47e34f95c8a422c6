//! Clinical records (SPEC section 3): the five types validated, sealed, reachable only
//! through the patient's care relationship, searchable by US Core's combinations, and a
//! patient's whole record through `$everything`.

use std::sync::OnceLock;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// Every response body is checked against the official R4 schema.
pub fn assert_r4(body: &Value) {
    static VALIDATOR: OnceLock<carevault::fhir::FhirValidator> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        carevault::fhir::FhirValidator::for_definitions(&[
            "Bundle",
            "OperationOutcome",
            "CapabilityStatement",
            "Patient",
            "Practitioner",
            "Encounter",
            "Observation",
            "Condition",
            "AllergyIntolerance",
            "MedicationRequest",
        ])
        .unwrap()
    });
    let root = body["resourceType"].as_str().expect("a FHIR resource");
    let mut body = body.clone();
    if root == "CapabilityStatement" && body["fhirVersion"] == "4.0.1" {
        // The official R4 JSON schema was generated from 4.0.0: its FHIRVersion enum
        // predates the 4.0.1 technical correction that R4 servers announce.
        body["fhirVersion"] = json!("4.0.0");
    }
    let body = &body;
    if let Err(issues) = validator.validate_schema(root, body) {
        panic!("not valid R4 {root}: {issues:?}\n{body}");
    }
}

const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";

fn concept(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

/// A US Core-shaped Observation of `patient` (an id) at `when`.
pub fn observation(patient: &str, category: &str, loinc: &str, when: &str, status: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-clinical-result"]},
        "status": status,
        "category": [concept(CATEGORY, category, category)],
        "code": concept(LOINC, loinc, &format!("LOINC {loinc}")),
        "subject": {"reference": format!("Patient/{patient}"), "display": "Zz-Display-Name"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": decimal("72.50"), "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
    })
}

/// A JSON number exactly as written (a `72.50` literal in `json!` would become `72.5`).
fn decimal(written: &str) -> Value {
    serde_json::from_str(written).unwrap()
}

pub fn encounter(patient: &str, status: &str, snomed: &str, start: &str, end: &str, mrn: &str) -> Value {
    json!({
        "resourceType": "Encounter",
        "identifier": [{"system": "urn:test:visit", "value": mrn}],
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
        "type": [concept(SNOMED, snomed, "visit")],
        "subject": {"reference": format!("Patient/{patient}")},
        "period": {"start": start, "end": end}
    })
}

pub fn condition(patient: &str, category: &str, clinical: &str, snomed: &str, onset: &str) -> Value {
    json!({
        "resourceType": "Condition",
        "clinicalStatus": concept("http://terminology.hl7.org/CodeSystem/condition-clinical", clinical, clinical),
        "verificationStatus": concept("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
        "category": [concept("http://terminology.hl7.org/CodeSystem/condition-category", category, category)],
        "code": concept(SNOMED, snomed, "problem"),
        "subject": {"reference": format!("Patient/{patient}")},
        "onsetDateTime": onset
    })
}

pub fn allergy(patient: &str, clinical: &str, snomed: &str) -> Value {
    json!({
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": concept("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", clinical, clinical),
        "verificationStatus": concept("http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "confirmed", "Confirmed"),
        "code": concept(SNOMED, snomed, "allergen"),
        "patient": {"reference": format!("Patient/{patient}")},
        "reaction": [{"manifestation": [concept(SNOMED, "271807003", "Eruption of skin")]}]
    })
}

pub fn medication_request(patient: &str, status: &str, intent: &str, rxnorm: &str, authored: &str) -> Value {
    json!({
        "resourceType": "MedicationRequest",
        "status": status,
        "intent": intent,
        "medicationCodeableConcept": concept("http://www.nlm.nih.gov/research/umls/rxnorm", rxnorm, "medication"),
        "subject": {"reference": format!("Patient/{patient}")},
        "authoredOn": authored,
        "dosageInstruction": [{"text": "one tablet daily"}]
    })
}

/// A searchset, checked to be valid R4.
async fn search(app: &TestApp, who: &Who, query: &str) -> Value {
    let response = app.get(who, &format!("/fhir/{query}")).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    assert_eq!(body["type"], "searchset");
    assert_r4(&body);
    body
}

async fn ids_of(app: &TestApp, who: &Who, query: &str) -> Vec<String> {
    let mut ids = entry_ids(&search(app, who, query).await);
    ids.sort();
    ids
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| (*s).clone()).collect();
    v.sort();
    v
}

async fn refused(app: &TestApp, who: &Who, query: &str) -> Value {
    let outcome = expect_outcome(app.get(who, &format!("/fhir/{query}")).await, StatusCode::BAD_REQUEST).await;
    assert_r4(&outcome);
    outcome
}

#[tokio::test]
async fn clinical_records_are_stored_sealed_and_read_back_as_written() {
    let app = spawn_app().await;
    let gp = app.clinician("dr1");
    let pid = app.create(&app.front_desk(), &patient(&marker(), "dr1")).await;
    let mut obs = observation(&pid, "vital-signs", "29463-7", "2026-03-05T10:00:00+02:00", "final");
    obs["note"] = json!([{"text": "Zz-Sealed-Note"}]);
    let response = app.post(&gp, "/fhir/Observation", &obs).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    assert_r4(&created);
    let id = created["id"].as_str().unwrap().to_owned();
    let read: Value = app.get(&gp, &format!("/fhir/Observation/{id}")).await.json().await.unwrap();
    assert_r4(&read);
    assert_eq!(read["valueQuantity"]["value"].to_string(), "72.50", "decimals kept as written");
    assert_eq!(read["subject"]["display"], "Zz-Display-Name");
    assert_eq!(read["note"][0]["text"], "Zz-Sealed-Note");

    // In the database: status and the patient reference in the clear, nothing else.
    let stored = stored_content(&app, "Observation", &id);
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["status"], "final");
    assert_eq!(stored["subject"]["reference"], format!("Patient/{pid}"));
    let text = stored.to_string();
    for secret in ["Zz-Display-Name", "Zz-Sealed-Note", "29463-7", "vital-signs", "2026-03-05", "72.50"] {
        assert!(!text.contains(secret), "{secret} stored in the clear: {text}");
    }
    for sealed in ["code", "category", "effectiveDateTime", "valueQuantity", "note", "meta"] {
        if sealed != "meta" {
            assert!(stored[sealed].get("$sealed").is_some(), "{sealed} not sealed");
        }
    }
}

fn stored_content(app: &TestApp, rtype: &str, id: &str) -> String {
    use diesel::prelude::*;
    use diesel::sql_types::Text;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        content: String,
    }
    let mut conn = app.db();
    let rows: Vec<Row> = diesel::sql_query(format!("SELECT content FROM resources WHERE resource_type = '{rtype}' AND id = '{id}'"))
        .load(&mut *conn)
        .unwrap();
    rows.into_iter().next().expect("stored row").content
}

#[tokio::test]
async fn a_clinical_write_needs_a_known_patient_of_the_tenant_and_never_moves() {
    let app = spawn_app().await;
    let gp = app.clinician("dr1");
    let pid = app.create(&app.front_desk(), &patient(&marker(), "dr1")).await;
    let other = app.create(&app.front_desk(), &patient(&marker(), "dr1")).await;
    let elsewhere = {
        let desk_b = app.who("clinic-b", &["front_desk"], None);
        app.create(&desk_b, &patient(&marker(), "dr1")).await
    };
    let secret = "Zz-Secret-Ref-77";
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let mut missing = observation(&pid, "vital-signs", "8867-4", "2026-01-01", "final");
    missing.as_object_mut().unwrap().remove("subject");
    cases.push((missing, "Observation.subject"));
    for reference in [
        format!("Practitioner/{secret}"),
        format!("https://other.example/fhir/Patient/{secret}"),
        format!("Patient/{secret}"),
        format!("Patient/{elsewhere}"),
        "#contained".to_owned(),
    ] {
        let mut bad = observation(&pid, "vital-signs", "8867-4", "2026-01-01", "final");
        bad["subject"] = json!({"reference": reference, "display": secret});
        cases.push((bad, "Observation.subject"));
    }
    let mut no_patient = allergy(&pid, "active", "91936005");
    no_patient["patient"] = json!({"display": secret});
    cases.push((no_patient, "AllergyIntolerance.patient"));
    for (body, path) in cases {
        let rtype = body["resourceType"].as_str().unwrap().to_owned();
        let response = app.post(&gp, &format!("/fhir/{rtype}"), &body).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST, "{status} {text}");
        assert!(text.contains(path), "{text}");
        assert!(!text.contains(secret), "echoed: {text}");
        assert_r4(&serde_json::from_str(&text).unwrap());
    }
    // Nothing was written for those: the patient's compartment is empty.
    assert!(ids_of(&app, &gp, &format!("Observation?patient={pid}")).await.is_empty());

    // Invalid content: required elements and bound codes, named by path, never echoed.
    let mut bad = medication_request(&pid, "active", "order", "197361", "2026-02-01");
    bad.as_object_mut().unwrap().remove("medicationCodeableConcept");
    bad["intent"] = json!(secret);
    let outcome = expect_outcome(app.post(&gp, "/fhir/MedicationRequest", &bad).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    let text = outcome.to_string();
    assert!(text.contains("MedicationRequest.intent") && text.contains("MedicationRequest.medication[x]"), "{text}");
    assert!(!text.contains(secret));

    // Moving a record to another patient is a refused update; the record stays.
    let id = app.create(&gp, &observation(&pid, "vital-signs", "8867-4", "2026-01-01", "final")).await;
    let mut moved = observation(&other, "vital-signs", "8867-4", "2026-01-01", "final");
    moved["id"] = json!(id);
    let outcome =
        expect_outcome(app.put(&gp, &format!("/fhir/Observation/{id}"), &moved, None).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(outcome.to_string().contains("Observation.subject"), "{outcome}");
    let read: Value = app.get(&gp, &format!("/fhir/Observation/{id}")).await.json().await.unwrap();
    assert_eq!(read["subject"]["reference"], format!("Patient/{pid}"));
    assert_eq!(read["meta"]["versionId"], "1");
}

#[tokio::test]
async fn clinical_access_follows_the_patients_care_relationship() {
    let app = spawn_app().await;
    let pid = app.create(&app.front_desk(), &patient(&marker(), "dr1")).await;
    let gp = app.clinician("dr1");
    let id = app.create(&gp, &condition(&pid, "problem-list-item", "active", "44054006", "2024-06-01")).await;
    let path = format!("/fhir/Condition/{id}");
    let body = condition(&pid, "problem-list-item", "active", "44054006", "2024-06-01");
    let nurse = app.who(TENANT, &["nurse"], Some("Practitioner/dr1"));
    let stranger = app.clinician("dr2");
    let desk = app.front_desk();
    let me = app.who(TENANT, &["patient"], Some(&format!("Patient/{pid}")));
    let someone_else = app.who(TENANT, &["patient"], Some("Patient/not-me"));
    let auditor = app.who(TENANT, &["auditor"], None);
    let admin = app.admin();

    for (who, read, write) in [
        (&gp, StatusCode::OK, StatusCode::CREATED),
        (&nurse, StatusCode::OK, StatusCode::CREATED),
        (&stranger, StatusCode::FORBIDDEN, StatusCode::FORBIDDEN),
        (&desk, StatusCode::FORBIDDEN, StatusCode::FORBIDDEN),
        (&me, StatusCode::OK, StatusCode::FORBIDDEN),
        (&someone_else, StatusCode::FORBIDDEN, StatusCode::FORBIDDEN),
        (&auditor, StatusCode::FORBIDDEN, StatusCode::FORBIDDEN),
        (&admin, StatusCode::FORBIDDEN, StatusCode::FORBIDDEN),
    ] {
        let r = app.get(who, &path).await;
        assert_eq!(r.status(), read);
        if read == StatusCode::OK {
            assert_r4(&r.json().await.unwrap());
        }
        assert_eq!(app.post(who, "/fhir/Condition", &body).await.status(), write);
    }
    // Searches see the same: the compartment through the care relationship or one's own.
    assert_eq!(ids_of(&app, &gp, &format!("Condition?patient={pid}")).await.len(), 3);
    assert_eq!(ids_of(&app, &me, &format!("Condition?patient={pid}")).await.len(), 3);
    assert_eq!(ids_of(&app, &me, "Condition").await.len(), 3);
    assert!(ids_of(&app, &stranger, &format!("Condition?patient={pid}")).await.is_empty());
    assert_eq!(app.get(&desk, &format!("/fhir/Condition?patient={pid}")).await.status(), StatusCode::FORBIDDEN);

    // Break-glass: the stranger reads, ledgered as emergency access; a search must name
    // the patient; writes stay refused.
    let glass = [("X-Break-Glass", "unconscious patient in the emergency room")];
    let r = app.get_with(&stranger, &path, &glass).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.get_with(&stranger, &format!("/fhir/Condition?patient={pid}"), &glass).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(entry_ids(&r.json().await.unwrap()).len(), 3);
    let r = app.get_with(&stranger, "/fhir/Condition", &glass).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = app.get_with(&admin, &path, &glass).await;
    assert_eq!(r.status(), StatusCode::OK);
    let entries = ledger_entries(&app).await;
    let emergency = entries.iter().filter(|e| e["breakGlass"] == glass[0].1 && e.to_string().contains(&format!("Condition/{id}"))).count();
    assert!(emergency >= 2, "break-glass reads ledgered as emergency access: {entries:?}");

    // A change of general practitioner moves access to the clinical records with it.
    let mut moved = patient(&marker(), "dr2");
    moved["id"] = json!(pid);
    assert_eq!(app.put(&desk, &format!("/fhir/Patient/{pid}"), &moved, None).await.status(), StatusCode::OK);
    assert_eq!(app.get(&gp, &path).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.get(&stranger, &path).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn observation_searches_by_category_code_status_and_date() {
    let app = spawn_app().await;
    let gp = app.clinician("dr1");
    let desk = app.front_desk();
    let a = app.create(&desk, &patient(&marker(), "dr1")).await;
    let b = app.create(&desk, &patient(&marker(), "dr1")).await;
    let heart = app.create(&gp, &observation(&a, "vital-signs", "8867-4", "2024-05-10T08:30:00Z", "final")).await;
    let weight = app.create(&gp, &observation(&a, "vital-signs", "29463-7", "2025-03-15", "amended")).await;
    let a1c = app.create(&gp, &observation(&a, "laboratory", "4548-4", "2026-01-20T09:00:00-05:00", "final")).await;
    let bp = app.create(&gp, &observation(&a, "vital-signs", "85354-9", "2026-03-05T10:00:00+02:00", "final")).await;
    let mut period = observation(&a, "vital-signs", "8867-4", "2026", "final");
    period.as_object_mut().unwrap().remove("effectiveDateTime");
    period["effectivePeriod"] = json!({"start": "2026-04-01T00:00:00Z", "end": "2026-04-03T00:00:00Z"});
    let monitored = app.create(&gp, &period).await;
    let of_b = app.create(&gp, &observation(&b, "vital-signs", "8867-4", "2025-03-15", "final")).await;

    let q = |rest: &str| format!("Observation?patient=Patient/{a}&{rest}");
    // patient + category
    assert_eq!(ids_of(&app, &gp, &q("category=vital-signs")).await, sorted(&[&heart, &weight, &bp, &monitored]));
    assert_eq!(ids_of(&app, &gp, &q(&format!("category={CATEGORY}|laboratory"))).await, sorted(&[&a1c]));
    assert_eq!(ids_of(&app, &gp, &q("category=laboratory,vital-signs")).await.len(), 5);
    assert!(ids_of(&app, &gp, &q("category=http://other.example|vital-signs")).await.is_empty());
    // patient + category + date, with prefixes and partial dates
    for (date, expected) in [
        ("2026", sorted(&[&bp, &monitored])),
        ("2026-03", sorted(&[&bp])),
        ("2026-03-05", sorted(&[&bp])),
        ("eq2025-03-15", sorted(&[&weight])),
        ("ge2025", sorted(&[&weight, &bp, &monitored])),
        ("gt2025-03-15", sorted(&[&bp, &monitored])),
        ("lt2025", sorted(&[&heart])),
        ("le2025-03-15", sorted(&[&heart, &weight])),
        ("ne2026", sorted(&[&heart, &weight])),
        ("2026-04-02", Vec::new()),
        ("ge2026-04-02", sorted(&[&monitored])),
        ("lt2024-05-10T08:31:00Z", sorted(&[&heart])),
        ("2024-05-10T08:30:00%2B00:00", sorted(&[&heart])),
        ("2024-05-10T10:30:00%2B02:00", sorted(&[&heart])),
        ("2024-05-10T08:30:01Z", Vec::new()),
    ] {
        assert_eq!(ids_of(&app, &gp, &q(&format!("category=vital-signs&date={date}"))).await, expected, "date={date}");
    }
    // comma OR of dates, AND of two date parameters
    assert_eq!(ids_of(&app, &gp, &q("category=vital-signs&date=2024,2026-03")).await, sorted(&[&heart, &bp]));
    assert_eq!(ids_of(&app, &gp, &q("category=vital-signs&date=ge2025&date=lt2026")).await, sorted(&[&weight]));
    // patient + code (+ date)
    assert_eq!(ids_of(&app, &gp, &q(&format!("code={LOINC}|8867-4"))).await, sorted(&[&heart, &monitored]));
    assert_eq!(ids_of(&app, &gp, &q("code=8867-4,29463-7")).await, sorted(&[&heart, &weight, &monitored]));
    assert_eq!(ids_of(&app, &gp, &q("code=8867-4&date=ge2026")).await, sorted(&[&monitored]));
    // patient + category + status
    assert_eq!(ids_of(&app, &gp, &q("category=vital-signs&status=final")).await, sorted(&[&heart, &bp, &monitored]));
    assert_eq!(ids_of(&app, &gp, &q("category=vital-signs&status=amended,corrected")).await, sorted(&[&weight]));
    // subject is the same compartment; the other patient's record never shows
    assert_eq!(ids_of(&app, &gp, &format!("Observation?subject={b}")).await, vec![of_b.clone()]);

    // _sort on the date and on _lastUpdated, paged with next links
    let by_date = entry_ids(&search(&app, &gp, &q("_sort=date")).await);
    assert_eq!(by_date, vec![heart.clone(), weight.clone(), a1c.clone(), bp.clone(), monitored.clone()]);
    let newest = entry_ids(&search(&app, &gp, &q("_sort=-date")).await);
    assert_eq!(newest, vec![monitored.clone(), bp.clone(), a1c.clone(), weight.clone(), heart.clone()]);
    let by_update = entry_ids(&search(&app, &gp, &q("_sort=-_lastUpdated")).await);
    assert_eq!(by_update, vec![monitored.clone(), bp.clone(), a1c.clone(), weight.clone(), heart.clone()]);
    let mut paged = Vec::new();
    let mut page = search(&app, &gp, &q("_sort=date&_count=2")).await;
    assert_eq!(page["total"], 5);
    loop {
        assert!(page["entry"].as_array().unwrap().len() <= 2);
        paged.extend(entry_ids(&page));
        let Some(next) = page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") else { break };
        let url = next["url"].as_str().unwrap();
        let path = &url[url.find("/fhir/").unwrap() + "/fhir/".len()..];
        page = search(&app, &gp, path).await;
    }
    assert_eq!(paged, by_date);
    let filtered_page = search(&app, &gp, &q("category=vital-signs&date=ge2025&_sort=-date&_count=1")).await;
    assert_eq!(filtered_page["total"], 3);
    assert_eq!(entry_ids(&filtered_page), vec![monitored.clone()]);

    // _lastUpdated needs no patient: it is not sealed
    let all_today = ids_of(&app, &gp, &format!("Observation?_lastUpdated=ge{}", &today()[..10])).await;
    assert_eq!(all_today.len(), 6);
    assert!(ids_of(&app, &gp, "Observation?_lastUpdated=lt2020").await.is_empty());

    // Across patients on sealed elements: a clear 400, never a scan.
    for query in [
        "Observation?category=vital-signs".to_owned(),
        "Observation?date=2026".to_owned(),
        format!("Observation?patient={a},{b}&date=2026"),
        format!("Observation?patient={a},{b}&_sort=date"),
        "Observation?code=8867-4&_sort=date".to_owned(),
        format!("Observation?patient={a}&date=sa2026"),
        format!("Observation?patient={a}&date=2026-13"),
        format!("Observation?patient={a}&_sort=code"),
    ] {
        let outcome = refused(&app, &gp, &query).await;
        assert!(outcome["issue"][0]["diagnostics"].as_str().is_some(), "{query}: {outcome}");
    }
}

fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[tokio::test]
async fn encounter_condition_allergy_and_medication_searches() {
    let app = spawn_app().await;
    let gp = app.clinician("dr1");
    let desk = app.front_desk();
    let a = app.create(&desk, &patient(&marker(), "dr1")).await;
    let b = app.create(&desk, &patient(&marker(), "dr1")).await;
    let visit = marker();
    let e1 = app.create(&gp, &encounter(&a, "finished", "185349003", "2025-02-01T09:00:00Z", "2025-02-01T09:30:00Z", &visit)).await;
    let e2 = app.create(&gp, &encounter(&a, "in-progress", "390906007", "2026-03-05T14:00:00Z", "2026-03-05T15:00:00Z", "v-2")).await;
    let e3 = app.create(&gp, &encounter(&b, "finished", "185349003", "2026-03-05T08:00:00Z", "2026-03-05T08:20:00Z", "v-3")).await;
    let qa = |rest: &str| format!("{rest}{}patient={a}", if rest.contains('?') { "&" } else { "?" });

    // Encounter: patient; _id; patient+date; patient+status; patient+type; identifier
    assert_eq!(ids_of(&app, &gp, &qa("Encounter")).await, sorted(&[&e1, &e2]));
    assert_eq!(ids_of(&app, &gp, &format!("Encounter?_id={e3}")).await, vec![e3.clone()]);
    assert_eq!(ids_of(&app, &gp, &qa("Encounter?date=2026-03-05")).await, sorted(&[&e2]));
    assert_eq!(ids_of(&app, &gp, &qa("Encounter?date=lt2026")).await, sorted(&[&e1]));
    assert_eq!(ids_of(&app, &gp, &qa("Encounter?date=ge2025-02-01T09:15:00Z")).await, sorted(&[&e1, &e2]));
    assert_eq!(ids_of(&app, &gp, &qa("Encounter?status=finished")).await, sorted(&[&e1]));
    assert_eq!(ids_of(&app, &gp, &qa("Encounter?status=finished,in-progress")).await, sorted(&[&e1, &e2]));
    assert_eq!(ids_of(&app, &gp, &qa(&format!("Encounter?type={SNOMED}|390906007"))).await, sorted(&[&e2]));
    assert_eq!(ids_of(&app, &gp, &format!("Encounter?identifier=urn:test:visit|{visit}")).await, vec![e1.clone()]);
    assert_eq!(ids_of(&app, &gp, &format!("Encounter?identifier={visit}")).await, vec![e1.clone()]);
    refused(&app, &gp, "Encounter?status=finished").await;

    // Condition: patient; +category; +clinical-status; +code; +onset-date
    let c1 = app.create(&gp, &condition(&a, "problem-list-item", "active", "44054006", "2019-04-01")).await;
    let c2 = app.create(&gp, &condition(&a, "encounter-diagnosis", "resolved", "195662009", "2025-11-20T10:00:00Z")).await;
    app.create(&gp, &condition(&b, "problem-list-item", "active", "44054006", "2019-04-01")).await;
    assert_eq!(ids_of(&app, &gp, &qa("Condition")).await, sorted(&[&c1, &c2]));
    assert_eq!(ids_of(&app, &gp, &qa("Condition?category=problem-list-item")).await, sorted(&[&c1]));
    assert_eq!(ids_of(&app, &gp, &qa("Condition?clinical-status=resolved")).await, sorted(&[&c2]));
    assert_eq!(
        ids_of(&app, &gp, &qa("Condition?clinical-status=http://terminology.hl7.org/CodeSystem/condition-clinical|active")).await,
        sorted(&[&c1])
    );
    assert_eq!(ids_of(&app, &gp, &qa(&format!("Condition?code={SNOMED}|44054006"))).await, sorted(&[&c1]));
    assert_eq!(ids_of(&app, &gp, &qa("Condition?onset-date=2025-11")).await, sorted(&[&c2]));
    assert_eq!(ids_of(&app, &gp, &qa("Condition?onset-date=lt2020")).await, sorted(&[&c1]));
    assert_eq!(entry_ids(&search(&app, &gp, &qa("Condition?_sort=-onset-date")).await), vec![c2.clone(), c1.clone()]);

    // AllergyIntolerance: patient; +clinical-status
    let al1 = app.create(&gp, &allergy(&a, "active", "91936005")).await;
    let al2 = app.create(&gp, &allergy(&a, "inactive", "300913006")).await;
    app.create(&gp, &allergy(&b, "active", "91936005")).await;
    assert_eq!(ids_of(&app, &gp, &qa("AllergyIntolerance")).await, sorted(&[&al1, &al2]));
    assert_eq!(ids_of(&app, &gp, &qa("AllergyIntolerance?clinical-status=active")).await, sorted(&[&al1]));
    refused(&app, &gp, "AllergyIntolerance?subject=x").await;

    // MedicationRequest: patient+intent; +intent+status; +authoredon
    let m1 = app.create(&gp, &medication_request(&a, "active", "order", "197361", "2026-02-01")).await;
    let m2 = app.create(&gp, &medication_request(&a, "completed", "order", "310965", "2024-07-15T12:00:00Z")).await;
    let m3 = app.create(&gp, &medication_request(&a, "active", "plan", "197361", "2025-09-09")).await;
    app.create(&gp, &medication_request(&b, "active", "order", "197361", "2026-02-01")).await;
    assert_eq!(ids_of(&app, &gp, &qa("MedicationRequest?intent=order")).await, sorted(&[&m1, &m2]));
    assert_eq!(ids_of(&app, &gp, &qa("MedicationRequest?intent=order,plan&status=active")).await, sorted(&[&m1, &m3]));
    assert_eq!(ids_of(&app, &gp, &qa("MedicationRequest?intent=order&status=completed")).await, sorted(&[&m2]));
    assert_eq!(ids_of(&app, &gp, &qa("MedicationRequest?authoredon=ge2025")).await, sorted(&[&m1, &m3]));
    assert_eq!(ids_of(&app, &gp, &qa("MedicationRequest?authoredon=2024-07")).await, sorted(&[&m2]));
    assert_eq!(entry_ids(&search(&app, &gp, &qa("MedicationRequest?_sort=authoredon")).await), vec![m2.clone(), m3.clone(), m1.clone()]);
    refused(&app, &gp, "MedicationRequest?intent=order").await;
}

#[tokio::test]
async fn patient_everything_pages_through_the_compartment_and_ledgers_each_record() {
    let app = spawn_app().await;
    let gp = app.clinician("dr1");
    let desk = app.front_desk();
    let pid = app.create(&desk, &patient(&marker(), "dr1")).await;
    let other = app.create(&desk, &patient(&marker(), "dr1")).await;
    let mut mine = vec![pid.clone()];
    mine.push(app.create(&gp, &encounter(&pid, "finished", "185349003", "2025-02-01T09:00:00Z", "2025-02-01T09:30:00Z", "v-1")).await);
    for date in ["2024-01-01", "2025-01-01", "2026-01-01"] {
        mine.push(app.create(&gp, &observation(&pid, "vital-signs", "8867-4", date, "final")).await);
    }
    mine.push(app.create(&gp, &condition(&pid, "problem-list-item", "active", "44054006", "2019-04-01")).await);
    mine.push(app.create(&gp, &allergy(&pid, "active", "91936005")).await);
    mine.push(app.create(&gp, &medication_request(&pid, "active", "order", "197361", "2026-02-01")).await);
    let deleted = app.create(&gp, &observation(&pid, "vital-signs", "8867-4", "2026-02-02", "final")).await;
    assert_eq!(app.delete(&gp, &format!("/fhir/Observation/{deleted}")).await.status(), StatusCode::NO_CONTENT);
    app.create(&gp, &observation(&other, "vital-signs", "8867-4", "2026-01-01", "final")).await;

    let before = ledger_entries(&app).await.len();
    let everything = |q: &str| format!("/fhir/Patient/{pid}/$everything{q}");
    let r = app.get(&gp, &everything("")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let bundle: Value = r.json().await.unwrap();
    assert_r4(&bundle);
    assert_eq!(bundle["total"], 8);
    assert_eq!(bundle["entry"][0]["resource"]["resourceType"], "Patient", "the Patient comes first");
    let mut got = entry_ids(&bundle);
    got.sort();
    mine.sort();
    assert_eq!(got, mine);
    let after = ledger_entries(&app).await;
    let reads: Vec<_> = after[before..].iter().filter(|e| e["action"] == "read").collect();
    assert_eq!(reads.len(), 8, "one ledger entry per record returned: {reads:?}");

    // Paging with next links visits every record once.
    let mut seen = Vec::new();
    let mut page: Value = app.get(&gp, &everything("?_count=3")).await.json().await.unwrap();
    loop {
        assert_r4(&page);
        assert!(page["entry"].as_array().map_or(0, Vec::len) <= 3);
        seen.extend(entry_ids(&page));
        let Some(next) = page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") else { break };
        let url = next["url"].as_str().unwrap();
        page = app.get(&gp, &url[url.find("/fhir/").unwrap()..]).await.json().await.unwrap();
    }
    seen.sort();
    assert_eq!(seen, mine);

    // _type and _since
    let observations: Value = app.get(&gp, &everything("?_type=Observation")).await.json().await.unwrap();
    assert_eq!(observations["total"], 3);
    let later: Value = app.get(&gp, &everything(&format!("?_since={}", urlencode(&future())))).await.json().await.unwrap();
    assert_eq!(later["total"], 0);
    let since: Value = app.get(&gp, &everything("?_since=2020-01-01T00:00:00Z")).await.json().await.unwrap();
    assert_eq!(since["total"], 8);

    // The patient reads its own record; the front desk and strangers do not.
    let me = app.who(TENANT, &["patient"], Some(&format!("Patient/{pid}")));
    let own: Value = app.get(&me, &everything("")).await.json().await.unwrap();
    assert_eq!(own["total"], 8);
    assert_eq!(app.get(&desk, &everything("")).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.get(&app.clinician("dr2"), &everything("")).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.get(&gp, &everything("?_type=Practitioner")).await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.get(&gp, &everything("?zz=1")).await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.get(&gp, "/fhir/Observation/x/$everything").await.status(), StatusCode::BAD_REQUEST);
}

fn future() -> String {
    (chrono::Utc::now() + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn urlencode(v: &str) -> String {
    v.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn the_capability_statement_lists_the_clinical_types_and_everything() {
    let app = spawn_app().await;
    let cs: Value = app.client.get(app.url("/fhir/metadata")).send().await.unwrap().json().await.unwrap();
    assert_r4(&cs);
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    for (rtype, params) in [
        ("Encounter", &["patient", "date", "status", "type", "identifier"][..]),
        ("Observation", &["patient", "category", "code", "date", "status"]),
        ("Condition", &["patient", "category", "clinical-status", "code", "onset-date"]),
        ("AllergyIntolerance", &["patient", "clinical-status"]),
        ("MedicationRequest", &["patient", "intent", "status", "authoredon"]),
    ] {
        let r = resources.iter().find(|r| r["type"] == rtype).unwrap_or_else(|| panic!("{rtype} missing"));
        for p in params {
            assert!(r["searchParam"].as_array().unwrap().iter().any(|s| s["name"] == *p), "{rtype}.{p}");
        }
    }
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    assert_eq!(patient["operation"][0]["name"], "everything");
}
