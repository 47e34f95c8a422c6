-- Retention (SPEC section 7): legal holds, the runs of the retention job and the
-- destruction record of every patient it purged. A hold is released, never deleted; a
-- destruction record is never changed or deleted: both are evidence the reviewer's report
-- lists. Patients are named by id only.
CREATE TABLE legal_holds (
    id          TEXT NOT NULL PRIMARY KEY,
    tenant      TEXT NOT NULL,
    patient_id  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    released_by TEXT,
    released_at TEXT
);
CREATE INDEX legal_holds_by_patient ON legal_holds (tenant, patient_id);

CREATE TABLE retention_runs (
    id           TEXT NOT NULL PRIMARY KEY,
    trigger_kind TEXT NOT NULL,
    evaluated_at TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    purged       BIGINT NOT NULL
);

CREATE TABLE retention_destructions (
    tenant       TEXT NOT NULL,
    patient_id   TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    rule         TEXT NOT NULL,
    category     TEXT NOT NULL,
    resources    TEXT NOT NULL,
    care_team    TEXT NOT NULL,
    destroyed_at TEXT NOT NULL,
    PRIMARY KEY (tenant, patient_id)
);
CREATE INDEX retention_destructions_by_run ON retention_destructions (run_id);

CREATE TRIGGER legal_holds_kept BEFORE DELETE ON legal_holds
BEGIN SELECT RAISE(ABORT, 'legal holds are released, never deleted'); END;
CREATE TRIGGER retention_destructions_append_only_update BEFORE UPDATE ON retention_destructions
BEGIN SELECT RAISE(ABORT, 'retention_destructions is append-only'); END;
CREATE TRIGGER retention_destructions_append_only_delete BEFORE DELETE ON retention_destructions
BEGIN SELECT RAISE(ABORT, 'retention_destructions is append-only'); END;

-- The record an offline mutation was about, so a purge can remove the patient's mutation
-- records too (rows written before this migration name none; they hold no values).
ALTER TABLE sync_mutations ADD COLUMN resource_type TEXT;
ALTER TABLE sync_mutations ADD COLUMN resource_id TEXT;
