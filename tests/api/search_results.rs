//! What real FHIR clients send besides search criteria (SPEC section 3): `_summary=count`,
//! `_total`, `_elements` (SUBSETTED), Patient `name`, `_sort=-_lastUpdated`, query
//! parameters on every interaction (never ignored silently), `Prefer: handling=lenient`
//! and the FHIR version a client accepts.

use std::collections::BTreeSet;

use carevault::store::schema::resources;
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::clinical::{assert_r4, observation};
use crate::helpers::*;

const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

/// A searchset answered with 200, checked to be valid R4.
async fn searchset(app: &TestApp, who: &Who, query: &str, headers: &[(&str, &str)]) -> Value {
    let response = app.get_with(who, &format!("/fhir/{query}"), headers).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    assert_eq!(body["type"], "searchset", "{body}");
    assert_r4(&body);
    body
}

fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"].as_array().unwrap().iter().find(|l| l["relation"] == relation).map(|l| l["url"].as_str().unwrap().to_owned())
}

/// A link as the server means it (its query is percent-encoded).
fn decoded(url: &str) -> String {
    percent_encoding::percent_decode_str(url).decode_utf8_lossy().into_owned()
}

fn keys(resource: &Value) -> BTreeSet<&str> {
    resource.as_object().unwrap().keys().map(String::as_str).collect()
}

fn subsetted(resource: &Value) -> bool {
    resource["meta"]["tag"].as_array().is_some_and(|tags| tags.iter().any(|t| t["system"] == SUBSETTED_SYSTEM && t["code"] == "SUBSETTED"))
}

/// Patients born on `birth_date`, created one after the other (a few milliseconds apart,
/// so that their `meta.lastUpdated` differ); their ids in creation order.
async fn born_on(app: &TestApp, who: &Who, birth_date: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let mut p = patient(&marker(), "dr1");
        p["birthDate"] = birth_date.into();
        ids.push(app.create(who, &p).await);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    ids
}

/// Flips a bit of a stored Patient's sealed name: opening the row now fails.
fn damage(app: &TestApp, id: &str) {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut c = app.db();
    let text: String = resources::table.filter(resources::id.eq(id)).select(resources::content).first(&mut *c).unwrap();
    let mut stored: Value = serde_json::from_str(&text).unwrap();
    let mut envelope = engine.decode(stored["name"]["$sealed"].as_str().unwrap()).unwrap();
    let last = envelope.len() - 1;
    envelope[last] ^= 0x01;
    stored["name"]["$sealed"] = json!(engine.encode(envelope));
    diesel::update(resources::table.filter(resources::id.eq(id))).set(resources::content.eq(stored.to_string())).execute(&mut *c).unwrap();
}

#[tokio::test]
async fn summary_count_gives_the_total_without_opening_a_record() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let ids = born_on(&app, &desk, "1904-05-06", 3).await;
    born_on(&app, &desk, "1904-05-07", 1).await;
    // A record that cannot be opened: a search that opened it would report it.
    damage(&app, &ids[1]);
    let before = ledger_entries(&app).await.len();

    let bundle = searchset(&app, &desk, "Patient?birthdate=1904-05-06&_summary=count&_count=1", &[]).await;
    assert_eq!(bundle["total"], 3, "{bundle}");
    assert!(bundle.get("entry").is_none(), "no entries, not even an outcome: {bundle}");
    let relations: Vec<&str> = bundle["link"].as_array().unwrap().iter().map(|l| l["relation"].as_str().unwrap()).collect();
    assert_eq!(relations, ["self"], "a count has no pages");
    assert!(decoded(&link(&bundle, "self").unwrap()).contains("_summary=count"));

    let new: Vec<Value> = ledger_entries(&app).await.into_iter().skip(before).filter(|e| e["action"] == "search").collect();
    assert_eq!(new.len(), 1, "one ledger entry for the search: {new:?}");
    assert_eq!(new[0]["outcome"], "success");
    assert!(new[0].get("resource").is_none_or(Value::is_null), "no record named: {new:?}");

    // `_summary=false` is the ordinary search (which does open, and reports, the damaged row).
    let full = searchset(&app, &desk, "Patient?birthdate=1904-05-06&_summary=false", &[]).await;
    assert_eq!(full["total"], 3);
    assert!(full["entry"].as_array().unwrap().iter().any(|e| e["search"]["mode"] == "outcome"));
    let count = searchset(&app, &desk, "Patient?birthdate=1999-01-01&_summary=count", &[]).await;
    assert_eq!(count["total"], 0);

    // Summary views the server does not know are refused, and say what is supported.
    for value in ["true", "text", "data", "ZZSECRETVALUE"] {
        let outcome = expect_outcome(app.get(&desk, &format!("/fhir/Patient?_summary={value}")).await, StatusCode::BAD_REQUEST).await;
        let text = outcome.to_string();
        assert!(text.contains("'count' and 'false'") && !text.contains("ZZSECRETVALUE"), "{text}");
    }
    expect_outcome(app.get(&desk, "/fhir/Patient?_summary=count&_total=none").await, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn summary_count_counts_a_patients_clinical_records_by_date_too() {
    let app = spawn_app().await;
    let gp = app.clinician("dr1");
    let pid = app.create(&app.front_desk(), &patient(&marker(), "dr1")).await;
    for when in ["2026-03-05T10:00:00Z", "2026-04-01T10:00:00Z", "2025-01-01T10:00:00Z"] {
        app.create(&gp, &observation(&pid, "vital-signs", "29463-7", when, "final")).await;
    }
    let all = searchset(&app, &gp, &format!("Observation?patient={pid}&_summary=count"), &[]).await;
    assert_eq!(all["total"], 3);
    let in_2026 = searchset(&app, &gp, &format!("Observation?patient={pid}&date=2026&_summary=count"), &[]).await;
    assert_eq!(in_2026["total"], 2);
    assert!(in_2026.get("entry").is_none());
}

#[tokio::test]
async fn total_none_leaves_out_the_total_and_still_pages() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let mut ids = born_on(&app, &desk, "1905-06-07", 3).await;
    ids.sort();

    let first = searchset(&app, &desk, "Patient?birthdate=1905-06-07&_total=none&_count=2", &[]).await;
    assert!(first.get("total").is_none(), "{first}");
    assert_eq!(entry_ids(&first), ids[..2]);
    let next = link(&first, "next").expect("a next page");
    assert!(decoded(&next).contains("_total=none"), "{next}");
    let second: Value = app.client.get(&next).bearer_auth(&desk.token).send().await.unwrap().json().await.unwrap();
    assert!(second.get("total").is_none());
    assert_eq!(entry_ids(&second), ids[2..]);
    assert!(link(&second, "next").is_none());
    // A page that holds every match has no next page.
    let all = searchset(&app, &desk, "Patient?birthdate=1905-06-07&_total=none&_count=3", &[]).await;
    assert_eq!(entry_ids(&all), ids);
    assert!(link(&all, "next").is_none());

    for exact in ["accurate", "estimate"] {
        let bundle = searchset(&app, &desk, &format!("Patient?birthdate=1905-06-07&_total={exact}&_count=1"), &[]).await;
        assert_eq!(bundle["total"], 3, "{exact}");
    }
    let outcome = expect_outcome(app.get(&desk, "/fhir/Patient?_total=ZZSECRETVALUE").await, StatusCode::BAD_REQUEST).await;
    assert!(!outcome.to_string().contains("ZZSECRETVALUE"));
}

#[tokio::test]
async fn elements_returns_subsets_tagged_subsetted_on_search_read_and_vread() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let m = marker();
    let id = app.create(&desk, &patient(&m, "dr1")).await;
    let mandatory = ["resourceType", "id", "meta"];

    let bundle = searchset(&app, &desk, &format!("Patient?_id={id}&_elements=name"), &[]).await;
    let found = &bundle["entry"][0]["resource"];
    assert_eq!(keys(found), mandatory.into_iter().chain(["name"]).collect(), "{found}");
    assert!(subsetted(found), "{found}");
    assert_eq!(found["meta"]["versionId"], "1");
    assert_eq!(found["name"][0]["family"], format!("Zz-Family-{m}"));
    assert_r4(found);
    assert!(decoded(&link(&bundle, "self").unwrap()).contains("_elements=name"));

    let plain = app.get(&desk, &format!("/fhir/Patient/{id}")).await;
    let etag = plain.headers()["etag"].to_str().unwrap().to_owned();
    let plain: Value = plain.json().await.unwrap();
    assert!(!subsetted(&plain), "the stored record is whole: {plain}");
    assert!(plain.get("telecom").is_some());

    let response = app.get(&desk, &format!("/fhir/Patient/{id}?_elements=name,birthDate")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"].to_str().unwrap(), etag);
    let read: Value = response.json().await.unwrap();
    assert_eq!(keys(&read), mandatory.into_iter().chain(["name", "birthDate"]).collect(), "{read}");
    assert!(subsetted(&read));
    assert_r4(&read);

    let response = app.get(&desk, &format!("/fhir/Patient/{id}/_history/1?_elements=gender")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let vread: Value = response.json().await.unwrap();
    assert_eq!(keys(&vread), mandatory.into_iter().chain(["gender"]).collect(), "{vread}");
    assert!(subsetted(&vread));
    assert_r4(&vread);

    // A clinical record keeps what R4 requires of it, and stays valid R4.
    let gp = app.clinician("dr1");
    let obs = app.create(&gp, &observation(&id, "vital-signs", "29463-7", "2026-03-05T10:00:00Z", "final")).await;
    let read: Value = app.get(&gp, &format!("/fhir/Observation/{obs}?_elements=effective")).await.json().await.unwrap();
    assert_eq!(keys(&read), mandatory.into_iter().chain(["status", "code", "effectiveDateTime"]).collect(), "{read}");
    assert_r4(&read);

    for bad in ["name%20ZZSECRETVALUE", "Patient.ZZSECRETVALUE", "", "name,,gender", "_ZZSECRETVALUE"] {
        for path in [format!("/fhir/Patient/{id}"), "/fhir/Patient".to_owned()] {
            let outcome = expect_outcome(app.get(&desk, &format!("{path}?_elements={bad}")).await, StatusCode::BAD_REQUEST).await;
            assert!(!outcome.to_string().contains("ZZSECRETVALUE"), "{outcome}");
        }
    }
}

#[tokio::test]
async fn name_matches_any_part_of_any_name_whole_and_in_any_case() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let m = marker();
    let mut named = patient(&m, "dr1");
    named["name"] = json!([
        {"family": format!("Zz-Fam-{m}"), "given": [format!("Zz-Giv-{m}"), "Zz-Second"], "prefix": [format!("Zz-Dr-{m}")], "suffix": [format!("Zz-Sfx-{m}")]},
        {"use": "usual", "text": format!("Zz Text {m}")}
    ]);
    let id = app.create(&desk, &named).await;
    let other = app.create(&desk, &patient(&marker(), "dr1")).await;
    let upper = m.to_uppercase();

    for query in [
        format!("name=zz-fam-{upper}"),
        format!("name=Zz-Fam-{m}"),
        format!("name=ZZ-GIV-{upper}"),
        format!("name=zz-dr-{m}"),
        format!("name=ZZ-SFX-{upper}"),
        format!("name=zz%20TEXT%20{m}"),
        format!("name=%20zz%20%20text%20{m}%20"),
        format!("name=zz-fam-{m},nobody-{m}"),
        format!("name:exact=zz-giv-{m}"),
        format!("name=zz-fam-{m}&given=zz-second"),
    ] {
        let bundle = searchset(&app, &desk, &format!("Patient?{query}"), &[]).await;
        assert_eq!(entry_ids(&bundle), vec![id.clone()], "{query}");
    }
    // Whole parts only: never a prefix, a substring or several parts run together.
    for query in [
        "name=zz-fam".to_owned(),
        format!("name=zz-fam-{}", &m[..6]),
        format!("name=fam-{m}"),
        "name=zz%20text".to_owned(),
        format!("name=zz-giv-{m}%20zz-second"),
        format!("name=zz-fam-{m}%20zz-giv-{m}"),
        "name=usual".to_owned(),
    ] {
        let bundle = searchset(&app, &desk, &format!("Patient?{query}"), &[]).await;
        assert!(entry_ids(&bundle).is_empty(), "{query}: {bundle}");
    }
    // The other patient's family, found by name too.
    let other_family = app.get(&desk, &format!("/fhir/Patient/{other}")).await.json::<Value>().await.unwrap()["name"][0]["family"]
        .as_str()
        .unwrap()
        .to_lowercase();
    let bundle = searchset(&app, &desk, &format!("Patient?name={other_family}"), &[]).await;
    assert_eq!(entry_ids(&bundle), vec![other]);
    // Modifiers other than :exact are refused, as for every parameter.
    expect_outcome(app.get(&desk, &format!("/fhir/Patient?name:contains=zz-fam-{m}")).await, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn a_create_with_query_parameters_is_conditional_or_refused_and_never_ignores_them() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let m = marker();
    let before = ledger_entries(&app).await.len();
    // Parameters a search does not take, and search control parameters: 400, nothing written.
    for query in ["ZZSECRETNAME=ZZSECRETVALUE", "_summary=count", "family=zz-x&zzunknown=1", "_sort=family"] {
        let response = app.post(&desk, &format!("/fhir/Patient?{query}"), &patient(&m, "dr1")).await;
        let outcome = expect_outcome(response, StatusCode::BAD_REQUEST).await;
        let text = outcome.to_string();
        assert!(!text.contains("ZZSECRET") && !text.contains("zzunknown"), "{text}");
        assert_r4(&outcome);
    }
    let bundle = searchset(&app, &desk, &format!("Patient?family=zz-family-{m}"), &[]).await;
    assert_eq!(bundle["total"], 0, "nothing was created");
    let creates = ledger_entries(&app).await.into_iter().skip(before).filter(|e| e["action"] == "create").count();
    assert_eq!(creates, 0);

    // Search criteria are a conditional create (as If-None-Exist): no match creates, a
    // match is returned, and there is never a duplicate.
    let criteria = format!("identifier=urn:test:mrn|MRN-{m}");
    let response = app.post(&desk, &format!("/fhir/Patient?{criteria}"), &patient(&m, "dr1")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let response = app.post(&desk, &format!("/fhir/Patient?_format=json&{criteria}"), &patient(&m, "dr1")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let found: Value = response.json().await.unwrap();
    assert_eq!(found["id"], created["id"]);
    let bundle = searchset(&app, &desk, &format!("Patient?{criteria}"), &[]).await;
    assert_eq!(bundle["total"], 1);
    // Not both forms at once.
    let response = app
        .client
        .post(app.url(&format!("/fhir/Patient?{criteria}")))
        .bearer_auth(&desk.token)
        .header("content-type", FHIR_JSON)
        .header("if-none-exist", criteria.clone())
        .body(patient(&m, "dr1").to_string())
        .send()
        .await
        .unwrap();
    expect_outcome(response, StatusCode::BAD_REQUEST).await;

    // `_format` and `_pretty` alone are a plain create.
    let response = app.post(&desk, "/fhir/Patient?_format=json&_pretty=true", &patient(&m, "dr1")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn read_vread_update_delete_and_history_refuse_parameters_they_do_not_take() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let m = marker();
    let id = app.create(&desk, &patient(&m, "dr1")).await;
    let at = |suffix: &str| format!("/fhir/Patient/{id}{suffix}");
    let mut body = patient(&marker(), "dr1");
    body["id"] = id.clone().into();

    for query in ["?ZZSECRETNAME=ZZSECRETVALUE", "?family=zz", "?_summary=true", "?_elements=name&zzother=1"] {
        let mut responses = vec![
            app.get(&desk, &at(query)).await,
            app.get(&desk, &at(&format!("/_history/1{query}"))).await,
            app.put(&desk, &at(query), &body, None).await,
            app.delete(&desk, &at(query)).await,
            app.get(&desk, &at(&format!("/_history{query}"))).await,
        ];
        for response in responses.drain(..) {
            let url = response.url().path().to_owned();
            let outcome = expect_outcome(response, StatusCode::BAD_REQUEST).await;
            assert!(!outcome.to_string().contains("ZZSECRET"), "{url}: {outcome}");
            assert_r4(&outcome);
        }
    }
    // Neither the update nor the delete happened.
    let response = app.get(&desk, &at("")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let read: Value = response.json().await.unwrap();
    assert_eq!(read["meta"]["versionId"], "1");
    assert_eq!(read["name"][0]["family"], format!("Zz-Family-{m}"));
    // What each interaction does take.
    let outcome = expect_outcome(app.get(&desk, &at("?_summary=true")).await, StatusCode::BAD_REQUEST).await;
    assert!(outcome.to_string().contains("'_summary'"), "{outcome}");
    for (path, ok) in [
        (at("?_format=json&_pretty=true"), StatusCode::OK),
        (at("/_history/1?_format=application/fhir%2Bjson"), StatusCode::OK),
        (at("/_history?_count=1&_offset=0&_pretty=false"), StatusCode::OK),
    ] {
        assert_eq!(app.get(&desk, &path).await.status(), ok, "{path}");
    }
    assert_eq!(app.put(&desk, &at("?_format=json"), &body, None).await.status(), StatusCode::OK);
    assert_eq!(app.delete(&desk, &at("?_pretty=true")).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_lenient_search_ignores_unknown_parameters_and_says_so() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let m = marker();
    let id = app.create(&desk, &patient(&m, "dr1")).await;
    app.create(&desk, &patient(&marker(), "dr1")).await;
    let query = format!("Patient?family=zz-family-{m}&zzsecretname=ZZSECRETVALUE&given:contains=ZZSECRETVALUE");

    let bundle = searchset(&app, &desk, &query, &[("prefer", "handling=lenient")]).await;
    assert_eq!(entry_ids(&bundle).into_iter().filter(|e| !e.is_empty()).collect::<Vec<_>>(), vec![id.clone()]);
    assert_eq!(bundle["total"], 1);
    let entries = bundle["entry"].as_array().unwrap();
    let outcome = entries.iter().find(|e| e["search"]["mode"] == "outcome").expect("an OperationOutcome entry");
    let issues = outcome["resource"]["issue"].as_array().unwrap();
    assert_eq!(issues.len(), 2, "{outcome}");
    assert!(issues.iter().all(|i| i["severity"] == "warning"), "{outcome}");
    let text = outcome.to_string();
    assert!(text.contains("an unknown parameter") && text.contains("'given'"), "{text}");
    assert!(!bundle.to_string().to_lowercase().contains("zzsecret"), "{bundle}");
    let own = decoded(&link(&bundle, "self").unwrap());
    assert!(own.contains("family=") && !own.contains("given"), "ignored parameters stay out of the links: {own}");

    // Lenient handling does not accept bad values of supported parameters.
    let response = app.get_with(&desk, "/fhir/Patient?birthdate=1970-13-45", &[("prefer", "handling=lenient")]).await;
    expect_outcome(response, StatusCode::BAD_REQUEST).await;
    // Strict handling, or none, refuses the unknown parameter.
    for headers in [&[("prefer", "handling=strict")][..], &[]] {
        let outcome = expect_outcome(app.get_with(&desk, &format!("/fhir/{query}"), headers).await, StatusCode::BAD_REQUEST).await;
        assert!(!outcome.to_string().to_lowercase().contains("zzsecret"), "{outcome}");
    }
}

#[tokio::test]
async fn another_fhir_version_is_not_acceptable() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let id = app.create(&desk, &patient(&marker(), "dr1")).await;
    for path in [format!("/fhir/Patient/{id}"), "/fhir/Patient".to_owned(), "/fhir/metadata".to_owned()] {
        for version in ["3.0", "5.0", "4.3"] {
            let accept = format!("application/fhir+json; fhirVersion={version}");
            let outcome = expect_outcome(app.get_with(&desk, &path, &[("accept", &accept)]).await, StatusCode::NOT_ACCEPTABLE).await;
            assert_r4(&outcome);
        }
        for accept in ["application/fhir+json; fhirVersion=4.0", "application/fhir+json;fhirVersion=4.0.1", "application/fhir+json"] {
            assert_eq!(app.get_with(&desk, &path, &[("accept", accept)]).await.status(), StatusCode::OK, "{path} {accept}");
        }
    }
}

#[tokio::test]
async fn sort_by_last_updated_descending_lists_the_newest_first() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let created = born_on(&app, &desk, "1906-07-08", 4).await;
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    let bundle = searchset(&app, &desk, "Patient?birthdate=1906-07-08&_sort=-_lastUpdated", &[]).await;
    assert_eq!(entry_ids(&bundle), newest_first);
    let bundle = searchset(&app, &desk, "Patient?birthdate=1906-07-08&_sort=_lastUpdated", &[]).await;
    assert_eq!(entry_ids(&bundle), created);
    // Paging keeps the order.
    let first = searchset(&app, &desk, "Patient?birthdate=1906-07-08&_sort=-_lastUpdated&_count=2", &[]).await;
    assert_eq!(entry_ids(&first), newest_first[..2]);
    let next = link(&first, "next").unwrap();
    let second: Value = app.client.get(&next).bearer_auth(&desk.token).send().await.unwrap().json().await.unwrap();
    assert_eq!(entry_ids(&second), newest_first[2..]);
}
