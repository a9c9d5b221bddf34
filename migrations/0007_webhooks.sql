-- Webhooks. Endpoints themselves are events (`webhook-<id>` streams); these
-- tables hold what must stay out of the log.

-- Each endpoint's signing secret, sealed with a master key (AES-256-GCM-SIV,
-- bound to the tenant and endpoint): a secret in the append-only log could
-- never be taken back. After a rotation the previous one also signs until
-- `previous_until`.
CREATE TABLE webhook_secrets (
    tenant_id text NOT NULL,
    endpoint_id uuid NOT NULL,
    master_key_id text NOT NULL,
    sealed bytea NOT NULL,
    previous_master_key_id text,
    previous_sealed bytea,
    previous_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, endpoint_id)
);

-- Where each endpoint's deliveries stand, kept by the delivering server
-- (one at a time, by the `webhooks` lease). Delivery is at least once: the
-- position is written after the receiver's 2xx, so a crash between the two
-- delivers that event again, with the same `webhook-id`.
CREATE TABLE webhook_deliveries (
    tenant_id text NOT NULL,
    endpoint_id uuid NOT NULL,
    -- Every matching event up to here was delivered (or is not for it).
    delivered_position bigint NOT NULL,
    -- The last restart instruction obeyed (the log position of the
    -- registration, enabling or redelivery event that gave it).
    restart_event bigint NOT NULL,
    -- The event being retried: since when, how many attempts, when next.
    failing_position bigint,
    failing_since timestamptz,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_attempt_at timestamptz,
    -- The receiver's last HTTP status, and a code for the last failure
    -- (never the receiver's own words).
    last_status integer,
    last_error text,
    delivered_total bigint NOT NULL DEFAULT 0,
    failed_total bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, endpoint_id)
);
