//! The CapabilityStatement served at `/fhir/metadata`, generated from the resource-type
//! definitions so it always matches what the server does.

use serde_json::{Value, json};

use crate::domain::ResourceType;
use crate::domain::search::ParamKind;

fn param_type(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::Identifier | ParamKind::Phone | ParamKind::Email => "token",
        ParamKind::Family | ParamKind::Given => "string",
        ParamKind::Date => "date",
        ParamKind::Reference(_) => "reference",
    }
}

pub fn capability_statement(base_url: &str, software_version: &str, published: &str) -> Value {
    let resources: Vec<Value> = ResourceType::ALL
        .iter()
        .map(|t| {
            let mut params = vec![json!({"name": "_id", "type": "token"})];
            params.extend(t.def().search.iter().map(|p| {
                json!({
                    "name": p.name,
                    "type": param_type(p.kind),
                    "documentation": "Exact match, case-insensitive for text; values are matched through blind indexes."
                })
            }));
            json!({
                "type": t.name(),
                "interaction": [
                    {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "delete"},
                    {"code": "history-instance"}, {"code": "create"}, {"code": "search-type"}
                ],
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": false,
                "conditionalCreate": false,
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "searchParam": params,
            })
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
        }],
    })
}
