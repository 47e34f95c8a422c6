//! Discovery (SPEC section 3): SMART App Launch discovery served only when an
//! authorization server is configured, and a CapabilityStatement that lists exactly what
//! works, proven by walking it: every interaction, search parameter and operation it
//! names for every type it lists is exercised and must succeed.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::clinical::{allergy, assert_r4, condition, encounter, medication_request, observation};
use crate::helpers::*;

const DISCOVERY: [&str; 2] = ["/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"];
const AUTHORIZE: &str = "https://auth.example.org/oauth2/authorize";
const TOKEN: &str = "https://auth.example.org/oauth2/token";
const OAUTH_URIS: &str = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";

async fn spawn_smart_app() -> TestApp {
    spawn_app_with(|c| {
        c.insert("smart_authorize_url".into(), AUTHORIZE.into());
        c.insert("smart_token_url".into(), TOKEN.into());
    })
    .await
}

/// The CapabilityStatement, fetched without a token and checked to be valid R4.
async fn metadata(app: &TestApp) -> Value {
    let response = app.client.get(app.url("/fhir/metadata")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let statement: Value = response.json().await.unwrap();
    assert_r4(&statement);
    statement
}

#[tokio::test]
async fn without_an_authorization_server_smart_is_neither_served_nor_claimed() {
    let app = spawn_app().await;
    for path in DISCOVERY {
        let outcome = expect_outcome(app.client.get(app.url(path)).send().await.unwrap(), StatusCode::NOT_FOUND).await;
        assert_r4(&outcome);
        // A token changes nothing.
        expect_outcome(app.get(&app.front_desk(), path).await, StatusCode::NOT_FOUND).await;
    }
    let statement = metadata(&app).await;
    let security = &statement["rest"][0]["security"];
    assert!(security.get("service").is_none(), "no security service is claimed: {security}");
    assert!(security.get("extension").is_none(), "no OAuth endpoints are announced: {security}");
    let description = security["description"].as_str().unwrap();
    assert!(description.contains("Bearer JWT") && description.contains("fhirUser"), "{description}");
    assert!(!statement.to_string().contains("SMART"), "{statement}");
}

#[tokio::test]
async fn with_an_authorization_server_discovery_is_public_and_the_statement_claims_smart() {
    let app = spawn_smart_app().await;
    for path in DISCOVERY {
        // No token, as SMART apps read it before they have one.
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("application/json"), "{path}: {content_type}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let doc: Value = response.json().await.unwrap();
        assert_eq!(
            doc,
            json!({
                "authorization_endpoint": AUTHORIZE,
                "token_endpoint": TOKEN,
                "grant_types_supported": ["authorization_code"],
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "capabilities": ["launch-standalone"],
            }),
            "{path}"
        );
        // SMART 2.x: PKCE's plain method must never be offered.
        assert!(!doc["code_challenge_methods_supported"].as_array().unwrap().contains(&json!("plain")));
        // An invalid token is not even looked at.
        let response = app.client.get(app.url(path)).bearer_auth("not-a-token").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let response = app.client.post(app.url(path)).send().await.unwrap();
        assert_eq!(response.headers().get("allow").map(|v| v.to_str().unwrap().to_owned()).as_deref(), Some("GET"), "{path}");
        expect_outcome(response, StatusCode::METHOD_NOT_ALLOWED).await;
    }

    let statement = metadata(&app).await;
    let security = &statement["rest"][0]["security"];
    let service = &security["service"][0]["coding"][0];
    assert_eq!(service["system"], "http://terminology.hl7.org/CodeSystem/restful-security-service");
    assert_eq!(service["code"], "SMART-on-FHIR");
    let extension = security["extension"].as_array().unwrap().iter().find(|e| e["url"] == OAUTH_URIS).expect("oauth-uris extension");
    let uri = |name: &str| extension["extension"].as_array().unwrap().iter().find(|e| e["url"] == name).map(|e| e["valueUri"].clone());
    assert_eq!(uri("authorize"), Some(json!(AUTHORIZE)));
    assert_eq!(uri("token"), Some(json!(TOKEN)));
    assert_eq!(security["cors"], false, "no CORS headers are served");
}

#[tokio::test]
async fn discovery_is_rate_limited_per_address_like_the_capability_statement() {
    let app = spawn_app_with(|c| {
        c.insert("smart_authorize_url".into(), "http://127.0.0.1:9/authorize".into());
        c.insert("smart_token_url".into(), "http://localhost:9/token".into());
        c.insert("rate_limit".into(), "1".into());
    })
    .await;
    // Rate 1/s allows a burst of 2 per address, whatever the path and with no token.
    let mut statuses = Vec::new();
    for path in ["/fhir/metadata", DISCOVERY[0], DISCOVERY[1], DISCOVERY[0]] {
        statuses.push(app.client.get(app.url(path)).send().await.unwrap().status().as_u16());
    }
    assert_eq!(&statuses[..2], &[200, 200], "{statuses:?}");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn a_lone_or_plain_text_smart_endpoint_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    for (env, named) in [
        (vec![("CAREVAULT_SMART_AUTHORIZE_URL", AUTHORIZE)], "go together"),
        (vec![("CAREVAULT_SMART_TOKEN_URL", TOKEN)], "go together"),
        (vec![("CAREVAULT_SMART_AUTHORIZE_URL", "http://auth.example.org/authorize"), ("CAREVAULT_SMART_TOKEN_URL", TOKEN)], "https"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_carevault"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CAREVAULT_DATA_DIR", &data)
            .env("CAREVAULT_ADDR", "127.0.0.1:0")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} started");
        assert!(stderr.contains("smart_") && stderr.contains(named), "{env:?}: {stderr}");
    }
}

#[tokio::test]
async fn the_capability_statement_with_smart_is_the_same_statement_plus_smart() {
    let (plain, smart) = (spawn_app().await, spawn_smart_app().await);
    let (mut a, mut b) = (metadata(&plain).await, metadata(&smart).await);
    for statement in [&mut a, &mut b] {
        statement["rest"][0]["security"] = Value::Null;
        statement["implementation"]["url"] = Value::Null;
    }
    assert_eq!(a, b, "SMART changes the security element only");
}

/// The records and callers of the walk: a Practitioner (created by an admin), a Patient
/// in that Practitioner's care (by the front desk), and that Practitioner as a clinician.
struct Walk {
    app: TestApp,
    admin: Who,
    desk: Who,
    gp: Who,
    practitioner: String,
    patient: String,
}

struct Reply {
    status: StatusCode,
    etag: Option<String>,
    body: Value,
}

const CLINICAL: [&str; 5] = ["Encounter", "Observation", "Condition", "AllergyIntolerance", "MedicationRequest"];
const SNOMED: &str = "http://snomed.info/sct";

/// Percent-encodes a search value.
fn enc(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Walk {
    async fn new() -> Self {
        let app = spawn_app().await;
        let (admin, desk, m) = (app.admin(), app.front_desk(), marker());
        let practitioner = app.create(&admin, &practitioner(&m)).await;
        let patient = app.create(&desk, &patient(&m, &practitioner)).await;
        let gp = app.clinician(&practitioner);
        Self { app, admin, desk, gp, practitioner, patient }
    }

    /// Who writes and reads records of `rtype` in the walk: Practitioners the admin,
    /// Patients the front desk, clinical records the patient's practitioner.
    fn who(&self, rtype: &str) -> &Who {
        match rtype {
            "Practitioner" => &self.admin,
            "Patient" => &self.desk,
            _ => &self.gp,
        }
    }

    /// A valid record of `rtype`; `tag` tells records of one type apart where it can.
    fn sample(&self, rtype: &str, tag: &str) -> Value {
        let pid = &self.patient;
        match rtype {
            "Practitioner" => practitioner(tag),
            "Patient" => patient(tag, &self.practitioner),
            "Encounter" => encounter(pid, "finished", "185349003", "2026-03-05T09:00:00Z", "2026-03-05T09:30:00Z", &format!("v-{tag}")),
            "Observation" => observation(pid, "vital-signs", "29463-7", "2026-03-05T10:00:00Z", "final"),
            "Condition" => {
                let mut c = condition(pid, "problem-list-item", "active", "38341003", "2026-01-10");
                c["recordedDate"] = json!("2026-01-11");
                c
            }
            "AllergyIntolerance" => {
                let mut a = allergy(pid, "active", "91936005");
                a["recordedDate"] = json!("2026-02-01");
                a
            }
            "MedicationRequest" => medication_request(pid, "active", "order", "197361", "2026-02-02"),
            other => panic!("the statement lists {other}; the walk cannot make one"),
        }
    }

    /// A value of search parameter `param` that matches the walk's record `id` of `rtype`
    /// made with `tag` (last updated on `updated`, `YYYY-MM-DD`).
    fn search_value(&self, rtype: &str, tag: &str, param: &str, id: &str, updated: &str) -> String {
        let m = tag;
        match (rtype, param) {
            (_, "_id") => id.to_owned(),
            (_, "_lastUpdated") => updated.to_owned(),
            ("Patient", "identifier") => format!("urn:test:mrn|MRN-{m}"),
            ("Patient", "family") => format!("Zz-Family-{m}"),
            ("Patient", "given") => format!("Zz-Given-{m}"),
            ("Patient", "name") => format!("zz-given-{m}"),
            ("Patient", "birthdate") => "1901-02-03".to_owned(),
            ("Patient", "phone") => "+1 555 010 0199".to_owned(),
            ("Patient", "email") => format!("ZZ.{m}@example.test"),
            ("Patient", "general-practitioner") => format!("Practitioner/{}", self.practitioner),
            ("Practitioner", "identifier") => format!("urn:test:npi|NPI-{m}"),
            ("Practitioner", "family") => format!("Zz-Doc-{m}"),
            (_, "patient" | "subject") => format!("Patient/{}", self.patient),
            ("Encounter", "date") => "2026-03-05".to_owned(),
            ("Encounter", "status") => "finished".to_owned(),
            ("Encounter", "type") => format!("{SNOMED}|185349003"),
            ("Encounter", "class") => "http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB".to_owned(),
            ("Encounter", "identifier") => format!("urn:test:visit|v-{m}"),
            ("Observation", "category") => "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs".to_owned(),
            ("Observation", "code") => "http://loinc.org|29463-7".to_owned(),
            ("Observation", "date") => "2026-03-05".to_owned(),
            ("Observation", "status") => "final".to_owned(),
            ("Condition", "category") => "http://terminology.hl7.org/CodeSystem/condition-category|problem-list-item".to_owned(),
            ("Condition", "clinical-status") => "http://terminology.hl7.org/CodeSystem/condition-clinical|active".to_owned(),
            ("Condition", "verification-status") => "http://terminology.hl7.org/CodeSystem/condition-ver-status|confirmed".to_owned(),
            ("Condition", "code") => format!("{SNOMED}|38341003"),
            ("Condition", "onset-date") => "2026-01-10".to_owned(),
            ("Condition", "recorded-date") => "2026-01-11".to_owned(),
            ("AllergyIntolerance", "clinical-status") => {
                "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical|active".to_owned()
            }
            ("AllergyIntolerance", "verification-status") => {
                "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification|confirmed".to_owned()
            }
            ("AllergyIntolerance", "code") => format!("{SNOMED}|91936005"),
            ("AllergyIntolerance", "date") => "2026-02-01".to_owned(),
            ("MedicationRequest", "intent") => "order".to_owned(),
            ("MedicationRequest", "status") => "active".to_owned(),
            ("MedicationRequest", "code") => "http://www.nlm.nih.gov/research/umls/rxnorm|197361".to_owned(),
            ("MedicationRequest", "authoredon") => "2026-02-02".to_owned(),
            _ => panic!("the statement lists {rtype}.{param}; the walk has no matching value for it"),
        }
    }

    /// Conditional criteria that match the walk's one record of `rtype`, made with `tag`.
    fn criteria(&self, rtype: &str, tag: &str) -> String {
        let m = tag;
        let pid = &self.patient;
        match rtype {
            "Practitioner" => format!("identifier={}", enc(&format!("urn:test:npi|NPI-{m}"))),
            "Patient" => format!("identifier={}", enc(&format!("urn:test:mrn|MRN-{m}"))),
            "Encounter" => format!("identifier={}", enc(&format!("urn:test:visit|v-{m}"))),
            "Observation" => format!("patient={pid}&code={}", enc("http://loinc.org|29463-7")),
            "Condition" => format!("patient={pid}&code={}", enc(&format!("{SNOMED}|38341003"))),
            "AllergyIntolerance" => format!("patient={pid}&code={}", enc(&format!("{SNOMED}|91936005"))),
            "MedicationRequest" => format!("subject=Patient/{pid}&code={}", enc("http://www.nlm.nih.gov/research/umls/rxnorm|197361")),
            other => panic!("no conditional criteria for {other}"),
        }
    }

    async fn send(&self, who: &Who, method: Method, path: &str, body: Option<(&str, String)>, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.app.client.request(method, self.app.url(path)).bearer_auth(&who.token);
        if let Some((content_type, body)) = body {
            request = request.header("content-type", content_type).body(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let etag = response.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
        let text = response.text().await.unwrap();
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
        if body.is_object() {
            assert_r4(&body);
        }
        Reply { status, etag, body }
    }

    /// `send`, which must answer `want`.
    async fn expect(
        &self,
        want: StatusCode,
        who: &Who,
        method: Method,
        path: &str,
        body: Option<(&str, String)>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let what = format!("{method} {path}");
        let reply = self.send(who, method, path, body, headers).await;
        assert_eq!(reply.status, want, "{what}: {}", reply.body);
        reply
    }

    async fn search_ids(&self, who: &Who, path: &str) -> Vec<String> {
        let reply = self.expect(StatusCode::OK, who, Method::GET, path, None, &[]).await;
        assert_eq!(reply.body["type"], "searchset", "{path}");
        entry_ids(&reply.body)
    }

    /// Every interaction the statement lists for `resource` (one `rest.resource` entry),
    /// each search parameter and the conditional writes it claims, on a record of the
    /// type made for the walk.
    async fn walk_type(&self, resource: &Value) {
        let rtype = resource["type"].as_str().unwrap();
        let known: BTreeSet<&str> = [
            "type",
            "interaction",
            "versioning",
            "readHistory",
            "updateCreate",
            "conditionalCreate",
            "conditionalUpdate",
            "conditionalDelete",
            "searchParam",
            "operation",
        ]
        .into();
        for key in resource.as_object().unwrap().keys() {
            assert!(known.contains(key.as_str()), "{rtype}.{key} is claimed but the walk does not check it");
        }
        let mut listed: BTreeSet<String> =
            resource["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap().to_owned()).collect();
        let mut take = |code: &str| listed.remove(code);
        let who = self.who(rtype);
        let fhir = "application/fhir+json";

        // The walk's own record of the type (the fixture's Patient and Practitioner stay
        // as they are: the clinical records and the clinician depend on them).
        let tag = marker();
        assert!(take("create"), "{rtype}: the walk needs create");
        let created = self
            .expect(
                StatusCode::CREATED,
                who,
                Method::POST,
                &format!("/fhir/{rtype}"),
                Some((fhir, self.sample(rtype, &tag).to_string())),
                &[],
            )
            .await;
        assert_eq!(created.etag.as_deref(), Some("W/\"1\""));
        let id = created.body["id"].as_str().unwrap().to_owned();
        let path = format!("/fhir/{rtype}/{id}");
        let mut version = 1;

        if take("read") {
            let read = self.expect(StatusCode::OK, who, Method::GET, &path, None, &[]).await;
            assert_eq!(read.body["id"], id.as_str());
            assert_eq!(read.etag.as_deref(), Some(&*format!("W/\"{version}\"")), "{path}");
        }
        if take("vread") {
            let vread = self.expect(StatusCode::OK, who, Method::GET, &format!("{path}/_history/1"), None, &[]).await;
            assert_eq!(vread.body["meta"]["versionId"], "1");
        }
        if take("update") {
            let mut body = self.expect(StatusCode::OK, who, Method::GET, &path, None, &[]).await.body;
            body["language"] = json!("de");
            let stale = format!("W/\"{}\"", version + 5);
            assert_eq!(resource["versioning"], "versioned-update", "{rtype}: the walk checks versioned updates only");
            {
                self.expect(
                    StatusCode::PRECONDITION_FAILED,
                    who,
                    Method::PUT,
                    &path,
                    Some((fhir, body.to_string())),
                    &[("if-match", &stale)],
                )
                .await;
            }
            let current = format!("W/\"{version}\"");
            let updated =
                self.expect(StatusCode::OK, who, Method::PUT, &path, Some((fhir, body.to_string())), &[("if-match", &current)]).await;
            version += 1;
            assert_eq!(updated.body["meta"]["versionId"], version.to_string());
        }
        assert_eq!(resource["updateCreate"], false, "{rtype}: the walk checks updateCreate false only");
        {
            let unknown = format!("/fhir/{rtype}/{}", uuid::Uuid::new_v4());
            let mut body = self.sample(rtype, &marker());
            body["id"] = json!(unknown.rsplit('/').next().unwrap());
            let reply = self.send(who, Method::PUT, &unknown, Some((fhir, body.to_string())), &[]).await;
            assert!(!reply.status.is_success(), "updateCreate is false but PUT {unknown} answered {}", reply.status);
        }
        if take("patch") {
            let current = format!("W/\"{version}\"");
            let patch = json!([{"op": "add", "path": "/language", "value": "en"}]).to_string();
            let patched = self
                .expect(StatusCode::OK, who, Method::PATCH, &path, Some(("application/json-patch+json", patch)), &[("if-match", &current)])
                .await;
            assert_eq!(patched.body["language"], "en");
            version += 1;
        }
        if take("history-instance") {
            let history = self.expect(StatusCode::OK, who, Method::GET, &format!("{path}/_history"), None, &[]).await;
            assert_eq!(history.body["type"], "history");
            assert_eq!(history.body["entry"].as_array().unwrap().len(), version, "{}", history.body);
        }
        if resource["readHistory"] == true {
            // Past versions stay readable once the record has moved on.
            let vread = self.expect(StatusCode::OK, who, Method::GET, &format!("{path}/_history/1"), None, &[]).await;
            assert_eq!(vread.body["meta"]["versionId"], "1");
            assert!(vread.body.get("language").is_none(), "version 1 as it was: {}", vread.body);
        }
        if resource["conditionalCreate"] == true {
            let criteria = self.criteria(rtype, &tag);
            let existing = self
                .expect(
                    StatusCode::OK,
                    who,
                    Method::POST,
                    &format!("/fhir/{rtype}"),
                    Some((fhir, self.sample(rtype, &tag).to_string())),
                    &[("if-none-exist", &criteria)],
                )
                .await;
            assert_eq!(existing.body["id"], id.as_str(), "If-None-Exist: {criteria} finds the record");
        }
        if resource["conditionalUpdate"] == true {
            let criteria = self.criteria(rtype, &tag);
            let mut body = self.expect(StatusCode::OK, who, Method::GET, &path, None, &[]).await.body;
            body["language"] = json!("fr");
            let updated = self
                .expect(StatusCode::OK, who, Method::PUT, &format!("/fhir/{rtype}?{criteria}"), Some((fhir, body.to_string())), &[])
                .await;
            assert_eq!(updated.body["id"], id.as_str());
            assert_eq!(updated.body["language"], "fr");
        }
        if take("search-type") {
            let ids = self.search_ids(who, &format!("/fhir/{rtype}")).await;
            assert!(ids.contains(&id), "GET /fhir/{rtype} lists {id}: {ids:?}");
        }
        let current = self.expect(StatusCode::OK, who, Method::GET, &path, None, &[]).await.body;
        let updated = current["meta"]["lastUpdated"].as_str().unwrap()[..10].to_owned();
        let clinical = CLINICAL.contains(&rtype);
        for param in resource["searchParam"].as_array().unwrap() {
            let name = param["name"].as_str().unwrap();
            let value = self.search_value(rtype, &tag, name, &id, &updated);
            let mut scopes = vec![String::new()];
            if clinical && !matches!(name, "patient" | "subject") {
                // Clinical searches are patient-scoped; `_id`, `identifier` and
                // `_lastUpdated` also work across the tenant, as documented.
                if !matches!(name, "_id" | "identifier" | "_lastUpdated") {
                    scopes.clear();
                }
                scopes.push(format!("patient={}&", self.patient));
            }
            // The value, and the other forms the parameter's documentation promises.
            let documentation = param["documentation"].as_str().unwrap_or("");
            let mut values = vec![value.clone()];
            if documentation.starts_with("system|code, code, |code or system|, with comma-separated alternatives") {
                match value.split_once('|') {
                    Some((system, code)) => values.extend([code.to_owned(), format!("{system}|")]),
                    // A `code` element has no system: `|code` names it too.
                    None => values.push(format!("|{value}")),
                }
                values.push(format!("zz-no-such-code,{value}"));
            }
            if documentation.starts_with("The patient (Patient/ID or ID)") {
                values.push(self.patient.clone());
            }
            if documentation.starts_with("Prefixes eq, ne, gt, ge, lt, le and partial dates") {
                values.extend(["eq", "ge", "le"].map(|p| format!("{p}{value}")).into_iter().chain([
                    "ne1999-01-01".to_owned(),
                    "gt1999-01-01".to_owned(),
                    "lt2999-01-01".to_owned(),
                    value[..4].to_owned(),
                    value[..7].to_owned(),
                ]));
            }
            for scope in &scopes {
                for value in &values {
                    let query = format!("/fhir/{rtype}?{scope}{name}={}", enc(value));
                    let ids = self.search_ids(who, &query).await;
                    assert!(ids.contains(&id), "{query} finds {id}: {ids:?}");
                }
            }
        }
        if take("delete") {
            let doomed = self.app.create(who, &self.sample(rtype, &marker())).await;
            let doomed = format!("/fhir/{rtype}/{doomed}");
            self.expect(StatusCode::NO_CONTENT, who, Method::DELETE, &doomed, None, &[]).await;
            self.expect(StatusCode::GONE, who, Method::GET, &doomed, None, &[]).await;
        }
        assert_eq!(resource["conditionalDelete"], "not-supported", "{rtype}: the walk checks an unsupported conditional delete only");
        {
            let reply = self.send(who, Method::DELETE, &format!("/fhir/{rtype}?{}", self.criteria(rtype, &tag)), None, &[]).await;
            assert!(!reply.status.is_success(), "conditional delete is not supported but answered {}", reply.status);
        }
        assert!(listed.is_empty(), "{rtype}: the walk does not know the interactions {listed:?}");
    }
}

#[tokio::test]
async fn the_capability_statement_lists_exactly_what_works() {
    let walk = Walk::new().await;
    let statement = metadata(&walk.app).await;
    assert_eq!(statement["fhirVersion"], "4.0.1");
    let rest = &statement["rest"][0];
    assert_eq!(statement["rest"].as_array().unwrap().len(), 1);
    assert_eq!(rest["mode"], "server");
    for key in rest.as_object().unwrap().keys() {
        assert!(["mode", "security", "resource", "interaction"].contains(&key.as_str()), "rest.{key} is claimed but not walked");
    }

    // Every format listed is served.
    for format in statement["format"].as_array().unwrap() {
        let format = format.as_str().unwrap();
        let path = format!("/fhir/Patient/{}", walk.patient);
        let reply = walk.expect(StatusCode::OK, &walk.desk, Method::GET, &path, None, &[("accept", format)]).await;
        assert_eq!(reply.body["id"], walk.patient.as_str(), "{format}");
    }

    let mut operations = Vec::new();
    for resource in rest["resource"].as_array().unwrap() {
        let rtype = resource["type"].as_str().unwrap().to_owned();
        walk.walk_type(resource).await;
        for operation in resource["operation"].as_array().into_iter().flatten() {
            operations.push((rtype.clone(), operation["name"].as_str().unwrap().to_owned()));
        }
    }

    // Operations run once every type has been walked, on the fixture's Patient, whose
    // record now holds one live record of each clinical type.
    assert!(!operations.is_empty(), "Patient $everything is claimed");
    for (rtype, operation) in operations {
        match (rtype.as_str(), operation.as_str()) {
            ("Patient", "everything") => {
                let ids = walk.search_ids(&walk.gp, &format!("/fhir/Patient/{}/$everything", walk.patient)).await;
                assert_eq!(ids.first(), Some(&walk.patient), "the Patient first");
                assert_eq!(ids.len(), 1 + CLINICAL.len(), "the Patient and one record of each clinical type: {ids:?}");
            }
            _ => panic!("{rtype} ${operation} is claimed; the walk does not know it"),
        }
    }

    // System interactions.
    let fhir = "application/fhir+json";
    for interaction in rest["interaction"].as_array().unwrap() {
        let code = interaction["code"].as_str().unwrap();
        let bundle = match code {
            "transaction" => json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"fullUrl": "urn:uuid:0f4b7e3a-0000-4000-8000-000000000001", "resource": practitioner(&marker()),
                 "request": {"method": "POST", "url": "Practitioner"}}
            ]}),
            "batch" => json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": format!("Practitioner/{}", walk.practitioner)}},
                {"resource": practitioner(&marker()), "request": {"method": "POST", "url": "Practitioner"}}
            ]}),
            other => panic!("system interaction {other} is claimed; the walk does not know it"),
        };
        let reply = walk.expect(StatusCode::OK, &walk.admin, Method::POST, "/fhir", Some((fhir, bundle.to_string())), &[]).await;
        assert_eq!(reply.body["type"], format!("{code}-response"));
        for entry in reply.body["entry"].as_array().unwrap() {
            assert!(entry["response"]["status"].as_str().unwrap().starts_with('2'), "{code}: {entry}");
        }
    }
}
