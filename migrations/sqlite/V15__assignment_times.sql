-- flagstore schema, version 15 (SQLite): an assignment's time in milliseconds.
--
-- `assignment_rows.assigned_at` held the time as text, 24 bytes of the 49 an assignment
-- takes, and a new context stores one assignment per flag it gets. From this version it holds
-- milliseconds since the epoch (UTC), as `audit_rows.ts_ms` does (schema 14), and the view
-- `assignments` shows the text it held. A time flagstore does not write (a store edited by
-- hand) stays the text it was. INSERT on the view converts likewise.
--
-- SQLite cannot change a column's type in place: the table is copied, and its view and
-- the view's triggers made again around it.
DROP VIEW assignments;

CREATE TABLE assignment_times (
    context_id  INTEGER NOT NULL REFERENCES contexts (id),
    flag        TEXT NOT NULL REFERENCES flags (name) ON DELETE CASCADE,
    decision    INTEGER NOT NULL CHECK (decision = 0 OR decision = 1),
    bucket      INTEGER NOT NULL CHECK (bucket BETWEEN 0 AND 99),
    rollout_pct REAL NOT NULL,
    -- An INTEGER; text only where a time flagstore does not write was stored (no declared
    -- type, so that neither is converted).
    assigned_at NOT NULL,
    PRIMARY KEY (context_id, flag)
) WITHOUT ROWID;

INSERT INTO assignment_times (context_id, flag, decision, bucket, rollout_pct, assigned_at)
SELECT a.context_id, a.flag, a.decision, a.bucket, a.rollout_pct,
       CASE WHEN strftime('%Y-%m-%dT%H:%M:%S', a.ms / 1000, 'unixepoch')
                 || printf('.%03dZ', a.ms % 1000) IS a.assigned_at AND a.ms >= 0
            THEN a.ms ELSE a.assigned_at END
  FROM (SELECT *,
               CAST(round((julianday(assigned_at) - 2440587.5) * 86400000.0) AS INTEGER) AS ms
          FROM assignment_rows) a
 ORDER BY a.context_id, a.flag;

DROP TABLE assignment_rows;
ALTER TABLE assignment_times RENAME TO assignment_rows;

CREATE VIEW assignments AS
SELECT a.flag, c.key AS context_key, a.decision, a.bucket, a.rollout_pct,
       CASE WHEN typeof(a.assigned_at) = 'integer'
            THEN strftime('%Y-%m-%dT%H:%M:%S', a.assigned_at / 1000, 'unixepoch')
                 || printf('.%03dZ', a.assigned_at % 1000)
            ELSE a.assigned_at END AS assigned_at
  FROM assignment_rows a JOIN contexts c ON c.id = a.context_id;

CREATE TRIGGER assignments_insert INSTEAD OF INSERT ON assignments
BEGIN
    INSERT INTO contexts (key) VALUES (NEW.context_key) ON CONFLICT (key) DO NOTHING;
    INSERT INTO assignment_rows (context_id, flag, decision, bucket, rollout_pct, assigned_at)
    SELECT (SELECT id FROM contexts WHERE key = NEW.context_key), NEW.flag, NEW.decision,
           NEW.bucket, NEW.rollout_pct,
           CASE WHEN strftime('%Y-%m-%dT%H:%M:%S', t.ms / 1000, 'unixepoch')
                     || printf('.%03dZ', t.ms % 1000) IS NEW.assigned_at AND t.ms >= 0
                THEN t.ms ELSE NEW.assigned_at END
      FROM (SELECT CAST(round((julianday(NEW.assigned_at) - 2440587.5) * 86400000.0)
                        AS INTEGER) AS ms) t;
END;

CREATE TRIGGER assignments_delete INSTEAD OF DELETE ON assignments
BEGIN
    DELETE FROM assignment_rows
     WHERE flag = OLD.flag
       AND context_id = (SELECT id FROM contexts WHERE key = OLD.context_key);
END;
