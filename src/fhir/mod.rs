//! FHIR R4 JSON at the boundary: validation against the official R4 JSON schema plus the
//! checks the schema cannot express, the OperationOutcome issue model, and the shapes
//! of Bundles and the CapabilityStatement. Uses only `domain`.

pub mod bundle;
pub mod capability;
mod validate;

pub use validate::{FhirValidator, Issue, IssueCode, element_path};
