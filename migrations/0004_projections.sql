-- Projections: read models built from the event log. None is a source of
-- truth; each can be rebuilt (`tend projections rebuild NAME`).

-- The generation of each projection that queries read. A rebuild fills the
-- next generation beside it and switches this row when it has caught up.
CREATE TABLE projections (
    name              text PRIMARY KEY,
    active_generation integer NOT NULL,
    switched_at       timestamptz NOT NULL DEFAULT now()
);

-- How far each generation has read the log. Written in the same
-- transaction as that generation's rows, so rows and position never
-- disagree.
CREATE TABLE projection_checkpoints (
    name       text NOT NULL,
    generation integer NOT NULL,
    position   bigint NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, generation)
);

-- Which server runs each projection (and which process rebuilds one).
CREATE TABLE projection_leases (
    name       text PRIMARY KEY,
    holder     uuid NOT NULL,
    expires_at timestamptz NOT NULL
);

-- The arc projection: one row per participant per generation.
CREATE TABLE arc_participants (
    generation      integer NOT NULL,
    tenant_id       text NOT NULL,
    participant_key uuid NOT NULL,
    participant_ref text,
    protocol_id     text,
    protocol_version integer,
    -- not_enrolled, active, paused or withdrawn; with the instants below,
    -- the phase at any time.
    status          text NOT NULL,
    session_start   timestamptz,
    session_end     timestamptz,
    arc_end         timestamptz,
    -- One bit per open flag kind (see FlagKind in the arc service).
    flags_mask      integer NOT NULL DEFAULT 0,
    -- [[arc week, due, completed], ...] for the cohort view.
    weeks           jsonb NOT NULL,
    -- Percent change of the SCS (or SCS-SF) total from baseline.
    scs_change      double precision,
    -- The folded state (JSON), which GetArc reads.
    state           bytea NOT NULL,
    PRIMARY KEY (generation, tenant_id, participant_key)
);
CREATE INDEX arc_participants_protocol
    ON arc_participants (generation, tenant_id, protocol_id, participant_key);

-- The state is JSON of a few to tens of kilobytes, written once per batch
-- and read whole by GetArc: lz4 compresses it several times faster than
-- the default pglz, for a little less compression. A server built without
-- lz4 keeps the default.
DO $$
BEGIN
    ALTER TABLE arc_participants ALTER COLUMN state SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    NULL;
END
$$;
