-- One verifiable log per tenant. Every ledger row now belongs to a log: a tenant's (the
-- log id is the tenant id), `_platform` (entries with no trusted tenant), or `_legacy`:
-- the single global log written before this migration, kept exactly as it was (its
-- canonical bytes include `seq`, so moving an entry to another log would change its leaf
-- and void the checkpoints already signed over it). `_legacy` is sealed: no entries or
-- subtree hashes are ever added to it. Tenant ids cannot begin with `_`, so no tenant log
-- can take one of these names. Adding a column rewrites no row and fires no trigger.
CREATE TABLE ledger_logs (
    log        TEXT NOT NULL PRIMARY KEY,
    created_at TEXT NOT NULL
);
INSERT INTO ledger_logs (log, created_at)
    SELECT '_legacy', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
    WHERE EXISTS (SELECT 1 FROM ledger_entries) OR EXISTS (SELECT 1 FROM ledger_checkpoints);

ALTER TABLE ledger_entries ADD COLUMN log TEXT NOT NULL DEFAULT '_legacy';
ALTER TABLE ledger_entries ALTER COLUMN log DROP DEFAULT;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_pkey;
ALTER TABLE ledger_entries ADD PRIMARY KEY (log, seq);
DROP INDEX ledger_entries_by_tenant;
DROP INDEX ledger_entries_by_patient;
CREATE INDEX ledger_entries_by_patient ON ledger_entries (log, patient, seq);

ALTER TABLE ledger_nodes ADD COLUMN log TEXT NOT NULL DEFAULT '_legacy';
ALTER TABLE ledger_nodes ALTER COLUMN log DROP DEFAULT;
ALTER TABLE ledger_nodes DROP CONSTRAINT ledger_nodes_pkey;
ALTER TABLE ledger_nodes ADD PRIMARY KEY (log, level, idx);

ALTER TABLE ledger_checkpoints ADD COLUMN log TEXT NOT NULL DEFAULT '_legacy';
ALTER TABLE ledger_checkpoints ALTER COLUMN log DROP DEFAULT;
ALTER TABLE ledger_checkpoints DROP CONSTRAINT ledger_checkpoints_pkey;
ALTER TABLE ledger_checkpoints ADD PRIMARY KEY (log, size);

CREATE FUNCTION ledger_refuse_legacy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.log = '_legacy' THEN
        RAISE EXCEPTION 'the _legacy ledger log is sealed';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER ledger_entries_legacy_sealed BEFORE INSERT ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_legacy();
ALTER TABLE ledger_entries ENABLE ALWAYS TRIGGER ledger_entries_legacy_sealed;
CREATE TRIGGER ledger_nodes_legacy_sealed BEFORE INSERT ON ledger_nodes
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_legacy();
ALTER TABLE ledger_nodes ENABLE ALWAYS TRIGGER ledger_nodes_legacy_sealed;

CREATE TRIGGER ledger_logs_append_only BEFORE UPDATE OR DELETE ON ledger_logs
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_logs_no_truncate BEFORE TRUNCATE ON ledger_logs
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
ALTER TABLE ledger_logs ENABLE ALWAYS TRIGGER ledger_logs_append_only;
ALTER TABLE ledger_logs ENABLE ALWAYS TRIGGER ledger_logs_no_truncate;
