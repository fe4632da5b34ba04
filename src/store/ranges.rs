//! The index of decision records by flag (`audit_ranges`, each range naming a set of flags in
//! `audit_flag_sets`; reviewers read it as the view `audit_flag_ranges`) held against the
//! records it indexes: `check` walks both in record order, and `check --repair-index` adds
//! what is missing.
//!
//! The index is derived, not hashed, so the chain cannot vouch for it: a range deleted by the
//! tables' owner hides its flags' decisions from `audit --flag`, the admin API and the UI
//! while `audit verify` passes. Each decision record must be listed by exactly the flags it was
//! asked for (the first `requested` of its decisions), through the sets of the ranges covering
//! it; nothing else may be listed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::record::StoredDetail;
use serde_json::json;

use crate::audit::{AuditRow, Checkpoint, Entry, Verified};
use crate::error::{Error, Result, shortened};

use super::backend::{RangeKey, RecordRange};
use super::review::DecisionWalk;
use super::{Store, append_audit};

/// A flag set as `audit_flag_sets` holds it: the names sorted (bytewise), each once, as JSON.
pub(super) fn flag_set_json<'a>(flags: impl IntoIterator<Item = &'a str>) -> String {
    let mut flags: Vec<&str> = flags.into_iter().collect();
    flags.sort_unstable();
    flags.dedup();
    serde_json::to_string(&flags).expect("a list of strings serializes")
}

/// The names a flag set's text lists; `None` when it is not a JSON list of strings.
pub(super) fn parse_flag_set(text: &str) -> Option<Vec<String>> {
    serde_json::from_str(text).ok()
}

/// Ranges read per page while walking the log.
const RANGES_PER_PAGE: usize = 5_000;

/// Runs of record ids shown in a message before the rest is elided.
const RUNS_SHOWN: usize = 5;

/// Record ids as runs of consecutive ids, in increasing order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runs(Vec<(i64, i64)>);

impl Runs {
    fn add(&mut self, first: i64, last: i64) {
        match self.0.last_mut() {
            Some((_, end)) if *end + 1 >= first => *end = (*end).max(last),
            _ => self.0.push((first, last)),
        }
    }

    pub fn ids(&self) -> i64 {
        self.0.iter().map(|(first, last)| last - first + 1).sum()
    }

    pub fn runs(&self) -> &[(i64, i64)] {
        &self.0
    }

    /// "record 7", "records 7-9, 12", at most five runs, then ", ...".
    pub fn shown(&self) -> String {
        let mut runs: Vec<String> = self
            .0
            .iter()
            .take(RUNS_SHOWN)
            .map(|&(first, last)| match first == last {
                true => first.to_string(),
                false => format!("{first}-{last}"),
            })
            .collect();
        if self.0.len() > RUNS_SHOWN {
            runs.push("...".to_string());
        }
        let noun = if self.ids() == 1 { "record" } else { "records" };
        format!("{noun} {}", runs.join(", "))
    }
}

/// How `audit_flag_ranges` differs from what the decision records say, by flag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexReport {
    /// Records that decide the flag as asked for, listed by none of its ranges.
    pub missing: BTreeMap<String, Runs>,
    /// Ids a range of the flag lists that do not decide it (a change row, a record asked for
    /// other flags, an id past the end, or an id listed twice).
    pub extra: BTreeMap<String, Runs>,
    /// Sets that ranges name but that list no flag: the set's text when it is not a list of
    /// names, `None` when `audit_flag_sets` has no such set.
    pub unreadable_sets: BTreeMap<i64, Option<String>>,
}

impl IndexReport {
    pub fn is_sound(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.unreadable_sets.is_empty()
    }

    /// One line per flag and kind of difference, for `check`.
    pub fn lines(&self) -> Vec<String> {
        let missing = self.missing.iter().map(|(flag, runs)| {
            format!(
                "audit_flag_ranges: flag {flag:?}: {} decision record{} missing from its ranges \
                 ({}), so audit --flag does not show them; check --repair-index adds them",
                runs.ids(),
                if runs.ids() == 1 { "" } else { "s" },
                runs.shown()
            )
        });
        let extra = self.extra.iter().map(|(flag, runs)| {
            format!(
                "audit_flag_ranges: flag {flag:?}: {} id{} in its ranges beyond its records, each \
                 once ({}: change rows, records not asked for it, ids past the log's end, or \
                 records listed twice); only the table's owner can remove the range",
                runs.ids(),
                if runs.ids() == 1 { "" } else { "s" },
                runs.shown()
            )
        });
        let unreadable = self.unreadable_sets.iter().map(|(id, text)| match text {
            Some(text) => format!(
                "audit_flag_sets: set {id} is not a JSON list of flag names ({}), so the ranges \
                 naming it list no flag",
                shortened(text, 80)
            ),
            None => format!(
                "audit_ranges: ranges name set {id}, which audit_flag_sets does not hold, so \
                 they list no flag"
            ),
        });
        unreadable.chain(missing).chain(extra).collect()
    }
}

/// The flags a decision record was asked for; none for a schema-1 evaluation row, which is
/// found by its flag column instead.
fn flags_asked_for(row: &AuditRow) -> Result<BTreeSet<String>> {
    if row.kind != "evaluation" {
        return Ok(BTreeSet::new());
    }
    let unreadable = |why: String| Error::UnreadableAuditRow { id: row.id, why };
    let detail = StoredDetail::parse(&row.detail).map_err(unreadable)?;
    let asked = detail.requested_flags().map_err(unreadable)?;
    Ok(asked.into_iter().map(str::to_string).collect())
}

/// Walks the ranges in the order of the records they list, beside the records themselves,
/// holding only the ranges that cover the record at hand.
struct IndexWalk<'s> {
    store: &'s Store,
    page: VecDeque<RecordRange>,
    after: RangeKey,
    read_all: bool,
    /// The flags of the ranges covering the current record, each with its range's last id.
    covering: Vec<(String, i64)>,
    last_visited: i64,
    report: IndexReport,
}

impl<'s> IndexWalk<'s> {
    fn new(store: &'s Store) -> IndexWalk<'s> {
        IndexWalk {
            store,
            page: VecDeque::new(),
            after: (i64::MIN, i64::MIN, i64::MIN),
            read_all: false,
            covering: Vec::new(),
            last_visited: 0,
            report: IndexReport::default(),
        }
    }

    /// The next range in order, if it starts at or before `id`, with the flags it lists.
    fn next_starting_by(&mut self, id: i64) -> Result<Option<(Vec<String>, i64, i64)>> {
        if self.page.is_empty() && !self.read_all {
            let page = self
                .store
                .read_transaction()?
                .record_ranges(self.after, RANGES_PER_PAGE)?;
            self.read_all = page.len() < RANGES_PER_PAGE;
            if let Some(last) = page.last() {
                self.after = last.key();
            }
            self.page = page.into();
        }
        if self.page.front().is_none_or(|range| range.first_id > id) {
            return Ok(None);
        }
        let range = self.page.pop_front().expect("checked above");
        let flags = match range.flags.as_deref().map(parse_flag_set) {
            Some(Some(flags)) => flags,
            _ => {
                self.report
                    .unreadable_sets
                    .insert(range.flag_set, range.flags);
                Vec::new()
            }
        };
        Ok(Some((flags, range.first_id, range.last_id)))
    }

    fn extra(&mut self, flag: &str, first: i64, last: i64) {
        self.report
            .extra
            .entry(flag.to_string())
            .or_default()
            .add(first, last);
    }

    fn visit(&mut self, row: &AuditRow) -> Result<()> {
        while let Some((flags, first_id, last_id)) = self.next_starting_by(row.id)? {
            for flag in flags {
                // Ids are gapless from 1 and every one is visited: a range starting before
                // this record lists ids before the first.
                if first_id < row.id {
                    self.extra(&flag, first_id, last_id.min(row.id - 1));
                }
                if last_id >= row.id {
                    self.covering.push((flag, last_id));
                }
            }
        }
        let asked_for = flags_asked_for(row)?;
        let mut listed: BTreeSet<&str> = BTreeSet::new();
        let mut extra = Vec::new();
        for (flag, _) in &self.covering {
            if !asked_for.contains(flag) || !listed.insert(flag) {
                extra.push(flag.clone());
            }
        }
        for flag in extra {
            self.extra(&flag, row.id, row.id);
        }
        let unlisted: Vec<&String> = asked_for
            .iter()
            .filter(|flag| !self.covering.iter().any(|(listed, _)| listed == *flag))
            .collect();
        for flag in unlisted {
            self.report
                .missing
                .entry(flag.clone())
                .or_default()
                .add(row.id, row.id);
        }
        self.covering.retain(|(_, last_id)| *last_id > row.id);
        self.last_visited = row.id;
        Ok(())
    }

    /// The report, once every record up to the walk's head was visited. A range written
    /// with its records lists either only records up to that head or only newer ones, so what
    /// still covers past the head, and ranges listing ids the log does not have now, list
    /// records that do not exist.
    fn finish(mut self) -> Result<IndexReport> {
        for (flag, last_id) in std::mem::take(&mut self.covering) {
            self.extra(&flag, self.last_visited + 1, last_id);
        }
        let tail = self
            .store
            .read_transaction()?
            .audit_tail()?
            .map_or(0, |(id, _)| id);
        while let Some((flags, first_id, last_id)) = self.next_starting_by(i64::MAX)? {
            if last_id > tail {
                for flag in flags {
                    self.extra(&flag, first_id.max(tail + 1), last_id);
                }
            }
        }
        Ok(self.report)
    }
}

/// The ranges `check --repair-index` added for one flag, and the change row recording it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reindexed {
    pub flag: String,
    pub records: Runs,
    pub audit_id: i64,
}

impl Store {
    /// [`Store::verify_audit`] and, in the same pass over the log, how `audit_flag_ranges`
    /// differs from what the decision records say, and where a record's decisions are not
    /// what the definitions in force when it was written give (one line each, the first few).
    pub fn verify_audit_for_check(
        &self,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(Verified, IndexReport, Vec<String>)> {
        let mut index = IndexWalk::new(self);
        let mut decisions = DecisionWalk::default();
        let verified = self.verify_audit_visiting(checkpoint, |row| {
            index.visit(row)?;
            decisions.visit(row)
        })?;
        Ok((verified, index.finish()?, decisions.lines()))
    }

    /// Adds the ranges `report` finds missing, each flag's in one change row of the audit log
    /// (action `reindex`) naming the records, all in one transaction. The ranges of a flag
    /// are for records that stay as they are (the log is append-only), so a report made
    /// before the write lock is still true under it; what a range lists wrongly stays, since
    /// the table is append-only.
    pub fn repair_index(&mut self, report: &IndexReport, actor: &str) -> Result<Vec<Reindexed>> {
        let tx = self.write_transaction()?;
        let ts = self.now();
        let mut reindexed = Vec::new();
        for (flag, records) in &report.missing {
            for &(first_id, last_id) in records.runs() {
                tx.insert_record_range(&flag_set_json([flag.as_str()]), first_id, last_id)?;
            }
            let audit_id = append_audit(
                &tx,
                &[Entry {
                    ts: &ts,
                    kind: "change",
                    actor,
                    action: Some("reindex"),
                    flag: Some(flag),
                    context_key: None,
                    result: None,
                    source: None,
                    reason: Some(&format!(
                        "index repaired: {} decision record{} added to audit_flag_ranges ({})",
                        records.ids(),
                        if records.ids() == 1 { "" } else { "s" },
                        records.shown()
                    )),
                    detail: &json!({ "added_ranges": records.runs() }).to_string(),
                }],
            )?;
            reindexed.push(Reindexed {
                flag: flag.clone(),
                records: records.clone(),
                audit_id,
            });
        }
        tx.commit()?;
        Ok(reindexed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_join_neighbours_and_show_a_few() {
        let mut runs = Runs::default();
        for id in [3, 4, 5, 9, 11, 12] {
            runs.add(id, id);
        }
        assert_eq!(runs.runs(), [(3, 5), (9, 9), (11, 12)]);
        assert_eq!(runs.ids(), 6);
        assert_eq!(runs.shown(), "records 3-5, 9, 11-12");
        for id in (20..40).step_by(2) {
            runs.add(id, id);
        }
        assert_eq!(runs.shown(), "records 3-5, 9, 11-12, 20, 22, ...");
        let mut one = Runs::default();
        one.add(7, 7);
        assert_eq!(one.shown(), "record 7");
    }
}
