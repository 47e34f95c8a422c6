//! The sync wing: the change feed devices follow (`feed`), offline edits they push
//! (`push`, merged per element by `merge` under `policies/conflicts.toml`), the conflicts
//! those leave for a clinician (`conflicts`), the wake-ups that tell connections
//! something committed (`change_signal`), and the rounds that serve a tenant's woken
//! subscribers together (`fanout`). Its use cases are resource use cases of another
//! kind: they write through the same path as CRUD (`resources::write`), which is why
//! [`SyncService`] derefs to the [`ResourceService`] it is built on.

use std::ops::Deref;

use serde_json::{Map, Value};

use crate::service::Services;
use crate::service::resources::ResourceService;

pub mod change_signal;
mod conflicts;
pub(in crate::service) mod fanout;
mod feed;
pub mod merge;
mod push;

pub use conflicts::{Conflict, MAX_CONFLICTS, Resolution, Resolved};
pub(crate) use feed::Ask;
pub use feed::{Change, ChangePage, FeedFilter};
pub use merge::{Collision, Strategy};
pub use push::{Mutation, PushResult};

/// Sync use cases for one request.
pub struct SyncService<'s> {
    resources: ResourceService<'s>,
}

impl<'s> SyncService<'s> {
    pub fn new(services: &'s Services) -> Self {
        Self { resources: ResourceService::new(services) }
    }
}

impl<'s> Deref for SyncService<'s> {
    type Target = ResourceService<'s>;

    fn deref(&self) -> &Self::Target {
        &self.resources
    }
}

/// Content without the server-owned `meta`, as merged and compared.
pub(super) fn body_of(content: &Value) -> Map<String, Value> {
    let mut map = content.as_object().cloned().unwrap_or_default();
    map.shift_remove("meta");
    map
}
