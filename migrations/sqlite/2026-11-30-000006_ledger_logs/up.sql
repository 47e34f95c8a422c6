-- One verifiable log per tenant. Every ledger row now belongs to a log: a tenant's (the
-- log id is the tenant id), `_platform` (entries with no trusted tenant), or `_legacy`:
-- the single global log written before this migration, kept exactly as it was (its
-- canonical bytes include `seq`, so moving an entry to another log would change its leaf
-- and void the checkpoints already signed over it). `_legacy` is sealed: no entries or
-- subtree hashes are ever added to it. Tenant ids cannot begin with `_`, so no tenant log
-- can take one of these names.
CREATE TABLE ledger_logs (
    log        TEXT NOT NULL PRIMARY KEY,
    created_at TEXT NOT NULL
);
INSERT INTO ledger_logs (log, created_at)
    SELECT '_legacy', strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    WHERE EXISTS (SELECT 1 FROM ledger_entries) OR EXISTS (SELECT 1 FROM ledger_checkpoints);

-- SQLite cannot change a primary key: each table is rebuilt with `log` leading it, the
-- rows copied into `_legacy`. Dropping a table fires no DELETE trigger.
CREATE TABLE ledger_entries_v2 (
    log       TEXT   NOT NULL,
    seq       BIGINT NOT NULL,
    time      TEXT   NOT NULL,
    tenant    TEXT,
    actor_sub TEXT,
    action    TEXT   NOT NULL,
    patient   TEXT,
    outcome   TEXT   NOT NULL,
    leaf      TEXT   NOT NULL,
    leaf_hash TEXT   NOT NULL,
    PRIMARY KEY (log, seq)
);
INSERT INTO ledger_entries_v2 (log, seq, time, tenant, actor_sub, action, patient, outcome, leaf, leaf_hash)
    SELECT '_legacy', seq, time, tenant, actor_sub, action, patient, outcome, leaf, leaf_hash FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_v2 RENAME TO ledger_entries;
CREATE INDEX ledger_entries_by_patient ON ledger_entries (log, patient, seq);

CREATE TABLE ledger_nodes_v2 (
    log   TEXT   NOT NULL,
    level BIGINT NOT NULL,
    idx   BIGINT NOT NULL,
    hash  TEXT   NOT NULL,
    PRIMARY KEY (log, level, idx)
);
INSERT INTO ledger_nodes_v2 (log, level, idx, hash) SELECT '_legacy', level, idx, hash FROM ledger_nodes;
DROP TABLE ledger_nodes;
ALTER TABLE ledger_nodes_v2 RENAME TO ledger_nodes;

CREATE TABLE ledger_checkpoints_v2 (
    log       TEXT   NOT NULL,
    size      BIGINT NOT NULL,
    root_hash TEXT   NOT NULL,
    timestamp TEXT   NOT NULL,
    note      TEXT   NOT NULL,
    PRIMARY KEY (log, size)
);
INSERT INTO ledger_checkpoints_v2 (log, size, root_hash, timestamp, note)
    SELECT '_legacy', size, root_hash, timestamp, note FROM ledger_checkpoints;
DROP TABLE ledger_checkpoints;
ALTER TABLE ledger_checkpoints_v2 RENAME TO ledger_checkpoints;

CREATE TRIGGER ledger_entries_append_only_update BEFORE UPDATE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END;
CREATE TRIGGER ledger_entries_append_only_delete BEFORE DELETE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END;
CREATE TRIGGER ledger_entries_legacy_sealed BEFORE INSERT ON ledger_entries WHEN NEW.log = '_legacy'
BEGIN SELECT RAISE(ABORT, 'the _legacy ledger log is sealed'); END;
CREATE TRIGGER ledger_nodes_append_only_update BEFORE UPDATE ON ledger_nodes
BEGIN SELECT RAISE(ABORT, 'ledger_nodes is append-only'); END;
CREATE TRIGGER ledger_nodes_append_only_delete BEFORE DELETE ON ledger_nodes
BEGIN SELECT RAISE(ABORT, 'ledger_nodes is append-only'); END;
CREATE TRIGGER ledger_nodes_legacy_sealed BEFORE INSERT ON ledger_nodes WHEN NEW.log = '_legacy'
BEGIN SELECT RAISE(ABORT, 'the _legacy ledger log is sealed'); END;
CREATE TRIGGER ledger_checkpoints_append_only_update BEFORE UPDATE ON ledger_checkpoints
BEGIN SELECT RAISE(ABORT, 'ledger_checkpoints is append-only'); END;
CREATE TRIGGER ledger_checkpoints_append_only_delete BEFORE DELETE ON ledger_checkpoints
BEGIN SELECT RAISE(ABORT, 'ledger_checkpoints is append-only'); END;
CREATE TRIGGER ledger_logs_append_only_update BEFORE UPDATE ON ledger_logs
BEGIN SELECT RAISE(ABORT, 'ledger_logs is append-only'); END;
CREATE TRIGGER ledger_logs_append_only_delete BEFORE DELETE ON ledger_logs
BEGIN SELECT RAISE(ABORT, 'ledger_logs is append-only'); END;
