//! The audit hash chain as the store extends it: every row appended through `append_audit`,
//! linked to the row before under the writer lock, so ids are gapless and the chain never forks.

use crate::audit::{Entry, GENESIS_HASH};
use crate::error::Result;

use super::{ChainedEntry, Reads, WriteTx};

/// The head of the audit chain as rows are linked to it.
pub(super) struct Chain {
    pub(super) next_id: i64,
    pub(super) prev_hash: String,
}

impl Chain {
    pub(super) fn at_tail(tx: &dyn Reads) -> Result<Chain> {
        let (last_id, prev_hash) = tx.audit_tail()?.unwrap_or((0, GENESIS_HASH.to_string()));
        Ok(Chain {
            next_id: last_id + 1,
            prev_hash,
        })
    }

    /// Takes `entry` as the next row and returns its hash.
    pub(super) fn link(&mut self, entry: &Entry) -> String {
        let hash = entry.hash(self.next_id, &self.prev_hash);
        self.next_id += 1;
        self.prev_hash.clone_from(&hash);
        hash
    }
}

/// Appends rows to the audit log, extending its hash chain from the last row, and returns the
/// id of the first. Runs inside the caller's write transaction, which holds the writer lock,
/// so no other writer can interleave rows: ids are gapless and the chain never forks.
pub(super) fn append_audit(tx: &WriteTx, entries: &[Entry]) -> Result<i64> {
    let mut chain = Chain::at_tail(tx.reads())?;
    let (first_id, prev_hash) = (chain.next_id, chain.prev_hash.clone());
    let hashes: Vec<String> = entries.iter().map(|entry| chain.link(entry)).collect();
    insert_linked(
        tx,
        first_id,
        &prev_hash,
        entries.iter().copied().zip(&hashes),
    )?;
    Ok(first_id)
}

/// Inserts audit rows already linked into the chain (see [`linked_rows`]).
fn insert_linked<'a>(
    tx: &WriteTx,
    first_id: i64,
    prev_hash: &'a str,
    entries: impl Iterator<Item = (Entry<'a>, &'a String)>,
) -> Result<()> {
    tx.append_audit(&linked_rows(first_id, prev_hash, entries))
}

/// Audit rows already linked into the chain, as stored: `first_id` and the hash it follows,
/// then each row with its hash.
pub(super) fn linked_rows<'a>(
    first_id: i64,
    prev_hash: &'a str,
    entries: impl Iterator<Item = (Entry<'a>, &'a String)>,
) -> Vec<ChainedEntry<'a>> {
    let mut prev_hash = prev_hash;
    (first_id..)
        .zip(entries)
        .map(|(id, (entry, hash))| ChainedEntry {
            id,
            entry,
            prev_hash: std::mem::replace(&mut prev_hash, hash),
            hash,
            follows_previous: true,
        })
        .collect()
}
