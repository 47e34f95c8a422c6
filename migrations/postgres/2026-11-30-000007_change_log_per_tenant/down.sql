-- One global cursor again: rows are renumbered in their order of commit time.
UPDATE change_log SET cursor = -numbered.n
    FROM (SELECT tenant, cursor, ROW_NUMBER() OVER (ORDER BY committed_at, tenant, cursor) AS n FROM change_log) AS numbered
    WHERE change_log.tenant = numbered.tenant AND change_log.cursor = numbered.cursor;
UPDATE change_log SET cursor = -cursor;
ALTER TABLE change_log DROP CONSTRAINT change_log_pkey;
ALTER TABLE change_log ADD PRIMARY KEY (cursor);
CREATE INDEX change_log_by_tenant ON change_log (tenant, cursor);
