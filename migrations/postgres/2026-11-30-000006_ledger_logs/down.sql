-- Per-tenant logs cannot be folded back into one global log without changing their
-- leaves; going down keeps only the sealed `_legacy` log, as the global log it was.
-- (The append-only triggers are disabled for the removal and restored after it.)
DROP TRIGGER ledger_entries_legacy_sealed ON ledger_entries;
DROP TRIGGER ledger_nodes_legacy_sealed ON ledger_nodes;
DROP FUNCTION ledger_refuse_legacy();
DROP TABLE ledger_logs;
ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_append_only;
ALTER TABLE ledger_nodes DISABLE TRIGGER ledger_nodes_append_only;
ALTER TABLE ledger_checkpoints DISABLE TRIGGER ledger_checkpoints_append_only;
DELETE FROM ledger_entries WHERE log <> '_legacy';
DELETE FROM ledger_nodes WHERE log <> '_legacy';
DELETE FROM ledger_checkpoints WHERE log <> '_legacy';
ALTER TABLE ledger_entries ENABLE ALWAYS TRIGGER ledger_entries_append_only;
ALTER TABLE ledger_nodes ENABLE ALWAYS TRIGGER ledger_nodes_append_only;
ALTER TABLE ledger_checkpoints ENABLE ALWAYS TRIGGER ledger_checkpoints_append_only;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_pkey;
ALTER TABLE ledger_entries ADD PRIMARY KEY (seq);
ALTER TABLE ledger_entries DROP COLUMN log;
DROP INDEX IF EXISTS ledger_entries_by_patient;
CREATE INDEX ledger_entries_by_tenant ON ledger_entries (tenant, seq);
CREATE INDEX ledger_entries_by_patient ON ledger_entries (tenant, patient, seq);
ALTER TABLE ledger_nodes DROP CONSTRAINT ledger_nodes_pkey;
ALTER TABLE ledger_nodes ADD PRIMARY KEY (level, idx);
ALTER TABLE ledger_nodes DROP COLUMN log;
ALTER TABLE ledger_checkpoints DROP CONSTRAINT ledger_checkpoints_pkey;
ALTER TABLE ledger_checkpoints ADD PRIMARY KEY (size);
ALTER TABLE ledger_checkpoints DROP COLUMN log;
