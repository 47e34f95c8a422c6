//! Offline edits: `policies/conflicts.toml` and the three-way merge per top-level
//! element of a client's edit against the version it was made on.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum ConflictPolicyError {
    #[error("cannot read conflict policy {0}: {1}")]
    Read(String, std::io::Error),
    #[error("conflict policy is not valid: {0}")]
    Parse(String),
    #[error("conflict policy: {0}")]
    Invalid(String),
}

/// What happens to an element changed both on the server and in an offline edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The server value stays and an open conflict is recorded.
    Manual,
    /// The later write in server order wins; the overwritten value is recorded.
    LastWriterWins,
}

impl Strategy {
    /// The strategy spelled `text` (as stored), if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        [Strategy::Manual, Strategy::LastWriterWins].into_iter().find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Manual => "manual",
            Strategy::LastWriterWins => "last-writer-wins",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TypeRule {
    default: Option<Strategy>,
    #[serde(default)]
    elements: BTreeMap<String, Strategy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default: Strategy,
    #[serde(default)]
    types: BTreeMap<String, TypeRule>,
}

/// The loaded conflict policy.
#[derive(Debug)]
pub struct ConflictPolicy {
    file: PolicyFile,
}

fn is_name(s: &str, first: fn(&char) -> bool) -> bool {
    s.len() <= 64 && s.chars().next().as_ref().is_some_and(first) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

impl ConflictPolicy {
    pub fn load(dir: &Path) -> Result<Self, ConflictPolicyError> {
        let path = dir.join("conflicts.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| ConflictPolicyError::Read(path.display().to_string(), e))?;
        Self::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Self, ConflictPolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| ConflictPolicyError::Parse(e.message().to_owned()))?;
        for (name, rule) in &file.types {
            if !is_name(name, char::is_ascii_uppercase) {
                return Err(ConflictPolicyError::Invalid(format!("'{name}' is not a resource type name")));
            }
            if let Some(element) = rule.elements.keys().find(|e| !is_name(e, char::is_ascii_lowercase)) {
                return Err(ConflictPolicyError::Invalid(format!("{name}: '{element}' is not a top-level element name")));
            }
        }
        Ok(Self { file })
    }

    /// The strategy for one top-level element of a type.
    pub fn strategy(&self, resource_type: &str, element: &str) -> Strategy {
        let Some(rule) = self.file.types.get(resource_type) else { return self.file.default };
        rule.elements.get(element).copied().or(rule.default).unwrap_or(self.file.default)
    }

    /// The strategy for a whole-resource collision (an edit of a deleted resource, or a
    /// delete of an edited one): `manual` if any element of the type is manual.
    pub fn whole_resource(&self, resource_type: &str) -> Strategy {
        let Some(rule) = self.file.types.get(resource_type) else { return self.file.default };
        let any_manual = rule.default == Some(Strategy::Manual) || rule.elements.values().any(|s| *s == Strategy::Manual);
        if any_manual { Strategy::Manual } else { rule.default.unwrap_or(self.file.default) }
    }
}

/// One element changed on both sides. Values are `null` where the element is absent.
#[derive(Debug, Clone, PartialEq)]
pub struct Collision {
    pub path: String,
    pub base: Value,
    pub server: Value,
    pub client: Value,
    pub strategy: Strategy,
}

impl Collision {
    pub fn to_json(&self) -> Value {
        serde_json::json!({ "path": self.path, "base": self.base, "server": self.server, "client": self.client })
    }
}

/// The result of merging an offline edit.
#[derive(Debug)]
pub struct Merged {
    pub resource: Map<String, Value>,
    pub collisions: Vec<Collision>,
}

/// Elements the server owns; never merged from a client.
const SERVER_ELEMENTS: [&str; 3] = ["resourceType", "id", "meta"];

/// Three-way merge per top-level element: an element changed on one side only takes that
/// side; changed on both to different values, `strategy` decides. The result starts from
/// the server version, so server-owned elements (`id`, `meta`) stay the server's.
pub fn merge(
    base: &Map<String, Value>,
    server: &Map<String, Value>,
    client: &Map<String, Value>,
    strategy: impl Fn(&str) -> Strategy,
) -> Merged {
    let mut names: Vec<&String> = base.keys().chain(server.keys()).chain(client.keys()).collect();
    names.sort();
    names.dedup();
    let mut resource = server.clone();
    let mut collisions = Vec::new();
    for name in names {
        if SERVER_ELEMENTS.contains(&name.as_str()) {
            continue;
        }
        let (b, s, c) = (base.get(name), server.get(name), client.get(name));
        if c == b || s == c {
            continue;
        }
        let take_client = if s == b {
            true
        } else {
            let how = strategy(name);
            let null = || Value::Null;
            collisions.push(Collision {
                path: name.clone(),
                base: b.cloned().unwrap_or_else(null),
                server: s.cloned().unwrap_or_else(null),
                client: c.cloned().unwrap_or_else(null),
                strategy: how,
            });
            how == Strategy::LastWriterWins
        };
        if take_client {
            match c {
                Some(value) => resource.insert(name.clone(), value.clone()),
                None => resource.remove(name),
            };
        }
    }
    Merged { resource, collisions }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn shipped_policy_has_the_spec_defaults() {
        let policy = ConflictPolicy::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))).unwrap();
        assert_eq!(policy.strategy("Patient", "birthDate"), Strategy::Manual);
        assert_eq!(policy.strategy("Patient", "telecom"), Strategy::LastWriterWins);
        for t in ["AllergyIntolerance", "MedicationRequest", "Condition"] {
            assert_eq!(policy.strategy(t, "note"), Strategy::Manual);
            assert_eq!(policy.whole_resource(t), Strategy::Manual);
        }
        assert_eq!(policy.whole_resource("Patient"), Strategy::Manual);
        assert_eq!(policy.whole_resource("Practitioner"), Strategy::LastWriterWins);
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(ConflictPolicy::from_toml("default = \"maybe\"").is_err());
        assert!(ConflictPolicy::from_toml("").is_err());
        assert!(ConflictPolicy::from_toml("default = \"manual\"\n[types.patient]\ndefault = \"manual\"").is_err());
        assert!(ConflictPolicy::from_toml("default = \"manual\"\n[types.Patient.elements]\n\"name.given\" = \"manual\"").is_err());
        assert!(ConflictPolicy::from_toml("default = \"manual\"\nextra = 1").is_err());
    }

    #[test]
    fn disjoint_edits_merge_and_removals_count_as_edits() {
        let base = obj(json!({"id": "a", "gender": "male", "active": true, "telecom": [1]}));
        let server = obj(json!({"id": "a", "gender": "female", "active": true, "telecom": [1]}));
        let client = obj(json!({"id": "x", "gender": "male", "active": false}));
        let m = merge(&base, &server, &client, |_| Strategy::Manual);
        assert!(m.collisions.is_empty());
        assert_eq!(Value::Object(m.resource), json!({"id": "a", "gender": "female", "active": false}));
    }

    #[test]
    fn same_element_changed_on_both_sides_follows_the_strategy() {
        let base = obj(json!({"birthDate": "1970-01-01", "gender": "male"}));
        let server = obj(json!({"birthDate": "1970-01-02", "gender": "female"}));
        let client = obj(json!({"birthDate": "1970-01-03", "gender": "other"}));
        let policy = |e: &str| if e == "birthDate" { Strategy::Manual } else { Strategy::LastWriterWins };
        let m = merge(&base, &server, &client, policy);
        assert_eq!(Value::Object(m.resource), json!({"birthDate": "1970-01-02", "gender": "other"}));
        assert_eq!(m.collisions.len(), 2);
        assert_eq!(
            m.collisions[0].to_json(),
            json!({"path": "birthDate", "base": "1970-01-01", "server": "1970-01-02", "client": "1970-01-03"})
        );
        assert_eq!(m.collisions[1].server, json!("female"));
    }

    #[test]
    fn the_same_change_on_both_sides_is_no_collision() {
        let base = obj(json!({"gender": "male"}));
        let both = obj(json!({"gender": "female"}));
        let m = merge(&base, &both, &both, |_| Strategy::Manual);
        assert!(m.collisions.is_empty());
        assert_eq!(m.resource, both);
    }
}
