-- Per-tenant keys, each wrapped (AES-256-GCM envelope, base64) under master-key version
-- `kek_version`. A tenant key wraps the tenant's data keys and derives its blind-index key.
CREATE TABLE tenant_keys (
    tenant      TEXT      NOT NULL PRIMARY KEY,
    kek_version BIGINT    NOT NULL,
    wrapped     TEXT      NOT NULL,
    created_at  TIMESTAMP NOT NULL
);

-- Per-owner data keys (a Patient, whose records share it, or a Practitioner), wrapped under
-- the tenant key. Crypto-shredding sets `wrapped` to NULL: every element sealed under the
-- key is then unreadable wherever a copy of it lies.
CREATE TABLE data_keys (
    key_id       BIGINT    NOT NULL PRIMARY KEY,
    tenant       TEXT      NOT NULL,
    owner        TEXT      NOT NULL,
    wrapped      TEXT,
    created_at   TIMESTAMP NOT NULL,
    destroyed_at TIMESTAMP,
    UNIQUE (tenant, owner)
);
