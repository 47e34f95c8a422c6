//! Costs of field-level encryption, beside raw AES-256-GCM on this machine (the limit).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use carevault::crypto::{Aad, BlindIndexKey, Envelope, Key, LocalKeyFile};
use carevault::domain::{ResourceId, ResourceType, TenantId};
use carevault::service::codec::Codec;
use carevault::service::encryption_policy::EncryptionPolicy;
use carevault::service::keyring::{DataKey, KeyRing};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

fn benches(c: &mut Criterion) {
    let key = Key::generate().unwrap();
    let cipher = Aes256Gcm::new_from_slice(key.expose()).unwrap();
    let mut group = c.benchmark_group("raw AES-256-GCM encrypt");
    for size in [64usize, 1024, 16 * 1024] {
        let data = vec![7u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("{size} B"), |b| {
            b.iter(|| cipher.encrypt(&Nonce::from([1u8; 12]), Payload { msg: black_box(&data), aad: b"" }).unwrap())
        });
    }
    group.finish();

    let name = serde_json::to_vec(&json!([{"use": "official", "family": "Zz-Example", "given": ["Alpha", "Beta"]}])).unwrap();
    let aad = Aad::new("element", &["tenant-1", "Patient", "0b0c9a3e-7a4f-4a7e-9a55-2f1c3c1d2e3f", "name"]);
    let sealed = Envelope::seal(&key, 42, &aad, &name).unwrap();
    c.bench_function("seal one element (HumanName, 62 B)", |b| b.iter(|| Envelope::seal(&key, 42, &aad, black_box(&name)).unwrap()));
    c.bench_function("open one element (HumanName, 62 B)", |b| b.iter(|| Envelope::open(&key, 42, &aad, black_box(&sealed)).unwrap()));

    let index = BlindIndexKey::derive(&key, "tenant-1").expect("derive");
    c.bench_function("blind-index token (HMAC-SHA256)", |b| b.iter(|| index.token("Patient.family", black_box("zz-example"))));

    let dir = tempfile::tempdir().unwrap();
    let (provider, _) = LocalKeyFile::open(&dir.path().join("k.json"), true).unwrap();
    let policy = EncryptionPolicy::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))).unwrap();
    let keystore_url = carevault::store::DatabaseUrl::parse(&format!("sqlite://{}", dir.path().join("keystore.db").display())).unwrap();
    let keystore = carevault::store::Store::open_keystore(&keystore_url, 1).unwrap();
    let codec = Codec::new(KeyRing::new(std::sync::Arc::new(provider), keystore).unwrap(), policy);
    let tenant = TenantId::parse("tenant-1").unwrap();
    let id = ResourceId::generate();
    let dek = DataKey { key_id: 42, key: Key::generate().unwrap() };
    let patient = json!({
        "resourceType": "Patient", "id": id.as_str(), "meta": {"versionId": "1", "lastUpdated": "2026-11-22T00:00:00.000Z"},
        "identifier": [{"system": "urn:test:mrn", "value": "MRN-000123"}],
        "name": [{"use": "official", "family": "Zz-Example", "given": ["Alpha", "Beta"]}],
        "telecom": [{"system": "phone", "value": "+1 555 010 0100"}, {"system": "email", "value": "alpha@example.test"}],
        "gender": "female", "birthDate": "1980-04-05",
        "address": [{"line": ["1 Test Street"], "city": "Testville", "postalCode": "00000", "country": "ZZ"}],
        "generalPractitioner": [{"reference": "Practitioner/dr1"}]
    });
    let stored = codec.seal(&tenant, ResourceType::Patient, &id, &dek, &patient).unwrap();
    let dek_result = Ok(DataKey { key_id: 42, key: dek.key.clone() });
    c.bench_function("seal a typical Patient (5 sealed elements, stored form)", |b| {
        b.iter(|| codec.seal(&tenant, ResourceType::Patient, &id, &dek, black_box(&patient)).unwrap())
    });
    c.bench_function("open a typical Patient (5 sealed elements, stored form)", |b| {
        b.iter(|| codec.open(&tenant, ResourceType::Patient, id.as_str(), black_box(&stored), Some(&dek_result)).unwrap())
    });
    c.bench_function("unsealed baseline: serialise + parse the same Patient", |b| {
        b.iter(|| serde_json::from_str::<serde_json::Value>(&serde_json::to_string(black_box(&patient)).unwrap()).unwrap())
    });
}

criterion_group! {
    name = crypto;
    config = Criterion::default().sample_size(20);
    targets = benches
}
criterion_main!(crypto);
