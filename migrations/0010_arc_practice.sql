-- The arc projection's practice entries, one row each, apart from the
-- participant's state. The state keeps live practice summed by local date;
-- the entries are only read back when a correction or retraction needs the
-- entry it changes (and the others on its date). So a logged practice
-- writes one small row here and a state that grows with the days
-- practised, not the whole history. States stored before this migration
-- still hold their entries; the projection moves them here the first time
-- it folds such a participant again, and GetArc sums them meanwhile.
CREATE TABLE arc_practice (
    generation      integer NOT NULL,
    tenant_id       text NOT NULL,
    participant_key uuid NOT NULL,
    entry_id        uuid NOT NULL,
    started_at      timestamptz NOT NULL,
    -- The start's nanoseconds beyond its microsecond (-999 to 999):
    -- entries keep the instant they were logged with, finer than a
    -- timestamptz.
    started_nanos   integer NOT NULL,
    local_date      date NOT NULL,
    minutes         integer NOT NULL,
    live            boolean NOT NULL,
    PRIMARY KEY (generation, tenant_id, participant_key, entry_id)
);
CREATE INDEX arc_practice_by_date
    ON arc_practice (generation, tenant_id, participant_key, local_date);
