//! Flag definitions in the store: reads, and writes as data (`Store::modify` takes an edit of
//! the whole flag set, `change::diff` turns it into one audited change per flag).

use serde_json::json;

use crate::audit::Entry;
use crate::change::{self, Change};
use crate::error::{Error, Result};
use crate::flag::{Flag, FlagSet};

use super::chain::append_audit;
use super::{FlagRecord, Reads, Scan, Scope, Store, WriteTx};

impl Store {
    /// [`View::flags`](super::View::flags) in a snapshot of its own.
    pub fn flags(&self) -> Result<FlagSet> {
        self.read(|view| view.flags())
    }

    /// [`View::flag`](super::View::flag) in a snapshot of its own.
    pub fn flag(&self, name: &str) -> Result<Option<FlagRecord>> {
        self.read(|view| view.flag(name))
    }

    /// [`View::unknown_flag`](super::View::unknown_flag) in a snapshot of its own.
    pub fn unknown_flag(&self, name: &str) -> Result<Error> {
        self.read(|view| view.unknown_flag(name))
    }

    /// Applies `edit` to the current flags as one atomic, audited write. `edit` sees the flags
    /// as they are under the write lock and returns the flags as they should be; the result
    /// must pass [`FlagSet::validate`]. Returns the changes made (or, with `dry_run`, the changes
    /// that would be made, leaving the store untouched).
    pub fn modify(
        &mut self,
        actor: &str,
        via: &str,
        dry_run: bool,
        edit: impl FnOnce(&FlagSet) -> Result<FlagSet>,
    ) -> Result<Vec<Change>> {
        let tx = self.write_transaction()?;
        let ts = self.now();
        let (_, changes) = edit_flags(&tx, edit, (!dry_run).then_some((actor, via, ts.as_str())))?;
        // A new order alone (import --replace of the same flags) changes no definition but
        // is written all the same.
        if !dry_run {
            tx.commit()?;
        }
        Ok(changes)
    }

    /// [`View::flag_version`](super::View::flag_version) in a snapshot of its own.
    pub fn flag_version(&self, name: &str) -> Result<i64> {
        self.read(|view| view.flag_version(name))
    }

    /// Applies `edit` to flag `name` as [`Store::modify`] does, but only if the flag is still
    /// at `expected_version` ([`Store::flag_version`]), checked under the write lock: an editor
    /// working from a stale view is refused, not silently overwritten. Returns the changes and
    /// the flag's new version.
    pub fn modify_flag_at_version(
        &mut self,
        name: &str,
        expected_version: i64,
        actor: &str,
        via: &str,
        edit: impl FnOnce(&Flag) -> Result<Flag>,
    ) -> Result<(Vec<Change>, i64)> {
        let tx = self.write_transaction()?;
        let flags = tx.load_flags()?;
        if !flags.contains(name) {
            return Err(Error::UnknownFlag {
                name: name.to_string(),
                suggestion: flags.nearest_name(name),
            });
        }
        let current = last_change_id(tx.reads(), name)?;
        if current != expected_version {
            return Err(Error::StaleVersion {
                flag: name.to_string(),
                expected: expected_version,
                current,
            });
        }
        let ts = self.now();
        let edit_one = |flags: &FlagSet| -> Result<FlagSet> {
            let mut edited = flags.clone();
            if let Some(flag) = flags.get(name) {
                edited.insert(edit(flag)?);
            }
            Ok(edited)
        };
        let (_, changes) = edit_flags(&tx, edit_one, Some((actor, via, ts.as_str())))?;
        let version = last_change_id(tx.reads(), name)?;
        tx.commit()?;
        Ok((changes, version))
    }
}

/// Applies `edit` to the flags as they are in `tx`, checks the result and works out the
/// changes; with `write` (actor, via, timestamp) also writes them, audited. Returns the flags
/// as edited and the changes.
pub(super) fn edit_flags(
    tx: &WriteTx,
    edit: impl FnOnce(&FlagSet) -> Result<FlagSet>,
    write: Option<(&str, &str, &str)>,
) -> Result<(FlagSet, Vec<Change>)> {
    let current = tx.load_flags()?;
    let next = edit(&current)?;
    next.validate()?;
    let changes = change::diff(&current, &next);
    if let Some((actor, via, ts)) = write {
        write_changes(tx, &current, &next, &changes, actor, via, ts)?;
    }
    Ok((next, changes))
}

/// Writes flag rows, then requirements, then deletions, so that every foreign key holds after
/// each statement whatever order the changes came in. Positions are `next`'s order, written
/// whole when it is not `current`'s (a flag created or deleted, or a file's new order), so
/// they stay 0, 1, 2, ... whatever a hand edit left.
fn write_changes(
    tx: &WriteTx,
    current: &FlagSet,
    next: &FlagSet,
    changes: &[Change],
    actor: &str,
    via: &str,
    ts: &str,
) -> Result<()> {
    let reordered = !current.names().eq(next.names());
    let position = |name: &str| next.position(name).unwrap_or(usize::MAX);
    for change in changes {
        match change {
            Change::Create(flag) => tx.insert_flag(flag, position(&flag.name), ts, ts)?,
            Change::Update { after, .. } => tx.update_flag(after, ts)?,
            Change::Delete(_) | Change::Move { .. } => {}
        }
    }
    if reordered {
        for (position, flag) in next.iter().enumerate() {
            if current.contains(&flag.name) {
                tx.move_flag(&flag.name, position)?;
            }
        }
    }
    // Requirements before deletions: a flag being deleted may be required by another being
    // deleted.
    for change in changes {
        let after = change.after();
        if change.before().map(|b| &b.requires) != after.map(|a| &a.requires) {
            let requires = after.map(|a| a.requires.as_slice()).unwrap_or_default();
            tx.replace_requirements(change.flag_name(), requires)?;
        }
    }
    let mut texts = Vec::with_capacity(changes.len());
    for change in changes {
        let mut detail = change.detail();
        if let Change::Delete(flag) = change {
            detail["assignments_deleted"] = json!(tx.delete_flag(&flag.name)?);
        }
        texts.push((format!("{via}: {}", change.summary()), detail.to_string()));
    }
    let entries: Vec<Entry> = changes
        .iter()
        .zip(&texts)
        .map(|(change, (reason, detail))| Entry {
            ts,
            kind: "change",
            actor,
            action: Some(change.action()),
            flag: Some(change.flag_name()),
            context_key: None,
            result: None,
            source: None,
            reason: Some(reason),
            detail,
        })
        .collect();
    append_audit(tx, &entries).map(|_| ())
}

/// The id of the newest change row of flag `name`, or 0.
pub(super) fn last_change_id(tx: &dyn Reads, name: &str) -> Result<i64> {
    let changes = crate::audit::AuditQuery {
        kind: Some("change".to_string()),
        ..crate::audit::AuditQuery::default()
    };
    let newest = tx.audit_page(&Scan {
        query: &changes,
        scope: Scope::FlagColumn(name),
        cursor: None,
        through: None,
        limit: 1,
    })?;
    Ok(newest.first().map_or(0, |row| row.id))
}
