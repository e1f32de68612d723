-- edrgate's durable state. Timestamps are unix milliseconds (INTEGER) so that the SQL stays
-- close between SQLite and PostgreSQL.

CREATE TABLE actions (
    id               TEXT PRIMARY KEY,
    tenant           TEXT NOT NULL,
    -- The caller's request (commands, comment, on_error, targets) as submitted.
    request_json     TEXT NOT NULL,
    status           TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    deadline         INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    idempotency_key  TEXT,
    request_hash     TEXT NOT NULL,
    request_id       TEXT,
    subject          TEXT,
    -- Bumped on every change; long-polls wait for it to move.
    version          INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX actions_idempotency ON actions (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX actions_listing ON actions (tenant, created_at DESC, id DESC);

CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    action_id        TEXT NOT NULL REFERENCES actions (id),
    tenant           TEXT NOT NULL,
    position         INTEGER NOT NULL,
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
    lease_expires_at INTEGER,
    lease_version    INTEGER NOT NULL DEFAULT 0,
    next_step_at     INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX runs_by_action ON runs (action_id, position);
CREATE INDEX runs_claimable ON runs (next_step_at) WHERE status IN ('queued', 'dispatched', 'running');
CREATE INDEX runs_by_device ON runs (tenant, device_id);

CREATE TABLE files (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    origin_json TEXT NOT NULL
);
CREATE INDEX files_by_tenant ON files (tenant, created_at);
