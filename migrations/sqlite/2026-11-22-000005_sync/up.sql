-- Offline push: every applied mutation id with its result, written in the same
-- transaction as the mutation's effect, so a replay finds it and is never applied twice.
-- `result` holds status, version and conflict id only: no clinical values.
CREATE TABLE sync_mutations (
    tenant      TEXT NOT NULL,
    mutation_id TEXT NOT NULL,
    principal   TEXT NOT NULL,
    result      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (tenant, mutation_id)
);

-- Elements changed on both sides of an offline edit. `detail` holds the base, server and
-- client values sealed under the owner's data key (so crypto-shredding erases them too).
CREATE TABLE sync_conflicts (
    id               TEXT   NOT NULL PRIMARY KEY,
    tenant           TEXT   NOT NULL,
    resource_type    TEXT   NOT NULL,
    resource_id      TEXT   NOT NULL,
    patient_id       TEXT,
    mutation_id      TEXT   NOT NULL,
    base_version     BIGINT,
    server_version   BIGINT NOT NULL,
    strategy         TEXT   NOT NULL,
    status           TEXT   NOT NULL,
    detail           TEXT   NOT NULL,
    created_by       TEXT   NOT NULL,
    created_at       TEXT   NOT NULL,
    resolved_by      TEXT,
    resolved_at      TEXT,
    resolved_version BIGINT
);
CREATE INDEX sync_conflicts_by_status ON sync_conflicts (tenant, status, created_at);
