-- flagstore schema, version 13 (SQLite): a record's decisions as arrays of their facts.
--
-- A decision record held each decision as an object naming its facts
-- ({"flag":"enrich","result":1,"source":"rollout","bucket":37,"rollout_pct":"50"}); the names
-- were more than half of the record's bytes, and the record most of what a request adds to
-- the file. From this version a decision is an array in a fixed order, by source (src/record.rs,
-- README.md): ["enrich",1,"rollout",37,"50"]. Rows already written keep their objects: they
-- are hashed as they are, and the view reads both forms. Nothing is rewritten.
--
-- json_extract of an object's path on an array, or of an array's on an object, is NULL, so
-- each fact is the one of its two paths that is there.
DROP VIEW audit_evaluations;

CREATE VIEW audit_evaluations AS
SELECT l.id AS audit_id, l.ts, l.actor, l.flag, c.key AS context_key, l.result, l.source,
       l.reason
  FROM contexts c JOIN audit_log l ON l.context_id = c.id
 WHERE l.kind = 'evaluation' AND l.flag IS NOT NULL
UNION ALL
SELECT l.id, l.ts, l.actor,
       coalesce(json_extract(d.value, '$[0]'), json_extract(d.value, '$.flag')),
       c.key,
       coalesce(json_extract(d.value, '$[1]'), json_extract(d.value, '$.result')),
       coalesce(json_extract(d.value, '$[2]'), json_extract(d.value, '$.source')),
       CASE coalesce(json_extract(d.value, '$[2]'), json_extract(d.value, '$.source'))
           WHEN 'dependency' THEN
               (SELECT group_concat('requires ' || r.value || ': ', '')
                  FROM json_each(d.value, CASE d.type WHEN 'array' THEN '$[3]' ELSE '$.requires' END) r)
               || (SELECT CASE coalesce(json_extract(t.value, '$[2]'), json_extract(t.value, '$.source'))
                              WHEN 'unknown' THEN 'unknown flag'
                              WHEN 'disabled' THEN 'disabled'
                              WHEN 'rollout' THEN 'rollout: bucket '
                                   || coalesce(json_extract(t.value, '$[3]'), json_extract(t.value, '$.bucket'))
                                   || CASE coalesce(json_extract(t.value, '$[1]'), json_extract(t.value, '$.result'))
                                          WHEN 1 THEN ' < ' ELSE ' >= ' END
                                   || coalesce(json_extract(t.value, '$[4]'), json_extract(t.value, '$.rollout_pct'))
                              WHEN 'sticky' THEN 'sticky: '
                                   || CASE coalesce(json_extract(t.value, '$[1]'), json_extract(t.value, '$.result'))
                                          WHEN 1 THEN 'on' ELSE 'off' END
                                   || ' since '
                                   || coalesce(json_extract(t.value, '$[4]'), json_extract(t.value, '$.since'))
                          END
                     FROM json_each(l.detail, '$.decisions') t
                    WHERE coalesce(json_extract(t.value, '$[0]'), json_extract(t.value, '$.flag'))
                          = coalesce(json_extract(d.value, '$[3][#-1]'), json_extract(d.value, '$.requires[#-1]'))
                    LIMIT 1)
           WHEN 'unknown' THEN 'unknown flag'
           WHEN 'disabled' THEN 'disabled'
           WHEN 'cycle' THEN coalesce(json_extract(d.value, '$[3]'), json_extract(d.value, '$.reason'))
           WHEN 'rollout' THEN 'rollout: bucket '
                || coalesce(json_extract(d.value, '$[3]'), json_extract(d.value, '$.bucket'))
                || CASE coalesce(json_extract(d.value, '$[1]'), json_extract(d.value, '$.result'))
                       WHEN 1 THEN ' < ' ELSE ' >= ' END
                || coalesce(json_extract(d.value, '$[4]'), json_extract(d.value, '$.rollout_pct'))
           WHEN 'sticky' THEN 'sticky: '
                || CASE coalesce(json_extract(d.value, '$[1]'), json_extract(d.value, '$.result'))
                       WHEN 1 THEN 'on' ELSE 'off' END
                || ' since ' || coalesce(json_extract(d.value, '$[4]'), json_extract(d.value, '$.since'))
       END
  FROM contexts c JOIN audit_log l ON l.context_id = c.id, json_each(l.detail, '$.decisions') d
 WHERE l.kind = 'evaluation' AND l.flag IS NULL
   AND d.key < json_extract(l.detail, '$.requested');
