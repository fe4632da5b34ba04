-- audit_flag_ranges rebuilt with its key columns first, and made append-only.
--
-- SQLite before 3.41 (Debian 12's sqlite3 and Python's sqlite3 are 3.40.1) reports
-- "NULL value in audit_flag_ranges.first_id" for every row of a WITHOUT ROWID table whose
-- NOT NULL columns are declared out of primary-key order: a false alarm that made a reviewer's
-- own PRAGMA integrity_check call every healthy store damaged. Declaring the key first avoids
-- it; the rows are copied as they are.
--
-- The ranges say which decision records each flag's audit query reads: a writer who deleted
-- one hid that flag's decisions from `audit --flag`, the admin API and the UI. They are
-- append-only now, like audit_log.
CREATE TABLE audit_flag_ranges_v6 (
    flag     TEXT NOT NULL,
    last_id  INTEGER NOT NULL,
    first_id INTEGER NOT NULL,
    PRIMARY KEY (flag, last_id)
) WITHOUT ROWID;

INSERT INTO audit_flag_ranges_v6 (flag, last_id, first_id)
    SELECT flag, last_id, first_id FROM audit_flag_ranges;

DROP TABLE audit_flag_ranges;

ALTER TABLE audit_flag_ranges_v6 RENAME TO audit_flag_ranges;

CREATE TRIGGER audit_flag_ranges_no_update BEFORE UPDATE ON audit_flag_ranges
BEGIN
    SELECT RAISE(ABORT, 'audit_flag_ranges is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_flag_ranges_no_delete BEFORE DELETE ON audit_flag_ranges
BEGIN
    SELECT RAISE(ABORT, 'audit_flag_ranges is append-only: DELETE refused');
END;
