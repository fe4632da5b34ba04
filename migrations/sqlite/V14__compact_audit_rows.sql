-- flagstore schema, version 14 (SQLite): the audit log's rows in fewer bytes, hashed as before.
--
-- Of a decision record's bytes, a third were its two hashes as hex text (128 bytes, where the
-- hash is 32 bytes and `prev_hash` is only the previous row's `hash` again), its time as text
-- (24 bytes for 6), its kind (derivable: a change row is the one with an action) and its
-- actor's name. From this version the rows are stored in `audit_rows`, each with
--
--   ts_ms     milliseconds since the epoch, UTC;
--   actor_id  the number of its actor in `actors`, which names each actor once;
--   prev_hash NULL: it is the `hash` of row id - 1 (64 zeros for row 1);
--   hash      the 32 bytes of the SHA-256;
--
-- and `audit_log` is a view that shows every row with the columns and values the table had,
-- so what is hashed, what a reviewer's SQL reads and what the README's script re-hashes do
-- not change. A row whose stored value was not what flagstore writes (a time in another
-- form, a hash that is not 64 lowercase hex digits, a link that is not the previous row's
-- hash: a store edited by hand) keeps that value as it was, so the chain still shows it.
--
-- INSERT, UPDATE and DELETE on the view reach the table (the append-only triggers of the
-- table then refuse them, as they refused them on the old table). A row whose `hash` changes,
-- or that is deleted, first gives the next row its link as text, so that the next row's
-- `prev_hash` still shows what it held.
--
-- The key stays in the row, though `contexts` holds it too: read through the context's
-- number, it cost a verification of the whole log a lookup at a random place of `contexts`
-- per row (a third more time on 1M rows).
--
-- `audit_evaluations` names `audit_log` and reads the view from now on, unchanged.
--
-- `audit_log_changes` holds the change rows by `action IS NOT NULL`, the column the view's
-- `kind` is derived from: flagstore's `audit --kind change` spells it so, and a reviewer's
-- SQL that does reads the index too.
CREATE TABLE actors (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE audit_rows (
    id          INTEGER PRIMARY KEY,
    -- An INTEGER; text only where a row stored before this version held a time flagstore
    -- does not write (no declared type, so that neither is converted).
    ts_ms       NOT NULL,
    actor_id    INTEGER NOT NULL REFERENCES actors (id),
    action      TEXT,
    flag        TEXT CHECK (flag IS NOT NULL OR action IS NULL
                            OR action = 'token_create' OR action = 'token_revoke'),
    context_key TEXT,
    result      INTEGER CHECK (result = 0 OR result = 1),
    source      TEXT CHECK (source = 'sticky' OR source = 'rollout' OR source = 'disabled'
                        OR source = 'dependency' OR source = 'unknown' OR source = 'cycle'),
    reason      TEXT CHECK (reason IS NOT NULL OR action IS NULL),
    detail      TEXT NOT NULL,
    prev_hash   TEXT,
    hash        NOT NULL,
    context_id  INTEGER
);

INSERT INTO actors (name) SELECT actor FROM audit_log GROUP BY actor ORDER BY min(id);

INSERT INTO audit_rows (id, ts_ms, actor_id, action, flag, context_key, result, source, reason,
                        detail, prev_hash, hash, context_id)
SELECT l.id,
       CASE WHEN strftime('%Y-%m-%dT%H:%M:%S', l.ms / 1000, 'unixepoch')
                 || printf('.%03dZ', l.ms % 1000) IS l.ts AND l.ms >= 0
            THEN l.ms ELSE l.ts END,
       (SELECT a.id FROM actors a WHERE a.name IS l.actor),
       l.action, l.flag, l.context_key, l.result, l.source, l.reason, l.detail,
       CASE WHEN l.prev_hash IS (CASE WHEN l.id = 1 THEN printf('%064d', 0)
                                      ELSE (SELECT p.hash FROM audit_log p WHERE p.id = l.id - 1)
                                 END)
            THEN NULL ELSE l.prev_hash END,
       CASE WHEN typeof(l.hash) = 'text' AND length(l.hash) = 64
                 AND l.hash NOT GLOB '*[^0-9a-f]*'
            THEN unhex(l.hash) ELSE l.hash END,
       l.context_id
  FROM (SELECT *, CAST(round((julianday(ts) - 2440587.5) * 86400000.0) AS INTEGER) AS ms
          FROM audit_log) l
 ORDER BY l.id;

DROP TABLE audit_log;

CREATE INDEX audit_log_flag ON audit_rows (flag, id) WHERE flag IS NOT NULL;
CREATE INDEX audit_log_context ON audit_rows (context_id, id);
CREATE INDEX audit_log_changes ON audit_rows (id) WHERE action IS NOT NULL;
CREATE INDEX audit_log_token_changes ON audit_rows (id)
    WHERE action = 'token_create' OR action = 'token_revoke';

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_rows
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_rows
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused');
END;

-- An actor's name is part of every row that names it.
CREATE TRIGGER actors_no_update BEFORE UPDATE ON actors
BEGIN
    SELECT RAISE(ABORT, 'actors is append-only: UPDATE refused');
END;

CREATE TRIGGER actors_no_delete BEFORE DELETE ON actors
BEGIN
    SELECT RAISE(ABORT, 'actors is append-only: DELETE refused');
END;

CREATE VIEW audit_log AS
SELECT r.id,
       CASE WHEN typeof(r.ts_ms) = 'integer'
            THEN strftime('%Y-%m-%dT%H:%M:%S', r.ts_ms / 1000, 'unixepoch')
                 || printf('.%03dZ', r.ts_ms % 1000)
            ELSE r.ts_ms END AS ts,
       CASE WHEN r.action IS NULL THEN 'evaluation' ELSE 'change' END AS kind,
       (SELECT a.name FROM actors a WHERE a.id = r.actor_id) AS actor,
       r.action, r.flag, r.context_key, r.result, r.source, r.reason, r.detail,
       coalesce(r.prev_hash,
                CASE WHEN r.id = 1 THEN printf('%064d', 0)
                     ELSE (SELECT CASE WHEN typeof(p.hash) = 'blob' AND length(p.hash) = 32
                                       THEN lower(hex(p.hash)) ELSE p.hash END
                             FROM audit_rows p WHERE p.id = r.id - 1)
                END) AS prev_hash,
       CASE WHEN typeof(r.hash) = 'blob' AND length(r.hash) = 32
            THEN lower(hex(r.hash)) ELSE r.hash END AS hash,
       r.context_id
  FROM audit_rows r;

-- What an INSERT or UPDATE of the view would store where the table derives a column: refused
-- where the kind is not the one the action makes.
CREATE TRIGGER audit_log_insert INSTEAD OF INSERT ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log: kind is ''change'' exactly where action is set')
     WHERE NEW.kind IS NOT (CASE WHEN NEW.action IS NULL THEN 'evaluation' ELSE 'change' END);
    INSERT INTO actors (name) VALUES (NEW.actor) ON CONFLICT (name) DO NOTHING;
    INSERT INTO audit_rows (id, ts_ms, actor_id, action, flag, context_key, result, source,
                            reason, detail, prev_hash, hash, context_id)
    VALUES (NEW.id, NEW.ts, (SELECT id FROM actors WHERE name IS NEW.actor), NEW.action,
            NEW.flag, NEW.context_key, NEW.result, NEW.source, NEW.reason, NEW.detail,
            NEW.prev_hash, NEW.hash, NEW.context_id);
END;

CREATE TRIGGER audit_log_update INSTEAD OF UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log: kind is ''change'' exactly where action is set')
     WHERE NEW.kind IS NOT (CASE WHEN NEW.action IS NULL THEN 'evaluation' ELSE 'change' END);
    INSERT INTO actors (name) VALUES (NEW.actor) ON CONFLICT (name) DO NOTHING;
    UPDATE audit_rows SET prev_hash = OLD.hash
     WHERE id = OLD.id + 1 AND prev_hash IS NULL
       AND (NEW.hash IS NOT OLD.hash OR NEW.id IS NOT OLD.id);
    UPDATE audit_rows
       SET id = NEW.id,
           ts_ms = CASE WHEN NEW.ts IS OLD.ts THEN ts_ms ELSE NEW.ts END,
           actor_id = (SELECT id FROM actors WHERE name IS NEW.actor),
           action = NEW.action, flag = NEW.flag, context_key = NEW.context_key,
           result = NEW.result, source = NEW.source, reason = NEW.reason, detail = NEW.detail,
           prev_hash = CASE WHEN NEW.prev_hash IS OLD.prev_hash AND NEW.id IS OLD.id
                            THEN prev_hash ELSE NEW.prev_hash END,
           hash = CASE WHEN NEW.hash IS OLD.hash THEN hash ELSE NEW.hash END,
           context_id = NEW.context_id
     WHERE id = OLD.id;
END;

CREATE TRIGGER audit_log_delete INSTEAD OF DELETE ON audit_log
BEGIN
    DELETE FROM audit_rows WHERE id = OLD.id;
    UPDATE audit_rows SET prev_hash = OLD.hash WHERE id = OLD.id + 1 AND prev_hash IS NULL;
END;
