//! `check`'s account of the sticky assignments: the table holds exactly what the decision
//! records stored, less what audited resets and flag deletions removed after them.
//!
//! The records and the table are read together, one context at a time, in one snapshot
//! ([`Reads::for_each_context_item`](super::backend::Reads::for_each_context_item)), so
//! memory holds one context's assignments and never the log: a year of keys is checked in the
//! same memory as a day's.

use std::collections::HashMap;

use crate::audit::{AuditQuery, AuditRow};
use crate::error::{Error, Result};
use crate::eval::StoredAssignment;
use crate::record::StoredDetail;

use super::AssignmentRow;
use super::query::{Reader, query_audit};

/// The columns of an evaluation row that say what it stored.
#[derive(Debug, Clone)]
pub(super) struct EvaluationRow {
    pub id: i64,
    pub ts: String,
    /// Set on a schema-1 evaluation row (one flag per row), `None` on a decision record.
    pub flag: Option<String>,
    pub context_key: String,
    pub result: Option<i64>,
    pub reason: Option<String>,
    pub detail: String,
}

impl EvaluationRow {
    pub(super) fn of(row: &AuditRow, context: &str) -> EvaluationRow {
        EvaluationRow {
            id: row.id,
            ts: row.ts.to_string(),
            flag: row.flag.clone(),
            context_key: context.to_string(),
            result: row.result,
            reason: row.reason.clone(),
            detail: row.detail.to_string(),
        }
    }

    fn facts(&self) -> Result<Facts> {
        let unreadable = |why: String| Error::UnreadableAuditRow { id: self.id, why };
        let detail = StoredDetail::parse(&self.detail).map_err(unreadable)?;
        let stored = |flag: &str, decision: bool, bucket: u8, rollout_pct: f64| {
            let assignment = StoredAssignment {
                decision,
                bucket,
                rollout_pct,
                assigned_at: self.ts.clone(),
            };
            (flag.to_string(), assignment)
        };
        // Read through query_audit, a decision record comes as one of its decisions' rows,
        // with the record's detail: the detail says which kind of row this is.
        match (detail.decisions(), &self.flag) {
            // A decision record: every decision marked assigned, with its bucket and rollout.
            (Some(decisions), _) => decisions
                .iter()
                .filter(|d| d.assigned())
                .map(|d| {
                    let flag = d.flag().map_err(unreadable)?;
                    let pct = d.rollout_pct().and_then(|p| p.parse().ok());
                    match (d.bucket(), pct) {
                        (Some(bucket), Some(pct)) => Ok(stored(flag, d.on(), bucket, pct)),
                        _ => Err(unreadable(format!(
                            "assignment of {flag:?} without bucket or rollout"
                        ))),
                    }
                })
                .collect::<Result<_>>()
                .map(Facts::Record),
            (None, None) => Ok(Facts::Record(Vec::new())),
            // A schema-1 row: the rollout is the number its reason ends with ("rollout: bucket
            // 14 < 30").
            (None, Some(flag)) => {
                let pct = self
                    .reason
                    .as_deref()
                    .and_then(|reason| reason.rsplit(' ').next())
                    .and_then(|p| p.parse().ok());
                Ok(Facts::Schema1 {
                    own: pct.map(|pct| {
                        let bucket = crate::eval::bucket(flag, &self.context_key);
                        stored(flag, self.result == Some(1), bucket, pct)
                    }),
                    listed: detail.schema_1_assigned().to_vec(),
                })
            }
        }
    }
}

/// What an evaluation row says was stored.
enum Facts {
    /// A decision record's assignments (or none).
    Record(Vec<(String, StoredAssignment)>),
    /// A schema-1 row: its own flag's rollout, if a rollout decided it, and the flags its
    /// request stored while evaluating it, a requirement's too, whose rollout is in the
    /// requirement's own row of the same request.
    Schema1 {
        own: Option<(String, StoredAssignment)>,
        listed: Vec<String>,
    },
}

/// What [`Reads::for_each_context_item`](super::backend::Reads::for_each_context_item)
/// hands over: a context's evaluation rows, and its rows of the assignments table.
#[derive(Debug, Clone)]
pub(super) enum ContextItem {
    Record(EvaluationRow),
    Assignment(AssignmentRow),
}

/// The change rows that remove stored assignments: the newest of each flag's resets for
/// every context and deletions, and of its resets for one context.
#[derive(Debug, Default)]
pub(super) struct Removals {
    every_context: HashMap<String, i64>,
    /// By flag, then context: looked up by borrowed names, once per assignment `check` reads.
    one_context: HashMap<String, HashMap<String, i64>>,
}

impl Removals {
    /// The change rows of the log through `reader`, before `until` when given.
    pub(super) fn read(reader: &Reader, until: Option<&str>) -> Result<Removals> {
        let mut removals = Removals::default();
        query_audit(reader, &AuditQuery::changes(until), |row| {
            removals.note(&row);
            Ok::<(), Error>(())
        })?;
        Ok(removals)
    }

    /// Takes note of change row `row` if it removes assignments.
    fn note(&mut self, row: &AuditRow) {
        let Some(flag) = &row.flag else { return };
        let newest = match (row.action.as_deref(), &row.context_key) {
            (Some("delete"), _) | (Some("reset_assignments"), None) => {
                self.every_context.entry(flag.clone()).or_default()
            }
            (Some("reset_assignments"), Some(context)) => self
                .one_context
                .entry(flag.clone())
                .or_default()
                .entry(context.clone())
                .or_default(),
            _ => return,
        };
        *newest = (*newest).max(row.id);
    }

    /// The newest change row after row `record` that removed `flag`'s assignment for
    /// `context`, if any.
    pub(super) fn after(&self, flag: &str, context: &str, record: i64) -> Option<i64> {
        let every = self.every_context.get(flag).copied();
        let one = self
            .one_context
            .get(flag)
            .and_then(|by_context| by_context.get(context))
            .copied();
        every.max(one).filter(|&removal| removal > record)
    }
}

/// A context's assignments as its evaluation rows, taken in id order, leave them.
#[derive(Default)]
pub(super) struct Replay {
    /// By flag: the row that stored each last, and what it stored.
    stored: HashMap<String, (i64, StoredAssignment)>,
    /// Schema-1 rollouts, by time and flag, and the (time, flag) schema-1 rows list as
    /// stored: a requirement's rollout is in its own row, its listing in its dependent's, so
    /// they are paired once every row is in.
    schema1_rollouts: HashMap<(String, String), (i64, StoredAssignment)>,
    schema1_listed: Vec<(String, String)>,
}

impl Replay {
    pub(super) fn take(&mut self, record: &EvaluationRow) -> Result<()> {
        match record.facts()? {
            Facts::Record(stored) => {
                for (flag, assignment) in stored {
                    self.stored.insert(flag, (record.id, assignment));
                }
            }
            Facts::Schema1 { own, listed } => {
                if let Some((flag, assignment)) = own {
                    let at = (record.ts.clone(), flag);
                    self.schema1_rollouts.insert(at, (record.id, assignment));
                }
                for flag in listed {
                    self.schema1_listed.push((record.ts.clone(), flag));
                }
            }
        }
        Ok(())
    }

    /// What the rows taken stored, by flag: the row that stored each last, and what it
    /// stored. Leaves the replay empty, for the next context.
    pub(super) fn finish(&mut self) -> HashMap<String, (i64, StoredAssignment)> {
        for at in std::mem::take(&mut self.schema1_listed) {
            let Some((id, assignment)) = self.schema1_rollouts.get(&at) else {
                continue;
            };
            // Schema-1 rows precede every decision record: a newer record's stays.
            let (_, flag) = at;
            if self.stored.get(&flag).is_none_or(|(newer, _)| newer < id) {
                self.stored.insert(flag, (*id, assignment.clone()));
            }
        }
        self.schema1_rollouts.clear();
        std::mem::take(&mut self.stored)
    }
}

/// The walk over the contexts: what the chain leaves for each against the table.
pub(super) struct StickyAudit {
    removals: Removals,
    /// The current context's records.
    replay: Replay,
    /// The current context's rows of the table.
    live: Vec<AssignmentRow>,
    context: Option<String>,
    /// Rows of the table compared.
    checked: i64,
    found: Vec<String>,
    /// Differences beyond those whose lines fill [`StickyAudit::SHOWN`].
    more: usize,
}

/// What the walk over the contexts found: the assignments it compared, and one line per
/// difference.
#[derive(Debug)]
pub struct StickyReport {
    pub checked: i64,
    pub differences: Vec<String>,
}

impl StickyAudit {
    const SHOWN: usize = 10;

    pub(super) fn new(removals: Removals) -> StickyAudit {
        StickyAudit {
            removals,
            replay: Replay::default(),
            live: Vec::new(),
            context: None,
            checked: 0,
            found: Vec::new(),
            more: 0,
        }
    }

    /// Takes the next item; `starts_context` on the first of each context. A context's
    /// records come in id order.
    pub(super) fn visit(&mut self, starts_context: bool, item: ContextItem) -> Result<()> {
        if starts_context {
            self.finish_context();
        }
        match item {
            ContextItem::Record(record) => {
                self.replay.take(&record)?;
                self.context.get_or_insert(record.context_key);
            }
            ContextItem::Assignment(row) => {
                self.context.get_or_insert_with(|| row.context_key.clone());
                self.live.push(row);
            }
        }
        Ok(())
    }

    pub(super) fn finish(mut self) -> StickyReport {
        self.finish_context();
        if self.more > 0 {
            self.found.push(format!(
                "assignments: {} more difference{} between the table and the records that \
                 stored them",
                self.more,
                if self.more == 1 { "" } else { "s" }
            ));
        }
        StickyReport {
            checked: self.checked,
            differences: self.found,
        }
    }

    fn finish_context(&mut self) {
        let Some(context) = self.context.take() else {
            return;
        };
        let mut stored = self.replay.finish();
        let mut lines = Vec::new();
        for live in std::mem::take(&mut self.live) {
            self.checked += 1;
            let flag = &live.flag;
            let said = match stored.remove(flag) {
                None => "in the table, but no evaluation record stored it".to_string(),
                Some((record, stored)) => match self.removals.after(flag, &context, record) {
                    Some(removal) => format!(
                        "in the table, but change row {removal} removed what record {record} \
                         stored"
                    ),
                    None => match differing(&live, &stored, record) {
                        None => continue,
                        Some(said) => said,
                    },
                },
            };
            lines.push(format!("flag {flag:?}, context {context:?}: {said}"));
        }
        let mut lost: Vec<(i64, String)> = stored
            .drain()
            .filter(|(flag, (record, _))| self.removals.after(flag, &context, *record).is_none())
            .map(|(flag, (record, _))| (record, flag))
            .collect();
        lost.sort();
        lines.extend(lost.into_iter().map(|(record, flag)| {
            format!(
                "flag {flag:?}, context {context:?}: stored by record {record}, missing from the \
                 table, and no audited reset or deletion removed it"
            )
        }));
        for line in lines {
            if self.found.len() < Self::SHOWN {
                self.found.push(format!("assignments: {line}"));
            } else {
                self.more += 1;
            }
        }
    }
}

/// How the table's `live` assignment differs from what `record` stored, if it does.
fn differing(live: &AssignmentRow, stored: &StoredAssignment, record: i64) -> Option<String> {
    let shown = |decision: bool, bucket: u8, pct: f64| {
        format!(
            "decision {decision}, bucket {bucket}, rollout {}",
            crate::output::percentage(pct)
        )
    };
    let in_table = (live.decision, live.bucket, live.rollout_pct);
    let in_record = (stored.decision, stored.bucket, stored.rollout_pct);
    if in_table != in_record {
        Some(format!(
            "{} in the table, {} in record {record} that stored it",
            shown(live.decision, live.bucket, live.rollout_pct),
            shown(stored.decision, stored.bucket, stored.rollout_pct)
        ))
    } else if live.assigned_at != stored.assigned_at {
        Some(format!(
            "assigned at {} in the table, at {} in record {record} that stored it",
            live.assigned_at, stored.assigned_at
        ))
    } else {
        None
    }
}
