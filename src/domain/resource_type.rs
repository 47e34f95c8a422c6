//! The served resource types, their category (patient, clinical, practitioner), patient
//! compartment and search parameters.

use crate::domain::search::{ParamKind, SearchParamDef};

/// Resource types the server serves. Adding one is an entry in [`ResourceType::def`] (its
/// category, compartment and search parameters) plus its checks in `fhir::validate`; the
/// storage, API and access engine are generic over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Patient,
    Practitioner,
}

/// How access policy treats a type (see `policies/access.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// Patient demographics.
    Patient,
    /// The Practitioner directory.
    Practitioner,
    /// Clinical records in the patient compartment.
    Clinical,
}

/// Static description of a resource type.
#[derive(Debug)]
pub struct ResourceDef {
    pub resource_type: ResourceType,
    pub name: &'static str,
    pub category: Category,
    /// Search parameters served for the type, besides `_id`.
    pub search: &'static [SearchParamDef],
    /// Elements holding the patient-compartment reference (`subject`, `patient`).
    pub compartment: &'static [&'static str],
}

const PATIENT: ResourceDef = ResourceDef {
    resource_type: ResourceType::Patient,
    name: "Patient",
    category: Category::Patient,
    search: &[
        SearchParamDef { name: "identifier", kind: ParamKind::Identifier, element: "identifier" },
        SearchParamDef { name: "family", kind: ParamKind::Family, element: "name" },
        SearchParamDef { name: "given", kind: ParamKind::Given, element: "name" },
        SearchParamDef { name: "birthdate", kind: ParamKind::Date, element: "birthDate" },
        SearchParamDef { name: "phone", kind: ParamKind::Phone, element: "telecom" },
        SearchParamDef { name: "email", kind: ParamKind::Email, element: "telecom" },
        SearchParamDef {
            name: "general-practitioner",
            kind: ParamKind::Reference(ResourceType::Practitioner),
            element: "generalPractitioner",
        },
    ],
    compartment: &[],
};

const PRACTITIONER: ResourceDef = ResourceDef {
    resource_type: ResourceType::Practitioner,
    name: "Practitioner",
    category: Category::Practitioner,
    search: &[
        SearchParamDef { name: "identifier", kind: ParamKind::Identifier, element: "identifier" },
        SearchParamDef { name: "family", kind: ParamKind::Family, element: "name" },
    ],
    compartment: &[],
};

impl ResourceType {
    pub const ALL: [ResourceType; 2] = [ResourceType::Patient, ResourceType::Practitioner];

    pub fn def(self) -> &'static ResourceDef {
        match self {
            ResourceType::Patient => &PATIENT,
            ResourceType::Practitioner => &PRACTITIONER,
        }
    }

    pub fn name(self) -> &'static str {
        self.def().name
    }

    pub fn category(self) -> Category {
        self.def().category
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn search_param(self, name: &str) -> Option<&'static SearchParamDef> {
        self.def().search.iter().find(|p| p.name == name)
    }
}
