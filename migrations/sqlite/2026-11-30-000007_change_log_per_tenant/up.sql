-- Each tenant's change log has its own cursor sequence: a change's cursor is the tenant's
-- `max + 1`, allocated under a lock of that tenant's (SQLite: the write transaction) held
-- until commit, so cursor order is commit order within the tenant, and writers of
-- different tenants never wait on one another for it. Rows written before keep their
-- cursors, which already increase within each tenant; new ones continue from there.
CREATE TABLE change_log_v2 (
    tenant        TEXT   NOT NULL,
    cursor        BIGINT NOT NULL,
    resource_type TEXT   NOT NULL,
    resource_id   TEXT   NOT NULL,
    version_id    BIGINT NOT NULL,
    op            TEXT   NOT NULL,
    patient_id    TEXT,
    committed_at  TEXT   NOT NULL,
    PRIMARY KEY (tenant, cursor)
);
INSERT INTO change_log_v2 (tenant, cursor, resource_type, resource_id, version_id, op, patient_id, committed_at)
    SELECT tenant, cursor, resource_type, resource_id, version_id, op, patient_id, committed_at FROM change_log;
DROP TABLE change_log;
ALTER TABLE change_log_v2 RENAME TO change_log;
