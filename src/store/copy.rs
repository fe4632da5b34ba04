//! Copying a whole store, row for row, between backends: flags, assignments, every audit row
//! verbatim (so the copy's chain verifies to the same head) and the audit flag index.

use std::path::Path;

use super::query::{Pages, Reader};
use super::{AssignmentRef, ChainedEntry, Location, Scope, Store};
use crate::audit::{AuditQuery, GENESIS_HASH};
use crate::error::{Error, Result};
use crate::file::PendingFile;

/// Rows written per statement while copying.
const COPY_BATCH: usize = 5_000;

/// What a copy wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyReport {
    pub flags: usize,
    pub assignments: u64,
    pub audit_rows: u64,
    /// Hash of the last audit row copied (the chain's head), if there was one.
    pub head: Option<String>,
}

impl Store {
    /// Copies this whole store into `destination`, which must hold no flags, assignments or
    /// audit rows. The source is read from one snapshot while writers carry on; the copy is
    /// written in one transaction, so a failed copy leaves the destination as it was.
    pub fn copy_to(&self, destination: &Store) -> Result<CopyReport> {
        let source = self.read_transaction()?;
        let target = destination.write_transaction()?;
        let holds = [
            ("flags", target.load_flags()?.len() as i64),
            ("assignments", target.assignment_count()?),
            ("audit rows", target.audit_len()?),
        ];
        let held: Vec<String> = holds
            .iter()
            .filter(|(_, count)| *count > 0)
            .map(|(what, count)| format!("{count} {what}"))
            .collect();
        if !held.is_empty() {
            return Err(Error::NotEmpty {
                path: destination.path().to_string(),
                holds: held.join(", "),
            });
        }

        let flags = source.load_flags()?;
        for (position, flag) in flags.iter().enumerate() {
            let (created_at, updated_at) = source.flag_times(&flag.name)?.unwrap_or_default();
            target.insert_flag(flag, position, &created_at, &updated_at)?;
        }
        for flag in flags.iter().filter(|f| !f.requires.is_empty()) {
            target.replace_requirements(&flag.name, &flag.requires)?;
        }

        let mut assignments = 0;
        let mut pending = Vec::with_capacity(COPY_BATCH);
        let mut flush = |pending: &mut Vec<_>| -> Result<()> {
            let rows: Vec<AssignmentRef> = pending.iter().map(AssignmentRef::from).collect();
            target.insert_assignments(&rows)?;
            assignments += pending.len() as u64;
            pending.clear();
            Ok(())
        };
        source.for_each_assignment(None, None, &mut |row| {
            pending.push(row);
            if pending.len() == COPY_BATCH {
                flush(&mut pending)?;
            }
            Ok(())
        })?;
        flush(&mut pending)?;

        let everything = AuditQuery {
            ascending: true,
            ..AuditQuery::default()
        };
        // One snapshot for every table: the ranges and assignments must match the rows.
        let reader = Reader::Within(&*source);
        let mut pages = Pages::new(&everything, Scope::Everything, &reader, COPY_BATCH);
        let mut audit_rows = 0;
        // The last row copied: its id and hash.
        let mut last: Option<(i64, String)> = None;
        loop {
            let page = pages.next_page(&reader)?;
            if page.is_empty() {
                break;
            }
            let (mut previous_id, mut previous_hash) = last
                .as_ref()
                .map_or((0, GENESIS_HASH), |(id, hash)| (*id, hash.as_str()));
            let rows: Vec<ChainedEntry> = page
                .iter()
                .map(|row| {
                    let follows_previous =
                        previous_id == row.id - 1 && previous_hash == row.prev_hash;
                    (previous_id, previous_hash) = (row.id, &row.hash);
                    ChainedEntry {
                        id: row.id,
                        entry: row.entry(),
                        prev_hash: &row.prev_hash,
                        hash: &row.hash,
                        follows_previous,
                    }
                })
                .collect();
            target.append_audit(&rows)?;
            audit_rows += page.len() as u64;
            last = page.last().map(|row| (row.id, row.hash.clone()));
        }
        for token in source.list_tokens(true)? {
            target.insert_token(&token)?;
        }
        let mut after = (i64::MIN, i64::MIN, i64::MIN);
        loop {
            let page = source.record_ranges(after, COPY_BATCH)?;
            for range in &page {
                // A range whose set is missing lists no flag, in the copy as in the source.
                let flags = range.flags.as_deref().unwrap_or("[]");
                target.insert_record_range(flags, range.first_id, range.last_id)?;
            }
            match page.last() {
                Some(range) => after = range.key(),
                None => break,
            }
        }
        target.commit()?;
        Ok(CopyReport {
            flags: flags.len(),
            assignments,
            audit_rows,
            head: last.map(|(_, hash)| hash),
        })
    }
}

impl Store {
    /// Copies this whole store to `destination`: a new SQLite file (written beside its path
    /// and renamed into place once complete), or an existing empty store.
    pub fn copy_to_location(&self, destination: &Location) -> Result<CopyReport> {
        match destination {
            Location::Sqlite(path) if !path.exists() => to_new_sqlite_file(self, path),
            _ => self.copy_to(&Store::open(destination)?),
        }
    }
}

/// Writes `store` as a new SQLite file at `destination`, by way of a temporary file beside it
/// that is renamed into place once complete.
pub(super) fn to_new_sqlite_file(store: &Store, destination: &Path) -> Result<CopyReport> {
    let pending = PendingFile::create(destination)?;
    let report = {
        // PendingFile creates the file empty, which SQLite takes as a new database.
        let copy = Store::open(&Location::Sqlite(pending.path().to_path_buf()))?;
        store.copy_to(&copy)?
    };
    pending.persist()?;
    Ok(report)
}
