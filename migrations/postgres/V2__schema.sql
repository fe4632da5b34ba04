-- flagstore schema, version 2, for PostgreSQL: the same tables, columns and values as the
-- SQLite schema at version 2 (migrations/sqlite/), so that the reviewer queries in README.md
-- run on both. Booleans are 0/1 integers and times RFC 3339 text, as there; every hashed
-- column is stored exactly as it was hashed. There is no version 1 here: PostgreSQL stores
-- start with decision records.

CREATE TABLE flags (
    name        TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 128),
    enabled     INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    rollout_pct DOUBLE PRECISION NOT NULL CHECK (rollout_pct BETWEEN 0 AND 100),
    sticky      TEXT NOT NULL DEFAULT 'on_only' CHECK (sticky IN ('on_only', 'all', 'none')),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- "flag" requires "requires": flag is off for a context unless requires is on for it.
CREATE TABLE flag_dependencies (
    flag     TEXT NOT NULL REFERENCES flags (name) ON DELETE CASCADE,
    requires TEXT NOT NULL REFERENCES flags (name),
    PRIMARY KEY (flag, requires),
    CHECK (flag <> requires)
);

CREATE INDEX flag_dependencies_requires ON flag_dependencies (requires);

-- The first stored rollout decision of a context for a flag, served again on later evaluations.
-- A B-tree entry holds at most about 2.7 kB, and context keys may be far longer (SQLite takes
-- 1 MB keys), so the key is indexed by its SHA-256 (context_hash, derived by the server).
-- convert_to is only STABLE, because it depends on the database's encoding, which never
-- changes for a database: the wrapper is truly IMMUTABLE, as a generated column needs.
CREATE FUNCTION context_hash(context_key TEXT) RETURNS BYTEA
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN sha256(convert_to(context_key, 'UTF8'));

CREATE TABLE assignments (
    flag         TEXT NOT NULL REFERENCES flags (name) ON DELETE CASCADE,
    context_key  TEXT NOT NULL,
    decision     INTEGER NOT NULL CHECK (decision IN (0, 1)),
    bucket       INTEGER NOT NULL CHECK (bucket BETWEEN 0 AND 99),
    rollout_pct  DOUBLE PRECISION NOT NULL,
    assigned_at  TEXT NOT NULL,
    context_hash BYTEA NOT NULL GENERATED ALWAYS AS (context_hash(context_key)) STORED,
    PRIMARY KEY (flag, context_hash)
);

-- Append-only record of every evaluation request and every write; see README.md. The id is
-- taken from the newest row under the store's writer lock, not from a sequence, so ids are
-- gapless: a missing id is a deleted row.
CREATE TABLE audit_log (
    id          BIGINT PRIMARY KEY CHECK (id > 0),
    ts          TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('evaluation', 'change')),
    actor       TEXT NOT NULL,
    action      TEXT CHECK ((kind = 'change') = (action IS NOT NULL)),
    -- NULL only on a decision record, whose decisions name their flags.
    flag        TEXT CONSTRAINT audit_log_flag_check CHECK (flag IS NOT NULL OR kind = 'evaluation'),
    context_key TEXT,
    result      INTEGER CHECK (result IN (0, 1)),
    source      TEXT CHECK (source IN ('sticky', 'rollout', 'disabled', 'dependency', 'unknown',
                                       'cycle')),
    reason      TEXT CONSTRAINT audit_log_reason_check CHECK (reason IS NOT NULL OR flag IS NULL),
    detail      TEXT NOT NULL DEFAULT '{}',
    prev_hash   TEXT NOT NULL CHECK (length(prev_hash) = 64),
    hash        TEXT NOT NULL CHECK (length(hash) = 64)
);

CREATE INDEX audit_log_flag ON audit_log (flag, id) WHERE flag IS NOT NULL;
-- A hash index stores only a hash of the key, so it takes keys of any length; a context's rows
-- are few, and sorting them by id is cheap.
CREATE INDEX audit_log_context ON audit_log USING hash (context_key);

-- Append-only for every role but the table's owner, who can drop triggers (README.md).
CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP;
END;
$$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

-- A sparse index of decision records by flag (as in SQLite): each write transaction that
-- recorded evaluations adds one row per flag it was asked for, with the ids of its first and
-- last record. Derived data, outside the hash chain.
CREATE TABLE audit_flag_ranges (
    flag     TEXT NOT NULL,
    first_id BIGINT NOT NULL,
    last_id  BIGINT NOT NULL,
    PRIMARY KEY (flag, last_id)
);

-- SQLite's json_extract for the '$.a.b' paths the README's reviewer queries use, so they run
-- here unchanged. Objects come back as JSON text, in PostgreSQL's spacing.
CREATE FUNCTION json_extract(document TEXT, path TEXT) RETURNS TEXT
    LANGUAGE sql IMMUTABLE STRICT
    RETURN document::jsonb #>> string_to_array(substr(path, 3), '.');

-- The reason flagstore prints for one decision of a record, decided by anything but a
-- requirement.
CREATE FUNCTION audit_decision_reason(decision JSONB) RETURNS TEXT
    LANGUAGE sql IMMUTABLE STRICT
    RETURN CASE decision ->> 'source'
        WHEN 'unknown' THEN 'unknown flag'
        WHEN 'disabled' THEN 'disabled'
        WHEN 'cycle' THEN decision ->> 'reason'
        WHEN 'rollout' THEN 'rollout: bucket ' || (decision ->> 'bucket')
             || CASE decision ->> 'result' WHEN '1' THEN ' < ' ELSE ' >= ' END
             || (decision ->> 'rollout_pct')
        WHEN 'sticky' THEN 'sticky: '
             || CASE decision ->> 'result' WHEN '1' THEN 'on' ELSE 'off' END
             || ' since ' || (decision ->> 'since')
    END;

-- One row per flag decision returned to a caller, schema-1 rows (copied from an SQLite store)
-- and decision records alike, with the reason worded as flagstore words it.
CREATE VIEW audit_evaluations AS
SELECT id AS audit_id, ts, actor, flag, context_key, result, source, reason
  FROM audit_log
 WHERE kind = 'evaluation' AND flag IS NOT NULL
UNION ALL
SELECT l.id, l.ts, l.actor,
       d.decision ->> 'flag',
       l.context_key,
       (d.decision ->> 'result')::integer,
       d.decision ->> 'source',
       CASE d.decision ->> 'source'
           WHEN 'dependency' THEN
               (SELECT string_agg('requires ' || r.name || ': ', '' ORDER BY r.n)
                  FROM jsonb_array_elements_text(d.decision -> 'requires')
                       WITH ORDINALITY AS r (name, n))
               || (SELECT audit_decision_reason(t.decision)
                     FROM jsonb_array_elements(l.detail::jsonb -> 'decisions') AS t (decision)
                    WHERE t.decision ->> 'flag' = d.decision -> 'requires' ->> -1
                    LIMIT 1)
           ELSE audit_decision_reason(d.decision)
       END
  FROM audit_log l
 CROSS JOIN LATERAL jsonb_array_elements(l.detail::jsonb -> 'decisions')
       WITH ORDINALITY AS d (decision, n)
 WHERE l.kind = 'evaluation' AND l.flag IS NULL
   AND d.n <= (l.detail::jsonb ->> 'requested')::integer;
