-- flagstore schema, version 13 (as migrations/sqlite/V13): a record's decisions as arrays of
-- their facts.
--
-- A decision was an object naming its facts; from this version it is an array in a fixed
-- order, by source (src/record.rs, README.md): ["enrich",1,"rollout",37,"50"]. Rows already
-- written keep their objects, hashed as they are, and the view reads both: an object's key
-- on an array, or an array's index on an object, is NULL, so each fact is the one of its two
-- paths that is there.
CREATE OR REPLACE FUNCTION audit_decision_reason(decision JSONB) RETURNS TEXT
    LANGUAGE sql IMMUTABLE STRICT
    RETURN CASE coalesce(decision ->> 2, decision ->> 'source')
        WHEN 'unknown' THEN 'unknown flag'
        WHEN 'disabled' THEN 'disabled'
        WHEN 'cycle' THEN coalesce(decision ->> 3, decision ->> 'reason')
        WHEN 'rollout' THEN 'rollout: bucket ' || coalesce(decision ->> 3, decision ->> 'bucket')
             || CASE coalesce(decision ->> 1, decision ->> 'result') WHEN '1' THEN ' < ' ELSE ' >= ' END
             || coalesce(decision ->> 4, decision ->> 'rollout_pct')
        WHEN 'sticky' THEN 'sticky: '
             || CASE coalesce(decision ->> 1, decision ->> 'result') WHEN '1' THEN 'on' ELSE 'off' END
             || ' since ' || coalesce(decision ->> 4, decision ->> 'since')
    END;

DROP VIEW audit_evaluations;

-- One row per flag decision returned to a caller, schema-1 rows (copied from an SQLite store)
-- and decision records alike, with the reason worded as flagstore words it.
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
