-- One global cursor again: rows are renumbered in their order of commit time.
CREATE TABLE change_log_v1 (
    cursor        BIGINT NOT NULL PRIMARY KEY,
    tenant        TEXT   NOT NULL,
    resource_type TEXT   NOT NULL,
    resource_id   TEXT   NOT NULL,
    version_id    BIGINT NOT NULL,
    op            TEXT   NOT NULL,
    patient_id    TEXT,
    committed_at  TEXT   NOT NULL
);
INSERT INTO change_log_v1 (cursor, tenant, resource_type, resource_id, version_id, op, patient_id, committed_at)
    SELECT ROW_NUMBER() OVER (ORDER BY committed_at, tenant, cursor), tenant, resource_type, resource_id, version_id, op,
           patient_id, committed_at
    FROM change_log;
DROP TABLE change_log;
ALTER TABLE change_log_v1 RENAME TO change_log;
CREATE INDEX change_log_by_tenant ON change_log (tenant, cursor);
