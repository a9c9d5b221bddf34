-- One lease table for everything that runs on one server at a time (the
-- scheduler, each projection's runner and its rebuild), so that one fence
-- serves them all. Lease names: `scheduler`, `<projection>`,
-- `<projection>#rebuild`.
CREATE TABLE leases (
    name       text PRIMARY KEY,
    holder     uuid NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Current holders keep their leases across the upgrade.
INSERT INTO leases (name, holder, expires_at)
    SELECT name, holder, expires_at FROM scheduler_lease
    UNION ALL
    SELECT name, holder, expires_at FROM projection_leases
ON CONFLICT (name) DO NOTHING;

DROP TABLE scheduler_lease;
DROP TABLE projection_leases;

-- During a rolling upgrade, replicas still running the previous release
-- read and write the old names: as views over `leases` (simple views are
-- updatable, `ON CONFLICT` and `FOR SHARE` included) they take, renew and
-- fence the very same rows, so old and new replicas never both hold a lease.
-- A later release drops them.
CREATE VIEW scheduler_lease AS SELECT name, holder, expires_at FROM leases;
CREATE VIEW projection_leases AS SELECT name, holder, expires_at FROM leases;
