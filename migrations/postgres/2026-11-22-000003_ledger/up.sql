-- The audit ledger: one global, append-only log. `leaf` holds the entry's canonical JSON
-- bytes (the Merkle leaf); `seq` is dense and 0-based. The other columns are copies of
-- leaf fields for filtering and are covered by the leaf hash through `leaf`.
CREATE TABLE ledger_entries (
    seq       BIGINT NOT NULL PRIMARY KEY,
    time      TEXT   NOT NULL,
    tenant    TEXT,
    actor_sub TEXT,
    action    TEXT   NOT NULL,
    patient   TEXT,
    outcome   TEXT   NOT NULL,
    leaf      TEXT   NOT NULL,
    leaf_hash TEXT   NOT NULL
);
CREATE INDEX ledger_entries_by_tenant ON ledger_entries (tenant, seq);
CREATE INDEX ledger_entries_by_patient ON ledger_entries (tenant, patient, seq);

-- Complete-subtree hashes (level, index): final once written.
CREATE TABLE ledger_nodes (
    level BIGINT NOT NULL,
    idx   BIGINT NOT NULL,
    hash  TEXT   NOT NULL,
    PRIMARY KEY (level, idx)
);

-- Signed checkpoints (C2SP signed notes).
CREATE TABLE ledger_checkpoints (
    size      BIGINT NOT NULL PRIMARY KEY,
    root_hash TEXT   NOT NULL,
    timestamp TEXT   NOT NULL,
    note      TEXT   NOT NULL
);

CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$;

-- ENABLE ALWAYS: the triggers fire even with session_replication_role = replica.
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
ALTER TABLE ledger_entries ENABLE ALWAYS TRIGGER ledger_entries_append_only;
ALTER TABLE ledger_entries ENABLE ALWAYS TRIGGER ledger_entries_no_truncate;

CREATE TRIGGER ledger_nodes_append_only BEFORE UPDATE OR DELETE ON ledger_nodes
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_nodes_no_truncate BEFORE TRUNCATE ON ledger_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
ALTER TABLE ledger_nodes ENABLE ALWAYS TRIGGER ledger_nodes_append_only;
ALTER TABLE ledger_nodes ENABLE ALWAYS TRIGGER ledger_nodes_no_truncate;

CREATE TRIGGER ledger_checkpoints_append_only BEFORE UPDATE OR DELETE ON ledger_checkpoints
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_checkpoints_no_truncate BEFORE TRUNCATE ON ledger_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
ALTER TABLE ledger_checkpoints ENABLE ALWAYS TRIGGER ledger_checkpoints_append_only;
ALTER TABLE ledger_checkpoints ENABLE ALWAYS TRIGGER ledger_checkpoints_no_truncate;
