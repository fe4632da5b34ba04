-- flagstore schema, version 14 (PostgreSQL): the index of change rows by their action.
--
-- A change row is the row with an action (the table's CHECK makes `kind = 'change'` and
-- `action IS NOT NULL` the same rows). SQLite's schema 14 derives `kind` from `action`, and
-- its index can only be found by `action IS NOT NULL`; flagstore's SQL, shared by both
-- backends, asks for change rows so, and this index is the one it then reads here.
DROP INDEX audit_log_changes;
CREATE INDEX audit_log_changes ON audit_log (id) WHERE action IS NOT NULL;
