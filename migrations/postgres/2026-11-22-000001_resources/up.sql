-- Current state of each resource: one row per (tenant, type, id), the optimistic-lock row.
CREATE TABLE resources (
    tenant        TEXT     NOT NULL,
    resource_type TEXT     NOT NULL,
    id            TEXT     NOT NULL,
    version_id    BIGINT   NOT NULL,
    deleted       SMALLINT NOT NULL DEFAULT 0,
    last_updated  TIMESTAMP NOT NULL,
    -- Patient compartment owner (the Patient's own id for a Patient), NULL outside it.
    patient_id    TEXT,
    content       TEXT     NOT NULL,
    PRIMARY KEY (tenant, resource_type, id)
);
CREATE INDEX resources_by_patient ON resources (tenant, patient_id);

-- Every version ever written, the current one included; a delete is a version without content.
CREATE TABLE resource_versions (
    tenant        TEXT     NOT NULL,
    resource_type TEXT     NOT NULL,
    id            TEXT     NOT NULL,
    version_id    BIGINT   NOT NULL,
    deleted       SMALLINT NOT NULL DEFAULT 0,
    last_updated  TIMESTAMP NOT NULL,
    content       TEXT,
    PRIMARY KEY (tenant, resource_type, id, version_id),
    FOREIGN KEY (tenant, resource_type, id) REFERENCES resources (tenant, resource_type, id)
);

-- Search index of the current version: one row per (parameter, normalised token).
CREATE TABLE search_tokens (
    tenant        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    token         TEXT NOT NULL,
    PRIMARY KEY (tenant, resource_type, param, token, resource_id),
    FOREIGN KEY (tenant, resource_type, resource_id) REFERENCES resources (tenant, resource_type, id)
);
-- Leads with resource_id: a (tenant, resource_type) prefix here would tempt planners
-- without statistics away from the primary key, which binds every search column.
CREATE INDEX search_tokens_by_resource ON search_tokens (resource_id, tenant, resource_type);
