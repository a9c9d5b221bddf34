-- The event log: one row per event, never updated or deleted.
--
-- `position` comes from the `event_position` sequence, taken by the
-- appender while it holds a transaction-scoped advisory lock, which it keeps
-- until commit. Positions are therefore handed out in commit order: a reader
-- that sees position P already sees every event below P that will ever
-- exist, so it can follow the log by position alone and never skip a late
-- commit. (A rolled-back append leaves a gap that nothing will fill.)
CREATE TABLE events (
    position        bigint      PRIMARY KEY,
    tenant_id       text        NOT NULL,
    stream_id       text        NOT NULL,
    category        text        NOT NULL,
    stream_version  bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    -- json, not jsonb: kept as written, without the cost of converting it
    -- under the append lock; nothing queries inside payloads in SQL.
    payload         json        NOT NULL,
    -- NULL when the event carries no metadata.
    metadata        json,
    recorded_at     timestamptz NOT NULL,
    CONSTRAINT events_stream_version_unique UNIQUE (tenant_id, stream_id, stream_version),
    CONSTRAINT events_event_id_unique UNIQUE (tenant_id, event_id),
    CONSTRAINT events_position_positive CHECK (position > 0),
    CONSTRAINT events_stream_version_non_negative CHECK (stream_version >= 0)
);

-- Tenant-scoped reads of the global log (subscriptions, projections).
CREATE INDEX events_tenant_position ON events (tenant_id, position);

-- Positions, handed out only under the append lock (see above).
CREATE SEQUENCE event_position AS bigint MINVALUE 1;

-- Immutability is enforced by the database, not only by the code.
CREATE FUNCTION tend_reject_event_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: % on events is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER events_immutable
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION tend_reject_event_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION tend_reject_event_change();
