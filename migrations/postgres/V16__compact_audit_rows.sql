-- flagstore schema, version 16 (PostgreSQL; as migrations/sqlite/V14): the audit log's rows
-- in fewer bytes, hashed as before.
--
-- A decision record stored both hashes as 64 hex characters (where the hash is 32 bytes and
-- `prev_hash` is only the previous row's `hash` again), its time as 24 characters of text,
-- its kind (derivable: a change row is the one with an action) and its actor's name: about a
-- third of its bytes, sent again to every reader (`audit verify` spent a quarter of its client
-- time copying them). From this version the rows are stored in `audit_rows`, each with
--
--   ts_ms     milliseconds since the epoch, UTC (ts_text NULL);
--   ts_text   the time as it was, where it is not in flagstore's form (ts_ms NULL);
--   actor_id  the number of its actor in `actors`, which names each actor once;
--   prev_hash NULL: it is the `hash` of row id - 1 (64 zeros for row 1);
--   hash      the 32 bytes of the SHA-256, or the UTF-8 bytes of a hash that is not 64
--             lowercase hex digits (never 32 bytes long: the old column held 64 characters,
--             as the view's triggers and flagstore's writer still require of text);
--
-- and `audit_log` is a view that shows every row with the columns and values the table had,
-- so what is hashed, what a reviewer's SQL reads and what the README's script re-hashes do
-- not change. A row whose stored value was not what flagstore writes (a store edited by hand)
-- keeps that value as it was, so the chain still shows it.
--
-- INSERT, UPDATE and DELETE on the view reach the table (whose append-only triggers then
-- refuse them, as they refused them on the old table). A row whose `hash` or id changes, or
-- that is deleted, first gives the next row its link as text, so that the next row's
-- `prev_hash` still shows what it held.
--
-- Actor numbers are given by the writer (the next after the largest, under the writer lock),
-- not by a sequence, as audit_flag_sets' are: the writer role needs no grant beyond INSERT.
-- No foreign key from the rows to `actors`: a check per inserted row for what the writer
-- proves, as schema 15 says of assignments; a row whose actor is gone shows NULL, which the
-- chain then names.
CREATE TABLE actors (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE audit_rows (
    id          BIGINT PRIMARY KEY CHECK (id > 0),
    ts_ms       BIGINT,
    ts_text     TEXT CHECK ((ts_text IS NULL) <> (ts_ms IS NULL)),
    actor_id    INTEGER NOT NULL,
    action      TEXT,
    flag        TEXT CHECK (flag IS NOT NULL OR action IS NULL
                            OR action IN ('token_create', 'token_revoke')),
    context_key TEXT,
    result      INTEGER CHECK (result IN (0, 1)),
    source      TEXT CHECK (source IN ('sticky', 'rollout', 'disabled', 'dependency', 'unknown',
                                       'cycle')),
    reason      TEXT CHECK (reason IS NOT NULL OR action IS NULL),
    detail      TEXT NOT NULL,
    prev_hash   TEXT CHECK (length(prev_hash) = 64),
    hash        BYTEA NOT NULL CHECK (length(hash) = 32 OR length(hash) >= 64)
);

-- A stored time as `audit_log.ts` shows it: flagstore's form, to the millisecond.
CREATE FUNCTION audit_time(ts_ms BIGINT) RETURNS TEXT
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    RETURN to_char(timestamp '1970-01-01' + ts_ms * interval '1 millisecond',
                   'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');

-- A stored hash as `audit_log.hash` shows it, and the other way round.
CREATE FUNCTION audit_hash_text(hash BYTEA) RETURNS TEXT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE WHEN length(hash) = 32 THEN encode(hash, 'hex')
                ELSE convert_from(hash, 'UTF8') END;

CREATE FUNCTION audit_hash_bytes(hash TEXT) RETURNS BYTEA
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE WHEN hash ~ '^[0-9a-f]{64}$' THEN decode(hash, 'hex')
                ELSE convert_to(hash, 'UTF8') END;

-- Only for this migration: the milliseconds a time in flagstore's form stands for, or NULL
-- for any other text (a cast of a malformed time would abort the migration).
CREATE FUNCTION audit_migrated_ms(ts TEXT) RETURNS BIGINT LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    ms BIGINT;
BEGIN
    IF ts !~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$' THEN
        RETURN NULL;
    END IF;
    ms := extract(epoch FROM (left(ts, 23)::timestamp - timestamp '1970-01-01')) * 1000;
    RETURN CASE WHEN ms >= 0 AND audit_time(ms) = ts THEN ms END;
EXCEPTION WHEN others THEN
    RETURN NULL;
END;
$$;

INSERT INTO actors (id, name)
SELECT row_number() OVER (ORDER BY min(id)), actor FROM audit_log GROUP BY actor;

INSERT INTO audit_rows (id, ts_ms, ts_text, actor_id, action, flag, context_key, result, source,
                        reason, detail, prev_hash, hash)
SELECT l.id, l.ms, CASE WHEN l.ms IS NULL THEN l.ts END, a.id, l.action, l.flag, l.context_key,
       l.result, l.source, l.reason, l.detail,
       CASE WHEN l.prev_hash = (CASE WHEN l.id = 1 THEN repeat('0', 64)
                                     WHEN l.previous_id = l.id - 1 THEN l.previous_hash END)
            THEN NULL ELSE l.prev_hash END,
       audit_hash_bytes(l.hash)
  FROM (SELECT *, audit_migrated_ms(ts) AS ms,
               lag(id) OVER (ORDER BY id) AS previous_id,
               lag(hash) OVER (ORDER BY id) AS previous_hash
          FROM audit_log) l
  JOIN actors a ON a.name = l.actor
 ORDER BY l.id;

DROP FUNCTION audit_migrated_ms;
DROP VIEW audit_evaluations;
DROP TABLE audit_log;

CREATE INDEX audit_log_flag ON audit_rows (flag, id) WHERE flag IS NOT NULL;
CREATE INDEX audit_log_context ON audit_rows USING hash (context_key);
CREATE INDEX audit_log_changes ON audit_rows (id) WHERE action IS NOT NULL;
CREATE INDEX audit_log_token_changes ON audit_rows (id)
    WHERE action = 'token_create' OR action = 'token_revoke';

CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_rows
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_rows
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

-- An actor's name is part of every row that names it.
CREATE FUNCTION actors_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'actors is append-only: % refused', TG_OP;
END;
$$;

CREATE TRIGGER actors_no_update BEFORE UPDATE OR DELETE ON actors
    FOR EACH ROW EXECUTE FUNCTION actors_refuse_change();
CREATE TRIGGER actors_no_truncate BEFORE TRUNCATE ON actors
    FOR EACH STATEMENT EXECUTE FUNCTION actors_refuse_change();

CREATE VIEW audit_log AS
SELECT r.id,
       coalesce(r.ts_text, audit_time(r.ts_ms)) AS ts,
       CASE WHEN r.action IS NULL THEN 'evaluation' ELSE 'change' END AS kind,
       (SELECT a.name FROM actors a WHERE a.id = r.actor_id) AS actor,
       r.action, r.flag, r.context_key, r.result, r.source, r.reason, r.detail,
       coalesce(r.prev_hash,
                CASE WHEN r.id = 1 THEN repeat('0', 64)
                     ELSE (SELECT audit_hash_text(p.hash) FROM audit_rows p WHERE p.id = r.id - 1)
                END) AS prev_hash,
       audit_hash_text(r.hash) AS hash
  FROM audit_rows r;

-- What an INSERT, UPDATE or DELETE of the view does to the table: refused where the kind is
-- not the one the action makes; an actor not yet named is numbered.
CREATE FUNCTION audit_log_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM audit_rows WHERE id = OLD.id;
        UPDATE audit_rows SET prev_hash = OLD.hash WHERE id = OLD.id + 1 AND prev_hash IS NULL;
        RETURN OLD;
    END IF;
    IF NEW.kind IS DISTINCT FROM (CASE WHEN NEW.action IS NULL THEN 'evaluation'
                                       ELSE 'change' END) THEN
        RAISE EXCEPTION 'audit_log: kind is ''change'' exactly where action is set';
    END IF;
    -- As the old column's CHECK: other text could be 32 bytes, stored as if it were a hash.
    IF char_length(NEW.hash) <> 64 THEN
        RAISE EXCEPTION 'audit_log: hash must be 64 characters';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM actors WHERE name = NEW.actor) THEN
        INSERT INTO actors (id, name) SELECT coalesce(max(id), 0) + 1, NEW.actor FROM actors;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO audit_rows (id, ts_text, actor_id, action, flag, context_key, result,
                                source, reason, detail, prev_hash, hash)
        VALUES (NEW.id, NEW.ts, (SELECT id FROM actors WHERE name = NEW.actor), NEW.action,
                NEW.flag, NEW.context_key, NEW.result, NEW.source, NEW.reason, NEW.detail,
                NEW.prev_hash, audit_hash_bytes(NEW.hash));
        RETURN NEW;
    END IF;
    IF NEW.hash IS DISTINCT FROM OLD.hash OR NEW.id IS DISTINCT FROM OLD.id THEN
        UPDATE audit_rows SET prev_hash = OLD.hash WHERE id = OLD.id + 1 AND prev_hash IS NULL;
    END IF;
    UPDATE audit_rows
       SET id = NEW.id,
           ts_ms = CASE WHEN NEW.ts IS NOT DISTINCT FROM OLD.ts THEN ts_ms END,
           ts_text = CASE WHEN NEW.ts IS NOT DISTINCT FROM OLD.ts THEN ts_text ELSE NEW.ts END,
           actor_id = (SELECT id FROM actors WHERE name = NEW.actor),
           action = NEW.action, flag = NEW.flag, context_key = NEW.context_key,
           result = NEW.result, source = NEW.source, reason = NEW.reason, detail = NEW.detail,
           prev_hash = CASE WHEN NEW.prev_hash IS NOT DISTINCT FROM OLD.prev_hash
                                 AND NEW.id = OLD.id
                            THEN prev_hash ELSE NEW.prev_hash END,
           hash = CASE WHEN NEW.hash IS NOT DISTINCT FROM OLD.hash THEN hash
                       ELSE audit_hash_bytes(NEW.hash) END
     WHERE id = OLD.id;
    RETURN NEW;
END;
$$;

CREATE TRIGGER audit_log_write INSTEAD OF INSERT OR UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_write();

-- As schema 13 made it, over the view.
CREATE VIEW audit_evaluations AS
SELECT id AS audit_id, ts, actor, flag, context_key, result, source, reason
  FROM audit_log
 WHERE kind = 'evaluation' AND flag IS NOT NULL
UNION ALL
SELECT l.id, l.ts, l.actor,
       coalesce(d.decision ->> 0, d.decision ->> 'flag'),
       l.context_key,
       coalesce(d.decision ->> 1, d.decision ->> 'result')::integer,
       coalesce(d.decision ->> 2, d.decision ->> 'source'),
       CASE coalesce(d.decision ->> 2, d.decision ->> 'source')
           WHEN 'dependency' THEN
               (SELECT string_agg('requires ' || r.name || ': ', '' ORDER BY r.n)
                  FROM jsonb_array_elements_text(coalesce(d.decision -> 3, d.decision -> 'requires'))
                       WITH ORDINALITY AS r (name, n))
               || (SELECT audit_decision_reason(t.decision)
                     FROM jsonb_array_elements(l.detail::jsonb -> 'decisions') AS t (decision)
                    WHERE coalesce(t.decision ->> 0, t.decision ->> 'flag')
                          = coalesce(d.decision -> 3, d.decision -> 'requires') ->> -1
                    LIMIT 1)
           ELSE audit_decision_reason(d.decision)
       END
  FROM audit_log l
 CROSS JOIN LATERAL jsonb_array_elements(l.detail::jsonb -> 'decisions')
       WITH ORDINALITY AS d (decision, n)
 WHERE l.kind = 'evaluation' AND l.flag IS NULL
   AND d.n <= (l.detail::jsonb ->> 'requested')::integer;
