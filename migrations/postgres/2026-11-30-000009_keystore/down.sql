ALTER TABLE data_keys DROP COLUMN destroyed_reason;
