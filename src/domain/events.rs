//! The closed vocabularies of audit entries, the change feed and offline sync. Each is an
//! enum end to end; its wire and storage spelling is `as_str` (and serde's lower-case
//! form), parsed back with `parse` where stored rows are read.

use serde::{Deserialize, Serialize};

macro_rules! vocabulary {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The value spelled `text`, if it is one.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

vocabulary! {
    /// What an audit entry records (SPEC section 5).
    AuditAction {
        Create = "create", Read = "read", Vread = "vread", Update = "update", Delete = "delete",
        History = "history", Search = "search", Export = "export", Sync = "sync", Purge = "purge",
        Login = "login",
    }
}

vocabulary! {
    /// How an audited attempt ended.
    AuditOutcome { Success = "success", Denied = "denied", Error = "error" }
}

vocabulary! {
    /// What a change-feed message tells a device (SPEC section 6). `Revoke` is never
    /// stored: the feed derives it for a subscriber that lost access.
    ChangeOp { Create = "create", Update = "update", Delete = "delete", Purge = "purge", Revoke = "revoke" }
}

vocabulary! {
    /// What an offline mutation asks for.
    MutationOp { Create = "create", Update = "update", Delete = "delete" }
}

vocabulary! {
    /// How an offline mutation was answered.
    PushStatus { Applied = "applied", Merged = "merged", Conflict = "conflict", Rejected = "rejected", Duplicate = "duplicate" }
}

vocabulary! {
    /// Whether a stored sync conflict still waits for a clinician.
    ConflictStatus { Open = "open", Resolved = "resolved" }
}

impl From<ChangeOp> for AuditAction {
    fn from(op: ChangeOp) -> Self {
        match op {
            ChangeOp::Create => AuditAction::Create,
            ChangeOp::Update => AuditAction::Update,
            ChangeOp::Delete => AuditAction::Delete,
            ChangeOp::Purge => AuditAction::Purge,
            ChangeOp::Revoke => AuditAction::Sync,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip_through_text_and_serde() {
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::parse(a.as_str()), Some(*a));
            assert_eq!(serde_json::to_value(a).unwrap(), serde_json::Value::String(a.as_str().into()));
        }
        for s in PushStatus::ALL {
            assert_eq!(serde_json::from_value::<PushStatus>(serde_json::json!(s.as_str())).unwrap(), *s);
        }
        assert_eq!(ChangeOp::parse("revoke"), Some(ChangeOp::Revoke));
        assert_eq!(ConflictStatus::parse("closed"), None);
    }
}
