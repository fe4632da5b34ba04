-- audit_flag_ranges read in the order of the records they list, so that `check` can walk the
-- audit log and the ranges side by side in bounded memory (and `copy` can page them): each
-- decision record must be listed by exactly the flags it was asked for.
CREATE INDEX audit_flag_ranges_by_first_id ON audit_flag_ranges (first_id, flag);
