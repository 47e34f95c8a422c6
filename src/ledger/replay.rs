//! Replays one log from its first entry: recomputes the RFC 6962 root from the stored leaf
//! bytes alone (never from the stored subtree hashes), checks it against every checkpoint
//! the log holds and against one a reviewer kept (an anchor), and hands each entry to a
//! visitor on the way. Unlike [`crate::ledger::verify`] it does not stop at the first
//! mismatch: it notes it and goes on visiting, so a reader can still show what the database
//! holds beside the news that it does not verify. Entries are read in batches and
//! checkpoints walked in step with them, so memory holds one batch and the tree's right
//! frontier (O(log n) hashes) whatever the log's size.

use crate::ledger::checkpoint;
use crate::ledger::entry::Entry;
use crate::ledger::merkle::{self, Hash, to_hex};
use crate::ledger::verify::{Mismatch, read, row_matches_leaf};
use crate::store::DbConnection;
use crate::store::ledger as rows;

const BATCH: i64 = 10_000;

/// A signed checkpoint kept outside the database (a previous report's): the log's first
/// `size` entries must still hash to `root`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub size: u64,
    pub root: Hash,
}

/// What a replay found. `first_mismatch` is `None` only when every entry up to `size` was
/// present, dense, parsed, named its log, matched its stored hash and filter columns, and every root
/// compared (stored checkpoints', the anchor's) matched the recomputed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Entries read and visited (a leaf that does not parse is read but not visited).
    pub entries: u64,
    /// The root recomputed over the first `size` leaves; `None` when an entry was missing,
    /// so no root could be recomputed.
    pub root: Option<Hash>,
    /// Stored checkpoints whose roots were compared.
    pub checkpoints: u64,
    /// Whether the anchor's root matched (`None`: no anchor, or it was never reached).
    pub anchor_matched: Option<bool>,
    pub first_mismatch: Option<Mismatch>,
}

struct State<'a> {
    log: &'a str,
    origin: &'a str,
    public_key: &'a [u8],
    frontier: merkle::Frontier,
    /// Leaves hashed, in order; stops growing at the first missing entry.
    hashed: u64,
    intact: bool,
    checkpoints: Vec<rows::CheckpointRow>,
    next_checkpoint: usize,
    checkpoints_from: i64,
    checkpoints_done: bool,
    checked: u64,
    anchor: Option<Anchor>,
    anchor_matched: Option<bool>,
    first: Option<Mismatch>,
}

impl State<'_> {
    fn note(&mut self, mismatch: Mismatch) {
        self.first.get_or_insert(mismatch);
    }

    /// The next stored checkpoint at or beyond the current size (reading the next page
    /// when the one held is used up), skipping those passed while the log had a gap.
    fn next_stored(&mut self, conn: &mut DbConnection, limit: u64) -> Result<Option<usize>, Mismatch> {
        loop {
            if self.next_checkpoint == self.checkpoints.len() {
                if self.checkpoints_done {
                    return Ok(None);
                }
                let to = i64::try_from(limit).unwrap_or(i64::MAX);
                self.checkpoints = rows::checkpoints_between(conn, self.log, self.checkpoints_from, to, BATCH).map_err(read)?;
                self.next_checkpoint = 0;
                self.checkpoints_done = self.checkpoints.len() < BATCH as usize;
                let Some(last) = self.checkpoints.last() else { return Ok(None) };
                self.checkpoints_from = last.size + 1;
            }
            let at = u64::try_from(self.checkpoints[self.next_checkpoint].size).unwrap_or(u64::MAX);
            if at >= self.hashed {
                return Ok(Some(self.next_checkpoint));
            }
            self.next_checkpoint += 1;
        }
    }

    /// Compares the roots due at the current size: the anchor's and the stored
    /// checkpoints'. The root is computed only when one is due.
    fn compare_at_size(&mut self, conn: &mut DbConnection, limit: u64) -> Result<(), Mismatch> {
        let size = self.hashed;
        let anchor_due = self.anchor.filter(|a| a.size == size);
        let mut root = None;
        if let Some(anchor) = anchor_due {
            let r = *root.get_or_insert_with(|| self.frontier.root());
            let matched = anchor.root == r;
            self.anchor_matched = Some(matched);
            if !matched {
                self.note(Mismatch::Checkpoint { size, what: "the entries differ from the kept checkpoint".into() });
            }
        }
        while let Some(i) = self.next_stored(conn, limit)? {
            let c = &self.checkpoints[i];
            if u64::try_from(c.size).unwrap_or(u64::MAX) != size {
                return Ok(());
            }
            self.next_checkpoint += 1;
            self.checked += 1;
            let r = *root.get_or_insert_with(|| self.frontier.root());
            if c.root_hash != to_hex(&r) {
                // Tell a genuine checkpoint over other entries from a row the key never signed.
                let what = match checkpoint::verify(&c.note, self.origin, self.public_key) {
                    Ok((s, signed)) if s == size && signed != r => "the entries differ from what this checkpoint signed".to_owned(),
                    Ok(_) => "the stored root differs from its signed note".to_owned(),
                    Err(e) => format!("the stored root differs from the entries, and {e}"),
                };
                self.note(Mismatch::Checkpoint { size, what });
            }
        }
        Ok(())
    }
}

/// Replays the first `size` entries of `log` (signed as `origin`), calling `visit` with
/// each entry whose leaf parses, in `seq` order. `Err` only when the database cannot be
/// read; everything the entries themselves get wrong is in [`Replayed::first_mismatch`].
pub fn replay(
    conn: &mut DbConnection,
    log: &str,
    origin: &str,
    public_key: &[u8],
    size: u64,
    anchor: Option<Anchor>,
    visit: &mut dyn FnMut(&Entry),
) -> Result<Replayed, Mismatch> {
    let mut st = State {
        log,
        origin,
        public_key,
        frontier: merkle::Frontier::default(),
        hashed: 0,
        intact: true,
        checkpoints: Vec::new(),
        next_checkpoint: 0,
        checkpoints_from: 0,
        checkpoints_done: false,
        checked: 0,
        anchor,
        anchor_matched: None,
        first: None,
    };
    if let Some(a) = anchor
        && a.size > size
    {
        st.anchor_matched = Some(false);
        st.note(Mismatch::Checkpoint { size: a.size, what: format!("kept for more entries than the {size} the log now has") });
    }
    st.compare_at_size(conn, size)?;
    let mut entries = 0u64;
    let mut next: u64 = 0;
    let end = i64::try_from(size).map_err(|_| Mismatch::Read("size overflow".into()))?;
    let mut from = 0i64;
    while from < end {
        let batch = rows::entries(conn, log, from, end.min(from.saturating_add(BATCH))).map_err(read)?;
        let Some(last) = batch.last() else { break };
        from = last.seq + 1;
        for row in &batch {
            let seq = u64::try_from(row.seq).unwrap_or(u64::MAX);
            if seq != next {
                st.note(Mismatch::Entry { seq: next, what: "missing (sequence numbers are not dense)".into() });
                st.intact = false;
            }
            next = seq.saturating_add(1);
            let Ok(entry) = serde_json::from_str::<Entry>(&row.leaf) else {
                st.note(Mismatch::Entry { seq, what: "leaf is not a ledger entry".into() });
                st.intact = false;
                continue;
            };
            if !row_matches_leaf(log, seq, row, &entry) {
                st.note(Mismatch::Entry { seq, what: "stored columns differ from the leaf".into() });
            }
            let hash = merkle::leaf_hash(row.leaf.as_bytes());
            if to_hex(&hash) != row.leaf_hash {
                st.note(Mismatch::Entry { seq, what: "leaf hash does not match the leaf bytes".into() });
            }
            if st.intact {
                st.frontier.push(hash, |_, _, _| {});
                st.hashed += 1;
                st.compare_at_size(conn, size)?;
            }
            entries += 1;
            visit(&entry);
        }
    }
    if next < size {
        st.note(Mismatch::Entry { seq: next, what: format!("missing: the log ends at {next} of {size} entries (truncated)") });
        st.intact = false;
    }
    let root = (st.intact && st.hashed == size).then(|| st.frontier.root());
    Ok(Replayed { entries, root, checkpoints: st.checked, anchor_matched: st.anchor_matched, first_mismatch: st.first })
}
