-- audit_flag_ranges read in the order of the records they list (as migrations/sqlite/V7), so
-- that `check` can walk the audit log and the ranges side by side in bounded memory.
CREATE INDEX audit_flag_ranges_by_first_id ON audit_flag_ranges (first_id, flag);
