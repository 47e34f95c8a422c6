//! The verifiable audit ledger's core: RFC 6962 / RFC 9162 Merkle-tree hashing, the tree
//! head and inclusion/consistency proofs computed from stored complete-subtree hashes
//! (never by rehashing the log), and C2SP signed-note checkpoints under Ed25519.
//! [`replay`] recomputes a log's root from its leaves for readers that summarise it (the
//! reviewer's report). Storage is abstracted behind [`merkle::NodeSource`], so the same code answers from the
//! database ([`log`]) or from memory. Uses `store` for its rows and nothing else of the crate.

pub mod checkpoint;
pub mod entry;
pub mod export;
pub mod log;
pub mod merkle;
pub mod replay;
pub mod verify;
