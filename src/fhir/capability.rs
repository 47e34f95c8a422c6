//! The CapabilityStatement served at `/fhir/metadata`, generated from the resource-type
//! definitions so it always matches what the server does, and the SMART App Launch
//! discovery document (`.well-known/smart-configuration`) served when an authorization
//! server is configured.

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

/// The authorization server that issues the tokens CareVault verifies, as announced to
/// SMART apps (`CAREVAULT_SMART_AUTHORIZE_URL`, `CAREVAULT_SMART_TOKEN_URL`). Both URLs
/// are checked absolute `https` (or `http` to a loopback host) when the settings are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmartEndpoints {
    pub authorize_url: String,
    pub token_url: String,
}

const SMART_OAUTH_URIS: &str = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";

/// The SMART capabilities CareVault can stand behind. `launch-standalone`: an app that
/// finds the authorization server here, obtains a token from it and presents that token
/// is served, provided the token carries CareVault's claims and verifies against its
/// keys. Nothing else is claimed: there is no EHR launch (no `launch` context), no launch
/// context in token responses (`context-*`), no OpenID Connect discovery
/// (`sso-openid-connect`), and access is decided by the token's roles and the care
/// relationships, not by SMART scopes (no `permission-*`). Client authentication
/// (`client-*`) is the authorization server's own business, which CareVault cannot vouch
/// for.
pub const SMART_CAPABILITIES: &[&str] = &["launch-standalone"];

/// The SMART App Launch 2.x discovery document (`application/json`).
pub fn smart_configuration(smart: &SmartEndpoints) -> Value {
    json!({
        "authorization_endpoint": smart.authorize_url,
        "token_endpoint": smart.token_url,
        "grant_types_supported": ["authorization_code"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": SMART_CAPABILITIES,
    })
}

const BEARER: &str = "Bearer JWT (HS256 in development, RS256/EdDSA through a JWKS in production) with claims sub, tenant, roles, fhirUser, exp; access follows the roles and the patients' care relationships.";

/// `rest.security`: the bearer tokens CareVault verifies, and with `smart` the SMART
/// service and the authorization server's endpoints.
fn security(smart: Option<&SmartEndpoints>) -> Value {
    match smart {
        None => json!({"cors": false, "description": BEARER}),
        Some(smart) => json!({
            "extension": [{
                "url": SMART_OAUTH_URIS,
                "extension": [
                    {"url": "authorize", "valueUri": smart.authorize_url},
                    {"url": "token", "valueUri": smart.token_url}
                ]
            }],
            "cors": false,
            "service": [{
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR",
                    "display": "SMART-on-FHIR"
                }],
                "text": "SMART App Launch (standalone launch); discovery at .well-known/smart-configuration"
            }],
            "description": format!(
                "{BEARER} SMART apps obtain tokens from the authorization server named here (standalone launch); SMART scopes do not grant or narrow access: the token's roles and fhirUser do."
            )
        }),
    }
}

/// The CapabilityStatement; `smart`: the configured authorization server, if any (without
/// one, SMART is not claimed).
pub fn capability_statement(base_url: &str, software_version: &str, published: &str, smart: Option<&SmartEndpoints>) -> Value {
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
            "security": security(smart),
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }],
    })
}
