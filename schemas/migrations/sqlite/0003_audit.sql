-- The audit trail: one row per response-action submission, cancel, file upload or download and
-- configuration reload. Append-only: the triggers refuse any change to a written row.

CREATE TABLE audit (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    at            INTEGER NOT NULL,
    tenant        TEXT NOT NULL,
    -- action.submit | action.cancel | file.upload | file.download | config.reload
    event         TEXT NOT NULL,
    subject       TEXT,
    client_id     TEXT,
    request_id    TEXT,
    -- The client's address: the peer, or what a trusted proxy forwarded.
    source        TEXT,
    action_id     TEXT,
    file_id       TEXT,
    targets_json  TEXT,
    commands_json TEXT,
    -- accepted | replayed | refused | ok
    outcome       TEXT NOT NULL,
    http_status   INTEGER NOT NULL,
    error_code    TEXT,
    detail_json   TEXT
);
CREATE INDEX audit_listing ON audit (tenant, seq DESC);
CREATE INDEX audit_action ON audit (tenant, action_id) WHERE action_id IS NOT NULL;

CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;
CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;
