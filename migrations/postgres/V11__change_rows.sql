-- flagstore schema, version 11 (as migrations/sqlite/V11): the change rows, found without
-- reading the whole log.
--
-- A reviewer's list of changes (`audit --kind change`, the UI's filter) and every replay of
-- the flags' history (`check`, `explain --at`) ask for the few change rows among millions of
-- decision records, which the table held in id order only: each read every record. The index
-- holds the change rows alone; flagstore names the kind in its SQL as a literal, as the
-- index's WHERE does, and so does a reviewer's `WHERE kind = 'change'`.
CREATE INDEX audit_log_changes ON audit_log (id) WHERE kind = 'change';
