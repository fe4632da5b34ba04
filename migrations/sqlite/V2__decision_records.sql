-- flagstore schema, version 2: decision records.
--
-- An evaluation request now writes one audit row per context key (a "decision record")
-- holding every decision it made for that key, instead of one row per flag: the row has
-- kind 'evaluation', flag, result, source and reason NULL, and the decisions in detail
-- (format in src/record.rs and README.md). Reviewers read one row per flag decision, old and
-- new rows alike, from the view audit_evaluations.
--
-- audit_log is rebuilt only to let flag and reason be NULL: every existing row is copied with
-- the same values, so every hash still verifies and the chain continues unbroken.

CREATE TABLE audit_log_v2 (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind = 'evaluation' OR kind = 'change'),
    actor       TEXT NOT NULL,
    action      TEXT CHECK ((kind = 'change') = (action IS NOT NULL)),
    -- NULL only on a decision record, whose decisions name their flags.
    flag        TEXT CHECK (flag IS NOT NULL OR kind = 'evaluation'),
    context_key TEXT,
    result      INTEGER CHECK (result = 0 OR result = 1),
    source      TEXT CHECK (source = 'sticky' OR source = 'rollout' OR source = 'disabled'
                        OR source = 'dependency' OR source = 'unknown' OR source = 'cycle'),
    reason      TEXT CHECK (reason IS NOT NULL OR flag IS NULL),
    detail      TEXT NOT NULL DEFAULT '{}',
    prev_hash   TEXT NOT NULL CHECK (length(prev_hash) = 64),
    hash        TEXT NOT NULL CHECK (length(hash) = 64)
);

INSERT INTO audit_log_v2 (id, ts, kind, actor, action, flag, context_key, result, source,
                          reason, detail, prev_hash, hash)
SELECT id, ts, kind, actor, action, flag, context_key, result, source, reason, detail,
       prev_hash, hash
  FROM audit_log;

DROP TABLE audit_log;
ALTER TABLE audit_log_v2 RENAME TO audit_log;

-- Changes and schema-1 evaluations by flag; decision records are found by flag through
-- audit_flag_ranges instead, which costs a row per transaction, not one per evaluation.
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

-- A sparse index of decision records by flag: each write transaction that recorded
-- evaluations adds one row per flag it was asked for, with the ids of its first and last
-- record. Every record in the range was asked for every flag the range lists. Derived data,
-- outside the hash chain.
CREATE TABLE audit_flag_ranges (
    flag     TEXT NOT NULL,
    first_id INTEGER NOT NULL,
    last_id  INTEGER NOT NULL,
    PRIMARY KEY (flag, last_id)
) WITHOUT ROWID;

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
