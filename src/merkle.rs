//! The Merkle tree of RFC 9162 (Certificate Transparency 2.0, section 2.1) over the audit log:
//! leaf `i` is the hash of audit row `i + 1`, so a signed tree head of size `n` commits to rows
//! 1..=n, an inclusion proof shows one row is among them, and a consistency proof shows a
//! later head extends an earlier one. Pure: no store, no clock, no key.
//!
//! Hashing, as the RFC gives it (SHA-256):
//!
//! ```text
//! leaf hash:  SHA-256(0x00 || leaf data)        leaf data = the row's 32-byte hash
//! node hash:  SHA-256(0x01 || left || right)
//! root of n leaves: the leaf hash for n = 1; for n > 1, with k the largest power of two
//!     below n, the node hash of the root of the first k leaves and the root of the rest
//! ```

use std::ops::Range;

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, a node hash or a root.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(data);
    hasher.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The tree as it grows, in logarithmic space: the roots of its perfect subtrees, largest
/// (leftmost) first; one per bit set in the size. Enough to add leaves and compute the root,
/// so a writer extends a signed head by the rows after it without reading the ones before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    peaks: Vec<Hash>,
}

impl Frontier {
    /// A frontier given as a tree head lists it, if `peaks` has one root per bit of `size`.
    pub fn from_peaks(size: u64, peaks: Vec<Hash>) -> Option<Frontier> {
        (peaks.len() == size.count_ones() as usize).then_some(Frontier { size, peaks })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn peaks(&self) -> &[Hash] {
        &self.peaks
    }

    /// Adds the leaf whose leaf hash is `leaf`.
    pub fn push(&mut self, leaf: Hash) {
        let mut merged = leaf;
        // Each low bit set in the old size is a subtree of the new leaf's height, now complete.
        let mut size = self.size;
        while size & 1 == 1 {
            let left = self.peaks.pop().expect("a peak for every bit set");
            merged = node_hash(&left, &merged);
            size >>= 1;
        }
        self.peaks.push(merged);
        self.size += 1;
    }

    /// The root: each peak joined with the root of everything to its right.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        match peaks.next() {
            None => empty_root(),
            Some(last) => peaks.fold(*last, |right, left| node_hash(left, &right)),
        }
    }
}

/// The largest power of two below `n` (n > 1): where RFC 9162 splits a tree of n leaves.
fn split(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (u64::BITS - 1 - (n - 1).leading_zeros())
}

/// The leaves (a range of their indexes) of each subtree whose root is a hash of the inclusion
/// proof of leaf `index` in a tree of `size` leaves (RFC 9162 2.1.3.1), in the proof's order;
/// `None` when the tree has no such leaf. The proof is their roots, which a caller streaming
/// the leaves computes in logarithmic memory.
pub fn inclusion_ranges(index: u64, size: u64) -> Option<Vec<Range<u64>>> {
    fn path(index: u64, leaves: Range<u64>, proof: &mut Vec<Range<u64>>) {
        if leaves.end - leaves.start <= 1 {
            return;
        }
        let middle = leaves.start + split(leaves.end - leaves.start);
        if leaves.start + index < middle {
            path(index, leaves.start..middle, proof);
            proof.push(middle..leaves.end);
        } else {
            path(leaves.start + index - middle, middle..leaves.end, proof);
            proof.push(leaves.start..middle);
        }
    }
    (index < size).then(|| {
        let mut proof = Vec::new();
        path(index, 0..size, &mut proof);
        proof
    })
}

/// The subtrees, as [`inclusion_ranges`] gives them, of the consistency proof from the tree
/// of the first `old_size` leaves to the tree of `size` (RFC 9162 2.1.4.1); `None` when
/// `old_size` is larger. None when either tree is empty or they are the same tree: nothing
/// needs proving.
pub fn consistency_ranges(old_size: u64, size: u64) -> Option<Vec<Range<u64>>> {
    fn subproof(m: u64, leaves: Range<u64>, complete: bool, proof: &mut Vec<Range<u64>>) {
        let n = leaves.end - leaves.start;
        if m == n {
            if !complete {
                proof.push(leaves);
            }
            return;
        }
        let middle = leaves.start + split(n);
        if leaves.start + m <= middle {
            subproof(m, leaves.start..middle, complete, proof);
            proof.push(middle..leaves.end);
        } else {
            subproof(leaves.start + m - middle, middle..leaves.end, false, proof);
            proof.push(leaves.start..middle);
        }
    }
    (old_size <= size).then(|| {
        let mut proof = Vec::new();
        if old_size > 0 {
            subproof(old_size, 0..size, true, &mut proof);
        }
        proof
    })
}

/// Whether `proof` shows the leaf with hash `leaf` at `index` in the tree of `size` leaves
/// whose root is `root` (RFC 9162 2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let mut r = *leaf;
    let climbed = climb(index, size - 1, proof, |sibling, side| {
        r = match side {
            Side::Left => node_hash(sibling, &r),
            Side::Right => node_hash(&r, sibling),
        }
    });
    climbed && r == *root
}

/// Where a proof's hash stands beside the node reached so far.
enum Side {
    Left,
    Right,
}

/// RFC 9162's walk up a proof path from the node at index `f` of a level whose last index is
/// `s`, handing `join` each hash and its side. Whether the path ends at the root, exactly.
fn climb(mut f: u64, mut s: u64, path: &[Hash], mut join: impl FnMut(&Hash, Side)) -> bool {
    for sibling in path {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            join(sibling, Side::Left);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            join(sibling, Side::Right);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0
}

/// Whether `proof` shows that the tree of `new_size` leaves with root `new_root` extends the
/// tree of `old_size` leaves with root `old_root` (RFC 9162 2.1.4.2).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        return proof.is_empty();
    }
    let Some((first, rest)) = proof.split_first() else {
        return false;
    };
    // A first tree that is a perfect subtree of the second is its own starting node; the
    // proof leaves it out.
    let (start, path) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        (first, rest)
    };
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*start, *start);
    // The earlier tree's root is built from the left siblings only: the right ones are newer.
    let climbed = climb(f, s, path, |sibling, side| match side {
        Side::Left => {
            fr = node_hash(sibling, &fr);
            sr = node_hash(sibling, &sr);
        }
        Side::Right => sr = node_hash(&sr, sibling),
    });
    climbed && fr == *old_root && sr == *new_root
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The root of the tree whose leaf hashes are `leaves`, as RFC 9162 defines it: the
    /// reference the frontier and the proofs are held to.
    fn root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
            }
        }
    }

    /// The roots of `ranges` of `leaves`: a proof from the subtrees that make it, as the
    /// store computes it streaming.
    fn roots_of(leaves: &[Hash], ranges: Vec<Range<u64>>) -> Vec<Hash> {
        ranges
            .into_iter()
            .map(|range| root(&leaves[range.start as usize..range.end as usize]))
            .collect()
    }

    /// The inclusion proof of leaf `index` in the tree of `leaves` (RFC 9162 2.1.3.1), or `None`
    /// when the tree has no such leaf.
    fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
        let ranges = inclusion_ranges(index as u64, leaves.len() as u64)?;
        Some(roots_of(leaves, ranges))
    }

    /// The consistency proof from the tree of the first `old_size` of `leaves` to the tree of
    /// all of them (RFC 9162 2.1.4.1), or `None` when `old_size` is larger than the tree.
    fn consistency_proof(leaves: &[Hash], old_size: usize) -> Option<Vec<Hash>> {
        let ranges = consistency_ranges(old_size as u64, leaves.len() as u64)?;
        Some(roots_of(leaves, ranges))
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn h(text: &str) -> Hash {
        unhex(text).try_into().unwrap()
    }

    // The test data published with RFC 6962's reference implementation (Certificate
    // Transparency's, now transparency-dev/merkle proof/verify_test.go): eight leaves, the
    // roots of their first 1..=8, and proofs among them.
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    /// (leaf index, tree size, proof): the published vectors count leaves from 1.
    const INCLUSION: [(usize, usize, &[&str]); 4] = [
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    /// (old size, new size, proof).
    const CONSISTENCY: [(usize, usize, &[&str]); 4] = [
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn published_leaves() -> Vec<Hash> {
        LEAVES.iter().map(|data| leaf_hash(&unhex(data))).collect()
    }

    fn proof(hashes: &[&str]) -> Vec<Hash> {
        hashes.iter().map(|hash| h(hash)).collect()
    }

    #[test]
    fn roots_match_the_published_ones_computed_whole_and_leaf_by_leaf() {
        let leaves = published_leaves();
        assert_eq!(
            root(&[]),
            h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert_eq!(Frontier::default().root(), root(&[]));
        let mut frontier = Frontier::default();
        for (size, expected) in (1..=8).zip(ROOTS) {
            frontier.push(leaves[size - 1]);
            assert_eq!(root(&leaves[..size]), h(expected), "size {size}");
            assert_eq!(frontier.root(), h(expected), "frontier of size {size}");
            assert_eq!(frontier.peaks().len(), size.count_ones() as usize);
        }
    }

    #[test]
    fn inclusion_proofs_match_the_published_ones_and_verify() {
        let leaves = published_leaves();
        for (index, size, expected) in INCLUSION {
            let made = inclusion_proof(&leaves[..size], index).unwrap();
            assert_eq!(made, proof(expected), "leaf {index} of {size}");
            let root = h(ROOTS[size - 1]);
            assert!(verify_inclusion(
                index as u64,
                size as u64,
                &leaves[index],
                &made,
                &root
            ));
        }
        assert_eq!(inclusion_proof(&leaves[..1], 0), Some(Vec::new()));
        assert_eq!(inclusion_proof(&leaves[..3], 3), None);
    }

    #[test]
    fn consistency_proofs_match_the_published_ones_and_verify() {
        let leaves = published_leaves();
        for (old, new, expected) in CONSISTENCY {
            let made = consistency_proof(&leaves[..new], old).unwrap();
            assert_eq!(made, proof(expected), "{old} -> {new}");
            let (old_root, new_root) = (h(ROOTS[old - 1]), h(ROOTS[new - 1]));
            assert!(verify_consistency(
                old as u64, new as u64, &old_root, &new_root, &made
            ));
            assert!(!verify_consistency(
                old as u64, new as u64, &new_root, &old_root, &made
            ));
        }
        assert_eq!(consistency_proof(&leaves[..4], 5), None);
    }

    #[test]
    fn trivial_consistency_needs_an_empty_proof() {
        let (a, b) = (h(ROOTS[0]), h(ROOTS[1]));
        assert!(verify_consistency(0, 0, &a, &a, &[]));
        assert!(verify_consistency(0, 5, &a, &b, &[]));
        assert!(verify_consistency(3, 3, &b, &b, &[]));
        assert!(!verify_consistency(3, 3, &a, &b, &[]));
        assert!(!verify_consistency(3, 3, &a, &a, &[b]));
        assert!(!verify_consistency(0, 1, &a, &a, &[b]));
        assert!(!verify_consistency(2, 1, &a, &b, &[]));
        assert!(!verify_consistency(1, 2, &a, &b, &[]));
    }

    fn leaves_of(count: usize) -> Vec<Hash> {
        (0..count as u64)
            .map(|i| leaf_hash(&i.to_be_bytes()))
            .collect()
    }

    proptest! {
        /// Every proof made verifies, and changing the index, the height, the leaf, the root
        /// or any bit of the proof makes it fail.
        #[test]
        fn inclusion_proofs_verify_and_nothing_else_does(
            size in 1usize..70, index_seed in any::<usize>(), bit in 0usize..256,
        ) {
            let leaves = leaves_of(size);
            let index = index_seed % size;
            let root = root(&leaves);
            let made = inclusion_proof(&leaves, index).unwrap();
            let (i, n) = (index as u64, size as u64);
            prop_assert!(verify_inclusion(i, n, &leaves[index], &made, &root));
            prop_assert!(!verify_inclusion(i + 1, n, &leaves[index], &made, &root));
            prop_assert!(!verify_inclusion(i, n * 2, &leaves[index], &made, &root));
            prop_assert!(!verify_inclusion(i, n, &leaf_hash(b"other"), &made, &root));
            if !made.is_empty() {
                let mut flipped = made.clone();
                let at = bit % (flipped.len() * 256);
                flipped[at / 256][(at % 256) / 8] ^= 1 << (at % 8);
                prop_assert!(!verify_inclusion(i, n, &leaves[index], &flipped, &root));
                prop_assert!(!verify_inclusion(i, n, &leaves[index], &made[1..], &root));
            }
        }

        #[test]
        fn consistency_proofs_verify_and_nothing_else_does(
            new in 1usize..70, old_seed in any::<usize>(), bit in 0usize..256,
        ) {
            let leaves = leaves_of(new);
            let old = 1 + old_seed % new;
            let (old_root, new_root) = (root(&leaves[..old]), root(&leaves));
            let made = consistency_proof(&leaves, old).unwrap();
            let (m, n) = (old as u64, new as u64);
            prop_assert!(verify_consistency(m, n, &old_root, &new_root, &made));
            if old < new {
                let other = root(&leaves_of(old + 1)[1..]);
                prop_assert!(!verify_consistency(m, n, &other, &new_root, &made));
                let mut flipped = made.clone();
                let at = bit % (flipped.len() * 256);
                flipped[at / 256][(at % 256) / 8] ^= 1 << (at % 8);
                prop_assert!(!verify_consistency(m, n, &old_root, &new_root, &flipped));
            }
        }

        #[test]
        fn a_frontier_rebuilt_from_its_peaks_grows_into_the_same_tree(
            first in 0usize..70, more in 0usize..70,
        ) {
            let leaves = leaves_of(first + more);
            let mut grown = Frontier::default();
            leaves[..first].iter().for_each(|leaf| grown.push(*leaf));
            let mut resumed = Frontier::from_peaks(grown.size(), grown.peaks().to_vec()).unwrap();
            leaves[first..].iter().for_each(|leaf| resumed.push(*leaf));
            prop_assert_eq!(resumed.root(), root(&leaves));
            prop_assert!(Frontier::from_peaks(3, vec![[0; 32]]).is_none());
        }
    }
}
