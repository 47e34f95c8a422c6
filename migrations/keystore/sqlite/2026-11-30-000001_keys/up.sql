-- The key store: a database of its own, apart from the records, so that a backup of the
-- records alone never holds a key that opens them. Everything here is wrapped: tenant
-- keys (AES-256-GCM, base64) under master-key version `kek_version` by the key provider,
-- data keys under their tenant key.
CREATE TABLE tenant_keys (
    tenant      TEXT      NOT NULL PRIMARY KEY,
    kek_version BIGINT    NOT NULL,
    wrapped     TEXT      NOT NULL,
    created_at  TIMESTAMP NOT NULL
);

-- Per-owner data keys (a Patient, whose records share it, or a Practitioner). Destroying
-- one (crypto-shredding) sets `wrapped` to NULL and says why in `destroyed_reason`:
-- every element sealed under it, in every copy of the records, stops opening.
CREATE TABLE data_keys (
    key_id           BIGINT    NOT NULL PRIMARY KEY,
    tenant           TEXT      NOT NULL,
    owner            TEXT      NOT NULL,
    wrapped          TEXT,
    created_at       TIMESTAMP NOT NULL,
    destroyed_at     TIMESTAMP,
    destroyed_reason TEXT,
    UNIQUE (tenant, owner)
);
