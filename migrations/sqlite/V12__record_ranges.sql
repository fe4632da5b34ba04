-- flagstore schema, version 12: one range of decision records per write, not one per flag.
--
-- audit_flag_ranges held a row per requested flag and write transaction: an in-process
-- `evaluate_all` of 8 flags inserted 8 rows into two B-trees for a single record, a fifth of
-- the call's time. A write's records are all asked for the same flags, so a range now names
-- that list once (`audit_flag_sets`, each distinct sorted list of flag names one row, as
-- JSON) and a write adds one `audit_ranges` row. A record's flags are the union of the sets
-- of the ranges that cover it, which `check` holds against what the record was asked for.
-- `audit_flag_ranges` stays as a view with its columns, so a reviewer's SQL reads the same
-- rows as before.
CREATE TABLE audit_flag_sets (
    id    INTEGER PRIMARY KEY,
    flags TEXT NOT NULL UNIQUE
);

CREATE TABLE audit_ranges (
    first_id INTEGER NOT NULL,
    last_id  INTEGER NOT NULL,
    flag_set INTEGER NOT NULL REFERENCES audit_flag_sets (id),
    PRIMARY KEY (first_id, last_id, flag_set)
) WITHOUT ROWID;

-- A flag's records are found through the sets holding it, each set's ranges by last_id.
CREATE INDEX audit_ranges_by_set ON audit_ranges (flag_set, last_id);

-- The old rows of one write share their first and last ids; a run that `check
-- --repair-index` added for one flag is a set of its own, as it was a row of its own. Rows
-- are grouped by first id alone where that is all it takes, in the order of the index by
-- first id, so a store of many writes (80 million rows for ten million in-process
-- evaluate_all calls of 8 flags) streams through instead of being sorted in memory; only the
-- first ids where a repaired run starts beside another range are grouped by both ids.
CREATE TEMP VIEW legacy_ranges AS
    SELECT first_id, max(last_id) AS last_id, json_group_array(flag ORDER BY flag) AS flags
      FROM audit_flag_ranges GROUP BY first_id HAVING min(last_id) = max(last_id)
    UNION ALL
    SELECT first_id, last_id, json_group_array(flag ORDER BY flag)
      FROM audit_flag_ranges
     WHERE first_id IN (SELECT first_id FROM audit_flag_ranges
                         GROUP BY first_id HAVING min(last_id) <> max(last_id))
     GROUP BY first_id, last_id;

INSERT INTO audit_flag_sets (flags)
    SELECT flags FROM legacy_ranges WHERE true ON CONFLICT (flags) DO NOTHING;

INSERT INTO audit_ranges (first_id, last_id, flag_set)
    SELECT legacy_ranges.first_id, legacy_ranges.last_id, audit_flag_sets.id
      FROM legacy_ranges JOIN audit_flag_sets ON audit_flag_sets.flags = legacy_ranges.flags;

DROP VIEW temp.legacy_ranges;

DROP TABLE audit_flag_ranges;

CREATE VIEW audit_flag_ranges (flag, last_id, first_id) AS
    SELECT listed.value, audit_ranges.last_id, audit_ranges.first_id
      FROM audit_ranges
      JOIN audit_flag_sets ON audit_flag_sets.id = audit_ranges.flag_set,
           json_each(audit_flag_sets.flags) AS listed;

-- Append-only, as the table they replace: a deleted range hides its records from
-- `audit --flag`, the admin API and the UI, and a changed set lists them under other flags.
CREATE TRIGGER audit_flag_sets_no_update BEFORE UPDATE ON audit_flag_sets
BEGIN
    SELECT RAISE(ABORT, 'audit_flag_sets is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_flag_sets_no_delete BEFORE DELETE ON audit_flag_sets
BEGIN
    SELECT RAISE(ABORT, 'audit_flag_sets is append-only: DELETE refused');
END;

CREATE TRIGGER audit_ranges_no_update BEFORE UPDATE ON audit_ranges
BEGIN
    SELECT RAISE(ABORT, 'audit_ranges is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_ranges_no_delete BEFORE DELETE ON audit_ranges
BEGIN
    SELECT RAISE(ABORT, 'audit_ranges is append-only: DELETE refused');
END;
