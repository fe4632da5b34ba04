//! Reading the audit log as reviewers see it: one row per change and one per flag decision,
//! whether the decision was stored as a schema-1 row of its own or inside a decision record.

use std::collections::VecDeque;

use rusqlite::{Row, ToSql};

use super::Store;
use crate::audit::{AuditQuery, AuditRow};
use crate::error::{Error, Result};
use crate::record;

const COLUMNS: &str = "SELECT id, ts, kind, actor, action, flag, context_key, result, source, \
                       reason, detail, prev_hash, hash FROM audit_log";

/// Which rows a scan reads, beyond the query's own filters.
#[derive(Clone, Copy)]
enum Scope<'a> {
    Everything,
    /// Rows whose `flag` column is this flag: changes and schema-1 evaluations.
    FlagColumn(&'a str),
    /// Decision records with ids in this range.
    Records {
        first_id: i64,
        last_id: i64,
    },
}

impl Store {
    /// Calls `visit` with every audit row as stored, in id order, streaming, so a log of any
    /// size can be verified in constant memory. Stops at the first error `visit` returns.
    pub fn for_each_audit_row<E: From<Error>>(
        &self,
        mut visit: impl FnMut(AuditRow) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let everything = AuditQuery {
            ascending: true,
            ..AuditQuery::default()
        };
        let mut statement = self.prepare_scan(&everything, Scope::Everything)?;
        let mut rows = statement
            .0
            .query(rusqlite::params_from_iter(&statement.1))
            .map_err(Error::from)?;
        while let Some(row) = rows.next().map_err(Error::from)? {
            visit(read_row(row).map_err(Error::from)?)?;
        }
        Ok(())
    }

    /// Streams what `query` selects, in id order (newest first unless `query.ascending`): a
    /// change or schema-1 evaluation row as stored, and each requested decision of a decision
    /// record as a row of its own (the record's id, time, actor, context, detail and hashes,
    /// the decision's flag, result, source and reason). `query.limit` counts those rows; a page
    /// ends at a record's end, so `cursor` (a row id) always continues where a page stopped.
    ///
    /// Paging is by id (keyset), so a page deep in a large log costs the same as the first. A
    /// flag's decision records are found through `audit_flag_ranges` (one row per transaction
    /// and flag), its changes through the index on (flag, id); a context's rows through the
    /// index on (context_key, id).
    pub fn query_audit<E: From<Error>>(
        &self,
        query: &AuditQuery,
        mut visit: impl FnMut(AuditRow) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut shown: i64 = 0;
        let mut show = |row: AuditRow| -> std::result::Result<bool, E> {
            if query.limit.is_some_and(|limit| shown >= limit) {
                return Ok(false);
            }
            let mut decisions = expand(row, query.flag.as_deref())?;
            // Newest first reads a request's decisions last to first, as schema-1 rows did.
            if !query.ascending {
                decisions.reverse();
            }
            for decision in decisions {
                shown += 1;
                visit(decision)?;
            }
            Ok(true)
        };
        // A context's rows are few and indexed: its scan filters by flag itself.
        match (query.flag.as_deref(), &query.context) {
            (Some(flag), None) => self.scan_flag(query, flag, &mut show),
            _ => self.scan(query, Scope::Everything, &mut show),
        }
    }

    /// Rows in `scope` that pass `query`'s filters, in its order, until `show` says stop.
    fn scan<E: From<Error>>(
        &self,
        query: &AuditQuery,
        scope: Scope,
        show: &mut impl FnMut(AuditRow) -> std::result::Result<bool, E>,
    ) -> std::result::Result<(), E> {
        let (mut statement, params) = self.prepare_scan(query, scope)?;
        let mut rows = statement
            .query(rusqlite::params_from_iter(&params))
            .map_err(Error::from)?;
        while let Some(row) = rows.next().map_err(Error::from)? {
            if !show(read_row(row).map_err(Error::from)?)? {
                break;
            }
        }
        Ok(())
    }

    /// A flag's rows: its changes and schema-1 evaluations (one index scan) merged by id with
    /// the decision records of the transactions that were asked for it (one range at a time).
    fn scan_flag<E: From<Error>>(
        &self,
        query: &AuditQuery,
        flag: &str,
        show: &mut impl FnMut(AuditRow) -> std::result::Result<bool, E>,
    ) -> std::result::Result<(), E> {
        let (mut by_column, params) = self.prepare_scan(query, Scope::FlagColumn(flag))?;
        let mut column_rows = by_column
            .query(rusqlite::params_from_iter(&params))
            .map_err(Error::from)?;
        let mut next_by_column = column_rows
            .next()
            .map_err(Error::from)?
            .map(read_row)
            .transpose()
            .map_err(Error::from)?;
        // Read one range at a time: a flag asked for in every request has a range per
        // transaction, and a page needs only the newest few.
        let (mut ranges_statement, ranges_params) = self.flag_ranges(flag, query)?;
        let mut ranges = ranges_statement
            .query(rusqlite::params_from_iter(&ranges_params))
            .map_err(Error::from)?;
        let with_records = query.kind.as_deref() != Some("change");
        let mut records: VecDeque<AuditRow> = VecDeque::new();
        let before = |a: &AuditRow, b: &AuditRow| {
            if query.ascending {
                a.id < b.id
            } else {
                a.id > b.id
            }
        };
        loop {
            if records.is_empty()
                && with_records
                && let Some(range) = ranges.next().map_err(Error::from)?
            {
                let scope = Scope::Records {
                    first_id: range.get(0).map_err(Error::from)?,
                    last_id: range.get(1).map_err(Error::from)?,
                };
                self.scan(query, scope, &mut |row| {
                    records.push_back(row);
                    Ok::<bool, Error>(true)
                })?;
                continue;
            }
            let take_column = match (&next_by_column, records.front()) {
                (None, None) => return Ok(()),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(a), Some(b)) => before(a, b),
            };
            let row = if take_column {
                let row = next_by_column.take().expect("checked above");
                next_by_column = column_rows
                    .next()
                    .map_err(Error::from)?
                    .map(read_row)
                    .transpose()
                    .map_err(Error::from)?;
                row
            } else {
                records.pop_front().expect("checked above")
            };
            if !show(row)? {
                return Ok(());
            }
        }
    }

    /// The statement and parameters listing the id ranges of the transactions that recorded
    /// decisions of `flag` (first_id, last_id), in the query's order, from where its cursor
    /// points.
    fn flag_ranges(
        &self,
        flag: &str,
        query: &AuditQuery,
    ) -> Result<(rusqlite::CachedStatement<'_>, Vec<Box<dyn ToSql>>)> {
        let sql = match (query.ascending, query.cursor.is_some()) {
            (false, false) => {
                "SELECT first_id, last_id FROM audit_flag_ranges WHERE flag = ?1 \
                 ORDER BY last_id DESC"
            }
            (false, true) => {
                "SELECT first_id, last_id FROM audit_flag_ranges WHERE flag = ?1 \
                 AND first_id < ?2 ORDER BY last_id DESC"
            }
            (true, false) => {
                "SELECT first_id, last_id FROM audit_flag_ranges WHERE flag = ?1 \
                 ORDER BY last_id"
            }
            (true, true) => {
                "SELECT first_id, last_id FROM audit_flag_ranges WHERE flag = ?1 \
                 AND last_id > ?2 ORDER BY last_id"
            }
        };
        let mut params: Vec<Box<dyn ToSql>> = vec![Box::new(flag.to_string())];
        if let Some(cursor) = query.cursor {
            params.push(Box::new(cursor));
        }
        Ok((self.conn.prepare_cached(sql)?, params))
    }

    /// The statement and parameters reading `scope` under `query`'s filters (all but `flag`,
    /// which decision records answer inside their detail, and `limit`, which counts decisions).
    /// The SQL text is assembled from constant fragments only; every value is bound.
    fn prepare_scan(
        &self,
        query: &AuditQuery,
        scope: Scope,
    ) -> Result<(rusqlite::CachedStatement<'_>, Vec<Box<dyn ToSql + '_>>)> {
        let mut conditions: Vec<&str> = Vec::new();
        let mut params: Vec<Box<dyn ToSql>> = Vec::new();
        match scope {
            Scope::Everything => {}
            Scope::FlagColumn(flag) => {
                conditions.push("flag = ?");
                params.push(Box::new(flag.to_string()));
            }
            Scope::Records { first_id, last_id } => {
                conditions.push("id BETWEEN ? AND ? AND flag IS NULL");
                params.push(Box::new(first_id));
                params.push(Box::new(last_id));
            }
        }
        let filters: [(&str, Option<Box<dyn ToSql>>); 6] = [
            (
                "context_key = ?",
                query.context.clone().map(|v| Box::new(v) as _),
            ),
            ("kind = ?", query.kind.clone().map(|v| Box::new(v) as _)),
            ("actor = ?", query.actor.clone().map(|v| Box::new(v) as _)),
            ("ts >= ?", query.since.clone().map(|v| Box::new(v) as _)),
            ("ts < ?", query.until.clone().map(|v| Box::new(v) as _)),
            (
                if query.ascending { "id > ?" } else { "id < ?" },
                query.cursor.map(|v| Box::new(v) as _),
            ),
        ];
        for (condition, value) in filters {
            if let Some(value) = value {
                conditions.push(condition);
                params.push(value);
            }
        }
        let mut sql = String::from(COLUMNS);
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(if query.ascending {
            " ORDER BY id ASC"
        } else {
            " ORDER BY id DESC"
        });
        Ok((self.conn.prepare_cached(&sql)?, params))
    }
}

fn read_row(row: &Row) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        id: row.get(0)?,
        ts: row.get(1)?,
        kind: row.get(2)?,
        actor: row.get(3)?,
        action: row.get(4)?,
        flag: row.get(5)?,
        context_key: row.get(6)?,
        result: row.get(7)?,
        source: row.get(8)?,
        reason: row.get(9)?,
        detail: row.get(10)?,
        prev_hash: row.get(11)?,
        hash: row.get(12)?,
    })
}

/// What a stored row shows a reviewer: itself, or for a decision record each requested
/// decision (only `flag`'s, when the query names one).
fn expand(row: AuditRow, flag: Option<&str>) -> Result<Vec<AuditRow>> {
    if let Some(own) = &row.flag {
        let shown = flag.is_none_or(|f| f == own);
        return Ok(if shown { vec![row] } else { Vec::new() });
    }
    let decisions = record::decode(&row.detail).map_err(|why| Error::UnreadableAuditRow {
        id: row.id,
        why: format!("detail: {why}"),
    })?;
    Ok(decisions
        .into_iter()
        .filter(|d| flag.is_none_or(|f| d.flag == f))
        .map(|d| AuditRow {
            flag: Some(d.flag),
            result: Some(i64::from(d.enabled)),
            source: Some(d.source),
            reason: Some(d.reason),
            ..row.clone()
        })
        .collect())
}
