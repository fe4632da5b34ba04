-- flagstore schema, version 12 (as migrations/sqlite/V12): one range of decision records per
-- write, not one per flag.
--
-- audit_flag_ranges held a row per requested flag and write transaction. A write's records
-- are all asked for the same flags, so a range now names that list once (`audit_flag_sets`,
-- each distinct sorted list of flag names one row, as JSON text) and a write adds one
-- `audit_ranges` row. A record's flags are the union of the sets of the ranges that cover
-- it, which `check` holds against what the record was asked for. `audit_flag_ranges` stays
-- as a view with its columns, so a reviewer's SQL reads the same rows as before.
--
-- Set ids are given by the writer (the next after the largest, under the audit lock), not by
-- a sequence: the README's writer role then needs no grant beyond INSERT.
CREATE TABLE audit_flag_sets (
    id    BIGINT PRIMARY KEY,
    flags TEXT NOT NULL UNIQUE
);

CREATE TABLE audit_ranges (
    first_id BIGINT NOT NULL,
    last_id  BIGINT NOT NULL,
    flag_set BIGINT NOT NULL REFERENCES audit_flag_sets (id),
    PRIMARY KEY (first_id, last_id, flag_set)
);

-- A flag's records are found through the sets holding it, each set's ranges by last_id.
CREATE INDEX audit_ranges_by_set ON audit_ranges (flag_set, last_id);

-- The old rows of one write share their first and last ids; a run that `check
-- --repair-index` added for one flag is a set of its own, as it was a row of its own. The
-- text is the JSON flagstore writes: names in byte order, no spaces.
CREATE TEMPORARY TABLE grouped_ranges ON COMMIT DROP AS
    SELECT first_id, last_id,
           '[' || string_agg(to_json(flag)::text, ',' ORDER BY flag COLLATE "C") || ']' AS flags
      FROM audit_flag_ranges GROUP BY first_id, last_id;

INSERT INTO audit_flag_sets (id, flags)
    SELECT row_number() OVER (ORDER BY min(first_id)), flags
      FROM grouped_ranges GROUP BY flags;

INSERT INTO audit_ranges (first_id, last_id, flag_set)
    SELECT grouped_ranges.first_id, grouped_ranges.last_id, audit_flag_sets.id
      FROM grouped_ranges JOIN audit_flag_sets ON audit_flag_sets.flags = grouped_ranges.flags;

DROP TABLE grouped_ranges;

DROP TABLE audit_flag_ranges;

DROP FUNCTION audit_flag_ranges_refuse_change();

CREATE VIEW audit_flag_ranges (flag, last_id, first_id) AS
    SELECT listed.flag, audit_ranges.last_id, audit_ranges.first_id
      FROM audit_ranges
      JOIN audit_flag_sets ON audit_flag_sets.id = audit_ranges.flag_set,
           json_array_elements_text(audit_flag_sets.flags::json) AS listed (flag);

-- Append-only, as the table they replace: a deleted range hides its records from
-- `audit --flag`, the admin API and the UI, and a changed set lists them under other flags.
CREATE FUNCTION audit_ranges_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP;
END;
$$;

CREATE TRIGGER audit_flag_sets_no_update BEFORE UPDATE OR DELETE ON audit_flag_sets
    FOR EACH ROW EXECUTE FUNCTION audit_ranges_refuse_change();
CREATE TRIGGER audit_flag_sets_no_truncate BEFORE TRUNCATE ON audit_flag_sets
    FOR EACH STATEMENT EXECUTE FUNCTION audit_ranges_refuse_change();
CREATE TRIGGER audit_ranges_no_update BEFORE UPDATE OR DELETE ON audit_ranges
    FOR EACH ROW EXECUTE FUNCTION audit_ranges_refuse_change();
CREATE TRIGGER audit_ranges_no_truncate BEFORE TRUNCATE ON audit_ranges
    FOR EACH STATEMENT EXECUTE FUNCTION audit_ranges_refuse_change();
