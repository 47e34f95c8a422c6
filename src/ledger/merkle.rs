//! RFC 6962 §2.1 / RFC 9162 §2.1 Merkle trees.
//!
//! Leaf hash `SHA-256(0x00 || leaf)`, node hash `SHA-256(0x01 || left || right)`, the
//! hash of the empty tree `SHA-256("")`. A tree over `n` leaves splits at the largest
//! power of two below `n`. Every aligned subtree whose size is a power of two is a
//! *complete* subtree and never changes once its last leaf exists: those are the hashes a
//! ledger stores (level `l`, index `i` covers leaves `[i·2^l, (i+1)·2^l)`), and every head
//! and proof here is assembled from them with O(log² n) lookups.

use ring::digest::{Context, SHA256, digest};

pub type Hash = [u8; 32];

pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(leaf);
    to_hash(ctx.finish().as_ref())
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    to_hash(ctx.finish().as_ref())
}

pub fn empty_root() -> Hash {
    to_hash(digest(&SHA256, b"").as_ref())
}

fn to_hash(bytes: &[u8]) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(bytes);
    out
}

/// Lowercase hex, as hashes appear in JSON.
pub fn to_hex(hash: &Hash) -> String {
    hex::encode(hash)
}

/// The largest power of two strictly below `n` (for `n >= 2`).
fn split(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("tree size or index out of range")]
    Range,
    #[error("a stored subtree hash is missing: level {0}, index {1}")]
    Missing(u32, u64),
    #[error("storage failed: {0}")]
    Storage(String),
}

/// Complete-subtree hashes by `(level, index)`.
pub trait NodeSource {
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, TreeError>;
}

/// The complete-subtree hashes that become final when leaf `index` (0-based) is appended
/// with hash `leaf`: `(level, index, hash)`, level 0 first. `sibling(level, index)` reads
/// the already stored left siblings.
pub fn nodes_completed_by(
    index: u64,
    leaf: Hash,
    mut sibling: impl FnMut(u32, u64) -> Result<Hash, TreeError>,
) -> Result<Vec<(u32, u64, Hash)>, TreeError> {
    let mut out = vec![(0, index, leaf)];
    let (mut level, mut i, mut hash) = (0u32, index, leaf);
    while i % 2 == 1 {
        let left = sibling(level, i - 1)?;
        hash = node_hash(&left, &hash);
        level += 1;
        i /= 2;
        out.push((level, i, hash));
    }
    Ok(out)
}

/// The hash of leaves `[start, start + len)` of a tree of at least `start + len` leaves.
fn subtree(src: &mut dyn NodeSource, start: u64, len: u64) -> Result<Hash, TreeError> {
    if len == 0 {
        return Ok(empty_root());
    }
    if len.is_power_of_two() && start.is_multiple_of(len) {
        return src.node(len.trailing_zeros(), start / len);
    }
    let k = split(len);
    let left = subtree(src, start, k)?;
    let right = subtree(src, start + k, len - k)?;
    Ok(node_hash(&left, &right))
}

/// The tree head (root hash) of the first `size` leaves.
pub fn root(src: &mut dyn NodeSource, size: u64) -> Result<Hash, TreeError> {
    subtree(src, 0, size)
}

/// RFC 9162 §2.1.3.1 inclusion proof of leaf `index` in the tree of `size` leaves.
pub fn inclusion_proof(src: &mut dyn NodeSource, index: u64, size: u64) -> Result<Vec<Hash>, TreeError> {
    if index >= size {
        return Err(TreeError::Range);
    }
    fn path(src: &mut dyn NodeSource, m: u64, start: u64, n: u64, out: &mut Vec<Hash>) -> Result<(), TreeError> {
        if n <= 1 {
            return Ok(());
        }
        let k = split(n);
        if m < k {
            path(src, m, start, k, out)?;
            out.push(subtree(src, start + k, n - k)?);
        } else {
            path(src, m - k, start + k, n - k, out)?;
            out.push(subtree(src, start, k)?);
        }
        Ok(())
    }
    let mut out = Vec::new();
    path(src, index, 0, size, &mut out)?;
    Ok(out)
}

/// RFC 9162 §2.1.4.1 consistency proof between the trees of `first` and `second` leaves.
pub fn consistency_proof(src: &mut dyn NodeSource, first: u64, second: u64) -> Result<Vec<Hash>, TreeError> {
    if first > second {
        return Err(TreeError::Range);
    }
    if first == 0 || first == second {
        return Ok(Vec::new());
    }
    fn sub(src: &mut dyn NodeSource, m: u64, start: u64, n: u64, whole: bool, out: &mut Vec<Hash>) -> Result<(), TreeError> {
        if m == n {
            if !whole {
                out.push(subtree(src, start, n)?);
            }
            return Ok(());
        }
        let k = split(n);
        if m <= k {
            sub(src, m, start, k, whole, out)?;
            out.push(subtree(src, start + k, n - k)?);
        } else {
            sub(src, m - k, start + k, n - k, false, out)?;
            out.push(subtree(src, start, k)?);
        }
        Ok(())
    }
    let mut out = Vec::new();
    sub(src, first, 0, second, true, &mut out)?;
    Ok(out)
}

/// RFC 9162 §2.1.3.2: checks that `leaf` is entry `index` of the tree of `size` leaves
/// whose head is `root`, given its audit path. For verifying exports offline.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, path: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnn, mut sn, mut r) = (index, size - 1, *leaf);
    for p in path {
        if sn == 0 {
            return false;
        }
        if fnn & 1 == 1 || fnn == sn {
            r = node_hash(p, &r);
            while fnn & 1 == 0 && fnn != 0 {
                fnn >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnn >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// Parses a lowercase or uppercase hex SHA-256 hash.
pub fn from_hex(text: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// The right frontier of a tree being built leaf by leaf: the roots of its complete
/// subtrees, largest first (O(log n) hashes), enough for the root at every size.
#[derive(Debug, Default, Clone)]
pub struct Frontier {
    nodes: Vec<(u32, Hash)>,
    size: u64,
}

impl Frontier {
    /// Appends a leaf hash, merging equal-sized subtrees; `completed` sees every subtree
    /// the leaf completes as `(level, index, hash)`, the leaf itself first.
    pub fn push(&mut self, leaf: Hash, mut completed: impl FnMut(u32, u64, Hash)) {
        let (mut level, mut h, mut index) = (0u32, leaf, self.size);
        completed(level, index, h);
        while let Some((l, left)) = self.nodes.last().copied()
            && l == level
        {
            self.nodes.pop();
            h = node_hash(&left, &h);
            level += 1;
            index /= 2;
            completed(level, index, h);
        }
        self.nodes.push((level, h));
        self.size += 1;
    }

    /// The root of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        let mut iter = self.nodes.iter().rev();
        let Some((_, last)) = iter.next() else { return empty_root() };
        iter.fold(*last, |right, (_, left)| node_hash(left, &right))
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Complete-subtree hashes held in memory, built by appending leaves.
#[derive(Debug, Default, Clone)]
pub struct MemoryTree {
    nodes: std::collections::HashMap<(u32, u64), Hash>,
    size: u64,
}

impl MemoryTree {
    pub fn push(&mut self, leaf: &[u8]) {
        let nodes = &self.nodes;
        let completed = nodes_completed_by(self.size, leaf_hash(leaf), |l, i| nodes.get(&(l, i)).copied().ok_or(TreeError::Missing(l, i)));
        for (l, i, h) in completed.unwrap_or_default() {
            self.nodes.insert((l, i), h);
        }
        self.size += 1;
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

impl NodeSource for MemoryTree {
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, TreeError> {
        self.nodes.get(&(level, index)).copied().ok_or(TreeError::Missing(level, index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frontier_gives_the_rfc6962_root_and_the_subtrees_it_completes() {
        let mut tree = MemoryTree::default();
        let mut frontier = Frontier::default();
        assert_eq!(frontier.root(), empty_root());
        for i in 0..37u64 {
            let leaf = format!("leaf {i}");
            tree.push(leaf.as_bytes());
            frontier.push(leaf_hash(leaf.as_bytes()), |level, index, hash| {
                assert_eq!(tree.node(level, index).unwrap(), hash, "subtree ({level}, {index}) after leaf {i}");
            });
            assert_eq!(frontier.root(), root(&mut tree, i + 1).unwrap());
            assert_eq!(frontier.size(), i + 1);
        }
    }

    /// RFC 6962 MTH straight from the definition, over all leaves: the reference.
    fn mth(leaves: &[Vec<u8>]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn leaves(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("entry-{i}").into_bytes()).collect()
    }

    #[test]
    fn roots_from_stored_subtrees_match_the_definition() {
        let all = leaves(70);
        let mut tree = MemoryTree::default();
        assert_eq!(root(&mut tree, 0).unwrap(), empty_root());
        for (i, leaf) in all.iter().enumerate() {
            tree.push(leaf);
            assert_eq!(root(&mut tree, i as u64 + 1).unwrap(), mth(&all[..=i]), "size {}", i + 1);
        }
        // Older heads stay answerable from the same nodes.
        for n in 0..=70 {
            assert_eq!(root(&mut tree, n as u64).unwrap(), mth(&all[..n]));
        }
    }

    /// RFC 9162 §2.1.4.2, verbatim: verifying a consistency proof.
    fn verify_consistency(first: u64, second: u64, first_hash: Hash, second_hash: Hash, proof: &[Hash]) -> bool {
        if first == second {
            return proof.is_empty() && first_hash == second_hash;
        }
        if first == 0 || first > second || proof.is_empty() {
            return false;
        }
        let mut proof = proof.to_vec();
        if first.is_power_of_two() {
            proof.insert(0, first_hash);
        }
        let (mut fnn, mut sn) = (first - 1, second - 1);
        while fnn & 1 == 1 {
            fnn >>= 1;
            sn >>= 1;
        }
        let (mut fr, mut sr) = (proof[0], proof[0]);
        for c in &proof[1..] {
            if sn == 0 {
                return false;
            }
            if fnn & 1 == 1 || fnn == sn {
                fr = node_hash(c, &fr);
                sr = node_hash(c, &sr);
                while fnn & 1 == 0 && fnn != 0 {
                    fnn >>= 1;
                    sn >>= 1;
                }
            } else {
                sr = node_hash(&sr, c);
            }
            fnn >>= 1;
            sn >>= 1;
        }
        sn == 0 && fr == first_hash && sr == second_hash
    }

    #[test]
    fn every_inclusion_proof_verifies_by_rfc_9162() {
        let all = leaves(40);
        let mut tree = MemoryTree::default();
        all.iter().for_each(|l| tree.push(l));
        for n in 1..=40u64 {
            let head = mth(&all[..n as usize]);
            for m in 0..n {
                let proof = inclusion_proof(&mut tree, m, n).unwrap();
                assert!(verify_inclusion(m, n, &leaf_hash(&all[m as usize]), &proof, &head), "leaf {m} of {n}");
                assert!(!verify_inclusion(m, n, &leaf_hash(b"forged"), &proof, &head));
                if let Some(first) = proof.first() {
                    let mut bad = proof.clone();
                    bad[0] = node_hash(first, first);
                    assert!(!verify_inclusion(m, n, &leaf_hash(&all[m as usize]), &bad, &head));
                }
            }
        }
        assert_eq!(inclusion_proof(&mut tree, 5, 5), Err(TreeError::Range));
    }

    #[test]
    fn every_consistency_proof_verifies_by_rfc_9162() {
        let all = leaves(40);
        let mut tree = MemoryTree::default();
        all.iter().for_each(|l| tree.push(l));
        for n in 1..=40u64 {
            for m in 1..=n {
                let proof = consistency_proof(&mut tree, m, n).unwrap();
                let (old, new) = (mth(&all[..m as usize]), mth(&all[..n as usize]));
                assert!(verify_consistency(m, n, old, new, &proof), "{m} -> {n}");
                if m < n {
                    assert!(!verify_consistency(m, n, leaf_hash(b"rewritten history"), new, &proof), "{m} -> {n}");
                }
            }
        }
        assert_eq!(consistency_proof(&mut tree, 6, 5), Err(TreeError::Range));
    }

    #[test]
    fn known_answer_for_empty_and_single_leaf_trees() {
        assert_eq!(to_hex(&empty_root()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        // SHA-256(0x00) — the RFC 6962 hash of a tree holding one empty leaf.
        assert_eq!(to_hex(&leaf_hash(b"")), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
    }
}
