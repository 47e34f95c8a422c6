use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

async fn search(app: &TestApp, who: &Who, query: &str) -> Value {
    let response = app.get(who, &format!("/fhir/{query}")).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    assert_eq!(body["type"], "searchset");
    body
}

#[tokio::test]
async fn every_patient_parameter_finds_exactly_the_right_patient_in_any_letter_case() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let (a, b) = (marker(), marker());
    let id_a = app.create(&desk, &patient(&a, "dr1")).await;
    let mut other = patient(&b, "dr1");
    other["birthDate"] = "1902-03-04".into();
    other["telecom"][0]["value"] = "555-010-0200".into();
    let id_b = app.create(&desk, &other).await;

    let upper = a.to_uppercase();
    for query in [
        format!("Patient?identifier=urn:test:mrn|MRN-{a}"),
        format!("Patient?identifier=URN:TEST:MRN|mrn-{upper}"),
        format!("Patient?identifier=mrn-{a}"),
        format!("Patient?family=zz-family-{upper}"),
        format!("Patient?family:exact=Zz-Family-{a}"),
        format!("Patient?given=ZZ-GIVEN-{upper}"),
        "Patient?birthdate=1901-02-03".to_owned(),
        "Patient?birthdate=eq1901-02-03".to_owned(),
        "Patient?phone=15550100199".to_owned(),
        "Patient?phone=%2B1%20555%20010%200199".to_owned(),
        format!("Patient?email=ZZ.{upper}@EXAMPLE.TEST"),
        format!("Patient?_id={id_a}"),
        format!("Patient?family=zz-family-{a}&birthdate=1901-02-03"),
    ] {
        let bundle = search(&app, &desk, &query).await;
        assert_eq!(entry_ids(&bundle), vec![id_a.clone()], "{query}");
        assert_eq!(bundle["total"], 1, "{query}");
    }
    // OR within a parameter, AND across parameters; partial matches find nothing.
    let both = search(&app, &desk, &format!("Patient?family=zz-family-{a},zz-family-{b}")).await;
    let mut ids = entry_ids(&both);
    ids.sort();
    let mut expected = vec![id_a.clone(), id_b.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(entry_ids(&search(&app, &desk, &format!("Patient?family=zz-family-{a}&birthdate=1902-03-04")).await).is_empty());
    assert!(entry_ids(&search(&app, &desk, "Patient?family=zz-family").await).is_empty());
    assert!(entry_ids(&search(&app, &desk, &format!("Patient?identifier=urn:other|MRN-{a}")).await).is_empty());
}

#[tokio::test]
async fn practitioner_identifier_and_family_search() {
    let app = spawn_app().await;
    let m = marker();
    let id = app.create(&app.admin(), &practitioner(&m)).await;
    let nurse = app.who(TENANT, &["nurse"], None);
    for query in [format!("Practitioner?identifier=urn:test:npi|npi-{m}"), format!("Practitioner?family=ZZ-DOC-{}", m.to_uppercase())] {
        assert_eq!(entry_ids(&search(&app, &nurse, &query).await), vec![id.clone()], "{query}");
    }
}

#[tokio::test]
async fn paging_follows_next_links_through_every_match_once() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let mut created = Vec::new();
    for _ in 0..7 {
        let mut p = patient(&marker(), "dr1");
        p["birthDate"] = "1903-01-01".into();
        created.push(app.create(&desk, &p).await);
    }
    created.sort();
    let mut url = app.url("/fhir/Patient?birthdate=1903-01-01&_count=3");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let bundle: Value = app.client.get(&url).bearer_auth(&desk.token).send().await.unwrap().json().await.unwrap();
        assert_eq!(bundle["total"], 7);
        seen.extend(entry_ids(&bundle));
        pages += 1;
        let next =
            bundle["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").map(|l| l["url"].as_str().unwrap().to_owned());
        match next {
            Some(n) => url = n,
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created, "every match once, in id order");
}

#[tokio::test]
async fn post_search_takes_a_form_body() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let m = marker();
    let id = app.create(&desk, &patient(&m, "dr1")).await;
    let response = app
        .client
        .post(app.url("/fhir/Patient/_search"))
        .bearer_auth(&desk.token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("family=zz-family-{m}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(entry_ids(&response.json().await.unwrap()), vec![id]);
}

#[tokio::test]
async fn unsupported_parameters_are_refused_without_echoing_values() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    for query in [
        "Patient?nickname=ZZSECRETVALUE",
        "Patient?family:contains=ZZSECRETVALUE",
        "Patient?birthdate=gt1901-01-01",
        "Patient?birthdate=ZZSECRETVALUE",
        "Patient?_count=ZZSECRETVALUE",
        "Patient?_sort=family",
    ] {
        let body = expect_outcome(app.get(&desk, &format!("/fhir/{query}")).await, StatusCode::BAD_REQUEST).await;
        assert!(!body.to_string().contains("ZZSECRETVALUE"), "{query}: {body}");
    }
}

#[tokio::test]
async fn the_same_value_in_another_tenant_is_not_found() {
    let app = spawn_app().await;
    let m = marker();
    app.create(&app.front_desk(), &patient(&m, "dr1")).await;
    let other_desk = app.who("clinic-b", &["front_desk"], None);
    let bundle = search(&app, &other_desk, &format!("Patient?family=zz-family-{m}")).await;
    assert!(entry_ids(&bundle).is_empty());
    assert_eq!(bundle["total"], 0);
}

#[tokio::test]
async fn searches_do_not_find_deleted_or_outdated_values() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let (m, n) = (marker(), marker());
    let id = app.create(&desk, &patient(&m, "dr1")).await;
    let mut changed = patient(&n, "dr1");
    changed["id"] = id.clone().into();
    assert_eq!(app.put(&desk, &format!("/fhir/Patient/{id}"), &changed, None).await.status(), StatusCode::OK);
    assert!(entry_ids(&search(&app, &desk, &format!("Patient?family=zz-family-{m}")).await).is_empty());
    assert_eq!(entry_ids(&search(&app, &desk, &format!("Patient?family=zz-family-{n}")).await), vec![id.clone()]);
    app.delete(&desk, &format!("/fhir/Patient/{id}")).await;
    assert!(entry_ids(&search(&app, &desk, &format!("Patient?family=zz-family-{n}")).await).is_empty());
}
