//! Bundle shapes for search (`searchset`) and history (`history`).

use serde_json::{Value, json};

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
    let mut entries: Vec<Value> = entries
        .into_iter()
        .map(|(full_url, resource)| json!({"fullUrl": full_url, "resource": resource, "search": {"mode": "match"}}))
        .collect();
    if let Some(outcome) = outcome {
        entries.push(json!({"resource": outcome, "search": {"mode": "outcome"}}));
    }
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links_json(links),
        "entry": entries,
    })
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
