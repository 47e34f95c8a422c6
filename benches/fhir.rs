#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Costs on the request path that do not touch the database: schema validation of a
//! typical Patient, its search tokens, and parsing of a search query.

use std::hint::black_box;

use carevault::domain::ResourceType;
use carevault::domain::search::index_tokens;
use carevault::fhir::FhirValidator;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn typical_patient() -> serde_json::Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": "MRN-000123"}],
        "name": [{"use": "official", "family": "Zz-Example", "given": ["Alpha", "Beta"]}],
        "telecom": [{"system": "phone", "value": "+1 555 010 0100"}, {"system": "email", "value": "alpha@example.test"}],
        "gender": "female",
        "birthDate": "1980-04-05",
        "address": [{"line": ["1 Test Street"], "city": "Testville", "postalCode": "00000", "country": "ZZ"}],
        "generalPractitioner": [{"reference": "Practitioner/dr1"}]
    })
}

fn benches(c: &mut Criterion) {
    let validator = FhirValidator::new().unwrap();
    let patient = typical_patient();
    let text = patient.to_string();
    c.bench_function("validate typical Patient (R4 schema + dates)", |b| {
        b.iter(|| validator.validate(ResourceType::Patient, black_box(&patient)).unwrap())
    });
    c.bench_function("parse typical Patient JSON", |b| b.iter(|| serde_json::from_str::<serde_json::Value>(black_box(&text)).unwrap()));
    c.bench_function("normalised search tokens of typical Patient (7 parameters)", |b| {
        b.iter(|| ResourceType::Patient.def().search.iter().map(|d| index_tokens(d, black_box(&patient)).len()).sum::<usize>())
    });
    c.bench_function("build the validator (start-up)", |b| b.iter(|| FhirValidator::new().unwrap()));
}

criterion_group! {
    name = fhir;
    config = Criterion::default().sample_size(20);
    targets = benches
}
criterion_main!(fhir);
