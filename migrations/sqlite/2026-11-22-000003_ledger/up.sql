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

CREATE TRIGGER ledger_entries_append_only_update BEFORE UPDATE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END;
CREATE TRIGGER ledger_entries_append_only_delete BEFORE DELETE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END;
CREATE TRIGGER ledger_nodes_append_only_update BEFORE UPDATE ON ledger_nodes
BEGIN SELECT RAISE(ABORT, 'ledger_nodes is append-only'); END;
CREATE TRIGGER ledger_nodes_append_only_delete BEFORE DELETE ON ledger_nodes
BEGIN SELECT RAISE(ABORT, 'ledger_nodes is append-only'); END;
CREATE TRIGGER ledger_checkpoints_append_only_update BEFORE UPDATE ON ledger_checkpoints
BEGIN SELECT RAISE(ABORT, 'ledger_checkpoints is append-only'); END;
CREATE TRIGGER ledger_checkpoints_append_only_delete BEFORE DELETE ON ledger_checkpoints
BEGIN SELECT RAISE(ABORT, 'ledger_checkpoints is append-only'); END;
