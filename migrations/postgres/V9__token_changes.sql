-- flagstore schema, version 9 (as migrations/sqlite/V9): the token change rows, found without
-- reading the whole log, for serve's check of every token against them.
CREATE INDEX audit_log_token_changes ON audit_log (id)
    WHERE action = 'token_create' OR action = 'token_revoke';
