-- flagstore schema, version 10 (SQLite): a context's audit rows found by its number.
--
-- audit_log was indexed by (context_key, id): with keys that arrive in no order (tenant ids,
-- UUIDs), every new context's first record landed on a random page of that index, and each
-- commit wrote those pages whole, twice (the WAL, then the checkpoint). Each context key
-- already gets a number in contexts; the rows now carry it (context_id) and the index is on
-- (context_id, id), so a new context's rows go to the end of the index, as its number does.
-- Only contexts' own index on the key still takes new keys where they sort.
--
-- context_id is derived data, outside the hash chain, like audit_flag_ranges: context_key
-- stays in every row and in the hash, and `flagstore check` names a row whose number does not
-- name its key. Every key of the log is numbered here (before schema 10 only keys with
-- assignments were), then every row is given its number: this rewrites audit_log once, with
-- the append-only trigger lifted for that statement alone.

INSERT INTO contexts (key) SELECT context_key FROM audit_log WHERE context_key IS NOT NULL
    ON CONFLICT (key) DO NOTHING;

-- No REFERENCES clause: `check` already names a number that does not name the row's key
-- (a dangling one included), and with a foreign key SQLite would keep a copy of every page
-- the UPDATE below rewrites, in memory, until the statement ends: 400 MB for a log of 1M rows.
ALTER TABLE audit_log ADD COLUMN context_id INTEGER;

DROP TRIGGER audit_log_no_update;
UPDATE audit_log SET context_id = (SELECT id FROM contexts WHERE key = audit_log.context_key)
 WHERE context_key IS NOT NULL;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused');
END;

DROP INDEX audit_log_context;
CREATE INDEX audit_log_context ON audit_log (context_id, id);

-- The view reads each row's key through its number, so that a reviewer's query by
-- context_key finds the key in contexts' index and its rows in audit_log_context.
DROP VIEW audit_evaluations;

-- One row per flag decision returned to a caller, schema-1 rows and decision records alike,
-- with the reason worded as flagstore words it.
CREATE VIEW audit_evaluations AS
SELECT l.id AS audit_id, l.ts, l.actor, l.flag, c.key AS context_key, l.result, l.source,
       l.reason
  FROM contexts c JOIN audit_log l ON l.context_id = c.id
 WHERE l.kind = 'evaluation' AND l.flag IS NOT NULL
UNION ALL
SELECT l.id, l.ts, l.actor,
       json_extract(d.value, '$.flag'),
       c.key,
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
  FROM contexts c JOIN audit_log l ON l.context_id = c.id, json_each(l.detail, '$.decisions') d
 WHERE l.kind = 'evaluation' AND l.flag IS NULL
   AND d.key < json_extract(l.detail, '$.requested');
