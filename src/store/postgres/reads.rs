//! What Postgres reads inside a transaction.

use std::collections::HashMap;

use postgres::types::ToSql;

use super::{Postgres, bucket_of, read_audit_row};
use crate::audit::AuditRow;
use crate::error::Result;
use crate::flag::{Flag, FlagSet};
use crate::store::backend::{FoundAssignment, Reads, Scan};
use crate::store::sql;
use crate::store::{AssignmentRow, AssignmentTally, Misrecorded, TokenRecord, query};

/// Every assignment a record says it stored, as `(flag, context_key, ts, id)` of the record:
/// a decision record's decisions marked `assigned`, parsed once per record, and the list a
/// schema-1 evaluation row (copied from SQLite) keeps.
macro_rules! stored_assignments {
    () => {
        "SELECT d ->> 'flag' AS flag, l.context_key, l.ts, l.id FROM audit_log l
          CROSS JOIN LATERAL jsonb_array_elements(
                CASE jsonb_typeof(l.detail::jsonb -> 'decisions')
                WHEN 'array' THEN l.detail::jsonb -> 'decisions' END) d
          WHERE l.kind = 'evaluation' AND l.flag IS NULL AND d ->> 'assigned' = '1'
         UNION ALL
         SELECT s, l.context_key, l.ts, l.id FROM audit_log l
          CROSS JOIN LATERAL jsonb_array_elements_text(
                CASE jsonb_typeof(l.detail::jsonb -> 'assigned')
                WHEN 'array' THEN l.detail::jsonb -> 'assigned' END) s
          WHERE l.kind = 'evaluation' AND l.flag IS NOT NULL"
    };
}

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

    fn audit_links(&self, after_id: i64, limit: i64) -> Result<Vec<(i64, String, String)>> {
        Ok(self
            .query(sql::SELECT_AUDIT_LINKS, &[&after_id, &limit])?
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect())
    }

    fn audit_hash(&self, id: i64) -> Result<Option<String>> {
        Ok(self
            .query_opt(sql::SELECT_AUDIT_HASH, &[&id])?
            .map(|row| row.get(0)))
    }

    fn flag_ranges(
        &self,
        flag: &str,
        ascending: bool,
        cursor: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, i64)>> {
        let sql = query::flag_ranges_sql(ascending, |n| format!("${n}"));
        let bound = query::flag_ranges_bound(ascending, cursor);
        Ok(self
            .query(&sql, &[&flag, &bound, &(limit as i64)])?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }

    fn ranges_by_first_id(
        &self,
        after: (i64, &str),
        limit: usize,
    ) -> Result<Vec<(String, i64, i64)>> {
        let sql = query::ranges_by_first_id_sql(|n| format!("${n}"));
        Ok(self
            .query(&sql, &[&after.0, &after.1, &(limit as i64)])?
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect())
    }

    fn audit_page(&self, scan: &Scan) -> Result<Vec<AuditRow>> {
        let (sql, params) = query::scan_sql(scan, |n| format!("${n}"), ("context_key = ", ""));
        let values: Vec<Box<dyn ToSql + Sync>> = params
            .iter()
            .map(|p| match p {
                query::Param::Int(v) => Box::new(*v) as Box<dyn ToSql + Sync>,
                query::Param::Text(v) => Box::new(v.to_string()),
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(AsRef::as_ref).collect();
        Ok(self
            .query(&sql, &refs)?
            .iter()
            .map(read_audit_row)
            .collect())
    }

    fn audit_len(&self) -> Result<i64> {
        Ok(self
            .query(sql::COUNT_AUDIT_ROWS, &[])?
            .first()
            .map_or(0, |row| row.get(0)))
    }

    fn check_storage(&self, _quick: bool) -> Result<&'static str> {
        // PostgreSQL guards its own pages (with data checksums, when the cluster has them);
        // a client cannot check them without the amcheck extension and superuser rights.
        Ok("pages left to PostgreSQL")
    }

    fn broken_reference(&self) -> Result<Option<(String, String, String)>> {
        // PostgreSQL enforces foreign keys on every write; only a superuser disabling its
        // triggers could break one, and the audit chain records no such thing to check.
        Ok(None)
    }

    fn unaudited_assignment(&self) -> Result<Option<(String, String)>> {
        Ok(self
            .query_opt(
                // Every (flag, context, time) a record says it stored, parsed once per record
                // and set-subtracted: as NOT EXISTS the planner looked each assignment up in
                // turn, 7 minutes for 100,000.
                concat!(
                    "WITH stored AS (",
                    stored_assignments!(),
                    ") SELECT flag, context_key FROM (
                         SELECT flag, context_key, assigned_at FROM assignments
                         EXCEPT
                         SELECT flag, context_key, ts FROM stored) unaudited
                      LIMIT 1"
                ),
                &[],
            )?
            .map(|row| (row.get(0), row.get(1))))
    }

    fn misfiled_context(&self) -> Result<Option<(i64, Option<String>)>> {
        Ok(None)
    }

    fn lost_assignment(&self) -> Result<Option<(String, String, i64)>> {
        Ok(self
            .query_opt(
                // As in unaudited_assignment, set operations first; the few stored decisions
                // the table lacks are then matched with the change rows that may explain it.
                concat!(
                    "WITH stored AS MATERIALIZED (",
                    stored_assignments!(),
                    "), missing AS (
                         SELECT flag, context_key FROM stored
                         EXCEPT
                         SELECT flag, context_key FROM assignments)
                     SELECT s.flag, s.context_key, s.id
                       FROM missing m
                       JOIN stored s ON s.flag = m.flag AND s.context_key = m.context_key
                      WHERE ",
                    sql::not_removed_later!(),
                    " ORDER BY s.id LIMIT 1"
                ),
                &[],
            )?
            .map(|row| (row.get(0), row.get(1), row.get(2))))
    }

    fn misrecorded_assignment(&self) -> Result<Option<Misrecorded>> {
        Ok(self
            .query_opt(
                // As in unaudited_assignment, set operations first: joined directly, the
                // planner looked each assignment up in turn (10 minutes for 40,000). The few
                // assignments that differ are then matched with their records.
                "WITH stored AS MATERIALIZED (
                     SELECT d ->> 'flag' AS flag, l.context_key, l.ts, l.id,
                            (d ->> 'result')::bigint AS decision, (d ->> 'bucket')::bigint AS bucket,
                            (d ->> 'rollout_pct')::double precision AS rollout_pct
                       FROM audit_log l
                      CROSS JOIN LATERAL jsonb_array_elements(
                            CASE jsonb_typeof(l.detail::jsonb -> 'decisions')
                            WHEN 'array' THEN l.detail::jsonb -> 'decisions' END) d
                      WHERE l.kind = 'evaluation' AND l.flag IS NULL AND d ->> 'assigned' = '1'),
                 differing AS (
                     SELECT flag, context_key, assigned_at AS ts, decision::bigint AS decision,
                            bucket::bigint AS bucket, rollout_pct
                       FROM assignments
                     EXCEPT
                     SELECT flag, context_key, ts, decision, bucket, rollout_pct FROM stored)
                 SELECT w.flag, w.context_key, w.decision, w.bucket, w.rollout_pct,
                        s.id, s.decision, s.bucket, s.rollout_pct
                   FROM differing w
                   JOIN stored s ON s.flag = w.flag AND s.context_key = w.context_key
                                AND s.ts = w.ts
                  LIMIT 1",
                &[],
            )?
            .map(|row| Misrecorded {
                flag: row.get(0),
                context_key: row.get(1),
                stored: (row.get(2), row.get(3), row.get(4)),
                record_id: row.get(5),
                recorded: (row.get(6), row.get(7), row.get(8)),
            }))
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
