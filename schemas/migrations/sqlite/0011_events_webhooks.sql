-- The outbox of action and run events (webhooks, per-action callbacks, `GET /v1/events`). An
-- event is written in the same transaction as the change it reports, so none is lost and none
-- reports a change that did not commit. `seq` orders a tenant's events: SQLite has one writer
-- at a time, so the order of `seq` is the order of commits and a reader resuming after a `seq`
-- misses nothing.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The message id receivers deduplicate on (`webhook-id`): the same for every delivery.
    id         TEXT NOT NULL UNIQUE,
    tenant     TEXT NOT NULL,
    type       TEXT NOT NULL,
    action_id  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    -- The JSON body, exactly as delivered and streamed.
    body       TEXT NOT NULL,
    -- Whether deliveries were made for it (by whichever replica took it first).
    dispatched INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX events_by_tenant ON events (tenant, seq);
CREATE INDEX events_undispatched ON events (seq) WHERE dispatched = 0;

-- Subscriptions created through the API (those of the configuration live there). The secrets
-- sign deliveries, so the store keeps them; answers never show them after creation.
CREATE TABLE webhooks (
    id                  TEXT PRIMARY KEY,
    tenant              TEXT NOT NULL,
    url                 TEXT NOT NULL,
    -- JSON array of event types; empty: every type.
    events_json         TEXT NOT NULL,
    description         TEXT,
    secret              TEXT NOT NULL,
    -- The secret before the last rotation: still signs (a second signature) until it expires.
    previous_secret     TEXT,
    previous_expires_at INTEGER,
    header_name         TEXT,
    header_value        TEXT,
    created_at          INTEGER NOT NULL
);
CREATE INDEX webhooks_by_tenant ON webhooks (tenant, created_at);

-- One event to one destination: a subscription (`webhook_id`) or the action's callback
-- (`webhook_id` = 'callback'). Claimed with a lease, so a replica that dies mid-send leaves it
-- to be sent again, with the same `webhook-id`.
CREATE TABLE deliveries (
    id               TEXT PRIMARY KEY,
    tenant           TEXT NOT NULL,
    webhook_id       TEXT NOT NULL,
    event_seq        INTEGER NOT NULL REFERENCES events (seq),
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    last_status      INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    delivered_at     INTEGER
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_by_webhook ON deliveries (tenant, webhook_id, created_at DESC, id DESC);
CREATE INDEX deliveries_by_event ON deliveries (event_seq);

-- A submission's `callback_url` (it may carry a signature of the receiver's, as Logic Apps'
-- do): kept apart from `request_json`, which answers and the audit trail show.
ALTER TABLE actions ADD COLUMN callback_url TEXT;
