-- The Carbon Black EDR front door (src/frontdoor/cb): integer aliases clients compare
-- (front-doors.md §1.10). AUTOINCREMENT, so an id is never handed out twice, even after its
-- row is gone.
CREATE TABLE cb_sensors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    backend TEXT NOT NULL,
    device_id TEXT NOT NULL,
    -- Last hostname seen for the device: finds it again on backends without a lookup by id.
    hostname TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    -- Isolation as last requested through `PUT /api/v1/sensor/{id}` (NULL: never), the number
    -- of changes of that request (the idempotency key of its action) and that action's id.
    isolation_requested INTEGER,
    isolation_seq INTEGER NOT NULL DEFAULT 0,
    isolation_action_id TEXT,
    UNIQUE (tenant, backend, device_id)
);

-- Virtual live-response sessions: edrgate does the vendor work, so a session is a record.
CREATE TABLE cb_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    sensor_id INTEGER NOT NULL REFERENCES cb_sensors (id),
    -- `active` or `close`.
    status TEXT NOT NULL,
    hostname TEXT NOT NULL,
    os_type INTEGER NOT NULL,
    -- JSON array of the CB command names the device ran when the session was made.
    supported_json TEXT NOT NULL,
    session_timeout INTEGER NOT NULL,
    sensor_wait_timeout INTEGER NOT NULL,
    check_in_timeout INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    -- Last command or keepalive; idle longer than `session_timeout`, the session is over.
    last_active_at INTEGER NOT NULL,
    closed_at INTEGER
);
CREATE INDEX cb_sessions_by_tenant ON cb_sessions (tenant, status, id);
