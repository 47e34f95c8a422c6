//! Who is calling: the principal a verified token yields (subject, tenant, roles,
//! `fhirUser`), its roles, and the purpose of use an access is made for.

use std::fmt;

use crate::domain::{Reference, TenantId};

/// The roles of SPEC section 2. What each may do is policy (`policies/access.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Clinician,
    Nurse,
    FrontDesk,
    Patient,
    Auditor,
    Admin,
}

impl Role {
    pub const ALL: [Role; 6] = [Role::Clinician, Role::Nurse, Role::FrontDesk, Role::Patient, Role::Auditor, Role::Admin];

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == raw)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Clinician => "clinician",
            Role::Nurse => "nurse",
            Role::FrontDesk => "front_desk",
            Role::Patient => "patient",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller, built only from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    pub tenant: TenantId,
    /// Known roles only; roles the server does not know grant nothing and are dropped.
    pub roles: Vec<Role>,
    /// SMART `fhirUser`: the Practitioner or Patient this caller acts as.
    pub fhir_user: Option<Reference>,
    /// When the token this principal came from expires (Unix seconds), for long-lived
    /// connections that must end with it.
    pub expires_at: Option<u64>,
}

impl Principal {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// HL7 v3 PurposeOfUse code sent in `X-Purpose-Of-Use` (default `TREAT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurposeOfUse(String);

impl PurposeOfUse {
    /// Codes of the HL7 v3 PurposeOfUse value set (v3-ActReason, PurposeOfUse branch).
    const KNOWN: &'static [&'static str] = &[
        "TREAT",
        "ETREAT",
        "CLINTRCH",
        "CLINTRL",
        "POPHLTH",
        "HRESCH",
        "HOPERAT",
        "CAREMGT",
        "DONAT",
        "FRAUD",
        "GOV",
        "HACCRED",
        "HCOMPL",
        "HDECD",
        "HDIRECT",
        "HLEGAL",
        "HMARKT",
        "HOUTCOMS",
        "HPRGRP",
        "HQUALIMP",
        "HSYSADMIN",
        "LABELING",
        "METAMGT",
        "MEMADMIN",
        "MILCDM",
        "PATADMIN",
        "PATSFTY",
        "PERFMSR",
        "RECORDMGT",
        "SYSDEV",
        "HTEST",
        "TRAIN",
        "HPAYMT",
        "CLMATTCH",
        "COVAUTH",
        "COVERAGE",
        "ELIGDTRM",
        "ELIGVER",
        "ENROLLM",
        "REMITADV",
        "HRESCH",
        "PATRQT",
        "FAMRQT",
        "PWATRNY",
        "SUPNWK",
        "PUBHLTH",
        "DISASTER",
        "THREAT",
        "BTG",
        "ERTREAT",
        "COC",
        "PUBLICHEALTH",
    ];

    pub fn parse(raw: &str) -> Option<Self> {
        let code = raw.trim();
        Self::KNOWN.contains(&code).then(|| Self(code.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for PurposeOfUse {
    fn default() -> Self {
        Self("TREAT".to_owned())
    }
}
