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

CREATE FUNCTION retention_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', TG_ARGV[0];
END
$$;
CREATE TRIGGER legal_holds_kept BEFORE DELETE ON legal_holds
    FOR EACH ROW EXECUTE FUNCTION retention_refuse('legal holds are released, never deleted');
CREATE TRIGGER retention_destructions_append_only BEFORE UPDATE OR DELETE ON retention_destructions
    FOR EACH ROW EXECUTE FUNCTION retention_refuse('retention_destructions is append-only');
CREATE TRIGGER retention_destructions_no_truncate BEFORE TRUNCATE ON retention_destructions
    FOR EACH STATEMENT EXECUTE FUNCTION retention_refuse('retention_destructions is append-only');

-- The record an offline mutation was about, so a purge can remove the patient's mutation
-- records too (rows written before this migration name none; they hold no values).
ALTER TABLE sync_mutations ADD COLUMN resource_type TEXT;
ALTER TABLE sync_mutations ADD COLUMN resource_id TEXT;
