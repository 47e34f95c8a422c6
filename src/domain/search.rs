//! Search parameters and the normalisation that makes matching exact and
//! case-insensitive. The same functions run when a resource is indexed and when a query
//! arrives, so both sides always agree on a token.

use serde_json::Value;

use crate::domain::{Reference, ResourceType};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// `identifier=[system]|[value]`, `identifier=|[value]` or `identifier=[value]`.
    Identifier,
    /// `HumanName.family`.
    Family,
    /// `HumanName.given`, each given name on its own.
    Given,
    /// Any part of a `HumanName`: `family`, each `given`, each `prefix`, each `suffix` and
    /// `text`, each on its own (FHIR's `name`, matched exactly rather than by prefix).
    Name,
    /// A FHIR `date` compared for equality (`eq` prefix allowed).
    Date,
    /// `ContactPoint` with system `phone`, compared on its digits.
    Phone,
    /// `ContactPoint` with system `email`, compared case-insensitively.
    Email,
    /// A literal reference to a resource of the given type.
    Reference(ResourceType),
    /// A `code`, `Coding` or `CodeableConcept` (or a list of them): `[system]|[code]`,
    /// `|[code]` (no system), `[system]|` (any code of the system) or `[code]`,
    /// case-insensitively.
    Token,
    /// The patient-compartment reference of a clinical type (`patient`, `subject`):
    /// matched on the record's stored patient id, not through an index.
    Compartment,
    /// A date, dateTime, instant or Period (the element and its choice-type variants,
    /// `effective` → `effectiveDateTime`, `effectivePeriod`): compared by span with the
    /// prefixes of `domain::dates`, on opened records of one patient.
    DateSpan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchParamDef {
    pub name: &'static str,
    pub kind: ParamKind,
    /// The top-level element the values come from.
    pub element: &'static str,
}

/// Why a search value was refused. The value itself is never included.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryValueError {
    #[error("is empty")]
    Empty,
    #[error("uses a comparison prefix other than 'eq'; only exact matches are supported")]
    Prefix,
    #[error("is not a calendar date (YYYY, YYYY-MM or YYYY-MM-DD)")]
    Date,
    #[error("is not a reference to the expected resource type")]
    Reference,
}

/// Case-folds and collapses white space: `"  van  Der Berg "` → `"van der berg"`.
fn fold(raw: &str) -> String {
    raw.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

fn phone_digits(raw: &str) -> String {
    raw.chars().filter(char::is_ascii_digit).collect()
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD` naming a real calendar year (0001–9999), month and
/// day: `1970-13-45` and `2023-02-29` are not dates.
fn is_fhir_date(raw: &str) -> bool {
    let b = raw.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let shape = match b.len() {
        4 => digits(0..4),
        7 => digits(0..4) && b[4] == b'-' && digits(5..7),
        10 => digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10),
        _ => false,
    };
    if !shape {
        return false;
    }
    // The shape guarantees the digits; a year of four digits fits any integer type.
    let part = |r: std::ops::Range<usize>| raw[r].parse::<u32>().unwrap_or(0);
    let year = part(0..4);
    match b.len() {
        4 => year >= 1,
        7 => year >= 1 && (1..=12).contains(&part(5..7)),
        _ => year >= 1 && chrono::NaiveDate::from_ymd_opt(year as i32, part(5..7), part(8..10)).is_some(),
    }
}

fn non_empty(token: String) -> Option<String> {
    (!token.is_empty()).then_some(token)
}

/// The tokens of one coding: by code, by system and code (or as having no system), and by
/// system alone.
fn coding_tokens(system: Option<&str>, code: &str, tokens: &mut Vec<String>) {
    let code = fold(code);
    if code.is_empty() {
        return;
    }
    tokens.push(format!("c:{code}"));
    match system.map(fold).filter(|s| !s.is_empty()) {
        Some(system) => {
            tokens.push(format!("sc:{system}|{code}"));
            tokens.push(format!("s:{system}"));
        }
        None => tokens.push(format!("nosys:{code}")),
    }
}

/// Index tokens for one parameter of a resource. Several values give several tokens; a
/// resource matches a query token when any of its tokens is equal to it.
pub fn index_tokens(def: &SearchParamDef, resource: &Value) -> Vec<String> {
    let element = resource.get(def.element);
    let items: Vec<&Value> = match element {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(v) => vec![v],
        None => Vec::new(),
    };
    let mut tokens = Vec::new();
    for item in items {
        match def.kind {
            ParamKind::Identifier => {
                let Some(value) = item.get("value").and_then(Value::as_str).map(fold) else {
                    continue;
                };
                if value.is_empty() {
                    continue;
                }
                match item.get("system").and_then(Value::as_str).map(fold) {
                    Some(system) if !system.is_empty() => tokens.push(format!("sv:{system}|{value}")),
                    _ => tokens.push(format!("nosys:{value}")),
                }
                tokens.push(format!("v:{value}"));
            }
            ParamKind::Family => {
                tokens.extend(item.get("family").and_then(Value::as_str).map(fold).and_then(non_empty));
            }
            ParamKind::Given => {
                if let Some(Value::Array(given)) = item.get("given") {
                    tokens.extend(given.iter().filter_map(Value::as_str).map(fold).filter_map(non_empty));
                }
            }
            ParamKind::Name => {
                let mut parts: Vec<&str> = ["family", "text"].iter().filter_map(|k| item.get(*k).and_then(Value::as_str)).collect();
                for list in ["given", "prefix", "suffix"] {
                    if let Some(Value::Array(values)) = item.get(list) {
                        parts.extend(values.iter().filter_map(Value::as_str));
                    }
                }
                tokens.extend(parts.into_iter().map(fold).filter_map(non_empty));
            }
            ParamKind::Date => {
                tokens.extend(item.as_str().filter(|d| is_fhir_date(d)).map(str::to_owned));
            }
            ParamKind::Phone | ParamKind::Email => {
                let wanted = if def.kind == ParamKind::Phone { "phone" } else { "email" };
                if item.get("system").and_then(Value::as_str) != Some(wanted) {
                    continue;
                }
                let Some(value) = item.get("value").and_then(Value::as_str) else { continue };
                let token = if def.kind == ParamKind::Phone { phone_digits(value) } else { fold(value) };
                tokens.extend(non_empty(token));
            }
            ParamKind::Reference(expected) => {
                let parsed = item
                    .get("reference")
                    .and_then(Value::as_str)
                    .and_then(|r| Reference::parse(r).ok())
                    .filter(|r| r.resource_type == expected);
                tokens.extend(parsed.map(|r| r.to_string()));
            }
            ParamKind::Token => match item {
                Value::String(code) => coding_tokens(None, code, &mut tokens),
                Value::Object(concept) => {
                    let codings = match concept.get("coding") {
                        Some(Value::Array(codings)) => codings.iter().collect(),
                        _ => vec![item],
                    };
                    for coding in codings {
                        if let Some(code) = coding.get("code").and_then(Value::as_str) {
                            coding_tokens(coding.get("system").and_then(Value::as_str), code, &mut tokens);
                        }
                    }
                }
                _ => {}
            },
            // Matched on the stored patient id and on opened dates, not through tokens.
            ParamKind::Compartment | ParamKind::DateSpan => {}
        }
    }
    tokens.sort();
    tokens.dedup();
    tokens
}

/// The token a query value must equal, normalised exactly as [`index_tokens`] does.
pub fn query_token(kind: ParamKind, raw: &str) -> Result<String, QueryValueError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(QueryValueError::Empty);
    }
    let token = match kind {
        ParamKind::Identifier => match raw.split_once('|') {
            Some(("", value)) => format!("nosys:{}", fold(value)),
            Some((system, value)) => format!("sv:{}|{}", fold(system), fold(value)),
            None => format!("v:{}", fold(raw)),
        },
        ParamKind::Family | ParamKind::Given | ParamKind::Name | ParamKind::Email => fold(raw),
        ParamKind::Phone => phone_digits(raw),
        ParamKind::Date => {
            let date = match raw.get(..2) {
                Some("eq") => &raw[2..],
                Some(p) if p.bytes().all(|b| b.is_ascii_alphabetic()) => {
                    return Err(QueryValueError::Prefix);
                }
                _ => raw,
            };
            if !is_fhir_date(date) {
                return Err(QueryValueError::Date);
            }
            date.to_owned()
        }
        ParamKind::Reference(expected) => {
            let full = if raw.contains('/') { raw.to_owned() } else { format!("{}/{raw}", expected.name()) };
            let r = Reference::parse(&full).map_err(|_| QueryValueError::Reference)?;
            if r.resource_type != expected {
                return Err(QueryValueError::Reference);
            }
            r.to_string()
        }
        ParamKind::Token => match raw.split_once('|') {
            Some(("", code)) => format!("nosys:{}", fold(code)),
            Some((system, "")) => format!("s:{}", fold(system)),
            Some((system, code)) => format!("sc:{}|{}", fold(system), fold(code)),
            None => format!("c:{}", fold(raw)),
        },
        // The patient id a compartment parameter names.
        ParamKind::Compartment => {
            let full = if raw.contains('/') { raw.to_owned() } else { format!("Patient/{raw}") };
            match Reference::parse(&full) {
                Ok(r) if r.resource_type == ResourceType::Patient => r.id.to_string(),
                _ => return Err(QueryValueError::Reference),
            }
        }
        ParamKind::DateSpan => return Err(QueryValueError::Date),
    };
    if token.is_empty() || token.ends_with(':') || token.ends_with('|') || token == "nosys:" {
        return Err(QueryValueError::Empty);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(name: &str) -> &'static SearchParamDef {
        ResourceType::Patient.search_param(name).unwrap()
    }

    #[test]
    fn index_and_query_agree_case_and_space_insensitively() {
        let p = json!({
            "name": [{"family": "  Van  der Berg ", "given": ["ZZ-Anna", "Maria"]}],
            "identifier": [{"system": "urn:test:mrn", "value": "MRN-001"}, {"value": "X9"}],
            "telecom": [{"system": "phone", "value": "+1 (555) 010-0199"}, {"system": "email", "value": "A.B@Example.TEST"}],
            "birthDate": "1970-01-02",
        });
        let has = |name: &str, q: &str| {
            let d = def(name);
            index_tokens(d, &p).contains(&query_token(d.kind, q).unwrap())
        };
        assert!(has("family", "van der berg"));
        assert!(has("family", "VAN DER BERG"));
        assert!(has("given", "maria"));
        assert!(has("identifier", "URN:TEST:MRN|mrn-001"));
        assert!(has("identifier", "mrn-001"));
        assert!(has("identifier", "|x9"));
        assert!(!has("identifier", "|mrn-001"));
        assert!(has("phone", "15550100199"));
        assert!(has("email", "a.b@example.test"));
        assert!(has("birthdate", "1970-01-02"));
        assert!(has("birthdate", "eq1970-01-02"));
        assert!(!has("family", "van"));
    }

    #[test]
    fn name_matches_every_part_of_every_human_name_exactly() {
        let p = json!({
            "name": [
                {"use": "official", "family": "Van der  Berg", "given": ["Anna", "Maria Luisa"], "prefix": ["Dr."], "suffix": ["PhD"]},
                {"use": "nickname", "text": "Annie B", "given": ["Nan"], "period": {"start": "2001"}},
            ],
        });
        let d = def("name");
        assert_eq!(d.kind, ParamKind::Name);
        let tokens = index_tokens(d, &p);
        let has = |q: &str| tokens.contains(&query_token(d.kind, q).unwrap());
        for found in
            ["van der berg", "VAN DER BERG", " van  der berg ", "anna", "Maria Luisa", "maria  luisa", "dr.", "phd", "Annie B", "nan"]
        {
            assert!(has(found), "{found}");
        }
        for not_found in ["van", "berg", "ann", "maria", "luisa", "dr", "annie", "official", "nickname", "2001"] {
            assert!(!has(not_found), "{not_found}");
        }
        assert_eq!(query_token(ParamKind::Name, " \t "), Err(QueryValueError::Empty));
        // A name without any of the parts gives no token; non-string parts are skipped.
        assert!(index_tokens(d, &json!({"name": [{"use": "old"}, {"family": 7, "given": [null, ""]}]})).is_empty());
        assert!(index_tokens(d, &json!({})).is_empty());
    }

    #[test]
    fn bad_query_values_are_refused() {
        assert_eq!(query_token(ParamKind::Date, "ge1970-01-01"), Err(QueryValueError::Prefix));
        assert_eq!(query_token(ParamKind::Date, "1970-1-1"), Err(QueryValueError::Date));
        for not_a_date in ["1970-13-45", "1970-13", "1970-00", "1970-02-30", "1970-04-31", "2023-02-29", "0000", "1970-01-00"] {
            assert_eq!(query_token(ParamKind::Date, not_a_date), Err(QueryValueError::Date), "{not_a_date}");
        }
        for date in ["1970", "1970-12", "2024-02-29", "eq1970-12-31", "0001-01-01"] {
            assert!(query_token(ParamKind::Date, date).is_ok(), "{date}");
        }
        assert_eq!(query_token(ParamKind::Family, "  "), Err(QueryValueError::Empty));
        assert_eq!(query_token(ParamKind::Identifier, "sys|"), Err(QueryValueError::Empty));
        assert_eq!(query_token(ParamKind::Reference(ResourceType::Practitioner), "Patient/1"), Err(QueryValueError::Reference));
        assert_eq!(query_token(ParamKind::Reference(ResourceType::Practitioner), "abc").unwrap(), "Practitioner/abc");
        assert_eq!(query_token(ParamKind::Compartment, "Patient/p-1").unwrap(), "p-1");
        assert_eq!(query_token(ParamKind::Compartment, "p-1").unwrap(), "p-1");
        assert_eq!(query_token(ParamKind::Compartment, "Practitioner/p-1"), Err(QueryValueError::Reference));
        assert_eq!(query_token(ParamKind::Token, "|"), Err(QueryValueError::Empty));
    }

    #[test]
    fn tokens_match_codes_codings_and_codeable_concepts() {
        let obs = json!({
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}, {"code": "HR"}], "text": "Heart rate"},
        });
        let has = |name: &str, q: &str| {
            let d = ResourceType::Observation.search_param(name).unwrap();
            index_tokens(d, &obs).contains(&query_token(d.kind, q).unwrap())
        };
        assert!(has("status", "final"));
        assert!(has("status", "FINAL"));
        assert!(!has("status", "amended"));
        assert!(has("category", "vital-signs"));
        assert!(has("category", "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"));
        assert!(has("category", "http://terminology.hl7.org/CodeSystem/observation-category|"));
        assert!(!has("category", "|vital-signs"));
        assert!(has("code", "http://loinc.org|8867-4"));
        assert!(has("code", "|hr"));
        assert!(!has("code", "http://snomed.info/sct|8867-4"));
        assert!(!has("code", "heart rate"), "text is not a code");
    }
}
