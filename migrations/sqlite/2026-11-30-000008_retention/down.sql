ALTER TABLE sync_mutations DROP COLUMN resource_id;
ALTER TABLE sync_mutations DROP COLUMN resource_type;
DROP TABLE retention_destructions;
DROP TABLE retention_runs;
DROP TABLE legal_holds;
