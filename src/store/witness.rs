//! The store against its signed tree heads: publishing a head over the rows written since the
//! last one, verifying the rows against every head of a heads file, and the proofs a reviewer
//! checks with a published head alone.

use std::ops::Range;
use std::path::Path;

use serde::Serialize;

use crate::audit::{AuditRow, ChainVerifier, Checkpoint, GENESIS_HASH};
use crate::error::{Error, Result};
use crate::heads::{
    CutShortLines, HeadKey, HeadLines, HeadVerifier, HeadsFile, HexHash, SignedHead, newest_head,
    same_key,
};
use crate::merkle::{self, Frontier, Hash};

use super::Store;

/// Links read per page when a publisher extends a head.
const LINK_PAGE: i64 = 5_000;

/// What `audit verify --heads` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadsVerified {
    /// Rows in the store, all verified (or, from the newest head, those after it).
    pub rows: i64,
    /// The first row re-hashed: 1, or from the newest head the row after it, or the
    /// checkpoint's row when that comes before.
    pub read_from: i64,
    /// The hash of the last row.
    pub head: String,
    /// Heads checked: signature, peaks, and the store's rows against them.
    pub heads: usize,
    /// The newest head and its line in the heads file.
    pub newest: Option<(usize, SignedHead)>,
    /// The lines of the heads file that were not heads: cut short (a publisher stopped while
    /// writing them), or the last one unfinished.
    pub cut_short: CutShortLines,
}

/// An inclusion proof of one row, or a consistency proof between two sizes, in the tree of
/// `size` rows with root `root`; with the signed head of that size when one was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Proof {
    pub kind: &'static str,
    /// Inclusion: the row proved and its hash (the leaf's data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaf: Option<HexHash>,
    /// Consistency: the earlier tree's size and root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_root: Option<HexHash>,
    pub size: u64,
    pub root: HexHash,
    pub proof: Vec<HexHash>,
    pub head: Option<SignedHead>,
}

/// The leaf of an audit row: its 32-byte hash. A row whose hash is not 64 hex digits is
/// caught by the chain walk before it is a leaf.
fn leaf_of(row: &AuditRow) -> Result<Hash> {
    HexHash::parse(&row.hash)
        .map(|hash| merkle::leaf_hash(&hash.0))
        .ok_or_else(|| Error::UnreadableAuditRow {
            id: row.id,
            why: format!("hash {:?} is not 64 hex digits", row.hash),
        })
}

impl Store {
    /// Signs and appends to the heads file at `heads` a head over every row, if rows were
    /// written since its newest head. Reads only those rows: each must continue the chain
    /// from the newest head's last row, so a store whose signed rows were rewritten is never
    /// signed again. Returns the head published.
    pub fn publish_head(&self, key: &HeadKey, heads: &Path) -> Result<Option<SignedHead>> {
        let mut file = HeadsFile::open(heads)?;
        let newest = file.newest()?;
        let start = match &newest {
            None => Start::genesis(),
            Some(head) => {
                let verifier = key.public();
                same_key(heads, head, &verifier)?;
                self.start_at(heads, head, &verifier)?
            }
        };
        let (frontier, last) = self
            .extend_by_links(start)
            .map_err(|e| beyond_head(heads, newest.as_ref(), e))?;
        if newest
            .as_ref()
            .is_some_and(|head| head.size >= frontier.size())
            || frontier.size() == 0
        {
            return Ok(None);
        }
        let head = key.sign(&frontier, last.0, self.now());
        file.append(&head)?;
        Ok(Some(head))
    }

    /// The tree of `start` grown by every row after it, and the last row's hash, read from
    /// the chain's links alone: each row must follow the one before (its id next, its
    /// `prev_hash` that row's hash). Rows' contents are not re-hashed: whoever can write rows
    /// can write them with matching hashes, so what keeps a signer from vouching for a
    /// rewrite is the link to what it signed before; a row whose hash does not match its
    /// contents is signed as it stands, and named by every verifier.
    fn extend_by_links(&self, start: Start) -> Result<(Frontier, HexHash)> {
        let mut frontier = start.frontier;
        let mut rows = start.verifier.rows();
        let mut last = start.verifier.head().to_string();
        loop {
            let links = self.read_transaction()?.audit_links(rows, LINK_PAGE)?;
            if links.is_empty() {
                break;
            }
            for (id, prev_hash, hash) in links {
                let broken = |why: String| Error::AuditChain { id, why };
                if id != rows + 1 {
                    return Err(broken(format!("expected row {} next", rows + 1)));
                }
                if prev_hash != last {
                    return Err(broken(format!(
                        "prev_hash {prev_hash} does not match the previous row's hash {last} \
                         (broken link)"
                    )));
                }
                let leaf = HexHash::parse(&hash)
                    .ok_or_else(|| broken(format!("hash {hash:?} is not 64 hex digits")))?;
                frontier.push(merkle::leaf_hash(&leaf.0));
                rows = id;
                last = hash;
            }
        }
        let last =
            HexHash::parse(&last).expect("a head's, the genesis and every read hash are hex");
        Ok((frontier, last))
    }

    /// Verifies the whole audit log and holds it to every head of the heads file at `heads`:
    /// each signed by `verifier`'s key, larger than the one before, and with the root the
    /// store's first rows give; and, in the same walk, that the log still contains
    /// `checkpoint`. `from_newest` checks only the newest head and the rows after it,
    /// trusting the head for the rows it covers.
    pub fn verify_heads(
        &self,
        verifier: &HeadVerifier,
        heads: &Path,
        from_newest: bool,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<HeadsVerified> {
        if from_newest {
            return self.verify_after_newest(verifier, heads, checkpoint);
        }
        let mut lines = HeadLines::open(heads)?;
        let mut walk = HeadWalk::new(heads, verifier);
        walk.next_head(&mut lines)?;
        let verified = self.verify_audit_visiting(checkpoint, |row| {
            walk.frontier.push(leaf_of(row)?);
            while walk
                .pending
                .as_ref()
                .is_some_and(|(_, head)| head.size == walk.frontier.size())
            {
                walk.hold_to_pending()?;
                walk.next_head(&mut lines)?;
            }
            Ok(())
        })?;
        if let Some((line, head)) = &walk.pending {
            return Err(walk.mismatch(
                *line,
                format!(
                    "the head signed {} covers rows 1..={}, but the store has {} rows: {} removed",
                    head.time,
                    head.size,
                    verified.rows,
                    rows_were(verified.rows as u64 + 1, head.size)
                ),
            ));
        }
        Ok(HeadsVerified {
            rows: verified.rows,
            read_from: 1,
            head: verified.head,
            heads: walk.checked,
            newest: walk.newest,
            cut_short: lines.cut_short().clone(),
        })
    }

    /// The rows after the newest head, linked to its last row. A checkpoint of a row the head
    /// covers is held by re-hashing from that row on: the rows from it to the head's last
    /// link its hash to the signed one. A bare hash (`--expect-head`) is found only by
    /// walking from row 1.
    fn verify_after_newest(
        &self,
        verifier: &HeadVerifier,
        heads: &Path,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<HeadsVerified> {
        let newest = newest_head(heads)?.ok_or_else(|| Error::BadHeads {
            path: heads.display().to_string(),
            at: "end".into(),
            why: "no head to start from".into(),
        })?;
        let start = self.start_at(heads, &newest, verifier)?;
        let signed = start.verifier.rows();
        let chain = match checkpoint.map(|checkpoint| checkpoint.id) {
            None => start.verifier,
            Some(Some(row)) if row > signed => start.verifier,
            Some(None) => ChainVerifier::default(),
            Some(Some(row)) => {
                let before = match row - 1 {
                    0 => Some(GENESIS_HASH.to_string()),
                    before => self.read_transaction()?.audit_hash(before)?,
                };
                // Row 1 and up are stored gaplessly, so the row before one the head covers
                // is there unless rows were removed, which the walk from row 1 names.
                before.map_or_else(ChainVerifier::default, |hash| {
                    ChainVerifier::resume(row - 1, hash)
                })
            }
        };
        let read_from = chain.rows() + 1;
        let verified = self
            .verify_chain_from(chain, checkpoint, |_| Ok(()))
            .map_err(|e| beyond_head(heads, Some(&newest), e))?;
        Ok(HeadsVerified {
            rows: verified.rows,
            read_from,
            head: verified.head,
            heads: 1,
            newest: Some((0, newest)),
            cut_short: CutShortLines::default(),
        })
    }

    /// The inclusion proof of row `row` in the tree of the first `size` rows (every row
    /// when `None`), from a walk that verifies the chain, in memory logarithmic in the rows.
    pub fn inclusion_proof(&self, row: i64, size: Option<u64>) -> Result<Proof> {
        let size = self.tree_size(size)?;
        let ranges = u64::try_from(row - 1)
            .ok()
            .and_then(|index| merkle::inclusion_ranges(index, size))
            .ok_or_else(|| Error::OutOfRange {
                what: "row",
                value: row.to_string(),
                range: format!("the tree's rows 1..={size}"),
            })?;
        let (root, proof) = self.roots(size, ranges)?;
        let hash = self.read_transaction()?.audit_hash(row)?;
        Ok(Proof {
            kind: "inclusion",
            row: Some(row),
            leaf: hash.as_deref().and_then(HexHash::parse),
            old_size: None,
            old_root: None,
            size,
            root,
            proof,
            head: None,
        })
    }

    /// The consistency proof from the tree of the first `old_size` rows to that of the first
    /// `size` (every row when `None`).
    pub fn consistency_proof(&self, old_size: u64, size: Option<u64>) -> Result<Proof> {
        let size = self.tree_size(size)?;
        let mut ranges =
            merkle::consistency_ranges(old_size, size).ok_or_else(|| Error::OutOfRange {
                what: "size",
                value: old_size.to_string(),
                range: format!("0..={size} (the later tree's size)"),
            })?;
        ranges.push(0..old_size);
        let (root, mut proof) = self.roots(size, ranges)?;
        let old_root = proof.pop();
        Ok(Proof {
            kind: "consistency",
            row: None,
            leaf: None,
            old_size: Some(old_size),
            old_root,
            size,
            root,
            proof,
            head: None,
        })
    }

    /// `size`, if the store holds that many rows; else every row's.
    fn tree_size(&self, size: Option<u64>) -> Result<u64> {
        let rows = u64::try_from(self.last_audit_id()?).unwrap_or(0);
        match size {
            None => Ok(rows),
            Some(size) if size <= rows => Ok(size),
            Some(size) => Err(Error::OutOfRange {
                what: "tree size",
                value: size.to_string(),
                range: format!("1..={rows} (the rows the store holds)"),
            }),
        }
    }

    /// The root of the tree of the first `size` rows and the roots of `ranges` of its
    /// leaves, from one walk that verifies the whole chain, keeping only a frontier per range.
    fn roots(&self, size: u64, ranges: Vec<Range<u64>>) -> Result<(HexHash, Vec<HexHash>)> {
        let mut growing: Vec<(Range<u64>, Frontier)> = std::iter::once(0..size)
            .chain(ranges)
            .map(|range| (range, Frontier::default()))
            .collect();
        self.verify_audit_visiting(None, |row| {
            let index = u64::try_from(row.id - 1).unwrap_or(u64::MAX);
            if index < size {
                let leaf = leaf_of(row)?;
                for (_, frontier) in growing.iter_mut().filter(|(r, _)| r.contains(&index)) {
                    frontier.push(leaf);
                }
            }
            Ok(())
        })?;
        let mut roots = growing
            .into_iter()
            .map(|(_, frontier)| HexHash(frontier.root()));
        let root = roots.next().expect("the whole tree's range comes first");
        Ok((root, roots.collect()))
    }

    /// Where a walk of the rows after `head` begins, once its signature holds and the store
    /// still has its last row as signed: without that row the walk would find no rows after
    /// the head, and take a store cut short for one with nothing new.
    fn start_at(&self, heads: &Path, head: &SignedHead, verifier: &HeadVerifier) -> Result<Start> {
        let mismatch = |why: String| Error::HeadMismatch {
            path: heads.display().to_string(),
            at: "newest head".into(),
            why,
        };
        let start = Start::at(head, verifier).map_err(mismatch)?;
        let last_row = start.verifier.rows();
        match self.read_transaction()?.audit_hash(last_row)? {
            Some(hash) if hash == head.last.to_string() => Ok(start),
            found => Err(mismatch(format!(
                "the head signed {} covers rows 1..={last_row} ending in {}; the store's row \
                 {last_row} {}: rows the head covers were rewritten or removed (see `flagstore \
                 audit verify --heads`)",
                head.time,
                head.last,
                found.map_or("is missing".to_string(), |hash| format!("has hash {hash}"))
            ))),
        }
    }
}

/// Where a walk of the rows after a head begins: the head's tree, and a chain verifier that
/// takes its rows as verified.
struct Start {
    frontier: Frontier,
    verifier: ChainVerifier,
}

impl Start {
    fn genesis() -> Start {
        Start {
            frontier: Frontier::default(),
            verifier: ChainVerifier::default(),
        }
    }

    fn at(head: &SignedHead, verifier: &HeadVerifier) -> std::result::Result<Start, String> {
        let frontier = verifier.check(head)?;
        let rows = i64::try_from(head.size).map_err(|_| "its size is not a row count")?;
        Ok(Start {
            frontier,
            verifier: ChainVerifier::resume(rows, head.last.to_string()),
        })
    }
}

/// A chain error met after a head, said as what it means for the head: the rows it signed
/// were rewritten (the next row no longer links to its last) or cut. An error in the rows the
/// head covers (a walk from a checkpoint) names its row as any walk does.
fn beyond_head(heads: &Path, head: Option<&SignedHead>, error: Error) -> Error {
    match (head, error) {
        (Some(head), Error::AuditChain { id, why })
            if u64::try_from(id).is_ok_and(|id| id > head.size) =>
        {
            Error::HeadMismatch {
                path: heads.display().to_string(),
                at: "newest head".into(),
                why: format!(
                    "the head signed {} covers rows 1..={} ending in {}; row {id} does not \
                     continue it: {why}. Rows the head covers were rewritten or removed: see \
                     `flagstore audit verify --heads`",
                    head.time, head.size, head.last
                ),
            }
        }
        (_, error) => error,
    }
}

/// The heads of a file met one by one as a walk of the rows reaches their sizes.
struct HeadWalk<'a> {
    path: &'a Path,
    verifier: &'a HeadVerifier,
    frontier: Frontier,
    /// The next head to hold the rows to, once the walk reaches its size.
    pending: Option<(usize, SignedHead)>,
    newest: Option<(usize, SignedHead)>,
    checked: usize,
}

impl<'a> HeadWalk<'a> {
    fn new(path: &'a Path, verifier: &'a HeadVerifier) -> HeadWalk<'a> {
        HeadWalk {
            path,
            verifier,
            frontier: Frontier::default(),
            pending: None,
            newest: None,
            checked: 0,
        }
    }

    fn mismatch(&self, line: usize, why: String) -> Error {
        Error::HeadMismatch {
            path: self.path.display().to_string(),
            at: format!("line {line}"),
            why,
        }
    }

    /// Reads the next head, checking its signature and that it is larger than the last.
    fn next_head(&mut self, lines: &mut HeadLines) -> Result<()> {
        self.pending = lines.next().transpose()?;
        if let Some((line, head)) = &self.pending {
            self.verifier
                .check(head)
                .map_err(|why| self.mismatch(*line, why))?;
            if let Some((_, before)) = &self.newest
                && head.size <= before.size
            {
                return Err(self.mismatch(
                    *line,
                    format!(
                        "its size {} is not above the head before it ({}): heads never move \
                         backwards",
                        head.size, before.size
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Holds the rows walked so far to the pending head, whose size they have reached.
    fn hold_to_pending(&mut self) -> Result<()> {
        let (line, head) = self.pending.take().expect("a pending head");
        // The root covers every row, the last too: `head.last` needs no comparing of its own.
        if head.root.0 != self.frontier.root() {
            let (first, last) = self.first_difference(&head);
            let rows = if first == last {
                format!("row {first} differs")
            } else {
                format!("rows {first}..={last} hold the first row that differs")
            };
            return Err(self.mismatch(
                line,
                format!(
                    "the store's rows 1..={} do not give the root signed {}: {rows} from what was \
                     signed (changed, removed, inserted or renumbered since)",
                    head.size, head.time
                ),
            ));
        }
        self.checked += 1;
        self.newest = Some((line, head));
        Ok(())
    }

    /// The narrowest range of rows (1-based, inclusive) sure to hold the first row that
    /// differs from what `head` signed: after the last head that held, and within the first
    /// of its perfect subtrees whose root is not the store's.
    fn first_difference(&self, head: &SignedHead) -> (u64, u64) {
        let held = self.newest.as_ref().map_or(0, |(_, head)| head.size);
        let mut start = 0;
        for (bit, (signed, stored)) in (0..u64::BITS)
            .rev()
            .filter(|bit| head.size >> bit & 1 == 1)
            .zip(head.peaks.iter().zip(self.frontier.peaks()))
        {
            let end = start + (1u64 << bit);
            if signed.0 != *stored {
                return (held.max(start) + 1, end);
            }
            start = end;
        }
        (held + 1, head.size)
    }
}

/// "row N was" or "rows N..=M were".
fn rows_were(first: u64, last: u64) -> String {
    if first == last {
        format!("row {first} was")
    } else {
        format!("rows {first}..={last} were")
    }
}
