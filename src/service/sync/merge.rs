//! Offline edits: `policies/conflicts.toml` and the three-way merge per top-level
//! element of a client's edit against the version it was made on.
//!
//! An element changed on both sides to different values follows its [`Strategy`]:
//! `manual` keeps the server value and records an open conflict, `last-writer-wins` takes
//! the client value and records the overwritten one, `union` merges list elements so that
//! no entry either side holds is lost (see [`union`]).

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
    /// For list elements: the server's list followed by every client entry it does not
    /// hold (see [`union`]); no conflict is recorded. An absent element counts as an empty
    /// list. If the base, server or client value is not a list, `manual` applies instead.
    Union,
}

impl Strategy {
    /// The strategy spelled `text` (as stored), if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        [Strategy::Manual, Strategy::LastWriterWins, Strategy::Union].into_iter().find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Manual => "manual",
            Strategy::LastWriterWins => "last-writer-wins",
            Strategy::Union => "union",
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
    /// delete of an edited one): `manual` if any element of the type is manual, else the
    /// type's default. `union` elements do not count; a `union` default means `manual`
    /// here, since a whole resource is not a list. Never [`Strategy::Union`].
    pub fn whole_resource(&self, resource_type: &str) -> Strategy {
        let decided = match self.file.types.get(resource_type) {
            None => self.file.default,
            Some(rule) if rule.elements.values().any(|s| *s == Strategy::Manual) => Strategy::Manual,
            Some(rule) => rule.default.unwrap_or(self.file.default),
        };
        match decided {
            Strategy::Union => Strategy::Manual,
            s => s,
        }
    }
}

/// One element changed on both sides and not merged by union. Values are `null` where the
/// element is absent. `strategy` is the one applied: `manual` or `last-writer-wins`, never
/// `union` (a union that cannot apply is recorded as `manual`).
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
    /// Elements settled as `manual` or `last-writer-wins`; each is kept in a conflict record.
    pub collisions: Vec<Collision>,
    /// Elements changed on both sides that were merged by `union`, in name order. They
    /// leave no conflict record: the merged version holds every entry either side kept or
    /// added, so nothing entered is lost.
    pub unions: Vec<String>,
}

/// The `union` merge of a list element changed on both sides (`None` where absent, which
/// counts as an empty list): the server's list followed by every client entry that is not
/// in it (JSON equality, in the client's order, each once). An entry added on either side is
/// kept; an entry one side removed while the other kept it stays; an entry both removed
/// stays removed. The base value only has to be a list too: that both sides changed the
/// element was decided against it. `None` if a value is not a list (then `manual` applies)
/// and `Some(None)` if the union is empty (the element is left absent, as FHIR has no empty
/// lists).
pub fn union(base: Option<&Value>, server: Option<&Value>, client: Option<&Value>) -> Option<Option<Value>> {
    fn list(v: Option<&Value>) -> Option<&[Value]> {
        match v {
            None => Some(&[]),
            Some(v) => v.as_array().map(Vec::as_slice),
        }
    }
    let (_, server, client) = (list(base)?, list(server)?, list(client)?);
    let mut out = server.to_vec();
    for entry in client {
        if !out.contains(entry) {
            out.push(entry.clone());
        }
    }
    Some((!out.is_empty()).then_some(Value::Array(out)))
}

/// Elements the server owns; never merged from a client.
const SERVER_ELEMENTS: [&str; 3] = ["resourceType", "id", "meta"];

/// Three-way merge per top-level element: an element changed on one side only takes that
/// side; changed on both to different values, `strategy` decides: `manual` keeps the
/// server value, `last-writer-wins` takes the client's (both listed in `collisions`),
/// `union` merges the lists (listed in `unions`; `manual` if a value is not a list). The
/// result starts from the server version, so server-owned elements (`id`, `meta`) stay
/// the server's.
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
    let mut unions = Vec::new();
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
            let mut how = strategy(name);
            if how == Strategy::Union {
                match union(b, s, c) {
                    Some(merged) => {
                        match merged {
                            Some(value) => resource.insert(name.clone(), value),
                            None => resource.shift_remove(name),
                        };
                        unions.push(name.clone());
                        continue;
                    }
                    None => how = Strategy::Manual,
                }
            }
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
    Merged { resource, collisions, unions }
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
    fn shipped_policy_merges_allergy_reactions_by_union_and_keeps_the_rest_manual() {
        let policy = ConflictPolicy::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))).unwrap();
        assert_eq!(policy.strategy("AllergyIntolerance", "reaction"), Strategy::Union);
        for e in ["code", "clinicalStatus", "criticality", "note", "patient"] {
            assert_eq!(policy.strategy("AllergyIntolerance", e), Strategy::Manual, "{e}");
        }
        assert_eq!(policy.strategy("Condition", "reaction"), Strategy::Manual);
        assert_eq!(policy.strategy("Patient", "reaction"), Strategy::LastWriterWins);
        assert_eq!(policy.whole_resource("AllergyIntolerance"), Strategy::Manual);
    }

    #[test]
    fn strategies_are_stored_as_text() {
        for s in [Strategy::Manual, Strategy::LastWriterWins, Strategy::Union] {
            assert_eq!(Strategy::parse(s.as_str()), Some(s));
        }
        assert_eq!(Strategy::Union.as_str(), "union");
        assert_eq!(Strategy::parse("Union"), None);
    }

    #[test]
    fn union_is_accepted_wherever_a_strategy_is_and_never_decides_a_whole_resource() {
        let policy = ConflictPolicy::from_toml(
            "default = \"last-writer-wins\"\n\
             [types.Practitioner.elements]\nqualification = \"union\"\n\
             [types.Patient]\ndefault = \"union\"\n\
             [types.Condition]\ndefault = \"manual\"\n[types.Condition.elements]\nnote = \"union\"\n",
        )
        .unwrap();
        assert_eq!(policy.strategy("Practitioner", "qualification"), Strategy::Union);
        assert_eq!(policy.strategy("Practitioner", "name"), Strategy::LastWriterWins);
        assert_eq!(policy.strategy("Patient", "name"), Strategy::Union);
        assert_eq!(policy.strategy("Condition", "note"), Strategy::Union);
        // Union elements do not make a type manual; the type's default decides, and a
        // union default is manual for a whole resource, which is not a list.
        assert_eq!(policy.whole_resource("Practitioner"), Strategy::LastWriterWins);
        assert_eq!(policy.whole_resource("Condition"), Strategy::Manual);
        assert_eq!(policy.whole_resource("Patient"), Strategy::Manual);
        let everywhere = ConflictPolicy::from_toml("default = \"union\"").unwrap();
        assert_eq!(everywhere.strategy("Patient", "name"), Strategy::Union);
        assert_eq!(everywhere.whole_resource("Patient"), Strategy::Manual);
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

    /// Merges `reaction` lists by union; `base`, `server` and `client` are the lists
    /// (`None` where absent) next to an unchanged `code`.
    fn reactions(base: Option<Value>, server: Option<Value>, client: Option<Value>) -> Merged {
        let side = |list: Option<Value>| {
            let mut r = obj(json!({"resourceType": "AllergyIntolerance", "id": "a", "code": {"text": "penicillin"}}));
            if let Some(list) = list {
                r.insert("reaction".into(), list);
            }
            r
        };
        let policy = |e: &str| if e == "reaction" { Strategy::Union } else { Strategy::Manual };
        merge(&side(base), &side(server), &side(client), policy)
    }

    fn merged_reactions(m: &Merged) -> Option<&Value> {
        m.resource.get("reaction")
    }

    #[test]
    fn union_keeps_the_entries_both_sides_added() {
        let m = reactions(Some(json!(["hives"])), Some(json!(["hives", "rash"])), Some(json!(["hives", "wheeze", "nausea"])));
        assert_eq!(merged_reactions(&m), Some(&json!(["hives", "rash", "wheeze", "nausea"])));
        assert!(m.collisions.is_empty(), "a union leaves no conflict");
        assert_eq!(m.unions, vec!["reaction".to_owned()]);
        assert_eq!(m.resource["code"], json!({"text": "penicillin"}));
        assert_eq!(m.resource["id"], "a");
    }

    #[test]
    fn union_keeps_an_entry_one_side_removed_and_the_other_kept() {
        // The client removed "rash", the server kept it and added "wheeze".
        let m = reactions(Some(json!(["hives", "rash"])), Some(json!(["hives", "rash", "wheeze"])), Some(json!(["hives"])));
        assert_eq!(merged_reactions(&m), Some(&json!(["hives", "rash", "wheeze"])));
        assert_eq!(m.unions, vec!["reaction".to_owned()]);
        // The server removed "rash", the client kept it and added "nausea".
        let m = reactions(Some(json!(["hives", "rash"])), Some(json!(["hives", "wheeze"])), Some(json!(["hives", "rash", "nausea"])));
        assert_eq!(merged_reactions(&m), Some(&json!(["hives", "wheeze", "rash", "nausea"])));
        assert!(m.collisions.is_empty());
    }

    #[test]
    fn union_drops_an_entry_both_sides_removed() {
        let m = reactions(Some(json!(["hives", "rash", "cough"])), Some(json!(["hives", "wheeze"])), Some(json!(["nausea", "hives"])));
        assert_eq!(merged_reactions(&m), Some(&json!(["hives", "wheeze", "nausea"])));
        assert_eq!(m.unions, vec!["reaction".to_owned()]);
    }

    #[test]
    fn union_adds_each_client_entry_once_by_json_equality() {
        let rash = json!({"manifestation": [{"text": "rash"}], "severity": "mild"});
        let same_rash = json!({"severity": "mild", "manifestation": [{"text": "rash"}]});
        let m = reactions(
            Some(json!([])),
            Some(json!([{"manifestation": [{"text": "hives"}]}, rash.clone()])),
            Some(json!(["wheeze", same_rash, "wheeze", {"manifestation": [{"text": "hives"}]}, "cough", "cough"])),
        );
        assert_eq!(merged_reactions(&m), Some(&json!([{"manifestation": [{"text": "hives"}]}, rash, "wheeze", "cough"])));
        assert!(m.collisions.is_empty());
    }

    #[test]
    fn union_counts_an_absent_element_as_an_empty_list() {
        // Added on both sides to a record that had none.
        let m = reactions(None, Some(json!(["hives"])), Some(json!(["rash", "hives"])));
        assert_eq!(merged_reactions(&m), Some(&json!(["hives", "rash"])));
        assert_eq!(m.unions, vec!["reaction".to_owned()]);
        // The server removed the element; the client kept "hives" and added "rash".
        let m = reactions(Some(json!(["hives"])), None, Some(json!(["hives", "rash"])));
        assert_eq!(merged_reactions(&m), Some(&json!(["hives", "rash"])));
        // The client removed the element; the server added "rash": nothing is dropped.
        let m = reactions(Some(json!(["hives"])), Some(json!(["hives", "rash"])), None);
        assert_eq!(merged_reactions(&m), Some(&json!(["hives", "rash"])));
        assert_eq!(m.unions, vec!["reaction".to_owned()]);
        // Both removed every entry: an empty union leaves the element absent.
        let m = reactions(Some(json!(["hives"])), None, Some(json!([])));
        assert_eq!(merged_reactions(&m), None);
        assert!(m.collisions.is_empty());
        assert_eq!(m.unions, vec!["reaction".to_owned()]);
    }

    #[test]
    fn union_falls_back_to_manual_when_a_value_is_not_a_list() {
        let cases = [
            (Some(json!(["hives"])), Some(json!({"text": "rash"})), Some(json!(["hives", "wheeze"]))),
            (Some(json!(["hives"])), Some(json!(["hives", "rash"])), Some(json!("wheeze"))),
            (Some(json!("hives")), Some(json!(["rash"])), Some(json!(["wheeze"]))),
            (Some(json!(["hives"])), Some(Value::Null), Some(json!(["wheeze"]))),
        ];
        for (base, server, client) in cases {
            let m = reactions(base.clone(), server.clone(), client.clone());
            assert_eq!(merged_reactions(&m), server.as_ref(), "the server value stays");
            assert!(m.unions.is_empty());
            assert_eq!(
                m.collisions,
                vec![Collision {
                    path: "reaction".into(),
                    base: base.unwrap(),
                    server: server.unwrap(),
                    client: client.unwrap(),
                    strategy: Strategy::Manual,
                }]
            );
        }
        assert_eq!(union(None, Some(&json!(1)), None), None);
    }

    #[test]
    fn union_applies_only_when_both_sides_changed_the_element_differently() {
        // Changed by the client only: the client's list, even with entries removed.
        let m = reactions(Some(json!(["hives", "rash"])), Some(json!(["hives", "rash"])), Some(json!(["hives"])));
        assert_eq!(merged_reactions(&m), Some(&json!(["hives"])));
        assert!(m.unions.is_empty());
        // Changed by the server only, or the same change on both sides: the server's list.
        let m = reactions(Some(json!(["hives"])), Some(json!([])), Some(json!(["hives"])));
        assert_eq!(merged_reactions(&m), Some(&json!([])));
        let m = reactions(Some(json!(["hives"])), Some(json!(["rash"])), Some(json!(["rash"])));
        assert_eq!(merged_reactions(&m), Some(&json!(["rash"])));
        assert!(m.unions.is_empty() && m.collisions.is_empty());
    }

    #[test]
    fn union_and_manual_elements_of_one_edit_are_reported_apart() {
        let base = obj(json!({"reaction": ["hives"], "criticality": "low"}));
        let server = obj(json!({"reaction": ["hives", "rash"], "criticality": "high"}));
        let client = obj(json!({"reaction": ["wheeze"], "criticality": "unable-to-assess"}));
        let policy = |e: &str| if e == "reaction" { Strategy::Union } else { Strategy::Manual };
        let m = merge(&base, &server, &client, policy);
        assert_eq!(Value::Object(m.resource), json!({"reaction": ["hives", "rash", "wheeze"], "criticality": "high"}));
        assert_eq!(m.unions, vec!["reaction".to_owned()]);
        assert_eq!(m.collisions.len(), 1);
        assert_eq!((m.collisions[0].path.as_str(), m.collisions[0].strategy), ("criticality", Strategy::Manual));
    }
}
