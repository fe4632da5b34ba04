-- flagstore schema, version 3: API tokens for `flagstore serve`.
--
-- A token is stored only as the SHA-256 of its text; the text is shown once, when it is
-- created. Creating and revoking a token are change rows of the audit log (action
-- 'token_create' / 'token_revoke') that name no flag, so audit_log is rebuilt once more to let
-- a change row's flag be NULL. Every row is copied with the same values: every hash still
-- verifies and the chain continues unbroken.

CREATE TABLE api_tokens (
    name         TEXT PRIMARY KEY NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
    token_sha256 TEXT NOT NULL UNIQUE CHECK (length(token_sha256) = 64),
    -- viewer: evaluate and read; operator: also change flags; admin: also manage tokens.
    role         TEXT NOT NULL CHECK (role = 'viewer' OR role = 'operator' OR role = 'admin'),
    created_at   TEXT NOT NULL,
    revoked_at   TEXT
);

CREATE TABLE audit_log_v3 (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind = 'evaluation' OR kind = 'change'),
    actor       TEXT NOT NULL,
    action      TEXT CHECK ((kind = 'change') = (action IS NOT NULL)),
    -- NULL on a decision record (its decisions name their flags) and on a token change.
    flag        TEXT CHECK (flag IS NOT NULL OR kind = 'evaluation'
                            OR action = 'token_create' OR action = 'token_revoke'),
    context_key TEXT,
    result      INTEGER CHECK (result = 0 OR result = 1),
    source      TEXT CHECK (source = 'sticky' OR source = 'rollout' OR source = 'disabled'
                        OR source = 'dependency' OR source = 'unknown' OR source = 'cycle'),
    reason      TEXT CHECK (reason IS NOT NULL OR kind = 'evaluation'),
    detail      TEXT NOT NULL DEFAULT '{}',
    prev_hash   TEXT NOT NULL CHECK (length(prev_hash) = 64),
    hash        TEXT NOT NULL CHECK (length(hash) = 64)
);

INSERT INTO audit_log_v3 (id, ts, kind, actor, action, flag, context_key, result, source,
                          reason, detail, prev_hash, hash)
SELECT id, ts, kind, actor, action, flag, context_key, result, source, reason, detail,
       prev_hash, hash
  FROM audit_log;

-- The view reads audit_log; it is recreated over the new table as it was.
DROP VIEW audit_evaluations;
DROP TABLE audit_log;
ALTER TABLE audit_log_v3 RENAME TO audit_log;

CREATE INDEX audit_log_flag ON audit_log (flag, id) WHERE flag IS NOT NULL;
CREATE INDEX audit_log_context ON audit_log (context_key, id);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused');
END;

-- One row per flag decision returned to a caller, schema-1 rows and decision records alike,
-- with the reason worded as flagstore words it.
CREATE VIEW audit_evaluations AS
SELECT id AS audit_id, ts, actor, flag, context_key, result, source, reason
  FROM audit_log
 WHERE kind = 'evaluation' AND flag IS NOT NULL
UNION ALL
SELECT l.id, l.ts, l.actor,
       json_extract(d.value, '$.flag'),
       l.context_key,
       json_extract(d.value, '$.result'),
       json_extract(d.value, '$.source'),
       CASE json_extract(d.value, '$.source')
           WHEN 'dependency' THEN
               (SELECT group_concat('requires ' || r.value || ': ', '')
                  FROM json_each(d.value, '$.requires') r)
               || (SELECT CASE json_extract(t.value, '$.source')
                              WHEN 'unknown' THEN 'unknown flag'
                              WHEN 'disabled' THEN 'disabled'
                              WHEN 'rollout' THEN 'rollout: bucket ' || json_extract(t.value, '$.bucket')
                                   || CASE json_extract(t.value, '$.result') WHEN 1 THEN ' < ' ELSE ' >= ' END
                                   || json_extract(t.value, '$.rollout_pct')
                              WHEN 'sticky' THEN 'sticky: '
                                   || CASE json_extract(t.value, '$.result') WHEN 1 THEN 'on' ELSE 'off' END
                                   || ' since ' || json_extract(t.value, '$.since')
                          END
                     FROM json_each(l.detail, '$.decisions') t
                    WHERE json_extract(t.value, '$.flag') = json_extract(d.value, '$.requires[#-1]')
                    LIMIT 1)
           WHEN 'unknown' THEN 'unknown flag'
           WHEN 'disabled' THEN 'disabled'
           WHEN 'cycle' THEN json_extract(d.value, '$.reason')
           WHEN 'rollout' THEN 'rollout: bucket ' || json_extract(d.value, '$.bucket')
                || CASE json_extract(d.value, '$.result') WHEN 1 THEN ' < ' ELSE ' >= ' END
                || json_extract(d.value, '$.rollout_pct')
           WHEN 'sticky' THEN 'sticky: '
                || CASE json_extract(d.value, '$.result') WHEN 1 THEN 'on' ELSE 'off' END
                || ' since ' || json_extract(d.value, '$.since')
       END
  FROM audit_log l, json_each(l.detail, '$.decisions') d
 WHERE l.kind = 'evaluation' AND l.flag IS NULL
   AND d.key < json_extract(l.detail, '$.requested');
