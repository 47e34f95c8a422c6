use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

const SECRET: &str = "ZZSECRETPHI";

async fn post_raw(app: &TestApp, who: &Who, content_type: &str, body: String) -> reqwest::Response {
    app.client.post(app.url("/fhir/Patient")).bearer_auth(&who.token).header("content-type", content_type).body(body).send().await.unwrap()
}

async fn patient_count(app: &TestApp, who: &Who) -> u64 {
    let bundle: Value = app.get(who, "/fhir/Patient").await.json().await.unwrap();
    bundle["total"].as_u64().unwrap()
}

/// Each invalid resource is refused with an outcome naming the element, echoing no value.
#[tokio::test]
async fn invalid_resources_name_the_element_and_never_echo_the_value() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (json!({"resourceType": "Patient", "gender": SECRET}), StatusCode::UNPROCESSABLE_ENTITY, "Patient.gender"),
        (json!({"resourceType": "Patient", "birthDate": SECRET}), StatusCode::UNPROCESSABLE_ENTITY, "Patient.birthDate"),
        (json!({"resourceType": "Patient", "birthDate": "1970-02-31"}), StatusCode::UNPROCESSABLE_ENTITY, "Patient.birthDate"),
        (json!({"resourceType": "Patient", "name": [{"family": 42}]}), StatusCode::UNPROCESSABLE_ENTITY, "Patient.name[0].family"),
        (json!({"resourceType": "Patient", "name": {"family": SECRET}}), StatusCode::UNPROCESSABLE_ENTITY, "Patient.name"),
        (
            json!({"resourceType": "Patient", "telecom": [{"system": "telegraph", "value": SECRET}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Patient.telecom[0].system",
        ),
        (json!({"resourceType": "Patient", "nickname": SECRET}), StatusCode::UNPROCESSABLE_ENTITY, "Patient"),
        (json!({"resourceType": "Practitioner", "name": [{"family": SECRET}]}), StatusCode::BAD_REQUEST, "resourceType"),
        (json!({"name": [{"family": SECRET}]}), StatusCode::BAD_REQUEST, "resourceType"),
    ];
    for (body, status, path) in cases {
        let response = app.post(&desk, "/fhir/Patient", &body).await;
        let outcome = expect_outcome(response, status).await;
        let text = outcome.to_string();
        assert!(!text.contains(SECRET), "value echoed for {body}: {text}");
        let paths: Vec<&str> = outcome["issue"].as_array().unwrap().iter().filter_map(|i| i["expression"][0].as_str()).collect();
        assert!(paths.contains(&path), "expected {path} in {paths:?} for {body}");
    }
    assert_eq!(patient_count(&app, &desk).await, 0, "nothing was written");
}

#[tokio::test]
async fn malformed_bodies_and_media_types_get_outcomes() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let broken = format!("{{\"resourceType\": \"Patient\", \"name\": [{{\"family\": \"{SECRET}\"");
    let outcome = expect_outcome(post_raw(&app, &desk, FHIR_JSON, broken).await, StatusCode::BAD_REQUEST).await;
    assert!(!outcome.to_string().contains(SECRET));
    expect_outcome(post_raw(&app, &desk, FHIR_JSON, "[1,2,3]".into()).await, StatusCode::BAD_REQUEST).await;
    expect_outcome(post_raw(&app, &desk, FHIR_JSON, String::new()).await, StatusCode::BAD_REQUEST).await;
    let xml = "<Patient xmlns=\"http://hl7.org/fhir\"/>".to_owned();
    expect_outcome(post_raw(&app, &desk, "application/fhir+xml", xml).await, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let wants_xml = app.get_with(&desk, "/fhir/Patient", &[("accept", "application/fhir+xml")]).await;
    expect_outcome(wants_xml, StatusCode::NOT_ACCEPTABLE).await;
    expect_outcome(app.get(&desk, "/fhir/Patient?_format=xml").await, StatusCode::NOT_ACCEPTABLE).await;
    assert_eq!(patient_count(&app, &desk).await, 0);
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let app = spawn_app_with(|c| {
        c.insert("body_limit".into(), "4096".into());
    })
    .await;
    let desk = app.front_desk();
    let mut big = patient(&marker(), "dr1");
    big["name"][0]["given"] = json!(vec!["Zz-Padding"; 1000]);
    expect_outcome(app.post(&desk, "/fhir/Patient", &big).await, StatusCode::PAYLOAD_TOO_LARGE).await;
    // Also when the length is not declared up front (chunked upload).
    let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(big.to_string().into_bytes())]);
    let chunked = app
        .client
        .post(app.url("/fhir/Patient"))
        .bearer_auth(&desk.token)
        .header("content-type", FHIR_JSON)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    expect_outcome(chunked, StatusCode::PAYLOAD_TOO_LARGE).await;
    let form = app
        .client
        .post(app.url("/fhir/Patient/_search"))
        .bearer_auth(&desk.token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("family={}", "z".repeat(8192)))
        .send()
        .await
        .unwrap();
    expect_outcome(form, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(patient_count(&app, &desk).await, 0);
}
