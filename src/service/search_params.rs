//! Parsing of search query parameters: index tokens (matched through blind indexes), the
//! patient compartment, date criteria (matched on opened records), `_lastUpdated`,
//! `_sort`, paging and the result parameters `_summary`, `_total` and `_elements`.

use serde_json::{Value, json};

use crate::domain::dates::DateQuery;
use crate::domain::search::{ParamKind, SearchParamDef, query_token};
use crate::domain::{ResourceId, ResourceType};
use crate::fhir::{Issue, IssueCode};
use crate::service::ServiceError;

pub const DEFAULT_COUNT: i64 = 20;
pub const MAX_COUNT: i64 = 100;
/// Largest `_offset`: far past any page a person turns to, small enough that an offset
/// scan stays bounded and that `_offset + _count` can never overflow.
pub const MAX_OFFSET: i64 = 1_000_000;

/// Parameters accepted and ignored: they do not change what is returned.
pub const IGNORED: &[&str] = &["_format", "_pretty"];

/// The parameters the server defines for every type besides its search parameters; none
/// takes a modifier.
const CONTROL: &[&str] =
    &["_count", "_offset", "_id", "_sort", "_lastUpdated", "_summary", "_total", "_totalMethod", "_elements", "_format", "_pretty"];

/// The tag of a resource returned with only some of its elements (`_elements`).
pub const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

/// How a search treats parameters it does not support (`Prefer: handling=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Handling {
    /// Refused with 400: the default, and `handling=strict`.
    #[default]
    Strict,
    /// Left out of the search and reported (`handling=lenient`).
    Lenient,
}

/// What a search orders by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    LastUpdated,
    /// A date parameter of the type, ordered on opened records.
    Date(&'static SearchParamDef),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    pub by: SortBy,
    pub descending: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ParsedSearch {
    pub ids: Option<Vec<String>>,
    /// The patient compartment(s) searched (`patient`, `subject`): any of these ids.
    pub patients: Option<Vec<String>>,
    /// `(param, normalised tokens)`: every entry must match, any token within one.
    pub criteria: Vec<(String, Vec<String>)>,
    /// Date criteria matched on opened records: every entry must match, any value within one.
    pub dates: Vec<(&'static SearchParamDef, Vec<DateQuery>)>,
    /// `_lastUpdated` criteria: every one must match.
    pub last_updated: Vec<DateQuery>,
    /// `_sort` keys, most significant first; empty: by id.
    pub sort: Vec<SortKey>,
    pub count: i64,
    pub offset: i64,
    /// The parameters that define the result set, for paging links.
    pub echo: Vec<(String, String)>,
    /// `_summary=count`: the total only, no records.
    pub summary_count: bool,
    /// `_total=none`: no total, and no count is run.
    pub omit_total: bool,
    /// `_elements`: the top-level elements each returned resource keeps.
    pub elements: Option<Vec<String>>,
    /// Under lenient handling, what was left out of the search: one diagnostic per
    /// parameter, naming it only when the server defines it.
    pub ignored: Vec<String>,
}

/// How an error names a parameter: only a name the server defines is repeated (a
/// client-chosen name, or a modifier, could carry PHI).
pub fn shown(rtype: ResourceType, name: &str) -> String {
    let base = name.split_once(':').map_or(name, |(b, _)| b);
    let known = CONTROL.contains(&base) || rtype.search_param(base).is_some();
    if known { format!("'{base}'") } else { "an unknown parameter".to_owned() }
}

/// Why a parameter (its name and modifier) is not supported for `rtype`, if it is not.
fn unsupported(rtype: ResourceType, base: &str, modifier: Option<&str>) -> Option<String> {
    match (CONTROL.contains(&base), rtype.search_param(base), modifier) {
        (true, _, None) | (false, Some(_), None | Some("exact")) => None,
        (true, _, Some(_)) => Some("takes no modifier".to_owned()),
        (false, Some(_), Some(_)) => Some("uses a modifier that is not supported (only ':exact')".to_owned()),
        (false, None, _) => Some(format!("is not supported for {}", rtype.name())),
    }
}

fn bad(rtype: ResourceType, name: &str, diagnostics: String) -> ServiceError {
    ServiceError::BadRequest(vec![Issue::new(
        IssueCode::NotSupported,
        None,
        format!("search parameter {} {diagnostics}", shown(rtype, name)),
    )])
}

/// One `_sort` key: `_lastUpdated` or a date parameter of the type, `-` for descending.
fn sort_key(rtype: ResourceType, raw: &str) -> Result<SortKey, ServiceError> {
    let (descending, name) = match raw.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let by = match name {
        "_lastUpdated" => SortBy::LastUpdated,
        _ => match rtype.search_param(name) {
            Some(def) if def.kind == ParamKind::DateSpan => SortBy::Date(def),
            _ => {
                let sortable: Vec<&str> =
                    rtype.def().search.iter().filter(|d| d.kind == ParamKind::DateSpan).map(|d| d.name).chain(["_lastUpdated"]).collect();
                return Err(bad(rtype, "_sort", format!("can order by {} only", sortable.join(", "))));
            }
        },
    };
    Ok(SortKey { by, descending })
}

/// A `_count` value: a whole number, at most [`MAX_COUNT`] (more is taken as the maximum).
pub fn count_value(raw: &str) -> Option<i64> {
    raw.parse::<i64>().ok().filter(|n| *n >= 0).map(|n| n.min(MAX_COUNT))
}

/// An `_offset` value: a whole number from 0 to [`MAX_OFFSET`].
pub fn offset_value(raw: &str) -> Option<i64> {
    raw.parse::<i64>().ok().filter(|n| (0..=MAX_OFFSET).contains(n))
}

/// Splits on commas not escaped with a backslash, unescaping `\,` and `\\`.
fn split_values(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next @ (',' | '\\')) => current.push(next),
                Some(next) => {
                    current.push('\\');
                    current.push(next);
                }
                None => current.push('\\'),
            },
            ',' => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    out.push(current);
    out
}

/// Parses a search strictly: any parameter or modifier the server does not support is
/// refused.
pub fn parse(rtype: ResourceType, params: &[(String, String)]) -> Result<ParsedSearch, ServiceError> {
    parse_with(rtype, params, Handling::Strict)
}

/// Parses a search; under [`Handling::Lenient`], parameters and modifiers the server does
/// not support are left out (and listed in [`ParsedSearch::ignored`]) instead of refused.
/// Values are always checked: a supported parameter with a bad value is refused.
pub fn parse_with(rtype: ResourceType, params: &[(String, String)], handling: Handling) -> Result<ParsedSearch, ServiceError> {
    let mut parsed = ParsedSearch { count: DEFAULT_COUNT, ..ParsedSearch::default() };
    let mut given_once: Vec<&str> = Vec::new();
    for (name, value) in params {
        let (base, modifier) = match name.split_once(':') {
            Some((b, m)) => (b, Some(m)),
            None => (name.as_str(), None),
        };
        if let Some(why) = unsupported(rtype, base, modifier) {
            match handling {
                Handling::Strict => return Err(bad(rtype, name, why)),
                Handling::Lenient => {
                    parsed.ignored.push(format!("search parameter {} was ignored: it {why}", shown(rtype, name)));
                    continue;
                }
            }
        }
        if ["_summary", "_total", "_totalMethod", "_elements"].contains(&base) {
            if given_once.contains(&base) {
                return Err(bad(rtype, name, "may be given once".into()));
            }
            given_once.push(base);
        }
        match base {
            "_count" => {
                parsed.count = count_value(value).ok_or_else(|| bad(rtype, name, "must be a whole number".into()))?;
                continue;
            }
            "_offset" => {
                parsed.offset =
                    offset_value(value).ok_or_else(|| bad(rtype, name, format!("must be a whole number from 0 to {MAX_OFFSET}")))?;
                continue;
            }
            b if IGNORED.contains(&b) => continue,
            "_summary" => {
                parsed.summary_count = match value.as_str() {
                    "count" => true,
                    "false" => false,
                    _ => {
                        return Err(bad(
                            rtype,
                            name,
                            "supports only 'count' and 'false' (summary views of resources are not served)".into(),
                        ));
                    }
                };
            }
            "_total" => {
                parsed.omit_total = match value.as_str() {
                    "none" => true,
                    "estimate" | "accurate" => false,
                    _ => return Err(bad(rtype, name, "must be 'none', 'estimate' or 'accurate'".into())),
                };
            }
            // The spelling fhirpy's count() sends (with `_count=0`): `count` and
            // `estimate` give the exact total, `none` none.
            "_totalMethod" => {
                parsed.omit_total = match value.as_str() {
                    "none" => true,
                    "count" | "estimate" => false,
                    _ => return Err(bad(rtype, name, "must be 'count', 'estimate' or 'none'".into())),
                };
            }
            "_elements" => parsed.elements = Some(elements(value)?),
            "_id" => {
                let ids = split_values(value)
                    .iter()
                    .map(|v| ResourceId::parse(v.trim()).map(|id| id.to_string()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| bad(rtype, name, "must hold FHIR ids".into()))?;
                // Several _id parameters must all match: intersect.
                parsed.ids = Some(match parsed.ids.take() {
                    None => ids,
                    Some(prev) => prev.into_iter().filter(|i| ids.contains(i)).collect(),
                });
            }
            "_lastUpdated" => {
                // Several values separated by commas are alternatives; FHIR gives
                // `_lastUpdated` one value per parameter, so one is taken here.
                let query = DateQuery::parse(value).map_err(|e| bad(rtype, name, format!("value {e}")))?;
                parsed.last_updated.push(query);
            }
            "_sort" => {
                if !parsed.sort.is_empty() {
                    return Err(bad(rtype, name, "may be given once (list several keys separated by commas)".into()));
                }
                parsed.sort = split_values(value).iter().map(|key| sort_key(rtype, key.trim())).collect::<Result<_, _>>()?;
            }
            _ => {
                let def = rtype.search_param(base).ok_or_else(|| bad(rtype, name, format!("is not supported for {}", rtype.name())))?;
                let values = split_values(value);
                match def.kind {
                    ParamKind::DateSpan => {
                        let queries = values
                            .iter()
                            .map(|v| DateQuery::parse(v))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| bad(rtype, name, format!("value {e}")))?;
                        parsed.dates.push((def, queries));
                    }
                    kind => {
                        let tokens = values
                            .iter()
                            .map(|v| query_token(kind, v))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| bad(rtype, name, format!("value {e}")))?;
                        if kind == ParamKind::Compartment {
                            // `patient` and `subject` together must both hold: intersect.
                            parsed.patients = Some(match parsed.patients.take() {
                                None => tokens,
                                Some(prev) => prev.into_iter().filter(|p| tokens.contains(p)).collect(),
                            });
                        } else {
                            parsed.criteria.push((def.name.to_owned(), tokens));
                        }
                    }
                }
            }
        }
        parsed.echo.push((name.clone(), value.clone()));
    }
    if parsed.summary_count && parsed.omit_total {
        return Err(bad(rtype, "_total", "cannot be 'none' with _summary=count, which asks for the total".into()));
    }
    Ok(parsed)
}

/// The element names of an `_elements` value: top-level element names (letters and digits,
/// starting with a letter), separated by commas. A refusal never repeats the value.
pub fn elements(raw: &str) -> Result<Vec<String>, ServiceError> {
    let well_formed = |name: &str| {
        (1..=64).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric())
    };
    let mut names: Vec<String> = Vec::new();
    for name in raw.split(',').map(str::trim) {
        if !well_formed(name) {
            return Err(ServiceError::BadRequest(vec![Issue::new(
                IssueCode::Value,
                None,
                "_elements must list top-level element names (such as name,birthDate), separated by commas",
            )]));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// The elements of each type that FHIR R4 requires (cardinality 1..): a subset keeps
/// them, so that it stays a valid resource.
fn mandatory(rtype: ResourceType) -> &'static [&'static str] {
    match rtype {
        ResourceType::Patient | ResourceType::Practitioner => &[],
        ResourceType::Encounter => &["status", "class"],
        ResourceType::Observation => &["status", "code"],
        ResourceType::Condition => &["subject"],
        ResourceType::AllergyIntolerance => &["patient"],
        ResourceType::MedicationRequest => &["status", "intent", "medication", "subject"],
    }
}

/// The type names a choice element (`value[x]`, `deceased[x]`) takes in R4, as they
/// appear in its JSON names (`valueQuantity`, `deceasedBoolean`).
const CHOICE_TYPES: &[&str] = &[
    "Base64Binary",
    "Boolean",
    "Canonical",
    "Code",
    "Date",
    "DateTime",
    "Decimal",
    "Id",
    "Instant",
    "Integer",
    "Markdown",
    "Oid",
    "PositiveInt",
    "String",
    "Time",
    "UnsignedInt",
    "Uri",
    "Url",
    "Uuid",
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "CodeableConcept",
    "Coding",
    "ContactPoint",
    "Count",
    "Distance",
    "Duration",
    "HumanName",
    "Identifier",
    "Money",
    "Period",
    "Quantity",
    "Range",
    "Ratio",
    "Reference",
    "SampledData",
    "Signature",
    "Timing",
    "ContactDetail",
    "Contributor",
    "DataRequirement",
    "Expression",
    "ParameterDefinition",
    "RelatedArtifact",
    "TriggerDefinition",
    "UsageContext",
    "Dosage",
    "Meta",
];

/// Whether the JSON key `key` holds the element `name`: the element itself, its primitive
/// extensions (`_birthDate`) or, for a choice element, any of its typed forms.
fn holds(name: &str, key: &str) -> bool {
    let key = key.strip_prefix('_').unwrap_or(key);
    key == name || key.strip_prefix(name).is_some_and(|rest| CHOICE_TYPES.contains(&rest))
}

/// Keeps only `elements` of a resource, besides `resourceType`, `id`, `meta` and the
/// elements R4 requires of its type, and tags it SUBSETTED so that no client mistakes it
/// for the whole record (and writes it back as such).
pub fn subset(rtype: ResourceType, resource: &mut Value, elements: &[String]) {
    let Value::Object(map) = resource else { return };
    let kept: Vec<&str> = ["resourceType", "id", "meta"]
        .into_iter()
        .chain(mandatory(rtype).iter().copied())
        .chain(elements.iter().map(String::as_str))
        .collect();
    map.retain(|key, _| kept.iter().any(|name| holds(name, key)));
    let meta = map.entry("meta").or_insert_with(|| json!({}));
    let Value::Object(meta) = meta else { return };
    let tags = meta.entry("tag").or_insert_with(|| json!([]));
    let Value::Array(tags) = tags else { return };
    if !tags.iter().any(|t| t["system"] == SUBSETTED_SYSTEM && t["code"] == "SUBSETTED") {
        tags.push(json!({"system": SUBSETTED_SYSTEM, "code": "SUBSETTED"}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Result<ParsedSearch, ServiceError> {
        let params: Vec<_> = pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
        parse(ResourceType::Patient, &params)
    }

    #[test]
    fn parses_counts_ors_ands_and_escapes() {
        let s = p(&[("family", "Ab,Cd"), ("given", "x\\,y"), ("_count", "500"), ("_offset", "40")]).unwrap();
        assert_eq!(s.criteria[0], ("family".into(), vec!["ab".into(), "cd".into()]));
        assert_eq!(s.criteria[1], ("given".into(), vec!["x,y".into()]));
        assert_eq!((s.count, s.offset), (MAX_COUNT, 40));
        assert_eq!(s.echo.len(), 2);
        assert_eq!(p(&[("_offset", "1000000")]).unwrap().offset, MAX_OFFSET);
    }

    #[test]
    fn unknown_parameters_and_modifiers_are_refused_without_echoing_values() {
        for bad_params in [
            &[("nickname", "SECRET")][..],
            &[("family:contains", "SECRET")],
            &[("birthdate", "gt1970-01-01")],
            &[("_count", "many")],
            &[("_offset", "9223372036854775807")],
            &[("_offset", "1000001")],
            &[("_offset", "-1")],
            &[("_sort", "family")],
            &[("_lastUpdated", "sa2026-01-01")],
            &[("_lastUpdated:missing", "true")],
        ] {
            let err = p(bad_params).unwrap_err();
            assert!(!format!("{err:?}").contains("SECRET"));
            assert!(matches!(err, ServiceError::BadRequest(_)));
        }
        let err = format!("{:?}", p(&[("zz123456789", "1")]).unwrap_err());
        assert!(!err.contains("zz123456789") && err.contains("an unknown parameter"), "{err}");
        let err = format!("{:?}", p(&[("family:zz123456789", "1")]).unwrap_err());
        assert!(!err.contains("zz123456789") && err.contains("'family'"), "{err}");
    }
}

#[cfg(test)]
mod result_tests {
    use super::*;

    fn p(pairs: &[(&str, &str)], handling: Handling) -> Result<ParsedSearch, ServiceError> {
        let params: Vec<_> = pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
        parse_with(ResourceType::Patient, &params, handling)
    }

    fn strict(pairs: &[(&str, &str)]) -> Result<ParsedSearch, ServiceError> {
        p(pairs, Handling::Strict)
    }

    #[test]
    fn summary_total_and_elements_are_parsed_and_kept_in_links() {
        let s = strict(&[("name", "Ann"), ("_summary", "count"), ("_total", "accurate")]).unwrap();
        assert!(s.summary_count && !s.omit_total);
        assert_eq!(s.criteria, vec![("name".to_owned(), vec!["ann".to_owned()])]);
        assert_eq!(s.echo.len(), 3);
        let s = strict(&[("_summary", "false"), ("_total", "none"), ("_elements", "name, birthDate,name")]).unwrap();
        assert!(!s.summary_count && s.omit_total);
        assert_eq!(s.elements, Some(vec!["name".to_owned(), "birthDate".to_owned()]));
        assert!(!strict(&[("_total", "estimate")]).unwrap().omit_total);
        assert!(strict(&[("_format", "json"), ("_pretty", "true")]).unwrap().echo.is_empty());
    }

    #[test]
    fn unsupported_result_parameters_are_refused_without_echoing_values() {
        for refused in [
            &[("_summary", "true")][..],
            &[("_summary", "text")],
            &[("_summary", "data")],
            &[("_summary", "SECRET")],
            &[("_total", "SECRET")],
            &[("_total", "")],
            &[("_summary", "count"), ("_total", "none")],
            &[("_summary", "count"), ("_summary", "count")],
            &[("_elements", "name"), ("_elements", "gender")],
            &[("_elements", "")],
            &[("_elements", "name,")],
            &[("_elements", "SECRET.name")],
            &[("_elements", "Patient.name")],
            &[("_elements", "_name")],
            &[("_elements", "1name")],
            &[("_elements", "na me SECRET")],
            &[("_id:missing", "SECRET")],
            &[("_count:SECRET", "1")],
            &[("_summary:SECRET", "count")],
        ] {
            let err = strict(refused).unwrap_err();
            assert!(matches!(err, ServiceError::BadRequest(_)), "{refused:?}");
            assert!(!format!("{err:?}").contains("SECRET"), "{err:?}");
        }
        let err = format!("{:?}", strict(&[("_summary", "true")]).unwrap_err());
        assert!(err.contains("'count' and 'false'"), "{err}");
        assert!(elements(&"a".repeat(65)).is_err());
        assert_eq!(elements(&"a".repeat(64)).unwrap().len(), 1);
    }

    #[test]
    fn lenient_handling_ignores_unknown_parameters_and_modifiers_and_says_so() {
        let s =
            p(&[("nickname", "SECRET"), ("family:contains", "SECRET"), ("given", "Ann"), ("_lastUpdated:missing", "x")], Handling::Lenient)
                .unwrap();
        assert_eq!(s.criteria, vec![("given".to_owned(), vec!["ann".to_owned()])]);
        assert_eq!(s.echo, vec![("given".to_owned(), "Ann".to_owned())], "ignored parameters stay out of the links");
        assert_eq!(s.ignored.len(), 3);
        assert!(s.ignored[0].contains("an unknown parameter"), "{:?}", s.ignored);
        assert!(s.ignored[1].contains("'family'") && s.ignored[1].contains("modifier"), "{:?}", s.ignored);
        assert!(s.ignored[2].contains("'_lastUpdated'"), "{:?}", s.ignored);
        assert!(!format!("{:?}", s.ignored).contains("SECRET") && !format!("{:?}", s.ignored).contains("nickname"));
        // Values of supported parameters are still checked.
        assert!(p(&[("birthdate", "1970-13-45")], Handling::Lenient).is_err());
        assert!(p(&[("_summary", "true")], Handling::Lenient).is_err());
        // Strict (the default) refuses what lenient ignores.
        assert!(p(&[("nickname", "x")], Handling::Strict).is_err());
        assert!(parse(ResourceType::Patient, &[("nickname".to_owned(), "x".to_owned())]).is_err());
    }

    #[test]
    fn a_subset_keeps_the_named_and_mandatory_elements_and_is_tagged() {
        let mut patient = json!({
            "resourceType": "Patient",
            "id": "p1",
            "meta": {"versionId": "2", "tag": [{"system": "urn:test", "code": "kept"}]},
            "name": [{"family": "Zz"}],
            "_birthDate": {"extension": []},
            "birthDate": "1970-01-01",
            "deceasedBoolean": false,
            "gender": "unknown",
            "telecom": [{"system": "phone", "value": "1"}],
        });
        subset(ResourceType::Patient, &mut patient, &["name".to_owned(), "deceased".to_owned(), "birthDate".to_owned()]);
        let keys: Vec<&str> = patient.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["resourceType", "id", "meta", "name", "_birthDate", "birthDate", "deceasedBoolean"]);
        let subsetted = json!({"system": SUBSETTED_SYSTEM, "code": "SUBSETTED"});
        assert_eq!(patient["meta"]["tag"], json!([{"system": "urn:test", "code": "kept"}, subsetted]));
        // Tagged once, however often it is subset.
        subset(ResourceType::Patient, &mut patient, &["name".to_owned()]);
        assert_eq!(patient["meta"]["tag"].as_array().unwrap().len(), 2);
        assert!(patient.get("birthDate").is_none());

        // A clinical record keeps what R4 requires of it; `status` does not take `statusReason`.
        let mut request = json!({
            "resourceType": "MedicationRequest", "id": "m1", "status": "active", "statusReason": {"text": "x"},
            "intent": "order", "medicationCodeableConcept": {"text": "y"}, "subject": {"reference": "Patient/p1"},
            "authoredOn": "2026-01-01", "note": [{"text": "z"}],
        });
        subset(ResourceType::MedicationRequest, &mut request, &["authoredOn".to_owned()]);
        let keys: Vec<&str> = request.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["resourceType", "id", "status", "intent", "medicationCodeableConcept", "subject", "authoredOn", "meta"]);
        assert_eq!(request["meta"]["tag"][0]["code"], "SUBSETTED");
    }
}

#[cfg(test)]
mod clinical_tests {
    use super::*;

    fn p(rtype: ResourceType, pairs: &[(&str, &str)]) -> Result<ParsedSearch, ServiceError> {
        let params: Vec<_> = pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
        parse(rtype, &params)
    }

    #[test]
    fn compartments_dates_and_sorts_are_parsed() {
        let s = p(
            ResourceType::Observation,
            &[("patient", "Patient/p1"), ("subject", "p1,p2"), ("date", "ge2026-01,lt2025"), ("_sort", "-date,_lastUpdated")],
        )
        .unwrap();
        assert_eq!(s.patients, Some(vec!["p1".to_owned()]));
        assert_eq!(s.dates.len(), 1);
        assert_eq!(s.dates[0].1.len(), 2);
        assert_eq!(s.sort.len(), 2);
        assert!(s.sort[0].descending && matches!(s.sort[0].by, SortBy::Date(d) if d.name == "date"));
        assert_eq!(s.sort[1], SortKey { by: SortBy::LastUpdated, descending: false });
        assert!(s.criteria.is_empty());
        for refused in [&[("_sort", "code")][..], &[("date", "2026-13")], &[("patient", "Practitioner/x")], &[("date", "sa2026")]] {
            assert!(matches!(p(ResourceType::Observation, refused), Err(ServiceError::BadRequest(_))), "{refused:?}");
        }
    }
}
