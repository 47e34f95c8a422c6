DROP TABLE data_keys;
DROP TABLE tenant_keys;
