-- Practice notes are sealed with a data key per participant. The data key
-- is stored only wrapped by a master key from configuration; destroying it
-- (ForgetParticipant) sets `wrapped` to NULL, which leaves every note of
-- that participant in the event log unreadable for good.
CREATE TABLE practice_keys (
    tenant_id       text NOT NULL,
    -- The participant's stream key (a UUID derived from tenant and
    -- reference), never the reference itself.
    participant_key uuid NOT NULL,
    key_id          uuid NOT NULL,
    -- Nonce and ciphertext of the data key; NULL once destroyed.
    wrapped         bytea,
    master_key_id   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    destroyed_at    timestamptz,
    PRIMARY KEY (tenant_id, participant_key),
    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL)),
    CHECK ((wrapped IS NULL) = (master_key_id IS NULL))
);
-- Re-wrapping after a master key rotation finds the keys still on an old one.
CREATE INDEX practice_keys_master ON practice_keys (master_key_id)
    WHERE wrapped IS NOT NULL;

-- The scheduler also follows each participant's practice stream, whose
-- entries complete occurrences.
ALTER TABLE scheduler_streams
    ADD COLUMN practice_seen_version bigint NOT NULL DEFAULT -1,
    ADD COLUMN practice_processed_version bigint NOT NULL DEFAULT -1;
DROP INDEX scheduler_streams_behind;
CREATE INDEX scheduler_streams_behind ON scheduler_streams (tenant_id, stream_id)
    WHERE seen_version > processed_version
       OR practice_seen_version > practice_processed_version;
