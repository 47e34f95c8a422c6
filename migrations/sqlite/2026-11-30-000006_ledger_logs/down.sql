-- Per-tenant logs cannot be folded back into one global log without changing their
-- leaves; going down keeps only the sealed `_legacy` log, as the global log it was.
CREATE TABLE ledger_entries_v1 (
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
INSERT INTO ledger_entries_v1 SELECT seq, time, tenant, actor_sub, action, patient, outcome, leaf, leaf_hash
    FROM ledger_entries WHERE log = '_legacy';
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_v1 RENAME TO ledger_entries;
CREATE INDEX ledger_entries_by_tenant ON ledger_entries (tenant, seq);
CREATE INDEX ledger_entries_by_patient ON ledger_entries (tenant, patient, seq);

CREATE TABLE ledger_nodes_v1 (
    level BIGINT NOT NULL,
    idx   BIGINT NOT NULL,
    hash  TEXT   NOT NULL,
    PRIMARY KEY (level, idx)
);
INSERT INTO ledger_nodes_v1 SELECT level, idx, hash FROM ledger_nodes WHERE log = '_legacy';
DROP TABLE ledger_nodes;
ALTER TABLE ledger_nodes_v1 RENAME TO ledger_nodes;

CREATE TABLE ledger_checkpoints_v1 (
    size      BIGINT NOT NULL PRIMARY KEY,
    root_hash TEXT   NOT NULL,
    timestamp TEXT   NOT NULL,
    note      TEXT   NOT NULL
);
INSERT INTO ledger_checkpoints_v1 SELECT size, root_hash, timestamp, note FROM ledger_checkpoints WHERE log = '_legacy';
DROP TABLE ledger_checkpoints;
ALTER TABLE ledger_checkpoints_v1 RENAME TO ledger_checkpoints;
DROP TABLE ledger_logs;

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
