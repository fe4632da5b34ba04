-- flagstore schema, version 9: the token change rows, found without reading the whole log.
-- `serve` accepts only the tokens their change rows explain, and re-reads them every second;
-- they name no flag, so no other index finds them.
CREATE INDEX audit_log_token_changes ON audit_log (id)
    WHERE action = 'token_create' OR action = 'token_revoke';
