//! What Sqlite writes inside a write transaction.

use super::Sqlite;
use crate::error::Result;
use crate::flag::Flag;
use crate::store::TokenRecord;
use crate::store::backend::{AssignmentRef, Writes};
use crate::store::sql;

impl Writes for Sqlite {
    fn insert_flag(
        &self,
        flag: &Flag,
        position: usize,
        created_at: &str,
        updated_at: &str,
    ) -> Result<()> {
        self.flags_changed();
        self.execute(
            sql::INSERT_FLAG,
            (
                &flag.name,
                flag.enabled,
                flag.rollout_pct,
                flag.sticky.as_str(),
                created_at,
                updated_at,
                flag.stale_exempt,
                position as i64,
            ),
        )
        .map(|_| ())
    }

    fn update_flag(&self, flag: &Flag, ts: &str) -> Result<()> {
        self.flags_changed();
        self.execute(
            sql::UPDATE_FLAG,
            (
                &flag.name,
                flag.enabled,
                flag.rollout_pct,
                flag.sticky.as_str(),
                ts,
                flag.stale_exempt,
            ),
        )
        .map(|_| ())
    }

    fn move_flag(&self, name: &str, position: usize) -> Result<()> {
        self.flags_changed();
        self.execute(sql::MOVE_FLAG, (name, position as i64))
            .map(|_| ())
    }

    fn replace_requirements(&self, flag: &str, requires: &[String]) -> Result<()> {
        self.flags_changed();
        self.execute(sql::DELETE_REQUIREMENTS, [flag])?;
        for (position, required) in requires.iter().enumerate() {
            self.execute(
                "INSERT INTO flag_dependencies (flag, requires, position) VALUES (?1, ?2, ?3)",
                (flag, required, position as i64),
            )?;
        }
        Ok(())
    }

    fn delete_flag(&self, name: &str) -> Result<usize> {
        self.flags_changed();
        let cleared = self.execute("DELETE FROM assignment_rows WHERE flag = ?1", [name])?;
        self.execute(sql::DELETE_FLAG, [name])?;
        Ok(cleared)
    }

    fn insert_assignments(&self, rows: &[AssignmentRef]) -> Result<()> {
        let ids = self.context_ids(rows.iter().map(|row| row.context_key))?;
        self.insert_numbered_assignments(rows, &ids)
    }

    fn delete_assignments(&self, flag: &str, context: Option<&str>) -> Result<usize> {
        self.execute(
            "DELETE FROM assignment_rows WHERE flag = ?1 \
                AND (?2 IS NULL OR context_id = (SELECT id FROM contexts WHERE key = ?2))",
            (flag, context),
        )
    }

    fn insert_record_range(&self, flags: &str, first_id: i64, last_id: i64) -> Result<()> {
        let set = self.numbered(
            &self.flag_sets,
            "INSERT INTO audit_flag_sets (flags) VALUES (?1) ON CONFLICT (flags) DO NOTHING",
            "SELECT id FROM audit_flag_sets WHERE flags = ?1",
            flags,
        )?;
        self.execute(
            "INSERT INTO audit_ranges (first_id, last_id, flag_set) VALUES (?1, ?2, ?3)",
            (first_id, last_id, set),
        )
        .map(|_| ())
    }

    fn insert_token(&self, token: &TokenRecord) -> Result<()> {
        self.execute(
            sql::INSERT_TOKEN,
            (
                &token.name,
                &token.sha256,
                &token.created_at,
                &token.revoked_at,
                token.role.as_str(),
            ),
        )
        .map(|_| ())
    }

    fn revoke_token(&self, name: &str, ts: &str) -> Result<bool> {
        Ok(self.execute(sql::REVOKE_TOKEN, (name, ts))? == 1)
    }

    fn rewrite_header(&self) -> Result<()> {
        // Setting user_version (which flagstore does not use) rewrites page 1 even when the
        // value is the same, so the commit appends a frame to the WAL.
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))?;
        self.conn.pragma_update(None, "user_version", version)?;
        Ok(())
    }
}
