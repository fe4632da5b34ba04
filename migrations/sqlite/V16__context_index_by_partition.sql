-- flagstore schema, version 16 (SQLite): the index of audit rows by context, partitioned by id.
--
-- `audit_log_context` on `(context_id, id)` put each record of a returning context beside
-- that context's older ones: a random leaf per request, and a commit wrote every leaf its
-- requests touched (four fifths of the bytes a returning request wrote; docs/benchmarks.md).
-- Led by `id >> 12`, a record's entry goes to the newest partition of 4,096 ids, whose few
-- leaves every commit shares. A query by context seeks once per partition (SQLite's skip
-- scan), and `ORDER BY id >> 12, id` reads a context's rows in id order without a sort.
DROP INDEX audit_log_context;
CREATE INDEX audit_log_context ON audit_rows (id >> 12, context_id, id);

-- A planner skips through the partitions only where `sqlite_stat1` says the leading column
-- repeats; without statistics it scans every row. The figures are the index's shape, true by
-- construction (4,096 rows a partition, a context's rows in one partition few), written here
-- rather than measured by ANALYZE, so that a store that was small when it migrated is still
-- planned for the log it grows into. `ANALYZE sqlite_schema` makes the table and, the second
-- time, loads the figures into this connection.
ANALYZE sqlite_schema;
DELETE FROM sqlite_stat1 WHERE tbl = 'audit_rows' AND idx = 'audit_log_context';
INSERT INTO sqlite_stat1 (tbl, idx, stat)
VALUES ('audit_rows', 'audit_log_context', '10000000 4096 1 1');
ANALYZE sqlite_schema;
