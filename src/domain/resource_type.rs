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
    Encounter,
    Observation,
    Condition,
    AllergyIntolerance,
    MedicationRequest,
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
    /// The element holding the patient-compartment reference (`subject`, `patient`) of a
    /// clinical type; it is required, and names a Patient of the same tenant.
    pub compartment: Option<&'static str>,
    /// The date search parameter `_sort` and `$everything` order by, if any.
    pub date_param: Option<&'static str>,
}

const PATIENT: ResourceDef = ResourceDef {
    resource_type: ResourceType::Patient,
    name: "Patient",
    category: Category::Patient,
    search: &[
        SearchParamDef { name: "identifier", kind: ParamKind::Identifier, element: "identifier" },
        SearchParamDef { name: "family", kind: ParamKind::Family, element: "name" },
        SearchParamDef { name: "given", kind: ParamKind::Given, element: "name" },
        SearchParamDef { name: "name", kind: ParamKind::Name, element: "name" },
        SearchParamDef { name: "birthdate", kind: ParamKind::Date, element: "birthDate" },
        SearchParamDef { name: "phone", kind: ParamKind::Phone, element: "telecom" },
        SearchParamDef { name: "email", kind: ParamKind::Email, element: "telecom" },
        SearchParamDef {
            name: "general-practitioner",
            kind: ParamKind::Reference(ResourceType::Practitioner),
            element: "generalPractitioner",
        },
    ],
    compartment: None,
    date_param: None,
};

const PRACTITIONER: ResourceDef = ResourceDef {
    resource_type: ResourceType::Practitioner,
    name: "Practitioner",
    category: Category::Practitioner,
    search: &[
        SearchParamDef { name: "identifier", kind: ParamKind::Identifier, element: "identifier" },
        SearchParamDef { name: "family", kind: ParamKind::Family, element: "name" },
    ],
    compartment: None,
    date_param: None,
};

/// `patient` and `subject` of a clinical type: its compartment, matched on the stored
/// patient id.
const fn compartment_params(element: &'static str) -> [SearchParamDef; 2] {
    [
        SearchParamDef { name: "patient", kind: ParamKind::Compartment, element },
        SearchParamDef { name: "subject", kind: ParamKind::Compartment, element },
    ]
}

const fn token(name: &'static str, element: &'static str) -> SearchParamDef {
    SearchParamDef { name, kind: ParamKind::Token, element }
}

const fn date(name: &'static str, element: &'static str) -> SearchParamDef {
    SearchParamDef { name, kind: ParamKind::DateSpan, element }
}

const SUBJECT: [SearchParamDef; 2] = compartment_params("subject");

const ENCOUNTER: ResourceDef = ResourceDef {
    resource_type: ResourceType::Encounter,
    name: "Encounter",
    category: Category::Clinical,
    search: &[
        SUBJECT[0],
        SUBJECT[1],
        date("date", "period"),
        token("status", "status"),
        token("type", "type"),
        token("class", "class"),
        SearchParamDef { name: "identifier", kind: ParamKind::Identifier, element: "identifier" },
    ],
    compartment: Some("subject"),
    date_param: Some("date"),
};

const OBSERVATION: ResourceDef = ResourceDef {
    resource_type: ResourceType::Observation,
    name: "Observation",
    category: Category::Clinical,
    search: &[
        SUBJECT[0],
        SUBJECT[1],
        token("category", "category"),
        token("code", "code"),
        date("date", "effective"),
        token("status", "status"),
    ],
    compartment: Some("subject"),
    date_param: Some("date"),
};

const CONDITION: ResourceDef = ResourceDef {
    resource_type: ResourceType::Condition,
    name: "Condition",
    category: Category::Clinical,
    search: &[
        SUBJECT[0],
        SUBJECT[1],
        token("category", "category"),
        token("clinical-status", "clinicalStatus"),
        token("verification-status", "verificationStatus"),
        token("code", "code"),
        date("onset-date", "onset"),
        date("recorded-date", "recordedDate"),
    ],
    compartment: Some("subject"),
    date_param: Some("onset-date"),
};

const ALLERGY_PATIENT: [SearchParamDef; 2] = compartment_params("patient");

const ALLERGY_INTOLERANCE: ResourceDef = ResourceDef {
    resource_type: ResourceType::AllergyIntolerance,
    name: "AllergyIntolerance",
    category: Category::Clinical,
    search: &[
        ALLERGY_PATIENT[0],
        token("clinical-status", "clinicalStatus"),
        token("verification-status", "verificationStatus"),
        token("code", "code"),
        date("date", "recordedDate"),
    ],
    compartment: Some("patient"),
    date_param: Some("date"),
};

const MEDICATION_REQUEST: ResourceDef = ResourceDef {
    resource_type: ResourceType::MedicationRequest,
    name: "MedicationRequest",
    category: Category::Clinical,
    search: &[
        SUBJECT[0],
        SUBJECT[1],
        token("intent", "intent"),
        token("status", "status"),
        token("code", "medicationCodeableConcept"),
        date("authoredon", "authoredOn"),
    ],
    compartment: Some("subject"),
    date_param: Some("authoredon"),
};

impl ResourceType {
    pub const ALL: [ResourceType; 7] = [
        ResourceType::Patient,
        ResourceType::Practitioner,
        ResourceType::Encounter,
        ResourceType::Observation,
        ResourceType::Condition,
        ResourceType::AllergyIntolerance,
        ResourceType::MedicationRequest,
    ];

    /// The clinical types: the patient compartment besides the Patient itself.
    pub const CLINICAL: [ResourceType; 5] = [
        ResourceType::Encounter,
        ResourceType::Observation,
        ResourceType::Condition,
        ResourceType::AllergyIntolerance,
        ResourceType::MedicationRequest,
    ];

    pub fn def(self) -> &'static ResourceDef {
        match self {
            ResourceType::Patient => &PATIENT,
            ResourceType::Practitioner => &PRACTITIONER,
            ResourceType::Encounter => &ENCOUNTER,
            ResourceType::Observation => &OBSERVATION,
            ResourceType::Condition => &CONDITION,
            ResourceType::AllergyIntolerance => &ALLERGY_INTOLERANCE,
            ResourceType::MedicationRequest => &MEDICATION_REQUEST,
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
