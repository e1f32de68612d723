-- edrgate's durable state (PostgreSQL; mirrors sqlite/0001_init.sql). Timestamps are unix
-- milliseconds (BIGINT) and ids TEXT, so that both stores read rows the same way.

CREATE TABLE actions (
    id               TEXT PRIMARY KEY,
    tenant           TEXT NOT NULL,
    -- The caller's request (commands, comment, on_error, targets) as submitted.
    request_json     TEXT NOT NULL,
    status           TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    deadline         BIGINT NOT NULL,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    idempotency_key  TEXT,
    request_hash     TEXT NOT NULL,
    request_id       TEXT,
    subject          TEXT,
    -- Bumped on every change; long-polls wait for it to move.
    version          BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX actions_idempotency ON actions (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX actions_listing ON actions (tenant, created_at DESC, id DESC);

CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    action_id        TEXT NOT NULL REFERENCES actions (id),
    tenant           TEXT NOT NULL,
    position         BIGINT NOT NULL,
    target_json      TEXT NOT NULL,
    backend          TEXT,
    device_id        TEXT,
    hostname         TEXT,
    status           TEXT NOT NULL,
    error_json       TEXT,
    -- Vec<CommandState>: statuses, results and errors of the run's commands.
    commands_json    TEXT NOT NULL,
    -- The adapter's opaque checkpoint; NULL before the first step.
    checkpoint_json  TEXT,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    lease_version    BIGINT NOT NULL DEFAULT 0,
    next_step_at     BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX runs_by_action ON runs (action_id, position);
CREATE INDEX runs_claimable ON runs (next_step_at) WHERE status IN ('queued', 'dispatched', 'running');
-- The unfinished runs of a tenant (admission counts them).
CREATE INDEX runs_unfinished_by_tenant ON runs (tenant, action_id)
    WHERE status IN ('queued', 'dispatched', 'running');
CREATE INDEX runs_by_device ON runs (tenant, device_id);

CREATE TABLE files (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    size        BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    origin_json TEXT NOT NULL
);
CREATE INDEX files_by_tenant ON files (tenant, created_at);
