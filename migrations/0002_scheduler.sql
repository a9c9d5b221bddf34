-- The protocol scheduler's working tables. None of them is a source of
-- truth: each can be rebuilt from the event log (drop the rows and the
-- checkpoint, and the scheduler catches up from position 0).

-- Listing the streams of one category for a tenant (a tenant's protocols)
-- reads only the first event of each stream.
CREATE INDEX events_stream_starts ON events (tenant_id, category, stream_id)
    WHERE stream_version = 0;

-- Which server runs the scheduler. A holder renews before expires_at;
-- another server takes over once it has passed.
CREATE TABLE scheduler_lease (
    name       text PRIMARY KEY,
    holder     uuid NOT NULL,
    expires_at timestamptz NOT NULL
);

-- How far the scheduler has read the global log.
CREATE TABLE scheduler_checkpoint (
    name     text PRIMARY KEY,
    position bigint NOT NULL CHECK (position >= 0)
);

-- One row per participant stream: the newest version seen in the log, the
-- version the schedule below was built from, when time alone next makes
-- something happen to it (NULL: nothing left), and a digest of the
-- occurrence rows last written (due and missed events do not change them,
-- and unchanged rows are not rewritten).
CREATE TABLE scheduler_streams (
    tenant_id         text NOT NULL,
    stream_id         text NOT NULL,
    seen_version      bigint NOT NULL,
    processed_version bigint NOT NULL DEFAULT -1,
    next_at           timestamptz,
    rows_digest       bigint,
    PRIMARY KEY (tenant_id, stream_id)
);
CREATE INDEX scheduler_streams_next ON scheduler_streams (next_at)
    WHERE next_at IS NOT NULL;
CREATE INDEX scheduler_streams_behind ON scheduler_streams (tenant_id, stream_id)
    WHERE seen_version > processed_version;

-- Every occurrence of every enrollment, for ListDue across a tenant.
CREATE TABLE scheduler_occurrences (
    tenant_id     text NOT NULL,
    occurrence_id uuid NOT NULL,
    stream_id     text NOT NULL,
    enrollment_id uuid NOT NULL,
    scheduled_at  timestamptz NOT NULL,
    closes_at     timestamptz NOT NULL,
    completed_at  timestamptz,
    cancelled     boolean NOT NULL,
    -- The rest of the occurrence, as the API returns it.
    detail        jsonb NOT NULL,
    PRIMARY KEY (tenant_id, occurrence_id)
);
CREATE INDEX scheduler_occurrences_by_time
    ON scheduler_occurrences (tenant_id, scheduled_at, occurrence_id);
CREATE INDEX scheduler_occurrences_by_stream
    ON scheduler_occurrences (tenant_id, stream_id);

