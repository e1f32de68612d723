-- The audit trail (mirrors sqlite/0003_audit.sql): one row per response-action submission,
-- cancel, file upload or download and configuration reload. Append-only: the trigger refuses
-- any change to a written row.

CREATE TABLE audit (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    at            BIGINT NOT NULL,
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
    http_status   BIGINT NOT NULL,
    error_code    TEXT,
    detail_json   TEXT
);
CREATE INDEX audit_listing ON audit (tenant, seq DESC);
CREATE INDEX audit_action ON audit (tenant, action_id) WHERE action_id IS NOT NULL;

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only';
END;
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_append_only_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
