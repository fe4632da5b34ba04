//! Reading the audit log as reviewers see it: one row per change and one per flag decision,
//! whether the decision was stored as a schema-1 row of its own or inside a decision record.
//!
//! Rows are read in pages by id (keyset), each page in a short read transaction of its own, so
//! a scan of any length costs the same deep in a large log as at its start, and neither a
//! statement nor a snapshot stays open while the caller works: a slow reader (an export to a
//! client that does not read) never keeps SQLite from restarting its WAL or PostgreSQL from
//! vacuuming. The log is append-only and a scan stops at the head it began with, so the pages
//! show exactly what one snapshot taken at the start would. A copy, which needs the other
//! tables from the same snapshot, reads its pages inside its own transaction.

use std::collections::VecDeque;

use super::ranges::parse_flag_set;
use super::{Reads, Scan, Scope, Store};
use crate::audit::{AuditQuery, AuditRow};
use crate::error::{Error, Result};
use crate::record;

/// Rows per page when streaming the whole log (verification, copies).
const PAGE_ROWS: usize = 5_000;

/// Ranges of a flag read at a time: a flag asked for in every request is in a range per
/// transaction, and a page of decisions usually needs only the newest few.
const RANGES_PER_READ: usize = 16;

/// A value bound to a scan's SQL.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Param<'a> {
    Int(i64),
    Text(&'a str),
}

/// How a backend finds a context's audit rows.
pub(super) struct ContextCondition {
    /// The text before and after the key's placeholder in the condition.
    pub(super) around_key: (&'static str, &'static str),
    /// Where the backend's index of rows by context is led by a partition of ids (SQLite,
    /// schema 16): the partition's expression. A scan by context orders by it ahead of `id`,
    /// the same order, so that the planner reads the index partition by partition, in order,
    /// instead of sorting every row of the context for a page of them.
    pub(super) partition: Option<&'static str>,
}

/// The SQL of one page of `scan`, with `placeholder(n)` for the n-th parameter (1-based), and
/// its parameters. The text is assembled from constant fragments only: every value is bound
/// but the kind, spelled as one of its two constants. `select` is what the conditions follow:
/// a SELECT of the backend's columns from a relation with `audit_log`'s columns (each
/// backend's `SELECT_AUDIT_ROWS`).
pub(super) fn scan_sql<'a>(
    scan: &Scan<'a>,
    placeholder: impl Fn(usize) -> String,
    by_context: ContextCondition,
    select: &str,
) -> (String, Vec<Param<'a>>) {
    let query = scan.query;
    let mut conditions: Vec<(&str, &str)> = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    match scan.scope {
        Scope::Everything => {}
        Scope::FlagColumn(flag) => {
            conditions.push(("flag = ", ""));
            params.push(Param::Text(flag));
        }
        Scope::Records { first_id, last_id } => {
            conditions.push(("flag IS NULL AND id >= ", ""));
            params.push(Param::Int(first_id));
            conditions.push(("id <= ", ""));
            params.push(Param::Int(last_id));
        }
        Scope::Through(last_id) => {
            conditions.push(("id <= ", ""));
            params.push(Param::Int(last_id));
        }
    }
    // The kind is spelled in the SQL, not bound, and by the action that makes a row a change:
    // a planner uses the partial index of change rows (schema 14) only for a query whose
    // WHERE names what the index's does. No row has another kind.
    let kind = query.kind.as_deref().map(|kind| match kind {
        "change" => "action IS NOT NULL",
        "evaluation" => "action IS NULL",
        _ => "false",
    });
    let text = |value: &'a Option<String>| value.as_deref().map(Param::Text);
    let filters = [
        (by_context.around_key, text(&query.context)),
        (("actor = ", ""), text(&query.actor)),
        (("ts >= ", ""), text(&query.since)),
        (("ts < ", ""), text(&query.until)),
        (
            (if query.ascending { "id > " } else { "id < " }, ""),
            scan.cursor.map(Param::Int),
        ),
        (("id <= ", ""), scan.through.map(Param::Int)),
    ];
    for (condition, value) in filters {
        if let Some(value) = value {
            conditions.push(condition);
            params.push(value);
        }
    }
    let mut sql = String::from(select);
    for (n, (before, after)) in conditions.iter().enumerate() {
        sql.push_str(if n == 0 { " WHERE " } else { " AND " });
        sql.push_str(before);
        sql.push_str(&placeholder(n + 1));
        sql.push_str(after);
    }
    if let Some(kind) = kind {
        sql.push_str(if conditions.is_empty() {
            " WHERE "
        } else {
            " AND "
        });
        sql.push_str(kind);
    }
    let direction = if query.ascending { "ASC" } else { "DESC" };
    sql.push_str(" ORDER BY ");
    if let (Some(partition), Some(_)) = (by_context.partition, &query.context) {
        sql.push_str(&format!("{partition} {direction}, "));
    }
    sql.push_str(&format!("id {direction} LIMIT {}", scan.limit));
    (sql, params)
}

/// The SQL counting a flag's assignments (parameters: flag, rollout_pct): on, off, and those
/// whose decision differs from their bucket's under that rollout, read from `table`.
pub(super) fn tally_sql(table: &str, placeholder: impl Fn(usize) -> String) -> String {
    format!(
        "SELECT count(*) FILTER (WHERE decision = 1), count(*) FILTER (WHERE decision = 0), \
                count(*) FILTER (WHERE decision <> \
                    CASE WHEN bucket < CAST({} AS DOUBLE PRECISION) THEN 1 ELSE 0 END) \
         FROM {table} WHERE flag = {}",
        placeholder(2),
        placeholder(1)
    )
}

/// The SQL listing a flag set's ranges after a cursor (parameters: set, cursor bound, limit),
/// with `placeholder(n)` for the n-th parameter: ascending, the ranges ending past the cursor;
/// descending, those starting before it; in order of `last_id`.
pub(super) fn set_ranges_sql(ascending: bool, placeholder: impl Fn(usize) -> String) -> String {
    let (condition, order) = if ascending {
        ("last_id >", "")
    } else {
        ("first_id <", " DESC")
    };
    // Ties on last_id only where ranges overlap (an edit); broken the same way everywhere.
    format!(
        "SELECT first_id, last_id FROM audit_ranges WHERE flag_set = {} AND {condition} {} \
         ORDER BY last_id{order}, first_id{order} LIMIT {}",
        placeholder(1),
        placeholder(2),
        placeholder(3)
    )
}

/// Up to `$4` ranges after the key `($1, $2, $3)`, in key order (the order of the records
/// they list), each with its set's text.
pub(super) fn record_ranges_sql(placeholder: impl Fn(usize) -> String) -> String {
    format!(
        "SELECT r.first_id, r.last_id, r.flag_set, s.flags \
           FROM audit_ranges r LEFT JOIN audit_flag_sets s ON s.id = r.flag_set \
          WHERE (r.first_id, r.last_id, r.flag_set) > ({}, {}, {}) \
          ORDER BY r.first_id, r.last_id, r.flag_set LIMIT {}",
        placeholder(1),
        placeholder(2),
        placeholder(3),
        placeholder(4)
    )
}

/// The cursor bound [`set_ranges_sql`] is given: no cursor reads from the start.
pub(super) fn set_ranges_bound(ascending: bool, cursor: Option<i64>) -> i64 {
    cursor.unwrap_or(if ascending { i64::MIN } else { i64::MAX })
}

/// The ranges of one set, read a few at a time from a cursor of its own.
struct SetRanges {
    flag_set: i64,
    buffered: VecDeque<(i64, i64)>,
    cursor: Option<i64>,
    exhausted: bool,
}

/// The ranges of every set that lists a flag, merged in the order of `last_id` (newest first
/// unless ascending). Each set is read again only when the merge has taken what was read of
/// it, so a scan costs a read per set to start and one per `RANGES_PER_READ` ranges after,
/// however many sets list the flag.
struct FlagRanges {
    sets: Vec<SetRanges>,
    ascending: bool,
}

impl FlagRanges {
    /// The ranges of the sets that list `flag`, after `cursor` (a set whose text is not a
    /// list of names lists none; `check` names it). Read once, as the scan begins:
    /// sets are append-only, so reading them again would add only sets written since, whose
    /// records the scan does not show (it stops at its head).
    fn new(reader: &Reader, flag: &str, ascending: bool, cursor: Option<i64>) -> Result<Self> {
        let sets = reader.read(|tx| tx.flag_sets())?;
        let listing = sets.into_iter().filter(|(_, text)| {
            parse_flag_set(text).is_some_and(|flags| flags.iter().any(|listed| listed == flag))
        });
        Ok(FlagRanges {
            sets: listing
                .map(|(flag_set, _)| SetRanges {
                    flag_set,
                    buffered: VecDeque::new(),
                    cursor,
                    exhausted: false,
                })
                .collect(),
            ascending,
        })
    }

    /// The next range, if any: its first and last record id.
    fn next(&mut self, reader: &Reader) -> Result<Option<(i64, i64)>> {
        let ascending = self.ascending;
        let mut starved = self
            .sets
            .iter_mut()
            .filter(|set| set.buffered.is_empty() && !set.exhausted)
            .peekable();
        if starved.peek().is_some() {
            reader.read(|tx| {
                for set in starved {
                    let read =
                        tx.set_ranges(set.flag_set, ascending, set.cursor, RANGES_PER_READ)?;
                    set.exhausted = read.len() < RANGES_PER_READ;
                    if let Some(&(first_id, last_id)) = read.last() {
                        set.cursor = Some(if ascending { last_id } else { first_id });
                    }
                    set.buffered.extend(read);
                }
                Ok(())
            })?;
        }
        let fronts = self
            .sets
            .iter_mut()
            .filter_map(|set| Some((set.buffered.front()?.1, set)));
        let next = match ascending {
            true => fronts.min_by_key(|(last_id, _)| *last_id),
            false => fronts.max_by_key(|(last_id, _)| *last_id),
        };
        Ok(next.and_then(|(_, set)| set.buffered.pop_front()))
    }
}

/// Where a scan reads its pages.
pub(super) enum Reader<'s> {
    /// Each page in a read transaction of its own, up to the head when the scan began.
    Short { store: &'s Store, through: i64 },
    /// Every page in one transaction the caller holds.
    Within(&'s dyn Reads),
}

impl<'s> Reader<'s> {
    /// Reads in short transactions what is in the log now.
    fn short(store: &'s Store) -> Result<Reader<'s>> {
        let head = store.read_transaction()?.audit_tail()?;
        Ok(Reader::Short {
            store,
            through: head.map_or(0, |(id, _)| id),
        })
    }

    fn through(&self) -> Option<i64> {
        match self {
            Reader::Short { through, .. } => Some(*through),
            Reader::Within(_) => None,
        }
    }

    fn read<T>(&self, step: impl FnOnce(&dyn Reads) -> Result<T>) -> Result<T> {
        match self {
            Reader::Short { store, .. } => step(&*store.read_transaction()?),
            Reader::Within(tx) => step(*tx),
        }
    }
}

/// The rows of one scope under a query, read a page at a time.
pub(super) struct Pages<'q> {
    scan: Scan<'q>,
    buffered: VecDeque<AuditRow>,
    exhausted: bool,
}

impl<'q> Pages<'q> {
    pub(super) fn new(
        query: &'q AuditQuery,
        scope: Scope<'q>,
        reader: &Reader,
        limit: usize,
    ) -> Pages<'q> {
        Pages {
            scan: Scan {
                query,
                scope,
                cursor: query.cursor,
                through: reader.through(),
                limit,
            },
            buffered: VecDeque::new(),
            exhausted: false,
        }
    }

    /// The next page of rows; empty at the end.
    pub(super) fn next_page(&mut self, reader: &Reader) -> Result<Vec<AuditRow>> {
        if self.exhausted {
            return Ok(Vec::new());
        }
        let page = reader.read(|tx| tx.audit_page(&self.scan))?;
        self.exhausted = page.len() < self.scan.limit;
        if let Some(last) = page.last() {
            self.scan.cursor = Some(last.id);
        }
        Ok(page)
    }

    fn peek(&mut self, reader: &Reader) -> Result<Option<&AuditRow>> {
        if self.buffered.is_empty() {
            let page = self.next_page(reader)?;
            self.buffered.extend(page);
        }
        Ok(self.buffered.front())
    }

    fn next(&mut self, reader: &Reader) -> Result<Option<AuditRow>> {
        self.peek(reader)?;
        Ok(self.buffered.pop_front())
    }
}

impl Store {
    /// Calls `visit` with every audit row as stored from row `first_id` on, in id order, up
    /// to the head when it began, streaming in pages, so a log of any size can be exported or
    /// verified in constant memory. Stops at the first error `visit` returns.
    pub fn for_each_audit_row<E: From<Error>>(
        &self,
        first_id: i64,
        mut visit: impl FnMut(AuditRow) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.for_each_audit_page(first_id, |page| page.into_iter().try_for_each(&mut visit))
    }

    /// [`Store::for_each_audit_row`] from row `first_id` on, a page of rows at a time.
    pub(super) fn for_each_audit_page<E: From<Error>>(
        &self,
        first_id: i64,
        mut visit: impl FnMut(Vec<AuditRow>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        // The start is a cursor, not a scope's `id >=`: SQLite bounds a rowid scan by one lower
        // bound only, and with both it took the scope's and scanned from there for every page.
        let everything = AuditQuery {
            ascending: true,
            cursor: Some(first_id - 1),
            ..AuditQuery::default()
        };
        let reader = Reader::short(self)?;
        let mut pages = Pages::new(&everything, Scope::Everything, &reader, PAGE_ROWS);
        loop {
            let page = pages.next_page(&reader)?;
            if page.is_empty() {
                return Ok(());
            }
            visit(page)?;
        }
    }

    /// The audit rows with ids from `first_id` to `last_id`, as stored (a decision record is
    /// one row, not one per decision): what a reviewer re-hashes to check them.
    pub fn stored_audit_rows(&self, first_id: i64, last_id: i64) -> Result<Vec<AuditRow>> {
        let everything = AuditQuery {
            ascending: true,
            cursor: Some(first_id - 1),
            ..AuditQuery::default()
        };
        let reader = Reader::short(self)?;
        let scope = Scope::Through(last_id);
        let mut pages = Pages::new(&everything, scope, &reader, PAGE_ROWS);
        let mut rows = Vec::new();
        while let Some(row) = pages.next(&reader)? {
            rows.push(row);
        }
        Ok(rows)
    }

    /// Streams what `query` selects, in id order (newest first unless `query.ascending`): a
    /// change or schema-1 evaluation row as stored, and each requested decision of a decision
    /// record as a row of its own (the record's id, time, actor, context, detail and hashes,
    /// the decision's flag, result, source and reason). `query.limit` counts those rows; a page
    /// ends at a record's end, so `cursor` (a row id) always continues where a page stopped.
    ///
    /// A flag's decision records are found through the ranges of the flag sets holding it
    /// (one range per write transaction), its changes through the index on (flag, id); a
    /// context's rows through its index on the context (SQLite: on the context's number,
    /// since schema 10).
    pub fn query_audit<E: From<Error>>(
        &self,
        query: &AuditQuery,
        visit: impl FnMut(AuditRow) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        query_audit(&Reader::short(self)?, query, visit)
    }
}

/// [`Store::query_audit`] from `reader`.
pub(super) fn query_audit<E: From<Error>>(
    reader: &Reader,
    query: &AuditQuery,
    mut visit: impl FnMut(AuditRow) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    query.check()?;
    // Rows read per page: enough for the page asked for when each row is one decision.
    let page = query.limit.map_or(PAGE_ROWS, |limit| {
        (limit.max(0) as usize + 1).min(PAGE_ROWS)
    });
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
        (Some(flag), None) => scan_flag(reader, query, flag, page, &mut show),
        _ => {
            let mut rows = Pages::new(query, Scope::Everything, reader, page);
            while let Some(row) = rows.next(reader)? {
                if !show(row)? {
                    break;
                }
            }
            Ok(())
        }
    }
}

/// A flag's rows: its changes and schema-1 evaluations (one index scan) merged by id with the
/// decision records of the transactions that were asked for it (a few ranges at a time).
fn scan_flag<E: From<Error>>(
    reader: &Reader,
    query: &AuditQuery,
    flag: &str,
    page: usize,
    show: &mut impl FnMut(AuditRow) -> std::result::Result<bool, E>,
) -> std::result::Result<(), E> {
    let mut by_column = Pages::new(query, Scope::FlagColumn(flag), reader, page);
    let with_records = query.kind.as_deref() != Some("change");
    let mut ranges = match with_records {
        true => Some(FlagRanges::new(
            reader,
            flag,
            query.ascending,
            query.cursor,
        )?),
        false => None,
    };
    let mut records: VecDeque<AuditRow> = VecDeque::new();
    // flagstore writes a flag's ranges disjoint; one added by SQL may overlap them (check names
    // its ids). Merged newest first by last id, every record such a range repeats was shown
    // before it and is skipped. Oldest first, a range starting before the one shown before it
    // may hold records owed before those already shown: refused, naming both.
    let mut shown_range: Option<(i64, i64)> = None;
    let mut last_record: Option<i64> = None;
    loop {
        if records.is_empty()
            && let Some(ranges) = ranges.as_mut()
            && let Some((first_id, last_id)) = ranges.next(reader)?
        {
            if first_id > last_id {
                continue;
            }
            if let Some((shown_first, shown_last)) = shown_range
                && query.ascending
                && first_id < shown_first
            {
                return Err(Error::OverlappingRanges {
                    flag: flag.to_string(),
                    first_id,
                    last_id,
                    shown_first,
                    shown_last,
                }
                .into());
            }
            shown_range = Some((first_id, last_id));
            let scope = Scope::Records { first_id, last_id };
            let mut in_range = Pages::new(query, scope, reader, PAGE_ROWS);
            while let Some(row) = in_range.next(reader)? {
                let repeated = last_record.is_some_and(|shown| match query.ascending {
                    true => row.id <= shown,
                    false => row.id >= shown,
                });
                if !repeated {
                    last_record = Some(row.id);
                    records.push_back(row);
                }
            }
            continue;
        }
        let take_column = match (by_column.peek(reader)?, records.front()) {
            (None, None) => return Ok(()),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(a), Some(b)) => (a.id < b.id) == query.ascending,
        };
        let row = if take_column {
            by_column.next(reader)?.expect("peeked above")
        } else {
            records.pop_front().expect("checked above")
        };
        if !show(row)? {
            return Ok(());
        }
    }
}

/// What a stored row shows a reviewer: itself, or for a decision record each requested
/// decision (only `flag`'s, when the query names one).
fn expand(row: AuditRow, flag: Option<&str>) -> Result<Vec<AuditRow>> {
    // A change (a token's names no flag) or a schema-1 evaluation: the row itself.
    if row.kind == "change" || row.flag.is_some() {
        let shown = flag.is_none_or(|f| row.flag.as_deref() == Some(f));
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
