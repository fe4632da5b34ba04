-- The ranges say which decision records each flag's audit query reads: a writer who deleted
-- one hid that flag's decisions from `audit --flag`, the admin API and the UI. They are
-- append-only now, like audit_log (SQLite's schema 6 does the same).
CREATE FUNCTION audit_flag_ranges_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_flag_ranges is append-only: % refused', TG_OP;
END;
$$;

CREATE TRIGGER audit_flag_ranges_no_update BEFORE UPDATE OR DELETE ON audit_flag_ranges
    FOR EACH ROW EXECUTE FUNCTION audit_flag_ranges_refuse_change();
CREATE TRIGGER audit_flag_ranges_no_truncate BEFORE TRUNCATE ON audit_flag_ranges
    FOR EACH STATEMENT EXECUTE FUNCTION audit_flag_ranges_refuse_change();
