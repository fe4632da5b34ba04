-- flagstore schema, version 8 (as migrations/sqlite/V8; PostgreSQL has no version 7, which
-- was SQLite's alone, so the two numberings meet again here): definition order.
-- flags.position is where a flag stands in the store's order, flag_dependencies.position
-- where a requirement stands in its flag's list, 0 first. Existing stores keep the order
-- they showed until now: names in byte order (COLLATE "C"), whatever the database's collation.
ALTER TABLE flags ADD COLUMN position INTEGER NOT NULL DEFAULT 0;
UPDATE flags f
   SET position = ranked.position
  FROM (SELECT name, row_number() OVER (ORDER BY name COLLATE "C") - 1 AS position
          FROM flags) ranked
 WHERE ranked.name = f.name;

ALTER TABLE flag_dependencies ADD COLUMN position INTEGER NOT NULL DEFAULT 0;
UPDATE flag_dependencies d
   SET position = ranked.position
  FROM (SELECT flag, requires,
               row_number() OVER (PARTITION BY flag ORDER BY requires COLLATE "C") - 1 AS position
          FROM flag_dependencies) ranked
 WHERE ranked.flag = d.flag AND ranked.requires = d.requires;
