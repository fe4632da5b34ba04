-- flagstore schema, version 1. Compliance reviewers read these tables with plain SQL, so names
-- and values are meant to be self-explanatory: booleans are 0/1, times are UTC RFC 3339 strings
-- with milliseconds ("2026-11-23T20:45:37.123Z"), which sort in time order as text.
-- CHECKs use OR chains, not IN lists: SQLite builds a temporary index for an IN list on every
-- row inserted, which cost a tenth of batch evaluation time.

CREATE TABLE flags (
    name        TEXT PRIMARY KEY NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
    enabled     INTEGER NOT NULL CHECK (enabled = 0 OR enabled = 1),
    rollout_pct REAL NOT NULL CHECK (rollout_pct BETWEEN 0 AND 100),
    sticky      TEXT NOT NULL DEFAULT 'on_only' CHECK (sticky = 'on_only' OR sticky = 'all' OR sticky = 'none'),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- "flag" requires "requires": flag is off for a context unless requires is on for it.
CREATE TABLE flag_dependencies (
    flag     TEXT NOT NULL REFERENCES flags (name) ON DELETE CASCADE,
    requires TEXT NOT NULL REFERENCES flags (name),
    PRIMARY KEY (flag, requires),
    CHECK (flag <> requires)
) WITHOUT ROWID;

CREATE INDEX flag_dependencies_requires ON flag_dependencies (requires);

-- The first stored rollout decision of a context for a flag, served again on later evaluations.
-- bucket and rollout_pct record why it was decided; deleting a flag deletes its assignments
-- (the delete is audited), so a flag re-created under the same name starts fresh.
CREATE TABLE assignments (
    flag        TEXT NOT NULL REFERENCES flags (name) ON DELETE CASCADE,
    context_key TEXT NOT NULL,
    decision    INTEGER NOT NULL CHECK (decision = 0 OR decision = 1),
    bucket      INTEGER NOT NULL CHECK (bucket BETWEEN 0 AND 99),
    rollout_pct REAL NOT NULL,
    assigned_at TEXT NOT NULL,
    PRIMARY KEY (flag, context_key)
) WITHOUT ROWID;

-- Append-only record of every evaluation returned to a caller and every write.
--   kind 'evaluation': result (1 on, 0 off), source (which evaluation step decided), reason,
--                      detail {"bucket", "assigned": [assignments stored by this evaluation]}
--   kind 'change':     action (create, update, delete, reset_assignments), reason (summary),
--                      detail {"before": flag or null, "after": flag or null} for flag writes
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind = 'evaluation' OR kind = 'change'),
    actor       TEXT NOT NULL,
    action      TEXT CHECK ((kind = 'change') = (action IS NOT NULL)),
    flag        TEXT NOT NULL,
    context_key TEXT,
    result      INTEGER CHECK (result = 0 OR result = 1),
    source      TEXT CHECK (source = 'sticky' OR source = 'rollout' OR source = 'disabled'
                        OR source = 'dependency' OR source = 'unknown' OR source = 'cycle'),
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '{}',
    -- Tamper evidence: hash = SHA-256 over prev_hash and this row's columns (encoding in
    -- README.md); prev_hash is the previous row's hash, 64 zeros for row 1.
    prev_hash   TEXT NOT NULL CHECK (length(prev_hash) = 64),
    hash        TEXT NOT NULL CHECK (length(hash) = 64)
);

-- Reviewers ask "what happened to flag X" and "what did context K get", newest first; id
-- order is time order (ids never go backwards, even when the clock does).
CREATE INDEX audit_log_flag ON audit_log (flag, id);
CREATE INDEX audit_log_context ON audit_log (context_key, id);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused');
END;
