//! What Postgres reads inside a transaction.

use std::collections::HashMap;

use postgres::types::ToSql;

use super::{Postgres, bucket_of, read_audit_row};
use crate::audit::AuditRow;
use crate::error::{Error, Result};
use crate::flag::{Flag, FlagSet};
use crate::store::backend::{FoundAssignment, PageCheck, RangeKey, Reads, RecordRange, Scan};
use crate::store::sql;
use crate::store::sticky_audit::{ContextItem, EvaluationRow};
use crate::store::stored::{ShownTime, link_page, link_rows, shown_hash};
use crate::store::{AssignmentRow, AssignmentTally, TokenRecord, query};

impl Reads for Postgres {
    fn load_flags(&self) -> Result<FlagSet> {
        // A write transaction's first reading was made in BEGIN's round trip.
        if let Some(flags) = self.flags.take() {
            return Ok(flags);
        }
        // One statement, where SQLite runs two: each statement is a round trip.
        let mut flags = FlagSet::new();
        let sql = "SELECT f.name, f.enabled, f.rollout_pct, f.sticky, f.stale_exempt, \
                          coalesce(array_agg(d.requires ORDER BY d.position) \
                                   FILTER (WHERE d.requires IS NOT NULL), '{}') \
                     FROM flags f LEFT JOIN flag_dependencies d ON d.flag = f.name \
                    GROUP BY f.name \
                    ORDER BY f.position, f.name COLLATE \"C\"";
        for row in self.query(sql, &[])? {
            let sticky: &str = row.get(3);
            flags.insert(Flag {
                name: row.get(0),
                enabled: row.get::<_, i32>(1) == 1,
                rollout_pct: row.get(2),
                sticky: sticky.parse()?,
                stale_exempt: row.get::<_, i32>(4) == 1,
                requires: row.get(5),
            });
        }
        Ok(flags)
    }

    fn flag_times(&self, name: &str) -> Result<Option<(String, String)>> {
        Ok(self
            .query_opt(sql::SELECT_FLAG_TIMES, &[&name])?
            .map(|row| (row.get(0), row.get(1))))
    }

    /// A whole transaction: each read is a round trip, which cost more than evaluating on
    /// another thread meanwhile saved (steps of 128 keys: 12% fewer evaluations/s).
    fn keys_per_step(&self) -> usize {
        usize::MAX
    }

    fn fetch_assignments(
        &self,
        flags: &[&str],
        keys: &[&str],
        found: &mut dyn FnMut(FoundAssignment<&str>),
    ) -> Result<()> {
        // One statement for the whole chunk: a round trip per key would cost more than the
        // evaluation itself.
        let key_index: HashMap<&str, usize> =
            keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        let flag_index: HashMap<&str, usize> =
            flags.iter().enumerate().map(|(i, f)| (*f, i)).collect();
        let rows = self.query(
            "SELECT context_key, flag, decision, bucket, rollout_pct, assigned_at \
               FROM assignments \
              WHERE flag = ANY($1) AND context_key = ANY($2) \
                AND context_hash = ANY(ARRAY(SELECT context_hash(k) FROM unnest($2::text[]) k))",
            &[&flags, &keys],
        )?;
        for row in rows {
            let (Some(&key), Some(&flag)) = (
                key_index.get(row.get::<_, &str>(0)),
                flag_index.get(row.get::<_, &str>(1)),
            ) else {
                continue;
            };
            found(FoundAssignment {
                key,
                flag,
                decision: row.get::<_, i32>(2) == 1,
                bucket: bucket_of(row.get(3)),
                rollout_pct: row.get(4),
                assigned_at: row.get(5),
            });
        }
        Ok(())
    }

    fn for_each_assignment(
        &self,
        flag: Option<&str>,
        context: Option<&str>,
        visit: &mut dyn FnMut(AssignmentRow) -> Result<()>,
    ) -> Result<()> {
        let mut client = self.client.borrow_mut();
        let rows = client
            .query_raw(
                "SELECT flag, context_key, decision, bucket, rollout_pct, assigned_at \
                   FROM assignments \
                  WHERE ($1::text IS NULL OR flag = $1) AND ($2::text IS NULL OR context_key = $2) \
                  ORDER BY flag COLLATE \"C\", context_key COLLATE \"C\"",
                [&flag as &(dyn ToSql + Sync), &context],
            )
            .map_err(|e| self.fail(e))?;
        let mut rows = rows;
        use postgres::fallible_iterator::FallibleIterator;
        while let Some(row) = rows.next().map_err(|e| self.fail(e))? {
            visit(AssignmentRow {
                flag: row.get(0),
                context_key: row.get(1),
                decision: row.get::<_, i32>(2) == 1,
                bucket: bucket_of(row.get(3)),
                rollout_pct: row.get(4),
                assigned_at: row.get(5),
            })?;
        }
        Ok(())
    }

    fn audit_tail(&self) -> Result<Option<(i64, String)>> {
        if let Some(tail) = self.tail.borrow().as_ref() {
            return Ok(tail.clone());
        }
        Ok(self
            .query_opt(sql::SELECT_AUDIT_TAIL, &[])?
            .map(|row| (row.get(0), row.get(1))))
    }

    /// Read from `audit_rows` as `audit_page` reads: the view would look up each row's link
    /// in the table.
    fn audit_links(&self, after_id: i64, limit: i64) -> Result<Vec<(i64, String, String)>> {
        let mut stored: Vec<(i64, Option<String>, String)> = Vec::new();
        self.query_each(
            "SELECT id, prev_hash, hash FROM audit_rows WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after_id, &limit],
            |row| {
                let id: i64 = row.get(0);
                stored.push((id, row.get(1), shown_hash(id, row.get(2))?));
                Ok(())
            },
        )?;
        // Linked once the rows are read: the connection serves one query at a time.
        link_rows(stored, |id| self.audit_hash(id))
    }

    /// Read from `audit_rows` and shown as the view shows it, as `audit_page` reads.
    fn audit_hash(&self, id: i64) -> Result<Option<String>> {
        self.query_opt("SELECT hash FROM audit_rows WHERE id = $1", &[&id])?
            .map(|row| shown_hash(id, row.get(0)))
            .transpose()
    }

    fn flag_sets(&self) -> Result<Vec<(i64, String)>> {
        Ok(self
            .query("SELECT id, flags FROM audit_flag_sets ORDER BY id", &[])?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }

    fn set_ranges(
        &self,
        flag_set: i64,
        ascending: bool,
        cursor: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, i64)>> {
        let sql = query::set_ranges_sql(ascending, |n| format!("${n}"));
        let bound = query::set_ranges_bound(ascending, cursor);
        Ok(self
            .query(&sql, &[&flag_set, &bound, &(limit as i64)])?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }

    fn record_ranges(&self, after: RangeKey, limit: usize) -> Result<Vec<RecordRange>> {
        let sql = query::record_ranges_sql(|n| format!("${n}"));
        Ok(self
            .query(&sql, &[&after.0, &after.1, &after.2, &(limit as i64)])?
            .iter()
            .map(|row| RecordRange {
                first_id: row.get(0),
                last_id: row.get(1),
                flag_set: row.get(2),
                flags: row.get(3),
            })
            .collect())
    }

    fn audit_page(&self, scan: &Scan) -> Result<Vec<AuditRow>> {
        let (sql, params) = query::scan_sql(
            scan,
            |n| format!("${n}"),
            query::ContextCondition {
                around_key: ("context_key = ", ""),
                partition: None,
            },
            SELECT_AUDIT_ROWS,
        );
        let values: Vec<Box<dyn ToSql + Sync>> = params
            .iter()
            .map(|p| match p {
                query::Param::Int(v) => Box::new(*v) as Box<dyn ToSql + Sync>,
                query::Param::Text(v) => Box::new(v.to_string()),
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(AsRef::as_ref).collect();
        let mut page = Vec::with_capacity(scan.limit);
        let mut actors = Vec::with_capacity(scan.limit);
        let mut stored_links = Vec::with_capacity(scan.limit);
        let mut times = ShownTime::default();
        self.query_each(&sql, &refs, |row| {
            let (audit_row, actor, stored_link) = read_audit_row(row, &mut times)?;
            page.push(audit_row);
            actors.push(actor);
            stored_links.push(stored_link);
            Ok(())
        })?;
        self.name_actors(&mut page, &actors)?;
        link_page(&mut page, stored_links, |id| self.audit_hash(id))?;
        Ok(page)
    }

    fn audit_len(&self) -> Result<i64> {
        Ok(self
            .query(sql::COUNT_AUDIT_ROWS, &[])?
            .first()
            .map_or(0, |row| row.get(0)))
    }

    fn check_storage(&self, _scope: PageCheck) -> Result<&'static str> {
        // PostgreSQL guards its own pages (with data checksums, when the cluster has them);
        // a client cannot check them without the amcheck extension and superuser rights.
        Ok("pages left to PostgreSQL")
    }

    fn broken_reference(&self) -> Result<Option<(String, String, String)>> {
        // PostgreSQL enforces the other foreign keys on every write (only a superuser
        // disabling its triggers could break one); an assignment's flag is the writer's to
        // prove since schema 15, and so this check's.
        let orphan = self
            .client
            .borrow_mut()
            .query_opt(
                "SELECT a.flag, a.context_key FROM assignments a \
                  WHERE NOT EXISTS (SELECT 1 FROM flags f WHERE f.name = a.flag) LIMIT 1",
                &[],
            )
            .map_err(|e| self.fail(e))?;
        Ok(orphan.map(|row| {
            let (flag, key): (String, String) = (row.get(0), row.get(1));
            (
                "assignments".to_string(),
                format!("(flag {flag:?}, context_key {key:?})"),
                "flags".to_string(),
            )
        }))
    }

    fn for_each_context_item(
        &self,
        visit: &mut dyn FnMut(bool, ContextItem) -> Result<()>,
    ) -> Result<()> {
        // Sorted by the server (in its work memory, spilling to disk), streamed here: the
        // client holds one row at a time. Assignments come first in a context (id NULL).
        let mut client = self.client.borrow_mut();
        let mut rows = client
            .query_raw(
                "SELECT * FROM (
                     SELECT context_key, id, flag, ts, result::bigint AS value, reason, detail,
                            NULL::integer AS bucket, NULL::double precision AS rollout_pct
                       FROM audit_log WHERE kind = 'evaluation' AND context_key IS NOT NULL
                     UNION ALL
                     SELECT context_key, NULL, flag, assigned_at, decision::bigint, NULL, NULL,
                            bucket, rollout_pct
                       FROM assignments) items
                  ORDER BY context_key COLLATE \"C\", id NULLS FIRST",
                std::iter::empty::<&(dyn ToSql + Sync)>(),
            )
            .map_err(|e| self.fail(e))?;
        use postgres::fallible_iterator::FallibleIterator;
        let mut context: Option<String> = None;
        while let Some(row) = rows.next().map_err(|e| self.fail(e))? {
            let key: String = row.get(0);
            let starts_context = context.as_deref() != Some(key.as_str());
            let item = match row.get::<_, Option<i64>>(1) {
                Some(id) => ContextItem::Record(EvaluationRow {
                    id,
                    flag: row.get(2),
                    ts: row.get(3),
                    context_key: key.clone(),
                    result: row.get(4),
                    reason: row.get(5),
                    detail: row.get(6),
                }),
                None => ContextItem::Assignment(AssignmentRow {
                    flag: row.get(2),
                    assigned_at: row.get(3),
                    context_key: key.clone(),
                    decision: row.get::<_, i64>(4) == 1,
                    bucket: bucket_of(row.get(7)),
                    rollout_pct: row.get(8),
                }),
            };
            if starts_context {
                context = Some(key);
            }
            visit(starts_context, item)?;
        }
        Ok(())
    }

    fn misfiled_context(&self) -> Result<Option<(i64, Option<String>)>> {
        Ok(None)
    }

    fn space_by_object(&self) -> Result<Vec<(String, i64)>> {
        Ok(self
            .query(
                "SELECT c.relname::text, pg_relation_size(c.oid) FROM pg_class c \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i') \
                  ORDER BY c.relname",
                &[],
            )?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }

    fn log_position(&self) -> Result<Option<u64>> {
        Ok(self
            .query("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])?
            .first()
            .and_then(|row| u64::try_from(row.get::<_, i64>(0)).ok()))
    }

    fn assignment_count(&self) -> Result<i64> {
        Ok(self
            .query("SELECT count(*) FROM assignments", &[])?
            .first()
            .map_or(0, |row| row.get(0)))
    }

    fn assignment_tally(&self, flag: &str, rollout_pct: f64) -> Result<AssignmentTally> {
        let rows = self.query(
            &query::tally_sql("assignments", |n| format!("${n}")),
            &[&flag, &rollout_pct],
        )?;
        Ok(rows
            .first()
            .map_or_else(AssignmentTally::default, |row| AssignmentTally {
                on: row.get(0),
                off: row.get(1),
                kept_from_rollout: row.get(2),
            }))
    }

    fn token_changes(&self) -> Result<Vec<(i64, String, String, String)>> {
        Ok(self
            .query(sql::SELECT_TOKEN_CHANGES, &[])?
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
            .collect())
    }

    fn may_read_token_digests(&self) -> Result<bool> {
        Ok(self
            .query(
                "SELECT has_column_privilege('api_tokens', 'token_sha256', 'SELECT')",
                &[],
            )?
            .first()
            .is_some_and(|row| row.get(0)))
    }

    fn list_tokens(&self, digests: bool) -> Result<Vec<TokenRecord>> {
        self.query(
            if digests {
                "SELECT name, token_sha256, created_at, revoked_at, role FROM api_tokens \
                 ORDER BY name COLLATE \"C\""
            } else {
                "SELECT name, '', created_at, revoked_at, role FROM api_tokens \
                 ORDER BY name COLLATE \"C\""
            },
            &[],
        )?
        .iter()
        .map(|row| {
            Ok(TokenRecord {
                name: row.get(0),
                sha256: row.get(1),
                role: row.get::<_, &str>(4).parse()?,
                created_at: row.get(2),
                revoked_at: row.get(3),
            })
        })
        .collect()
    }
}

/// The rows of `audit_log` as `audit_rows` stores them (schema 16), for `scan_sql`'s
/// conditions on the view's columns (`ts`, `actor`): the time, link and hash are read as
/// stored and shown by `read_audit_row` and `link_page`, as SQLite's reader does (the view
/// would look up each row's link in the table, and `name_actors` each row's actor: a lookup
/// per row made a walk of 1M rows a quarter slower). Columns: id, ts_ms, ts_text, actor_id,
/// action, flag, context_key, result, source, reason, detail, prev_hash (stored), hash
/// (stored).
const SELECT_AUDIT_ROWS: &str = "WITH audit_log AS ( \
       SELECT r.*, coalesce(r.ts_text, audit_time(r.ts_ms)) AS ts, \
              (SELECT a.name FROM actors a WHERE a.id = r.actor_id) AS actor \
         FROM audit_rows r) \
     SELECT id, ts_ms, ts_text, actor_id, action, flag, context_key, result, source, reason, \
            detail, prev_hash, hash \
       FROM audit_log";

impl Postgres {
    /// Each row of `page` named by its actor's number in `actors`, all of a page's in one
    /// query (see [`SELECT_AUDIT_ROWS`]).
    fn name_actors(&self, page: &mut [AuditRow], actors: &[i32]) -> Result<()> {
        let mut wanted = actors.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut names: HashMap<i32, std::sync::Arc<str>> = HashMap::with_capacity(wanted.len());
        self.query_each(
            "SELECT id, name FROM actors WHERE id = ANY($1)",
            &[&wanted],
            |row| {
                names.insert(row.get(0), row.get::<_, &str>(1).into());
                Ok(())
            },
        )?;
        for (row, actor) in page.iter_mut().zip(actors) {
            row.actor = names
                .get(actor)
                .cloned()
                .ok_or_else(|| Error::UnreadableAuditRow {
                    id: row.id,
                    why: "actor holds NULL, not text".to_string(),
                })?;
        }
        Ok(())
    }
}
