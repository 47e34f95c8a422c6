-- Each tenant's change log has its own cursor sequence: a change's cursor is the tenant's
-- `max + 1`, allocated under a transaction-scoped advisory lock keyed by (schema, tenant)
-- held until commit, so cursor order is commit order within the tenant, and writers of
-- different tenants never wait on one another for it. Rows written before keep their
-- cursors, which already increase within each tenant; new ones continue from there.
ALTER TABLE change_log DROP CONSTRAINT change_log_pkey;
ALTER TABLE change_log ADD PRIMARY KEY (tenant, cursor);
DROP INDEX change_log_by_tenant;
