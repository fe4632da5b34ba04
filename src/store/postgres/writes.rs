//! What Postgres writes inside a write transaction.

use super::{AssignmentColumns, Postgres, insert_assignments, record_range};
use crate::error::Result;
use crate::flag::Flag;
use crate::store::TokenRecord;
use crate::store::backend::{AssignmentRef, Writes};
use crate::store::sql;

impl Writes for Postgres {
    fn insert_flag(
        &self,
        flag: &Flag,
        position: usize,
        created_at: &str,
        updated_at: &str,
    ) -> Result<()> {
        self.flags.take();
        self.execute(
            sql::INSERT_FLAG,
            &[
                &flag.name,
                &i32::from(flag.enabled),
                &flag.rollout_pct,
                &flag.sticky.as_str(),
                &created_at,
                &updated_at,
                &i32::from(flag.stale_exempt),
                &position_column(position),
            ],
        )
        .map(|_| ())
    }

    fn update_flag(&self, flag: &Flag, ts: &str) -> Result<()> {
        self.flags.take();
        self.execute(
            sql::UPDATE_FLAG,
            &[
                &flag.name,
                &i32::from(flag.enabled),
                &flag.rollout_pct,
                &flag.sticky.as_str(),
                &ts,
                &i32::from(flag.stale_exempt),
            ],
        )
        .map(|_| ())
    }

    fn move_flag(&self, name: &str, position: usize) -> Result<()> {
        self.flags.take();
        self.execute(sql::MOVE_FLAG, &[&name, &position_column(position)])
            .map(|_| ())
    }

    fn replace_requirements(&self, flag: &str, requires: &[String]) -> Result<()> {
        self.flags.take();
        self.execute(sql::DELETE_REQUIREMENTS, &[&flag])?;
        self.execute(
            "INSERT INTO flag_dependencies (flag, requires, position) \
             SELECT $1, required, ordinality - 1 \
               FROM unnest($2::text[]) WITH ORDINALITY AS listed (required, ordinality)",
            &[&flag, &requires],
        )
        .map(|_| ())
    }

    fn delete_flag(&self, name: &str) -> Result<usize> {
        self.flags.take();
        let cleared = self.execute("DELETE FROM assignments WHERE flag = $1", &[&name])?;
        self.execute(sql::DELETE_FLAG, &[&name])?;
        Ok(cleared as usize)
    }

    fn insert_assignments(&self, rows: &[AssignmentRef]) -> Result<()> {
        self.execute(insert_assignments!(), &AssignmentColumns::of(rows).params())
            .map(|_| ())
    }

    fn delete_assignments(&self, flag: &str, context: Option<&str>) -> Result<usize> {
        Ok(self.execute(
            "DELETE FROM assignments WHERE flag = $1 AND ($2::text IS NULL OR context_key = $2)",
            &[&flag, &context],
        )? as usize)
    }

    fn insert_record_range(&self, flags: &str, first_id: i64, last_id: i64) -> Result<()> {
        self.execute(
            concat!("WITH ", record_range!("$1", "$2", "$3"), " SELECT 1"),
            &[&flags, &first_id, &last_id],
        )
        .map(|_| ())
    }

    fn insert_token(&self, token: &TokenRecord) -> Result<()> {
        self.execute(
            sql::INSERT_TOKEN,
            &[
                &token.name,
                &token.sha256,
                &token.created_at,
                &token.revoked_at,
                &token.role.as_str(),
            ],
        )
        .map(|_| ())
    }

    fn revoke_token(&self, name: &str, ts: &str) -> Result<bool> {
        Ok(self.execute(sql::REVOKE_TOKEN, &[&name, &ts])? == 1)
    }

    fn rewrite_header(&self) -> Result<()> {
        // The writer lock taken and released is the write: PostgreSQL's own disk is its own.
        Ok(())
    }
}

/// A position as its INTEGER column holds it; a store has far fewer flags than that holds.
fn position_column(position: usize) -> i32 {
    i32::try_from(position).unwrap_or(i32::MAX)
}
