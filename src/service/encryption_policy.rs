//! `policies/encryption.toml`: which top-level elements of each type are sealed.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::domain::ResourceType;

#[derive(Debug, thiserror::Error)]
pub enum EncryptionPolicyError {
    #[error("cannot read encryption policy {0}: {1}")]
    Read(String, std::io::Error),
    #[error("encryption policy is not valid: {0}")]
    Parse(String),
    #[error("encryption policy: {0}")]
    Invalid(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TypePolicy {
    elements: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    types: BTreeMap<String, TypePolicy>,
}

/// The sealed elements per served type.
#[derive(Debug, Clone)]
pub struct EncryptionPolicy {
    sealed: BTreeMap<ResourceType, Vec<String>>,
}

impl EncryptionPolicy {
    pub fn load(dir: &Path) -> Result<Self, EncryptionPolicyError> {
        let path = dir.join("encryption.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| EncryptionPolicyError::Read(path.display().to_string(), e))?;
        Self::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Self, EncryptionPolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| EncryptionPolicyError::Parse(e.message().to_owned()))?;
        let mut sealed = BTreeMap::new();
        for (name, policy) in file.types {
            let rtype =
                ResourceType::from_name(&name).ok_or_else(|| EncryptionPolicyError::Invalid(format!("unknown resource type '{name}'")))?;
            for element in &policy.elements {
                let plain = !element.is_empty() && element.len() <= 64 && element.bytes().all(|b| b.is_ascii_alphanumeric());
                if !plain || !element.starts_with(|c: char| c.is_ascii_lowercase()) {
                    return Err(EncryptionPolicyError::Invalid(format!("{name}: '{element}' is not a top-level element name")));
                }
                if ["id", "meta", "resourceType"].contains(&element.as_str()) || rtype.def().compartment.contains(&element.as_str()) {
                    return Err(EncryptionPolicyError::Invalid(format!("{name}: '{element}' cannot be sealed")));
                }
            }
            sealed.insert(rtype, policy.elements);
        }
        if let Some(missing) = ResourceType::ALL.iter().find(|t| !sealed.contains_key(t)) {
            return Err(EncryptionPolicyError::Invalid(format!("no entry for {}", missing.name())));
        }
        Ok(Self { sealed })
    }

    /// The sealed elements of `rtype`.
    pub fn elements(&self, rtype: ResourceType) -> &[String] {
        self.sealed.get(&rtype).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_policy_seals_the_spec_defaults_and_bad_ones_are_refused() {
        let policy = EncryptionPolicy::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))).unwrap();
        for e in ["identifier", "name", "telecom", "address", "birthDate", "contact", "photo", "text"] {
            assert!(policy.elements(ResourceType::Patient).iter().any(|x| x == e), "{e}");
        }
        assert!(EncryptionPolicy::from_toml("[types.Patient]\nelements = [\"id\"]\n[types.Practitioner]\nelements = []").is_err());
        assert!(EncryptionPolicy::from_toml("[types.Patient]\nelements = [\"name\"]").is_err(), "Practitioner missing");
        assert!(EncryptionPolicy::from_toml("[types.Alien]\nelements = []").is_err());
        assert!(EncryptionPolicy::from_toml("[types.Patient]\nelements = [\"name.family\"]\n[types.Practitioner]\nelements = []").is_err());
    }
}
