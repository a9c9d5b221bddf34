-- Identifiers out of the log. A participant is named everywhere by an
-- opaque id (a random UUID); the partner's reference is kept only here,
-- sealed with the participant's data key, beside a keyed hash of it for
-- lookups (the hash key derives from a master key, which is never in the
-- database). Erasure sets everything but the id and the times to NULL.
CREATE TABLE participants (
    tenant_id      text NOT NULL,
    participant_id uuid NOT NULL,
    -- HMAC-SHA-256 of the reference; NULL once erased.
    ref_hash       bytea,
    -- The master key whose lookup key made ref_hash.
    hash_key_id    text,
    -- Nonce and ciphertext of the reference under the data key.
    sealed_ref     bytea,
    -- The data key (notes, reference), wrapped by a master key.
    key_id         uuid NOT NULL,
    wrapped_key    bytea,
    master_key_id  text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    erased_at      timestamptz,
    PRIMARY KEY (tenant_id, participant_id),
    CHECK ((ref_hash IS NULL) = (hash_key_id IS NULL)),
    CHECK ((wrapped_key IS NULL) = (master_key_id IS NULL))
);
CREATE UNIQUE INDEX participants_by_ref ON participants (tenant_id, ref_hash)
    WHERE ref_hash IS NOT NULL;

-- The note keys of the previous release become the participants' data
-- keys; a destroyed one (ForgetParticipant) means an erased participant.
INSERT INTO participants
    (tenant_id, participant_id, key_id, wrapped_key, master_key_id, created_at, erased_at)
SELECT tenant_id, participant_key, key_id, wrapped, master_key_id, created_at, destroyed_at
FROM practice_keys;
DROP TABLE practice_keys;
-- Replicas of the previous release keep sealing and erasing notes during a
-- rolling upgrade through the old name (a simple view is updatable, ON
-- CONFLICT included). A later release drops it.
CREATE VIEW practice_keys AS
    SELECT tenant_id, participant_id AS participant_key, key_id,
           wrapped_key AS wrapped, master_key_id, created_at, erased_at AS destroyed_at
    FROM participants;

-- Participants of the previous release (their streams are named by a UUID
-- derived from tenant and reference) not yet in the directory: each is
-- adopted on the server's start if the log holds their reference, or on the
-- first lookup of it.
CREATE TABLE legacy_participants (
    tenant_id      text NOT NULL,
    participant_id uuid NOT NULL,
    PRIMARY KEY (tenant_id, participant_id)
);
INSERT INTO legacy_participants (tenant_id, participant_id)
SELECT DISTINCT tenant_id, substr(stream_id, length(category) + 2)::uuid
FROM events
WHERE stream_version = 0
  AND category IN ('participant', 'practice', 'assessment', 'arc')
ON CONFLICT DO NOTHING;
DELETE FROM legacy_participants l
USING participants p
WHERE p.tenant_id = l.tenant_id AND p.participant_id = l.participant_id
  AND p.wrapped_key IS NULL;

-- Erasures by request id, so that a retried erasure answers as the first
-- did although the reference no longer finds anyone. No reference here.
CREATE TABLE erasures (
    tenant_id      text NOT NULL,
    erasure_id     uuid NOT NULL,
    participant_id uuid NOT NULL,
    erased_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, erasure_id)
);

-- How far the start-up adoption has read the log.
CREATE TABLE privacy_upgrade (
    step     text PRIMARY KEY,
    position bigint NOT NULL
);

-- The one change to a stored event the database allows: removing the
-- partner's reference from a ParticipantEnrolled body of schema version 1,
-- with every other column unchanged.
CREATE OR REPLACE FUNCTION tend_reject_event_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND OLD.event_type = 'ParticipantEnrolled' AND OLD.schema_version = 1
       AND NEW.payload::jsonb = OLD.payload::jsonb - 'participant_ref'
       AND (to_jsonb(NEW) - 'payload') = (to_jsonb(OLD) - 'payload') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'events are immutable: % on events is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

-- Projections stop holding references.
UPDATE scheduler_occurrences SET detail = detail - 'participant_ref'
WHERE detail ? 'participant_ref';
UPDATE arc_participants
SET participant_ref = NULL,
    state = convert_to((convert_from(state, 'UTF8')::jsonb - 'participant_ref')::text, 'UTF8')
WHERE participant_ref IS NOT NULL;
-- Whether the participant was erased: a cohort may count them or not.
ALTER TABLE arc_participants ADD COLUMN erased boolean NOT NULL DEFAULT false;
