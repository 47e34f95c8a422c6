//! The CapabilityStatement served at `/fhir/metadata`, generated from the resource-type
//! definitions so it always matches what the server does.

use serde_json::{Value, json};

use crate::domain::ResourceType;
use crate::domain::search::ParamKind;

fn param_type(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::Identifier | ParamKind::Phone | ParamKind::Email | ParamKind::Token => "token",
        ParamKind::Family | ParamKind::Given | ParamKind::Name => "string",
        ParamKind::Date | ParamKind::DateSpan => "date",
        ParamKind::Reference(_) | ParamKind::Compartment => "reference",
    }
}

fn param_doc(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::Token => {
            "system|code, code, |code or system|, with comma-separated alternatives; case-insensitive, matched through blind indexes."
        }
        ParamKind::Compartment => "The patient (Patient/ID or ID). Clinical searches other than _id and identifier must name it.",
        ParamKind::DateSpan => {
            "Prefixes eq, ne, gt, ge, lt, le and partial dates. The element is encrypted: the search names exactly one patient and is filtered within that patient's records."
        }
        ParamKind::Name => {
            "Any part of any name (family, each given, prefix, suffix, text), matched whole and case-insensitively (not by prefix), through blind indexes."
        }
        _ => "Exact match, case-insensitive for text; values are matched through blind indexes.",
    }
}

pub fn capability_statement(base_url: &str, software_version: &str, published: &str) -> Value {
    let resources: Vec<Value> = ResourceType::ALL
        .iter()
        .map(|t| {
            let mut params = vec![
                json!({"name": "_id", "type": "token"}),
                json!({"name": "_lastUpdated", "type": "date", "documentation": "Prefixes eq, ne, gt, ge, lt, le and partial dates."}),
            ];
            params.extend(t.def().search.iter().map(|p| {
                json!({
                    "name": p.name,
                    "type": param_type(p.kind),
                    "documentation": param_doc(p.kind),
                })
            }));
            let mut resource = json!({
                "type": t.name(),
                "interaction": [
                    {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "patch"}, {"code": "delete"},
                    {"code": "history-instance"}, {"code": "create"}, {"code": "search-type"}
                ],
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": false,
                "conditionalCreate": true,
                "conditionalUpdate": true,
                "conditionalDelete": "not-supported",
                "searchParam": params,
            });
            if *t == ResourceType::Patient {
                resource["operation"] = json!([{
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"
                }]);
            }
            resource
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": published,
        "publisher": "CareVault",
        "kind": "instance",
        "software": {"name": "CareVault", "version": software_version},
        "implementation": {"description": "CareVault FHIR R4 server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": false,
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"
                }]}],
                "description": "Bearer JWT (HS256 in development, RS256/EdDSA through a JWKS in production) with claims sub, tenant, roles, fhirUser, exp."
            },
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }],
    })
}
