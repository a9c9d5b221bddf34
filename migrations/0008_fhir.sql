-- FHIR Bulk Data exports: each kick-off is a row, run in the background by
-- whichever server claims it (a session advisory lock on the export, held
-- by the server running it, so that a server that dies releases it at once
-- and another takes the export over from the start). The files are kept
-- here too, so that any replica answers a download, until they expire.
CREATE TABLE fhir_exports (
    export_id        uuid        PRIMARY KEY,
    tenant_id        text        NOT NULL,
    -- Scope, types and since position as asked, and the kick-off URL.
    request          jsonb       NOT NULL,
    -- The log position the export is as of, fixed at kick-off.
    position         bigint      NOT NULL,
    -- The manifest's transactionTime: an export `_since` it starts exactly
    -- at `position`.
    transaction_time timestamptz NOT NULL,
    status           text        NOT NULL
        CHECK (status IN ('queued', 'running', 'complete', 'failed', 'deleted', 'expired')),
    attempts         integer     NOT NULL DEFAULT 0,
    -- Participants read, of how many (for X-Progress).
    done             integer     NOT NULL DEFAULT 0,
    total            integer     NOT NULL DEFAULT 0,
    -- Why it failed, without any participant's data.
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    expires_at       timestamptz
);
CREATE INDEX fhir_exports_pending ON fhir_exports (created_at)
    WHERE status IN ('queued', 'running');
CREATE INDEX fhir_exports_by_time ON fhir_exports (tenant_id, transaction_time);
CREATE INDEX fhir_exports_expiring ON fhir_exports (expires_at)
    WHERE status = 'complete';

CREATE TABLE fhir_export_files (
    export_id     uuid    NOT NULL REFERENCES fhir_exports ON DELETE CASCADE,
    file_no       integer NOT NULL,
    resource_type text    NOT NULL,
    -- 'output': resources; 'deleted': Bundles of deletions.
    part          text    NOT NULL CHECK (part IN ('output', 'deleted')),
    count         bigint  NOT NULL,
    data          bytea   NOT NULL,
    PRIMARY KEY (export_id, file_no)
);

-- NDJSON compresses well, and pglz would cost more CPU than building the
-- export: lz4 where the server has it (PostgreSQL 14 and later, built with
-- lz4, as the Debian and the managed ones are), pglz otherwise.
DO $$
BEGIN
    ALTER TABLE fhir_export_files ALTER COLUMN data SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 is not available: FHIR export files are compressed with pglz';
END
$$;
