-- The change log: one row per create, update and delete (and later purge), written in the
-- same transaction as the change. `cursor` is allocated under the ledger's append lock,
-- held until commit, so cursor order is commit order and a reader resuming after a cursor
-- never skips a change that commits later. Rows hold references only, never content.
CREATE TABLE change_log (
    cursor        BIGINT NOT NULL PRIMARY KEY,
    tenant        TEXT   NOT NULL,
    resource_type TEXT   NOT NULL,
    resource_id   TEXT   NOT NULL,
    version_id    BIGINT NOT NULL,
    op            TEXT   NOT NULL,
    patient_id    TEXT,
    committed_at  TEXT   NOT NULL
);
CREATE INDEX change_log_by_tenant ON change_log (tenant, cursor);
