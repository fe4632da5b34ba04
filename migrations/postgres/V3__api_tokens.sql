-- flagstore schema, version 3: API tokens for `flagstore serve` (as migrations/sqlite/V3).
-- A token is stored only as the SHA-256 of its text. Token changes are change rows that name
-- no flag.

CREATE TABLE api_tokens (
    name         TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 128),
    token_sha256 TEXT NOT NULL UNIQUE CHECK (length(token_sha256) = 64),
    -- viewer: evaluate and read; operator: also change flags; admin: also manage tokens.
    role         TEXT NOT NULL CHECK (role = 'viewer' OR role = 'operator' OR role = 'admin'),
    created_at   TEXT NOT NULL,
    revoked_at   TEXT
);

ALTER TABLE audit_log DROP CONSTRAINT audit_log_flag_check;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_flag_check
    CHECK (flag IS NOT NULL OR kind = 'evaluation' OR action IN ('token_create', 'token_revoke'));
ALTER TABLE audit_log DROP CONSTRAINT audit_log_reason_check;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_reason_check
    CHECK (reason IS NOT NULL OR kind = 'evaluation');
