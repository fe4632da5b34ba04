-- flagstore schema, version 8: definition order.
--
-- The prototype evaluated flags in the order they were defined and checked a flag's
-- requirements in the order it listed them, stopping at the first that was off; which one
-- that is decides the reason and the prototype's audit_log entries. Both orders are now kept:
--   flags.position             where the flag stands in the store's order (0 first): a file's
--                              order for the flags it creates, then creation order;
--                              `import --replace` sets the file's order
--   flag_dependencies.position where the requirement stands in its flag's list (0 first)
-- A flag's requirement order is part of its definition (audited in its change rows); the
-- flags' order changes no decision and is not audited.
--
-- Existing stores keep the order they showed until now: names in byte order, requirements
-- likewise.
ALTER TABLE flags ADD COLUMN position INTEGER NOT NULL DEFAULT 0;
UPDATE flags SET position = (SELECT count(*) FROM flags earlier WHERE earlier.name < flags.name);

ALTER TABLE flag_dependencies ADD COLUMN position INTEGER NOT NULL DEFAULT 0;
UPDATE flag_dependencies
   SET position = (SELECT count(*) FROM flag_dependencies earlier
                    WHERE earlier.flag = flag_dependencies.flag
                      AND earlier.requires < flag_dependencies.requires);
