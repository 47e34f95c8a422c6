//! Domain types shared by every layer: tenants, principals and roles, resource types and
//! their search parameters, FHIR ids and references. Values are parsed here, at the edge,
//! so the rest of the crate never handles an unchecked string. This module imports nothing
//! of the crate.

pub mod dates;
mod events;
mod ids;
mod principal;
mod resource_type;
pub mod search;

pub use events::{AuditAction, AuditOutcome, ChangeOp, ConflictStatus, MutationOp, PushStatus};
pub use ids::{IdError, Reference, ResourceId, TenantId};
pub use principal::{Principal, PurposeOfUse, Role};
pub use resource_type::{Category, ResourceDef, ResourceType};
