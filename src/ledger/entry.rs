//! Ledger entries and their canonical bytes.

use serde::{Deserialize, Serialize};

use crate::domain::{AuditAction, AuditOutcome};

/// Who acted. `sub` is null for a token whose signature did not verify (its claims are
/// not trusted); a validly signed but refused token names its subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub sub: Option<String>,
    pub roles: Vec<String>,
    #[serde(rename = "fhirUser")]
    pub fhir_user: Option<String>,
}

/// One audit entry, with the field names of SPEC section 5. No PHI values: references
/// and codes only (the break-glass reason is the caller's own statement).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub time: String,
    pub actor: Actor,
    pub tenant: Option<String>,
    pub action: AuditAction,
    pub resource: Option<String>,
    pub patient: Option<String>,
    pub outcome: AuditOutcome,
    #[serde(rename = "purposeOfUse")]
    pub purpose_of_use: Option<String>,
    #[serde(rename = "breakGlass")]
    pub break_glass: Option<String>,
    pub client: Option<String>,
    #[serde(rename = "requestId")]
    pub request_id: Option<String>,
}

impl Entry {
    /// The leaf bytes: compact JSON with the fields in declaration order (serde keeps
    /// struct order), so the same entry always encodes to the same bytes.
    pub fn canonical(&self) -> Vec<u8> {
        // Serialising plain strings, numbers and vectors cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_bytes_are_stable_and_round_trip() {
        let e = Entry {
            seq: 3,
            time: "2026-11-22T10:00:00.000Z".into(),
            actor: Actor { sub: Some("dr".into()), roles: vec!["clinician".into()], fhir_user: Some("Practitioner/1".into()) },
            tenant: Some("t".into()),
            action: AuditAction::Read,
            resource: Some("Patient/p".into()),
            patient: Some("Patient/p".into()),
            outcome: AuditOutcome::Success,
            purpose_of_use: Some("TREAT".into()),
            break_glass: None,
            client: Some("127.0.0.1".into()),
            request_id: Some("r".into()),
        };
        let bytes = e.canonical();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"seq":3,"time":"2026-11-22T10:00:00.000Z","actor":{"sub":"dr","roles":["clinician"],"fhirUser":"Practitioner/1"},"tenant":"t","action":"read","resource":"Patient/p","patient":"Patient/p","outcome":"success","purposeOfUse":"TREAT","breakGlass":null,"client":"127.0.0.1","requestId":"r"}"#
        );
        assert_eq!(serde_json::from_slice::<Entry>(&bytes).unwrap(), e);
    }
}
