//! Parsing of search query parameters: index tokens (matched through blind indexes), the
//! patient compartment, date criteria (matched on opened records), `_lastUpdated`,
//! `_sort` and paging.

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
const IGNORED: &[&str] = &["_format", "_pretty"];

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
}

/// How an error names a parameter: only a name the server defines is repeated (a
/// client-chosen name, or a modifier, could carry PHI).
fn shown(rtype: ResourceType, name: &str) -> String {
    let base = name.split_once(':').map_or(name, |(b, _)| b);
    let known = ["_count", "_offset", "_id", "_sort", "_lastUpdated"].contains(&base) || rtype.search_param(base).is_some();
    if known { format!("'{base}'") } else { "an unknown parameter".to_owned() }
}

fn bad(rtype: ResourceType, name: &str, diagnostics: String) -> ServiceError {
    ServiceError::BadRequest(vec![Issue::new(
        IssueCode::NotSupported,
        None,
        format!("search parameter {} {diagnostics}", shown(rtype, name)),
    )])
}

fn no_modifier(rtype: ResourceType, name: &str, modifier: Option<&str>) -> Result<(), ServiceError> {
    match modifier {
        Some(_) => Err(bad(rtype, name, "takes no modifier".into())),
        None => Ok(()),
    }
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

pub fn parse(rtype: ResourceType, params: &[(String, String)]) -> Result<ParsedSearch, ServiceError> {
    let mut parsed = ParsedSearch { count: DEFAULT_COUNT, ..ParsedSearch::default() };
    for (name, value) in params {
        let (base, modifier) = match name.split_once(':') {
            Some((b, m)) => (b, Some(m)),
            None => (name.as_str(), None),
        };
        match base {
            "_count" => {
                parsed.count = value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| bad(rtype, name, "must be a whole number".into()))?
                    .min(MAX_COUNT);
                continue;
            }
            "_offset" => {
                parsed.offset = value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (0..=MAX_OFFSET).contains(n))
                    .ok_or_else(|| bad(rtype, name, format!("must be a whole number from 0 to {MAX_OFFSET}")))?;
                continue;
            }
            b if IGNORED.contains(&b) => continue,
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
                no_modifier(rtype, name, modifier)?;
                // Several values separated by commas are alternatives; FHIR gives
                // `_lastUpdated` one value per parameter, so one is taken here.
                let query = DateQuery::parse(value).map_err(|e| bad(rtype, name, format!("value {e}")))?;
                parsed.last_updated.push(query);
            }
            "_sort" => {
                no_modifier(rtype, name, modifier)?;
                if !parsed.sort.is_empty() {
                    return Err(bad(rtype, name, "may be given once (list several keys separated by commas)".into()));
                }
                parsed.sort = split_values(value).iter().map(|key| sort_key(rtype, key.trim())).collect::<Result<_, _>>()?;
            }
            _ => {
                let def = rtype.search_param(base).ok_or_else(|| bad(rtype, name, format!("is not supported for {}", rtype.name())))?;
                if let Some(m) = modifier
                    && m != "exact"
                {
                    return Err(bad(rtype, name, "uses a modifier that is not supported (only ':exact')".into()));
                }
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
    Ok(parsed)
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
