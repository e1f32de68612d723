-- The outbox of action and run events (mirrors sqlite/0011_events_webhooks.sql). An event is
-- written in the same transaction as the change it reports. `seq` orders a tenant's events:
-- the writer takes the tenant's advisory lock (`edrgate_events`, tenant) right before it
-- inserts, holding it to its commit, so a tenant's `seq` values commit in order and a reader
-- resuming after a `seq` misses nothing (a plain sequence hands out numbers at insert time,
-- which transactions may commit in another order).
CREATE TABLE events (
    seq        BIGSERIAL PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    tenant     TEXT NOT NULL,
    type       TEXT NOT NULL,
    action_id  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    body       TEXT NOT NULL,
    dispatched BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX events_by_tenant ON events (tenant, seq);
CREATE INDEX events_undispatched ON events (seq) WHERE NOT dispatched;

CREATE TABLE webhooks (
    id                  TEXT PRIMARY KEY,
    tenant              TEXT NOT NULL,
    url                 TEXT NOT NULL,
    events_json         TEXT NOT NULL,
    description         TEXT,
    secret              TEXT NOT NULL,
    previous_secret     TEXT,
    previous_expires_at BIGINT,
    header_name         TEXT,
    header_value        TEXT,
    created_at          BIGINT NOT NULL
);
CREATE INDEX webhooks_by_tenant ON webhooks (tenant, created_at);

CREATE TABLE deliveries (
    id               TEXT PRIMARY KEY,
    tenant           TEXT NOT NULL,
    webhook_id       TEXT NOT NULL,
    event_seq        BIGINT NOT NULL REFERENCES events (seq),
    status           TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    last_status      BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    delivered_at     BIGINT
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_by_webhook ON deliveries (tenant, webhook_id, created_at DESC, id DESC);
CREATE INDEX deliveries_by_event ON deliveries (event_seq);

-- A submission's `callback_url` (it may carry a signature of the receiver's, as Logic Apps'
-- do): kept apart from `request_json`, which answers and the audit trail show.
ALTER TABLE actions ADD COLUMN callback_url TEXT;
