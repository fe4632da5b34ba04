-- flagstore schema, version 15 (PostgreSQL): an assignment's flag is proven to exist by the
-- writer, as on SQLite, instead of by a foreign-key check per inserted row.
--
-- Every write takes the store's writer lock and reads the flags it evaluates under it, and
-- deleting a flag deletes its assignments by statement (both backends); so the per-row check
-- proved nothing the lock does not, at a fifth of serve's time with new keys (an SPI query per
-- assignment, replanned per row under flagstore's `plan_cache_mode`; docs/benchmarks.md).
-- `flagstore check` names an assignment whose flag is gone, as it does on SQLite.
-- IF EXISTS: a store whose owner already dropped it by hand migrates all the same.
ALTER TABLE assignments DROP CONSTRAINT IF EXISTS assignments_flag_fkey;
