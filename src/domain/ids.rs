//! Identifiers parsed at the edge: tenants, FHIR resource ids and `Type/ID` references.

use std::fmt;

use crate::domain::ResourceType;

/// Why an identifier was refused. The offending value is never carried along: ids arrive
/// from clients and must not be echoed into logs or error bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("tenant must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-', not starting with '_'")]
    Tenant,
    #[error("id must be 1-64 characters of A-Z, a-z, 0-9, '-' or '.'")]
    ResourceId,
    #[error("reference must look like 'Type/id' with a supported type")]
    Reference,
}

/// A tenant (a clinic or clinic group). Every row, query and token is scoped by one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        // A leading `_` is reserved for the audit ledger's own logs (`_platform`, `_legacy`),
        // which share the namespace of tenant logs and their checkpoint origins.
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && !raw.starts_with('_')
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok { Ok(Self(raw.to_owned())) } else { Err(IdError::Tenant) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A FHIR logical id: `[A-Za-z0-9\-\.]{1,64}`. The server assigns UUIDs on create.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(String);

impl ResourceId {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let ok = !raw.is_empty() && raw.len() <= 64 && raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
        if ok { Ok(Self(raw.to_owned())) } else { Err(IdError::ResourceId) }
    }

    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A literal reference to a resource of a supported type, `Type/id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub resource_type: ResourceType,
    pub id: ResourceId,
}

impl Reference {
    pub fn new(resource_type: ResourceType, id: ResourceId) -> Self {
        Self { resource_type, id }
    }

    /// Parses `Type/id`, also as the tail of an absolute URL
    /// (`https://host/fhir/Practitioner/123`), as SMART's `fhirUser` claim allows.
    /// A versioned reference (`Type/id/_history/n`) names the same resource.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let mut parts: Vec<&str> = raw.trim_end_matches('/').split('/').collect();
        if parts.len() >= 4 && parts[parts.len() - 2] == "_history" {
            parts.truncate(parts.len() - 2);
        }
        let [.., kind, id] = parts.as_slice() else {
            return Err(IdError::Reference);
        };
        if parts.len() > 2 && !(raw.starts_with("http://") || raw.starts_with("https://")) {
            return Err(IdError::Reference);
        }
        let resource_type = ResourceType::from_name(kind).ok_or(IdError::Reference)?;
        let id = ResourceId::parse(id).map_err(|_| IdError::Reference)?;
        Ok(Self { resource_type, id })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.resource_type.name(), self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_relative_absolute_and_versioned() {
        let r = Reference::parse("Practitioner/abc-1").unwrap();
        assert_eq!(r.to_string(), "Practitioner/abc-1");
        let r = Reference::parse("https://ehr.example/fhir/Patient/p.1").unwrap();
        assert_eq!(r.to_string(), "Patient/p.1");
        let r = Reference::parse("Patient/p1/_history/3").unwrap();
        assert_eq!(r.to_string(), "Patient/p1");
        assert!(Reference::parse("Unknown/1").is_err());
        assert!(Reference::parse("Patient/").is_err());
        assert!(Reference::parse("a/b/Patient/1").is_err());
        assert!(Reference::parse("Patient/has space").is_err());
    }

    #[test]
    fn ids_and_tenants_are_checked() {
        assert!(ResourceId::parse(&"a".repeat(64)).is_ok());
        assert!(ResourceId::parse(&"a".repeat(65)).is_err());
        assert!(ResourceId::parse("a_b").is_err());
        assert!(TenantId::parse("clinic_1.east-2").is_ok());
        assert!(TenantId::parse("").is_err());
        assert!(TenantId::parse("x/y").is_err());
    }
}
