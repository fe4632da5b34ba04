//! What Sqlite reads inside a transaction.

use rusqlite::types::{FromSql, ValueRef};
use rusqlite::{OptionalExtension, Row};

use super::Sqlite;
use crate::audit::AuditRow;
use crate::error::{Error, Result};
use crate::flag::{Flag, FlagSet};
use crate::store::backend::{FoundAssignment, PageCheck, RangeKey, Reads, RecordRange, Scan};
use crate::store::sql;
use crate::store::sticky_audit::{ContextItem, EvaluationRow};
use crate::store::stored::{ShownTime, link_page, link_rows};
use crate::store::{AssignmentRow, AssignmentTally, TokenRecord, query};

impl Reads for Sqlite {
    fn load_flags(&self) -> Result<FlagSet> {
        // Read first: flags read after it are at least as new as the version they are kept
        // under, even outside a transaction.
        let version: i64 = self
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |row| row.get(0))?;
        if let Some((read_at, flags)) = &*self.flags_read.borrow()
            && *read_at == version
        {
            return Ok(flags.clone());
        }
        let flags = self.read_flags()?;
        *self.flags_read.borrow_mut() = Some((version, flags.clone()));
        Ok(flags)
    }

    fn flag_times(&self, name: &str) -> Result<Option<(String, String)>> {
        Ok(self
            .conn
            .prepare_cached(sql::SELECT_FLAG_TIMES)?
            .query_row([name], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?)
    }

    /// Enough that handing a step between threads costs little, few enough that the threads
    /// start working together early: `bench eval` hits 597-616k evaluations/s in steps of
    /// 128 keys, 464-502k in one step of a whole transaction (1,000 keys).
    fn keys_per_step(&self) -> usize {
        128
    }

    fn fetch_assignments(
        &self,
        flags: &[&str],
        keys: &[&str],
        found: &mut dyn FnMut(FoundAssignment<&str>),
    ) -> Result<()> {
        let mut lookup = self.conn.prepare_cached(
            "SELECT a.context_id, a.flag, a.decision, a.bucket, a.rollout_pct, a.assigned_at \
               FROM contexts c JOIN assignment_rows a ON a.context_id = c.id \
              WHERE c.key = ?1",
        )?;
        let columns = AssignmentColumns::IN_ORDER;
        let mut shown = ShownTime::default();
        for (key, context) in keys.iter().enumerate() {
            let mut rows = lookup.query([context])?;
            while let Some(row) = rows.next()? {
                let name = columns.text(row, columns.flag)?;
                // A handful of names: a scan beats hashing each row's.
                let Some(flag) = flags.iter().position(|wanted| *wanted == name) else {
                    continue;
                };
                found(FoundAssignment {
                    key,
                    flag,
                    decision: columns.read(row, columns.decision)?,
                    bucket: columns.read(row, columns.bucket)?,
                    rollout_pct: columns.read(row, columns.rollout_pct)?,
                    assigned_at: columns.time(row, &mut shown)?,
                });
            }
        }
        Ok(())
    }

    fn for_each_assignment(
        &self,
        flag: Option<&str>,
        context: Option<&str>,
        visit: &mut dyn FnMut(AssignmentRow) -> Result<()>,
    ) -> Result<()> {
        // Flag by flag, each read in key order by walking contexts' key index (CROSS JOIN keeps
        // contexts the outer loop), so that no listing sorts, however many assignments there are.
        let flags: Vec<String> = match flag {
            Some(flag) => vec![flag.to_string()],
            None => self
                .conn
                .prepare("SELECT name FROM flags ORDER BY name")?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?,
        };
        let of_context = if context.is_some() {
            "AND c.key = ?2"
        } else {
            ""
        };
        let mut statement = self.conn.prepare(&format!(
            "SELECT c.id, a.flag, a.decision, a.bucket, a.rollout_pct, a.assigned_at, c.key \
               FROM contexts c CROSS JOIN assignment_rows a ON a.context_id = c.id \
              WHERE a.flag = ?1 {of_context} ORDER BY c.key"
        ))?;
        let columns = AssignmentColumns::IN_ORDER;
        let mut shown = ShownTime::default();
        for flag in &flags {
            statement.raw_bind_parameter(1, flag)?;
            if let Some(context) = context {
                statement.raw_bind_parameter(2, context)?;
            }
            let mut rows = statement.raw_query();
            while let Some(row) = rows.next()? {
                let key = context_column(row, row.get(0)?, 6)?;
                visit(columns.row(row, key, &mut shown)?)?;
            }
        }
        Ok(())
    }

    fn audit_tail(&self) -> Result<Option<(i64, String)>> {
        let mut statement = self.conn.prepare_cached(sql::SELECT_AUDIT_TAIL)?;
        let mut rows = statement.query([])?;
        rows.next()?
            .map(|row| {
                let id = row.get(0)?;
                Ok((id, audit_column(row, id, 1)?))
            })
            .transpose()
    }

    /// Read from `audit_rows` as `audit_page` reads (the view took 1.62 s for 1M rows' links,
    /// the table 0.25 s).
    fn audit_links(&self, after_id: i64, limit: i64) -> Result<Vec<(i64, String, String)>> {
        let mut statement = self.conn.prepare_cached(
            "SELECT id, prev_hash, hash FROM audit_rows WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let mut rows = statement.query([after_id, limit])?;
        let mut stored = Vec::new();
        while let Some(row) = rows.next()? {
            let id = row.get(0)?;
            stored.push((
                id,
                audit_column(row, id, 1)?,
                stored_hash(row.get_ref(2)?, id)?,
            ));
        }
        link_rows(stored, |id| self.audit_hash(id))
    }

    /// Read from `audit_rows` and shown as the view shows it, as `audit_page` reads.
    fn audit_hash(&self, id: i64) -> Result<Option<String>> {
        let mut lookup = self
            .conn
            .prepare_cached("SELECT hash FROM audit_rows WHERE id = ?1")?;
        let mut found = lookup.query([id])?;
        found
            .next()?
            .map(|row| stored_hash(row.get_ref(0)?, id))
            .transpose()
    }

    fn flag_sets(&self) -> Result<Vec<(i64, String)>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT id, flags FROM audit_flag_sets ORDER BY id")?;
        let sets = statement.query_map([], |row| Ok((row.get(0)?, set_text(row.get_ref(1)?))))?;
        Ok(sets.collect::<rusqlite::Result<_>>()?)
    }

    fn set_ranges(
        &self,
        flag_set: i64,
        ascending: bool,
        cursor: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, i64)>> {
        let sql = query::set_ranges_sql(ascending, |n| format!("?{n}"));
        let bound = query::set_ranges_bound(ascending, cursor);
        let mut statement = self.conn.prepare_cached(&sql)?;
        let ranges = statement.query_map((flag_set, bound, limit as i64), |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
        Ok(ranges.collect::<rusqlite::Result<_>>()?)
    }

    fn record_ranges(&self, after: RangeKey, limit: usize) -> Result<Vec<RecordRange>> {
        let sql = query::record_ranges_sql(|n| format!("?{n}"));
        let mut statement = self.conn.prepare_cached(&sql)?;
        let ranges = statement.query_map((after.0, after.1, after.2, limit as i64), |row| {
            Ok(RecordRange {
                first_id: row.get(0)?,
                last_id: row.get(1)?,
                flag_set: row.get(2)?,
                flags: match row.get_ref(3)? {
                    ValueRef::Null => None,
                    stored => Some(set_text(stored)),
                },
            })
        })?;
        Ok(ranges.collect::<rusqlite::Result<_>>()?)
    }

    fn audit_page(&self, scan: &Scan) -> Result<Vec<AuditRow>> {
        let (sql, params) =
            query::scan_sql(scan, |_| "?".to_string(), BY_CONTEXT, SELECT_AUDIT_ROWS);
        let mut statement = self.conn.prepare_cached(&sql)?;
        let values = params.iter().map(|p| match p {
            query::Param::Int(v) => rusqlite::types::Value::Integer(*v),
            query::Param::Text(v) => rusqlite::types::Value::Text(v.to_string()),
        });
        let mut rows = statement.query(rusqlite::params_from_iter(values))?;
        // A page is thousands of rows of 300 bytes: grown by doubling, it was copied as often.
        let mut page = Vec::with_capacity(scan.limit);
        let mut stored_links = Vec::with_capacity(scan.limit);
        let mut shown = ShownColumns::default();
        while let Some(row) = rows.next()? {
            let id = row.get(0)?;
            let action: Option<String> = audit_column(row, id, 3)?;
            stored_links.push(audit_column::<Option<String>>(row, id, 10)?);
            page.push(AuditRow {
                id,
                ts: shown.time(row, id)?,
                kind: if action.is_some() {
                    "change"
                } else {
                    "evaluation"
                }
                .into(),
                actor: shown.actor(self, row, id)?,
                action,
                flag: audit_column(row, id, 4)?,
                context_key: audit_column(row, id, 5)?,
                result: audit_column(row, id, 6)?,
                source: audit_column(row, id, 7)?,
                reason: audit_column(row, id, 8)?,
                detail: audit_column(row, id, 9)?,
                prev_hash: String::new(),
                hash: stored_hash(row.get_ref(11)?, id)?,
            });
        }
        link_page(&mut page, stored_links, |id| self.audit_hash(id))?;
        Ok(page)
    }

    fn audit_len(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row(sql::COUNT_AUDIT_ROWS, [], |row| row.get(0))?)
    }

    fn check_storage(&self, scope: PageCheck) -> Result<&'static str> {
        let (pragmas, checked): (&[&str], _) = match scope {
            // What the chain's walk reads: the rows, and the actors their hashes name.
            PageCheck::AuditTrail => (
                &[
                    "PRAGMA quick_check(audit_rows)",
                    "PRAGMA quick_check(actors)",
                ],
                "the audit trail's pages sound",
            ),
            PageCheck::Everything => (&["PRAGMA integrity_check(1)"], "pages and indexes sound"),
        };
        // The rows' CHECK constraints hold less than the chain's hashes, which the walk beside
        // this checks: re-evaluating them for every row was a fifth of the page check's time.
        let skip_row_checks = scope == PageCheck::AuditTrail;
        if skip_row_checks {
            self.conn
                .pragma_update(None, "ignore_check_constraints", true)?;
        }
        let verdicts = pragmas
            .iter()
            .map(|pragma| {
                self.conn
                    .query_row(pragma, [], |row| row.get::<_, String>(0))
            })
            .find(|verdict| verdict.as_deref() != Ok("ok"));
        if skip_row_checks {
            self.conn
                .pragma_update(None, "ignore_check_constraints", false)?;
        }
        match verdicts.transpose()? {
            Some(problem) => Err(Error::Damaged {
                path: self.path.clone(),
                problem,
            }),
            None => Ok(checked),
        }
    }

    fn broken_reference(&self) -> Result<Option<(String, String, String)>> {
        let broken = self
            .conn
            .query_row("PRAGMA foreign_key_check", [], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Option<i64>>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .optional()?;
        let Some((table, rowid, parent)) = broken else {
            return Ok(None);
        };
        let row = match rowid {
            Some(rowid) => rowid.to_string(),
            None => self.primary_key_of_a_row_without(&table, &parent)?,
        };
        Ok(Some((table, row, parent)))
    }

    fn for_each_context_item(
        &self,
        visit: &mut dyn FnMut(bool, ContextItem) -> Result<()>,
    ) -> Result<()> {
        // Every record and assignment sorted by context number (assignments first in a
        // context: their id is NULL). Since schema 16 no index holds the records in that
        // order (`audit_log_context` is led by a partition of ids): the sort is of the whole
        // log, and spills to files past the page cache's size (kept in memory, it took 349 MB
        // for 1M records).
        match self.visit_context_items(visit) {
            Err(Error::Database(cause)) if cause.full => Err(Error::TemporaryDirectoryFull {
                path: self.path.clone(),
                dir: super::temporary_directory().display().to_string(),
            }),
            sorted => sorted,
        }
    }

    fn misfiled_context(&self) -> Result<Option<(i64, Option<String>)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT l.id, l.context_key FROM audit_log l
                   LEFT JOIN contexts c ON c.id = l.context_id
                  WHERE c.key IS NOT l.context_key
                  LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?)
    }

    fn space_by_object(&self) -> Result<Vec<(String, i64)>> {
        let mut statement = self
            .conn
            .prepare("SELECT name, pgsize FROM dbstat WHERE aggregate = TRUE ORDER BY name")?;
        let objects = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(objects)
    }

    fn log_position(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    fn assignment_count(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM assignment_rows", [], |row| row.get(0))?)
    }

    fn assignment_tally(&self, flag: &str, rollout_pct: f64) -> Result<AssignmentTally> {
        let sql = query::tally_sql("assignment_rows", |n| format!("?{n}"));
        let mut statement = self.conn.prepare_cached(&sql)?;
        Ok(
            statement.query_row(rusqlite::params![flag, rollout_pct], |row| {
                Ok(AssignmentTally {
                    on: row.get(0)?,
                    off: row.get(1)?,
                    kept_from_rollout: row.get(2)?,
                })
            })?,
        )
    }

    fn token_changes(&self) -> Result<Vec<(i64, String, String, String)>> {
        let mut statement = self.conn.prepare_cached(sql::SELECT_TOKEN_CHANGES)?;
        let mut rows = statement.query([])?;
        let mut changes = Vec::new();
        while let Some(row) = rows.next()? {
            let id = row.get(0)?;
            let column = |index| audit_column::<String>(row, id, index);
            changes.push((id, column(1)?, column(2)?, column(3)?));
        }
        Ok(changes)
    }

    fn may_read_token_digests(&self) -> Result<bool> {
        Ok(true)
    }

    fn list_tokens(&self, digests: bool) -> Result<Vec<TokenRecord>> {
        let mut statement = self.conn.prepare_cached(if digests {
            "SELECT name, token_sha256, created_at, revoked_at, role FROM api_tokens ORDER BY name"
        } else {
            "SELECT name, '', created_at, revoked_at, role FROM api_tokens ORDER BY name"
        })?;
        let mut rows = statement.query([])?;
        let mut tokens = Vec::new();
        while let Some(row) = rows.next()? {
            let named = |token| format!("the token named {token:?}");
            let text = |index| named_column::<String>(row, index, "api_tokens", named);
            tokens.push(TokenRecord {
                name: text(0)?,
                sha256: text(1)?,
                role: text(4)?.parse()?,
                created_at: text(2)?,
                revoked_at: named_column(row, 3, "api_tokens", named)?,
            });
        }
        Ok(tokens)
    }
}

impl Sqlite {
    /// See [`Reads::for_each_context_item`].
    fn visit_context_items(
        &self,
        visit: &mut dyn FnMut(bool, ContextItem) -> Result<()>,
    ) -> Result<()> {
        let mut statement = self.conn.prepare(
            "SELECT context_id, id, flag, ts_ms, context_key, result, reason, detail, NULL, NULL
               FROM audit_rows WHERE action IS NULL AND context_id IS NOT NULL
             UNION ALL
             SELECT a.context_id, NULL, a.flag, a.assigned_at, c.key, a.decision, NULL, NULL,
                    a.bucket, a.rollout_pct
               FROM assignment_rows a JOIN contexts c ON c.id = a.context_id
             ORDER BY 1, 2",
        )?;
        let mut rows = statement.query([])?;
        let mut context = None;
        let mut shown = ShownTime::default();
        while let Some(row) = rows.next()? {
            let number: i64 = row.get(0)?;
            let item = match row.get::<_, Option<i64>>(1)? {
                Some(id) => ContextItem::Record(EvaluationRow {
                    id,
                    flag: audit_column(row, id, 2)?,
                    ts: shown_time(&mut shown, row, 3, id)?.to_string(),
                    context_key: audit_column(row, id, 4)?,
                    result: audit_column(row, id, 5)?,
                    reason: audit_column(row, id, 6)?,
                    detail: audit_column(row, id, 7)?,
                }),
                None => ContextItem::Assignment(ASSIGNMENT_IN_UNION.row(
                    row,
                    context_column(row, number, 4)?,
                    &mut shown,
                )?),
            };
            visit(context.replace(number) != Some(number), item)?;
        }
        Ok(())
    }

    /// A table WITHOUT ROWID (assignment_rows, flag_dependencies) has no number by which
    /// `foreign_key_check` can name a row: its primary key names the first of its rows that
    /// refers to no row of `parent`, as `(column value, ...)`.
    fn primary_key_of_a_row_without(&self, table: &str, parent: &str) -> Result<String> {
        let quoted = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
        let key: Vec<String> = self
            .conn
            .prepare("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")?
            .query_map([table], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let pairs: Vec<(String, String)> = self
            .conn
            .prepare(
                "SELECT \"from\", \"to\" FROM pragma_foreign_key_list(?1) WHERE \"table\" = ?2",
            )?
            .query_map([table, parent], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        // Any one reference of the table to `parent` that fails: each is one column here.
        let missing = pairs
            .iter()
            .map(|(from, to)| {
                let (from, to, parent) = (quoted(from), quoted(to), quoted(parent));
                format!("NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.{to} = t.{from})")
            })
            .collect::<Vec<_>>()
            .join(" OR ");
        let columns: Vec<String> = key
            .iter()
            .map(|column| format!("t.{}", quoted(column)))
            .collect();
        let sql = format!(
            "SELECT {} FROM {} t WHERE {missing} LIMIT 1",
            columns.join(", "),
            quoted(table)
        );
        let values = self.conn.query_row(&sql, [], |row| {
            (0..key.len())
                .map(|index| {
                    Ok(match row.get_ref(index)? {
                        ValueRef::Text(text) => format!("{:?}", String::from_utf8_lossy(text)),
                        other => set_text(other),
                    })
                })
                .collect::<rusqlite::Result<Vec<String>>>()
        })?;
        let named: Vec<String> = key
            .iter()
            .zip(values)
            .map(|(column, value)| format!("{column} {value}"))
            .collect();
        Ok(format!("({})", named.join(", ")))
    }

    /// The flags as the tables hold them, in definition order.
    fn read_flags(&self) -> Result<FlagSet> {
        let mut requires: std::collections::HashMap<String, Vec<String>> = Default::default();
        let mut edges = self.conn.prepare_cached(
            "SELECT flag, requires FROM flag_dependencies ORDER BY flag, position",
        )?;
        let mut rows = edges.query([])?;
        while let Some(row) = rows.next()? {
            let text = |index| {
                let named = |flag| format!("a requirement of {flag:?}");
                named_column(row, index, "flag_dependencies", named)
            };
            requires.entry(text(0)?).or_default().push(text(1)?);
        }
        let mut statement = self.conn.prepare_cached(
            "SELECT name, enabled, rollout_pct, sticky, stale_exempt FROM flags \
                  ORDER BY position, name",
        )?;
        let mut rows = statement.query([])?;
        let mut flags = FlagSet::new();
        while let Some(row) = rows.next()? {
            let named = |flag| format!("the flag named {flag:?}");
            let name: String = named_column(row, 0, "flags", named)?;
            let sticky: String = row.get(3)?;
            flags.insert(Flag {
                requires: requires.remove(&name).unwrap_or_default(),
                enabled: row.get(1)?,
                rollout_pct: row.get(2)?,
                sticky: sticky.parse()?,
                stale_exempt: row.get(4)?,
                name,
            });
        }
        Ok(flags)
    }
}

/// A context's rows, found by its number in `audit_log_context`, which schema 16 leads by a
/// partition of 4,096 ids (see the migration).
pub(super) const BY_CONTEXT: query::ContextCondition = query::ContextCondition {
    around_key: ("context_id = (SELECT id FROM contexts WHERE key = ", ")"),
    partition: Some("id >> 12"),
};

/// The rows of `audit_log` as `audit_rows` stores them (schema 14), for `scan_sql`'s conditions
/// on the view's columns: the time, actor, hashes and kind are read as stored and shown by
/// [`ShownColumns`] and `Sqlite::previous_hash`, which is where reading the view spent its
/// time (SQLite's `strftime`, and a lookup per row for each link and actor: a walk of the
/// whole log took 2.7 times as long). Columns: id, ts_ms, actor_id, action, flag,
/// context_key, result, source, reason, detail, prev_hash (stored), hash (stored).
pub(super) const SELECT_AUDIT_ROWS: &str = "WITH audit_log AS ( \
       SELECT r.*, \
              CASE WHEN typeof(r.ts_ms) = 'integer' \
                   THEN strftime('%Y-%m-%dT%H:%M:%S', r.ts_ms / 1000, 'unixepoch') \
                        || printf('.%03dZ', r.ts_ms % 1000) \
                   ELSE r.ts_ms END AS ts, \
              (SELECT a.name FROM actors a WHERE a.id = r.actor_id) AS actor \
         FROM audit_rows r) \
     SELECT id, ts_ms, actor_id, action, flag, context_key, result, source, reason, detail, \
            prev_hash, hash \
       FROM audit_log";

/// Column `index` of audit row `id`, its `ts_ms`, as the view `audit_log` shows `ts`:
/// milliseconds in flagstore's form, text as it is.
fn shown_time(
    shown: &mut ShownTime,
    row: &Row,
    index: usize,
    id: i64,
) -> Result<std::sync::Arc<str>> {
    let ValueRef::Integer(ms) = row.get_ref(index)? else {
        return typed_column(row, index, |_, held| unreadable(id, "ts", &held));
    };
    shown
        .text(ms)
        .cloned()
        .ok_or_else(|| unreadable(id, "ts", &format!("{ms} milliseconds")))
}

/// What a page of audit rows shows of their stored times and actors, each shown once.
#[derive(Default)]
struct ShownColumns {
    time: ShownTime,
    actors: std::collections::HashMap<i64, std::sync::Arc<str>>,
}

impl ShownColumns {
    /// `ts` as the view shows it (see [`shown_time`]).
    fn time(&mut self, row: &Row, id: i64) -> Result<std::sync::Arc<str>> {
        shown_time(&mut self.time, row, 1, id)
    }

    /// The actor's name, from `actors` (append-only: read once a page).
    fn actor(&mut self, store: &Sqlite, row: &Row, id: i64) -> Result<std::sync::Arc<str>> {
        let number: i64 = audit_column(row, id, 2)?;
        if let Some(name) = self.actors.get(&number) {
            return Ok(name.clone());
        }
        let mut named = store
            .conn
            .prepare_cached("SELECT name FROM actors WHERE id = ?1")?;
        let mut names = named.query([number])?;
        let name: std::sync::Arc<str> = match names.next()? {
            Some(name) => typed_column(name, 0, |_, held| unreadable(id, "actor", &held))?,
            None => return Err(unreadable(id, "actor", "NULL")),
        };
        self.actors.insert(number, name.clone());
        Ok(name)
    }
}

/// A stored `hash` as the view shows it: 32 bytes in lowercase hex, text as it is.
fn stored_hash(stored: ValueRef, id: i64) -> Result<String> {
    match stored {
        ValueRef::Blob(bytes) if bytes.len() == 32 => Ok(crate::hex::lowercase(bytes)),
        ValueRef::Text(text) => std::str::from_utf8(text)
            .map(str::to_string)
            .map_err(|_| unreadable(id, "hash", "bytes that are not UTF-8")),
        other => Err(unreadable(id, "hash", &held(other))),
    }
}

/// Audit row `id`'s `column` holds `held`, which flagstore never stores there.
fn unreadable(id: i64, column: &str, held: &str) -> Error {
    Error::UnreadableAuditRow {
        id,
        why: format!("{column} holds {held}, not text"),
    }
}

/// Column `index` of audit row `id` (see [`typed_column`]).
fn audit_column<T: FromSql>(row: &Row, id: i64, index: usize) -> Result<T> {
    typed_column(row, index, |column, held| {
        let kept = match column {
            "result" => "an integer or NULL",
            _ => "text",
        };
        Error::UnreadableAuditRow {
            id,
            why: format!("{column} holds {held}, not {kept}"),
        }
    })
}

/// Where `for_each_context_item`'s union keeps an assignment's columns.
const ASSIGNMENT_IN_UNION: AssignmentColumns = AssignmentColumns {
    context: 0,
    flag: 2,
    assigned_at: 3,
    decision: 5,
    bucket: 8,
    rollout_pct: 9,
};

/// Where a query keeps the columns of an assignment, each read with its row named where it
/// holds a value of another type (see [`typed_column`]): its context number and flag.
#[derive(Clone, Copy)]
struct AssignmentColumns {
    context: usize,
    flag: usize,
    decision: usize,
    bucket: usize,
    rollout_pct: usize,
    assigned_at: usize,
}

impl AssignmentColumns {
    /// The context number, flag, decision, bucket, rollout and time, first and in that order.
    const IN_ORDER: AssignmentColumns = AssignmentColumns {
        context: 0,
        flag: 1,
        decision: 2,
        bucket: 3,
        rollout_pct: 4,
        assigned_at: 5,
    };

    fn row(&self, row: &Row, context_key: String, shown: &mut ShownTime) -> Result<AssignmentRow> {
        Ok(AssignmentRow {
            flag: self.text(row, self.flag)?.to_string(),
            context_key,
            decision: self.read(row, self.decision)?,
            bucket: self.read(row, self.bucket)?,
            rollout_pct: self.read(row, self.rollout_pct)?,
            assigned_at: self.time(row, shown)?.to_string(),
        })
    }

    /// `assigned_at` as the view `assignments` shows it (schema 15): milliseconds as
    /// flagstore writes times, text as it is.
    fn time<'a>(&self, row: &'a Row, shown: &'a mut ShownTime) -> Result<&'a str> {
        match row.get_ref(self.assigned_at)? {
            ValueRef::Integer(ms) => shown.text(ms).map(|text| &**text).ok_or_else(|| {
                self.unreadable(row, self.assigned_at, format!("{ms} milliseconds"))
            }),
            _ => self.text(row, self.assigned_at),
        }
    }

    fn read<T: FromSql>(&self, row: &Row, index: usize) -> Result<T> {
        typed_column(row, index, |_, held| self.unreadable(row, index, held))
    }

    /// Text as stored, borrowed: a batch reads a flag name for every key.
    fn text<'r>(&self, row: &'r Row, index: usize) -> Result<&'r str> {
        match row.get_ref(index)? {
            ValueRef::Text(bytes) => std::str::from_utf8(bytes)
                .map_err(|_| self.unreadable(row, index, "bytes that are not UTF-8".to_string())),
            other => Err(self.unreadable(row, index, held(other))),
        }
    }

    /// Column names are the query's own (a union's are its first part's), so each is named
    /// here by its place.
    fn unreadable(&self, row: &Row, index: usize, held: String) -> Error {
        let (column, kept) = match index {
            i if i == self.flag => ("flag", "text"),
            i if i == self.decision => ("decision", "an integer"),
            i if i == self.bucket => ("bucket", "an integer"),
            i if i == self.rollout_pct => ("rollout_pct", "a number"),
            _ => ("assigned_at", "text"),
        };
        let context = row.get_ref(self.context).map_or("?".to_string(), set_text);
        let flag = row.get_ref(self.flag).map_or("?".to_string(), stored_name);
        Error::UnreadableRow {
            table: "assignment_rows",
            row: format!("the assignment (context_id {context}, flag {flag:?})"),
            why: format!("{column} holds {held}, not {kept}"),
        }
    }
}

/// Column `index` of a row, the key of context number `id` (see [`typed_column`]).
fn context_column<T: FromSql>(row: &Row, id: i64, index: usize) -> Result<T> {
    typed_column(row, index, |_, held| Error::UnreadableRow {
        table: "contexts",
        row: format!("context {id}"),
        why: format!("key holds {held}, not text"),
    })
}

/// Column `index` of a row of `table` whose first column is its name (a flag's, a token's),
/// the row worded by `named` given that name (see [`typed_column`]).
fn named_column<T: FromSql>(
    row: &Row,
    index: usize,
    table: &'static str,
    named: impl FnOnce(String) -> String,
) -> Result<T> {
    typed_column(row, index, |column, held| {
        let name = row.get_ref(0).map_or("?".to_string(), stored_name);
        Error::UnreadableRow {
            table,
            row: named(name),
            why: format!("{column} holds {held}, not text"),
        }
    })
}

/// Column `index` of `row`. SQLite keeps a value of any type in any column, so one of a type
/// flagstore never stores there (an edit made by SQL) is named, by `unreadable` given the
/// column's name and what it holds, with its row and column, where the driver's error
/// ("Invalid column type Blob at index: 10, name: detail") named no row and stopped every
/// reader.
fn typed_column<T: FromSql>(
    row: &Row,
    index: usize,
    unreadable: impl FnOnce(&str, String) -> Error,
) -> Result<T> {
    row.get(index).map_err(|error| match error {
        rusqlite::Error::InvalidColumnType(_, column, _) => {
            let held = row.get_ref(index).map_or("NULL".to_string(), held);
            unreadable(&column, held)
        }
        // Text SQLite was handed without checking it (`CAST(X'FF' AS TEXT)`).
        rusqlite::Error::Utf8Error(..) => {
            let column = row.as_ref().column_name(index).unwrap_or("?");
            unreadable(column, "bytes that are not UTF-8".to_string())
        }
        other => other.into(),
    })
}

/// What a column holds, in words, where flagstore finds a type it never stores there.
fn held(value: ValueRef) -> String {
    match value {
        ValueRef::Blob(bytes) => blob_in_words(bytes),
        ValueRef::Integer(_) => "an integer".to_string(),
        ValueRef::Real(_) => "a real number".to_string(),
        ValueRef::Text(_) => "text".to_string(),
        ValueRef::Null => "NULL".to_string(),
    }
}

fn blob_in_words(bytes: &[u8]) -> String {
    match bytes.len() {
        1 => "a BLOB of 1 byte".to_string(),
        length => format!("a BLOB of {length} bytes"),
    }
}

/// A name as stored, whatever its type: enough to find its row.
fn stored_name(value: ValueRef) -> String {
    match value {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
            String::from_utf8_lossy(bytes).into_owned()
        }
        _ => "?".to_string(),
    }
}

/// A flag set's text as stored. SQLite keeps a value of any type in a TEXT column, and the
/// index's tables take inserts from roles that may not rewrite them: any other value is put in
/// words no reader takes for a list of names, so `check` names the set and queries by flag
/// read past it instead of failing on it.
fn set_text(stored: ValueRef) -> String {
    match stored {
        ValueRef::Text(text) => String::from_utf8_lossy(text).into_owned(),
        ValueRef::Blob(bytes) => blob_in_words(bytes),
        ValueRef::Integer(number) => number.to_string(),
        ValueRef::Real(number) => number.to_string(),
        ValueRef::Null => "NULL".to_string(),
    }
}
