//! The statements both backends run word for word, written once with SQLite's numbered
//! placeholders (`?1`); the PostgreSQL backend rewrites them to its own (`$1`) as it prepares
//! them. What differs between the two stays in each backend.

pub(super) const SELECT_FLAG_TIMES: &str =
    "SELECT created_at, updated_at FROM flags WHERE name = ?1";
pub(super) const INSERT_FLAG: &str = "INSERT INTO flags \
     (name, enabled, rollout_pct, sticky, created_at, updated_at, stale_exempt, position) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
pub(super) const MOVE_FLAG: &str = "UPDATE flags SET position = ?2 WHERE name = ?1";
pub(super) const UPDATE_FLAG: &str = "UPDATE flags SET enabled = ?2, rollout_pct = ?3, \
     sticky = ?4, updated_at = ?5, stale_exempt = ?6 WHERE name = ?1";
pub(super) const DELETE_REQUIREMENTS: &str = "DELETE FROM flag_dependencies WHERE flag = ?1";
pub(super) const DELETE_FLAG: &str = "DELETE FROM flags WHERE name = ?1";

pub(super) const SELECT_AUDIT_TAIL: &str =
    "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1";
pub(super) const COUNT_AUDIT_ROWS: &str = "SELECT count(*) FROM audit_log";

/// The token change rows, oldest first, through the partial index of schema 9.
pub(super) const SELECT_TOKEN_CHANGES: &str = "SELECT id, action, ts, detail FROM audit_log \
     WHERE action = 'token_create' OR action = 'token_revoke' ORDER BY id";

pub(super) const INSERT_TOKEN: &str = "INSERT INTO api_tokens \
     (name, token_sha256, created_at, revoked_at, role) VALUES (?1, ?2, ?3, ?4, ?5)";
pub(super) const REVOKE_TOKEN: &str =
    "UPDATE api_tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL";

pub(super) const SCHEMA_VERSION: &str = "SELECT max(version) FROM refinery_schema_history";
