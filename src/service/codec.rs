//! The stored form of a resource and its search tokens. Today a version is stored as its
//! JSON text and tokens as their normalised values; this is the one module that changes
//! when elements are sealed under per-patient keys and tokens become blind indexes.

use serde_json::Value;

use crate::domain::search::index_tokens;
use crate::domain::{ResourceType, TenantId};
use crate::service::ServiceError;

/// Serialises a resource version for storage.
pub fn to_stored(_tenant: &TenantId, _rtype: ResourceType, resource: &Value) -> Result<String, ServiceError> {
    serde_json::to_string(resource).map_err(|_| ServiceError::Corrupt)
}

/// Reads a stored version back.
pub fn from_stored(_tenant: &TenantId, _rtype: ResourceType, stored: &str) -> Result<Value, ServiceError> {
    serde_json::from_str(stored).map_err(|_| ServiceError::Corrupt)
}

/// The stored form of a query token for `param`.
pub fn stored_token(_tenant: &TenantId, _rtype: ResourceType, _param: &str, token: String) -> String {
    token
}

/// Every `(param, stored token)` of a resource version.
pub fn tokens_for(tenant: &TenantId, rtype: ResourceType, resource: &Value) -> Vec<(&'static str, String)> {
    rtype
        .def()
        .search
        .iter()
        .flat_map(|def| {
            index_tokens(def, resource)
                .into_iter()
                .map(move |t| (def.name, stored_token(tenant, rtype, def.name, t)))
        })
        .collect()
}
