-- flagstore schema, version 4: a flag can be exempted from the stale-flag list (a permanent
-- switch meant to give everyone the same answer). Part of the definition: changing it is an
-- audited change row like any other field.
ALTER TABLE flags ADD COLUMN stale_exempt INTEGER NOT NULL DEFAULT 0 CHECK (stale_exempt IN (0, 1));
