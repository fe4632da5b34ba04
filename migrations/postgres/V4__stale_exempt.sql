-- flagstore schema, version 4 (as migrations/sqlite/V4): a flag can be exempted from the
-- stale-flag list. Part of the definition: changing it is an audited change row.
ALTER TABLE flags ADD COLUMN stale_exempt INTEGER NOT NULL DEFAULT 0 CHECK (stale_exempt IN (0, 1));
