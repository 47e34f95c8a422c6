-- Keys move to the key store (CAREVAULT_KEYSTORE_URL), a database of their own: at start
-- the server copies any rows left here into it and deletes them here. The tables stay,
-- empty, with the key store's shape, so an older release's rows can still be adopted.
ALTER TABLE data_keys ADD COLUMN destroyed_reason TEXT;
