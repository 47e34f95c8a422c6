//! Pure allow/deny decisions from `policies/access.toml`: which role may read or write
//! which category of record, in which scope, and which may break the glass. No I/O past
//! loading the policy; the service layer asks, this module answers. Uses only `domain`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use crate::domain::{Category, Principal, Reference, Role};

/// How far a grant reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Nothing.
    None,
    /// The caller's own record: the target's owner is the caller's `fhirUser`.
    #[serde(rename = "self")]
    Own,
    /// Patients whose `generalPractitioner` references the caller's `fhirUser`, and their records.
    Care,
    /// Every record of the caller's tenant.
    Tenant,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub read: Scope,
    pub write: Scope,
}

/// Non-FHIR functions a role may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Audit,
    LegalHolds,
    Keys,
    Metrics,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolePolicy {
    pub patient: Grant,
    pub clinical: Grant,
    pub practitioner: Grant,
    /// May read outside its scope with an `X-Break-Glass` reason.
    pub break_glass: bool,
    #[serde(default)]
    pub capabilities: BTreeSet<Capability>,
}

impl RolePolicy {
    fn grant(&self, category: Category) -> Grant {
        match category {
            Category::Patient => self.patient,
            Category::Clinical => self.clinical,
            Category::Practitioner => self.practitioner,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read access policy {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("access policy is not valid: {0}")]
    Parse(String),
    #[error("access policy has no entry for role '{0}'")]
    MissingRole(&'static str),
    #[error("access policy names unknown role '{0}'")]
    UnknownRole(String),
    #[error("access policy: role '{0}' {1}")]
    Unsafe(&'static str, &'static str),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    roles: BTreeMap<String, RolePolicy>,
}

/// What a request wants to do to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

/// The record an operation touches, as far as access is concerned.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub category: Category,
    /// `Patient/ID` for patient and clinical records, `Practitioner/ID` for the directory.
    pub owner: Option<&'a Reference>,
    /// The patient's `generalPractitioner` references.
    pub care_team: &'a [Reference],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Allowed only because the caller broke the glass; the access is an emergency access.
    AllowBreakGlass,
    Deny,
}

/// Which rows a search may return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchScope {
    All,
    /// Rows in the care of `care_of` or owned by `owner` (either may be absent, not both).
    Restricted {
        care_of: Option<Reference>,
        owner: Option<Reference>,
    },
    /// Any row, only because the caller broke the glass. SPEC section 2: such a search
    /// must identify one patient, never page through the tenant; the service checks the
    /// criteria, and ledgers as emergency access only the rows outside the caller's own
    /// scope.
    BreakGlass,
    Denied,
}

/// The loaded role matrix.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    roles: BTreeMap<Role, RolePolicy>,
}

impl AccessPolicy {
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let path = dir.join("access.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Read { path: path.display().to_string(), source })?;
        Self::from_toml(&text)
    }

    /// Parses and checks a policy: every role present, nothing unknown, and the rules of
    /// SPEC section 2 that no deployment may loosen (auditors never read PHI; patients
    /// never reach other patients; only clinical roles and admins break the glass).
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse(e.message().to_owned()))?;
        let mut roles = BTreeMap::new();
        for (name, policy) in file.roles {
            let role = Role::parse(&name).ok_or(PolicyError::UnknownRole(name))?;
            roles.insert(role, policy);
        }
        for role in Role::ALL {
            let Some(p) = roles.get(&role) else { return Err(PolicyError::MissingRole(role.as_str())) };
            let phi = [p.patient, p.clinical];
            match role {
                Role::Auditor if phi.iter().any(|g| g.read != Scope::None || g.write != Scope::None) => {
                    return Err(PolicyError::Unsafe("auditor", "must not read or write PHI"));
                }
                Role::Patient if phi.iter().any(|g| g.read > Scope::Own || g.write > Scope::Own) => {
                    return Err(PolicyError::Unsafe("patient", "may reach its own records only"));
                }
                Role::Auditor | Role::Patient | Role::FrontDesk if p.break_glass => {
                    return Err(PolicyError::Unsafe(role.as_str(), "may not break the glass"));
                }
                _ => {}
            }
        }
        Ok(Self { roles })
    }

    fn policies<'a>(&'a self, principal: &'a Principal) -> impl Iterator<Item = &'a RolePolicy> + 'a {
        principal.roles.iter().filter_map(|r| self.roles.get(r))
    }

    fn in_scope(scope: Scope, principal: &Principal, target: &Target<'_>) -> bool {
        let me = principal.fhir_user.as_ref();
        match scope {
            Scope::None => false,
            Scope::Tenant => true,
            Scope::Own => me.is_some() && me == target.owner,
            Scope::Care => me.is_some_and(|me| target.care_team.contains(me)),
        }
    }

    /// Decides one operation on one record of the caller's tenant (tenancy itself is
    /// enforced by the store: another tenant's record is never found).
    pub fn decide(&self, principal: &Principal, op: Op, target: &Target<'_>, break_glass: bool) -> Decision {
        let allowed = self.policies(principal).any(|p| {
            let g = p.grant(target.category);
            Self::in_scope(if op == Op::Read { g.read } else { g.write }, principal, target)
        });
        if allowed {
            Decision::Allow
        } else if op == Op::Read && break_glass && self.may_break_glass(principal) {
            Decision::AllowBreakGlass
        } else {
            Decision::Deny
        }
    }

    /// Whether the record, as `target` describes it, stood in a relationship with the
    /// caller's `fhirUser` (its owner, or in its care team), whatever the caller's roles.
    /// The change feed asks this of a version a subscriber may no longer read, to decide
    /// whether the device must be told to drop its copy.
    pub fn related(principal: &Principal, target: &Target<'_>) -> bool {
        Self::in_scope(Scope::Own, principal, target) || Self::in_scope(Scope::Care, principal, target)
    }

    pub fn may_break_glass(&self, principal: &Principal) -> bool {
        self.policies(principal).any(|p| p.break_glass)
    }

    /// The rows a search of `category` may return to this caller. Break-glass widens a
    /// search only for a caller whose own scope is narrower than the tenant.
    pub fn search_scope(&self, principal: &Principal, category: Category, break_glass: bool) -> SearchScope {
        let best = self.policies(principal).map(|p| p.grant(category).read);
        let scopes: BTreeSet<Scope> = best.collect();
        if scopes.contains(&Scope::Tenant) {
            return SearchScope::All;
        }
        if break_glass && self.may_break_glass(principal) {
            return SearchScope::BreakGlass;
        }
        let me = principal.fhir_user.clone();
        let care_of = me.clone().filter(|_| scopes.contains(&Scope::Care));
        let owner = me.filter(|_| scopes.contains(&Scope::Own));
        if care_of.is_none() && owner.is_none() { SearchScope::Denied } else { SearchScope::Restricted { care_of, owner } }
    }

    pub fn has_capability(&self, principal: &Principal, capability: Capability) -> bool {
        self.policies(principal).any(|p| p.capabilities.contains(&capability))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ResourceId, ResourceType, TenantId};

    fn shipped() -> AccessPolicy {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/access.toml")).unwrap();
        AccessPolicy::from_toml(&text).unwrap()
    }

    fn who(role: Role, user: Option<&str>) -> Principal {
        Principal {
            sub: "u".into(),
            tenant: TenantId::parse("t").unwrap(),
            roles: vec![role],
            fhir_user: user.map(|u| Reference::parse(u).unwrap()),
            expires_at: None,
        }
    }

    #[test]
    fn shipped_policy_follows_the_role_table() {
        let policy = shipped();
        let gp = Reference::parse("Practitioner/dr1").unwrap();
        let pat = Reference::new(ResourceType::Patient, ResourceId::parse("p1").unwrap());
        let team = [gp.clone()];
        let patient = Target { category: Category::Patient, owner: Some(&pat), care_team: &team };
        let doc = who(Role::Clinician, Some("Practitioner/dr1"));
        let other_doc = who(Role::Nurse, Some("Practitioner/dr2"));
        assert_eq!(policy.decide(&doc, Op::Read, &patient, false), Decision::Allow);
        assert_eq!(policy.decide(&doc, Op::Write, &patient, false), Decision::Allow);
        assert_eq!(policy.decide(&other_doc, Op::Read, &patient, false), Decision::Deny);
        assert_eq!(policy.decide(&other_doc, Op::Read, &patient, true), Decision::AllowBreakGlass);
        assert_eq!(policy.decide(&other_doc, Op::Write, &patient, true), Decision::Deny);
        assert_eq!(policy.decide(&who(Role::FrontDesk, None), Op::Write, &patient, false), Decision::Allow);
        assert_eq!(policy.decide(&who(Role::Patient, Some("Patient/p1")), Op::Read, &patient, false), Decision::Allow);
        assert_eq!(policy.decide(&who(Role::Patient, Some("Patient/p2")), Op::Read, &patient, true), Decision::Deny);
        assert_eq!(policy.decide(&who(Role::Auditor, None), Op::Read, &patient, true), Decision::Deny);
        assert_eq!(policy.decide(&who(Role::Admin, None), Op::Read, &patient, false), Decision::Deny);
        assert_eq!(policy.decide(&who(Role::Admin, None), Op::Read, &patient, true), Decision::AllowBreakGlass);
        let directory = Target { category: Category::Practitioner, owner: Some(&gp), care_team: &[] };
        for role in Role::ALL {
            assert_eq!(policy.decide(&who(role, None), Op::Read, &directory, false), Decision::Allow);
        }
        assert_eq!(policy.decide(&who(Role::Admin, None), Op::Write, &directory, false), Decision::Allow);
        assert_eq!(policy.decide(&doc, Op::Write, &directory, false), Decision::Deny);
        assert_eq!(policy.search_scope(&doc, Category::Patient, true), SearchScope::BreakGlass);
        assert_eq!(policy.search_scope(&who(Role::FrontDesk, None), Category::Patient, true), SearchScope::All);
        assert_eq!(policy.search_scope(&doc, Category::Practitioner, true), SearchScope::All);
        assert_eq!(policy.search_scope(&who(Role::Auditor, None), Category::Patient, true), SearchScope::Denied);
        assert!(policy.has_capability(&who(Role::Admin, None), Capability::Metrics));
        assert!(!policy.has_capability(&doc, Capability::Metrics));
    }

    #[test]
    fn unsafe_or_incomplete_policies_are_refused() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/access.toml")).unwrap();
        let loosened = text.replacen("[roles.auditor]\npatient = { read = \"none\"", "[roles.auditor]\npatient = { read = \"tenant\"", 1);
        assert_ne!(loosened, text, "fixture no longer matches the shipped policy layout");
        assert!(matches!(AccessPolicy::from_toml(&loosened), Err(PolicyError::Unsafe("auditor", _))));
        let missing = text.replace("[roles.nurse]", "[roles.nurse_x]");
        assert!(matches!(AccessPolicy::from_toml(&missing), Err(PolicyError::UnknownRole(_))));
        assert!(matches!(AccessPolicy::from_toml("roles = {}"), Err(PolicyError::MissingRole(_))));
        assert!(matches!(AccessPolicy::from_toml("bogus = 1"), Err(PolicyError::Parse(_))));
    }
}
