//! Reading the audit log back: verifying its chain and rebuilding past states from it.

use crate::audit::{AuditQuery, AuditRow, ChainVerifier, Checkpoint, Verified};
use crate::error::{Error, Result};
use crate::flag::{Flag, FlagSet};

use super::Store;

impl Store {
    /// The flag definitions in force just before `until` (a normalized, exclusive bound), rebuilt
    /// from the full before/after states the change rows hold.
    pub fn flags_as_of(&self, until: &str) -> Result<FlagSet> {
        let changes = AuditQuery {
            kind: Some("change".to_string()),
            until: Some(until.to_string()),
            ascending: true,
            ..AuditQuery::default()
        };
        let mut flags = FlagSet::new();
        self.query_audit(&changes, |row| {
            let unreadable = |why: String| Error::UnreadableAuditRow { id: row.id, why };
            let detail: serde_json::Value =
                serde_json::from_str(&row.detail).map_err(|e| unreadable(e.to_string()))?;
            match row.action.as_deref() {
                Some("create" | "update") => {
                    let after: Flag = serde_json::from_value(detail["after"].clone())
                        .map_err(|e| unreadable(format!("detail.after: {e}")))?;
                    flags.insert(after);
                }
                Some("delete") => {
                    if let Some(flag) = &row.flag {
                        flags.remove(flag);
                    }
                }
                _ => {}
            }
            Ok::<(), Error>(())
        })?;
        Ok(flags)
    }

    /// The evaluation of `flag` for `context` recorded last before `until` (exclusive), if any.
    pub fn decision_before(
        &self,
        flag: &str,
        context: &str,
        until: &str,
    ) -> Result<Option<AuditRow>> {
        let nearest = AuditQuery {
            flag: Some(flag.to_string()),
            context: Some(context.to_string()),
            kind: Some("evaluation".to_string()),
            until: Some(until.to_string()),
            limit: Some(1),
            ..AuditQuery::default()
        };
        let mut found = None;
        self.query_audit(&nearest, |row| {
            found = Some(row);
            Ok::<(), Error>(())
        })?;
        Ok(found)
    }

    /// Checks that the stored data is well formed: on SQLite every page of the file (`quick`:
    /// `quick_check`, linear in the file size) and without `quick` also that every index holds
    /// exactly its table's rows (`integrity_check`, slower). Reads only. Returns what was
    /// checked, in words.
    pub fn check_storage(&self, quick: bool) -> Result<&'static str> {
        self.backend.check_storage(quick)
    }

    /// Checks what the database cannot: every foreign key holds (an SQLite file edited with
    /// foreign keys off), and every stored assignment has the evaluation row that stored it,
    /// written in the same transaction. Returns the number of assignments checked.
    pub fn check_references(&self) -> Result<i64> {
        let tx = self.read_transaction()?;
        let inconsistent = |problem: String| Error::Inconsistent {
            path: self.path().to_string(),
            problem,
        };
        if let Some((table, row, parent)) = tx.broken_reference()? {
            return Err(inconsistent(format!(
                "{table} row {row} refers to a missing row of {parent}"
            )));
        }
        if let Some((flag, context)) = tx.unaudited_assignment()? {
            return Err(inconsistent(format!(
                "the assignment of flag {flag:?} for context {context:?} has no evaluation row \
                 that stored it"
            )));
        }
        tx.assignment_count()
    }

    /// Verifies the whole audit log of `store`, and that it still contains `checkpoint`.
    pub fn verify_audit(&self, checkpoint: Option<&Checkpoint>) -> Result<Verified> {
        let mut verifier = ChainVerifier::default();
        let mut checkpoint_seen = false;
        self.for_each_audit_row(|row| {
            verifier.check(&row).map_err(|broken| Error::AuditChain {
                id: broken.id,
                why: broken.why,
            })?;
            if let Some(checkpoint) = checkpoint
                && checkpoint.id.is_none_or(|id| id == row.id)
                && checkpoint.hash == row.hash
            {
                checkpoint_seen = true;
            }
            Ok::<(), Error>(())
        })?;
        if let Some(checkpoint) = checkpoint.filter(|_| !checkpoint_seen) {
            let at = checkpoint
                .id
                .map_or(String::new(), |id| format!(" at row {id}"));
            return Err(Error::CheckpointMissing {
                hash: checkpoint.hash.clone(),
                at,
                rows: verifier.rows(),
            });
        }
        Ok(Verified {
            rows: verifier.rows(),
            head: verifier.head().to_string(),
        })
    }
}
