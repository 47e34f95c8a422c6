//! Bundle shapes for search (`searchset`) and history (`history`).

use serde_json::{Map, Value, json};

/// One `link` of a Bundle.
#[derive(Debug, Clone)]
pub struct Link {
    pub relation: &'static str,
    pub url: String,
}

fn links_json(links: &[Link]) -> Vec<Value> {
    links.iter().map(|l| json!({"relation": l.relation, "url": l.url})).collect()
}

/// A `searchset` Bundle; each entry is `(fullUrl, resource)`. `outcome`, when given, is an
/// OperationOutcome entry (`search.mode = outcome`) telling the client about the search.
pub fn searchset(total: i64, links: &[Link], entries: Vec<(String, Value)>, outcome: Option<Value>) -> Value {
    searchset_with(Some(total), links, Some(entries), outcome)
}

/// A `searchset` Bundle without `total` when it is `None` (`_total=none`), and without
/// matches when `entries` is `None` (`_summary=count`: then `entry` holds the outcome
/// only, or is absent).
pub fn searchset_with(total: Option<i64>, links: &[Link], entries: Option<Vec<(String, Value)>>, outcome: Option<Value>) -> Value {
    let listed = entries.is_some();
    let mut entries: Vec<Value> = entries
        .unwrap_or_default()
        .into_iter()
        .map(|(full_url, resource)| json!({"fullUrl": full_url, "resource": resource, "search": {"mode": "match"}}))
        .collect();
    if let Some(outcome) = outcome {
        entries.push(json!({"resource": outcome, "search": {"mode": "outcome"}}));
    }
    let mut bundle = Map::new();
    bundle.insert("resourceType".into(), json!("Bundle"));
    bundle.insert("type".into(), json!("searchset"));
    if let Some(total) = total {
        bundle.insert("total".into(), json!(total));
    }
    bundle.insert("link".into(), json!(links_json(links)));
    if listed || !entries.is_empty() {
        bundle.insert("entry".into(), json!(entries));
    }
    Value::Object(bundle)
}

/// One version in a `history` Bundle.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub full_url: String,
    /// `None` for a delete.
    pub resource: Option<Value>,
    pub method: &'static str,
    pub request_url: String,
    pub status: &'static str,
    pub etag: String,
    pub last_modified: String,
}

pub fn history(total: i64, links: &[Link], entries: Vec<HistoryEntry>) -> Value {
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|e| {
            let mut entry = json!({
                "fullUrl": e.full_url,
                "request": {"method": e.method, "url": e.request_url},
                "response": {"status": e.status, "etag": e.etag, "lastModified": e.last_modified},
            });
            if let Some(resource) = e.resource {
                entry["resource"] = resource;
            }
            entry
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "history",
        "total": total,
        "link": links_json(links),
        "entry": entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_searchset_may_leave_out_its_total_and_its_matches() {
        let links = [Link { relation: "self", url: "https://ehr.example.test/fhir/Patient?_summary=count".into() }];
        let full = searchset(1, &links, vec![("u".into(), json!({"resourceType": "Patient"}))], None);
        assert_eq!(full["total"], 1);
        assert_eq!(full["entry"][0]["search"]["mode"], "match");
        let empty = searchset(0, &links, Vec::new(), None);
        assert_eq!(empty["entry"], json!([]), "an empty page keeps its empty entry list");
        let count = searchset_with(Some(7), &links, None, None);
        assert_eq!(count["total"], 7);
        assert!(count.get("entry").is_none());
        let keys: Vec<&str> = count.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["resourceType", "type", "total", "link"]);
        let no_total = searchset_with(None, &links, Some(Vec::new()), Some(json!({"resourceType": "OperationOutcome"})));
        assert!(no_total.get("total").is_none());
        assert_eq!(no_total["entry"][0]["search"]["mode"], "outcome");
    }
}
