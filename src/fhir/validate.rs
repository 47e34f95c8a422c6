//! Validation of resources against the official FHIR R4 JSON schema, plus the rules it
//! cannot express (calendar dates, required primitives); issues name element paths and
//! never a submitted value or a key FHIR does not define.

use std::collections::HashSet;

use serde_json::Value;

use crate::domain::ResourceType;

/// The FHIR R4 JSON schema (CC0), `http://hl7.org/fhir/json-schema/4.0`.
const FHIR_SCHEMA: &str = include_str!("../../schemas/fhir.schema.json");
const FHIR_SCHEMA_ID: &str = "http://hl7.org/fhir/json-schema/4.0";
/// At most this many issues are reported for one resource.
const MAX_ISSUES: usize = 20;

/// OperationOutcome issue types used by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueCode {
    Structure,
    Required,
    Value,
    Invalid,
    Processing,
    NotSupported,
    NotFound,
    Deleted,
    Conflict,
    Security,
    Forbidden,
    Login,
    TooCostly,
    Throttled,
    Exception,
    Transient,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::Invalid => "invalid",
            IssueCode::Processing => "processing",
            IssueCode::NotSupported => "not-supported",
            IssueCode::NotFound => "not-found",
            IssueCode::Deleted => "deleted",
            IssueCode::Conflict => "conflict",
            IssueCode::Security => "security",
            IssueCode::Forbidden => "forbidden",
            IssueCode::Login => "login",
            IssueCode::TooCostly => "too-costly",
            IssueCode::Throttled => "throttled",
            IssueCode::Exception => "exception",
            IssueCode::Transient => "transient",
        }
    }
}

/// One problem found in a request. `diagnostics` is written by the server and never
/// contains a submitted value; `expression` is a FHIRPath-style element path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub code: IssueCode,
    pub expression: Option<String>,
    pub diagnostics: String,
}

impl Issue {
    pub fn new(code: IssueCode, expression: Option<String>, diagnostics: impl Into<String>) -> Self {
        Self { code, expression, diagnostics: diagnostics.into() }
    }
}

/// What stands in a path or message for a key the client chose that is no FHIR element
/// name: the key itself could be PHI (an SSN sent as a key), so it is never repeated.
pub const UNKNOWN_ELEMENT: &str = "(unknown element)";

/// `Patient` + `/name/0/family` → `Patient.name[0].family`. Segments that are not element
/// names of FHIR R4 (`known`) become [`UNKNOWN_ELEMENT`].
pub fn element_path(root: &str, pointer_segments: impl IntoIterator<Item = String>, known: &HashSet<String>) -> String {
    let mut path = root.to_owned();
    for segment in pointer_segments {
        if !segment.is_empty() && segment.len() <= 9 && segment.bytes().all(|b| b.is_ascii_digit()) {
            path.push_str(&format!("[{segment}]"));
        } else if known.contains(&segment) {
            path.push('.');
            path.push_str(&segment);
        } else {
            path.push('.');
            path.push_str(UNKNOWN_ELEMENT);
        }
    }
    path
}

/// Every element name the R4 schema defines, for any type: the only client-chosen keys
/// an error may repeat.
fn element_names(schema: &Value) -> HashSet<String> {
    let mut names = HashSet::new();
    if let Some(definitions) = schema.get("definitions").and_then(Value::as_object) {
        for definition in definitions.values() {
            if let Some(properties) = definition.get("properties").and_then(Value::as_object) {
                names.extend(properties.keys().filter(|k| !k.starts_with('_')).cloned());
            }
        }
    }
    names
}

/// Validates resources of the served types against the R4 schema, built once at start
/// and shared by all workers.
pub struct FhirValidator {
    validator: jsonschema::Validator,
    /// Element names of FHIR R4, see [`element_names`].
    known: HashSet<String>,
}

impl std::fmt::Debug for FhirValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FhirValidator")
    }
}

impl FhirValidator {
    /// Compiles one validator over every served type: an `if resourceType = T then
    /// #/definitions/T` branch per type, against the official schema in one registry.
    pub fn new() -> Result<Self, String> {
        let names: Vec<&str> = ResourceType::ALL.iter().map(|t| t.name()).collect();
        Self::for_definitions(&names)
    }

    /// A validator over any resource definitions of the R4 schema (for example
    /// `AuditEvent`, to check exports).
    pub fn for_definitions(names: &[&str]) -> Result<Self, String> {
        let fhir: Value = serde_json::from_str(FHIR_SCHEMA).map_err(|e| format!("FHIR schema is not JSON: {e}"))?;
        let known = element_names(&fhir);
        let registry = jsonschema::Registry::new()
            .add(FHIR_SCHEMA_ID, fhir)
            .and_then(|r| r.prepare())
            .map_err(|e| format!("FHIR schema registry: {e}"))?;
        let branches: Vec<Value> = names
            .iter()
            .map(|name| {
                serde_json::json!({
                    "if": {"properties": {"resourceType": {"const": name}}, "required": ["resourceType"]},
                    "then": {"$ref": format!("{FHIR_SCHEMA_ID}#/definitions/{name}")}
                })
            })
            .collect();
        let root = serde_json::json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "allOf": branches,
        });
        let validator = jsonschema::options().with_registry(&registry).build(&root).map_err(|e| format!("FHIR validator: {e}"))?;
        Ok(Self { validator, known })
    }

    /// Schema validation only, for a definition named at construction; issues name paths
    /// under `root`.
    pub fn validate_schema(&self, root: &str, resource: &Value) -> Result<(), Vec<Issue>> {
        let issues: Vec<Issue> = self
            .validator
            .iter_errors(resource)
            .take(MAX_ISSUES)
            .map(|error| {
                schema_issue(
                    element_path(root, error.instance_path().iter().map(|s| s.to_string()), &self.known),
                    error.kind(),
                    &self.known,
                )
            })
            .collect();
        if issues.is_empty() { Ok(()) } else { Err(issues) }
    }

    /// Checks that `resource` is a valid R4 `rtype`. The caller has already checked that
    /// it is an object whose `resourceType` is `rtype`.
    pub fn validate(&self, rtype: ResourceType, resource: &Value) -> Result<(), Vec<Issue>> {
        let root = rtype.name();
        let mut issues: Vec<Issue> = self
            .validator
            .iter_errors(resource)
            .take(MAX_ISSUES)
            .map(|error| {
                let path = element_path(root, error.instance_path().iter().map(|s| s.to_string()), &self.known);
                schema_issue(path, error.kind(), &self.known)
            })
            .collect();
        issues.dedup();
        check_calendar_dates(root, resource, &self.known, &mut issues);
        check_required(rtype, resource, &mut issues);
        check_bound_concepts(rtype, resource, &mut issues);
        check_bound_codes(rtype, resource, &mut issues);
        issues.truncate(MAX_ISSUES);
        if issues.is_empty() { Ok(()) } else { Err(issues) }
    }
}

fn schema_issue(path: String, kind: &jsonschema::error::ValidationErrorKind, known: &HashSet<String>) -> Issue {
    use jsonschema::error::ValidationErrorKind as K;
    let (code, text) = match kind {
        K::AdditionalProperties { unexpected } => {
            // Only names FHIR defines elsewhere (a misplaced element) are repeated.
            let names: Vec<&str> = unexpected.iter().map(String::as_str).filter(|n| known.contains(*n)).collect();
            let text = if names.len() == unexpected.len() {
                format!("element(s) not allowed here: {}", names.join(", "))
            } else {
                "unknown element(s)".to_owned()
            };
            (IssueCode::Structure, text)
        }
        K::Required { property } => {
            let name = property.as_str().filter(|n| known.contains(*n)).unwrap_or("element");
            (IssueCode::Required, format!("required element '{name}' is missing"))
        }
        K::Type { .. } => (IssueCode::Structure, "element has the wrong JSON type".to_owned()),
        K::Pattern { .. } => (IssueCode::Value, "value does not have the format FHIR R4 requires".to_owned()),
        K::Enum { .. } | K::Constant { .. } => (IssueCode::Value, "value is not one of the codes FHIR R4 allows here".to_owned()),
        K::MinItems { .. } => (IssueCode::Structure, "array must not be empty".to_owned()),
        other => (IssueCode::Invalid, format!("fails the '{}' rule of the FHIR R4 schema", other.keyword())),
    };
    Issue::new(code, Some(path), text)
}

fn is_date_key(key: &str) -> bool {
    matches!(key, "start" | "end" | "date" | "issued" | "authoredOn" | "recorded" | "lastUpdated" | "lastOccurrence")
        || key.ends_with("Date")
        || key.ends_with("DateTime")
        || key.ends_with("Instant")
}

/// The schema checks the shape of dates, not the calendar: `1970-02-31` passes it.
fn check_calendar_dates(root: &str, value: &Value, known: &HashSet<String>, issues: &mut Vec<Issue>) {
    fn walk(path: &mut Vec<String>, key: Option<&str>, value: &Value, root: &str, known: &HashSet<String>, issues: &mut Vec<Issue>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    path.push(k.clone());
                    walk(path, Some(k), v, root, known, issues);
                    path.pop();
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    path.push(i.to_string());
                    walk(path, key, v, root, known, issues);
                    path.pop();
                }
            }
            Value::String(s) if key.is_some_and(is_date_key) && !calendar_ok(s) => {
                issues.push(Issue::new(
                    IssueCode::Value,
                    Some(element_path(root, path.iter().cloned(), known)),
                    "date is not a real calendar date",
                ));
            }
            _ => {}
        }
    }
    walk(&mut Vec::new(), None, value, root, known, issues);
}

fn calendar_ok(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return true; // YYYY or YYYY-MM (or not a date at all: the schema judges the shape)
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<u32>().ok());
    match (num(0..4), num(5..7), num(8..10)) {
        (Some(y), Some(m), Some(d)) => chrono::NaiveDate::from_ymd_opt(y as i32, m, d).is_some(),
        _ => true,
    }
}

/// Required elements (cardinality 1..1) of the served types: primitives the schema leaves
/// optional (it cannot require a primitive that may instead carry only an extension) and
/// the rest of R4's minimums. A choice element is named by its stem (`medication[x]`).
fn required_elements(rtype: ResourceType) -> &'static [&'static str] {
    match rtype {
        ResourceType::Patient | ResourceType::Practitioner => &[],
        ResourceType::Encounter => &["status", "class", "subject"],
        ResourceType::Observation => &["status", "code", "subject"],
        ResourceType::Condition => &["subject"],
        ResourceType::AllergyIntolerance => &["patient"],
        ResourceType::MedicationRequest => &["status", "intent", "medication[x]", "subject"],
    }
}

fn check_required(rtype: ResourceType, resource: &Value, issues: &mut Vec<Issue>) {
    let Some(map) = resource.as_object() else { return };
    for element in required_elements(rtype) {
        let present = match element.strip_suffix("[x]") {
            Some(stem) => {
                map.keys().any(|k| k.len() > stem.len() && k.starts_with(stem) && k[stem.len()..].starts_with(char::is_uppercase))
            }
            None => map.contains_key(*element) || map.contains_key(&format!("_{element}")),
        };
        let expression = format!("{}.{element}", rtype.name());
        if !present && !issues.iter().any(|i| i.expression.as_deref() == Some(expression.as_str())) {
            issues.push(Issue::new(IssueCode::Required, Some(expression), format!("required element '{element}' is missing")));
        }
    }
}

/// CodeableConcepts bound to a required value set (the schema cannot say which codes a
/// CodeableConcept may hold): `(type, element, code system, codes)`.
const REQUIRED_CONCEPTS: &[(ResourceType, &str, &str, &[&str])] = &[
    (
        ResourceType::Condition,
        "clinicalStatus",
        "http://terminology.hl7.org/CodeSystem/condition-clinical",
        &["active", "recurrence", "relapse", "inactive", "remission", "resolved"],
    ),
    (
        ResourceType::Condition,
        "verificationStatus",
        "http://terminology.hl7.org/CodeSystem/condition-ver-status",
        &["unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"],
    ),
    (
        ResourceType::AllergyIntolerance,
        "clinicalStatus",
        "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
        &["active", "inactive", "resolved"],
    ),
    (
        ResourceType::AllergyIntolerance,
        "verificationStatus",
        "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
        &["unconfirmed", "confirmed", "refuted", "entered-in-error"],
    ),
];

/// `code` elements bound to a required value set that the schema leaves as any code.
const REQUIRED_CODES: &[(ResourceType, &str, &[&str])] = &[
    (
        ResourceType::MedicationRequest,
        "status",
        &["active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"],
    ),
    (
        ResourceType::MedicationRequest,
        "intent",
        &["proposal", "plan", "order", "original-order", "reflex-order", "filler-order", "instance-order", "option"],
    ),
    (ResourceType::MedicationRequest, "priority", &["routine", "urgent", "asap", "stat"]),
];

fn check_bound_codes(rtype: ResourceType, resource: &Value, issues: &mut Vec<Issue>) {
    for (_, element, codes) in REQUIRED_CODES.iter().filter(|(t, ..)| *t == rtype) {
        let Some(value) = resource.get(*element) else { continue };
        if !value.as_str().is_some_and(|code| codes.contains(&code)) {
            issues.push(Issue::new(
                IssueCode::Value,
                Some(format!("{}.{element}", rtype.name())),
                format!("must be one of: {}", codes.join(", ")),
            ));
        }
    }
}

/// A CodeableConcept with a required binding holds a coding of its code system with one of
/// the value set's codes.
fn check_bound_concepts(rtype: ResourceType, resource: &Value, issues: &mut Vec<Issue>) {
    for (_, element, system, codes) in REQUIRED_CONCEPTS.iter().filter(|(t, ..)| *t == rtype) {
        let Some(concept) = resource.get(*element) else { continue };
        let codings = concept.get("coding").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let bound = codings.iter().any(|c| {
            c.get("system").and_then(Value::as_str) == Some(*system)
                && c.get("code").and_then(Value::as_str).is_some_and(|code| codes.contains(&code))
        });
        if !bound {
            issues.push(Issue::new(
                IssueCode::Value,
                Some(format!("{}.{element}", rtype.name())),
                format!("must hold a coding from {system} with one of: {}", codes.join(", ")),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(resource: Value) -> Result<(), Vec<Issue>> {
        use std::sync::OnceLock;
        static V: OnceLock<FhirValidator> = OnceLock::new();
        let v = V.get_or_init(|| FhirValidator::new().unwrap());
        let rtype = ResourceType::from_name(resource["resourceType"].as_str().unwrap()).unwrap();
        v.validate(rtype, &resource)
    }

    #[test]
    fn a_valid_patient_passes() {
        check(json!({
            "resourceType": "Patient",
            "name": [{"family": "Zz-Testperson", "given": ["Alpha"]}],
            "gender": "female",
            "birthDate": "1980-02-29",
            "extension": [{"url": "http://example.test/x", "valueDecimal": 72.50}]
        }))
        .unwrap();
    }

    #[test]
    fn errors_name_the_path_and_never_the_value() {
        let issues = check(json!({
            "resourceType": "Patient",
            "gender": "SECRET-GENDER-VALUE",
            "birthDate": "SECRET-DATE",
            "name": [{"family": 12345}],
            "nickname": "SECRET-NICK"
        }))
        .unwrap_err();
        let paths: Vec<_> = issues.iter().filter_map(|i| i.expression.clone()).collect();
        assert!(paths.contains(&"Patient.gender".to_owned()), "{paths:?}");
        assert!(paths.contains(&"Patient.birthDate".to_owned()), "{paths:?}");
        assert!(paths.contains(&"Patient.name[0].family".to_owned()), "{paths:?}");
        let text = format!("{issues:?}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(!text.contains("nickname"), "a key FHIR does not define is never repeated: {text}");
        assert!(text.contains("unknown element"), "{text}");
    }

    #[test]
    fn keys_the_client_chose_never_appear_in_paths_or_messages() {
        let issues = check(json!({
            "resourceType": "Patient",
            "ssn123456789": "x",
            "name": [{"family": "Zz", "zz987654321": 1}],
            "extension": [{"url": "http://example.test/x", "zz111223333": {"valueString": 5}}],
            "contact": [{"gender": "not-a-code"}],
            "birthDate": "1970-01-01"
        }))
        .unwrap_err();
        let text = format!("{issues:?}");
        for secret in ["ssn123456789", "zz987654321", "zz111223333", "not-a-code"] {
            assert!(!text.contains(secret), "{secret} echoed: {text}");
        }
        assert!(text.contains("Patient.contact[0].gender"), "{text}");
        let misplaced = check(json!({"resourceType": "Practitioner", "deceasedBoolean": true})).unwrap_err();
        assert!(format!("{misplaced:?}").contains("deceasedBoolean"), "a misplaced FHIR element is named: {misplaced:?}");
    }

    #[test]
    fn impossible_calendar_dates_are_rejected() {
        let issues = check(json!({"resourceType": "Patient", "birthDate": "1970-02-31"})).unwrap_err();
        assert_eq!(issues[0].expression.as_deref(), Some("Patient.birthDate"));
        assert!(check(json!({"resourceType": "Practitioner", "birthDate": "1970-02"})).is_ok());
    }

    #[test]
    fn clinical_required_elements_and_bound_codes_are_checked() {
        let issues = check(json!({"resourceType": "MedicationRequest", "intent": "order"})).unwrap_err();
        let paths: Vec<_> = issues.iter().filter_map(|i| i.expression.clone()).collect();
        for missing in ["MedicationRequest.status", "MedicationRequest.medication[x]", "MedicationRequest.subject"] {
            assert!(paths.contains(&missing.to_owned()), "{paths:?}");
        }
        assert!(!paths.contains(&"MedicationRequest.intent".to_owned()), "{paths:?}");
        let bad_intent = check(json!({
            "resourceType": "MedicationRequest", "status": "active", "intent": "SECRET-INTENT",
            "medicationCodeableConcept": {"text": "x"}, "subject": {"reference": "Patient/p1"}
        }))
        .unwrap_err();
        assert!(bad_intent.iter().any(|i| i.expression.as_deref() == Some("MedicationRequest.intent")), "{bad_intent:?}");
        assert!(!format!("{bad_intent:?}").contains("SECRET"));
        let status = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]});
        check(json!({"resourceType": "Condition", "subject": {"reference": "Patient/p1"}, "clinicalStatus": status})).unwrap();
        let wrong = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "SECRET-STATUS"}]});
        let issues =
            check(json!({"resourceType": "Condition", "subject": {"reference": "Patient/p1"}, "clinicalStatus": wrong})).unwrap_err();
        assert_eq!(issues[0].expression.as_deref(), Some("Condition.clinicalStatus"));
        assert!(!format!("{issues:?}").contains("SECRET"));
        check(json!({
            "resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-03-05T10:00:00+02:00",
            "valueQuantity": {"value": 72.50, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
        }))
        .unwrap();
    }

    #[test]
    fn a_practitioner_is_not_a_patient() {
        let issues = check(json!({"resourceType": "Practitioner", "gender": "male", "deceasedBoolean": true})).unwrap_err();
        assert!(issues.iter().any(|i| i.code == IssueCode::Structure));
    }
}
