-- Subtree hashes in one B-tree: a `WITHOUT ROWID` table keyed by (log, level, idx), where
-- a rowid table kept the rows and a separate index of the same key. Rows are copied as
-- they are; the append-only and sealed-legacy triggers are recreated on the new table.
CREATE TABLE ledger_nodes_v3 (
    log   TEXT   NOT NULL,
    level BIGINT NOT NULL,
    idx   BIGINT NOT NULL,
    hash  TEXT   NOT NULL,
    PRIMARY KEY (log, level, idx)
) WITHOUT ROWID;
INSERT INTO ledger_nodes_v3 (log, level, idx, hash) SELECT log, level, idx, hash FROM ledger_nodes;
DROP TABLE ledger_nodes;
ALTER TABLE ledger_nodes_v3 RENAME TO ledger_nodes;

CREATE TRIGGER ledger_nodes_append_only_update BEFORE UPDATE ON ledger_nodes
BEGIN SELECT RAISE(ABORT, 'ledger_nodes is append-only'); END;
CREATE TRIGGER ledger_nodes_append_only_delete BEFORE DELETE ON ledger_nodes
BEGIN SELECT RAISE(ABORT, 'ledger_nodes is append-only'); END;
CREATE TRIGGER ledger_nodes_legacy_sealed BEFORE INSERT ON ledger_nodes WHEN NEW.log = '_legacy'
BEGIN SELECT RAISE(ABORT, 'the _legacy ledger log is sealed'); END;
