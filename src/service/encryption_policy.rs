//! `policies/encryption.toml`: which top-level elements of each type are sealed: a list
//! (`elements`), or every element but a list (`all_except`), as clinical types use.

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
    elements: Option<Vec<String>>,
    all_except: Option<Vec<String>>,
}

/// Elements the server needs in the clear, never sealed whatever the policy says.
const NEVER_SEALED: [&str; 3] = ["id", "meta", "resourceType"];

/// What is sealed of one type.
#[derive(Debug, Clone)]
enum Sealed {
    /// These elements.
    Only(Vec<String>),
    /// Every element but these (and [`NEVER_SEALED`] and the compartment reference).
    AllExcept(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    types: BTreeMap<String, TypePolicy>,
}

/// The sealed elements per served type.
#[derive(Debug, Clone)]
pub struct EncryptionPolicy {
    sealed: BTreeMap<ResourceType, Sealed>,
}

fn check_name(rtype: ResourceType, element: &str) -> Result<(), EncryptionPolicyError> {
    let name = rtype.name();
    let plain = !element.is_empty() && element.len() <= 64 && element.bytes().all(|b| b.is_ascii_alphanumeric());
    if !plain || !element.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(EncryptionPolicyError::Invalid(format!("{name}: '{element}' is not a top-level element name")));
    }
    Ok(())
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
            let rule = match (policy.elements, policy.all_except) {
                (Some(elements), None) => {
                    for element in &elements {
                        check_name(rtype, element)?;
                        if NEVER_SEALED.contains(&element.as_str()) || rtype.def().compartment == Some(element.as_str()) {
                            return Err(EncryptionPolicyError::Invalid(format!("{name}: '{element}' cannot be sealed")));
                        }
                    }
                    Sealed::Only(elements)
                }
                (None, Some(clear)) => {
                    for element in &clear {
                        check_name(rtype, element)?;
                    }
                    Sealed::AllExcept(clear)
                }
                _ => return Err(EncryptionPolicyError::Invalid(format!("{name}: give either `elements` or `all_except`"))),
            };
            sealed.insert(rtype, rule);
        }
        if let Some(missing) = ResourceType::ALL.iter().find(|t| !sealed.contains_key(t)) {
            return Err(EncryptionPolicyError::Invalid(format!("no entry for {}", missing.name())));
        }
        Ok(Self { sealed })
    }

    /// Whether the top-level `element` of `rtype` is sealed (a primitive's companion,
    /// `_status`, is asked by its element's name).
    pub fn seals(&self, rtype: ResourceType, element: &str) -> bool {
        let element = element.strip_prefix('_').unwrap_or(element);
        if NEVER_SEALED.contains(&element) || rtype.def().compartment == Some(element) {
            return false;
        }
        match self.sealed.get(&rtype) {
            Some(Sealed::Only(elements)) => elements.iter().any(|e| e == element),
            Some(Sealed::AllExcept(clear)) => !clear.iter().any(|e| e == element),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_policy_seals_the_spec_defaults_and_bad_ones_are_refused() {
        let policy = EncryptionPolicy::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))).unwrap();
        for e in ["identifier", "name", "telecom", "address", "birthDate", "contact", "photo", "text"] {
            assert!(policy.seals(ResourceType::Patient, e), "{e}");
        }
        assert!(!policy.seals(ResourceType::Patient, "gender"));
        for rtype in ResourceType::CLINICAL {
            for clear in ["id", "meta", "resourceType", rtype.def().compartment.unwrap()] {
                assert!(!policy.seals(rtype, clear), "{} {clear}", rtype.name());
            }
            for sealed in ["code", "text", "note", "extension", "category", "identifier", "encounter", "valueQuantity"] {
                assert!(policy.seals(rtype, sealed), "{} {sealed}", rtype.name());
            }
        }
        for rtype in [ResourceType::Encounter, ResourceType::Observation, ResourceType::MedicationRequest] {
            assert!(!policy.seals(rtype, "status") && !policy.seals(rtype, "_status"), "{}", rtype.name());
        }
        assert!(EncryptionPolicy::from_toml("[types.Patient]\nelements = [\"name\"]\nall_except = []").is_err());
        assert!(EncryptionPolicy::from_toml("[types.Patient]\nelements = [\"id\"]\n[types.Practitioner]\nelements = []").is_err());
        assert!(EncryptionPolicy::from_toml("[types.Patient]\nelements = [\"name\"]").is_err(), "Practitioner missing");
        assert!(EncryptionPolicy::from_toml("[types.Alien]\nelements = []").is_err());
        assert!(EncryptionPolicy::from_toml("[types.Patient]\nelements = [\"name.family\"]\n[types.Practitioner]\nelements = []").is_err());
    }
}
