//! One snapshot for a whole answer: [`Store::read`] hands its closure a [`View`], every read
//! of which sees the store in the same state, so a page or an API answer that reads a flag,
//! its version, its assignments and its history never shows two states side by side.

use crate::audit::{AuditQuery, AuditRow};
use crate::error::{Error, Result};
use crate::flag::FlagSet;

use super::flags::last_change_id;
use super::query::{Reader, query_audit};
use super::{AssignmentRow, AssignmentTally, FlagRecord, ReadTx, Store};

/// The store as of one snapshot; see [`Store::read`].
pub struct View<'s> {
    tx: ReadTx<'s>,
}

impl Store {
    /// Runs `answer` on a [`View`]: every read it makes sees one state of the store, however
    /// many it makes, while writers go on. Ends the snapshot when `answer` returns.
    pub fn read<T, E: From<Error>>(
        &self,
        answer: impl FnOnce(&View) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let view = View {
            tx: self.read_transaction()?,
        };
        answer(&view)
    }
}

impl View<'_> {
    /// Every flag with its requirements.
    pub fn flags(&self) -> Result<FlagSet> {
        self.tx.load_flags()
    }

    /// A flag with the flags that require it and its creation and update times.
    pub fn flag(&self, name: &str) -> Result<Option<FlagRecord>> {
        let flags = self.tx.load_flags()?;
        let (Some(flag), Some((created_at, updated_at))) =
            (flags.get(name), self.tx.flag_times(name)?)
        else {
            return Ok(None);
        };
        Ok(Some(FlagRecord {
            flag: flag.clone(),
            required_by: flags.dependents_of(name),
            created_at,
            updated_at,
        }))
    }

    /// The error for a flag name that does not exist, with the nearest existing name.
    pub fn unknown_flag(&self, name: &str) -> Result<Error> {
        Ok(Error::UnknownFlag {
            name: name.to_string(),
            suggestion: self.flags()?.nearest_name(name),
        })
    }

    /// The version of a flag: the id of its newest change row (0 if it has none). Every write
    /// to a flag adds a change row, so a version names one state of the flag.
    pub fn flag_version(&self, name: &str) -> Result<i64> {
        last_change_id(&*self.tx, name)
    }

    /// The stored assignments of `flag`, of `context`, or all, by flag then context key.
    pub fn assignments(
        &self,
        flag: Option<&str>,
        context: Option<&str>,
    ) -> Result<Vec<AssignmentRow>> {
        let mut rows = Vec::new();
        self.tx.for_each_assignment(flag, context, &mut |row| {
            rows.push(row);
            Ok(())
        })?;
        Ok(rows)
    }

    /// Counts `flag`'s stored assignments, on and off, and how many of them a rollout of
    /// `rollout_pct` would decide otherwise if they were decided afresh (they are not: they
    /// are sticky).
    pub fn assignment_tally(&self, flag: &str, rollout_pct: f64) -> Result<AssignmentTally> {
        self.tx.assignment_tally(flag, rollout_pct)
    }

    /// [`Store::query_audit`] within this snapshot: for a bounded answer (a page, a flag's
    /// history), since the snapshot is held until the whole scan is done.
    pub fn query_audit<E: From<Error>>(
        &self,
        query: &AuditQuery,
        visit: impl FnMut(AuditRow) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        query_audit(&Reader::Within(&*self.tx), query, visit)
    }
}
