//! The stored form of a resource and its search tokens. Elements named by the encryption
//! policy are sealed in place, `{"$sealed": BASE64(envelope)}`, under the owner's data key
//! with AAD `(tenant, resource type, resource id, element)`; everything else is stored as
//! written. Search tokens are blind indexes: HMAC-SHA256 under the tenant's index key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use crate::crypto::{Aad, Envelope};
use crate::domain::search::index_tokens;
use crate::domain::{Category, ResourceId, ResourceType, TenantId};
use crate::service::ServiceError;
use crate::service::encryption_policy::EncryptionPolicy;
use crate::service::keyring::{DataKey, KeyRing, TenantKeys};

/// The member that marks a sealed element. FHIR element names never start with `$`, and
/// the schema refuses it in submitted resources, so a client cannot forge one.
const SEALED: &str = "$sealed";

/// Who a record's data key belongs to: the Patient (for itself and its clinical records)
/// or the Practitioner.
pub fn owner(rtype: ResourceType, id: &str, patient_id: Option<&str>) -> Option<String> {
    match rtype.category() {
        Category::Patient => Some(format!("Patient/{id}")),
        Category::Practitioner => Some(format!("Practitioner/{id}")),
        Category::Clinical => patient_id.map(|p| format!("Patient/{p}")),
    }
}

#[derive(Debug)]
pub struct Codec {
    keys: KeyRing,
    policy: EncryptionPolicy,
}

fn element_aad(tenant: &TenantId, rtype: ResourceType, id: &str, element: &str) -> Aad {
    Aad::new("element", &[tenant.as_str(), rtype.name(), id, element])
}

impl Codec {
    pub fn new(keys: KeyRing, policy: EncryptionPolicy) -> Self {
        Self { keys, policy }
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    fn is_sealed(&self, rtype: ResourceType, element: &str) -> bool {
        self.policy.seals(rtype, element)
    }

    /// The stored form of a version: sealed elements replaced by their envelopes.
    pub fn seal(
        &self,
        tenant: &TenantId,
        rtype: ResourceType,
        id: &ResourceId,
        key: &DataKey,
        resource: &Value,
    ) -> Result<String, ServiceError> {
        let Value::Object(map) = resource else { return Err(ServiceError::corrupt("resource JSON")) };
        let mut out = Map::with_capacity(map.len());
        for (element, value) in map {
            if rtype.def().compartment == Some(element.as_str()) {
                out.insert(element.clone(), self.seal_beside_reference(tenant, rtype, id, key, element, value)?);
            } else if self.is_sealed(rtype, element) {
                let plaintext = zeroize::Zeroizing::new(serde_json::to_vec(value).map_err(ServiceError::corrupt_by("resource JSON"))?);
                let envelope = Envelope::seal(&key.key, key.key_id, &element_aad(tenant, rtype, id.as_str(), element), &plaintext)
                    .map_err(ServiceError::keys_by("sealing under the data key"))?;
                out.insert(element.clone(), json!({ SEALED: STANDARD.encode(envelope) }));
            } else {
                out.insert(element.clone(), value.clone());
            }
        }
        serde_json::to_string(&Value::Object(out)).map_err(ServiceError::corrupt_by("resource JSON"))
    }

    /// The compartment reference stays readable (`reference`, the patient the record
    /// belongs to, which the server needs without a key); anything else in it (`display`,
    /// an `identifier`, extensions: often the patient's name) is sealed beside it as
    /// `{"reference": ..., "$sealed": ...}`.
    fn seal_beside_reference(
        &self,
        tenant: &TenantId,
        rtype: ResourceType,
        id: &ResourceId,
        key: &DataKey,
        element: &str,
        value: &Value,
    ) -> Result<Value, ServiceError> {
        let Value::Object(members) = value else { return Ok(value.clone()) };
        let mut rest = members.clone();
        let reference = rest.shift_remove("reference");
        if rest.is_empty() {
            return Ok(value.clone());
        }
        let plaintext =
            zeroize::Zeroizing::new(serde_json::to_vec(&Value::Object(rest)).map_err(ServiceError::corrupt_by("resource JSON"))?);
        let envelope = Envelope::seal(&key.key, key.key_id, &element_aad(tenant, rtype, id.as_str(), element), &plaintext)
            .map_err(ServiceError::keys_by("sealing under the data key"))?;
        let mut out = Map::new();
        if let Some(reference) = reference {
            out.insert("reference".into(), reference);
        }
        out.insert(SEALED.into(), Value::String(STANDARD.encode(envelope)));
        Ok(Value::Object(out))
    }

    /// Opens one sealed value of `element` with `key`.
    fn open_value(
        &self,
        tenant: &TenantId,
        rtype: ResourceType,
        id: &str,
        element: &str,
        sealed: &str,
        key: Option<&Result<DataKey, ServiceError>>,
    ) -> Result<Value, ServiceError> {
        let key = match key {
            Some(Ok(key)) => key,
            Some(Err(ServiceError::Erased)) => return Err(ServiceError::Erased),
            _ => {
                tracing::error!(resource_type = rtype.name(), resource_id = id, "sealed element without a data key");
                return Err(ServiceError::integrity("sealed element"));
            }
        };
        let envelope = STANDARD.decode(sealed).map_err(ServiceError::integrity_by("sealed element"))?;
        let plaintext = Envelope::open(&key.key, key.key_id, &element_aad(tenant, rtype, id, element), &envelope).map_err(|e| {
            tracing::error!(resource_type = rtype.name(), resource_id = id, element = %element, error = %e, "sealed element failed to open");
            ServiceError::integrity("sealed element")
        })?;
        let plaintext = zeroize::Zeroizing::new(plaintext);
        serde_json::from_slice(&plaintext).map_err(ServiceError::integrity_by("sealed element"))
    }

    /// Reads a stored version back, opening sealed elements with `key`. A sealed element
    /// that does not open (moved, tampered, wrong key) is an integrity error, never
    /// another record's data; a destroyed key makes the record `Erased`.
    pub fn open(
        &self,
        tenant: &TenantId,
        rtype: ResourceType,
        id: &str,
        stored: &str,
        key: Option<&Result<DataKey, ServiceError>>,
    ) -> Result<Value, ServiceError> {
        self.open_elements(tenant, rtype, id, stored, key, |_| true)
    }

    /// Reads only the named top-level elements of a stored version (what a search filters
    /// or sorts on), opening just those.
    pub fn open_elements(
        &self,
        tenant: &TenantId,
        rtype: ResourceType,
        id: &str,
        stored: &str,
        key: Option<&Result<DataKey, ServiceError>>,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Value, ServiceError> {
        let Value::Object(map) = serde_json::from_str(stored).map_err(ServiceError::corrupt_by("resource JSON"))? else {
            return Err(ServiceError::corrupt("resource JSON"));
        };
        self.open_map(tenant, rtype, id, map, key, wanted)
    }

    fn open_map(
        &self,
        tenant: &TenantId,
        rtype: ResourceType,
        id: &str,
        map: Map<String, Value>,
        key: Option<&Result<DataKey, ServiceError>>,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Value, ServiceError> {
        let mut out = Map::with_capacity(map.len());
        for (element, value) in map {
            if !wanted(&element) {
                continue;
            }
            let Value::Object(mut members) = value else {
                out.insert(element, value);
                continue;
            };
            let Some(Value::String(sealed)) = members.shift_remove(SEALED) else {
                out.insert(element, Value::Object(members));
                continue;
            };
            let opened = self.open_value(tenant, rtype, id, &element, &sealed, key)?;
            if members.is_empty() {
                out.insert(element, opened);
            } else {
                // A compartment reference: its sealed members go back beside `reference`.
                let Value::Object(rest) = opened else { return Err(ServiceError::integrity("sealed element")) };
                members.extend(rest);
                out.insert(element, Value::Object(members));
            }
        }
        Ok(Value::Object(out))
    }

    /// A whole JSON record (offline-edit conflict values) sealed under the owner's data
    /// key, bound to `(tenant, label, record id)`.
    pub fn seal_record(
        &self,
        tenant: &TenantId,
        label: &str,
        record_id: &str,
        key: &DataKey,
        value: &Value,
    ) -> Result<String, ServiceError> {
        let plaintext = zeroize::Zeroizing::new(serde_json::to_vec(value).map_err(ServiceError::corrupt_by("resource JSON"))?);
        let aad = Aad::new("record", &[tenant.as_str(), label, record_id]);
        let envelope =
            Envelope::seal(&key.key, key.key_id, &aad, &plaintext).map_err(ServiceError::keys_by("sealing under the data key"))?;
        Ok(STANDARD.encode(envelope))
    }

    /// Opens a record sealed by [`Codec::seal_record`]; a destroyed key makes it `Erased`.
    pub fn open_record(
        &self,
        tenant: &TenantId,
        label: &str,
        record_id: &str,
        stored: &str,
        key: &Result<DataKey, ServiceError>,
    ) -> Result<Value, ServiceError> {
        let key = match key {
            Ok(key) => key,
            Err(ServiceError::Erased) => return Err(ServiceError::Erased),
            Err(_) => return Err(ServiceError::integrity("sealed element")),
        };
        let envelope = STANDARD.decode(stored).map_err(ServiceError::integrity_by("sealed element"))?;
        let aad = Aad::new("record", &[tenant.as_str(), label, record_id]);
        let plaintext = Envelope::open(&key.key, key.key_id, &aad, &envelope).map_err(|e| {
            tracing::error!(record = label, error = %e, "sealed record failed to open");
            ServiceError::integrity("sealed element")
        })?;
        let plaintext = zeroize::Zeroizing::new(plaintext);
        serde_json::from_slice(&plaintext).map_err(ServiceError::integrity_by("sealed element"))
    }

    /// The stored (blind-index) form of a normalised query or index token.
    pub fn token(&self, keys: &TenantKeys, rtype: ResourceType, param: &str, token: &str) -> String {
        keys.index.token(&format!("{}.{param}", rtype.name()), token)
    }

    /// Every `(param, stored token)` of a resource version.
    pub fn tokens_for(&self, keys: &TenantKeys, rtype: ResourceType, resource: &Value) -> Vec<(&'static str, String)> {
        rtype
            .def()
            .search
            .iter()
            .flat_map(|def| index_tokens(def, resource).into_iter().map(move |t| (def.name, self.token(keys, rtype, def.name, &t))))
            .collect()
    }
}
